// Tests of dmoe/ops/cpu/layer_norm.hpp: normalised rows and gradients of x, gamma and beta.
#include <dmoe/ops/cpu/layer_norm.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;

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

BOOST_AUTO_TEST_CASE(shape_errors) {
  tensor y, mean, rstd;
  BOOST_CHECK_THROW(
      ops::layer_norm_forward(ops::cpu, tensor(shape{2, 8}), tensor(shape{7}), tensor(shape{7}), 1e-5f, y, mean, rstd),
      shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
