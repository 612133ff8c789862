// The DHT's RPCs over one datagram endpoint: ping/store/find handlers, outgoing calls, learning peers, limits.
//
// A protocol owns a node's UDP socket (net::datagram_endpoint), routing table, storage and cache. It answers the
// three RPCs of the Kademlia paper (Maymounkov & Mazières 2002, section 2.3: PING, STORE, FIND_NODE/FIND_VALUE,
// the last two merged into one `find` that returns the value when held and the k nearest peers) and makes the
// same calls. It learns peers from every request and response (section 2.2): a sender goes to its k-bucket unless
// it is in client mode; a full bucket's least recently seen peer is pinged and replaced only if it does not
// answer. A peer that does not answer a call leaves its bucket and is banned for a time that doubles with each
// failure in a row (peer_bans). A new peer nearer to some of our keys than every other replica gets them (section
// 2.5). Hostile input: per-source request rate (token bucket per IP address), per-source stored bytes, the record
// validator (ed25519-signed records), message limits; malformed requests and requests over a rate limit are
// dropped without an answer and counted. Everything runs on one io_context thread: no locks.
#pragma once

#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/boxed.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/log.hpp>
#include <dmoe/dht/messages.hpp>
#include <dmoe/dht/node_id.hpp>
#include <dmoe/dht/record.hpp>
#include <dmoe/dht/record_validator.hpp>
#include <dmoe/dht/routing_table.hpp>
#include <dmoe/dht/storage.hpp>
#include <dmoe/net/datagram_endpoint.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <type_traits>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace dht {

struct protocol_options {
  endpoint listen = endpoint::loopback_v4(0);  // the UDP address to bind (port 0: any free port)
  std::optional<node_id> id;                   // our id; random (random_node_id) when not set
  std::size_t k = 20;                          // Kademlia's k: bucket size, peers returned per key
  std::size_t b = 5;                           // Kademlia's b: bucket splitting (routing_table_options::b)
  std::size_t num_replicas = 5;                // nodes a value is stored on; also decides hand-overs to newcomers
  // A client-mode node asks but never answers as a peer: others never add it to their routing tables.
  bool client_mode = false;
  // The deadline of one call (its datagram retries happen inside: datagram.attempt_timeout, max_attempts).
  std::chrono::milliseconds rpc_timeout{1500};
  net::datagram_endpoint_options datagram{};
  message_limits limits{};                 // what our decoders accept (keys per request, value sizes...)
  storage_options storage{};               // values this node holds as a replica
  storage_options cache{.max_total_bytes = 16u << 20, .max_keys = 1u << 16};  // values it found and caches
  routing_table_options table{};           // k and b above override table.k and table.b
  // Requests per second each source IP address may send (a token bucket of `request_burst` tokens); beyond,
  // requests are dropped without an answer. 0 turns the limit off.
  double max_requests_per_second = 500;
  std::size_t request_burst = 1000;
  // Bytes of values (with subkeys and signatures) one source IP address may have stored here and not yet expired;
  // counted until the expiration even when overwritten earlier (conservative). Beyond: store_result::no_room.
  std::size_t max_bytes_per_source = 8u << 20;
  std::size_t max_tracked_sources = 1u << 16;  // addresses whose rate and bytes are remembered at once
  std::size_t max_background_calls = 64;       // eviction pings and hand-overs running at once; more are skipped
  // Bytes of values one find answer may carry: find_answer_ratio times the request's size, but at least
  // find_answer_min_value_bytes (one largest value and its signature). Values beyond are left out (the peers are
  // still sent); repeated keys in a request are answered once.
  double find_answer_ratio = 16;
  std::size_t find_answer_min_value_bytes = 66 * 1024;
  // Stored keys examined per newcomer when choosing what to hand over (bounded work per new peer; the owners'
  // re-stores reach keys beyond it).
  std::size_t max_handover_scan = 4096;
  const clock_source* clock = &default_clock();  // wall time of expirations, steady time of bans
};

// Counters of one node's RPCs (monotonic).
struct protocol_stats {
  std::uint64_t pings_received = 0, stores_received = 0, finds_received = 0;
  std::uint64_t pings_sent = 0, stores_sent = 0, finds_sent = 0;  // calls made (datagram retries not counted)
  std::uint64_t calls_answered = 0;
  std::uint64_t calls_failed = 0;      // no answer within the deadline, a refusal or an undecodable answer
  std::uint64_t malformed = 0;         // requests whose DHT message did not decode: dropped without an answer
  std::uint64_t rate_limited = 0;      // requests over their source's rate: dropped without an answer
  std::uint64_t items_refused = 0;     // store items refused (any store_result but stored)
  std::uint64_t signatures_refused = 0;  // of those, refused by the record validator
  std::uint64_t over_source_quota = 0;   // of those, refused by max_bytes_per_source
  std::uint64_t bans = 0;              // failures recorded against peers (each bans for a doubled time)
  std::uint64_t evictions_checked = 0;  // least-recently-seen peers pinged for a full bucket
  std::uint64_t liveness_checks = 0;   // peers pinged after a lookup gave up on their slow call (check_alive)
  std::uint64_t handovers = 0;         // store calls handing keys to a new nearer peer
  std::uint64_t background_skipped = 0;  // eviction pings and hand-overs not made at max_background_calls
  std::uint64_t address_conflicts = 0;  // a known id heard from another address (its entry is kept)
  std::uint64_t addresses_taken = 0;    // a new id heard from an address another id holds (that one is pinged)
  std::uint64_t ip_limited = 0;         // new ids not taken: their IP address was at table.max_peers_per_ip
  // Values or subkeys in find answers dropped: a signature the record validator refuses, an expiration that is not
  // finite or beyond storage.max_expiration_horizon. An answer with a refused signature also fails its peer.
  std::uint64_t records_dropped = 0;
};

// The sender id the datagram layer carries, for a node id.
DMOE_LAZY inline net::datagram_sender_id to_sender_id(const node_id& id) noexcept { return id.to_bytes(); }
DMOE_LAZY inline node_id from_sender_id(const net::datagram_sender_id& id) { return node_id::from_bytes(id); }

namespace detail {

// Per-source (IP address) request rate and stored bytes.
class source_limits {
 public:
  DMOE_LAZY source_limits(double rate, std::size_t burst, std::size_t max_bytes, std::size_t max_sources)
      : rate_(rate), burst_(static_cast<double>(burst)), max_bytes_(max_bytes), max_sources_(max_sources) {}

  // Sources are IP addresses (an endpoint with port 0: see source_of).
  // Takes one request token from `source` at `now`; false when its bucket is empty.
  DMOE_DECL bool take_request(const endpoint& source, steady_time now);

  // Whether `source` may add `bytes` expiring at `expiration` (wall seconds) given its alive stored bytes at `now`.
  DMOE_LAZY bool fits(const endpoint& source, std::size_t bytes, wall_seconds now, steady_time steady_now) {
    entry& e = at(source, steady_now);
    drop_expired(e, now);
    return e.bytes + bytes <= max_bytes_;
  }
  DMOE_LAZY void add(const endpoint& source, std::size_t bytes, wall_seconds expiration, steady_time steady_now) {
    entry& e = at(source, steady_now);
    e.bytes += bytes;
    e.stored.emplace(expiration, bytes);
  }

  DMOE_DECL std::size_t sources() const noexcept;

 private:
  struct entry {
    double tokens = 0;
    steady_time refilled{};
    std::size_t bytes = 0;
    // (expiration, bytes), earliest first.
    std::priority_queue<std::pair<wall_seconds, std::size_t>, std::vector<std::pair<wall_seconds, std::size_t>>,
                        std::greater<>>
        stored;
  };

  DMOE_DECL static void drop_expired(entry& e, wall_seconds now);

  DMOE_DECL entry& at(const endpoint& source, steady_time now);

  double rate_;
  double burst_;
  std::size_t max_bytes_;
  std::size_t max_sources_;
  dmoe::detail::boxed<std::unordered_map<endpoint, entry>> entries_;
};

}  // namespace detail

// One DHT node's network half: handlers and calls over its datagram endpoint. `serve()` must run while it is
// used; `close()` ends it, and once serve() has returned the protocol may be destroyed. Belongs to one io_context.
class protocol {
 public:
  // Binds the socket. Throws invalid_argument_error for unusable options, system_error when the bind fails.
  DMOE_DECL protocol(io_context& ctx, protocol_options options);
  protocol(const protocol&) = delete;
  protocol& operator=(const protocol&) = delete;

  // Receives and answers until close(); then stops and joins the background calls (eviction pings, hand-overs).
  DMOE_DECL task<void> serve();

  // Makes serve() return; calls in progress fail with closed_error.
  DMOE_LAZY void close() {
    closed_ = true;
    endpoint_.close();
  }
  bool closed() const noexcept { return closed_; }

  // ---- calls ----

  // Pings `address`; returns the answering node's id and its answer. Learns the peer (unless it is in client mode).
  // Errors: timeout_error (no answer by `deadline`; a known id is then banned), remote_error, protocol_error,
  // closed_error, cancelled_error.
  DMOE_DECL task<std::pair<node_id, ping_response>> ping(endpoint address, steady_time deadline,
                                               std::optional<node_id> expected = std::nullopt);

  // Asks `peer` to store `items` (at most limits.max_keys). Returns one result per item. Errors as ping().
  DMOE_DECL task<std::vector<store_result>> store(wire_peer peer, std::vector<store_item> items, steady_time deadline);

  // Asks `peer` about `keys` (at most limits.max_keys): per key, the value if it holds one and the k nearest peers
  // it knows. Errors as ping().
  DMOE_DECL task<find_response> find(wire_peer peer, std::vector<key_id> keys, steady_time deadline);

  // Pings `peer` in the background (one check per peer at a time, within max_background_calls): alive, it stays and
  // is refreshed; dead, call() drops it from its bucket and bans it. For peers whose call was given up before its
  // deadline (a lookup that went on without a slow peer), so that dead ones still leave the routing table. Returns
  // whether a check runs for it now (false also when it is not in the routing table or we are shutting down).
  DMOE_DECL bool check_alive(const wire_peer& peer);

  // ---- local state ----

  // Stores into our own storage under the same rules a remote store meets (the validator, newer wins). `source`
  // is the IP address (port 0) whose quota it counts against (null: ours, unlimited).
  DMOE_DECL store_result store_locally(const store_item& item, const endpoint* source = nullptr);

  // Caches a value found by a lookup (served to others' finds like a stored one, never handed over).
  DMOE_DECL void cache(const key_id& key, const record& found);

  // What we hold for `key`: the stored record merged with the cached one (newer wins), expired parts left out.
  DMOE_DECL std::optional<record> local(const key_id& key);

  // We heard from `id` at `address`: put it in its bucket (a request from it: `from_request`). Client-mode peers
  // and our own id are ignored. Sender ids are not authenticated, so a known id heard at another address keeps
  // its entry: the known address is pinged, and only if it fails is the new one pinged (and learnt if it answers
  // with that id). A full bucket's least recently seen peer is pinged. A peer newly added to a bucket gets the keys
  // it is nearer to than the replicas we know, once it has answered us (a request alone proves nothing).
  DMOE_DECL void heard_from(const node_id& id, const endpoint& address, bool from_request);

  // An answer from `id` decoded by `decode`; a protocol_error (a malformed answer) counts as its failure and goes on.
  template <class Decode>
  std::invoke_result_t<Decode> decoded_or_failed(const node_id& id, Decode&& decode) {
    try {
      return decode();
    } catch (const protocol_error&) {
      record_failure(id);
      throw;
    }
  }

  // `id` failed to answer: out of its bucket, banned for a doubled time.
  DMOE_DECL void record_failure(const node_id& id);

  const node_id& id() const noexcept { return self_; }
  const endpoint& local_endpoint() const noexcept { return endpoint_.local_endpoint(); }
  const protocol_options& options() const noexcept { return options_; }
  const routing_table& table() const noexcept { return table_; }
  routing_table& table() noexcept { return table_; }
  storage& stored() noexcept { return storage_; }
  const storage& stored() const noexcept { return storage_; }
  storage& cached() noexcept { return cache_; }
  const protocol_stats& stats() const noexcept { return stats_; }
  const net::datagram_endpoint::counters& datagram_stats() const noexcept { return endpoint_.stats(); }
  io_context& context() noexcept { return ctx_; }

  // The nearest peers we know to `key`, as the wire names them.
  DMOE_LAZY std::vector<wire_peer> nearest(const key_id& key, std::size_t count,
                                 std::optional<node_id> exclude = std::nullopt) const {
    std::vector<wire_peer> out;
    for (const auto& p : table_.nearest(key, count, exclude)) out.push_back({p.id, p.address});
    return out;
  }

 private:
  static constexpr std::size_t max_remembered_bans = 4096;

  DMOE_DECL static protocol_options check(protocol_options o);
  DMOE_DECL static routing_table_options table_options(const protocol_options& o);

  // One datagram call; a peer that does not answer (or answers as someone else) is recorded as failed.
  DMOE_DECL task<net::datagram_response> call(endpoint address, message_type type, const byte_buffer& request,
                                    steady_time deadline, std::optional<node_id> expected);

  DMOE_DECL static std::string_view to_string(message_type type) noexcept;

  DMOE_LAZY void answered(const node_id& id, const endpoint& address, bool client_mode) {
    if (!client_mode) heard_from(id, address, false);
  }

  // Drops the values and subkeys of a find answer that the record validator refuses or whose expiration is not
  // finite or beyond our storage horizon (such a value would win every newer-wins merge). Returns how many had a
  // refused signature.
  DMOE_DECL std::size_t screen(find_response& answer);

  // ---- handlers ----

  // Rate limit and decoding failures: the request is dropped without an answer.
  template <class Message, class Decode>
  Message admit(net::datagram_request& r, Decode decode) {
    if (!sources_.take_request(r.peer.with_port(0), options_.clock->steady_now())) {
      ++stats_.rate_limited;
      throw net::datagram_no_answer(dmoe::format("{} is over its request rate", r.peer));
    }
    try {
      return decode(r.message, options_.limits);
    } catch (const error& e) {
      ++stats_.malformed;
      log_debug("dht node {}: dropped a request from {}: {}", endpoint_.local_endpoint(), r.peer, e.what());
      throw net::datagram_no_answer(e.what());
    }
  }

  DMOE_LAZY void learn_requester(const net::datagram_request& r, bool client_mode) {
    if (client_mode) return;
    heard_from(from_sender_id(r.sender), r.peer, true);
  }

  DMOE_DECL task<byte_buffer> on_ping(net::datagram_request& r);

  DMOE_DECL task<byte_buffer> on_store(net::datagram_request& r);

  DMOE_DECL task<byte_buffer> on_find(net::datagram_request& r);

  // ---- background calls ----

  template <class T>
  bool spawn_background(task<T> work) {
    if (!serving_ || closed_ || background_.running() >= options_.max_background_calls) {
      ++stats_.background_skipped;
      return false;
    }
    background_.spawn(std::move(work));
    return true;
  }

  // The keys a newcomer (already in its bucket) should get (hivemind's rule): those we are the nearest known holder
  // of and the newcomer is nearer to than the farthest of their num_replicas nearest other known peers. Examines
  // at most max_handover_scan stored keys.
  DMOE_DECL std::vector<store_item> keys_for_newcomer(const node_id& newcomer);

  // Hands `peer` (just added to its bucket, and known to answer) the keys it should hold.
  DMOE_DECL void hand_over_to(const wire_peer& peer);

  // A peer added to its bucket on a request: pinged first; if it answers as itself and is still in its bucket at
  // that address, it gets its keys.
  DMOE_DECL task<void> welcome(wire_peer peer);

  // `known` was heard from at `moved_to`: it keeps its entry while it answers at its known address; if it does not
  // (call() then drops and bans it), `moved_to` is pinged expecting that id, and learnt only if it answers as it.
  DMOE_DECL task<void> check_moved(wire_peer known, endpoint moved_to);

  DMOE_DECL task<void> hand_over(wire_peer peer, std::vector<store_item> items);

  // Pings the least recently seen peer of a full bucket, or a peer check_alive doubts: alive, it stays (ping()
  // refreshed it); dead, call() has banned it and its bucket took the newest cached peer.
  DMOE_DECL task<void> check_eviction(wire_peer peer);
  // Starts check_eviction(peer) unless that peer is being checked already; false when not started.
  DMOE_DECL bool check_in_background(const wire_peer& peer);

  io_context& ctx_;
  protocol_options options_;
  node_id self_;
  net::datagram_endpoint endpoint_;
  routing_table table_;
  storage storage_;
  storage cache_;
  record_validator validator_;
  detail::source_limits sources_;
  protocol_stats stats_;
  dmoe::detail::boxed<std::unordered_set<node_id>> checking_;  // peers whose eviction or address check is in flight
  task_group background_;
  bool serving_ = false;
  bool closed_ = false;
};

}  // namespace dht
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace dht::detail {

DMOE_DEF auto source_limits::take_request(const endpoint& source, steady_time now) -> bool {
  if (rate_ <= 0) return true;
  entry& e = at(source, now);
  const double elapsed = std::chrono::duration<double>(now - e.refilled).count();
  e.tokens = std::min(burst_, e.tokens + std::max(0.0, elapsed) * rate_);
  e.refilled = now;
  if (e.tokens < 1) return false;
  e.tokens -= 1;
  return true;
}

DMOE_DEF auto source_limits::drop_expired(entry& e, wall_seconds now) -> void {
  while (!e.stored.empty() && !(now < e.stored.top().first)) {
    e.bytes -= e.stored.top().second;
    e.stored.pop();
  }
}

DMOE_DEF auto source_limits::at(const endpoint& source, steady_time now) -> entry& {
  auto it = entries_->find(source);
  if (it != entries_->end()) return it->second;
  if (entries_->size() >= max_sources_) {
    // Forget sources that hold nothing and whose bucket has refilled: they lose no protection.
    std::erase_if(*entries_, [&](auto& item) {
      const double elapsed = std::chrono::duration<double>(now - item.second.refilled).count();
      return item.second.bytes == 0 && (rate_ <= 0 || item.second.tokens + elapsed * rate_ >= burst_);
    });
    if (entries_->size() >= max_sources_) entries_->erase(entries_->begin());
  }
  entry fresh;
  fresh.tokens = burst_;
  fresh.refilled = now;
  return entries_->emplace(source, std::move(fresh)).first->second;
}

DMOE_DEF auto source_limits::sources() const noexcept -> std::size_t { return entries_->size(); }

}  // namespace dht::detail

namespace dht {

DMOE_DEF protocol::protocol(io_context& ctx, protocol_options options) : ctx_(ctx),
      options_(check(std::move(options))),
      self_(options_.id ? *options_.id : random_node_id()),
      endpoint_(ctx, options_.listen, to_sender_id(self_), options_.datagram),
      table_(self_, table_options(options_)),
      storage_(options_.storage, *options_.clock),
      cache_(options_.cache, *options_.clock),
      sources_(options_.max_requests_per_second, options_.request_burst, options_.max_bytes_per_source,
               options_.max_tracked_sources),
      background_(ctx) {
  endpoint_.add_handler(static_cast<std::uint16_t>(message_type::ping),
                        [this](net::datagram_request& r) { return on_ping(r); });
  endpoint_.add_handler(static_cast<std::uint16_t>(message_type::store),
                        [this](net::datagram_request& r) { return on_store(r); });
  endpoint_.add_handler(static_cast<std::uint16_t>(message_type::find),
                        [this](net::datagram_request& r) { return on_find(r); });
}

DMOE_DEF auto protocol::serve() -> task<void> {
  serving_ = true;
  std::exception_ptr failure;
  try {
    co_await endpoint_.serve();
  } catch (...) {
    failure = std::current_exception();
  }
  closed_ = true;
  background_.request_stop();
  try {
    co_await background_.join();
  } catch (const std::exception& e) {
    log_debug("dht node {}: a background call failed while stopping: {}", endpoint_.local_endpoint(), e.what());
  }
  serving_ = false;
  if (failure) std::rethrow_exception(failure);
}

DMOE_DEF auto protocol::ping(endpoint address, steady_time deadline,
                                             std::optional<node_id> expected) -> task<std::pair<node_id, ping_response>> {
  ++stats_.pings_sent;
  const byte_buffer request = encode(ping_request{options_.client_mode});
  net::datagram_response answer =
      co_await call(address, message_type::ping, request, deadline, expected);
  const node_id sender = from_sender_id(answer.sender);
  const ping_response decoded = decoded_or_failed(
      expected ? *expected : sender, [&] { return decode_ping_response(answer.message, options_.limits); });
  answered(sender, address, decoded.client_mode);
  co_return std::pair{sender, std::move(decoded)};
}

DMOE_DEF auto protocol::store(wire_peer peer, std::vector<store_item> items, steady_time deadline)
    -> task<std::vector<store_result>> {
  ++stats_.stores_sent;
  const byte_buffer request = encode(store_request{options_.client_mode, std::move(items)});
  net::datagram_response answer = co_await call(peer.address, message_type::store, request, deadline, peer.id);
  store_response decoded =
      decoded_or_failed(peer.id, [&] { return decode_store_response(answer.message, options_.limits); });
  answered(peer.id, peer.address, decoded.client_mode);
  co_return std::move(decoded.results);
}

DMOE_DEF auto protocol::find(wire_peer peer, std::vector<key_id> keys, steady_time deadline) -> task<find_response> {
  ++stats_.finds_sent;
  const byte_buffer request = encode(find_request{options_.client_mode, std::move(keys)});
  net::datagram_response answer = co_await call(peer.address, message_type::find, request, deadline, peer.id);
  find_response decoded =
      decoded_or_failed(peer.id, [&] { return decode_find_response(answer.message, options_.limits); });
  if (const std::size_t forged = screen(decoded); forged != 0) {
    // Honest peers validated what they store: a forged record marks the peer as hostile.
    ++stats_.calls_failed;
    record_failure(peer.id);
    throw protocol_error(dmoe::format("dht find answer from {} at {}: {} record(s) with a refused signature",
                                     peer.id.to_hex(), peer.address, forged));
  }
  answered(peer.id, peer.address, decoded.client_mode);
  co_return decoded;
}

DMOE_DEF auto protocol::check_alive(const wire_peer& peer) -> bool {
  if (!table_.find(peer.id) || !check_in_background(peer)) return false;
  ++stats_.liveness_checks;
  return true;
}

DMOE_DEF auto protocol::check_in_background(const wire_peer& peer) -> bool {
  if (checking_->contains(peer.id) || !spawn_background(check_eviction(peer))) return false;
  checking_->insert(peer.id);
  return true;
}

DMOE_DEF auto protocol::store_locally(const store_item& item, const endpoint* source) -> store_result {
  const std::optional<record> stored = storage_.get(item.key);
  const byte_buffer* subkey = item.subkey ? &*item.subkey : nullptr;
  if (validator_.validate(item.key, subkey, item.value, stored) != validation::ok) {
    ++stats_.signatures_refused;
    return store_result::refused;
  }
  const std::size_t bytes = item.value.value.size() + item.value.signature.size() + (subkey ? subkey->size() : 0);
  const steady_time steady = options_.clock->steady_now();
  if (source && !sources_.fits(*source, bytes + node_id::size, options_.clock->wall_now(), steady)) {
    ++stats_.over_source_quota;
    return store_result::no_room;
  }
  const store_result result = item.subkey ? storage_.put(item.key, record::single_subkey(*item.subkey, item.value.value,
                                                                                        item.value.expiration,
                                                                                        item.value.signature))
                                          : storage_.put(item.key, record::plain(item.value.value,
                                                                                 item.value.expiration,
                                                                                 item.value.signature));
  if (result == store_result::stored && source)
    sources_.add(*source, bytes + node_id::size, item.value.expiration, steady);
  return result;
}

DMOE_DEF auto protocol::cache(const key_id& key, const record& found) -> void {
  // Signed values are cached only as the validator would store them.
  if (found.is_dictionary) {
    for (const auto& [subkey, v] : found.subkeys) {
      if (validator_.validate(key, &subkey, v, cache_.get(key)) == validation::ok)
        cache_.put(key, record::single_subkey(subkey, v.value, v.expiration, v.signature));
    }
  } else if (validator_.validate(key, nullptr, found.value, cache_.get(key)) == validation::ok) {
    cache_.put(key, found);
  }
}

DMOE_DEF auto protocol::local(const key_id& key) -> std::optional<record> {
  std::optional<record> out = storage_.get(key);
  if (std::optional<record> cached = cache_.get(key)) {
    if (!out) out = std::move(cached);
    else merge_into(*out, *cached);
  }
  return out;
}

DMOE_DEF auto protocol::heard_from(const node_id& id, const endpoint& address, bool from_request) -> void {
  if (id == self_ || closed_) return;
  const heard_result heard = table_.heard_from(id, address, options_.clock->steady_now(), !from_request);
  switch (heard.outcome) {
    case heard_outcome::added:
      if (options_.client_mode || storage_.size() == 0) break;
      if (from_request) spawn_background(welcome(wire_peer{id, address}));
      else hand_over_to(wire_peer{id, address});
      break;
    case heard_outcome::cached:
      if (heard.ping && !checking_->contains(heard.ping->id)) {
        ++stats_.evictions_checked;
        check_in_background(wire_peer{heard.ping->id, heard.ping->address});
      }
      break;
    case heard_outcome::address_conflict:
      ++stats_.address_conflicts;
      if (heard.ping && !checking_->contains(id)) {
        if (spawn_background(check_moved(wire_peer{id, heard.ping->address}, address))) checking_->insert(id);
      }
      break;
    case heard_outcome::address_taken:
      // The holder stays if it still answers there; a restarted node's old id fails, and the new one is taken
      // the next time it is heard from.
      ++stats_.addresses_taken;
      if (heard.ping) check_in_background(wire_peer{heard.ping->id, heard.ping->address});
      break;
    case heard_outcome::ip_limit:
      // The address's least recently seen peer is checked: a dead one frees a slot for the next to be heard.
      ++stats_.ip_limited;
      if (heard.ping) check_in_background(wire_peer{heard.ping->id, heard.ping->address});
      break;
    default:
      break;
  }
}

DMOE_DEF auto protocol::record_failure(const node_id& id) -> void {
  ++stats_.bans;
  const steady_time now = options_.clock->steady_now();
  table_.failed(id, now);
  if (table_.bans().size() > 4 * max_remembered_bans) table_.bans().expire(now);
}

DMOE_DEF auto protocol::check(protocol_options o) -> protocol_options {
  if (o.k == 0 || o.b == 0) throw invalid_argument_error(dmoe::format("dht node needs k >= 1 and b >= 1, got k={} b={}", o.k, o.b));
  if (o.num_replicas == 0) throw invalid_argument_error("dht node needs num_replicas >= 1");
  if (o.k > o.limits.max_peers)
    throw invalid_argument_error(dmoe::format("dht node: k={} exceeds limits.max_peers={} (find answers carry k peers)",
                                             o.k, o.limits.max_peers));
  if (o.rpc_timeout.count() <= 0) throw invalid_argument_error("dht node: rpc_timeout must be positive");
  if (o.max_requests_per_second < 0 || (o.max_requests_per_second > 0 && o.request_burst == 0))
    throw invalid_argument_error("dht node: max_requests_per_second must be >= 0, with request_burst >= 1");
  if (!std::isfinite(o.find_answer_ratio) || o.find_answer_ratio < 0)
    throw invalid_argument_error("dht node: find_answer_ratio must be finite and >= 0");
  if (o.max_tracked_sources == 0) throw invalid_argument_error("dht node: max_tracked_sources must be >= 1");
  if (!o.clock) throw invalid_argument_error("dht node: clock must not be null");
  return o;
}

DMOE_DEF auto protocol::table_options(const protocol_options& o) -> routing_table_options {
  routing_table_options t = o.table;
  t.k = o.k;
  t.b = o.b;
  return t;
}

DMOE_DEF auto protocol::call(endpoint address, message_type type, const byte_buffer& request,
                                  steady_time deadline, std::optional<node_id> expected) -> task<net::datagram_response> {
  if (closed_) throw closed_error(dmoe::format("dht node {} is shut down", endpoint_.local_endpoint()));
  deadline = std::min(deadline, deadline_after(options_.rpc_timeout));
  net::datagram_response answer;
  try {
    answer = co_await endpoint_.request(address, static_cast<std::uint16_t>(type), request, deadline);
  } catch (const timeout_error&) {
    ++stats_.calls_failed;
    if (expected) record_failure(*expected);
    throw;
  } catch (const remote_error&) {
    ++stats_.calls_failed;
    if (expected) record_failure(*expected);
    throw;
  }
  const node_id sender = from_sender_id(answer.sender);
  if (expected && sender != *expected) {
    // Another node answers at that address now: the one we asked is gone; learn the new one.
    ++stats_.calls_failed;
    record_failure(*expected);
    throw protocol_error(dmoe::format("dht {} call to {}: answered by node {} instead of {}", to_string(type), address,
                                     sender.to_hex(), expected->to_hex()));
  }
  ++stats_.calls_answered;
  co_return answer;
}

DMOE_DEF auto protocol::to_string(message_type type) noexcept -> std::string_view {
  switch (type) {
    case message_type::ping: return "ping";
    case message_type::store: return "store";
    case message_type::find: return "find";
  }
  return "unknown";
}

DMOE_DEF auto protocol::screen(find_response& answer) -> std::size_t {
  const wall_seconds latest = options_.clock->wall_now() + options_.storage.max_expiration_horizon;
  std::size_t forged = 0;
  auto acceptable = [&](const key_id& key, const byte_buffer* subkey, const timed_value& v) {
    if (!std::isfinite(v.expiration) || v.expiration > latest) {
      ++stats_.records_dropped;
      return false;
    }
    if (validator_.validate(key, subkey, v, std::nullopt) != validation::ok) {
      ++stats_.records_dropped;
      ++forged;
      return false;
    }
    return true;
  };
  for (auto& result : answer.results) {
    if (!result.found) continue;
    record& found = *result.found;
    if (found.is_dictionary) {
      std::erase_if(found.subkeys, [&](const auto& item) { return !acceptable(result.key, &item.first, item.second); });
      if (found.subkeys.empty()) result.found.reset();
    } else if (!acceptable(result.key, nullptr, found.value)) {
      result.found.reset();
    }
  }
  return forged;
}

DMOE_DEF auto protocol::on_ping(net::datagram_request& r) -> task<byte_buffer> {
  const ping_request m = admit<ping_request>(r, [](const_byte_span b, const message_limits& l) {
    return decode_ping_request(b, l);
  });
  ++stats_.pings_received;
  learn_requester(r, m.client_mode);
  co_return encode(ping_response{options_.client_mode, r.peer});
}

DMOE_DEF auto protocol::on_store(net::datagram_request& r) -> task<byte_buffer> {
  const store_request m = admit<store_request>(r, [](const_byte_span b, const message_limits& l) {
    return decode_store_request(b, l);
  });
  ++stats_.stores_received;
  learn_requester(r, m.client_mode);
  store_response out{options_.client_mode, {}};
  out.results.reserve(m.items.size());
  const endpoint source = r.peer.with_port(0);
  for (const auto& item : m.items) {
    const store_result result = store_locally(item, &source);
    if (result != store_result::stored) ++stats_.items_refused;
    out.results.push_back(result);
  }
  co_return encode(out);
}

DMOE_DEF auto protocol::on_find(net::datagram_request& r) -> task<byte_buffer> {
  const find_request m = admit<find_request>(r, [](const_byte_span b, const message_limits& l) {
    return decode_find_request(b, l);
  });
  ++stats_.finds_received;
  learn_requester(r, m.client_mode);
  const node_id requester = from_sender_id(r.sender);
  find_response out{options_.client_mode, {}};
  out.results.reserve(m.keys.size());
  // The answer goes to an unverified source address: values are included only up to a budget proportional to
  // the request (at least find_answer_min_value_bytes, so one largest value fits), and a repeated key is answered
  // once, so a small request cannot reflect a large answer. The budget also stays under the message limit.
  const double proportional = std::min(options_.find_answer_ratio * static_cast<double>(r.message.size()), 1e15);
  std::size_t budget =
      std::min<std::size_t>(options_.datagram.limits.max_message / 2,
                            std::max(options_.find_answer_min_value_bytes, static_cast<std::size_t>(proportional)));
  std::unordered_set<key_id> seen;
  for (const auto& key : m.keys) {
    if (!seen.insert(key).second) continue;
    find_result result{key, local(key), {}};
    if (result.found) {
      const std::size_t size = result.found->byte_size() + 64 * (result.found->subkeys.size() + 1);
      if (size > budget) result.found.reset();
      else budget -= size;
    }
    for (const auto& p : table_.nearest(key, options_.k, requester)) result.nearest.push_back({p.id, p.address});
    out.results.push_back(std::move(result));
  }
  co_return encode(out);
}

DMOE_DEF auto protocol::keys_for_newcomer(const node_id& newcomer) -> std::vector<store_item> {
  std::vector<store_item> out;
  if (storage_.size() == 0) return out;
  const wall_seconds now = options_.clock->wall_now();
  std::size_t examined = 0;
  for (const auto& [key, held] : storage_.entries()) {
    if (out.size() >= options_.limits.max_keys || examined++ >= options_.max_handover_scan) break;
    const auto neighbours = table_.nearest(key, options_.num_replicas, newcomer);
    bool give = neighbours.empty();
    if (!give) {
      const bool we_are_nearest = nearer(key, self_, neighbours.front().id);
      const bool newcomer_is_near = neighbours.size() < options_.num_replicas || nearer(key, newcomer, neighbours.back().id);
      give = we_are_nearest && newcomer_is_near;
    }
    if (!give) continue;
    if (held.is_dictionary) {
      for (const auto& [subkey, v] : held.subkeys)
        if (now < v.expiration && out.size() < options_.limits.max_keys) out.push_back({key, subkey, v});
    } else if (now < held.value.expiration) {
      out.push_back({key, std::nullopt, held.value});
    }
  }
  return out;
}

DMOE_DEF auto protocol::hand_over_to(const wire_peer& peer) -> void {
  std::vector<store_item> items = keys_for_newcomer(peer.id);
  if (items.empty()) return;
  ++stats_.handovers;
  spawn_background(hand_over(peer, std::move(items)));
}

DMOE_DEF auto protocol::welcome(wire_peer peer) -> task<void> {
  try {
    co_await ping(peer.address, deadline_after(options_.rpc_timeout), peer.id);
  } catch (const std::exception& e) {
    log_debug("dht node {}: new peer {} did not answer: {}", endpoint_.local_endpoint(), peer.address, e.what());
    co_return;
  }
  if (closed_) co_return;
  const auto entry = table_.find(peer.id);
  if (!entry || entry->address != peer.address) co_return;
  std::vector<store_item> items = keys_for_newcomer(peer.id);
  if (items.empty()) co_return;
  ++stats_.handovers;
  co_await hand_over(peer, std::move(items));
}

DMOE_DEF auto protocol::check_moved(wire_peer known, endpoint moved_to) -> task<void> {
  bool try_new = false;
  try {
    co_await ping(known.address, deadline_after(options_.rpc_timeout), known.id);
  } catch (const cancelled_error&) {
  } catch (const closed_error&) {
  } catch (const std::exception& e) {
    log_debug("dht node {}: {} did not answer at {}: {}", endpoint_.local_endpoint(), known.id.to_hex(),
              known.address, e.what());
    try_new = true;
  }
  if (try_new && !closed_) {
    try {
      co_await ping(moved_to, deadline_after(options_.rpc_timeout), known.id);
    } catch (const std::exception& e) {
      log_debug("dht node {}: {} did not answer at {} either: {}", endpoint_.local_endpoint(), known.id.to_hex(),
                moved_to, e.what());
    }
  }
  checking_->erase(known.id);
}

DMOE_DEF auto protocol::hand_over(wire_peer peer, std::vector<store_item> items) -> task<void> {
  try {
    co_await store(peer, std::move(items), deadline_after(options_.rpc_timeout));
  } catch (const std::exception& e) {
    log_debug("dht node {}: handing keys to {} failed: {}", endpoint_.local_endpoint(), peer.address, e.what());
  }
}

DMOE_DEF auto protocol::check_eviction(wire_peer peer) -> task<void> {
  try {
    co_await ping(peer.address, deadline_after(options_.rpc_timeout), peer.id);
  } catch (const std::exception& e) {
    log_debug("dht node {}: {} did not answer its liveness ping: {}", endpoint_.local_endpoint(), peer.address,
              e.what());
  }
  checking_->erase(peer.id);
}

}  // namespace dht
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
