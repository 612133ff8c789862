// Tests of dmoe/ops/cpu/activation.hpp: fused bias + activation forward values and backward gradients.
#include <dmoe/ops/cpu/activation.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>

using namespace dmoe;

namespace {

double reference_activation(ops::activation act, double z) {
  switch (act) {
    case ops::activation::identity: return z;
    case ops::activation::relu: return z > 0 ? z : 0;
    case ops::activation::gelu: return 0.5 * z * (1 + std::tanh(std::sqrt(2 / M_PI) * (z + 0.044715 * z * z * z)));
  }
  return 0;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(ops_activation)

BOOST_AUTO_TEST_CASE(forward_matches_formulas) {
  random_engine gen(1);
  for (auto act : {ops::activation::identity, ops::activation::relu, ops::activation::gelu}) {
    const tensor x = tensor::normal(shape{7, 5}, gen, 0.0f, 2.0f);
    const tensor bias = tensor::normal(shape{5}, gen);
    tensor z = x.clone(), y;
    ops::bias_activation_forward(ops::cpu, z, bias, y, act);
    std::vector<double> expected_z, expected_y;
    for (std::int64_t i = 0; i < 7; ++i)
      for (std::int64_t j = 0; j < 5; ++j) {
        const double pre = double(x.at(i, j)) + bias.at(j);
        expected_z.push_back(pre);
        expected_y.push_back(reference_activation(act, pre));
      }
    test::check_close("z", z, expected_z, 1e-6);
    test::check_close(std::string("y ") + std::string(ops::to_string(act)), y, expected_y, 1e-5);
  }
}

BOOST_AUTO_TEST_CASE(backward_matches_finite_differences) {
  random_engine gen(2);
  for (auto act : {ops::activation::identity, ops::activation::relu, ops::activation::gelu}) {
    tensor x = tensor::normal(shape{4, 6}, gen);
    tensor bias = tensor::normal(shape{6}, gen);
    const tensor w = tensor::normal(shape{4, 6}, gen);
    const auto loss = [&] {
      tensor z = x.clone(), y;
      ops::bias_activation_forward(ops::cpu, z, bias, y, act);
      return test::weighted_sum(y, w);
    };
    tensor z = x.clone(), y, dz;
    ops::bias_activation_forward(ops::cpu, z, bias, y, act);
    tensor dbias = tensor::full(shape{6}, 1.0f);  // accumulates on top of what is there
    ops::bias_activation_backward(ops::cpu, z, w, dz, &dbias, act);
    const std::string name(ops::to_string(act));
    const float eps = act == ops::activation::relu ? 1e-3f : 1e-2f;
    test::check_gradient(name + " dx", dz, test::numeric_gradient(x, loss, eps));
    auto numeric_bias = test::numeric_gradient(bias, loss, eps);
    for (double& v : numeric_bias) v += 1.0;
    test::check_gradient(name + " dbias", dbias, numeric_bias);
  }
}

BOOST_AUTO_TEST_CASE(gelu_slope_is_exact_for_huge_inputs) {
  // z^3 overflows f32 from |z| ~ 7e12 and the slope formula gave 0 * inf = NaN from ~1.9e19; right: 1 and 0.
  const float big = std::numeric_limits<float>::max();
  const tensor z = tensor::from(shape{1, 8}, {2e19f, -2e19f, 1e30f, -1e30f, big, -big, 1e13f, -1e13f});
  const tensor dy = tensor::full(shape{1, 8}, 1.0f);
  tensor dz;
  ops::bias_activation_backward(ops::cpu, z, dy, dz, nullptr, ops::activation::gelu);
  for (std::int64_t i = 0; i < 8; ++i) BOOST_TEST(dz.at(0, i) == (i % 2 == 0 ? 1.0f : 0.0f));  // exact
  tensor y;
  ops::activation_forward(ops::cpu, z, y, ops::activation::gelu);
  for (std::int64_t i = 0; i < 8; ++i) BOOST_TEST(y.at(0, i) == (i % 2 == 0 ? z.at(0, i) : 0.0f));  // exact
}

BOOST_AUTO_TEST_CASE(large_inputs_split_over_threads_agree) {
  random_engine gen(3);
  const tensor x = tensor::normal(shape{300, 257}, gen);
  const tensor bias = tensor::normal(shape{257}, gen);
  tensor z = x.clone(), y, dz;
  ops::bias_activation_forward(ops::cpu, z, bias, y, ops::activation::gelu);
  tensor dbias(shape{257});
  const tensor dy = tensor::full(shape{300, 257}, 1.0f);
  ops::bias_activation_backward(ops::cpu, z, dy, dz, &dbias, ops::activation::gelu);
  double column0 = 0;
  for (std::int64_t i = 0; i < 300; ++i) column0 += dz.at(i, 0);
  BOOST_TEST(std::abs(dbias.at(0) - column0) < 1e-3 * (1 + std::abs(column0)));
  BOOST_TEST(std::abs(y.at(299, 256) - reference_activation(ops::activation::gelu, z.at(299, 256))) < 1e-5);
}

BOOST_AUTO_TEST_CASE(errors) {
  tensor z(shape{2, 3}), y;
  BOOST_CHECK_THROW(ops::bias_activation_forward(ops::cpu, z, tensor(shape{4}), y, ops::activation::relu), shape_error);
  BOOST_CHECK_THROW(ops::bias_activation_forward(ops::cpu, z, tensor(), z, ops::activation::relu),
                    invalid_argument_error);
  tensor dz;
  BOOST_CHECK_THROW(ops::bias_activation_backward(ops::cpu, z, tensor(shape{3, 2}), dz, nullptr, ops::activation::gelu),
                    shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
