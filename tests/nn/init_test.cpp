// Tests of dmoe/nn/init.hpp: seeded initialisers with the stated spreads.
#include <dmoe/nn/init.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>

using namespace dmoe;

namespace {
double stddev(const tensor& t) {
  double s = 0, sq = 0;
  for (float v : t.span<float>()) s += v, sq += double(v) * v;
  const double n = double(t.numel());
  return std::sqrt(sq / n - (s / n) * (s / n));
}
}  // namespace

BOOST_AUTO_TEST_SUITE(nn_init)

BOOST_AUTO_TEST_CASE(spreads_and_seeds) {
  random_engine gen(1);
  tensor w(shape{200, 100});
  nn::init::xavier_uniform(w, gen);
  const double a = std::sqrt(6.0 / 300);
  for (float v : w.span<float>()) BOOST_TEST((v >= -a && v <= a));
  BOOST_TEST(std::abs(stddev(w) - a / std::sqrt(3.0)) < 0.01 * a);
  nn::init::kaiming_normal(w, gen);
  BOOST_TEST(std::abs(stddev(w) - std::sqrt(2.0 / 100)) < 0.01);
  nn::init::xavier_normal(w, gen);
  BOOST_TEST(std::abs(stddev(w) - std::sqrt(2.0 / 300)) < 0.01);
  random_engine g1(7), g2(7);
  tensor u1(shape{10, 10}), u2(shape{10, 10});
  nn::init::kaiming_uniform(u1, g1);
  nn::init::kaiming_uniform(u2, g2);
  BOOST_TEST(std::equal(u1.span<float>().begin(), u1.span<float>().end(), u2.span<float>().begin()));
  tensor scalar(shape{});
  BOOST_CHECK_THROW(nn::init::xavier_uniform(scalar, gen), shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
