// RPC frames over TCP: a 32-byte header (magic+version, kind, status, method, request id, payload size), then the payload.
// Version 2 adds the go_away frame (a peer announces that it closes the connection) and lets a receiver skip a
// frame it refuses (over a limit) without losing the stream.
#pragma once

#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/clock.hpp>
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
#include <optional>
#include <span>
#include <string_view>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace net {

inline constexpr std::uint32_t frame_magic = 0x50524d44;  // "DMRP" on the wire
inline constexpr std::uint8_t frame_version = 2;
inline constexpr std::size_t frame_header_size = 32;

enum class frame_kind : std::uint8_t {
  request = 1,
  response = 2,
  cancel = 3,   // the caller gave up on a request; the server requests stop on its handler
  go_away = 4,  // the sender closes the connection: requests with ids above request_id were not read and never will
                // be (the payload says why); the receiver retries them elsewhere
};

// What happened to a request; carried by responses (requests and cancels send ok).
enum class frame_status : std::uint16_t {
  ok = 0,
  handler_error = 1,   // the handler threw; the payload is its message
  unknown_method = 2,  // no handler for the method
  limit_exceeded = 3,  // a server limit refused the request; the payload says which
  shutting_down = 4,   // the server is stopping and takes no new requests
  bad_request = 5,     // the request was malformed; the payload says why
};

constexpr std::string_view to_string(frame_kind kind) noexcept {
  switch (kind) {
    case frame_kind::request: return "request";
    case frame_kind::response: return "response";
    case frame_kind::cancel: return "cancel";
    case frame_kind::go_away: return "go_away";
  }
  return "unknown";
}

constexpr std::string_view to_string(frame_status status) noexcept {
  switch (status) {
    case frame_status::ok: return "ok";
    case frame_status::handler_error: return "handler_error";
    case frame_status::unknown_method: return "unknown_method";
    case frame_status::limit_exceeded: return "limit_exceeded";
    case frame_status::shutting_down: return "shutting_down";
    case frame_status::bad_request: return "bad_request";
  }
  return "unknown";
}

// A method's wire id: FNV-1a of its name, so both sides can name methods as constants.
constexpr std::uint32_t method_id(std::string_view name) noexcept {
  std::uint32_t hash = 2166136261u;
  for (char c : name) {
    hash ^= static_cast<std::uint8_t>(c);
    hash *= 16777619u;
  }
  return hash;
}

// The largest payload of a control frame (go_away carries a reason text; cancel carries nothing): a peer cannot make
// the receiver commit memory for one on the word of its length field.
inline constexpr std::uint64_t frame_max_control_payload = 64 * 1024;

struct frame_header {
  frame_kind kind = frame_kind::request;
  frame_status status = frame_status::ok;
  std::uint32_t method = 0;
  std::uint32_t flags = 0;  // none defined yet; carried through unchanged
  std::uint64_t request_id = 0;
  std::uint64_t payload_size = 0;
  friend constexpr bool operator==(const frame_header&, const frame_header&) noexcept = default;
};

// The largest max_payload accepted: sizes stay far from wrapping when headers and budgets are added to them.
inline constexpr std::uint64_t frame_max_payload_ceiling = std::uint64_t{1} << 40;

struct frame_limits {
  std::uint64_t max_payload = std::uint64_t{256} << 20;  // bytes; 1 to 1 TiB (frame_max_payload_ceiling)
};

// Throws invalid_argument_error unless the limits are usable; `owner` names who holds them ("rpc client").
DMOE_LAZY inline void validate(const frame_limits& limits, std::string_view owner) {
  if (limits.max_payload == 0 || limits.max_payload > frame_max_payload_ceiling)
    throw invalid_argument_error(dmoe::format("{}: max_payload of {} bytes is outside 1 B to {}", owner,
                                             limits.max_payload, size_text(frame_max_payload_ceiling)));
}

using frame_header_bytes = std::array<std::byte, frame_header_size>;

DMOE_DECL frame_header_bytes encode_frame_header(const frame_header& header) noexcept;
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF frame_header_bytes encode_frame_header(const frame_header& header) noexcept {
  frame_header_bytes out{};
  detail::store_le<std::uint32_t>(out.data() + 0, frame_magic);
  detail::store_le<std::uint8_t>(out.data() + 4, frame_version);
  detail::store_le<std::uint8_t>(out.data() + 5, static_cast<std::uint8_t>(header.kind));
  detail::store_le<std::uint16_t>(out.data() + 6, static_cast<std::uint16_t>(header.status));
  detail::store_le<std::uint32_t>(out.data() + 8, header.method);
  detail::store_le<std::uint32_t>(out.data() + 12, header.flags);
  detail::store_le<std::uint64_t>(out.data() + 16, header.request_id);
  detail::store_le<std::uint64_t>(out.data() + 24, header.payload_size);
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// Decodes a header from untrusted bytes and checks its structure, but not its size against a limit.
DMOE_DECL frame_header parse_frame_header(const_byte_span bytes, std::string_view peer);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF frame_header parse_frame_header(const_byte_span bytes, std::string_view peer) {
  if (bytes.size() < frame_header_size)
    throw protocol_error(dmoe::format("rpc frame header truncated: {} of {} bytes from {}", bytes.size(),
                                     frame_header_size, peer));
  const std::byte* at = bytes.data();
  const auto magic = detail::load_le<std::uint32_t>(at + 0);
  if (magic != frame_magic)
    throw protocol_error(dmoe::format("rpc frame with bad magic {:#010x} (expected {:#010x}) from {}", magic,
                                     frame_magic, peer));
  const auto version = detail::load_le<std::uint8_t>(at + 4);
  if (version != frame_version)
    throw protocol_error(
        dmoe::format("rpc frame of unsupported version {} (expected {}) from {}", version, frame_version, peer));
  frame_header header;
  const auto kind = detail::load_le<std::uint8_t>(at + 5);
  if (kind < static_cast<std::uint8_t>(frame_kind::request) || kind > static_cast<std::uint8_t>(frame_kind::go_away))
    throw protocol_error(dmoe::format("rpc frame of unknown kind {} from {}", kind, peer));
  header.kind = static_cast<frame_kind>(kind);
  const auto status = detail::load_le<std::uint16_t>(at + 6);
  if (status > static_cast<std::uint16_t>(frame_status::bad_request))
    throw protocol_error(dmoe::format("rpc frame with unknown status {} from {}", status, peer));
  header.status = static_cast<frame_status>(status);
  header.method = detail::load_le<std::uint32_t>(at + 8);
  header.flags = detail::load_le<std::uint32_t>(at + 12);
  header.request_id = detail::load_le<std::uint64_t>(at + 16);
  header.payload_size = detail::load_le<std::uint64_t>(at + 24);
  if (header.kind == frame_kind::cancel && header.payload_size != 0)
    throw protocol_error(
        dmoe::format("rpc cancel frame carries {} of payload from {}", size_text(header.payload_size), peer));
  if (header.kind == frame_kind::go_away && header.payload_size > frame_max_control_payload)
    throw protocol_error(dmoe::format("rpc go_away frame carries {} of payload (at most {}) from {}",
                                     size_text(header.payload_size), size_text(frame_max_control_payload), peer));
  return header;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// Throws limit_error when the header's payload exceeds the limit.
DMOE_LAZY inline void check_frame_size(const frame_header& header, const frame_limits& limits, std::string_view peer) {
  if (header.payload_size > limits.max_payload)
    throw limit_error(dmoe::format("rpc frame of {} exceeds limit {} from {}", size_text(header.payload_size),
                                  size_text(limits.max_payload), peer));
}

// Decodes and checks a header from untrusted bytes; `peer` names the sender in errors ("127.0.0.5:4100").
DMOE_LAZY inline frame_header decode_frame_header(const_byte_span bytes, const frame_limits& limits, std::string_view peer) {
  frame_header header = parse_frame_header(bytes, peer);
  check_frame_size(header, limits, peer);
  return header;
}

struct frame {
  frame_header header;
  byte_buffer payload;
};

// Cuts a TCP byte stream into frames. Small frames are parsed out of one reusable receive buffer (many per recv);
// a payload larger than that buffer gets its own allocation and is received straight into it (no copy). That
// allocation is only reserved when the header arrives: its memory is committed as the payload arrives (at most the
// bytes received so far, and at least 64 KiB, ahead of them), never on the word of the length field. Frames the
// caller refuses (over the limit, or unwanted) are skipped as their bytes arrive, without being stored.
//
//   while (auto f = reader.next(peer)) handle(*f);
//   auto room = reader.prepare(); n = recv(room); reader.commit(n);
class frame_reader {
 public:
  explicit frame_reader(frame_limits limits = {}, std::size_t buffer_size = 64 * 1024)
      : limits_(limits), buffer_(std::max(buffer_size, frame_header_size)) {}

  // Where the next received bytes go; never empty. Call next() until it returns nothing first.
  DMOE_LAZY byte_span prepare() {
    if (large_) {
      if (large_filled_ == large_->payload.size()) grow_large();
      return byte_span(large_->payload).subspan(large_filled_);
    }
    if (end_ == buffer_.size()) compact();
    return byte_span(buffer_).subspan(end_);
  }

  // `count` bytes were written at the start of prepare()'s span.
  DMOE_DECL void commit(std::size_t count);

  // The next whole frame, or nothing until more bytes arrive. Throws protocol_error (naming `peer`) on a bad
  // header: the stream cannot be resynchronised after that, so the connection should be closed. Throws
  // limit_error for a well-formed header over the limit: its payload is then skipped as it arrives (see
  // refused_header()) and the stream stays usable, so the caller may go on calling next().
  DMOE_DECL std::optional<frame> next(std::string_view peer);

  // The header of the next frame once it has arrived (before next() allocates or copies its payload), so the
  // caller can reserve memory for it or skip it; nothing while a frame is in progress. Throws protocol_error on
  // a bad header (not limit_error: next() reports that).
  DMOE_LAZY std::optional<frame_header> peek(std::string_view peer) {
    if (large_ || !discard_buffered() || end_ - begin_ < frame_header_size) return std::nullopt;
    return parse_frame_header(const_byte_span(buffer_).subspan(begin_, frame_header_size), peer);
  }

  // peek()'s header when the frame's payload needs an allocation of its own (it does not fit the receive buffer).
  DMOE_LAZY std::optional<frame_header> large_frame_ahead(std::string_view peer) {
    auto header = peek(peer);
    if (header && frame_header_size + header->payload_size <= buffer_.size()) return std::nullopt;
    return header;
  }

  // Skips the frame peek() returned: its payload is dropped as it arrives, never stored.
  DMOE_DECL void skip_frame();

  // The large frame being received in place, if any.
  const frame_header* large_frame() const noexcept { return large_ ? &large_->header : nullptr; }

  // Gives up the large frame being received: its memory goes now and the rest of its payload is skipped.
  DMOE_DECL void abandon_large();

  // True while part of a frame is held or being skipped: a peer that stops sending here has stalled mid-frame.
  bool mid_frame() const noexcept { return large_.has_value() || skip_ > 0 || end_ > begin_; }

  // The size (header included) of the frame in progress, as far as known: what must arrive before it completes.
  DMOE_DECL std::uint64_t frame_in_progress_size() const noexcept;

  // The bytes (header included) of the frame in progress received so far, stored or skipped.
  DMOE_DECL std::uint64_t frame_in_progress_received() const noexcept;

  // Frames completed or skipped so far (tells the caller when a new frame has started).
  std::uint64_t frames_done() const noexcept { return frames_done_; }

  // Bytes of payload still expected for the frame in progress (0 between frames or before its header is complete).
  DMOE_LAZY std::uint64_t pending_payload() const noexcept {
    if (large_) return large_->header.payload_size - large_filled_;
    return skip_;
  }

  // Memory committed for frames in progress: the receive buffer plus the part of a large payload made room for.
  std::size_t buffered_bytes() const noexcept { return buffer_.size() + (large_ ? large_->payload.size() : 0); }

  const frame_limits& limits() const noexcept { return limits_; }

  // After next() threw limit_error: the well-formed header of the frame refused for its size (so the sender can
  // be told which request was refused).
  const std::optional<frame_header>& refused_header() const noexcept { return refused_; }

 private:
  // Drops received bytes of a skipped payload; true once nothing is left to skip.
  DMOE_DECL bool discard_buffered() noexcept;

  DMOE_DECL void compact() noexcept;

  // Makes room for more of the large payload: as much again as has arrived (at least 64 KiB), up to its size.
  DMOE_DECL void grow_large();

  frame_limits limits_;
  byte_buffer buffer_;
  std::size_t begin_ = 0;  // first unparsed byte in buffer_
  std::size_t end_ = 0;    // one past the last received byte in buffer_
  std::optional<frame> large_;
  std::size_t large_filled_ = 0;
  std::uint64_t skip_ = 0;           // payload bytes of a skipped frame still to drop
  std::uint64_t skipped_frame_ = 0;  // the skipped frame's whole size
  std::uint64_t frames_done_ = 0;
  std::optional<frame_header> refused_;
};

// When the frame being received must be complete, or have made more progress: `read_timeout` plus the bytes of it
// received so far at `min_rate` bytes per second, counted from its first byte (or from when the receiver could
// take it, after waiting for memory). A peer must keep up `min_rate` on average, so a whole frame is due within
// `read_timeout` plus its size at `min_rate`; one that trickles bytes cannot hold a frame (or the memory and
// budget reserved for it, or a connection skipping it) for longer than `read_timeout` past the pace it kept,
// whatever size its header claims.
class frame_deadline {
 public:
  // Call after each commit (and before each read); `now` is the steady time.
  DMOE_DECL void update(const frame_reader& reader, steady_time now) noexcept;
  // The receiver was not reading (waiting for memory): the frame's clock starts again.
  void restart(steady_time now) noexcept { started_ = now; }

  bool active() const noexcept { return active_; }

  DMOE_LAZY steady_time deadline(const frame_reader& reader, std::chrono::milliseconds read_timeout,
                       std::uint64_t min_rate) const noexcept {
    const double seconds = static_cast<double>(reader.frame_in_progress_received()) / static_cast<double>(min_rate);
    return deadline_from(deadline_from(started_, read_timeout), std::chrono::duration<double>(seconds));
  }

 private:
  bool active_ = false;
  std::uint64_t frame_ = 0;
  steady_time started_{};
};

}  // namespace net
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace net {

DMOE_DEF auto frame_reader::grow_large() -> void {
  constexpr std::size_t min_step = 64 * 1024;
  const auto total = static_cast<std::size_t>(large_->header.payload_size);
  const std::size_t step = std::max(min_step, large_filled_);
  large_->payload.resize(std::min(total, large_filled_ + std::min(step, total - large_filled_)));
}

DMOE_DEF auto frame_reader::commit(std::size_t count) -> void {
  if (large_) {
    large_filled_ += std::min(count, large_->payload.size() - large_filled_);
  } else {
    end_ += std::min(count, buffer_.size() - end_);
  }
}

DMOE_DEF auto frame_reader::next(std::string_view peer) -> std::optional<frame> {
  if (large_) {
    if (large_filled_ < large_->header.payload_size) return std::nullopt;
    std::optional<frame> done = std::move(large_);
    large_.reset();
    large_filled_ = 0;
    ++frames_done_;
    return done;
  }
  if (!discard_buffered()) return std::nullopt;
  const std::size_t available = end_ - begin_;
  if (available < frame_header_size) {
    if (begin_ == end_) begin_ = end_ = 0;
    return std::nullopt;
  }
  const frame_header header = parse_frame_header(const_byte_span(buffer_).subspan(begin_, frame_header_size), peer);
  if (header.payload_size > limits_.max_payload) {
    refused_ = header;
    skip_frame();
    check_frame_size(header, limits_, peer);
  }
  const std::uint64_t frame_size = frame_header_size + header.payload_size;
  if (frame_size <= available) {
    frame out{header, byte_buffer()};
    const auto* payload = buffer_.data() + begin_ + frame_header_size;
    out.payload.assign(payload, payload + header.payload_size);
    begin_ += static_cast<std::size_t>(frame_size);
    if (begin_ == end_) begin_ = end_ = 0;
    ++frames_done_;
    return out;
  }
  if (frame_size <= buffer_.size()) {
    // The frame will fit the buffer: make room for the rest of it after what is here.
    if (begin_ + frame_size > buffer_.size()) compact();
    return std::nullopt;
  }
  // A large payload: reserve its room (address space only), take what already arrived, and receive the rest in
  // place as it comes (prepare() commits room ahead of it).
  large_.emplace();
  large_->header = header;
  large_->payload.reserve(static_cast<std::size_t>(header.payload_size));
  const std::size_t have = available - frame_header_size;
  large_->payload.assign(buffer_.data() + begin_ + frame_header_size, buffer_.data() + begin_ + frame_header_size + have);
  large_filled_ = have;
  begin_ = end_ = 0;
  return std::nullopt;
}

DMOE_DEF auto frame_reader::skip_frame() -> void {
  const frame_header header = parse_frame_header(const_byte_span(buffer_).subspan(begin_, frame_header_size), "");
  begin_ += frame_header_size;
  skip_ = header.payload_size;
  skipped_frame_ = frame_header_size + header.payload_size;  // may wrap for a claim near 2^64: only differences
                                                              // with skip_ are used (bytes received)
  discard_buffered();
}

DMOE_DEF auto frame_reader::abandon_large() -> void {
  if (!large_) return;
  skip_ = large_->header.payload_size - large_filled_;
  skipped_frame_ = frame_header_size + large_->header.payload_size;
  large_.reset();
  large_filled_ = 0;
  begin_ = end_ = 0;
  discard_buffered();
}

DMOE_DEF auto frame_reader::frame_in_progress_size() const noexcept -> std::uint64_t {
  if (large_) return frame_header_size + large_->header.payload_size;
  if (skip_ > 0) {
    const std::uint64_t received = skipped_frame_ - skip_;
    return skip_ > ~std::uint64_t{0} - received ? ~std::uint64_t{0} : received + skip_;
  }
  if (end_ - begin_ < frame_header_size) return frame_header_size;
  const auto payload = detail::load_le<std::uint64_t>(buffer_.data() + begin_ + 24);
  return payload > ~std::uint64_t{0} - frame_header_size ? ~std::uint64_t{0} : frame_header_size + payload;
}

DMOE_DEF auto frame_reader::frame_in_progress_received() const noexcept -> std::uint64_t {
  if (large_) return frame_header_size + large_filled_;
  if (skip_ > 0) return skipped_frame_ - skip_;
  return std::min<std::uint64_t>(end_ - begin_, frame_in_progress_size());
}

DMOE_DEF auto frame_reader::discard_buffered() noexcept -> bool {
  if (skip_ == 0) return true;
  const std::size_t drop = static_cast<std::size_t>(std::min<std::uint64_t>(skip_, end_ - begin_));
  begin_ += drop;
  skip_ -= drop;
  if (begin_ == end_) begin_ = end_ = 0;
  if (skip_ > 0) return false;
  ++frames_done_;
  return true;
}

DMOE_DEF auto frame_reader::compact() noexcept -> void {
  if (begin_ == 0) return;
  std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
  end_ -= begin_;
  begin_ = 0;
}

DMOE_DEF auto frame_deadline::update(const frame_reader& reader, steady_time now) noexcept -> void {
  if (!reader.mid_frame()) {
    active_ = false;
    return;
  }
  if (!active_ || reader.frames_done() != frame_) {
    active_ = true;
    frame_ = reader.frames_done();
    started_ = now;
  }
}

}  // namespace net
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
