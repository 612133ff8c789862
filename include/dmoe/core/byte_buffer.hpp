// Owned, growable byte storage and non-owning byte views.
#pragma once

#include <dmoe/core/config.hpp>

#include <cstddef>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

DMOE_BEGIN_NAMESPACE

using byte_span = std::span<std::byte>;
using const_byte_span = std::span<const std::byte>;

using byte_buffer = std::vector<std::byte>;

inline const_byte_span as_bytes(std::string_view text) noexcept {
  return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

inline std::string_view as_string_view(const_byte_span bytes) noexcept {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

inline byte_buffer to_buffer(const_byte_span bytes) { return byte_buffer(bytes.begin(), bytes.end()); }

inline byte_buffer to_buffer(std::string_view text) { return to_buffer(as_bytes(text)); }

DMOE_END_NAMESPACE
