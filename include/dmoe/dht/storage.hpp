// A node's local DHT storage: expiring values and dictionaries, newer wins, bounded by bytes and keys.
#pragma once

#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/boxed.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/dht/node_id.hpp>
#include <dmoe/dht/record.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

DMOE_BEGIN_NAMESPACE
namespace dht {

struct storage_options {
  std::size_t max_value_size = 64 * 1024;    // bytes of one value (or one subkey's value)
  std::size_t max_subkey_size = 1024;        // bytes of one subkey
  std::size_t max_subkeys = 4096;            // subkeys of one dictionary
  std::size_t max_total_bytes = 64u << 20;   // values, subkeys and signatures of every key, plus 16 per key
  std::size_t max_keys = 1u << 20;           // keys held at once
  // A store whose expiration is further than this ahead of now is refused (seconds): nobody pins a value forever.
  double max_expiration_horizon = 24 * 3600;
};

// Why a store was taken or refused; everything but `stored` leaves the storage exactly as it was.
enum class store_result : std::uint8_t {
  stored = 0,
  not_newer = 1,       // the key (or subkey) already holds an expiration at least as late
  expired = 2,         // the expiration is not after now
  too_far_ahead = 3,   // the expiration is beyond now + max_expiration_horizon
  too_large = 4,       // the value, subkey or dictionary exceeds its limit
  no_room = 5,         // full, and only entries expiring later than this one could be evicted
  invalid = 6,         // not a finite expiration
  refused = 7,         // the record validator refused it: bad or missing signature, another owner, a replay
};

constexpr std::string_view to_string(store_result r) noexcept {
  switch (r) {
    case store_result::stored: return "stored";
    case store_result::not_newer: return "not_newer";
    case store_result::expired: return "expired";
    case store_result::too_far_ahead: return "too_far_ahead";
    case store_result::too_large: return "too_large";
    case store_result::no_room: return "no_room";
    case store_result::invalid: return "invalid";
    case store_result::refused: return "refused";
  }
  return "unknown";
}

// Values keyed by key_id with wall-clock expirations (seconds since the epoch, `wall_seconds`) read from an
// injectable clock. Rules (hivemind's DHT storage, without its bug where a refused store shortened the stored
// value's life): a store succeeds only when strictly newer than what the key or subkey holds, not yet expired and
// within the horizon; a plain value and a dictionary on one key resolve by expiration (a dictionary's is its
// latest subkey's); when full, the earliest-expiring keys are evicted first, but only ones expiring before the
// incoming record, and only when the store is taken. Expired entries are dropped lazily.
class storage {
 public:
  DMOE_INLINE explicit storage(storage_options options = {}, const clock_source& clock = default_clock());

  // Stores a plain value.
  DMOE_LAZY store_result store(const key_id& key, byte_buffer value, wall_seconds expiration, byte_buffer signature = {}) {
    return put(key, record::plain(std::move(value), expiration, std::move(signature)));
  }
  // Stores one subkey of a dictionary value.
  DMOE_LAZY store_result store_subkey(const key_id& key, byte_buffer subkey, byte_buffer value, wall_seconds expiration,
                            byte_buffer signature = {}) {
    if (subkey.size() > options_.max_subkey_size) return store_result::too_large;
    return put(key, record::single_subkey(std::move(subkey), std::move(value), expiration, std::move(signature)));
  }

  // Merges a whole record (plain, or a dictionary of any number of subkeys) by the newer-wins rules; subkeys
  // that are expired or too far ahead are refused as a whole.
  DMOE_DECL store_result put(const key_id& key, const record& incoming);

  // The key's alive content (expired subkeys left out), or nothing.
  DMOE_DECL std::optional<record> get(const key_id& key);

  // Drops every entry that expired at `now`; returns how many keys went.
  DMOE_DECL std::size_t drop_expired(wall_seconds now);
  DMOE_LAZY std::size_t drop_expired() { return drop_expired(clock_->wall_now()); }

  DMOE_DECL std::size_t size() const noexcept;
  std::size_t total_bytes() const noexcept { return total_bytes_; }
  const storage_options& options() const noexcept { return options_; }

  // Every key with its record (expired subkeys may still be present until the next access), for replication.
  DMOE_DECL const std::unordered_map<key_id, record>& entries() const noexcept;

 private:
  static constexpr std::size_t key_overhead = node_id::size;
  DMOE_LAZY static std::size_t entry_bytes(const record& r) noexcept { return key_overhead + r.byte_size(); }

  DMOE_DECL std::optional<store_result> check(const record& incoming, wall_seconds now) const;

  DMOE_DECL void insert(const key_id& key, record r);
  DMOE_DECL void erase(const key_id& key);

  storage_options options_;
  const clock_source* clock_;
  dmoe::detail::boxed<std::unordered_map<key_id, record>> entries_;
  // (expiration, key) of every entry: the order of eviction and expiry. Only a taken store changes it.
  dmoe::detail::boxed<std::set<std::pair<wall_seconds, key_id>>> by_expiration_;
  std::size_t total_bytes_ = 0;
};

}  // namespace dht
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace dht {

DMOE_INLINE storage::storage(storage_options options, const clock_source& clock) : options_(options), clock_(&clock) {}

DMOE_DEF auto storage::size() const noexcept -> std::size_t { return entries_->size(); }

DMOE_DEF auto storage::put(const key_id& key, const record& incoming) -> store_result {
  const wall_seconds now = clock_->wall_now();
  drop_expired(now);
  if (auto refusal = check(incoming, now)) return *refusal;

  auto found = entries_->find(key);
  std::size_t old_bytes = 0;
  record merged;
  if (found != entries_->end()) {
    merged = found->second;  // a copy: a refused store leaves the stored record untouched
    merged.drop_expired(now);
    if (!would_change(merged, incoming)) return store_result::not_newer;
    merge_into(merged, incoming);
    old_bytes = entry_bytes(found->second);
  } else {
    merged = incoming;
  }
  if (merged.is_dictionary && merged.subkeys.size() > options_.max_subkeys) return store_result::too_large;
  const std::size_t new_bytes = entry_bytes(merged);
  if (new_bytes > options_.max_total_bytes) return store_result::too_large;

  // Which earlier-expiring keys would have to go; nothing is evicted unless the store is taken.
  const wall_seconds new_expiration = merged.expiration();
  std::size_t bytes_after = total_bytes_ - old_bytes + new_bytes;
  std::size_t keys_after = entries_->size() + (found == entries_->end() ? 1 : 0);
  std::vector<key_id> victims;
  for (auto it = by_expiration_->begin();
       it != by_expiration_->end() && (bytes_after > options_.max_total_bytes || keys_after > options_.max_keys);
       ++it) {
    if (it->second == key) continue;
    if (!(it->first < new_expiration)) return store_result::no_room;
    bytes_after -= entry_bytes(entries_->at(it->second));
    keys_after -= 1;
    victims.push_back(it->second);
  }
  if (bytes_after > options_.max_total_bytes || keys_after > options_.max_keys) return store_result::no_room;

  for (const auto& victim : victims) erase(victim);
  found = entries_->find(key);
  if (found != entries_->end()) erase(key);
  insert(key, std::move(merged));
  return store_result::stored;
}

DMOE_DEF auto storage::get(const key_id& key) -> std::optional<record> {
  const wall_seconds now = clock_->wall_now();
  auto it = entries_->find(key);
  if (it == entries_->end()) return std::nullopt;
  record copy = it->second;
  if (!copy.drop_expired(now)) {
    erase(key);
    return std::nullopt;
  }
  return copy;
}

DMOE_DEF auto storage::drop_expired(wall_seconds now) -> std::size_t {
  std::size_t dropped = 0;
  while (!by_expiration_->empty() && !(now < by_expiration_->begin()->first)) {
    erase(by_expiration_->begin()->second);
    ++dropped;
  }
  return dropped;
}

DMOE_DEF auto storage::check(const record& incoming, wall_seconds now) const -> std::optional<store_result> {
  auto check_one = [&](const byte_buffer* subkey, const timed_value& v) -> std::optional<store_result> {
    if (!std::isfinite(v.expiration)) return store_result::invalid;
    if (!(now < v.expiration)) return store_result::expired;
    if (v.expiration > now + options_.max_expiration_horizon) return store_result::too_far_ahead;
    if (v.value.size() > options_.max_value_size) return store_result::too_large;
    if (subkey && subkey->size() > options_.max_subkey_size) return store_result::too_large;
    return std::nullopt;
  };
  if (!incoming.is_dictionary) return check_one(nullptr, incoming.value);
  if (incoming.subkeys.empty()) return store_result::invalid;
  for (const auto& [subkey, v] : incoming.subkeys)
    if (auto refusal = check_one(&subkey, v)) return refusal;
  return std::nullopt;
}

DMOE_DEF auto storage::insert(const key_id& key, record r) -> void {
  const wall_seconds expiration = r.expiration();
  total_bytes_ += entry_bytes(r);
  by_expiration_->emplace(expiration, key);
  entries_->emplace(key, std::move(r));
}

DMOE_DEF auto storage::erase(const key_id& key) -> void {
  auto it = entries_->find(key);
  if (it == entries_->end()) return;
  by_expiration_->erase({it->second.expiration(), key});
  total_bytes_ -= entry_bytes(it->second);
  entries_->erase(it);
}

DMOE_DEF const std::unordered_map<key_id, record>& storage::entries() const noexcept { return *entries_; }

}  // namespace dht
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
