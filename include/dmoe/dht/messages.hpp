// The DHT's wire messages (ping, store, find and their responses): structs, encoders, checked decoders.
//
// Each message is the payload of one datagram message (net/datagram_message.hpp), whose header already holds
// the datagram version, request/response kind, `type` (message_type below), transaction id and sender id.
// Layout, little-endian (u32 counts and lengths, f64 expirations in wall-clock seconds since the epoch):
//   body        = u8 dht_wire_version, u8 flags (bit 0: the sender is in client mode, never add it), message
//   ping req    = (nothing)
//   ping resp   = address (how the requester looked to the responder)
//   store req   = u32 n, n x { key[16], u8 has_subkey, [blob subkey], timed_value }
//   store resp  = u32 n, n x u8 store_result (same order as the request)
//   find req    = u32 n, n x key[16]
//   find resp   = u32 n, n x { key[16], u8 status (0 not found, 1 value, 2 dictionary),
//                              [timed_value | u32 m, m x { blob subkey, timed_value }], u32 p, p x peer }
//   timed_value = blob value, f64 expiration, blob signature (length 0: unsigned)
//   peer        = id[16], address;  address = u8 family (4 or 6), 4 or 16 address bytes, u16 port
//   blob        = u32 length, bytes;  ids and keys are big-endian (node_id::to_bytes)
// Decoders trust no count or length: each is checked against message_limits, and any violation, truncation,
// trailing byte, non-finite expiration or unknown code throws protocol_error naming the field.
#pragma once

#include <dmoe/async/endpoint.hpp>
#include <dmoe/core/binary_reader.hpp>
#include <dmoe/core/binary_writer.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/dht/node_id.hpp>
#include <dmoe/dht/record.hpp>
#include <dmoe/dht/storage.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>
#include <vector>

#include <fmt/core.h>
#include <netinet/in.h>

DMOE_BEGIN_NAMESPACE
namespace dht {

inline constexpr std::uint8_t dht_wire_version = 1;

// The datagram header's `type` for each DHT message.
enum class message_type : std::uint16_t { ping = 1, store = 2, find = 3 };

// Bounds every decoder enforces; the defaults fit the datagram layer's 1 MiB messages.
struct message_limits {
  std::size_t max_keys = 256;           // keys (or store items) per request
  std::size_t max_value_size = 64 * 1024;
  std::size_t max_subkey_size = 1024;
  std::size_t max_subkeys = 4096;       // subkeys of one dictionary in a find response
  std::size_t max_signature_size = 128;
  std::size_t max_peers = 64;           // nearest peers per key in a find response
};

// A peer as the wire names it: id and UDP endpoint.
struct wire_peer {
  node_id id;
  endpoint address;
  friend bool operator==(const wire_peer&, const wire_peer&) = default;
};

struct ping_request {
  bool client_mode = false;
  friend bool operator==(const ping_request&, const ping_request&) = default;
};
struct ping_response {
  bool client_mode = false;
  endpoint observed;  // the requester's address as the responder saw it
  friend bool operator==(const ping_response&, const ping_response&) = default;
};

struct store_item {
  key_id key;
  std::optional<byte_buffer> subkey;  // set: one subkey of a dictionary
  timed_value value;
  friend bool operator==(const store_item&, const store_item&) = default;
};
struct store_request {
  bool client_mode = false;
  std::vector<store_item> items;
  friend bool operator==(const store_request&, const store_request&) = default;
};
struct store_response {
  bool client_mode = false;
  std::vector<store_result> results;
  friend bool operator==(const store_response&, const store_response&) = default;
};

struct find_request {
  bool client_mode = false;
  std::vector<key_id> keys;
  friend bool operator==(const find_request&, const find_request&) = default;
};
struct find_result {
  key_id key;
  std::optional<record> found;  // nothing: NOT_FOUND
  std::vector<wire_peer> nearest;
  friend bool operator==(const find_result&, const find_result&) = default;
};
struct find_response {
  bool client_mode = false;
  std::vector<find_result> results;
  friend bool operator==(const find_response&, const find_response&) = default;
};

namespace detail {

enum class find_status : std::uint8_t { not_found = 0, value = 1, dictionary = 2 };

DMOE_LAZY inline void write_header(binary_writer& w, bool client_mode) {
  w.write<std::uint8_t>(dht_wire_version);
  w.write<std::uint8_t>(client_mode ? 1 : 0);
}
DMOE_LAZY inline void write_key(binary_writer& w, const node_id& id) {
  const auto bytes = id.to_bytes();
  w.write_bytes(bytes);
}
DMOE_DECL void write_address(binary_writer& w, const endpoint& address);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void write_address(binary_writer& w, const endpoint& address) {
  if (address.is_v4()) {
    sockaddr_in v4;
    std::memcpy(&v4, address.data(), sizeof v4);
    w.write<std::uint8_t>(4);
    w.write_bytes(const_byte_span(reinterpret_cast<const std::byte*>(&v4.sin_addr), 4));
  } else if (address.is_v6()) {
    sockaddr_in6 v6;
    std::memcpy(&v6, address.data(), sizeof v6);
    w.write<std::uint8_t>(6);
    w.write_bytes(const_byte_span(reinterpret_cast<const std::byte*>(&v6.sin6_addr), 16));
  } else {
    throw invalid_argument_error("cannot encode an unspecified endpoint in a DHT message");
  }
  w.write<std::uint16_t>(address.port());
}
#endif  // DMOE_HEAVY_DEFINITIONS
DMOE_LAZY inline void write_timed_value(binary_writer& w, const timed_value& v) {
  w.write_blob(v.value);
  w.write<double>(v.expiration);
  w.write_blob(v.signature);
}

// Reads one message's fields with the limits and the message's name at hand.
class wire_reader {
 public:
  wire_reader(const_byte_span bytes, const message_limits& limits, std::string_view what)
      : in_(bytes, what), limits_(limits), what_(what) {}

  DMOE_DECL bool header();
  DMOE_LAZY std::size_t count(std::size_t max, std::string_view field) {
    const auto n = in_.read<std::uint32_t>();
    if (n > max) throw protocol_error(dmoe::format("{}: {} {} exceed limit {}", what_, n, field, max));
    return n;
  }
  DMOE_LAZY byte_buffer blob(std::size_t max, std::string_view field) {
    const auto n = in_.read<std::uint32_t>();
    if (n > max) throw protocol_error(dmoe::format("{}: {} of {} bytes exceeds limit {}", what_, field, n, max));
    return to_buffer(in_.read_bytes(n));
  }
  DMOE_LAZY node_id key() { return node_id::from_bytes(in_.read_bytes(node_id::size)); }
  DMOE_LAZY std::uint8_t byte() { return in_.read<std::uint8_t>(); }
  DMOE_DECL timed_value value();
  DMOE_DECL endpoint address();
  DMOE_LAZY void end() { in_.expect_end(); }

  const message_limits& limits() const noexcept { return limits_; }
  std::string_view what() const noexcept { return what_; }

 private:
  binary_reader in_;
  const message_limits& limits_;
  std::string_view what_;
};

}  // namespace detail

DMOE_DECL byte_buffer encode(const ping_request& m);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF byte_buffer encode(const ping_request& m) {
  byte_buffer out;
  binary_writer w(out);
  detail::write_header(w, m.client_mode);
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS
DMOE_DECL byte_buffer encode(const ping_response& m);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF byte_buffer encode(const ping_response& m) {
  byte_buffer out;
  binary_writer w(out);
  detail::write_header(w, m.client_mode);
  detail::write_address(w, m.observed);
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS
DMOE_DECL byte_buffer encode(const store_request& m);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF byte_buffer encode(const store_request& m) {
  byte_buffer out;
  binary_writer w(out);
  detail::write_header(w, m.client_mode);
  w.write<std::uint32_t>(static_cast<std::uint32_t>(m.items.size()));
  for (const auto& item : m.items) {
    detail::write_key(w, item.key);
    w.write<std::uint8_t>(item.subkey ? 1 : 0);
    if (item.subkey) w.write_blob(*item.subkey);
    detail::write_timed_value(w, item.value);
  }
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS
DMOE_DECL byte_buffer encode(const store_response& m);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF byte_buffer encode(const store_response& m) {
  byte_buffer out;
  binary_writer w(out);
  detail::write_header(w, m.client_mode);
  w.write<std::uint32_t>(static_cast<std::uint32_t>(m.results.size()));
  for (auto r : m.results) w.write<std::uint8_t>(static_cast<std::uint8_t>(r));
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS
DMOE_DECL byte_buffer encode(const find_request& m);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF byte_buffer encode(const find_request& m) {
  byte_buffer out;
  binary_writer w(out);
  detail::write_header(w, m.client_mode);
  w.write<std::uint32_t>(static_cast<std::uint32_t>(m.keys.size()));
  for (const auto& key : m.keys) detail::write_key(w, key);
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS
DMOE_DECL byte_buffer encode(const find_response& m);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF byte_buffer encode(const find_response& m) {
  byte_buffer out;
  binary_writer w(out);
  detail::write_header(w, m.client_mode);
  w.write<std::uint32_t>(static_cast<std::uint32_t>(m.results.size()));
  for (const auto& r : m.results) {
    detail::write_key(w, r.key);
    if (!r.found) {
      w.write(detail::find_status::not_found);
    } else if (!r.found->is_dictionary) {
      w.write(detail::find_status::value);
      detail::write_timed_value(w, r.found->value);
    } else {
      w.write(detail::find_status::dictionary);
      w.write<std::uint32_t>(static_cast<std::uint32_t>(r.found->subkeys.size()));
      for (const auto& [subkey, v] : r.found->subkeys) {
        w.write_blob(subkey);
        detail::write_timed_value(w, v);
      }
    }
    w.write<std::uint32_t>(static_cast<std::uint32_t>(r.nearest.size()));
    for (const auto& p : r.nearest) {
      detail::write_key(w, p.id);
      detail::write_address(w, p.address);
    }
  }
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// Decoders: throw protocol_error (with the message and field named) on anything malformed or over a limit.
DMOE_DECL ping_request decode_ping_request(const_byte_span bytes, const message_limits& limits = {});
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF ping_request decode_ping_request(const_byte_span bytes, const message_limits& limits) {
  detail::wire_reader in(bytes, limits, "dht ping request");
  ping_request m;
  m.client_mode = in.header();
  in.end();
  return m;
}
#endif  // DMOE_HEAVY_DEFINITIONS
DMOE_DECL ping_response decode_ping_response(const_byte_span bytes, const message_limits& limits = {});
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF ping_response decode_ping_response(const_byte_span bytes, const message_limits& limits) {
  detail::wire_reader in(bytes, limits, "dht ping response");
  ping_response m;
  m.client_mode = in.header();
  m.observed = in.address();
  in.end();
  return m;
}
#endif  // DMOE_HEAVY_DEFINITIONS
DMOE_DECL store_request decode_store_request(const_byte_span bytes, const message_limits& limits = {});
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF store_request decode_store_request(const_byte_span bytes, const message_limits& limits) {
  detail::wire_reader in(bytes, limits, "dht store request");
  store_request m;
  m.client_mode = in.header();
  const std::size_t n = in.count(limits.max_keys, "items");
  m.items.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    store_item item;
    item.key = in.key();
    const auto has_subkey = in.byte();
    if (has_subkey > 1) throw protocol_error(dmoe::format("dht store request: item {} has subkey flag {}", i, has_subkey));
    if (has_subkey) item.subkey = in.blob(limits.max_subkey_size, "subkey");
    item.value = in.value();
    m.items.push_back(std::move(item));
  }
  in.end();
  return m;
}
#endif  // DMOE_HEAVY_DEFINITIONS
DMOE_DECL store_response decode_store_response(const_byte_span bytes, const message_limits& limits = {});
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF store_response decode_store_response(const_byte_span bytes, const message_limits& limits) {
  detail::wire_reader in(bytes, limits, "dht store response");
  store_response m;
  m.client_mode = in.header();
  const std::size_t n = in.count(limits.max_keys, "results");
  m.results.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto code = in.byte();
    if (code > static_cast<std::uint8_t>(store_result::refused))
      throw protocol_error(dmoe::format("dht store response: unknown store result {} at {}", code, i));
    m.results.push_back(static_cast<store_result>(code));
  }
  in.end();
  return m;
}
#endif  // DMOE_HEAVY_DEFINITIONS
DMOE_DECL find_request decode_find_request(const_byte_span bytes, const message_limits& limits = {});
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF find_request decode_find_request(const_byte_span bytes, const message_limits& limits) {
  detail::wire_reader in(bytes, limits, "dht find request");
  find_request m;
  m.client_mode = in.header();
  const std::size_t n = in.count(limits.max_keys, "keys");
  m.keys.reserve(n);
  for (std::size_t i = 0; i < n; ++i) m.keys.push_back(in.key());
  in.end();
  return m;
}
#endif  // DMOE_HEAVY_DEFINITIONS
DMOE_DECL find_response decode_find_response(const_byte_span bytes, const message_limits& limits = {});
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF find_response decode_find_response(const_byte_span bytes, const message_limits& limits) {
  detail::wire_reader in(bytes, limits, "dht find response");
  find_response m;
  m.client_mode = in.header();
  const std::size_t n = in.count(limits.max_keys, "results");
  m.results.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    find_result r;
    r.key = in.key();
    const auto status = in.byte();
    if (status == static_cast<std::uint8_t>(detail::find_status::value)) {
      r.found = record{};
      r.found->value = in.value();
    } else if (status == static_cast<std::uint8_t>(detail::find_status::dictionary)) {
      r.found = record{};
      r.found->is_dictionary = true;
      const std::size_t subkeys = in.count(limits.max_subkeys, "subkeys");
      if (subkeys == 0)
        throw protocol_error(dmoe::format("dht find response: result {} is a dictionary without subkeys", i));
      for (std::size_t j = 0; j < subkeys; ++j) {
        auto subkey = in.blob(limits.max_subkey_size, "subkey");
        auto value = in.value();
        if (!r.found->subkeys.emplace(std::move(subkey), std::move(value)).second)
          throw protocol_error(dmoe::format("dht find response: result {} repeats a subkey", i));
      }
    } else if (status != static_cast<std::uint8_t>(detail::find_status::not_found)) {
      throw protocol_error(dmoe::format("dht find response: unknown status {} for result {}", status, i));
    }
    const std::size_t peers = in.count(limits.max_peers, "peers");
    r.nearest.reserve(peers);
    for (std::size_t j = 0; j < peers; ++j) {
      wire_peer p;
      p.id = in.key();
      p.address = in.address();
      r.nearest.push_back(p);
    }
    m.results.push_back(std::move(r));
  }
  in.end();
  return m;
}
#endif  // DMOE_HEAVY_DEFINITIONS

}  // namespace dht
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace dht::detail {

DMOE_DEF auto wire_reader::header() -> bool {
  const auto version = in_.read<std::uint8_t>();
  if (version != dht_wire_version)
    throw protocol_error(dmoe::format("{}: unsupported DHT wire version {} (expected {})", what_, version,
                                     dht_wire_version));
  const auto flags = in_.read<std::uint8_t>();
  if (flags > 1) throw protocol_error(dmoe::format("{}: unknown flags {:#x}", what_, flags));
  return flags == 1;
}

DMOE_DEF auto wire_reader::value() -> timed_value {
  timed_value v;
  v.value = blob(limits_.max_value_size, "value");
  v.expiration = in_.read<double>();
  if (!std::isfinite(v.expiration))
    throw protocol_error(dmoe::format("{}: expiration {} is not finite", what_, v.expiration));
  v.signature = blob(limits_.max_signature_size, "signature");
  return v;
}

DMOE_DEF auto wire_reader::address() -> endpoint {
  const auto family = in_.read<std::uint8_t>();
  if (family == 4) {
    sockaddr_in v4{};
    v4.sin_family = AF_INET;
    std::memcpy(&v4.sin_addr, in_.read_bytes(4).data(), 4);
    v4.sin_port = htons(in_.read<std::uint16_t>());
    return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&v4), sizeof v4);
  }
  if (family == 6) {
    sockaddr_in6 v6{};
    v6.sin6_family = AF_INET6;
    std::memcpy(&v6.sin6_addr, in_.read_bytes(16).data(), 16);
    v6.sin6_port = htons(in_.read<std::uint16_t>());
    return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&v6), sizeof v6);
  }
  throw protocol_error(dmoe::format("{}: unknown address family {} (expected 4 or 6)", what_, family));
}

}  // namespace dht::detail
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
