// 128-bit Kademlia node ids and keys: XOR distance, prefix helpers, key hashing, hex text, random ids.
#pragma once

#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/hash.hpp>

#include <array>
#include <atomic>
#include <bit>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <ostream>
#include <random>
#include <string>
#include <string_view>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace dht {

// A point of the 128-bit id space (Maymounkov & Mazières 2002, "Kademlia", section 2). `high` holds the most
// significant 64 bits, so the defaulted ordering is the numeric one; bit 0 is the most significant bit.
struct node_id {
  static constexpr std::size_t bits = 128;
  static constexpr std::size_t size = 16;  // bytes on the wire

  std::uint64_t high = 0;
  std::uint64_t low = 0;

  friend constexpr auto operator<=>(const node_id&, const node_id&) = default;

  friend constexpr node_id operator^(const node_id& a, const node_id& b) noexcept {
    return {a.high ^ b.high, a.low ^ b.low};
  }

  // Bit `index` counted from the most significant (0) to the least (127).
  constexpr bool bit(std::size_t index) const noexcept {
    return index < 64 ? ((high >> (63 - index)) & 1u) != 0 : ((low >> (127 - index)) & 1u) != 0;
  }
  constexpr node_id with_bit(std::size_t index, bool value) const noexcept {
    node_id out = *this;
    if (index < 64) {
      const std::uint64_t mask = std::uint64_t{1} << (63 - index);
      out.high = value ? (out.high | mask) : (out.high & ~mask);
    } else {
      const std::uint64_t mask = std::uint64_t{1} << (127 - index);
      out.low = value ? (out.low | mask) : (out.low & ~mask);
    }
    return out;
  }

  // The id with every bit after the first `depth` cleared: the lowest id of a prefix range.
  constexpr node_id prefix(std::size_t depth) const noexcept {
    if (depth == 0) return {};
    if (depth >= 128) return *this;
    if (depth <= 64) return {depth == 64 ? high : high & ~(~std::uint64_t{0} >> depth), 0};
    return {high, low & ~(~std::uint64_t{0} >> (depth - 64))};
  }

  // Big-endian bytes, the wire form.
  DMOE_DECL std::array<std::byte, size> to_bytes() const noexcept;
  DMOE_DECL static node_id from_bytes(const_byte_span bytes);

  // 32 lowercase hex digits, most significant first.
  DMOE_LAZY std::string to_hex() const { return dmoe::format("{:016x}{:016x}", high, low); }
  // Accepts exactly 32 hex digits (either case); throws invalid_argument_error.
  DMOE_DECL static node_id from_hex(std::string_view text);

  DMOE_LAZY friend std::ostream& operator<<(std::ostream& out, const node_id& id) { return out << id.to_hex(); }
};

// Keys live in the same space as node ids.
using key_id = node_id;

// The XOR metric d(a, b) = a ^ b, compared as an unsigned 128-bit number (Kademlia, section 2.1).
constexpr node_id distance(const node_id& a, const node_id& b) noexcept { return a ^ b; }

// Number of leading bits `a` and `b` share (128 when equal).
constexpr std::size_t common_prefix_length(const node_id& a, const node_id& b) noexcept {
  const node_id d = a ^ b;
  if (d.high != 0) return static_cast<std::size_t>(std::countl_zero(d.high));
  return 64 + static_cast<std::size_t>(std::countl_zero(d.low));
}

// Whether `a` is strictly nearer to `target` than `b` is.
constexpr bool nearer(const node_id& target, const node_id& a, const node_id& b) noexcept {
  return distance(target, a) < distance(target, b);
}

// The key of some bytes: XXH3-128 of them (not cryptographic: signed records carry their own proof).
DMOE_LAZY inline key_id key_of(const_byte_span bytes) noexcept {
  const hash128 h = xxh3_128(bytes);
  return {h.high, h.low};
}
inline key_id key_of(std::string_view text) noexcept { return key_of(as_bytes(text)); }

// A random id from `generator`.
template <class Generator>
node_id random_node_id(Generator& generator) {
  std::uniform_int_distribution<std::uint64_t> bits;
  const std::uint64_t high = bits(generator);
  return {high, bits(generator)};
}

namespace detail {
// The process's seed: one std::random_device read (~23 µs here) for the whole process.
DMOE_DECL std::uint64_t process_seed();
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::uint64_t process_seed() {
  static const std::uint64_t seed = [] {
    std::random_device device;
    return (std::uint64_t{device()} << 32) ^ device();
  }();
  return seed;
}
#endif  // DMOE_HEAVY_DEFINITIONS
}  // namespace detail

// A random id from a per-thread generator seeded once from the process seed (never std::random_device per id).
DMOE_DECL node_id random_node_id();
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF node_id random_node_id() {
  thread_local std::mt19937_64 generator = [] {
    static std::atomic<std::uint64_t> threads{0};
    const std::uint64_t seed = detail::process_seed();
    const std::uint64_t thread = threads.fetch_add(1);
    std::seed_seq seq{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
                      static_cast<std::uint32_t>(thread), static_cast<std::uint32_t>(thread >> 32)};
    return std::mt19937_64(seq);
  }();
  return random_node_id(generator);
}
#endif  // DMOE_HEAVY_DEFINITIONS

}  // namespace dht
DMOE_END_NAMESPACE

template <>
struct std::hash<dmoe::dht::node_id> {
  std::size_t operator()(const dmoe::dht::node_id& id) const noexcept {
    return static_cast<std::size_t>(id.high ^ (id.low * 0x9e3779b97f4a7c15ull));
  }
};

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace dht {

DMOE_DEF auto node_id::to_bytes() const noexcept -> std::array<std::byte, size> {
  std::array<std::byte, size> out{};
  for (std::size_t i = 0; i < 8; ++i) {
    out[i] = static_cast<std::byte>(high >> (56 - 8 * i));
    out[8 + i] = static_cast<std::byte>(low >> (56 - 8 * i));
  }
  return out;
}

DMOE_DEF auto node_id::from_bytes(const_byte_span bytes) -> node_id {
  if (bytes.size() != size)
    throw invalid_argument_error(dmoe::format("a node id is {} bytes, got {}", size, bytes.size()));
  node_id out;
  for (std::size_t i = 0; i < 8; ++i) {
    out.high = (out.high << 8) | static_cast<std::uint8_t>(bytes[i]);
    out.low = (out.low << 8) | static_cast<std::uint8_t>(bytes[8 + i]);
  }
  return out;
}

DMOE_DEF auto node_id::from_hex(std::string_view text) -> node_id {
  if (text.size() != 32)
    throw invalid_argument_error(dmoe::format("a node id is 32 hex digits, got {} characters", text.size()));
  node_id out;
  for (std::size_t i = 0; i < 32; ++i) {
    const char c = text[i];
    unsigned digit = 0;
    if (c >= '0' && c <= '9') digit = static_cast<unsigned>(c - '0');
    else if (c >= 'a' && c <= 'f') digit = static_cast<unsigned>(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') digit = static_cast<unsigned>(c - 'A' + 10);
    else throw invalid_argument_error(dmoe::format("not a hex digit '{}' at {} in node id '{}'", c, i, text));
    auto& half = i < 16 ? out.high : out.low;
    half = (half << 4) | digit;
  }
  return out;
}

}  // namespace dht
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
