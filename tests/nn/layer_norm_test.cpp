// Tests of dmoe/nn/layer_norm.hpp: gradients of x, weight and bias.
#include <dmoe/nn/layer_norm.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(nn_layer_norm)

BOOST_AUTO_TEST_CASE(gradients_match_finite_differences) {
  random_engine gen(1);
  nn::layer_norm<> norm(6);
  norm.gamma().fill_normal(gen, 1.0f, 0.3f);
  norm.beta().fill_normal(gen);
  test::check_module_gradients(norm, tensor::normal(shape{2, 3, 6}, gen), 2);
  BOOST_TEST(norm.parameters()[0].name == "weight");
  BOOST_CHECK_THROW(norm.forward(tensor(shape{2, 5})), shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
