// The Kademlia routing table: k-buckets over prefix ranges, relaxed splitting, replacement caches, bans.
#pragma once

#include <dmoe/async/endpoint.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/boxed.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/dht/node_id.hpp>
#include <dmoe/dht/peer_bans.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include <netinet/in.h>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace dht {

// A peer the table knows: its id, where it listens, when it was last heard from (steady time).
struct peer_info {
  node_id id;
  endpoint address;
  steady_time last_seen{};
};

struct routing_table_options {
  std::size_t k = 20;  // bucket size, and how many nearest nodes lookups keep (Kademlia's k)
  // Kademlia's b (section 4.2): a full bucket not holding our id still splits while its depth is not a
  // multiple of b, so each routing step gains at least b bits. b = 1 is the plain split-on-own-id table.
  std::size_t b = 5;
  std::size_t replacement_cache_size = 20;  // nodes kept per bucket to replace dead ones, most recent first
  // At most this many peers of the table's buckets share one IP address, or one IPv6 /64 (0: no limit), so that
  // one machine inventing ids cannot fill a node's view of the swarm (a Sybil attack; libtorrent's DHT keeps one per
  // IP). Several expert servers may share a machine or a NAT's address, hence more than one. A node over the limit
  // is ignored (heard_outcome::ip_limit), and find answers and lookups apply the same limit (see lookup_options).
  std::size_t max_peers_per_ip = 4;
  // Whether the limit also counts loopback addresses (127.0.0.0/8, ::1): off, so that a swarm of many nodes on one
  // machine (tests, demos, a laptop) works; only that machine can reach those addresses.
  bool limit_loopback = false;
  peer_ban_options bans{};
};

// Whether `address` is an IPv4 or IPv6 loopback address (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104).
DMOE_LAZY inline bool is_loopback(const endpoint& address) noexcept {
  if (address.is_v4()) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(address.data());
    return (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
  }
  if (address.is_v6()) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(address.data());
    if (IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr) && v6->sin6_addr.s6_addr[12] == 127;
  }
  return false;
}

// The addresses peers are counted under for routing_table_options::max_peers_per_ip: the IP address (port 0), but
// for IPv6 its /64 prefix, the one subnet every IPv6 link gets (RFC 4291), from which one machine can use 2^64
// addresses. IPv4-mapped IPv6 addresses count as their IPv4 address.
DMOE_LAZY inline endpoint ip_limit_key(const endpoint& address) {
  const endpoint ip = address.with_port(0);
  if (!ip.is_v6()) return ip;
  sockaddr_in6 v6;
  std::memcpy(&v6, ip.data(), sizeof v6);
  if (IN6_IS_ADDR_V4MAPPED(&v6.sin6_addr)) {
    sockaddr_in v4{};
    v4.sin_family = AF_INET;
    std::memcpy(&v4.sin_addr, v6.sin6_addr.s6_addr + 12, 4);
    return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&v4), sizeof v4);
  }
  std::memset(v6.sin6_addr.s6_addr + 8, 0, 8);
  v6.sin6_flowinfo = 0;
  v6.sin6_scope_id = 0;
  return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&v6), sizeof v6);
}

// The peers of each IP address (ip_limit_key), for routing_table_options::max_peers_per_ip: which ids hold which
// of its addresses. Only limited addresses are indexed (all but loopback ones unless limit_loopback; none when the
// limit is 0), so a local swarm pays nothing.
class ip_index {
 public:
  DMOE_LAZY ip_index(std::size_t limit, bool limit_loopback) : limit_(limit), limit_loopback_(limit_loopback) {}
  bool limited(const endpoint& address) const noexcept {
    return limit_ > 0 && (limit_loopback_ || !is_loopback(address));
  }
  // Whether the address's IP (or IPv6 /64) already has `limit` peers.
  DMOE_DECL bool full(const endpoint& address) const;
  // The peers indexed under the address's IP (or IPv6 /64): (address, id) pairs; null when none or not limited.
  DMOE_DECL const std::vector<std::pair<endpoint, node_id>>* peers_of(const endpoint& address) const;
  // The id indexed at exactly this address (ip and port), if any.
  DMOE_DECL std::optional<node_id> holder(const endpoint& address) const;
  DMOE_DECL void add(const endpoint& address, const node_id& id);
  DMOE_DECL void remove(const endpoint& address, const node_id& id);

 private:
  std::size_t limit_;
  bool limit_loopback_;
  dmoe::detail::boxed<std::unordered_map<endpoint, std::vector<std::pair<endpoint, node_id>>>> ips_;  // by ip_limit_key
};

// How the table took a node it heard from.
enum class heard_outcome {
  added,      // put in its bucket
  refreshed,  // already there; now the most recently seen
  cached,     // its bucket is full: kept in the replacement cache, and `ping` names the node to check
  banned,     // it is banned and this was not an answer from it: ignored
  self,       // our own id: ignored
  // It is known (in its bucket or cache) at another address: nothing changed, since ids are not authenticated.
  // `ping` names the known entry: ping it there; only if it fails may the new address be tried (and then learnt
  // when it answers a ping expecting this id).
  address_conflict,
  // Another id holds this address (ip and port) in a bucket: nothing changed. `ping` names that entry: a node that
  // restarted with a new id leaves its old entry dead, and only once it fails may the new id take the address.
  // Checked for the addresses max_peers_per_ip limits (not loopback ones unless limit_loopback).
  address_taken,
  // Its IP address already has routing_table_options::max_peers_per_ip peers in the buckets: ignored. `ping` names
  // the least recently seen of them: dead entries (a machine whose nodes restarted on new ports) must not keep the
  // address's slots.
  ip_limit,
};

struct heard_result {
  heard_outcome outcome;
  // With `cached`: the least recently seen node of the full bucket. Ping it, then report `heard_from` (alive:
  // it stays, the newcomer waits in the cache) or `failed` (dead: removed, the newest cached node takes its place).
  std::optional<peer_info> ping;
};

// The routing table of one node (Maymounkov & Mazières 2002, "Kademlia", sections 2.2, 2.4 and 4.2).
// Buckets are disjoint prefix ranges covering the id space; each holds at most k nodes ordered from least to
// most recently seen. Pure: every call takes the time; nothing here reads a clock or touches a socket.
class routing_table {
 public:
  struct bucket {
    node_id prefix;         // the range's lowest id
    std::size_t depth = 0;  // number of leading bits fixed by the range
    std::vector<peer_info> peers;          // least recently seen first
    std::vector<peer_info> replacements;   // most recently seen last

    bool covers(const node_id& id) const noexcept { return common_prefix_length(prefix, id) >= depth; }
  };

  // Throws invalid_argument_error when k, b or the cache size is 0.
  DMOE_DECL explicit routing_table(node_id self, routing_table_options options = {});

  const node_id& self() const noexcept { return self_; }
  const routing_table_options& options() const noexcept { return options_; }

  // We heard from `id` at `address` at `now`. `answered` is true when it answered one of our requests (a
  // success: its ban, if any, is lifted); false for a request it sent us, which a banned node cannot use to
  // get back in before its ban ends. A known node moves to the tail of its bucket; a known node heard from at
  // another address is left exactly as it was (address_conflict): the address of a known id never changes here.
  // A new id at an address another id holds (address_taken) or from an IP address at its limit (ip_limit) is
  // not taken.
  DMOE_DECL heard_result heard_from(const node_id& id, const endpoint& address, steady_time now, bool answered = true);

  // `id` did not answer at `now`: it leaves its bucket (or cache), is banned (the ban doubles with each failure
  // in a row), and the most recently seen cached node of its bucket takes its place. Returns the end of the ban.
  DMOE_DECL steady_time failed(const node_id& id, steady_time now);

  DMOE_LAZY bool is_banned(const node_id& id, steady_time now) const { return bans_.is_banned(id, now); }
  const peer_bans& bans() const noexcept { return bans_; }
  peer_bans& bans() noexcept { return bans_; }

  // The peer with this id, if it is in a bucket (not the replacement cache).
  DMOE_DECL std::optional<peer_info> find(const node_id& id) const;
  DMOE_LAZY bool contains(const node_id& id) const { return find(id).has_value(); }

  // The `count` peers nearest to `target` by XOR distance, nearest first, leaving out `exclude` (our own id is
  // never in the table). Equal to sorting every peer by distance; visits buckets in order of their distance
  // range (the ranges are disjoint), so it stops after the first buckets that hold `count` peers.
  DMOE_DECL std::vector<peer_info> nearest(const node_id& target, std::size_t count,
                                 std::optional<node_id> exclude = std::nullopt) const;

  // Every peer in a bucket, bucket by bucket.
  DMOE_DECL std::vector<peer_info> peers() const;

  // The id that holds `address` (ip and port) in a bucket, if any; for the addresses max_peers_per_ip limits.
  DMOE_LAZY std::optional<node_id> holder_of(const endpoint& address) const { return per_ip_.holder(address); }

  std::size_t size() const noexcept { return size_; }
  std::size_t bucket_count() const noexcept { return buckets_.size(); }
  const std::vector<bucket>& buckets() const noexcept { return buckets_; }

  // The bucket whose range holds `id`.
  const bucket& bucket_of(const node_id& id) const { return buckets_[bucket_index(id)]; }

 private:
  DMOE_LAZY std::size_t bucket_index(const node_id& id) const noexcept {
    for (std::size_t i = 0; i < buckets_.size(); ++i)
      if (buckets_[i].covers(id)) return i;
    return 0;  // unreachable: the buckets' ranges cover the id space
  }
  bucket& bucket_for(const node_id& id) { return buckets_[bucket_index(id)]; }

  bool can_split(const bucket& b) const noexcept {
    return b.depth < node_id::bits && (b.covers(self_) || b.depth % options_.b != 0);
  }

  // Only a bucket without a replacement cache splits (one that cannot split never will: its range and our id stay).
  DMOE_DECL void split(bucket& b);

  // The least recently seen peer in the buckets under the address's IP (or IPv6 /64).
  DMOE_LAZY std::optional<peer_info> least_recently_seen_at(const endpoint& address) const {
    std::optional<peer_info> oldest;
    if (const auto* held = per_ip_.peers_of(address)) {
      for (const auto& entry : *held) {
        const std::optional<peer_info> p = find(entry.second);
        if (p && (!oldest || p->last_seen < oldest->last_seen)) oldest = p;
      }
    }
    return oldest;
  }

  // Bookkeeping of a peer entering or leaving the buckets.
  DMOE_LAZY void enter(const peer_info& p) {
    per_ip_.add(p.address, p.id);
    ++size_;
  }
  DMOE_LAZY void leave(const peer_info& p) {
    per_ip_.remove(p.address, p.id);
    --size_;
  }

  node_id self_;
  routing_table_options options_;
  peer_bans bans_;
  std::vector<bucket> buckets_;
  std::size_t size_ = 0;
  ip_index per_ip_;  // the buckets' peers per IP address
};

}  // namespace dht
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace dht {

DMOE_DEF routing_table::routing_table(node_id self, routing_table_options options) : self_(self),
    options_(options), bans_(options.bans), per_ip_(options.max_peers_per_ip, options.limit_loopback) {
  if (options_.k == 0 || options_.b == 0 || options_.replacement_cache_size == 0)
    throw invalid_argument_error(dmoe::format("routing table needs k, b and replacement_cache_size >= 1, got {}, {}, {}",
                                             options_.k, options_.b, options_.replacement_cache_size));
  buckets_.push_back(bucket{});
}

DMOE_DEF auto routing_table::heard_from(const node_id& id, const endpoint& address, steady_time now,
    bool answered) -> heard_result {
  if (id == self_) return {heard_outcome::self, std::nullopt};
  {
    const bucket& b = bucket_for(id);
    for (const auto* list : {&b.peers, &b.replacements})
      for (const auto& p : *list)
        if (p.id == id && p.address != address) return {heard_outcome::address_conflict, p};
  }
  if (answered) {
    bans_.succeeded(id);
  } else if (bans_.is_banned(id, now)) {
    return {heard_outcome::banned, std::nullopt};
  }
  const peer_info incoming{id, address, now};
  for (;;) {
    bucket& b = bucket_for(id);
    auto it = std::find_if(b.peers.begin(), b.peers.end(), [&](const peer_info& p) { return p.id == id; });
    if (it != b.peers.end()) {
      b.peers.erase(it);
      b.peers.push_back(incoming);
      return {heard_outcome::refreshed, std::nullopt};
    }
    if (b.peers.size() < options_.k) {
      // A newcomer with room in its bucket (the replacement cache is checked when a cached peer is promoted).
      if (const std::optional<node_id> holder = per_ip_.holder(address); holder && *holder != id) {
        if (std::optional<peer_info> held = find(*holder)) return {heard_outcome::address_taken, held};
      }
      if (per_ip_.full(address)) return {heard_outcome::ip_limit, least_recently_seen_at(address)};
      std::erase_if(b.replacements, [&](const peer_info& p) { return p.id == id; });
      b.peers.push_back(incoming);
      enter(incoming);
      return {heard_outcome::added, std::nullopt};
    }
    if (can_split(b)) {
      split(b);
      continue;
    }
    std::erase_if(b.replacements, [&](const peer_info& p) { return p.id == id; });
    b.replacements.push_back(incoming);
    if (b.replacements.size() > options_.replacement_cache_size) b.replacements.erase(b.replacements.begin());
    return {heard_outcome::cached, b.peers.front()};
  }
}

DMOE_DEF auto routing_table::failed(const node_id& id, steady_time now) -> steady_time {
  if (id != self_) {
    bucket& b = bucket_for(id);
    std::erase_if(b.replacements, [&](const peer_info& p) { return p.id == id; });
    auto it = std::find_if(b.peers.begin(), b.peers.end(), [&](const peer_info& p) { return p.id == id; });
    if (it != b.peers.end()) {
      leave(*it);
      b.peers.erase(it);
      // The most recently seen cached node whose address is free and whose IP address is under its limit.
      for (auto c = b.replacements.rbegin(); c != b.replacements.rend(); ++c) {
        if (per_ip_.holder(c->address) || per_ip_.full(c->address)) continue;
        const peer_info promoted = *c;
        b.replacements.erase(std::next(c).base());
        // Keep least-recently-seen-first order.
        auto at = std::upper_bound(b.peers.begin(), b.peers.end(), promoted.last_seen,
                                   [](steady_time t, const peer_info& p) { return t < p.last_seen; });
        b.peers.insert(at, promoted);
        enter(promoted);
        break;
      }
    }
  }
  return bans_.failed(id, now);
}

DMOE_DEF auto routing_table::find(const node_id& id) const -> std::optional<peer_info> {
  const bucket& b = buckets_[bucket_index(id)];
  for (const auto& p : b.peers)
    if (p.id == id) return p;
  return std::nullopt;
}

DMOE_DEF auto routing_table::nearest(const node_id& target, std::size_t count,
                               std::optional<node_id> exclude) const -> std::vector<peer_info> {
  std::vector<std::pair<node_id, const bucket*>> order;
  order.reserve(buckets_.size());
  for (const auto& b : buckets_) order.emplace_back(distance(target, b.prefix).prefix(b.depth), &b);
  std::sort(order.begin(), order.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  std::vector<peer_info> out;
  for (const auto& [lowest, b] : order) {
    if (out.size() >= count) break;
    for (const auto& p : b->peers)
      if (!exclude || p.id != *exclude) out.push_back(p);
  }
  std::sort(out.begin(), out.end(),
            [&](const peer_info& x, const peer_info& y) { return nearer(target, x.id, y.id); });
  if (out.size() > count) out.resize(count);
  return out;
}

DMOE_DEF auto routing_table::peers() const -> std::vector<peer_info> {
  std::vector<peer_info> out;
  out.reserve(size_);
  for (const auto& b : buckets_) out.insert(out.end(), b.peers.begin(), b.peers.end());
  return out;
}

DMOE_DEF auto routing_table::split(bucket& b) -> void {
  bucket upper;
  upper.depth = b.depth + 1;
  upper.prefix = b.prefix.with_bit(b.depth, true);
  b.depth += 1;
  auto moves = [&](const peer_info& p) { return p.id.bit(b.depth - 1); };
  for (auto& p : b.peers)
    if (moves(p)) upper.peers.push_back(p);
  for (auto& p : b.replacements)
    if (moves(p)) upper.replacements.push_back(p);
  std::erase_if(b.peers, moves);
  std::erase_if(b.replacements, moves);
  buckets_.push_back(std::move(upper));  // invalidates `b`
}

DMOE_DEF auto ip_index::full(const endpoint& address) const -> bool {
  if (!limited(address)) return false;
  const auto it = ips_->find(ip_limit_key(address));
  return it != ips_->end() && it->second.size() >= limit_;
}

DMOE_DEF auto ip_index::peers_of(const endpoint& address) const -> const std::vector<std::pair<endpoint, node_id>>* {
  if (!limited(address)) return nullptr;
  const auto it = ips_->find(ip_limit_key(address));
  return it == ips_->end() ? nullptr : &it->second;
}

DMOE_DEF auto ip_index::holder(const endpoint& address) const -> std::optional<node_id> {
  if (!limited(address)) return std::nullopt;
  const auto it = ips_->find(ip_limit_key(address));
  if (it == ips_->end()) return std::nullopt;
  for (const auto& [held, id] : it->second)
    if (held == address) return id;
  return std::nullopt;
}

DMOE_DEF auto ip_index::add(const endpoint& address, const node_id& id) -> void {
  if (limited(address)) (*ips_)[ip_limit_key(address)].emplace_back(address, id);
}

DMOE_DEF auto ip_index::remove(const endpoint& address, const node_id& id) -> void {
  if (!limited(address)) return;
  const auto it = ips_->find(ip_limit_key(address));
  if (it == ips_->end()) return;
  std::erase(it->second, std::pair<endpoint, node_id>(address, id));
  if (it->second.empty()) ips_->erase(it);
}

}  // namespace dht
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
