// Conversions between f32 and the 16-bit storage types (f16, bf16): round to nearest even, NaN and inf kept.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/tensor/dtype.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>

#include <fmt/core.h>


DMOE_BEGIN_NAMESPACE

constexpr half to_half(float value) noexcept {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  std::uint32_t magnitude = x & 0x7FFFFFFFu;
  if (magnitude >= 0x7F800000u) {  // inf or NaN (NaN stays NaN: its payload keeps a set bit)
    const std::uint32_t nan_bits = magnitude > 0x7F800000u ? 0x200u | ((magnitude >> 13) & 0x3FFu) : 0u;
    return {static_cast<std::uint16_t>(sign | 0x7C00u | nan_bits)};
  }
  if (magnitude >= 0x477FF000u) return {static_cast<std::uint16_t>(sign | 0x7C00u)};  // rounds past 65504
  if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half (or zero)
    // Value / 2^-24 rounded to nearest even; 1024 correctly becomes the smallest normal.
    const std::uint32_t shift = 126u - (magnitude >> 23);  // 2^(e-127) * 1.m / 2^-24: shift the 24-bit mantissa
    if (shift > 24u) return {sign};
    const std::uint32_t mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
    const std::uint32_t kept = mantissa >> shift;
    const std::uint32_t rest = mantissa & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    const std::uint32_t rounded = kept + ((rest > halfway || (rest == halfway && (kept & 1u))) ? 1u : 0u);
    return {static_cast<std::uint16_t>(sign | rounded)};
  }
  magnitude += 0xFFFu + ((magnitude >> 13) & 1u);  // round to nearest even at bit 13
  magnitude -= 112u << 23;                         // exponent bias 127 -> 15
  return {static_cast<std::uint16_t>(sign | (magnitude >> 13))};
}

constexpr float to_float(half value) noexcept {
  const std::uint32_t h = value.bits;
  const std::uint32_t sign = (h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  const std::uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);  // mantissa * 2^-24, exact
    return sign ? -magnitude : magnitude;
  }
  // NaNs come back quiet (signalling ones get the quiet bit), as F16C's vcvtph2ps does on the vector path.
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13) | (mantissa ? 0x400000u : 0u));
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

constexpr bfloat16 to_bfloat16(float value) noexcept {
  std::uint32_t x = std::bit_cast<std::uint32_t>(value);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return {static_cast<std::uint16_t>((x >> 16) | 0x40u)};  // quiet NaN
  x += 0x7FFFu + ((x >> 16) & 1u);
  return {static_cast<std::uint16_t>(x >> 16)};
}

constexpr float to_float(bfloat16 value) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(value.bits) << 16);
}

namespace detail {
DMOE_LAZY inline void check_convert_sizes(std::size_t from, std::size_t to) {
  if (from != to) throw shape_error(dmoe::format("convert: {} source values but {} destination slots", from, to));
}
}  // namespace detail

// Element-wise conversions between spans of equal size (F16C instructions where the build targets them); throws
// shape_error for spans of different sizes.
DMOE_DECL void convert(std::span<const float> from, std::span<half> to);
DMOE_DECL void convert(std::span<const half> from, std::span<float> to);
DMOE_DECL void convert(std::span<const float> from, std::span<bfloat16> to);
DMOE_DECL void convert(std::span<const bfloat16> from, std::span<float> to);

// A copy of t with elements of type `to`: between f32, f16 and bf16 (the same dtype gives a clone).
DMOE_DECL tensor to_dtype(const tensor& t, dtype to);

DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/core/simd.hpp>

DMOE_BEGIN_NAMESPACE

DMOE_DEF void convert(std::span<const float> from, std::span<half> to) {
  detail::check_convert_sizes(from.size(), to.size());
  std::size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= from.size(); i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(from.data() + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(to.data() + i), h);
  }
#endif
  for (; i < from.size(); ++i) to[i] = to_half(from[i]);
}

DMOE_DEF void convert(std::span<const half> from, std::span<float> to) {
  detail::check_convert_sizes(from.size(), to.size());
  std::size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= from.size(); i += 8)
    _mm256_storeu_ps(to.data() + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(from.data() + i))));
#endif
  for (; i < from.size(); ++i) to[i] = to_float(from[i]);
}

DMOE_DEF void convert(std::span<const float> from, std::span<bfloat16> to) {
  detail::check_convert_sizes(from.size(), to.size());
  for (std::size_t i = 0; i < from.size(); ++i) to[i] = to_bfloat16(from[i]);
}

DMOE_DEF void convert(std::span<const bfloat16> from, std::span<float> to) {
  detail::check_convert_sizes(from.size(), to.size());
  for (std::size_t i = 0; i < from.size(); ++i) to[i] = to_float(from[i]);
}

DMOE_DEF tensor to_dtype(const tensor& t, dtype to) {
  if (t.dtype() == to) return t.clone();
  tensor out = tensor::uninitialized(t.shape(), to);
  if (t.dtype() == dtype::f32 && to == dtype::f16)
    convert(t.span<float>(), out.span<half>());
  else if (t.dtype() == dtype::f32 && to == dtype::bf16)
    convert(t.span<float>(), out.span<bfloat16>());
  else if (t.dtype() == dtype::f16 && to == dtype::f32)
    convert(t.span<half>(), out.span<float>());
  else if (t.dtype() == dtype::bf16 && to == dtype::f32)
    convert(t.span<bfloat16>(), out.span<float>());
  else
    throw invalid_argument_error(dmoe::format("to_dtype: no conversion from {} to {}", t.dtype(), to));
  return out;
}

DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
