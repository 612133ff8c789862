// Tests of dmoe/ops/cpu/optimizer.hpp: Adam, AdamW, SGD steps against values worked out by hand, and gradient clipping.
#include <dmoe/ops/cpu/optimizer.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>
#include <vector>

using namespace dmoe;
namespace tt = boost::test_tools;

namespace {

std::vector<float> values(const tensor& t) { return {t.span<float>().begin(), t.span<float>().end()}; }

void expect_close(const tensor& t, std::vector<float> expected, double tolerance = 1e-6) {
  auto got = values(t);
  BOOST_TEST_REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) BOOST_TEST(got[i] == expected[i], tt::tolerance(static_cast<float>(tolerance)));
}

// p = [1, -2, 0.5]; gradients g1 = [0.1, -0.2, 0.3] then g2 = [0.3, 0.1, -0.1]; lr 0.1.
struct three_elements {
  tensor param = tensor::from(shape{3}, {1.0f, -2.0f, 0.5f});
  tensor g1 = tensor::from(shape{3}, {0.1f, -0.2f, 0.3f});
  tensor g2 = tensor::from(shape{3}, {0.3f, 0.1f, -0.1f});
  tensor m = tensor(shape{3});
  tensor v = tensor(shape{3});
};

}  // namespace

BOOST_AUTO_TEST_SUITE(ops_optimizer)

BOOST_FIXTURE_TEST_CASE(adam_two_steps_by_hand, three_elements) {
  ops::adam_hyper h{.learning_rate = 0.1f, .beta1 = 0.9, .beta2 = 0.999, .epsilon = 1e-8};
  // Step 1: m = 0.1 g1, v = 0.001 g1^2; bias corrections 0.1 and 0.001 give m^ = g1, v^ = g1^2,
  // so each weight moves by lr * g/|g| = 0.1 against its gradient's sign.
  ops::adam_step(ops::cpu, param, g1, m, v, 1, h);
  expect_close(m, {0.01f, -0.02f, 0.03f});
  expect_close(v, {1e-5f, 4e-5f, 9e-5f});
  expect_close(param, {0.9f, -1.9f, 0.4f});
  // Step 2: m = 0.9 m + 0.1 g2 = [0.039, -0.008, 0.017]; v = 0.999 v + 0.001 g2^2
  // = [9.999e-5, 4.996e-5, 9.991e-5]; corrections 1-0.9^2 = 0.19 and 1-0.999^2 = 0.001999.
  // Element 0: m^ = 0.039/0.19 = 0.2052632, sqrt(v^) = sqrt(9.999e-5/0.001999) = 0.2236515,
  // step = 0.1 * 0.2052632 / 0.2236515 = 0.0917781, p = 0.9 - 0.0917781 = 0.8082219.
  // Element 1: m^ = -0.0421053, sqrt(v^) = 0.1580917, p = -1.9 + 0.0266337 = -1.8733663.
  // Element 2: m^ = 0.0894737, sqrt(v^) = 0.2235620, p = 0.4 - 0.0400219 = 0.3599781.
  ops::adam_step(ops::cpu, param, g2, m, v, 2, h);
  expect_close(m, {0.039f, -0.008f, 0.017f});
  expect_close(v, {9.999e-5f, 4.996e-5f, 9.991e-5f});
  expect_close(param, {0.8082219f, -1.8733663f, 0.3599781f});
}

BOOST_FIXTURE_TEST_CASE(adam_l2_weight_decay_by_hand, three_elements) {
  ops::adam_hyper h{.learning_rate = 0.1f, .weight_decay = 0.1};
  // L2: the gradient becomes g + 0.1 p. Step 1: g' = [0.2, -0.4, 0.35]; Adam's first step moves
  // by 0.1 against the sign, as without decay: p = [0.9, -1.9, 0.4].
  ops::adam_step(ops::cpu, param, g1, m, v, 1, h);
  expect_close(m, {0.02f, -0.04f, 0.035f});
  expect_close(param, {0.9f, -1.9f, 0.4f});
  // Step 2: g' = g2 + 0.1 p = [0.39, -0.09, -0.06]; m = 0.9 m + 0.1 g' = [0.057, -0.045, 0.0255];
  // v = 0.999 v + 0.001 g'^2 = [1.9206e-4, 1.6794e-4, 1.259775e-4].
  // Element 0: 0.1 * (0.057/0.19) / sqrt(1.9206e-4/0.001999) = 0.1 * 0.3 / 0.3099661 = 0.0967847.
  ops::adam_step(ops::cpu, param, g2, m, v, 2, h);
  expect_close(m, {0.057f, -0.045f, 0.0255f});
  expect_close(param, {0.8032148f, -1.8182876f, 0.3465378f});
}

BOOST_FIXTURE_TEST_CASE(adamw_decoupled_weight_decay_by_hand, three_elements) {
  ops::adam_hyper h{.learning_rate = 0.1f, .weight_decay = 0.1, .decoupled_weight_decay = true};
  // AdamW shrinks p by (1 - lr*wd) = 0.99 and leaves the moments as plain Adam's.
  // Step 1: p = 0.99 p - 0.1 sign(g1) = [0.89, -1.88, 0.395].
  ops::adam_step(ops::cpu, param, g1, m, v, 1, h);
  expect_close(m, {0.01f, -0.02f, 0.03f});
  expect_close(param, {0.89f, -1.88f, 0.395f});
  // Step 2: p = 0.99 p - (Adam's step 2 from the plain test): 0.8811 - 0.0917781 = 0.7893219,
  // -1.8612 + 0.0266337 = -1.8345663, 0.39105 - 0.0400219 = 0.3510281.
  ops::adam_step(ops::cpu, param, g2, m, v, 2, h);
  expect_close(m, {0.039f, -0.008f, 0.017f});
  expect_close(param, {0.7893219f, -1.8345663f, 0.3510281f});
}

BOOST_AUTO_TEST_CASE(adam_blocks_match_elementwise_reference) {
  // Longer than one block and not a multiple of it, from a row view (not at the storage start).
  random_engine gen(7);
  const std::int64_t n = 2 * 1024 + 37;
  tensor storage = tensor::normal(shape{2, n}, gen);
  tensor param = storage.row(1);
  tensor grad = tensor::normal(shape{n}, gen);
  tensor m = tensor::normal(shape{n}, gen, 0.0f, 0.1f);
  tensor v = tensor::uniform(shape{n}, gen, 0.0f, 0.01f);
  std::vector<float> p0 = values(param), m0 = values(m), v0 = values(v), g = values(grad);
  ops::adam_hyper h{.learning_rate = 0.01f, .weight_decay = 0.05};
  ops::adam_step(ops::cpu, param, grad, m, v, 5, h);
  const double bc1 = 1 - std::pow(0.9, 5), bc2 = 1 - std::pow(0.999, 5);
  for (std::int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    const double gi = g[k] + 0.05 * p0[k];
    const double mi = 0.9 * m0[k] + 0.1 * gi;
    const double vi = 0.999 * v0[k] + 0.001 * gi * gi;
    const double pi = p0[k] - 0.01 * (mi / bc1) / (std::sqrt(vi / bc2) + 1e-8);
    // Absolute bounds: f32 rounding of terms of size ~1 that partly cancel.
    BOOST_TEST(std::abs(m.span<float>()[k] - mi) <= 1e-6, "m[" << i << "]");
    BOOST_TEST(std::abs(param.span<float>()[k] - pi) <= 1e-6, "param[" << i << "]");
  }
  BOOST_TEST(storage.row(0).span<float>()[0] != 0.0f);  // the other row is left alone
}

BOOST_AUTO_TEST_CASE(adam_refuses_bad_arguments) {
  tensor p(shape{3}), g(shape{4}), m(shape{3}), v(shape{3});
  BOOST_CHECK_THROW(ops::adam_step(ops::cpu, p, g, m, v, 1, {}), shape_error);
  tensor g3(shape{3});
  BOOST_CHECK_THROW(ops::adam_step(ops::cpu, p, g3, m, v, 0, {}), invalid_argument_error);
  tensor wrong(shape{3}, dtype::f16);
  BOOST_CHECK_THROW(ops::adam_step(ops::cpu, p, g3, wrong, v, 1, {}), invalid_argument_error);
}

BOOST_FIXTURE_TEST_CASE(sgd_momentum_by_hand, three_elements) {
  ops::sgd_hyper h{.learning_rate = 0.1f, .momentum = 0.9};
  tensor buffer(shape{3});
  // Step 1: buf = g1, p = p - 0.1 g1 = [0.99, -1.98, 0.47].
  ops::sgd_step(ops::cpu, param, g1, buffer, h);
  expect_close(param, {0.99f, -1.98f, 0.47f});
  // Step 2: buf = 0.9 g1 + g2 = [0.39, -0.08, 0.17], p = p - 0.1 buf = [0.951, -1.972, 0.453].
  ops::sgd_step(ops::cpu, param, g2, buffer, h);
  expect_close(buffer, {0.39f, -0.08f, 0.17f});
  expect_close(param, {0.951f, -1.972f, 0.453f});
}

BOOST_FIXTURE_TEST_CASE(sgd_nesterov_by_hand, three_elements) {
  ops::sgd_hyper h{.learning_rate = 0.1f, .momentum = 0.9, .nesterov = true};
  tensor buffer(shape{3});
  // Step 1: buf = g1, step = g1 + 0.9 buf = 1.9 g1, p = p - 0.19 g1 = [0.981, -1.962, 0.443].
  ops::sgd_step(ops::cpu, param, g1, buffer, h);
  expect_close(param, {0.981f, -1.962f, 0.443f});
  // Step 2: buf = [0.39, -0.08, 0.17], step = g2 + 0.9 buf = [0.651, 0.028, 0.053],
  // p = [0.981 - 0.0651, -1.962 - 0.0028, 0.443 - 0.0053].
  ops::sgd_step(ops::cpu, param, g2, buffer, h);
  expect_close(param, {0.9159f, -1.9648f, 0.4377f});
}

BOOST_FIXTURE_TEST_CASE(sgd_plain_with_weight_decay_by_hand, three_elements) {
  ops::sgd_hyper h{.learning_rate = 0.1f, .weight_decay = 0.5};
  tensor no_buffer;
  // p = p - 0.1 (g1 + 0.5 p) = [1 - 0.06, -2 + 0.12, 0.5 - 0.055].
  ops::sgd_step(ops::cpu, param, g1, no_buffer, h);
  expect_close(param, {0.94f, -1.88f, 0.445f});
  BOOST_CHECK_THROW(ops::sgd_step(ops::cpu, param, g1, no_buffer, {.momentum = 0.0, .nesterov = true}),
                    invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(clip_grad_norm_scales_all_tensors_together) {
  // Norm of [3, 4] and [12] together: sqrt(9 + 16 + 144) = 13.
  std::vector<tensor> grads{tensor::from(shape{2}, {3.0f, 4.0f}), tensor::from(shape{1}, {12.0f})};
  BOOST_TEST(ops::grad_norm(ops::cpu, grads) == 13.0, tt::tolerance(1e-12));
  // Below the limit: untouched.
  BOOST_TEST(ops::clip_grad_norm(ops::cpu, grads, 20.0f) == 13.0, tt::tolerance(1e-12));
  expect_close(grads[0], {3.0f, 4.0f});
  // Limit 6.5: everything scaled by 6.5/13 = 0.5.
  BOOST_TEST(ops::clip_grad_norm(ops::cpu, grads, 6.5f) == 13.0, tt::tolerance(1e-12));
  expect_close(grads[0], {1.5f, 2.0f});
  expect_close(grads[1], {6.0f});
  BOOST_TEST(ops::grad_norm(ops::cpu, grads) == 6.5, tt::tolerance(1e-6));
}

BOOST_AUTO_TEST_CASE(clip_grad_norm_large_values_do_not_overflow) {
  // Squares of 1e30 overflow f32 but not the double accumulator.
  std::vector<tensor> grads{tensor::from(shape{2}, {3e30f, 4e30f})};
  BOOST_TEST(ops::clip_grad_norm(ops::cpu, grads, 1.0f) == 5e30, tt::tolerance(1e-6));
  expect_close(grads[0], {0.6f, 0.8f});
}

BOOST_AUTO_TEST_CASE(clip_grad_norm_nonfinite) {
  std::vector<tensor> grads{tensor::from(shape{2}, {1.0f, std::numeric_limits<float>::quiet_NaN()}),
                            tensor::from(shape{1}, {100.0f})};
  try {
    ops::clip_grad_norm(ops::cpu, grads, 1.0f);
    BOOST_FAIL("a NaN norm was accepted");
  } catch (const invalid_argument_error& e) {
    BOOST_TEST(std::string(e.what()).find("gradient norm over 2 tensors is nan") != std::string::npos, e.what());
  }
  BOOST_TEST(grads[1].span<float>()[0] == 100.0f);
  BOOST_TEST(std::isnan(ops::clip_grad_norm(ops::cpu, grads, 1.0f, ops::nonfinite_norm::skip)));
  BOOST_TEST(grads[1].span<float>()[0] == 100.0f);
  std::vector<tensor> infinite{tensor::from(shape{1}, {std::numeric_limits<float>::infinity()})};
  BOOST_CHECK_THROW(ops::clip_grad_norm(ops::cpu, infinite, 1.0f), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
