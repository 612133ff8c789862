// Expert declarations in the DHT: the records servers store and trainers read.
//
// For each expert uid (e.g. "ffn.3.17") a server stores
//   key "ffn.3.17"                              -> declaration(uid, endpoint)                  (a plain value)
// and, for each proper prefix of the uids it hosts, one dictionary entry of its own:
//   key "ffn.",   subkey "[owner:<its key>]"   -> successor set(endpoint, leaves {}, inner {3})
//   key "ffn.3.", subkey "[owner:<its key>]"   -> successor set(endpoint, leaves {17}, inner {})
// A successor set says which next coordinates c lead to experts the server hosts: "inner" ones where
// prefix + c + "." has successors, "leaves" where prefix + c is itself an expert at that endpoint. Coordinates are
// held as sorted, disjoint, half-open ranges, so a prefix's record grows with the servers under it, not with its
// experts: 256 experts "ffn.3.[0:256]" of one server are one range of 8 bytes. Every entry is ed25519-signed
// (dht/record_validator.hpp) and the owner subkey names the signer, so nobody else overwrites a server's entry or
// its uid records until they expire. A trainer merges the entries of every server under a prefix (the union of
// their ranges). Declaration value: u8 version 1, string uid, string endpoint ("1.2.3.4:5000" or "[::1]:5000").
// Successor set value: u8 version 2, string endpoint, u32 n, n x (u32 begin, u32 end) leaves, u32 m, m x (u32
// begin, u32 end) inner; each list strictly increasing and disjoint, ends at most max_uid_coordinate + 1.
// A trainer that finds a prefix without live successors may store subkey "-" with an empty value there (negative
// caching, as hivemind does): other trainers then learn at once that it is empty. Live entries always win over it.
#pragma once

#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/core/binary_reader.hpp>
#include <dmoe/core/binary_writer.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/dht/node.hpp>
#include <dmoe/dht/record_validator.hpp>
#include <dmoe/moe/expert_uid.hpp>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace moe {

inline constexpr std::uint8_t declaration_version = 1;

// One declared expert: its uid and the RPC endpoint of the server hosting it, with the record's expiration.
struct expert_declaration {
  std::string uid;
  endpoint server;
  wall_seconds expiration = 0;
};

DMOE_DECL byte_buffer encode_declaration(std::string_view uid, const endpoint& server);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF byte_buffer encode_declaration(std::string_view uid, const endpoint& server) {
  const std::string address = server.to_string();
  byte_buffer out;
  out.reserve(1 + 4 + uid.size() + 4 + address.size());
  binary_writer w(out);
  w.write<std::uint8_t>(declaration_version);
  w.write_string(uid);
  w.write_string(address);
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// Reads a declaration value; nothing for anything malformed (records come from untrusted peers).
DMOE_DECL std::optional<expert_declaration> decode_declaration(const_byte_span bytes, wall_seconds expiration);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::optional<expert_declaration> decode_declaration(const_byte_span bytes, wall_seconds expiration) {
  try {
    binary_reader r(bytes, "expert declaration");
    if (r.read<std::uint8_t>() != declaration_version) return std::nullopt;
    expert_declaration d;
    d.uid = r.read_string(max_uid_length);
    const std::string address = r.read_string(64);
    r.expect_end();
    if (!is_valid_expert_uid(d.uid)) return std::nullopt;
    auto server = endpoint::try_parse(address);
    if (!server || server->port() == 0) return std::nullopt;
    d.server = *server;
    d.expiration = expiration;
    return d;
  } catch (const error&) {
    return std::nullopt;
  }
}
#endif  // DMOE_HEAVY_DEFINITIONS

// A half-open range of coordinates [begin, end).
struct coordinate_range {
  std::uint32_t begin = 0;
  std::uint32_t end = 0;
  friend bool operator==(const coordinate_range&, const coordinate_range&) = default;
};

// The ranges of a sorted list of distinct coordinates (consecutive ones joined).
DMOE_DECL std::vector<coordinate_range> ranges_of(const std::vector<std::uint32_t>& sorted);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::vector<coordinate_range> ranges_of(const std::vector<std::uint32_t>& sorted) {
  std::vector<coordinate_range> out;
  for (const std::uint32_t c : sorted) {
    if (!out.empty() && out.back().end == c) ++out.back().end;
    else out.push_back({c, c + 1});
  }
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

inline constexpr std::uint8_t successor_set_version = 2;

// What one server declares under one prefix: the next coordinates that complete one of its experts' uids (leaves)
// and the ones that lead further (inner), as sorted disjoint ranges.
struct successor_set {
  endpoint server;
  std::vector<coordinate_range> leaves;
  std::vector<coordinate_range> inner;
};

DMOE_DECL byte_buffer encode_successor_set(const successor_set& set);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF byte_buffer encode_successor_set(const successor_set& set) {
  const std::string address = set.server.to_string();
  byte_buffer out;
  out.reserve(1 + 4 + address.size() + 8 + 8 * (set.leaves.size() + set.inner.size()));
  binary_writer w(out);
  w.write<std::uint8_t>(successor_set_version);
  w.write_string(address);
  for (const auto* list : {&set.leaves, &set.inner}) {
    w.write<std::uint32_t>(static_cast<std::uint32_t>(list->size()));
    for (const auto& r : *list) {
      w.write<std::uint32_t>(r.begin);
      w.write<std::uint32_t>(r.end);
    }
  }
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// Reads a successor set; nothing for anything malformed: another version, an unusable endpoint, a range that is
// empty, out of order, overlapping its predecessor or past max_uid_coordinate (records come from untrusted peers).
DMOE_DECL std::optional<successor_set> decode_successor_set(const_byte_span bytes);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::optional<successor_set> decode_successor_set(const_byte_span bytes) {
  try {
    binary_reader r(bytes, "successor set");
    if (r.read<std::uint8_t>() != successor_set_version) return std::nullopt;
    successor_set set;
    auto server = endpoint::try_parse(r.read_string(64));
    if (!server || server->port() == 0) return std::nullopt;
    set.server = *server;
    for (auto* list : {&set.leaves, &set.inner}) {
      const std::uint32_t n = r.read<std::uint32_t>();
      if (n > r.remaining() / 8) return std::nullopt;
      list->reserve(n);
      for (std::uint32_t i = 0; i < n; ++i) {
        const coordinate_range range{r.read<std::uint32_t>(), r.read<std::uint32_t>()};
        if (range.begin >= range.end || range.end > static_cast<std::uint64_t>(max_uid_coordinate) + 1) return std::nullopt;
        if (!list->empty() && range.begin < list->back().end) return std::nullopt;
        list->push_back(range);
      }
    }
    r.expect_end();
    return set;
  } catch (const error&) {
    return std::nullopt;
  }
}
#endif  // DMOE_HEAVY_DEFINITIONS

// The signed store entries declaring `uids` (valid expert uids) at `server` until `expiration` (wall-clock
// seconds): one plain entry per uid, and one successor set per proper prefix under the key's owner subkey.
// Throws invalid_argument_error for an invalid uid.
DMOE_DECL std::vector<dht::store_entry> declaration_entries(const std::vector<std::string>& uids, const endpoint& server,
                                                         wall_seconds expiration, const dht::ed25519_keypair& key);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::vector<dht::store_entry> declaration_entries(const std::vector<std::string>& uids,
    const endpoint& server,
                                                         wall_seconds expiration, const dht::ed25519_keypair& key) {
  std::vector<dht::store_entry> entries;
  struct next_coordinates {
    std::vector<std::uint32_t> leaves, inner;
  };
  std::map<std::string, next_coordinates> prefixes;
  for (const std::string& uid : uids) {
    const std::vector<uid_prefix> chain = uid_prefixes(uid);
    entries.push_back(
        dht::store_entry{dht::key_of(uid), std::nullopt, encode_declaration(uid, server), expiration, {}}.signed_by(key));
    for (std::size_t i = 0; i < chain.size(); ++i) {
      auto& next = prefixes[chain[i].prefix];
      (i + 1 == chain.size() ? next.leaves : next.inner)
          .push_back(static_cast<std::uint32_t>(detail::parse_coordinate(chain[i].next)));
    }
  }
  const byte_buffer owner = to_buffer(dht::owner_tag(key.public_key()));
  for (auto& [prefix, next] : prefixes) {
    for (auto* list : {&next.leaves, &next.inner}) {
      std::sort(list->begin(), list->end());
      list->erase(std::unique(list->begin(), list->end()), list->end());
    }
    const byte_buffer value = encode_successor_set({server, ranges_of(next.leaves), ranges_of(next.inner)});
    entries.push_back(dht::store_entry{dht::key_of(prefix), owner, value, expiration, {}}.signed_by(key));
  }
  return entries;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// The public key that signed a stored value (nothing when unsigned or malformed).
DMOE_DECL std::optional<dht::ed25519_public_key> declaration_signer(const dht::timed_value& v);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::optional<dht::ed25519_public_key> declaration_signer(const dht::timed_value& v) {
  if (v.signature.size() != dht::signature_blob_size) return std::nullopt;
  dht::ed25519_public_key key{};
  std::memcpy(key.data(), v.signature.data(), key.size());
  return key;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// Where each expert is served, in the order asked: nothing for an expert that no live declaration names (or whose
// record is malformed or declares another uid). Ends by `deadline`.
DMOE_DECL task<std::vector<std::optional<expert_declaration>>> get_experts(dht::node& node,
                                                                       const std::vector<std::string>& uids,
                                                                       steady_time deadline = no_deadline);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF task<std::vector<std::optional<expert_declaration>>> get_experts(dht::node& node,
                                                                       const std::vector<std::string>& uids,
                                                                       steady_time deadline) {
  std::vector<dht::key_id> keys;
  keys.reserve(uids.size());
  for (const auto& uid : uids) keys.push_back(dht::key_of(uid));
  const auto found = co_await node.get_many(std::move(keys), false, deadline);
  std::vector<std::optional<expert_declaration>> out(uids.size());
  for (std::size_t i = 0; i < uids.size(); ++i) {
    if (!found[i].found || found[i].found->is_dictionary) continue;
    auto d = decode_declaration(found[i].found->value.value, found[i].found->value.expiration);
    if (d && d->uid == uids[i]) out[i] = std::move(d);
  }
  co_return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// The subkey of the "no live successor here" marker (negative caching).
inline constexpr std::string_view empty_prefix_subkey = "-";

// Whether `prefix` is a uid prefix: a name, then zero or more coordinates, each followed by a dot ("ffn.", "ffn.3.").
inline bool is_valid_uid_prefix(std::string_view prefix) {
  return !prefix.empty() && prefix.back() == uid_delimiter && is_valid_expert_uid(std::string(prefix) + "0");
}

// Leaf coordinates [begin, end) served at prefix_successors::servers[server].
struct leaf_run {
  std::uint32_t begin = 0;
  std::uint32_t end = 0;
  std::uint32_t server = 0;
};

// The live successors of one prefix, as the DHT holds them: the union of every server's successor set.
struct prefix_successors {
  std::vector<coordinate_range> inner;  // sorted, disjoint: prefix + c + "." has live successors
  std::vector<leaf_run> leaves;         // sorted, disjoint: prefix + c is a live expert at servers[run.server]
  std::vector<endpoint> servers;        // distinct endpoints named by `leaves`
  std::vector<coordinate_range> contested;  // sorted, disjoint: leaves that more than one entry claims
  bool found = false;                   // the DHT held a record under the prefix (possibly only the marker)
  bool marked_empty = false;            // it held the "no live successor" marker and no live entry

  bool empty() const noexcept { return inner.empty() && leaves.empty(); }
  // Where expert prefix + c is served, or null when it is not a live leaf.
  DMOE_LAZY const endpoint* expert_server(std::uint32_t c) const noexcept {
    const auto it = std::upper_bound(leaves.begin(), leaves.end(), c,
                                     [](std::uint32_t v, const leaf_run& r) { return v < r.end; });
    return it == leaves.end() || it->begin > c ? nullptr : &servers[it->server];
  }
  // Whether more than one entry claims expert prefix + c (its uid record says which server really hosts it).
  DMOE_LAZY bool is_contested(std::uint32_t c) const noexcept {
    const auto it = std::upper_bound(contested.begin(), contested.end(), c,
                                     [](std::uint32_t v, const coordinate_range& r) { return v < r.end; });
    return it != contested.end() && it->begin <= c;
  }
  // Whether prefix + c + "." has live successors.
  DMOE_LAZY bool has_inner(std::uint32_t c) const noexcept {
    const auto it = std::upper_bound(inner.begin(), inner.end(), c,
                                     [](std::uint32_t v, const coordinate_range& r) { return v < r.end; });
    return it != inner.end() && it->begin <= c;
  }
  // The coordinates below `limit` of the leaves, or of the inner successors, in order (for inspection and tests).
  DMOE_DECL std::vector<std::uint32_t> leaf_coordinates(std::uint32_t limit = 1u << 20) const;
  DMOE_DECL std::vector<std::uint32_t> inner_coordinates(std::uint32_t limit = 1u << 20) const;
};

// The signed-by-nobody marker saying that `prefix` has no live successor, until `expiration`.
inline dht::store_entry empty_prefix_entry(std::string_view prefix, wall_seconds expiration) {
  return dht::store_entry{dht::key_of(prefix), to_buffer(empty_prefix_subkey), byte_buffer{}, expiration, {}};
}

// Reads the dictionary under one prefix: the union of the successor sets found under owner subkeys (each signed by
// its owner, which the DHT checks before storing or returning it). Anything else (a malformed set, an entry under
// another subkey) is skipped. Where entries' leaves overlap, the coordinates are marked contested (anyone can sign a
// successor set, but only the first signer owns a uid's own record: moe::get_experts settles them) and served
// meanwhile by the range that starts first (the later-expiring entry's when two start together).
DMOE_DECL prefix_successors read_successors(const std::optional<dht::record>& found);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF prefix_successors read_successors(const std::optional<dht::record>& found) {
  prefix_successors out;
  if (!found) return out;
  out.found = true;
  if (!found->is_dictionary) return out;
  bool marker = false;
  struct timed_run {
    leaf_run run;
    wall_seconds expiration;
  };
  std::vector<timed_run> leaves;
  std::vector<coordinate_range> inner;
  for (const auto& [subkey, entry] : found->subkeys) {
    if (as_string_view(subkey) == empty_prefix_subkey) {
      marker = true;
      continue;
    }
    if (!dht::owner_of(subkey)) continue;
    auto set = decode_successor_set(entry.value);
    if (!set) continue;
    inner.insert(inner.end(), set->inner.begin(), set->inner.end());
    if (set->leaves.empty()) continue;
    auto at = std::find(out.servers.begin(), out.servers.end(), set->server);
    if (at == out.servers.end()) at = out.servers.insert(out.servers.end(), set->server);
    const auto server = static_cast<std::uint32_t>(at - out.servers.begin());
    for (const auto& r : set->leaves) leaves.push_back({{r.begin, r.end, server}, entry.expiration});
  }
  std::sort(inner.begin(), inner.end(), [](const auto& x, const auto& y) { return x.begin < y.begin; });
  for (const auto& r : inner) {
    if (!out.inner.empty() && r.begin <= out.inner.back().end) out.inner.back().end = std::max(out.inner.back().end, r.end);
    else out.inner.push_back(r);
  }
  // Disjoint leaf runs: sweep by start, the later-expiring entry first where two start together; each run keeps
  // what no earlier run covered.
  std::sort(leaves.begin(), leaves.end(), [](const timed_run& x, const timed_run& y) {
    return x.run.begin != y.run.begin ? x.run.begin < y.run.begin : x.expiration > y.expiration;
  });
  std::uint64_t covered = 0;  // every coordinate below is in a run already
  for (const auto& t : leaves) {
    if (t.run.begin < covered) {
      const coordinate_range overlap{t.run.begin, static_cast<std::uint32_t>(std::min<std::uint64_t>(covered, t.run.end))};
      if (!out.contested.empty() && overlap.begin <= out.contested.back().end)
        out.contested.back().end = std::max(out.contested.back().end, overlap.end);
      else
        out.contested.push_back(overlap);
    }
    if (t.run.end <= covered) continue;
    const auto begin = static_cast<std::uint32_t>(std::max<std::uint64_t>(t.run.begin, covered));
    if (!out.leaves.empty() && out.leaves.back().end == begin && out.leaves.back().server == t.run.server)
      out.leaves.back().end = t.run.end;
    else
      out.leaves.push_back({begin, t.run.end, t.run.server});
    covered = t.run.end;
  }
  out.marked_empty = marker && out.empty();
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// The live successors of each prefix ("ffn." -> first coordinates, "ffn.3." -> second coordinates...), in the order
// asked, from one DHT crawl. `latest` merges the dictionaries of the k nearest nodes (every server's entries) instead
// of taking the first node's. Ends by `deadline` with what was found by then. Errors: invalid_argument_error for a
// string that is not a uid prefix (see is_valid_uid_prefix); the node's closed_error and cancelled_error.
DMOE_DECL task<std::vector<prefix_successors>> successors(dht::node& node, const std::vector<std::string>& prefixes,
                                                       steady_time deadline = no_deadline, bool latest = true);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF task<std::vector<prefix_successors>> successors(dht::node& node, const std::vector<std::string>& prefixes,
                                                       steady_time deadline, bool latest) {
  std::vector<dht::key_id> keys;
  keys.reserve(prefixes.size());
  for (const auto& prefix : prefixes) {
    if (!is_valid_uid_prefix(prefix))
      throw invalid_argument_error(
          dmoe::format("successors: '{}' is not a uid prefix (a name and coordinates, each followed by '.')", prefix));
    keys.push_back(dht::key_of(prefix));
  }
  const auto found = co_await node.get_many(std::move(keys), latest, deadline);
  std::vector<prefix_successors> out;
  out.reserve(prefixes.size());
  for (std::size_t i = 0; i < prefixes.size(); ++i) out.push_back(read_successors(found[i].found));
  co_return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

}  // namespace moe
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace moe {

DMOE_DEF auto prefix_successors::leaf_coordinates(std::uint32_t limit) const -> std::vector<std::uint32_t> {
  std::vector<std::uint32_t> out;
  for (const auto& r : leaves)
    for (std::uint32_t c = r.begin; c < r.end && c < limit; ++c) out.push_back(c);
  return out;
}

DMOE_DEF auto prefix_successors::inner_coordinates(std::uint32_t limit) const -> std::vector<std::uint32_t> {
  std::vector<std::uint32_t> out;
  for (const auto& r : inner)
    for (std::uint32_t c = r.begin; c < r.end && c < limit; ++c) out.push_back(c);
  return out;
}

}  // namespace moe
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
