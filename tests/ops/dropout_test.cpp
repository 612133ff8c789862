// Tests of dmoe/ops/cpu/dropout.hpp: the seeded mask's values and rate, and applying it.
#include <dmoe/ops/cpu/dropout.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(ops_dropout)

BOOST_AUTO_TEST_CASE(mask_has_the_rate_and_scale_and_is_seeded) {
  random_engine g1(5), g2(5);
  tensor m1(shape{100, 100}), m2(shape{100, 100});
  ops::dropout_mask(ops::cpu, m1, 0.3f, g1);
  ops::dropout_mask(ops::cpu, m2, 0.3f, g2);
  int zeros = 0;
  for (std::int64_t i = 0; i < m1.numel(); ++i) {
    const float v = m1.span<float>()[i];
    BOOST_TEST((v == 0.0f || std::abs(v - 1.0f / 0.7f) < 1e-6f));
    zeros += v == 0.0f;
    BOOST_TEST(v == m2.span<float>()[i]);
  }
  BOOST_TEST(std::abs(zeros / 10000.0 - 0.3) < 0.02);
  tensor none(shape{10});
  ops::dropout_mask(ops::cpu, none, 0.0f, g1);
  for (float v : none.span<float>()) BOOST_TEST(v == 1.0f);
  BOOST_CHECK_THROW(ops::dropout_mask(ops::cpu, none, 1.0f, g1), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(apply_multiplies_by_the_mask) {
  const tensor x = tensor::from(shape{1, 3}, {1.0f, 2.0f, 3.0f});
  const tensor mask = tensor::from(shape{1, 3}, {0.0f, 2.0f, 2.0f});
  tensor y;
  ops::dropout_apply(ops::cpu, x, mask, y);
  test::check_close("y", y, {0.0, 4.0, 6.0}, 0);
  BOOST_CHECK_THROW(ops::dropout_apply(ops::cpu, x, tensor(shape{3}), y), shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
