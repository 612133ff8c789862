// Dropout on the CPU with an explicit mask: draw the mask once (seeded), apply it forward and backward.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <string_view>

DMOE_BEGIN_NAMESPACE
namespace ops {

// Fills mask (f32, any shape) with 0 (probability p) or 1 / (1 - p): the inverted-dropout scale is in the mask,
// so evaluation needs no rescaling. p must be in [0, 1).
DMOE_DECL void dropout_mask(cpu_t, tensor& mask, float p, random_engine& gen);

// y = x * mask (elementwise, same shapes); the same call is dropout's forward and, with dy, its backward.
// y may be x itself.
DMOE_DECL void dropout_apply(cpu_t, const tensor& x, const tensor& mask, tensor& y);

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/ops/cpu/eigen.hpp>
#include <dmoe/ops/cpu/parallel.hpp>
#include <random>
#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace ops {

DMOE_DEF void dropout_mask(cpu_t, tensor& mask, float p, random_engine& gen) {
  constexpr std::string_view op = "dropout_mask";
  detail::check_cpu_f32(op, "mask", mask);
  if (!(p >= 0.0f && p < 1.0f)) throw invalid_argument_error(dmoe::format("{}: probability {} is outside [0, 1)", op, p));
  const float keep = 1.0f / (1.0f - p);
  // 24 random bits per element: draws are cheap and the threshold exact to 2^-24.
  const auto threshold = static_cast<std::uint32_t>(static_cast<double>(p) * (1u << 24));
  float* m = mask.data<float>();
  const std::int64_t n = mask.numel();
  std::int64_t i = 0;
  while (i < n) {
    std::uint64_t bits = gen();
    for (int j = 0; j < 2 && i < n; ++j, ++i, bits >>= 32)
      m[i] = (static_cast<std::uint32_t>(bits) & 0xFFFFFFu) < threshold ? 0.0f : keep;
  }
}

DMOE_DEF void dropout_apply(cpu_t, const tensor& x, const tensor& mask, tensor& y) {
  constexpr std::string_view op = "dropout_apply";
  detail::check_cpu_f32(op, "x", x);
  detail::check_cpu_f32(op, "mask", mask);
  expect_same_shape(op, "x", x, "mask", mask);
  detail::prepare_output(op, "y", y, x.shape());
  const auto xm = detail::as_array(x);
  const auto mm = detail::as_array(mask);
  auto ym = detail::as_array(y);
  const std::int64_t cols = x.shape().inner();
  detail::parallel_for(x.shape().outer(), detail::row_grain(cols), [&](std::int64_t begin, std::int64_t end) {
    const auto n = end - begin;
    ym.middleRows(begin, n) = xm.middleRows(begin, n) * mm.middleRows(begin, n);
  });
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
