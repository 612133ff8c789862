// Tests of dmoe/ops/cpu/attention.hpp: against a naive attention_reference, the causal mask, and the backward.
#include <dmoe/ops/cpu/attention.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <vector>

using namespace dmoe;

namespace {

// Naive causal attention in double over packed qkv [b, t, 3c].
std::vector<double> attention_reference(const tensor& qkv, std::int64_t heads) {
  const std::int64_t B = qkv.dim(0), T = qkv.dim(1), C = qkv.dim(2) / 3, D = C / heads;
  std::vector<double> out(static_cast<std::size_t>(B * T * C));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t t = 0; t < T; ++t) {
        std::vector<double> s(static_cast<std::size_t>(t + 1));
        double m = -1e300;
        for (std::int64_t u = 0; u <= t; ++u) {
          double dot = 0;
          for (std::int64_t d = 0; d < D; ++d) dot += double(qkv.at(b, t, h * D + d)) * qkv.at(b, u, C + h * D + d);
          s[static_cast<std::size_t>(u)] = dot / std::sqrt(double(D));
          m = std::max(m, s[static_cast<std::size_t>(u)]);
        }
        double z = 0;
        for (double& v : s) z += (v = std::exp(v - m));
        for (std::int64_t d = 0; d < D; ++d) {
          double o = 0;
          for (std::int64_t u = 0; u <= t; ++u) o += s[static_cast<std::size_t>(u)] / z * qkv.at(b, u, 2 * C + h * D + d);
          out[static_cast<std::size_t>((b * T + t) * C + h * D + d)] = o;
        }
      }
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(ops_attention)

BOOST_AUTO_TEST_CASE(matches_naive_reference) {
  random_engine gen(1);
  const tensor qkv = tensor::normal(shape{2, 5, 3 * 8}, gen);
  tensor y, probs;
  ops::causal_attention_forward(ops::cpu, qkv, 2, y, probs);
  BOOST_TEST((y.shape() == shape{2, 5, 8}));
  BOOST_TEST((probs.shape() == shape{2, 2, 5, 5}));
  test::check_close("y", y, attention_reference(qkv, 2), 1e-5);
  // Each row of probabilities sums to one and is zero after the diagonal.
  for (std::int64_t t = 0; t < 5; ++t) {
    double s = 0;
    for (std::int64_t u = 0; u < 5; ++u) s += probs.at(1, 1, t, u);
    BOOST_TEST(std::abs(s - 1) < 1e-5);
    for (std::int64_t u = t + 1; u < 5; ++u) BOOST_TEST(probs.at(1, 1, t, u) == 0.0f);
  }
}

BOOST_AUTO_TEST_CASE(output_at_t_ignores_later_positions) {
  random_engine gen(2);
  const tensor qkv = tensor::normal(shape{1, 6, 3 * 4}, gen);
  tensor y1, y2, probs;
  ops::causal_attention_forward(ops::cpu, qkv, 2, y1, probs);
  tensor changed = qkv.clone();
  for (std::int64_t t = 3; t < 6; ++t)
    for (std::int64_t j = 0; j < 12; ++j) changed.at(0, t, j) += 5.0f;
  ops::causal_attention_forward(ops::cpu, changed, 2, y2, probs);
  for (std::int64_t t = 0; t < 3; ++t)
    for (std::int64_t j = 0; j < 4; ++j) BOOST_TEST(y1.at(0, t, j) == y2.at(0, t, j));
  bool later_changed = false;
  for (std::int64_t j = 0; j < 4; ++j) later_changed |= y1.at(0, 4, j) != y2.at(0, 4, j);
  BOOST_TEST(later_changed);
}

BOOST_AUTO_TEST_CASE(backward_matches_finite_differences) {
  random_engine gen(3);
  tensor qkv = tensor::normal(shape{2, 4, 3 * 6}, gen);
  const tensor w = tensor::normal(shape{2, 4, 6}, gen);
  const auto loss = [&] {
    tensor y, probs;
    ops::causal_attention_forward(ops::cpu, qkv, 3, y, probs);
    return test::weighted_sum(y, w);
  };
  tensor y, probs, dqkv;
  ops::causal_attention_forward(ops::cpu, qkv, 3, y, probs);
  ops::causal_attention_backward(ops::cpu, qkv, probs, w, 3, dqkv);
  test::check_gradient("dqkv", dqkv, test::numeric_gradient(qkv, loss, 1e-2f));
}

BOOST_AUTO_TEST_CASE(shape_errors) {
  tensor y, probs;
  BOOST_CHECK_THROW(ops::causal_attention_forward(ops::cpu, tensor(shape{2, 4, 10}), 2, y, probs), shape_error);
  BOOST_CHECK_THROW(ops::causal_attention_forward(ops::cpu, tensor(shape{2, 4, 12}), 3, y, probs), shape_error);
  BOOST_CHECK_THROW(ops::causal_attention_forward(ops::cpu, tensor(shape{4, 12}), 2, y, probs), shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
