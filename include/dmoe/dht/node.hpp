// dht::node: a Kademlia DHT node on one io_context: bootstrap, store/get of values and dictionaries, shutdown.
//
// Lookups are the iterative search of the Kademlia paper (Maymounkov & Mazières 2002, section 2.3) driven by the
// pure `lookup` state: α find calls in flight, many keys crawled together, a get ending at its first unexpired
// value unless `latest` asks for the newest among the k nearest (dictionaries merged per subkey). Concurrent gets
// of one key share one traversal. A find call unanswered for a few measured round trips (SRTT + 4 RTTVAR, within
// [min_slow_request_after, slow_request_after]) stops holding up the lookup (its α slot goes to the next
// candidate, and keys whose k nearest other peers answered are done without it): a dead peer costs a lookup that
// delay, not rpc_timeout; in a swarm not much larger than k, where every candidate gets asked, a key waits for its
// slow peers until slow_request_after (stale), then is done with the answers it has. A store goes to the
// num_replicas nodes nearest to the key (ourselves included unless in client mode). Found values are cached locally and on the nearest visited node that
// lacked them (section 2.3's caching). Every call ends by its deadline, whatever the peers do. Any number of nodes
// share one io_context thread; each has its own UDP socket.
#pragma once

#include <dmoe/async/async_event.hpp>
#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/with_timeout.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/boxed.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/log.hpp>
#include <dmoe/dht/lookup.hpp>
#include <dmoe/dht/messages.hpp>
#include <dmoe/dht/node_id.hpp>
#include <dmoe/dht/protocol.hpp>
#include <dmoe/dht/record.hpp>
#include <dmoe/dht/record_validator.hpp>
#include <dmoe/dht/storage.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace dht {

struct node_options : protocol_options {
  std::size_t alpha = 3;  // Kademlia's α: find calls in flight per key of a lookup
  std::size_t max_lookup_in_flight = 64;  // find calls in flight per crawl (over all its keys)
  // The deadline of a bootstrap, store or get given none (no_deadline).
  std::chrono::milliseconds default_timeout{10'000};
  // Between rounds of pings to initial peers that did not answer yet, while none has.
  std::chrono::milliseconds bootstrap_retry_pause{200};
  // Slow and stale find calls (Kademlia section 2.3's stale peers, as BitTorrent's DHT and OpenDHT treat them).
  // A lookup's find call unanswered for SRTT + 4 RTTVAR of this node's answered find calls (rtt_estimator, TCP's
  // retransmission timeout), within [min_slow_request_after, slow_request_after], is slow: it frees its α slot and
  // the lookup asks the next candidate; a key whose k nearest other peers answered is done without it
  // (lookup::on_slow). Unanswered for slow_request_after, it is stale: a key that has asked all its candidates (a
  // swarm not much larger than k) and has an answer is done without it too (lookup::on_stale). Its answer is used
  // if it comes before the lookup ends. So a dead peer costs a large swarm's lookup a few of its round trips and a
  // small swarm's slow_request_after, never rpc_timeout. The price: in a swarm larger than k, a live peer answering
  // slower than the threshold (one busy for a moment, or far slower than this node's other peers: the estimate is
  // the node's, not per peer) is left out of a key's k nearest once k others answered, as a dead one would be; a
  // latest get then misses its value unless a faster replica has it, and a store picks the next node instead.
  // Raise min_slow_request_after where that matters more than a dead peer's cost. A slow call given up at the
  // lookup's end gets a liveness ping in the background (protocol::check_alive), so dead peers still leave the
  // routing table. At or above rpc_timeout, no call is ever slow or stale.
  std::chrono::milliseconds slow_request_after{300};
  // The floor of the measured threshold (lowered to slow_request_after when above it): a peer answering within it
  // is never passed over as slow.
  std::chrono::milliseconds min_slow_request_after{10};
};

// One value to store: a plain value (no subkey) or one subkey of a dictionary.
struct store_entry {
  key_id key;
  std::optional<byte_buffer> subkey;
  byte_buffer value;
  wall_seconds expiration = 0;  // seconds since the Unix epoch; alive while now < expiration
  byte_buffer signature;        // sign_record's blob for signed records, else empty

  // The entry signed by `owner` over (key, subkey, value, expiration).
  DMOE_LAZY store_entry signed_by(const ed25519_keypair& owner) const {
    store_entry out = *this;
    out.signature = sign_record(owner, key, subkey ? &*subkey : nullptr, value, expiration);
    return out;
  }
};

// What became of one stored entry.
struct store_outcome {
  std::size_t replicas = 0;  // nodes that took it (ourselves included)
  std::size_t asked = 0;     // nodes it was offered to
  std::optional<store_result> refusal;  // why a node refused it, when one did (the first reason seen)
  explicit operator bool() const noexcept { return replicas > 0; }
};

struct get_result {
  key_id key;
  std::optional<record> found;  // the value (record::expiration() is its expiration), or nothing
};

struct bootstrap_result {
  bool joined = false;                // an initial peer answered (or none was given: a new swarm)
  std::vector<endpoint> answered;     // initial peers that answered
  std::vector<endpoint> not_answered; // initial peers that never answered by the deadline
  std::size_t peers = 0;              // peers in the routing table afterwards
};

struct node_stats {
  protocol_stats rpc;
  net::datagram_endpoint::counters datagram;
  std::size_t peers = 0;             // in the routing table
  std::size_t stored_keys = 0;       // as a replica
  std::uint64_t lookups = 0;         // traversals run (shared gets count once)
  std::uint64_t lookup_requests = 0; // find calls those traversals made
  std::uint64_t shared_gets = 0;     // keys of gets served by a traversal already running
  std::uint64_t lookup_failures = 0;  // find calls that failed (no answer by rpc_timeout, a refusal, garbage)
  std::uint64_t slow_requests = 0;    // find calls found slow (node_options::slow_request_after): others asked
  std::uint64_t slow_given_up = 0;    // of those, still unanswered when their lookup ended (cancelled)
  std::uint64_t lookups_cut = 0;      // traversals ended by their deadline before every key was done
  // When a find call sent now becomes slow: SRTT + 4 RTTVAR of answered find calls within
  // [min_slow_request_after, slow_request_after]; slow_request_after before any answer.
  std::chrono::microseconds slow_after{0};
  std::chrono::microseconds find_srtt{0};  // smoothed round trip of answered find calls (0 before the first)
};

// A DHT node. Belongs to one io_context: construct it, use it and co_await shutdown() on that context's thread,
// and only then destroy it (the io_context must be run for shutdown to complete).
class node {
 public:
  // Binds the socket and starts serving at the context's next loop iteration. Throws invalid_argument_error for
  // unusable options and system_error when the bind fails.
  DMOE_LAZY node(io_context& ctx, node_options options = {})
      : ctx_(ctx), options_(check(std::move(options))), protocol_(ctx, options_), group_(ctx) {
    group_.spawn(serve());
  }
  node(const node&) = delete;
  node& operator=(const node&) = delete;
  DMOE_INLINE ~node();

  // Joins the swarm (Kademlia, section 2.3's join): pings every initial peer, again every bootstrap_retry_pause
  // until one answers or `deadline` (default_timeout when none) passes; once one has answered the rest get their
  // ping's own retries and no more; then looks up our own id to fill the routing table. With no initial peers the
  // node starts a new swarm (joined). Answers from our own id (our own address) do not count. shutdown() ends it
  // (not joined). Errors: closed_error after shutdown, cancelled_error.
  DMOE_DECL task<bootstrap_result> bootstrap(std::vector<endpoint> initial_peers, steady_time deadline = no_deadline);

  // Stores a plain value under `key` on the num_replicas nearest nodes. See store_many.
  DMOE_DECL task<store_outcome> store(key_id key, byte_buffer value, wall_seconds expiration, steady_time deadline = no_deadline);
  // Stores one subkey of the dictionary under `key`. See store_many.
  DMOE_DECL task<store_outcome> store(key_id key, byte_buffer subkey, byte_buffer value, wall_seconds expiration,
                            steady_time deadline = no_deadline);

  // Stores every entry on the num_replicas nodes nearest to its key (one lookup crawls all keys; each node gets
  // one store call with all its entries). An entry already expired is refused (`expired`) without a call; the
  // newer-wins and signature rules are the storing nodes' (store_result, `refused`). Ends by `deadline`.
  // Errors: invalid_argument_error for an entry over the size limits or with a non-finite expiration (nothing is
  // stored then), closed_error after shutdown, cancelled_error.
  DMOE_DECL task<std::vector<store_outcome>> store_many(std::vector<store_entry> entries, steady_time deadline = no_deadline);

  // The value under `key`: the first unexpired one found, or with `latest` the newest among the k nearest nodes
  // (dictionaries merged per subkey). Nothing when no node holds it. Ends by `deadline`. Errors as get_many.
  DMOE_DECL task<std::optional<record>> get(key_id key, bool latest = false, steady_time deadline = no_deadline);

  // Gets every key in one crawl; results in the order given (repeats kept). A key already being got by another
  // call waits for that traversal (a plain get also joins a `latest` one), whose deadline is extended to this
  // call's when later: each call keeps its own deadline. A value held locally answers a plain get at once. Values
  // found (after the record validator and the expiration horizon, see protocol::find) are cached locally and on
  // the nearest visited node that lacked them. Ends by `deadline` with what was found by then. Errors:
  // closed_error after shutdown, cancelled_error.
  DMOE_DECL task<std::vector<get_result>> get_many(std::vector<key_id> keys, bool latest = false,
                                         steady_time deadline = no_deadline);

  // The `count` nodes nearest to `key` in the swarm (ourselves included unless in client mode), nearest first.
  DMOE_DECL task<std::vector<wire_peer>> find_nearest(key_id key, std::size_t count, steady_time deadline = no_deadline);

  // Pings `address`; returns the id that answered. Errors: timeout_error, closed_error, cancelled_error.
  DMOE_DECL task<node_id> ping(endpoint address, steady_time deadline = no_deadline);

  // Stops serving and every lookup and call in progress (bootstrap, store, get...: they end at once with what they
  // had, or closed_error) and waits for all of them to return; afterwards the node may be destroyed. Calls made
  // later fail with closed_error. Idempotent.
  DMOE_DECL task<void> shutdown();

  const node_id& id() const noexcept { return protocol_.id(); }
  // The address others join with (bootstrap's initial peers).
  const endpoint& local_endpoint() const noexcept { return protocol_.local_endpoint(); }
  const node_options& options() const noexcept { return options_; }
  std::size_t peer_count() const noexcept { return protocol_.table().size(); }
  DMOE_DECL node_stats stats() const;
  bool is_shut_down() const noexcept { return shut_down_; }
  // The protocol underneath: routing table, storage, counters (for tests and tools).
  protocol& rpc() noexcept { return protocol_; }
  const protocol& rpc() const noexcept { return protocol_; }

 private:
  // Runs a caller's call, counted until it has ended so that shutdown() can wait for it: a call never resumes on a
  // destroyed node. (shutdown() ends calls by closing the protocol and setting `closing_`.)
  template <class T>
  task<T> tracked(std::string_view what, task<T> work) {
    ensure_open(what);
    std::optional<T> result;
    std::exception_ptr failure;
    ++callers_;
    try {
      result.emplace(co_await std::move(work));
    } catch (...) {
      failure = std::current_exception();
    }
    if (--callers_ == 0) callers_idle_.set();  // resumes a waiting shutdown() later, never inline
    if (failure) std::rethrow_exception(failure);
    co_return std::move(*result);
  }

  DMOE_DECL task<bootstrap_result> bootstrap_body(std::vector<endpoint> initial_peers, steady_time deadline);

  DMOE_DECL task<std::vector<store_outcome>> store_many_body(std::vector<store_entry> entries, steady_time deadline);

  DMOE_DECL task<std::vector<get_result>> get_many_body(std::vector<key_id> keys, bool latest, steady_time deadline);

  DMOE_DECL task<std::vector<wire_peer>> find_nearest_body(key_id key, std::size_t count, steady_time deadline);

  DMOE_DECL task<node_id> ping_body(endpoint address, steady_time deadline);

  // A find call in flight.
  struct outstanding_call;
  // When a find call becomes slow.
  struct slow_check;

  // One crawl's state; shared by the gets that wait for it.
  struct traversal;

  DMOE_DECL static node_options check(node_options o);

  steady_time resolve(steady_time deadline) const {
    return deadline == no_deadline ? deadline_after(options_.default_timeout) : deadline;
  }

  DMOE_LAZY void ensure_open(std::string_view what) const {
    if (shut_down_ || protocol_.closed())
      throw closed_error(dmoe::format("dht {} on node {}: the node is shut down", what, protocol_.local_endpoint()));
  }

  DMOE_DECL void check_entries(const std::vector<store_entry>& entries) const;

  DMOE_LAZY static store_item to_item(const store_entry& e) { return {e.key, e.subkey, {e.value, e.expiration, e.signature}}; }

  DMOE_LAZY static void note(store_outcome& outcome, store_result result) {
    if (result == store_result::stored) ++outcome.replicas;
    else if (!outcome.refusal) outcome.refusal = result;
  }

  DMOE_DECL task<void> serve();

  DMOE_DECL static task<void> wait_for(async_event& event);

  DMOE_DECL std::shared_ptr<traversal> find_running(const key_id& key, bool latest);

  // A get's traversal, run in the node's group so the gets that share it do not depend on the first caller.
  DMOE_DECL task<void> shared_get(std::shared_ptr<traversal> t);

  // Found values: cached here, and stored on the nearest visited node that lacked them.
  DMOE_DECL void cache_found(const traversal& t);

  DMOE_DECL task<void> store_quietly(wire_peer peer, std::vector<store_item> items);

  DMOE_DECL task<void> store_on(wire_peer peer, std::vector<std::size_t> chunk, const std::vector<store_entry>& entries,
                      std::vector<store_outcome>& outcomes, steady_time deadline);

  // Runs one traversal to its end or its deadline; find calls still in flight are then cancelled and awaited.
  DMOE_DECL task<void> crawl(traversal& t);

  DMOE_DECL lookup_options lookup_with(bool want_values, bool latest) const;

  // Sends what the lookup asks for; banned peers count as failed without a call. Sets `finished` when every key is
  // done.
  DMOE_DECL void pump(traversal& t);

  DMOE_DECL task<void> ask(traversal& t, lookup_request request);

  // How long a find call sent now may go unanswered before it is slow (node_options::slow_request_after).
  DMOE_LAZY std::chrono::nanoseconds slow_after() const noexcept {
    return std::clamp<std::chrono::nanoseconds>(find_rtt_.timeout(options_.slow_request_after),
                                                options_.min_slow_request_after, options_.slow_request_after);
  }

  DMOE_DECL static bool still_asking(const traversal& t, const slow_check& check);

  // Reports the crawl's find calls unanswered after slow_after() to its lookup as slow (it then goes on without
  // waiting for them), and after slow_request_after as stale. One timer at a time, for the earliest report due; a
  // call sent with an earlier one wakes it. Ends when the crawl stops it.
  DMOE_DECL task<void> watch_slow(traversal& t);

  DMOE_DECL task<void> ping_until_answered(endpoint address, steady_time deadline, int& answered, bool& any);

  io_context& ctx_;
  node_options options_;
  protocol protocol_;
  task_group group_;
  dmoe::detail::boxed<std::unordered_map<key_id, std::shared_ptr<traversal>>> plain_gets_;   // gets in flight, by key
  // `latest` gets in flight, by key
  dmoe::detail::boxed<std::unordered_map<key_id, std::shared_ptr<traversal>>> latest_gets_;
  bool shut_down_ = false;
  std::uint64_t lookups_ = 0;
  std::uint64_t lookup_requests_ = 0;
  std::uint64_t shared_gets_ = 0;
  std::uint64_t lookup_failures_ = 0;
  std::uint64_t slow_requests_ = 0;
  std::uint64_t slow_given_up_ = 0;
  std::uint64_t lookups_cut_ = 0;
  rtt_estimator find_rtt_;  // answered find calls' round trips (first attempts only)
  std::size_t callers_ = 0;    // callers' calls in progress (tracked)
  async_event callers_idle_;  // set when callers_ drops to 0
  async_event closing_;       // set by shutdown(): ends waits that no call is behind (bootstrap's pause)
};

}  // namespace dht
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace dht {

DMOE_INLINE node::~node() {
  if (group_.running() != 0)
    log_error("dht node {} destroyed without co_await shutdown(): the process ends", protocol_.local_endpoint());
}

// A find call in flight.
struct node::outstanding_call {
  wire_peer peer;
  std::uint64_t serial = 0;
  bool slow = false;  // reported to the lookup as slow
};

// When a find call becomes slow.
struct node::slow_check {
  node_id peer;
  std::uint64_t serial = 0;
  steady_time slow_due;   // sent + the measured threshold (slow_after())
  steady_time stale_due;  // sent + slow_request_after
  bool slow = false;      // reported slow; stale next
};

// One crawl's state; shared by the gets that wait for it.
struct node::traversal {
  traversal(std::vector<key_id> keys_, const lookup_options& options, steady_time deadline_)
      : keys(std::move(keys_)), latest(options.latest), deadline(deadline_), search(keys, options) {}
  std::vector<key_id> keys;
  bool latest;
  steady_time deadline;
  lookup search;
  task_group* calls = nullptr;
  bool stopping = false;
  async_event finished;  // every key done
  async_event complete;  // the crawl ended (results final)
  std::unordered_map<node_id, outstanding_call> asking;  // find calls in flight, by peer (one per peer at most)
  std::uint64_t serials = 0;
  bool watching = false;        // slow calls are reported (watch_slow runs)
  std::vector<slow_check> watch;  // find calls in flight to report slow, then stale (few: at most those in flight)
  steady_time watch_wake = no_deadline;  // when watch_slow wakes next (no_deadline: when a call is sent)
  async_event sent;  // a call joined `watch` due before watch_wake: wakes watch_slow
};

DMOE_DEF auto node::still_asking(const traversal& t, const slow_check& check) -> bool {
  auto it = t.asking.find(check.peer);
  return it != t.asking.end() && it->second.serial == check.serial;
}


DMOE_DEF auto node::bootstrap(std::vector<endpoint> initial_peers, steady_time deadline) -> task<bootstrap_result> {
  co_return co_await tracked("bootstrap", bootstrap_body(std::move(initial_peers), deadline));
}

DMOE_DEF auto node::store(key_id key, byte_buffer value, wall_seconds expiration, steady_time deadline)
    -> task<store_outcome> {
  std::vector<store_entry> entries;
  entries.push_back({key, std::nullopt, std::move(value), expiration, {}});
  auto outcomes = co_await store_many(std::move(entries), deadline);
  co_return outcomes.front();
}

DMOE_DEF auto node::store(key_id key, byte_buffer subkey, byte_buffer value, wall_seconds expiration,
                          steady_time deadline) -> task<store_outcome> {
  std::vector<store_entry> entries;
  entries.push_back({key, std::move(subkey), std::move(value), expiration, {}});
  auto outcomes = co_await store_many(std::move(entries), deadline);
  co_return outcomes.front();
}

DMOE_DEF auto node::store_many(std::vector<store_entry> entries, steady_time deadline)
    -> task<std::vector<store_outcome>> {
  co_return co_await tracked("store", store_many_body(std::move(entries), deadline));
}

DMOE_DEF auto node::get(key_id key, bool latest, steady_time deadline) -> task<std::optional<record>> {
  std::vector<key_id> keys{key};
  auto results = co_await get_many(std::move(keys), latest, deadline);
  co_return std::move(results.front().found);
}

DMOE_DEF auto node::get_many(std::vector<key_id> keys, bool latest,
                                       steady_time deadline) -> task<std::vector<get_result>> {
  co_return co_await tracked("get", get_many_body(std::move(keys), latest, deadline));
}

DMOE_DEF auto node::find_nearest(key_id key, std::size_t count, steady_time deadline)
    -> task<std::vector<wire_peer>> {
  co_return co_await tracked("find_nearest", find_nearest_body(key, count, deadline));
}

DMOE_DEF auto node::ping(endpoint address, steady_time deadline) -> task<node_id> {
  co_return co_await tracked("ping", ping_body(address, deadline));
}

DMOE_DEF auto node::shutdown() -> task<void> {
  shut_down_ = true;
  protocol_.close();
  group_.request_stop();
  closing_.set();
  try {
    co_await group_.join();
  } catch (const std::exception& e) {
    log_debug("dht node {}: {} while shutting down", protocol_.local_endpoint(), e.what());
  }
  while (callers_ != 0) {
    callers_idle_.reset();
    co_await callers_idle_.wait();
  }
}

DMOE_DEF auto node::stats() const -> node_stats {
  node_stats s;
  s.rpc = protocol_.stats();
  s.datagram = protocol_.datagram_stats();
  s.peers = protocol_.table().size();
  s.stored_keys = protocol_.stored().size();
  s.lookups = lookups_;
  s.lookup_requests = lookup_requests_;
  s.shared_gets = shared_gets_;
  s.lookup_failures = lookup_failures_;
  s.slow_requests = slow_requests_;
  s.slow_given_up = slow_given_up_;
  s.lookups_cut = lookups_cut_;
  s.slow_after = std::chrono::duration_cast<std::chrono::microseconds>(slow_after());
  s.find_srtt = std::chrono::duration_cast<std::chrono::microseconds>(find_rtt_.srtt());
  return s;
}

DMOE_DEF auto node::bootstrap_body(std::vector<endpoint> initial_peers, steady_time deadline)
    -> task<bootstrap_result> {
  ensure_open("bootstrap");
  deadline = resolve(deadline);
  bootstrap_result result;
  if (initial_peers.empty()) {
    result.joined = true;
    result.peers = protocol_.table().size();
    co_return result;
  }
  std::vector<int> answers(initial_peers.size(), 0);
  bool any = false;
  {
    task_group pings(ctx_);
    for (std::size_t i = 0; i < initial_peers.size(); ++i)
      pings.spawn(ping_until_answered(initial_peers[i], deadline, answers[i], any));
    co_await pings.join();
  }
  for (std::size_t i = 0; i < initial_peers.size(); ++i)
    (answers[i] ? result.answered : result.not_answered).push_back(initial_peers[i]);
  result.joined = !result.answered.empty();
  if (result.joined) {
    traversal self_lookup({protocol_.id()}, lookup_with(false, false), deadline);
    co_await crawl(self_lookup);
  }
  result.peers = protocol_.table().size();
  co_return result;
}

DMOE_DEF auto node::store_many_body(std::vector<store_entry> entries, steady_time deadline)
    -> task<std::vector<store_outcome>> {
  ensure_open("store");
  check_entries(entries);
  deadline = resolve(deadline);
  std::vector<store_outcome> outcomes(entries.size());
  const wall_seconds now = options_.clock->wall_now();
  std::vector<key_id> keys;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (!(now < entries[i].expiration)) {
      outcomes[i].refusal = store_result::expired;
      continue;
    }
    keys.push_back(entries[i].key);
  }
  if (keys.empty()) co_return outcomes;
  traversal search(std::move(keys), lookup_with(false, false), deadline);
  co_await crawl(search);

  // Per key, the num_replicas nearest nodes: those the lookup heard from, and ourselves.
  std::unordered_map<key_id, std::vector<wire_peer>> replicas;
  for (auto& r : search.search.results()) {
    std::vector<wire_peer> nearest = std::move(r.nearest);
    if (!options_.client_mode) nearest.push_back({protocol_.id(), protocol_.local_endpoint()});
    std::sort(nearest.begin(), nearest.end(),
              [&](const wire_peer& a, const wire_peer& b) { return dht::nearer(r.key, a.id, b.id); });
    if (nearest.size() > options_.num_replicas) nearest.resize(options_.num_replicas);
    replicas.emplace(r.key, std::move(nearest));
  }
  struct batch {
    wire_peer peer;
    std::vector<std::size_t> entries;
  };
  std::map<node_id, batch> batches;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (outcomes[i].refusal) continue;
    for (const auto& peer : replicas[entries[i].key]) {
      ++outcomes[i].asked;
      if (peer.id == protocol_.id()) {
        note(outcomes[i], protocol_.store_locally(to_item(entries[i])));
        continue;
      }
      auto& b = batches[peer.id];
      b.peer = peer;
      b.entries.push_back(i);
    }
  }
  task_group calls(ctx_);
  for (auto& [id, b] : batches) {
    for (std::size_t begin = 0; begin < b.entries.size(); begin += options_.limits.max_keys) {
      const std::size_t end = std::min(b.entries.size(), begin + options_.limits.max_keys);
      std::vector<std::size_t> chunk(b.entries.begin() + static_cast<std::ptrdiff_t>(begin),
                                     b.entries.begin() + static_cast<std::ptrdiff_t>(end));
      calls.spawn(store_on(b.peer, std::move(chunk), entries, outcomes, deadline));
    }
  }
  co_await calls.join();
  co_return outcomes;
}

DMOE_DEF auto node::get_many_body(std::vector<key_id> keys, bool latest, steady_time deadline)
    -> task<std::vector<get_result>> {
  ensure_open("get");
  deadline = resolve(deadline);
  std::vector<get_result> out;
  out.reserve(keys.size());
  std::vector<key_id> to_crawl;
  std::vector<std::shared_ptr<traversal>> joined;
  std::unordered_map<key_id, std::shared_ptr<traversal>> source;
  for (const auto& key : keys) {
    out.push_back({key, protocol_.local(key)});
    if (out.back().found && !latest) continue;
    if (source.contains(key)) continue;
    std::shared_ptr<traversal> running = find_running(key, latest);
    if (running) {
      // Each caller keeps its own deadline: a later one extends the traversal (crawl() rechecks it).
      running->deadline = std::max(running->deadline, deadline);
      ++shared_gets_;
      source.emplace(key, running);
      if (std::find(joined.begin(), joined.end(), running) == joined.end()) joined.push_back(running);
      continue;
    }
    source.emplace(key, nullptr);
    to_crawl.push_back(key);
  }
  if (!to_crawl.empty()) {
    auto fresh = std::make_shared<traversal>(to_crawl, lookup_with(true, latest), deadline);
    for (const auto& key : to_crawl) {
      source[key] = fresh;
      (latest ? *latest_gets_ : *plain_gets_)[key] = fresh;
    }
    joined.push_back(fresh);
    group_.spawn(shared_get(fresh));
  }
  for (const auto& t : joined) {
    if (t->complete.is_set()) continue;
    try {
      co_await with_deadline(wait_for(t->complete), deadline);
    } catch (const timeout_error&) {
      // our deadline came first: take what the traversal found so far
    }
  }
  // What each traversal found, alive now, by key.
  const wall_seconds now = options_.clock->wall_now();
  std::unordered_map<const traversal*, std::unordered_map<key_id, record>> found;
  for (const auto& t : joined) {
    auto& by_key = found[t.get()];
    for (auto& r : t->search.results())
      if (r.found && r.found->drop_expired(now)) by_key.emplace(r.key, std::move(*r.found));
  }
  for (auto& r : out) {
    auto it = source.find(r.key);
    if (it == source.end() || !it->second) continue;
    const auto& by_key = found[it->second.get()];
    auto value = by_key.find(r.key);
    if (value == by_key.end()) continue;
    if (!r.found) r.found = value->second;
    else merge_into(*r.found, value->second);
  }
  co_return out;
}

DMOE_DEF auto node::find_nearest_body(key_id key, std::size_t count, steady_time deadline)
    -> task<std::vector<wire_peer>> {
  ensure_open("find_nearest");
  traversal search({key}, lookup_with(false, false), resolve(deadline));
  co_await crawl(search);
  std::vector<wire_peer> nearest = search.search.results().front().nearest;
  if (!options_.client_mode) nearest.push_back({protocol_.id(), protocol_.local_endpoint()});
  std::sort(nearest.begin(), nearest.end(),
            [&](const wire_peer& a, const wire_peer& b) { return dht::nearer(key, a.id, b.id); });
  if (nearest.size() > count) nearest.resize(count);
  co_return nearest;
}

DMOE_DEF auto node::ping_body(endpoint address, steady_time deadline) -> task<node_id> {
  ensure_open("ping");
  auto [id, answer] = co_await protocol_.ping(address, resolve(deadline));
  co_return id;
}

DMOE_DEF auto node::check(node_options o) -> node_options {
  if (o.alpha == 0) throw invalid_argument_error("dht node needs alpha >= 1");
  if (o.max_lookup_in_flight == 0) throw invalid_argument_error("dht node needs max_lookup_in_flight >= 1");
  if (o.default_timeout.count() <= 0) throw invalid_argument_error("dht node: default_timeout must be positive");
  if (o.slow_request_after.count() <= 0)
    throw invalid_argument_error("dht node: slow_request_after must be positive");
  if (o.min_slow_request_after.count() <= 0)
    throw invalid_argument_error(dmoe::format("dht node: min_slow_request_after must be positive, got {} ms",
                                             o.min_slow_request_after.count()));
  o.min_slow_request_after = std::min(o.min_slow_request_after, o.slow_request_after);
  return o;
}

DMOE_DEF auto node::check_entries(const std::vector<store_entry>& entries) const -> void {
  const auto& limits = options_.storage;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const store_entry& e = entries[i];
    if (!std::isfinite(e.expiration))
      throw invalid_argument_error(dmoe::format("dht store: entry {} (key {}) has a non-finite expiration {}", i,
                                               e.key.to_hex(), e.expiration));
    if (e.value.size() > std::min(limits.max_value_size, options_.limits.max_value_size))
      throw invalid_argument_error(dmoe::format("dht store: entry {} (key {}) has a value of {} bytes, over the "
                                               "limit of {}",
                                               i, e.key.to_hex(), e.value.size(),
                                               std::min(limits.max_value_size, options_.limits.max_value_size)));
    if (e.subkey && e.subkey->size() > std::min(limits.max_subkey_size, options_.limits.max_subkey_size))
      throw invalid_argument_error(dmoe::format("dht store: entry {} (key {}) has a subkey of {} bytes, over the "
                                               "limit of {}",
                                               i, e.key.to_hex(), e.subkey->size(),
                                               std::min(limits.max_subkey_size, options_.limits.max_subkey_size)));
    if (e.signature.size() > options_.limits.max_signature_size)
      throw invalid_argument_error(dmoe::format("dht store: entry {} (key {}) has a signature of {} bytes, over the "
                                               "limit of {}",
                                               i, e.key.to_hex(), e.signature.size(), options_.limits.max_signature_size));
  }
}

DMOE_DEF auto node::serve() -> task<void> {
  try {
    co_await protocol_.serve();
  } catch (const std::exception& e) {
    log_error("dht node {} stopped serving: {}", protocol_.local_endpoint(), e.what());
  }
}

DMOE_DEF auto node::wait_for(async_event& event) -> task<void> { co_await event.wait(); }

DMOE_DEF auto node::find_running(const key_id& key, bool latest) -> std::shared_ptr<traversal> {
  if (!latest) {
    if (auto it = plain_gets_->find(key); it != plain_gets_->end()) return it->second;
  }
  if (auto it = latest_gets_->find(key); it != latest_gets_->end()) return it->second;
  return nullptr;
}

DMOE_DEF auto node::shared_get(std::shared_ptr<traversal> t) -> task<void> {
  try {
    co_await crawl(*t);
  } catch (const std::exception& e) {
    log_debug("dht node {}: get traversal ended: {}", protocol_.local_endpoint(), e.what());
  }
  auto& running = t->latest ? *latest_gets_ : *plain_gets_;
  for (const auto& key : t->keys) {
    auto it = running.find(key);
    if (it != running.end() && it->second == t) running.erase(it);
  }
  t->complete.set();
  if (!shut_down_) cache_found(*t);
}

DMOE_DEF auto node::cache_found(const traversal& t) -> void {
  const wall_seconds now = options_.clock->wall_now();
  for (const auto& r : t.search.results()) {
    if (!r.found) continue;
    record alive = *r.found;
    if (!alive.drop_expired(now)) continue;
    protocol_.cache(r.key, alive);
    if (!r.nearest_without_value) continue;
    std::vector<store_item> items;
    if (alive.is_dictionary) {
      for (const auto& [subkey, v] : alive.subkeys)
        if (items.size() < options_.limits.max_keys) items.push_back({r.key, subkey, v});
    } else {
      items.push_back({r.key, std::nullopt, alive.value});
    }
    if (group_.running() < options_.max_background_calls + 1) group_.spawn(store_quietly(*r.nearest_without_value, std::move(items)));
  }
}

DMOE_DEF auto node::store_quietly(wire_peer peer, std::vector<store_item> items) -> task<void> {
  try {
    co_await protocol_.store(peer, std::move(items), deadline_after(options_.rpc_timeout));
  } catch (const std::exception& e) {
    log_debug("dht node {}: caching at {} failed: {}", protocol_.local_endpoint(), peer.address, e.what());
  }
}

DMOE_DEF auto node::store_on(wire_peer peer, std::vector<std::size_t> chunk, const std::vector<store_entry>& entries,
                    std::vector<store_outcome>& outcomes, steady_time deadline) -> task<void> {
  std::vector<store_item> items;
  items.reserve(chunk.size());
  for (std::size_t i : chunk) items.push_back(to_item(entries[i]));
  try {
    const std::vector<store_result> results = co_await protocol_.store(peer, std::move(items), deadline);
    for (std::size_t j = 0; j < chunk.size() && j < results.size(); ++j) note(outcomes[chunk[j]], results[j]);
  } catch (const cancelled_error&) {
    throw;
  } catch (const std::exception& e) {
    log_debug("dht node {}: store at {} failed: {}", protocol_.local_endpoint(), peer.address, e.what());
  }
}

DMOE_DEF auto node::crawl(traversal& t) -> task<void> {
  ++lookups_;
  for (const auto& key : t.keys) t.search.add_candidates(key, protocol_.nearest(key, options_.k));
  task_group calls(ctx_);
  t.calls = &calls;
  t.watching = options_.slow_request_after < options_.rpc_timeout;
  if (t.watching) calls.spawn(watch_slow(t));
  pump(t);
  std::exception_ptr failure;
  try {
    // The deadline may be extended meanwhile by a get joining this traversal.
    while (!t.finished.is_set()) {
      try {
        co_await with_deadline(wait_for(t.finished), t.deadline);
      } catch (const timeout_error&) {
        if (std::chrono::steady_clock::now() >= t.deadline) {  // the deadline: end with what was found
          ++lookups_cut_;
          break;
        }
      }
    }
  } catch (...) {
    failure = std::current_exception();
  }
  t.stopping = true;
  // Slow calls are cancelled below, which blames no peer: make sure the dead among them still leave the table.
  for (const auto& [id, call] : t.asking) {
    if (!call.slow) continue;
    ++slow_given_up_;
    if (!shut_down_) protocol_.check_alive(call.peer);
  }
  calls.request_stop();
  co_await calls.join();
  t.calls = nullptr;
  lookup_requests_ += t.search.requests_sent();
  if (failure) std::rethrow_exception(failure);
}

DMOE_DEF auto node::lookup_with(bool want_values, bool latest) const -> lookup_options {
  lookup_options o;
  o.k = options_.k;
  o.alpha = options_.alpha;
  o.max_in_flight = options_.max_lookup_in_flight;
  o.want_values = want_values;
  o.latest = latest;
  o.self = protocol_.id();
  o.max_peers_per_ip = options_.table.max_peers_per_ip;
  o.limit_loopback = options_.table.limit_loopback;
  return o;
}

DMOE_DEF auto node::pump(traversal& t) -> void {
  if (t.stopping) return;
  const steady_time now = options_.clock->steady_now();
  for (;;) {
    std::vector<lookup_request> requests = t.search.next();
    if (requests.empty()) break;
    bool skipped = false;
    for (auto& request : requests) {
      if (protocol_.table().is_banned(request.peer.id, now)) {
        t.search.on_failure(request.peer.id);
        skipped = true;
        continue;
      }
      t.calls->spawn(ask(t, std::move(request)));
    }
    if (!skipped) break;
  }
  const bool all_done = t.search.keys_done();
  if (all_done || t.search.in_flight() == 0) t.finished.set();
}

DMOE_DEF auto node::ask(traversal& t, lookup_request request) -> task<void> {
  const node_id peer = request.peer.id;
  const std::uint64_t serial = ++t.serials;
  t.asking[peer] = outstanding_call{request.peer, serial, false};
  const steady_time sent = std::chrono::steady_clock::now();
  if (t.watching) {
    const steady_time slow_due = sent + slow_after();
    t.watch.push_back({peer, serial, slow_due, deadline_from(sent, options_.slow_request_after), false});
    if (slow_due < t.watch_wake) t.sent.set();
  }
  bool answered = false;
  find_response response;
  try {
    // Not cut at the traversal's deadline (crawl() cancels calls then, which blames no peer; a timeout would ban
    // the peer for our haste, and a joining get may extend the deadline).
    response = co_await protocol_.find(request.peer, request.keys, deadline_from(sent, options_.rpc_timeout));
    answered = true;
    // Karn's rule: an answer after attempt_timeout may answer a resent request, so it does not time one trip.
    const auto round_trip = std::chrono::steady_clock::now() - sent;
    if (round_trip < options_.datagram.attempt_timeout) find_rtt_.add(round_trip);
  } catch (const cancelled_error&) {
    co_return;
  } catch (const closed_error&) {
    t.finished.set();  // shutting down: the crawl ends now, not at its deadline
    co_return;
  } catch (const std::exception&) {
    // timeout, refusal or garbage: the peer failed (protocol::call banned it)
  }
  if (auto it = t.asking.find(peer); it != t.asking.end() && it->second.serial == serial) t.asking.erase(it);
  if (!answered) ++lookup_failures_;
  if (t.stopping) co_return;
  if (answered) t.search.on_response(request.peer.id, response.results, options_.clock->wall_now());
  else t.search.on_failure(request.peer.id);
  pump(t);
}

DMOE_DEF auto node::watch_slow(traversal& t) -> task<void> {
  try {
    while (!t.stopping) {
      const steady_time now = std::chrono::steady_clock::now();
      bool reported = false;
      steady_time next = no_deadline;
      std::erase_if(t.watch, [&](slow_check& check) {
        if (!still_asking(t, check)) return true;  // answered or failed meanwhile
        if (!check.slow && check.slow_due <= now) {
          check.slow = true;
          t.asking[check.peer].slow = true;
          if (t.search.on_slow(check.peer)) {
            ++slow_requests_;
            reported = true;
          }
        }
        if (check.slow && check.stale_due <= now) {
          reported = t.search.on_stale(check.peer) || reported;
          return true;
        }
        return false;
      });
      if (reported) pump(t);  // may send calls, which join `watch`
      if (t.stopping) break;
      for (const slow_check& check : t.watch) next = std::min(next, check.slow ? check.stale_due : check.slow_due);
      t.watch_wake = next;
      t.sent.reset();
      if (next == no_deadline) {
        co_await t.sent.wait();
      } else {
        try {
          co_await with_deadline(wait_for(t.sent), next);
        } catch (const timeout_error&) {
        }
      }
    }
  } catch (const cancelled_error&) {
    // the crawl ended
  }
}

DMOE_DEF auto node::ping_until_answered(endpoint address, steady_time deadline, int& answered, bool& any)
    -> task<void> {
  for (;;) {
    try {
      const auto [id, answer] = co_await protocol_.ping(address, deadline);
      if (id == protocol_.id()) {
        // Our own address (or someone answering with our id): not a peer; asking again will not change that.
        log_debug("dht node {}: initial peer {} is this node", protocol_.local_endpoint(), address);
        co_return;
      }
      answered = 1;
      any = true;
      co_return;
    } catch (const cancelled_error&) {
      throw;
    } catch (const closed_error&) {
      throw;
    } catch (const std::exception& e) {
      log_debug("dht node {}: initial peer {} did not answer: {}", protocol_.local_endpoint(), address, e.what());
    }
    if (any || std::chrono::steady_clock::now() >= deadline) co_return;
    const steady_time pause = std::min(deadline, deadline_after(options_.bootstrap_retry_pause));
    try {
      co_await with_deadline(wait_for(closing_), pause);  // shutdown() ends the pause
    } catch (const timeout_error&) {
    }
    if (any || shut_down_ || std::chrono::steady_clock::now() >= deadline) co_return;
  }
}

}  // namespace dht
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
