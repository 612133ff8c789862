// xxHash wrappers: 64-bit checksums and the 128-bit ids the DHT uses.
#pragma once

#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

DMOE_BEGIN_NAMESPACE

// XXH64 of `bytes` with `seed`.
DMOE_DECL std::uint64_t xxh64(const_byte_span bytes, std::uint64_t seed = 0) noexcept;

// XXH3's 64-bit hash of `bytes`.
DMOE_DECL std::uint64_t xxh3_64(const_byte_span bytes) noexcept;

struct hash128 {
  std::uint64_t high = 0;
  std::uint64_t low = 0;
  friend constexpr auto operator<=>(const hash128&, const hash128&) = default;
};

// XXH3's 128-bit hash of `bytes` (of `text`'s bytes).
DMOE_DECL hash128 xxh3_128(const_byte_span bytes) noexcept;
DMOE_LAZY inline hash128 xxh3_128(std::string_view text) noexcept { return xxh3_128(as_bytes(text)); }

// Incremental 64-bit checksum, for data written in pieces (checkpoints): digest() is xxh64 of every byte given to
// update() so far.
class xxh64_stream {
 public:
  DMOE_DECL explicit xxh64_stream(std::uint64_t seed = 0) noexcept;
  DMOE_DECL void update(const_byte_span bytes) noexcept;
  DMOE_DECL std::uint64_t digest() const noexcept;

 private:
  // An XXH64_state_t (88 bytes in xxHash 0.8), kept as bytes so that the declarations need no <xxhash.h>.
  alignas(8) std::array<std::byte, 88> state_;
};

DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <new>

#define XXH_INLINE_ALL
#include <xxhash.h>

DMOE_BEGIN_NAMESPACE

namespace detail {
static_assert(sizeof(XXH64_state_t) <= 88 && alignof(XXH64_state_t) <= 8);
}  // namespace detail

DMOE_DEF std::uint64_t xxh64(const_byte_span bytes, std::uint64_t seed) noexcept {
  return XXH64(bytes.data(), bytes.size(), seed);
}

DMOE_DEF std::uint64_t xxh3_64(const_byte_span bytes) noexcept { return XXH3_64bits(bytes.data(), bytes.size()); }

DMOE_DEF hash128 xxh3_128(const_byte_span bytes) noexcept {
  const XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  return {h.high64, h.low64};
}

DMOE_DEF xxh64_stream::xxh64_stream(std::uint64_t seed) noexcept {
  XXH64_reset(::new (state_.data()) XXH64_state_t, seed);
}

DMOE_DEF void xxh64_stream::update(const_byte_span bytes) noexcept {
  XXH64_update(std::launder(reinterpret_cast<XXH64_state_t*>(state_.data())), bytes.data(), bytes.size());
}

DMOE_DEF std::uint64_t xxh64_stream::digest() const noexcept {
  return XXH64_digest(std::launder(reinterpret_cast<const XXH64_state_t*>(state_.data())));
}

DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
