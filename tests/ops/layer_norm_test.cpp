// Tests of dmoe/ops/cpu/layer_norm.hpp: normalised rows and gradients of x, gamma and beta.
#include <dmoe/ops/cpu/layer_norm.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

using namespace dmoe;

namespace {

// Layer norm of one row (gamma, beta = 0) and its input gradient in long double: the reference.
struct reference_row {
  long double mean = 0, rstd = 0;
  std::vector<long double> y, dx;
};

reference_row reference_layer_norm(const float* x, const float* gamma, const float* dy, std::int64_t d, float eps) {
  reference_row out;
  for (std::int64_t i = 0; i < d; ++i) out.mean += x[i];
  out.mean /= d;
  long double var = 0;
  for (std::int64_t i = 0; i < d; ++i) var += (x[i] - out.mean) * (x[i] - out.mean);
  var /= d;
  out.rstd = 1 / std::sqrt(var + eps);
  std::vector<long double> xhat(static_cast<std::size_t>(d));
  long double mean_g = 0, mean_gx = 0;
  for (std::int64_t i = 0; i < d; ++i) {
    const auto k = static_cast<std::size_t>(i);
    xhat[k] = (x[i] - out.mean) * out.rstd;
    out.y.push_back(xhat[k] * gamma[i]);
    mean_g += static_cast<long double>(dy[i]) * gamma[i] / d;
    mean_gx += static_cast<long double>(dy[i]) * gamma[i] * xhat[k] / d;
  }
  for (std::int64_t i = 0; i < d; ++i) {
    const auto k = static_cast<std::size_t>(i);
    out.dx.push_back((static_cast<long double>(dy[i]) * gamma[i] - mean_g - xhat[k] * mean_gx) * out.rstd);
  }
  return out;
}

// Runs forward and backward on one row and returns the largest errors of y and dx against the reference,
// dx's relative to its largest magnitude.
struct row_errors {
  double y = 0, dx = 0, rstd_relative = 0;
};

row_errors layer_norm_errors(const tensor& x, const tensor& gamma, const tensor& dy, float eps) {
  const std::int64_t d = x.numel();
  tensor y, mean, rstd, dx, dgamma(shape{d}), dbeta(shape{d});
  const tensor beta(shape{d});
  ops::layer_norm_forward(ops::cpu, x, gamma, beta, eps, y, mean, rstd);
  ops::layer_norm_backward(ops::cpu, x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
  const reference_row ref = reference_layer_norm(x.data<float>(), gamma.data<float>(), dy.data<float>(), d, eps);
  row_errors e;
  long double dx_scale = 0;
  for (long double v : ref.dx) dx_scale = std::max(dx_scale, std::abs(v));
  for (std::int64_t i = 0; i < d; ++i) {
    const auto k = static_cast<std::size_t>(i);
    e.y = std::max(e.y, static_cast<double>(std::abs(y.data<float>()[i] - ref.y[k])));
    e.dx = std::max(e.dx, static_cast<double>(std::abs(dx.data<float>()[i] - ref.dx[k]) / dx_scale));
  }
  e.rstd_relative = static_cast<double>(std::abs(rstd.data<float>()[0] - ref.rstd) / ref.rstd);
  return e;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(ops_layer_norm)

BOOST_AUTO_TEST_CASE(rows_have_zero_mean_unit_variance) {
  random_engine gen(1);
  const tensor x = tensor::normal(shape{2, 3, 16}, gen, 3.0f, 5.0f);
  const tensor gamma = tensor::full(shape{16}, 1.0f), beta(shape{16});
  tensor y, mean, rstd;
  ops::layer_norm_forward(ops::cpu, x, gamma, beta, 1e-5f, y, mean, rstd);
  BOOST_TEST((mean.shape() == shape{6}));
  for (std::int64_t r = 0; r < 6; ++r) {
    double s = 0, sq = 0, xs = 0;
    for (std::int64_t j = 0; j < 16; ++j) {
      const float v = y.as_matrix().at(r, j);
      s += v, sq += double(v) * v, xs += x.as_matrix().at(r, j);
    }
    BOOST_TEST(std::abs(s / 16) < 1e-5);
    BOOST_TEST(std::abs(sq / 16 - 1.0) < 1e-3);
    BOOST_TEST(std::abs(mean.at(r) - xs / 16) < 1e-4);
  }
}

BOOST_AUTO_TEST_CASE(backward_matches_finite_differences) {
  random_engine gen(2);
  tensor x = tensor::normal(shape{5, 8}, gen);
  tensor gamma = tensor::normal(shape{8}, gen, 1.0f, 0.5f);
  tensor beta = tensor::normal(shape{8}, gen);
  const tensor w = tensor::normal(shape{5, 8}, gen);
  const auto loss = [&] {
    tensor y, mean, rstd;
    ops::layer_norm_forward(ops::cpu, x, gamma, beta, 1e-5f, y, mean, rstd);
    return test::weighted_sum(y, w);
  };
  tensor y, mean, rstd, dx;
  ops::layer_norm_forward(ops::cpu, x, gamma, beta, 1e-5f, y, mean, rstd);
  tensor dgamma(shape{8}), dbeta(shape{8});
  ops::layer_norm_backward(ops::cpu, x, gamma, mean, rstd, w, dx, dgamma, dbeta);
  test::check_gradient("dx", dx, test::numeric_gradient(x, loss, 1e-2f));
  test::check_gradient("dgamma", dgamma, test::numeric_gradient(gamma, loss, 1e-2f));
  test::check_gradient("dbeta", dbeta, test::numeric_gradient(beta, loss, 1e-2f));
}

BOOST_AUTO_TEST_CASE(parallel_rows_accumulate_parameter_gradients) {
  random_engine gen(3);
  const tensor x = tensor::normal(shape{4000, 24}, gen);
  const tensor gamma = tensor::full(shape{24}, 1.0f), beta(shape{24});
  const tensor dy = tensor::full(shape{4000, 24}, 1.0f);
  tensor y, mean, rstd, dx, dgamma(shape{24}), dbeta(shape{24});
  ops::layer_norm_forward(ops::cpu, x, gamma, beta, 1e-5f, y, mean, rstd);
  ops::layer_norm_backward(ops::cpu, x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
  BOOST_TEST(std::abs(dbeta.at(5) - 4000.0f) < 1e-2);
  ops::layer_norm_backward(ops::cpu, x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
  BOOST_TEST(std::abs(dbeta.at(5) - 8000.0f) < 1e-2);
}

BOOST_AUTO_TEST_CASE(constant_rows_of_large_magnitude_normalise_to_zero) {
  // 1,000 x 10000.5: the mean is exact, the variance 0, rstd 1/sqrt(1e-5) = 316.228 and every output 0 (an f32
  // sum gave 0.777 everywhere, rstd 198.97 and input gradients off by up to 421).
  random_engine gen(11);
  const tensor x = tensor::full(shape{1, 1000}, 10000.5f);
  const tensor gamma = tensor::full(shape{1000}, 1.0f);
  const tensor dy = tensor::normal(shape{1, 1000}, gen);
  const row_errors e = layer_norm_errors(x, gamma, dy, 1e-5f);
  BOOST_TEST(e.y == 0.0);                // exact
  BOOST_TEST(e.rstd_relative < 1e-6);    // rstd 316.22777
  BOOST_TEST(e.dx < 1e-5);               // relative to max |dx|
}

BOOST_AUTO_TEST_CASE(long_rows_near_a_large_mean_keep_f32_precision) {
  // 32,768 values of 100 + 0.01 N(0, 1): outputs within 1e-4 of the long double reference (an f32 mean shifted
  // every output by 1.2e-3; PyTorch is off by 5e-5), input gradients within 1e-4 of their largest magnitude.
  random_engine gen(12);
  const tensor x = tensor::normal(shape{1, 32768}, gen, 100.0f, 0.01f);
  const tensor gamma = tensor::normal(shape{32768}, gen, 1.0f, 0.1f);
  const tensor dy = tensor::normal(shape{1, 32768}, gen);
  const row_errors e = layer_norm_errors(x, gamma, dy, 1e-5f);
  BOOST_TEST(e.y < 1e-4);
  BOOST_TEST(e.rstd_relative < 1e-6);
  BOOST_TEST(e.dx < 1e-4);
}

BOOST_AUTO_TEST_CASE(rows_whose_spread_overflows_f32_are_normalised_right) {
  // The variance 9e38 of +-3e19 and the deviations of +-3.4e38 overflow f32: outputs +-1, and 1/sqrt(2),
  // -sqrt(2), within 1e-6; input gradients finite and within 1e-5 of the reference (relative to their largest).
  random_engine gen(13);
  const float big = 3.4e38f;
  for (const tensor& x : {tensor::from(shape{1, 4}, {3e19f, -3e19f, 3e19f, -3e19f}),
                          tensor::from(shape{1, 3}, {big, big, -big})}) {
    const std::int64_t d = x.numel();
    const tensor gamma = tensor::full(shape{d}, 1.0f);
    const tensor dy = tensor::normal(shape{1, d}, gen);
    const row_errors e = layer_norm_errors(x, gamma, dy, 1e-5f);
    BOOST_TEST(e.y < 1e-6);
    BOOST_TEST(e.rstd_relative < 1e-6);
    BOOST_TEST(e.dx < 1e-5);
  }
}

BOOST_AUTO_TEST_CASE(shape_errors) {
  tensor y, mean, rstd;
  BOOST_CHECK_THROW(
      ops::layer_norm_forward(ops::cpu, tensor(shape{2, 8}), tensor(shape{7}), tensor(shape{7}), 1e-5f, y, mean, rstd),
      shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
