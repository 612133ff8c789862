// xxHash wrappers: 64-bit checksums and the 128-bit ids the DHT uses.
#pragma once

#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>

#include <array>
#include <cstdint>
#include <string_view>

#define XXH_INLINE_ALL
#include <xxhash.h>

DMOE_BEGIN_NAMESPACE

inline std::uint64_t xxh64(const_byte_span bytes, std::uint64_t seed = 0) noexcept {
  return XXH64(bytes.data(), bytes.size(), seed);
}

inline std::uint64_t xxh3_64(const_byte_span bytes) noexcept { return XXH3_64bits(bytes.data(), bytes.size()); }

struct hash128 {
  std::uint64_t high = 0;
  std::uint64_t low = 0;
  friend constexpr auto operator<=>(const hash128&, const hash128&) = default;
};

inline hash128 xxh3_128(const_byte_span bytes) noexcept {
  auto h = XXH3_128bits(bytes.data(), bytes.size());
  return {h.high64, h.low64};
}

inline hash128 xxh3_128(std::string_view text) noexcept { return xxh3_128(as_bytes(text)); }

// Incremental 64-bit checksum, for data written in pieces (checkpoints).
class xxh64_stream {
 public:
  explicit xxh64_stream(std::uint64_t seed = 0) { XXH64_reset(&state_, seed); }
  void update(const_byte_span bytes) noexcept { XXH64_update(&state_, bytes.data(), bytes.size()); }
  std::uint64_t digest() const noexcept { return XXH64_digest(&state_); }

 private:
  XXH64_state_t state_;
};

DMOE_END_NAMESPACE
