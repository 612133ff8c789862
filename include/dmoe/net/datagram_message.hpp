// DHT datagrams over UDP: a 40-byte header (version, kind, type, transaction id, sender id, part numbering), then
// the message bytes; a message larger than one datagram is split into numbered parts of equal size.
#pragma once

#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/net/detail/little_endian.hpp>
#include <dmoe/net/size_text.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace net {

inline constexpr std::uint8_t datagram_version = 1;
inline constexpr std::size_t datagram_header_size = 40;

// The sending node's 128-bit id; the DHT gives it meaning, the datagram layer only carries it.
using datagram_sender_id = std::array<std::byte, 16>;

enum class datagram_kind : std::uint8_t {
  request = 1,
  response = 2,
  error = 3,  // the request was refused; the message says why
};

constexpr std::string_view to_string(datagram_kind kind) noexcept {
  switch (kind) {
    case datagram_kind::request: return "request";
    case datagram_kind::response: return "response";
    case datagram_kind::error: return "error";
  }
  return "unknown";
}

struct datagram_header {
  datagram_kind kind = datagram_kind::request;
  std::uint16_t type = 0;  // the message type (ping, store, find…); defined by the DHT
  std::uint64_t transaction_id = 0;
  datagram_sender_id sender{};
  std::uint16_t part_index = 0;
  std::uint16_t part_count = 1;
  std::uint32_t total_size = 0;  // bytes of the whole message, over all parts
  std::uint16_t part_size = 0;   // message bytes in every part but the last
  friend constexpr bool operator==(const datagram_header&, const datagram_header&) noexcept = default;
};

// The largest UDP payload over IPv4 (65,535 less the IP and UDP headers).
inline constexpr std::size_t datagram_max_udp_payload = 65'507;

struct datagram_limits {
  // Largest UDP payload sent (header included): 1,200 bytes fits the IPv6 minimum MTU with room for tunnels.
  // 41 to 65,507 bytes.
  std::size_t max_datagram = 1200;
  std::uint32_t max_message = 1u << 20;  // largest reassembled message, bytes
  std::size_t max_partial_messages = 64;  // messages being reassembled at once, over all sources
  std::size_t max_buffered_bytes = std::size_t{4} << 20;  // memory for messages being reassembled, all sources
  // One source address's share of the two above (capped by them), over all its ports: a message that would take it
  // past its share is dropped (its sender retries it), and a full reassembler drops the oldest message of the
  // address holding the most (the newcomer's, on a tie), so one peer cannot evict the others.
  std::size_t max_partial_messages_per_source = 8;
  std::size_t max_buffered_bytes_per_source = std::size_t{1} << 20;
  std::chrono::milliseconds partial_timeout{5000};       // a message missing parts this long is dropped
};

// Throws invalid_argument_error naming the first unusable limit; `owner` names who holds them.
DMOE_DECL void validate(const datagram_limits& limits, std::string_view owner);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void validate(const datagram_limits& limits, std::string_view owner) {
  if (limits.max_datagram <= datagram_header_size || limits.max_datagram > datagram_max_udp_payload)
    throw invalid_argument_error(dmoe::format("{}: max_datagram of {} bytes is outside {} to {} (the {}-byte header "
                                             "and the largest UDP payload)",
                                             owner, limits.max_datagram, datagram_header_size + 1,
                                             datagram_max_udp_payload, datagram_header_size));
  const std::size_t part = std::min<std::size_t>(limits.max_datagram - datagram_header_size, 0xffff);
  if ((std::uint64_t{limits.max_message} + part - 1) / part > 0xffff)
    throw invalid_argument_error(dmoe::format("{}: max_message of {} needs more than 65,535 parts of {} bytes", owner,
                                             size_text(limits.max_message), part));
  if (limits.partial_timeout.count() <= 0)
    throw invalid_argument_error(dmoe::format("{}: partial_timeout must be positive", owner));
}
#endif  // DMOE_HEAVY_DEFINITIONS

// One decoded datagram: its header and a view of its part of the message.
struct datagram_message {
  datagram_header header;
  const_byte_span payload;
};

using datagram_header_bytes = std::array<std::byte, datagram_header_size>;

DMOE_DECL datagram_header_bytes encode_datagram_header(const datagram_header& header) noexcept;
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF datagram_header_bytes encode_datagram_header(const datagram_header& header) noexcept {
  datagram_header_bytes out{};
  std::byte* at = out.data();
  detail::store_le<std::uint8_t>(at + 0, datagram_version);
  detail::store_le<std::uint8_t>(at + 1, static_cast<std::uint8_t>(header.kind));
  detail::store_le<std::uint16_t>(at + 2, header.type);
  detail::store_le<std::uint16_t>(at + 4, header.part_index);
  detail::store_le<std::uint16_t>(at + 6, header.part_count);
  detail::store_le<std::uint64_t>(at + 8, header.transaction_id);
  std::memcpy(at + 16, header.sender.data(), header.sender.size());
  detail::store_le<std::uint32_t>(at + 32, header.total_size);
  detail::store_le<std::uint16_t>(at + 36, header.part_size);
  detail::store_le<std::uint16_t>(at + 38, 0);
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// The message bytes part `index` carries, given the message size and the bytes per part.
constexpr std::size_t datagram_part_payload(std::size_t total_size, std::size_t part_size, std::size_t index) noexcept {
  const std::size_t begin = index * part_size;
  return begin >= total_size ? 0 : std::min(part_size, total_size - begin);
}

// Decodes and checks one datagram from untrusted bytes; `peer` names the sender in errors.
DMOE_DECL datagram_message decode_datagram(const_byte_span bytes, const datagram_limits& limits, std::string_view peer);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF datagram_message decode_datagram(const_byte_span bytes, const datagram_limits& limits,
    std::string_view peer) {
  if (bytes.size() < datagram_header_size)
    throw protocol_error(dmoe::format("datagram of {} bytes is shorter than its {}-byte header from {}", bytes.size(),
                                     datagram_header_size, peer));
  const std::byte* at = bytes.data();
  const auto version = detail::load_le<std::uint8_t>(at + 0);
  if (version != datagram_version)
    throw protocol_error(
        dmoe::format("datagram of unsupported version {} (expected {}) from {}", version, datagram_version, peer));
  datagram_message out;
  datagram_header& h = out.header;
  const auto kind = detail::load_le<std::uint8_t>(at + 1);
  if (kind < static_cast<std::uint8_t>(datagram_kind::request) || kind > static_cast<std::uint8_t>(datagram_kind::error))
    throw protocol_error(dmoe::format("datagram of unknown kind {} from {}", kind, peer));
  h.kind = static_cast<datagram_kind>(kind);
  h.type = detail::load_le<std::uint16_t>(at + 2);
  h.part_index = detail::load_le<std::uint16_t>(at + 4);
  h.part_count = detail::load_le<std::uint16_t>(at + 6);
  h.transaction_id = detail::load_le<std::uint64_t>(at + 8);
  std::memcpy(h.sender.data(), at + 16, h.sender.size());
  h.total_size = detail::load_le<std::uint32_t>(at + 32);
  h.part_size = detail::load_le<std::uint16_t>(at + 36);
  out.payload = bytes.subspan(datagram_header_size);

  if (h.total_size > limits.max_message)
    throw limit_error(dmoe::format("datagram message of {} exceeds limit {} from {}", size_text(h.total_size),
                                  size_text(limits.max_message), peer));
  if (h.part_count == 0 || h.part_index >= h.part_count)
    throw protocol_error(dmoe::format("datagram part {} of {} from {}", h.part_index, h.part_count, peer));
  if (h.part_count == 1) {
    if (out.payload.size() != h.total_size)
      throw protocol_error(dmoe::format("datagram carries {} bytes but says its message has {} from {}",
                                       out.payload.size(), h.total_size, peer));
    return out;
  }
  if (h.part_size == 0)
    throw protocol_error(dmoe::format("datagram part {} of {} has part size 0 from {}", h.part_index, h.part_count, peer));
  const std::uint64_t expected_parts = (std::uint64_t{h.total_size} + h.part_size - 1) / h.part_size;
  if (expected_parts != h.part_count)
    throw protocol_error(dmoe::format("datagram says {} parts but {} bytes in parts of {} make {} from {}", h.part_count,
                                     h.total_size, h.part_size, expected_parts, peer));
  const std::size_t expected = datagram_part_payload(h.total_size, h.part_size, h.part_index);
  if (out.payload.size() != expected)
    throw protocol_error(dmoe::format("datagram part {} of {} carries {} bytes, expected {} from {}", h.part_index,
                                     h.part_count, out.payload.size(), expected, peer));
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// How a message is cut into datagrams of at most `max_datagram` bytes (header included); send part i as the two
// pieces header_bytes(i) and payload(i) (one sendmsg with two iovecs, no copy of the message).
class datagram_parts {
 public:
  DMOE_DECL datagram_parts(const datagram_header& header, const_byte_span message, const datagram_limits& limits);

  std::size_t count() const noexcept { return header_.part_count; }

  DMOE_LAZY datagram_header header(std::size_t index) const noexcept {
    datagram_header h = header_;
    h.part_index = static_cast<std::uint16_t>(index);
    return h;
  }
  DMOE_LAZY datagram_header_bytes header_bytes(std::size_t index) const noexcept { return encode_datagram_header(header(index)); }
  DMOE_LAZY const_byte_span payload(std::size_t index) const noexcept {
    if (header_.part_count == 1) return message_;
    return message_.subspan(index * header_.part_size,
                            datagram_part_payload(header_.total_size, header_.part_size, index));
  }

  // Part `index` as one contiguous datagram (replaces `out`'s contents).
  DMOE_DECL void encode(std::size_t index, byte_buffer& out) const;

 private:
  datagram_header header_;
  const_byte_span message_;
};

}  // namespace net
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace net {

DMOE_DEF datagram_parts::datagram_parts(const datagram_header& header, const_byte_span message,
    const datagram_limits& limits) : header_(header), message_(message) {
  if (message.size() > limits.max_message)
    throw limit_error(dmoe::format("datagram message of {} exceeds limit {}", size_text(message.size()),
                                  size_text(limits.max_message)));
  if (limits.max_datagram <= datagram_header_size)
    throw invalid_argument_error(dmoe::format("datagram size limit of {} bytes leaves no room after the {}-byte header",
                                             limits.max_datagram, datagram_header_size));
  const std::size_t part_size = std::min<std::size_t>(limits.max_datagram - datagram_header_size, 0xffff);
  const std::size_t count = message.empty() ? 1 : (message.size() + part_size - 1) / part_size;
  if (count > 0xffff)
    throw limit_error(dmoe::format("datagram message of {} needs {} parts, more than 65535", size_text(message.size()),
                                  count));
  header_.total_size = static_cast<std::uint32_t>(message.size());
  header_.part_count = static_cast<std::uint16_t>(count);
  header_.part_size = static_cast<std::uint16_t>(count == 1 ? message.size() : part_size);
}

DMOE_DEF auto datagram_parts::encode(std::size_t index, byte_buffer& out) const -> void {
  const auto head = header_bytes(index);
  const auto body = payload(index);
  out.resize(head.size() + body.size());
  std::memcpy(out.data(), head.data(), head.size());
  if (!body.empty()) std::memcpy(out.data() + head.size(), body.data(), body.size());
}

}  // namespace net
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
