// Tests of dmoe/ops/cpu/cross_entropy.hpp: the mean loss, the fused logit gradient and label checks.
#include <dmoe/ops/cpu/cross_entropy.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>

using namespace dmoe;

namespace {
tensor labels_of(std::initializer_list<std::int64_t> values) {
  return tensor::from<std::int64_t>(shape{static_cast<std::int64_t>(values.size())},
                                    std::span<const std::int64_t>(values.begin(), values.size()));
}
}  // namespace

BOOST_AUTO_TEST_SUITE(ops_cross_entropy)

BOOST_AUTO_TEST_CASE(loss_is_mean_negative_log_likelihood) {
  const tensor logits = tensor::from(shape{2, 3}, {1.0f, 2.0f, 3.0f, 0.0f, 0.0f, 0.0f});
  const float loss = ops::cross_entropy(ops::cpu, logits, labels_of({2, 0}));
  const double row0 = -std::log(std::exp(3.0) / (std::exp(1.0) + std::exp(2.0) + std::exp(3.0)));
  const double row1 = std::log(3.0);
  BOOST_TEST(std::abs(loss - (row0 + row1) / 2) < 1e-6);
}

BOOST_AUTO_TEST_CASE(large_logits_keep_the_small_log_term) {
  // loss = log(sum exp(x - max)) + (max - target): adding the log term to a large logit first rounds it away.
  const double ln2 = std::log(2.0);
  BOOST_TEST(std::abs(ops::cross_entropy(ops::cpu, tensor::from(shape{1, 2}, {1e8f, 1e8f}), labels_of({1})) - ln2) <
             1e-6);
  BOOST_TEST(std::abs(ops::cross_entropy(ops::cpu, tensor::from(shape{1, 2}, {1e7f, 1e7f}), labels_of({0})) - ln2) <
             1e-6);
  const double expected = std::log1p(std::exp(-1.0));  // 0.3132617
  tensor grad;
  const tensor logits = tensor::from(shape{1, 2}, {10000.0f, 9999.0f});
  BOOST_TEST(std::abs(ops::cross_entropy(ops::cpu, logits, labels_of({0}), &grad) - expected) < 1e-6);
  BOOST_TEST(std::abs(grad.at(0, 0) - (1.0 / (1.0 + std::exp(-1.0)) - 1.0)) < 1e-6);
  BOOST_TEST(std::abs(grad.at(0, 1) - 1.0 / (1.0 + std::exp(1.0))) < 1e-6);
}

BOOST_AUTO_TEST_CASE(gradient_matches_finite_differences) {
  random_engine gen(1);
  tensor logits = tensor::normal(shape{4, 5}, gen, 0.0f, 3.0f);
  const tensor labels = labels_of({0, 4, 2, 2});
  tensor dlogits;
  ops::cross_entropy(ops::cpu, logits, labels, &dlogits);
  const auto loss = [&] { return static_cast<double>(ops::cross_entropy(ops::cpu, logits, labels)); };
  test::check_gradient("dlogits", dlogits, test::numeric_gradient(logits, loss, 1e-2f));
  // Each row of the gradient sums to zero (softmax minus one-hot, divided by the rows).
  for (std::int64_t r = 0; r < 4; ++r) {
    double s = 0;
    for (std::int64_t j = 0; j < 5; ++j) s += dlogits.at(r, j);
    BOOST_TEST(std::abs(s) < 1e-6);
  }
}

BOOST_AUTO_TEST_CASE(labels_are_checked) {
  const tensor logits(shape{2, 3});
  try {
    ops::cross_entropy(ops::cpu, logits, labels_of({1, 3}));
    BOOST_FAIL("no error");
  } catch (const invalid_argument_error& e) {
    BOOST_TEST(std::string(e.what()).find("label 3 of row 1 is outside [0, 3)") != std::string::npos, e.what());
  }
  BOOST_CHECK_THROW(ops::cross_entropy(ops::cpu, logits, labels_of({-1, 0})), invalid_argument_error);
  BOOST_CHECK_THROW(ops::cross_entropy(ops::cpu, logits, labels_of({0, 1, 2})), shape_error);
  BOOST_CHECK_THROW(ops::cross_entropy(ops::cpu, logits, tensor(shape{2})), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
