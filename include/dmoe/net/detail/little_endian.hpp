// Fixed-offset little-endian loads and stores for the net layer's fixed-size headers.
#pragma once

#include <dmoe/core/config.hpp>

#include <bit>
#include <cstddef>
#include <cstring>
#include <type_traits>

DMOE_BEGIN_NAMESPACE
namespace net::detail {

static_assert(std::endian::native == std::endian::little, "dmoe's wire formats assume a little-endian host");

template <class T>
  requires std::is_arithmetic_v<T>
void store_le(std::byte* at, T value) noexcept {
  std::memcpy(at, &value, sizeof(T));
}

template <class T>
  requires std::is_arithmetic_v<T>
T load_le(const std::byte* at) noexcept {
  T value;
  std::memcpy(&value, at, sizeof(T));
  return value;
}

}  // namespace net::detail
DMOE_END_NAMESPACE
