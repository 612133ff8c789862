// Tests of dmoe/ops/cpu/softmax.hpp: probabilities per row, stability with large logits, and the backward.
#include <dmoe/ops/cpu/softmax.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(ops_softmax)

BOOST_AUTO_TEST_CASE(rows_sum_to_one_and_large_logits_are_stable) {
  tensor x = tensor::from(shape{2, 3}, {1.0f, 2.0f, 3.0f, 1000.0f, 1000.0f, -1000.0f});
  tensor y;
  ops::softmax(ops::cpu, x, y);
  const double e = std::exp(1.0), total = 1 + e + e * e;
  test::check_close("softmax", y, {1 / total, e / total, e * e / total, 0.5, 0.5, 0.0}, 1e-6);
}

BOOST_AUTO_TEST_CASE(backward_matches_finite_differences) {
  random_engine gen(1);
  tensor x = tensor::normal(shape{3, 7}, gen);
  const tensor w = tensor::normal(shape{3, 7}, gen);
  const auto loss = [&] {
    tensor y;
    ops::softmax(ops::cpu, x, y);
    return test::weighted_sum(y, w);
  };
  tensor y, dx;
  ops::softmax(ops::cpu, x, y);
  ops::softmax_backward(ops::cpu, y, w, dx);
  test::check_gradient("dx", dx, test::numeric_gradient(x, loss, 1e-2f));
}

BOOST_AUTO_TEST_CASE(in_place) {
  tensor x = tensor::from(shape{1, 2}, {0.0f, 0.0f});
  ops::softmax(ops::cpu, x, x);
  BOOST_TEST(x.at(0, 1) == 0.5f);
}

BOOST_AUTO_TEST_SUITE_END()
