// The double-accumulating row reductions: the vectorised paths give the generic lanes' result to the bit.
#include <dmoe/ops/cpu/reduction.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

using namespace dmoe::ops::detail;

namespace {
bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }
}  // namespace

BOOST_AUTO_TEST_SUITE(ops_reduction)

BOOST_AUTO_TEST_CASE(vectorised_sums_equal_the_generic_lanes) {
  std::mt19937 gen(7);
  std::normal_distribution<float> value(3.0f, 100.0f);
  for (std::int64_t n = 0; n < 200; ++n) {
    std::vector<float> x(static_cast<std::size_t>(n)), y(x.size());
    for (auto& v : x) v = value(gen);
    for (auto& v : y) v = value(gen);
    const double sum = sum_f64(n, [&](std::int64_t i) { return static_cast<double>(x[i]); });
    BOOST_TEST(same_bits(sum_f64(x.data(), n), sum), "n = " << n);
    // Products of two floats are exact in double, so a fused multiply-add cannot change them either.
    const double dot = sum_f64(n, [&](std::int64_t i) { return static_cast<double>(x[i]) * static_cast<double>(y[i]); });
    BOOST_TEST(same_bits(dot_f64(x.data(), y.data(), n), dot), "n = " << n);
    const double squares = sum_f64(n, [&](std::int64_t i) {
      const double d = static_cast<double>(x[i]) - 2.5;
      return d * d;
    });
    BOOST_TEST(std::abs(sum_squared_deviations_f64(x.data(), n, 2.5) - squares) <= 1e-14 * squares, "n = " << n);
  }
}

// A long row of large equal values: the double lanes keep the sum exact where an f32 sum would drift.
BOOST_AUTO_TEST_CASE(long_rows_sum_exactly) {
  const std::vector<float> x(1 << 20, 10000.5f);
  BOOST_TEST(sum_f64(x.data(), static_cast<std::int64_t>(x.size())) == 10000.5 * (1 << 20));
  BOOST_TEST(sum_squared_deviations_f64(x.data(), static_cast<std::int64_t>(x.size()), 10000.5) == 0.0);
}

BOOST_AUTO_TEST_SUITE_END()
