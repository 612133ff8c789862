// The iterative Kademlia lookup's pure state: many keys crawled together, α requests in flight per key, k nearest
// kept.
#pragma once

#include <dmoe/core/clock.hpp>
#include <dmoe/core/boxed.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/dht/messages.hpp>
#include <dmoe/dht/node_id.hpp>
#include <dmoe/dht/record.hpp>
#include <dmoe/dht/routing_table.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <unordered_map>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace dht {

struct lookup_options {
  std::size_t k = 20;     // nearest nodes kept and visited per key (Kademlia's k)
  std::size_t alpha = 3;  // requests in flight at once per key (Kademlia's α)
  std::size_t max_in_flight = 64;  // requests in flight at once over all keys of a crawl
  bool want_values = false;  // a get: a key ends at its first unexpired value...
  bool latest = false;       // ...unless `latest`: then its k nearest are all visited and the newest merged
  std::optional<node_id> self;  // our own id, never asked
  // At most this many candidates per key share one IP address or IPv6 /64 (0: no limit), failed ones not counted,
  // so that one machine answering with invented ids near a key cannot hide the key's real holders
  // (routing_table_options). Candidates over the limit wait, nearest first, for a slot that a failure frees: ids
  // invented at an honest holder's address fail and leave it its place.
  std::size_t max_peers_per_ip = 4;
  bool limit_loopback = false;  // whether that limit counts loopback addresses too
};

// One request to send: ask `peer` about `keys` (a find request), then report `on_response` or `on_failure`.
struct lookup_request {
  wire_peer peer;
  std::vector<key_id> keys;
};

struct lookup_result {
  key_id key;
  std::vector<wire_peer> nearest;  // up to k peers that answered, nearest first
  std::optional<record> found;     // gets: the value (with `latest`, merged newest-wins per subkey across peers)
  std::optional<wire_peer> nearest_without_value;  // gets: the nearest of `nearest` that lacked it (to cache at)
};

// Round-trip time of answered requests, smoothed as TCP's retransmission timer does (RFC 6298, section 2:
// SRTT and RTTVAR with gains 1/8 and 1/4). `timeout()` = SRTT + 4 RTTVAR is how long an answer may take before a
// request is suspect; a lookup uses it to call a find request slow (node_options::slow_request_after). Samples
// from retransmitted requests are the caller's to leave out (Karn's algorithm). Pure: no clock is read here.
class rtt_estimator {
 public:
  using duration = std::chrono::nanoseconds;

  // One measured round trip; negative samples count as 0 and longer ones than an hour as an hour (so that
  // timeout() cannot overflow).
  DMOE_LAZY void add(duration sample) noexcept {
    sample = std::clamp<duration>(sample, duration::zero(), std::chrono::hours(1));
    if (samples_ == 0) {
      srtt_ = sample;
      rttvar_ = sample / 2;
    } else {
      const duration error = srtt_ > sample ? srtt_ - sample : sample - srtt_;
      rttvar_ = (3 * rttvar_ + error) / 4;
      srtt_ = (7 * srtt_ + sample) / 8;
    }
    ++samples_;
  }
  std::uint64_t samples() const noexcept { return samples_; }
  duration srtt() const noexcept { return srtt_; }
  duration rttvar() const noexcept { return rttvar_; }
  // SRTT + 4 RTTVAR; `fallback` until the first sample.
  duration timeout(duration fallback) const noexcept { return samples_ == 0 ? fallback : srtt_ + 4 * rttvar_; }

 private:
  duration srtt_{0};
  duration rttvar_{0};
  std::uint64_t samples_ = 0;
};

// Iterative node/value lookup (Maymounkov & Mazières 2002, "Kademlia", section 2.3), for many keys in one crawl
// as hivemind does: a peer is asked once about every key it is currently among the k nearest candidates of. Each
// key keeps α requests of its own in flight (a request counts for every key it carries), up to max_in_flight for
// the whole crawl, so a crawl of many keys takes about as many round trips as one lookup.
// A key is done when the k nearest candidates that did not fail have all answered (or no candidate is left), or,
// for a get without `latest`, at the first unexpired value. Pure: the caller sends what `next` returns and feeds
// back responses and failures (timeouts); nothing here reads a clock or touches a socket.
//
// Slow peers (section 2.3's "stale" refinement, as BitTorrent's DHT and OpenDHT do it): the caller may report a
// request outstanding for long with `on_slow`. A slow request frees its α slot and stays outstanding: its answer
// is still merged, its failure still counts. Until then its peer is passed over like a failed one when the k
// nearest of a key are chosen, so the next candidate is asked and a key whose k nearest neither failed nor slow
// have answered is done without waiting for it. A key with fewer such answers than k (every candidate asked: a
// swarm not much larger than k) still waits for its slow peers, until the caller reports them stale with
// `on_stale` (outstanding much longer, likely dead): then a key with at least one answer is done without them,
// so a dead peer among a small swarm's nodes costs a lookup the stale delay, not its whole timeout. A key with no
// answer at all waits for every peer. With no slow or stale reports, nothing changes.
class lookup {
 public:
  // Throws invalid_argument_error when k, α or max_in_flight is 0.
  DMOE_DECL lookup(std::vector<key_id> keys, lookup_options options);

  // Candidates to start from (typically the routing table's nearest), for one key or for all.
  DMOE_DECL void add_candidates(const key_id& key, const std::vector<wire_peer>& peers);
  DMOE_DECL void add_candidates(const std::vector<wire_peer>& peers);

  // The requests to send now, keeping at most α in flight per key and max_in_flight in all (slow ones not
  // counted); empty when waiting or done. Keys take turns at choosing the next peer to ask.
  DMOE_DECL std::vector<lookup_request> next();

  // `peer` answered a request from `next` (a find response), slow or not; `now` (wall-clock seconds) decides which
  // values are alive. Keys it was asked about but left out count as answered without a value. Returns false (and
  // changes nothing) when no request to `peer` is in flight.
  DMOE_DECL bool on_response(const node_id& peer_id, const std::vector<find_result>& results, wall_seconds now);

  // `peer` did not answer (timeout) or answered garbage: it counts as failed for every key. Returns false when
  // no request to it was in flight.
  DMOE_DECL bool on_failure(const node_id& peer_id);

  // The request to `peer` has been outstanding past the caller's "slow" threshold (well below its timeout): it
  // stops holding an α slot and its peer is passed over for the keys' k nearest until it answers or fails (see the
  // class comment). Returns false (and changes nothing) when no request to `peer` is in flight or it is slow
  // already.
  DMOE_DECL bool on_slow(const node_id& peer_id);

  // The slow request to `peer` has been outstanding past the caller's "stale" threshold (longer than "slow", still
  // below its timeout): a key with fewer than k other answers stops waiting for it if it has at least one (see the
  // class comment); so does a key whose unasked candidate it is. Returns false (and changes nothing) when no request
  // to `peer` is in flight, it is not slow, or it is stale already.
  DMOE_DECL bool on_stale(const node_id& peer_id);

  // Every key is done and no request is in flight (slow ones included). `done(key)` ignores requests in flight: a
  // caller may return a key's result at once and drop late answers.
  bool done() const { return in_flight_ == 0 && keys_done(); }
  DMOE_DECL bool done(const key_id& key) const;
  // Every key is done (requests may still be in flight).
  bool keys_done() const noexcept { return keys_done_ == keys_.size(); }
  // Requests sent and not yet answered or failed, slow ones included.
  std::size_t in_flight() const noexcept { return in_flight_; }
  // Of those, the ones reported slow (they hold no α slot).
  std::size_t slow() const noexcept { return slow_; }
  std::size_t requests_sent() const noexcept { return requests_sent_; }

  // Per key, in the order given to the constructor (repeats removed).
  DMOE_DECL std::vector<lookup_result> results() const;

 private:
  enum class progress { unasked, asked, answered, failed };
  struct candidate {
    wire_peer peer;
    progress status = progress::unasked;
    bool had_value = false;
  };
  struct key_state {
    key_id key;
    dmoe::detail::boxed<std::map<node_id, candidate>> candidates;  // by distance to the key
    ip_index candidate_ips;                   // candidates per IP address (lookup_options::max_peers_per_ip)
    std::vector<wire_peer> waiting;           // refused for a full IP address; the nearest are kept
    std::optional<record> found;
    bool finished = false;      // a get without `latest` found its value
    bool done = false;          // key_done(), kept current by refresh()
    std::size_t in_flight = 0;  // requests in flight that carry this key, slow ones not counted
  };
  struct peer_state {
    bool in_flight = false;
    bool slow = false;   // its request in flight was reported slow
    bool stale = false;  // ...and then stale
    bool failed = false;
    std::vector<std::size_t> asked;         // keys of the request in flight
    std::vector<std::size_t> candidate_in;  // keys it is a candidate of
  };

  DMOE_DECL void add_candidate(std::size_t i, const wire_peer& p);
  // Key i's waiting candidates whose IP address has room again become candidates, nearest first.
  DMOE_DECL void admit_waiting(std::size_t i);

  // Recomputes whether key i is done, after anything it depends on changed.
  DMOE_DECL void refresh(std::size_t i);

  // Whether a candidate's peer has a slow request outstanding (and has not answered this key yet).
  DMOE_DECL bool is_slow(const candidate& c) const;
  // Whether a candidate's peer has a stale request outstanding (and has not answered this key yet).
  DMOE_DECL bool is_stale(const candidate& c) const;
  // Left out when a key's k nearest are chosen: failed, or slow for now.
  DMOE_LAZY bool passed_over(const candidate& c) const { return c.status == progress::failed || is_slow(c); }

  // The k nearest neither failed nor slow have answered; with fewer such candidates than k, all of them have, and
  // the slow ones have ended or (with at least one answer) turned stale.
  DMOE_DECL bool key_done(const key_state& state) const;

  // The nearest unasked candidate among the key's k nearest neither failed nor slow whose peer is not busy.
  DMOE_DECL const candidate* first_askable(const key_state& state) const;

  lookup_options options_;
  std::size_t waiting_limit_ = 0;  // waiting candidates kept per key
  std::vector<key_state> keys_;
  dmoe::detail::boxed<std::unordered_map<key_id, std::size_t>> index_;
  dmoe::detail::boxed<std::unordered_map<node_id, peer_state>> peers_;
  std::size_t in_flight_ = 0;  // slow ones included
  std::size_t slow_ = 0;
  std::size_t keys_done_ = 0;
  std::size_t cursor_ = 0;
  std::size_t requests_sent_ = 0;
};

}  // namespace dht
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace dht {

DMOE_DEF lookup::lookup(std::vector<key_id> keys, lookup_options options) : options_(options) {
  if (options_.k == 0 || options_.alpha == 0 || options_.max_in_flight == 0)
    throw invalid_argument_error(dmoe::format("lookup needs k, alpha and max_in_flight >= 1, got k={} alpha={} "
                                             "max_in_flight={}",
                                             options_.k, options_.alpha, options_.max_in_flight));
  keys_.reserve(keys.size());
  waiting_limit_ = 4 * options_.k;
  for (const auto& key : keys) {
    if (index_->emplace(key, keys_.size()).second)
      keys_.push_back(
          key_state{key, {}, ip_index(options_.max_peers_per_ip, options_.limit_loopback), {}, {}, false});
  }
  for (std::size_t i = 0; i < keys_.size(); ++i) refresh(i);
}

DMOE_DEF auto lookup::add_candidates(const key_id& key, const std::vector<wire_peer>& peers) -> void {
  auto it = index_->find(key);
  if (it == index_->end()) return;
  for (const auto& p : peers) add_candidate(it->second, p);
  refresh(it->second);
}

DMOE_DEF auto lookup::add_candidates(const std::vector<wire_peer>& peers) -> void {
  for (std::size_t i = 0; i < keys_.size(); ++i) {
    for (const auto& p : peers) add_candidate(i, p);
    refresh(i);
  }
}

DMOE_DEF auto lookup::next() -> std::vector<lookup_request> {
  std::vector<lookup_request> out;
  for (std::size_t scanned = 0; scanned < keys_.size() && in_flight_ - slow_ < options_.max_in_flight;) {
    key_state& state = keys_[cursor_];
    cursor_ = (cursor_ + 1) % keys_.size();
    ++scanned;
    if (state.done || state.in_flight >= options_.alpha) continue;
    const candidate* chosen = first_askable(state);
    if (!chosen) continue;
    lookup_request request{chosen->peer, {}};
    auto& peer = (*peers_)[request.peer.id];
    for (const std::size_t i : peer.candidate_in) {
      key_state& other = keys_[i];
      if (other.done || other.in_flight >= options_.alpha) continue;
      auto c = other.candidates->find(distance(other.key, request.peer.id));
      if (c == other.candidates->end() || c->second.status != progress::unasked || passed_over(c->second)) continue;
      std::size_t nearer = 0;  // candidates before it that are not passed over
      for (auto it = other.candidates->begin(); it != c && nearer < options_.k; ++it)
        nearer += !passed_over(it->second);
      if (nearer >= options_.k) continue;
      c->second.status = progress::asked;
      request.keys.push_back(other.key);
      peer.asked.push_back(i);
      ++other.in_flight;
    }
    peer.in_flight = true;
    ++in_flight_;
    ++requests_sent_;
    out.push_back(std::move(request));
    scanned = 0;
  }
  return out;
}

DMOE_DEF auto lookup::on_response(const node_id& peer_id, const std::vector<find_result>& results,
    wall_seconds now) -> bool {
  auto peer_it = peers_->find(peer_id);
  if (peer_it == peers_->end() || !peer_it->second.in_flight) return false;
  auto asked = std::move(peer_it->second.asked);
  peer_it->second.asked.clear();
  peer_it->second.in_flight = false;
  const bool was_slow = peer_it->second.slow;
  if (was_slow) --slow_;
  peer_it->second.slow = false;
  peer_it->second.stale = false;
  --in_flight_;
  for (std::size_t i : asked)
    if (!was_slow) --keys_[i].in_flight;
  std::unordered_map<key_id, const find_result*> by_key;
  for (const auto& r : results) by_key.emplace(r.key, &r);
  for (std::size_t i : asked) {
    key_state& state = keys_[i];
    auto c = state.candidates->find(distance(state.key, peer_id));
    if (c == state.candidates->end() || c->second.status != progress::asked) continue;
    c->second.status = progress::answered;
    auto r = by_key.find(state.key);
    if (r == by_key.end()) continue;
    for (const auto& p : r->second->nearest) add_candidate(i, p);
    if (!options_.want_values || !r->second->found) continue;
    record alive = *r->second->found;
    if (!alive.drop_expired(now)) continue;
    c->second.had_value = true;
    if (!state.found) state.found = std::move(alive);
    else merge_into(*state.found, alive);
    if (!options_.latest) state.finished = true;
  }
  // The peer is no longer slow: every key it is a candidate of may be done or not now.
  for (std::size_t i : was_slow ? (*peers_)[peer_id].candidate_in : asked) refresh(i);
  return true;
}

DMOE_DEF auto lookup::on_failure(const node_id& peer_id) -> bool {
  auto& peer = (*peers_)[peer_id];
  const bool was_in_flight = peer.in_flight;
  if (was_in_flight) {
    --in_flight_;
    if (!peer.slow)
      for (std::size_t i : peer.asked) --keys_[i].in_flight;
  }
  if (peer.slow) --slow_;
  peer.in_flight = false;
  peer.slow = false;
  peer.stale = false;
  peer.failed = true;
  peer.asked.clear();
  for (std::size_t i : peer.candidate_in) {
    key_state& state = keys_[i];
    auto c = state.candidates->find(distance(state.key, peer_id));
    if (c != state.candidates->end()) {
      c->second.status = progress::failed;
      state.candidate_ips.remove(c->second.peer.address, peer_id);
      admit_waiting(i);
    }
    refresh(i);
  }
  return was_in_flight;
}

DMOE_DEF auto lookup::on_slow(const node_id& peer_id) -> bool {
  auto peer = peers_->find(peer_id);
  if (peer == peers_->end() || !peer->second.in_flight || peer->second.slow) return false;
  peer->second.slow = true;
  ++slow_;
  for (std::size_t i : peer->second.asked) --keys_[i].in_flight;
  for (std::size_t i : peer->second.candidate_in) refresh(i);
  return true;
}

DMOE_DEF auto lookup::on_stale(const node_id& peer_id) -> bool {
  auto peer = peers_->find(peer_id);
  if (peer == peers_->end() || !peer->second.in_flight || !peer->second.slow || peer->second.stale) return false;
  peer->second.stale = true;
  for (std::size_t i : peer->second.candidate_in) refresh(i);
  return true;
}

DMOE_DEF auto lookup::results() const -> std::vector<lookup_result> {
  std::vector<lookup_result> out;
  out.reserve(keys_.size());
  for (const auto& state : keys_) {
    lookup_result r{state.key, {}, state.found, std::nullopt};
    for (const auto& [d, c] : *state.candidates) {
      if (c.status != progress::answered) continue;
      if (r.nearest.size() >= options_.k) break;
      r.nearest.push_back(c.peer);
      if (options_.want_values && !c.had_value && !r.nearest_without_value) r.nearest_without_value = c.peer;
    }
    out.push_back(std::move(r));
  }
  return out;
}

DMOE_DEF auto lookup::admit_waiting(std::size_t i) -> void {
  key_state& state = keys_[i];
  if (state.waiting.empty()) return;
  std::sort(state.waiting.begin(), state.waiting.end(),
            [&](const wire_peer& a, const wire_peer& b) { return nearer(state.key, a.id, b.id); });
  std::vector<wire_peer> still;
  std::vector<wire_peer> admitted;
  for (const auto& w : state.waiting) (state.candidate_ips.full(w.address) ? still : admitted).push_back(w);
  state.waiting = std::move(still);
  for (const auto& w : admitted) add_candidate(i, w);  // a full address sends it back to wait
}

DMOE_DEF auto lookup::add_candidate(std::size_t i, const wire_peer& p) -> void {
  if (options_.self && p.id == *options_.self) return;
  key_state& state = keys_[i];
  if (state.candidate_ips.full(p.address)) {
    // Waits for a slot, unless it is a candidate already (at any address) or waits already.
    if (state.candidates->contains(distance(state.key, p.id))) return;
    if (std::any_of(state.waiting.begin(), state.waiting.end(), [&](const wire_peer& w) { return w.id == p.id; }))
      return;
    state.waiting.push_back(p);
    if (state.waiting.size() > waiting_limit_) {
      const auto farthest = std::max_element(state.waiting.begin(), state.waiting.end(),
                                             [&](const wire_peer& a, const wire_peer& b) {
                                               return nearer(state.key, a.id, b.id);
                                             });
      state.waiting.erase(farthest);
    }
    return;
  }
  auto& peer = (*peers_)[p.id];
  const bool added =
      state.candidates
          ->try_emplace(distance(state.key, p.id), candidate{p, peer.failed ? progress::failed : progress::unasked})
          .second;
  if (!added) return;
  if (!peer.failed) state.candidate_ips.add(p.address, p.id);  // failed candidates hold no slot
  peer.candidate_in.push_back(i);
}

DMOE_DEF auto lookup::refresh(std::size_t i) -> void {
  key_state& state = keys_[i];
  const bool now = key_done(state);
  if (now == state.done) return;
  state.done = now;
  if (now) ++keys_done_;
  else --keys_done_;
}

DMOE_DEF auto lookup::key_done(const key_state& state) const -> bool {
  if (state.finished) return true;
  std::size_t seen = 0;
  bool waiting_for_slow = false, skipping_stale = false;
  for (const auto& [d, c] : *state.candidates) {
    if (c.status == progress::failed) continue;
    if (is_slow(c)) {
      (is_stale(c) ? skipping_stale : waiting_for_slow) = true;
      continue;
    }
    if (c.status != progress::answered) return false;
    if (++seen >= options_.k) return true;
  }
  if (waiting_for_slow) return false;
  return seen > 0 || !skipping_stale;
}

DMOE_DEF auto lookup::first_askable(const key_state& state) const -> const candidate* {
  std::size_t seen = 0;
  for (const auto& [d, c] : *state.candidates) {
    if (passed_over(c)) continue;
    if (seen++ >= options_.k) break;
    if (c.status != progress::unasked) continue;
    auto peer = peers_->find(c.peer.id);
    if (peer == peers_->end() || !peer->second.in_flight) return &c;
  }
  return nullptr;
}

DMOE_DEF auto lookup::done(const key_id& key) const -> bool {
  auto it = index_->find(key);
  return it == index_->end() || keys_[it->second].done;
}

DMOE_DEF auto lookup::is_slow(const candidate& c) const -> bool {
  if (slow_ == 0 || c.status == progress::answered || c.status == progress::failed) return false;
  auto peer = peers_->find(c.peer.id);
  return peer != peers_->end() && peer->second.slow;
}

DMOE_DEF auto lookup::is_stale(const candidate& c) const -> bool {
  if (!is_slow(c)) return false;
  return peers_->find(c.peer.id)->second.stale;
}

}  // namespace dht
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
