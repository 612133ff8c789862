// Seeded parameter initialisers: Xavier (Glorot), Kaiming (He), normal and uniform, for [fan_out, fan_in] weights.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cmath>
#include <cstdint>
#include <utility>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace nn {
namespace init {

// (fan_in, fan_out) of a weight: [out, in] for matrices, [n] counts as n both ways, [out, in, ...] multiplies
// the trailing dimensions into fan_in.
DMOE_LAZY inline std::pair<double, double> fans(const tensor& w) {
  if (w.rank() == 0 || w.numel() == 0)
    throw shape_error(dmoe::format("init: cannot compute fans of a tensor of shape {}", w.shape()));
  if (w.rank() == 1) return {static_cast<double>(w.dim(0)), static_cast<double>(w.dim(0))};
  const double fan_out = static_cast<double>(w.dim(0));
  return {static_cast<double>(w.numel()) / fan_out, fan_out};
}

DMOE_LAZY inline void normal(tensor& w, random_engine& gen, float mean, float stddev) {
  w.fill_normal(gen, mean, stddev);
}
DMOE_LAZY inline void uniform(tensor& w, random_engine& gen, float low, float high) { w.fill_uniform(gen, low, high); }

// U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)).
DMOE_LAZY inline void xavier_uniform(tensor& w, random_engine& gen, float gain = 1.0f) {
  const auto [in, out] = fans(w);
  const auto a = static_cast<float>(gain * std::sqrt(6.0 / (in + out)));
  w.fill_uniform(gen, -a, a);
}
// N(0, s^2) with s = gain * sqrt(2 / (fan_in + fan_out)).
DMOE_LAZY inline void xavier_normal(tensor& w, random_engine& gen, float gain = 1.0f) {
  const auto [in, out] = fans(w);
  w.fill_normal(gen, 0.0f, static_cast<float>(gain * std::sqrt(2.0 / (in + out))));
}
// U(-a, a) with a = gain * sqrt(3 / fan_in); gain sqrt(2) suits ReLU.
DMOE_LAZY inline void kaiming_uniform(tensor& w, random_engine& gen, float gain = std::sqrt(2.0f)) {
  const auto a = static_cast<float>(gain * std::sqrt(3.0 / fans(w).first));
  w.fill_uniform(gen, -a, a);
}
// N(0, s^2) with s = gain / sqrt(fan_in).
DMOE_LAZY inline void kaiming_normal(tensor& w, random_engine& gen, float gain = std::sqrt(2.0f)) {
  w.fill_normal(gen, 0.0f, static_cast<float>(gain / std::sqrt(fans(w).first)));
}

}  // namespace init
}  // namespace nn
DMOE_END_NAMESPACE
