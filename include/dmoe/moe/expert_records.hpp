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

}  // namespace moe
DMOE_END_NAMESPACE
