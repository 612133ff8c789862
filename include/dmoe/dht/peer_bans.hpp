// Bans of peers that did not answer: each failure bans for twice as long as the last, a success forgets them.
#pragma once

#include <dmoe/core/clock.hpp>
#include <dmoe/core/boxed.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/dht/node_id.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <unordered_map>

DMOE_BEGIN_NAMESPACE
namespace dht {

struct peer_ban_options {
  std::chrono::milliseconds first_ban{1000};   // ban after the first failure
  std::chrono::milliseconds longest_ban{3600 * 1000};  // bans double up to this
  // A peer's failure count is forgotten once its ban ended this long ago (so memory stays bounded by churn).
  std::chrono::milliseconds memory{3600 * 1000};
};

// Pure bookkeeping: time is passed in (steady time), no clock is read.
class peer_bans {
 public:
  DMOE_INLINE explicit peer_bans(peer_ban_options options = {});

  // `id` did not answer at `now`: it is banned for first_ban * 2^(failures - 1), at most longest_ban.
  // Returns the end of the ban.
  DMOE_DECL steady_time failed(const node_id& id, steady_time now);

  // `id` answered: its failures are forgotten.
  DMOE_DECL void succeeded(const node_id& id);

  DMOE_DECL bool is_banned(const node_id& id, steady_time now) const;
  DMOE_DECL std::size_t failures(const node_id& id) const;

  // Forgets peers whose ban ended more than `memory` before `now`.
  DMOE_DECL void expire(steady_time now);
  DMOE_DECL std::size_t size() const noexcept;

 private:
  struct entry {
    std::size_t failures = 0;
    steady_time banned_until{};
  };
  peer_ban_options options_;
  dmoe::detail::boxed<std::unordered_map<node_id, entry>> entries_;
};

}  // namespace dht
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace dht {

DMOE_INLINE peer_bans::peer_bans(peer_ban_options options) : options_(options) {}

DMOE_DEF auto peer_bans::failed(const node_id& id, steady_time now) -> steady_time {
  auto& entry = (*entries_)[id];
  entry.failures = std::min<std::size_t>(entry.failures + 1, 62);
  auto length = options_.first_ban;
  for (std::size_t i = 1; i < entry.failures && length < options_.longest_ban; ++i) length *= 2;
  length = std::min(length, options_.longest_ban);
  entry.banned_until = now + length;
  return entry.banned_until;
}

DMOE_DEF auto peer_bans::succeeded(const node_id& id) -> void { entries_->erase(id); }

DMOE_DEF auto peer_bans::is_banned(const node_id& id, steady_time now) const -> bool {
  auto it = entries_->find(id);
  return it != entries_->end() && now < it->second.banned_until;
}

DMOE_DEF auto peer_bans::failures(const node_id& id) const -> std::size_t {
  auto it = entries_->find(id);
  return it == entries_->end() ? 0 : it->second.failures;
}

DMOE_DEF auto peer_bans::expire(steady_time now) -> void {
  std::erase_if(*entries_, [&](const auto& item) { return item.second.banned_until + options_.memory < now; });
}

DMOE_DEF auto peer_bans::size() const noexcept -> std::size_t { return entries_->size(); }

}  // namespace dht
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
