// dht::republisher: keeps an owner's values alive in the DHT by storing them again before they expire.
//
// Kademlia (Maymounkov & Mazières 2002, section 2.5) has the original publisher republish its key-value pairs
// periodically; here that is the owner's job (stored values expire, nothing is kept forever by the swarm), and this
// class does it: every `period` all its entries are stored with the expiration now + ttl (wall clock of the node),
// in one store_many crawl, each signed again by its owner when it has one (dht/record_validator.hpp).
#pragma once

#include <dmoe/async/task.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/log.hpp>
#include <dmoe/dht/node.hpp>
#include <dmoe/dht/record_validator.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace dht {

struct republish_options {
  std::chrono::milliseconds period{30'000};  // between rounds
  std::chrono::milliseconds ttl{0};          // how long each round's values live; 0: 2 x period (one round may fail)
};

class republisher {
 public:
  // Throws invalid_argument_error for a period or ttl that is not positive, or a ttl not longer than the period
  // (the values would lapse between rounds).
  DMOE_DECL republisher(node& n, republish_options options = {});
  republisher(const republisher&) = delete;
  republisher& operator=(const republisher&) = delete;

  // Adds an entry, or replaces the one with the same key and subkey. Its expiration and signature are made anew
  // each round; `owner` (which must outlive this) signs it, when given.
  DMOE_DECL void set(key_id key, std::optional<byte_buffer> subkey, byte_buffer value, const ed25519_keypair* owner = nullptr);
  // Stops republishing an entry (the stored copies live until their expiration). Returns whether it was there.
  DMOE_LAZY bool erase(const key_id& key, const std::optional<byte_buffer>& subkey = std::nullopt) {
    const auto before = entries_.size();
    std::erase_if(entries_, [&](const owned& e) { return e.entry.key == key && e.entry.subkey == subkey; });
    return entries_.size() != before;
  }
  std::size_t size() const noexcept { return entries_.size(); }

  // One round now: every entry stored with expiration now + ttl, by the end of one period. Returns how many
  // entries some node took. Errors: those of node::store_many (closed_error after shutdown, cancelled_error).
  DMOE_DECL task<std::size_t> publish_once();

  // A round now and then every period, until the awaiting coroutine is stopped (cancelled_error) or the node
  // shuts down (returns). A failed round is logged and the next one comes on time.
  DMOE_DECL task<void> run();

  // Rounds done (thread-safe).
  std::uint64_t rounds() const noexcept { return rounds_.load(); }
  // Called after each round with (entries stored, entries in the round).
  void on_round(std::function<void(std::size_t, std::size_t)> fn) { on_round_ = std::move(fn); }
  const republish_options& options() const noexcept { return options_; }

 private:
  struct owned {
    store_entry entry;
    const ed25519_keypair* owner = nullptr;
  };

  node& node_;
  republish_options options_;
  std::vector<owned> entries_;
  std::atomic<std::uint64_t> rounds_{0};
  std::function<void(std::size_t, std::size_t)> on_round_;
};

}  // namespace dht
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace dht {

DMOE_DEF republisher::republisher(node& n, republish_options options) : node_(n), options_(options) {
  if (options_.period.count() <= 0) throw invalid_argument_error("republisher: period must be positive");
  if (options_.ttl.count() == 0) options_.ttl = 2 * options_.period;
  if (options_.ttl <= options_.period)
    throw invalid_argument_error(dmoe::format("republisher: ttl ({} ms) must be longer than the period ({} ms)",
                                             options_.ttl.count(), options_.period.count()));
}

DMOE_DEF auto republisher::set(key_id key, std::optional<byte_buffer> subkey, byte_buffer value,
    const ed25519_keypair* owner) -> void {
  for (auto& e : entries_)
    if (e.entry.key == key && e.entry.subkey == subkey) {
      e.entry.value = std::move(value);
      e.owner = owner;
      return;
    }
  entries_.push_back({store_entry{key, std::move(subkey), std::move(value), 0, {}}, owner});
}

DMOE_DEF auto republisher::publish_once() -> task<std::size_t> {
  const wall_seconds expiration =
      node_.options().clock->wall_now() + std::chrono::duration<double>(options_.ttl).count();
  std::vector<store_entry> batch;
  batch.reserve(entries_.size());
  for (const auto& e : entries_) {
    store_entry s = e.entry;
    s.expiration = expiration;
    batch.push_back(e.owner ? s.signed_by(*e.owner) : std::move(s));
  }
  const std::size_t total = batch.size();
  std::size_t stored = 0;
  if (total > 0) {
    const auto outcomes = co_await node_.store_many(std::move(batch), deadline_after(options_.period));
    for (const auto& o : outcomes) stored += o ? 1 : 0;
  }
  rounds_.fetch_add(1);
  if (stored < total) log_warn("republished {} of {} DHT entries (the rest: no node took them)", stored, total);
  if (on_round_) on_round_(stored, total);
  co_return stored;
}

DMOE_DEF auto republisher::run() -> task<void> {
  while (true) {
    const steady_time next = deadline_after(options_.period);
    try {
      co_await publish_once();
    } catch (const cancelled_error&) {
      throw;
    } catch (const closed_error&) {
      co_return;
    } catch (const error& e) {
      log_warn("republishing failed: {}", e.what());
    }
    co_await sleep_until(next);
  }
}

}  // namespace dht
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
