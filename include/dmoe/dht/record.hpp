// What a DHT key holds (one timed value, or a dictionary of timed subkeys) and how two versions merge: newer wins.
#pragma once

#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/config.hpp>

#include <algorithm>
#include <cstddef>
#include <map>

DMOE_BEGIN_NAMESPACE
namespace dht {

// A value with its expiration in wall-clock seconds since the Unix epoch (`wall_seconds`, a double, as
// core/clock.hpp); alive while now < expiration. `signature` is opaque here (empty when unsigned): the record
// validator defines and checks it.
struct timed_value {
  byte_buffer value;
  wall_seconds expiration = 0;
  byte_buffer signature;

  friend bool operator==(const timed_value&, const timed_value&) = default;
};

// Orders subkeys by their bytes (through string_view: g++ 12 misreads vector<byte>'s <=> as an unbounded memcmp).
struct subkey_order {
  bool operator()(const byte_buffer& a, const byte_buffer& b) const noexcept {
    return as_string_view(a) < as_string_view(b);
  }
};

// Subkey -> timed value, ordered by subkey bytes.
using dictionary = std::map<byte_buffer, timed_value, subkey_order>;

// What one key holds: a plain value, or a dictionary (then `value` is unused and `subkeys` is non-empty).
struct record {
  bool is_dictionary = false;
  timed_value value;
  dictionary subkeys;

  DMOE_LAZY static record plain(byte_buffer value, wall_seconds expiration, byte_buffer signature = {}) {
    record r;
    r.value = {std::move(value), expiration, std::move(signature)};
    return r;
  }
  DMOE_DECL static record single_subkey(byte_buffer subkey, byte_buffer value, wall_seconds expiration,
                              byte_buffer signature = {});

  // The plain value's expiration, or the latest subkey's (a dictionary lives as long as its newest entry).
  DMOE_DECL wall_seconds expiration() const noexcept;

  // Bytes this record accounts for in storage limits: values, subkeys and signatures.
  DMOE_DECL std::size_t byte_size() const noexcept;

  // Drops subkeys that expired at `now`; returns false when nothing alive is left.
  DMOE_LAZY bool drop_expired(wall_seconds now) {
    if (!is_dictionary) return now < value.expiration;
    std::erase_if(subkeys, [now](const auto& item) { return !(now < item.second.expiration); });
    return !subkeys.empty();
  }

  friend bool operator==(const record&, const record&) = default;
};

// Whether merging `incoming` into `current` would change it: a plain value or a dictionary replaces the other
// kind only when its expiration is strictly later; dictionaries merge per subkey, each subkey newer-wins.
DMOE_DECL bool would_change(const record& current, const record& incoming);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF bool would_change(const record& current, const record& incoming) {
  if (current.is_dictionary && incoming.is_dictionary) {
    for (const auto& [subkey, entry] : incoming.subkeys) {
      auto it = current.subkeys.find(subkey);
      if (it == current.subkeys.end() || entry.expiration > it->second.expiration) return true;
    }
    return false;
  }
  return incoming.expiration() > current.expiration();
}
#endif  // DMOE_HEAVY_DEFINITIONS

// Merges `incoming` into `current` by the rules of `would_change`; returns whether anything changed.
DMOE_DECL bool merge_into(record& current, const record& incoming);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF bool merge_into(record& current, const record& incoming) {
  if (current.is_dictionary && incoming.is_dictionary) {
    bool changed = false;
    for (const auto& [subkey, entry] : incoming.subkeys) {
      auto [it, inserted] = current.subkeys.try_emplace(subkey, entry);
      if (inserted) {
        changed = true;
      } else if (entry.expiration > it->second.expiration) {
        it->second = entry;
        changed = true;
      }
    }
    return changed;
  }
  if (incoming.expiration() > current.expiration()) {
    current = incoming;
    return true;
  }
  return false;
}
#endif  // DMOE_HEAVY_DEFINITIONS

}  // namespace dht
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace dht {

DMOE_DEF auto record::single_subkey(byte_buffer subkey, byte_buffer value, wall_seconds expiration,
                            byte_buffer signature) -> record {
  record r;
  r.is_dictionary = true;
  r.subkeys.emplace(std::move(subkey), timed_value{std::move(value), expiration, std::move(signature)});
  return r;
}

DMOE_DEF auto record::expiration() const noexcept -> wall_seconds {
  if (!is_dictionary) return value.expiration;
  wall_seconds latest = 0;
  for (const auto& [subkey, entry] : subkeys) latest = std::max(latest, entry.expiration);
  return latest;
}

DMOE_DEF auto record::byte_size() const noexcept -> std::size_t {
  if (!is_dictionary) return value.value.size() + value.signature.size();
  std::size_t total = 0;
  for (const auto& [subkey, entry] : subkeys) total += subkey.size() + entry.value.size() + entry.signature.size();
  return total;
}

}  // namespace dht
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
