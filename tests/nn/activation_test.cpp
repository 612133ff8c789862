// Tests of dmoe/nn/activation.hpp: relu and gelu modules against finite differences.
#include <dmoe/nn/activation.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(nn_activation)

BOOST_AUTO_TEST_CASE(relu_and_gelu_gradients) {
  random_engine gen(1);
  nn::relu<> r;
  test::check_module_gradients(r, tensor::normal(shape{4, 5}, gen), 2, 1e-2, 1e-3f);
  nn::gelu<> g;
  test::check_module_gradients(g, tensor::normal(shape{4, 5}, gen), 3);
  const tensor y = r.forward(tensor::from(shape{2}, {-1.0f, 2.0f}));
  test::check_close("relu", y, {0.0, 2.0}, 0);
}

BOOST_AUTO_TEST_SUITE_END()
