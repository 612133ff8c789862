// Hostile numerics in the mixture-of-experts layer: the gating's mean over a long sequence of mixed magnitudes.
#include <dmoe/moe/local_mixture_of_experts.hpp>
#include <dmoe/nn/linear.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <vector>
#include <memory>
#include <string>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(numerics_hostile_moe)

// x [1, 3000, 4]: 1e8 at the first position, 1 at the other 2999. The gating sees the mean over positions,
// 33334.333 (an f32 running sum of x / 3000 stays at 33333.333: each 1/3000 is below half its ulp). The best
// expert's score must match the score computed in double from that mean within 2e-6 of the score's magnitude.
BOOST_AUTO_TEST_CASE(gating_mean_over_a_long_sequence_does_not_drift) {
  random_engine gen(21);
  moe::local_mixture_of_experts<> layer({.grid = {2, 3}, .k = 1, .uid_prefix = "mean"},
                                        nn::expert_schema{{shape{3000, 4}}, {shape{3000, 4}}},
                                        [&](const std::string&, std::span<const std::uint32_t>) {
                                          return std::unique_ptr<nn::module>(std::make_unique<nn::linear<>>(4, 4, gen));
                                        },
                                        gen);
  tensor x = tensor::full(shape{1, 3000, 4}, 1.0f);
  for (int i = 0; i < 4; ++i) x.data<float>()[i] = 1e8f;
  layer.forward(x);
  const double mean = (1e8 + 2999.0) / 3000.0;
  const tensor& w = layer.gating().projection().weight();
  const tensor& bias = layer.gating().projection().bias();
  std::vector<double> g(static_cast<std::size_t>(w.dim(0)));
  double magnitude = 0;  // the largest sum of |terms| of a grid score: the scale of f32's own rounding
  for (std::int64_t o = 0; o < w.dim(0); ++o) {
    double s = bias.data<float>()[o], m = std::abs(s);
    for (std::int64_t i = 0; i < 4; ++i) {
      s += static_cast<double>(w.at(o, i)) * mean;
      m += std::abs(static_cast<double>(w.at(o, i)) * mean);
    }
    g[static_cast<std::size_t>(o)] = s;
    magnitude = std::max(magnitude, m);
  }
  double best = -1e300;
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 3; ++b) best = std::max(best, g[static_cast<std::size_t>(a)] + g[static_cast<std::size_t>(2 + b)]);
  const double got = layer.routing().selection.scores[0];
  BOOST_TEST(std::abs(got - best) <= 2e-6 * magnitude, "best score " << got << ", right " << best);
}

BOOST_AUTO_TEST_SUITE_END()
