// Tests of dmoe/ops/cpu/mse.hpp: the mean squared error and its gradient.
#include <dmoe/ops/cpu/mse.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(ops_mse)

BOOST_AUTO_TEST_CASE(value_and_gradient) {
  const tensor p = tensor::from(shape{2, 2}, {1.0f, 2.0f, 3.0f, 4.0f});
  const tensor t = tensor::from(shape{2, 2}, {1.0f, 0.0f, 3.0f, 5.0f});
  tensor g;
  BOOST_TEST(ops::mse(ops::cpu, p, t, &g) == 5.0f / 4.0f);
  test::check_close("dprediction", g, {0.0, 1.0, 0.0, -0.5}, 1e-7);
  random_engine gen(1);
  tensor x = tensor::normal(shape{3, 3}, gen);
  const tensor target = tensor::normal(shape{3, 3}, gen);
  g = tensor();
  ops::mse(ops::cpu, x, target, &g);
  test::check_gradient("dx", g, test::numeric_gradient(x, [&] { return double(ops::mse(ops::cpu, x, target)); }));
  BOOST_CHECK_THROW(ops::mse(ops::cpu, p, tensor(shape{4})), shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
