// Expert declarations in the DHT: the records servers store and trainers read.
//
// For each expert uid (e.g. "ffn.3.17") a server stores
//   key "ffn.3.17"                      -> declaration(uid, endpoint)          (a plain value)
//   key "ffn.",   subkey "3"            -> declaration(uid, endpoint)          (one entry per proper prefix)
//   key "ffn.3.", subkey "17"           -> declaration(uid, endpoint)
// every one signed by the server's ed25519 key (dht/record_validator.hpp), so that once stored no other key can
// overwrite it until it expires: nobody redirects another server's experts. A prefix entry says "a live expert
// starts with prefix + subkey", which is what the beam search asks.
// Declaration value: u8 version, string uid, string endpoint ("1.2.3.4:5000" or "[::1]:5000").
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

#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

DMOE_BEGIN_NAMESPACE
namespace moe {

inline constexpr std::uint8_t declaration_version = 1;

// One declared expert: its uid and the RPC endpoint of the server hosting it, with the record's expiration.
struct expert_declaration {
  std::string uid;
  endpoint server;
  wall_seconds expiration = 0;
};

inline byte_buffer encode_declaration(std::string_view uid, const endpoint& server) {
  const std::string address = server.to_string();
  byte_buffer out;
  out.reserve(1 + 4 + uid.size() + 4 + address.size());
  binary_writer w(out);
  w.write<std::uint8_t>(declaration_version);
  w.write_string(uid);
  w.write_string(address);
  return out;
}

// Reads a declaration value; nothing for anything malformed (records come from untrusted peers).
inline std::optional<expert_declaration> decode_declaration(const_byte_span bytes, wall_seconds expiration) {
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

// The signed store entries declaring `uids` (a prefix entry names the first of the uids that share it) at `server` until `expiration` (wall-clock seconds).
inline std::vector<dht::store_entry> declaration_entries(const std::vector<std::string>& uids, const endpoint& server,
                                                         wall_seconds expiration, const dht::ed25519_keypair& key) {
  std::vector<dht::store_entry> entries;
  std::set<std::pair<std::string, std::string>> prefixes;  // one entry per (prefix, next coordinate): the first uid
  for (const std::string& uid : uids) {
    const byte_buffer value = encode_declaration(uid, server);
    entries.push_back(dht::store_entry{dht::key_of(uid), std::nullopt, value, expiration, {}}.signed_by(key));
    for (const uid_prefix& p : uid_prefixes(uid))
      if (prefixes.emplace(p.prefix, p.next).second)
        entries.push_back(
            dht::store_entry{dht::key_of(p.prefix), to_buffer(p.next), value, expiration, {}}.signed_by(key));
  }
  return entries;
}

// The public key that signed a stored value (nothing when unsigned or malformed).
inline std::optional<dht::ed25519_public_key> declaration_signer(const dht::timed_value& v) {
  if (v.signature.size() != dht::signature_blob_size) return std::nullopt;
  dht::ed25519_public_key key{};
  std::memcpy(key.data(), v.signature.data(), key.size());
  return key;
}

// Where each expert is served, in the order asked: nothing for an expert that no live declaration names (or whose
// record is malformed or declares another uid). Ends by `deadline`.
inline task<std::vector<std::optional<expert_declaration>>> get_experts(dht::node& node,
                                                                       const std::vector<std::string>& uids,
                                                                       steady_time deadline = no_deadline) {
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

// The subkey of the "no live successor here" marker (negative caching).
inline constexpr std::string_view empty_prefix_subkey = "-";

// Whether `prefix` is a uid prefix: a name, then zero or more coordinates, each followed by a dot ("ffn.", "ffn.3.").
inline bool is_valid_uid_prefix(std::string_view prefix) {
  return !prefix.empty() && prefix.back() == uid_delimiter && is_valid_expert_uid(std::string(prefix) + "0");
}

// The live successors of one prefix, as the DHT holds them.
struct prefix_successors {
  // Next coordinate -> a live expert whose uid starts with prefix + that coordinate (the whole uid when the prefix
  // is one dimension short of it).
  std::map<std::uint32_t, expert_declaration> next;
  bool found = false;         // the DHT held a record under the prefix (possibly only the marker)
  bool marked_empty = false;  // it held the "no live successor" marker and no live entry
};

// The signed-by-nobody marker saying that `prefix` has no live successor, until `expiration`.
inline dht::store_entry empty_prefix_entry(std::string_view prefix, wall_seconds expiration) {
  return dht::store_entry{dht::key_of(prefix), to_buffer(empty_prefix_subkey), byte_buffer{}, expiration, {}};
}

// Reads the dictionary under one prefix: entries whose subkey is a canonical coordinate and whose declaration names
// a valid uid that starts with prefix + coordinate are kept; anything else (a malformed or lying record) is skipped.
inline prefix_successors read_successors(std::string_view prefix, const std::optional<dht::record>& found) {
  prefix_successors out;
  if (!found) return out;
  out.found = true;
  if (!found->is_dictionary) return out;
  bool marker = false;
  for (const auto& [subkey, entry] : found->subkeys) {
    const std::string_view text(reinterpret_cast<const char*>(subkey.data()), subkey.size());
    if (text == empty_prefix_subkey) {
      marker = true;
      continue;
    }
    const std::int64_t coordinate = detail::parse_coordinate(text);
    if (coordinate < 0) continue;
    auto d = decode_declaration(entry.value, entry.expiration);
    if (!d || d->uid.size() < prefix.size() + text.size() || std::string_view(d->uid).substr(0, prefix.size()) != prefix ||
        std::string_view(d->uid).substr(prefix.size(), text.size()) != text)
      continue;
    if (d->uid.size() > prefix.size() + text.size() && d->uid[prefix.size() + text.size()] != uid_delimiter) continue;
    out.next.emplace(static_cast<std::uint32_t>(coordinate), std::move(*d));
  }
  out.marked_empty = marker && out.next.empty();
  return out;
}

// The live successors of each prefix ("ffn." -> first coordinates, "ffn.3." -> second coordinates...), in the order
// asked, from one DHT crawl. `latest` merges the dictionaries of the k nearest nodes (every server's entries) instead
// of taking the first node's. Ends by `deadline` with what was found by then. Errors: invalid_argument_error for a
// string that is not a uid prefix (see is_valid_uid_prefix); the node's closed_error and cancelled_error.
inline task<std::vector<prefix_successors>> successors(dht::node& node, const std::vector<std::string>& prefixes,
                                                       steady_time deadline = no_deadline, bool latest = true) {
  std::vector<dht::key_id> keys;
  keys.reserve(prefixes.size());
  for (const auto& prefix : prefixes) {
    if (!is_valid_uid_prefix(prefix))
      throw invalid_argument_error(
          fmt::format("successors: '{}' is not a uid prefix (a name and coordinates, each followed by '.')", prefix));
    keys.push_back(dht::key_of(prefix));
  }
  const auto found = co_await node.get_many(std::move(keys), latest, deadline);
  std::vector<prefix_successors> out;
  out.reserve(prefixes.size());
  for (std::size_t i = 0; i < prefixes.size(); ++i) out.push_back(read_successors(prefixes[i], found[i].found));
  co_return out;
}

}  // namespace moe
DMOE_END_NAMESPACE
