// Element types of tensors: f32 for compute, f16/bf16 for storage and the wire, integers for labels and indices.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string_view>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE

enum class dtype : std::uint8_t { f32 = 0, f16 = 1, bf16 = 2, i32 = 3, i64 = 4, u8 = 5 };

// IEEE 754 binary16, stored as its bits (convert with dmoe/tensor/half.hpp).
struct half {
  std::uint16_t bits = 0;
  friend constexpr bool operator==(half, half) noexcept = default;
};

// bfloat16: the upper 16 bits of an f32, stored as its bits.
struct bfloat16 {
  std::uint16_t bits = 0;
  friend constexpr bool operator==(bfloat16, bfloat16) noexcept = default;
};

constexpr std::size_t size_of(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return 4;
    case dtype::f16: return 2;
    case dtype::bf16: return 2;
    case dtype::i32: return 4;
    case dtype::i64: return 8;
    case dtype::u8: return 1;
  }
  return 0;
}

constexpr std::string_view to_string(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "f32";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
    case dtype::i32: return "i32";
    case dtype::i64: return "i64";
    case dtype::u8: return "u8";
  }
  return "unknown";
}

inline std::ostream& operator<<(std::ostream& out, dtype t) { return out << to_string(t); }

constexpr bool is_floating(dtype t) noexcept { return t == dtype::f32 || t == dtype::f16 || t == dtype::bf16; }

// Checks a dtype read from untrusted bytes.
DMOE_LAZY inline dtype dtype_from_code(std::uint8_t code) {
  if (code > static_cast<std::uint8_t>(dtype::u8)) throw invalid_argument_error(dmoe::format("unknown dtype code {}", code));
  return static_cast<dtype>(code);
}

// The dtype whose elements are stored as T.
template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr dtype value = dtype::f32;
};
template <>
struct dtype_of<half> {
  static constexpr dtype value = dtype::f16;
};
template <>
struct dtype_of<bfloat16> {
  static constexpr dtype value = dtype::bf16;
};
template <>
struct dtype_of<std::int32_t> {
  static constexpr dtype value = dtype::i32;
};
template <>
struct dtype_of<std::int64_t> {
  static constexpr dtype value = dtype::i64;
};
template <>
struct dtype_of<std::uint8_t> {
  static constexpr dtype value = dtype::u8;
};
template <class T>
inline constexpr dtype dtype_of_v = dtype_of<std::remove_cv_t<T>>::value;

DMOE_END_NAMESPACE

template <>
struct fmt::formatter<dmoe::dtype> : dmoe::detail::text_formatter {
  template <class Context>
  auto format(dmoe::dtype t, Context& ctx) const {
    return write(dmoe::to_string(t), ctx);
  }
};
