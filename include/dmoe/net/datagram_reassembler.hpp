// Reassembles multi-part datagram messages with bounded memory: few partial messages, each source within its share,
// and when full the source holding the most gives way (its oldest message), so one peer cannot evict the others.
#pragma once

#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/net/datagram_message.hpp>
#include <dmoe/net/size_text.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

DMOE_BEGIN_NAMESPACE
namespace net {

class datagram_reassembler {
 public:
  // Throws invalid_argument_error for unusable limits (see validate()).
  DMOE_DECL explicit datagram_reassembler(datagram_limits limits = {}) : limits_(limits) { validate(limits_, "datagram reassembler"); }

  // Adds one decoded datagram from `source` (a key for the sender's address). Returns the whole message once its
  // last missing part arrives; single-part messages come back at once. Duplicate parts are ignored; a part that
  // contradicts the earlier parts of its message throws protocol_error and leaves the message as it was.
  DMOE_DECL std::optional<byte_buffer> add(std::uint64_t source, const datagram_message& part, steady_time now,
                                 std::string_view peer = "peer");

  // Drops messages that have waited longer than the partial timeout for their missing parts.
  DMOE_DECL void expire(steady_time now);

  // Drops everything held for one transaction (its caller gave up).
  DMOE_DECL void forget(std::uint64_t source, std::uint64_t transaction_id);

  std::size_t partial_messages() const noexcept { return partials_.size(); }
  std::size_t buffered_bytes() const noexcept { return buffered_; }
  std::uint64_t duplicates() const noexcept { return duplicates_; }
  std::uint64_t evicted() const noexcept { return evicted_; }
  std::uint64_t expired() const noexcept { return expired_; }
  const datagram_limits& limits() const noexcept { return limits_; }

 private:
  struct partial {
    std::uint64_t source;
    datagram_header header;  // of the first part that arrived
    byte_buffer data;
    std::vector<bool> received;
    std::size_t missing;
    steady_time started;
  };

  static bool consistent(const datagram_header& a, const datagram_header& b) noexcept {
    return a.type == b.type && a.sender == b.sender && a.part_count == b.part_count && a.total_size == b.total_size &&
           a.part_size == b.part_size;
  }

  DMOE_DECL std::pair<std::size_t, std::size_t> held_by(std::uint64_t source) const noexcept;

  // The source holding the most bytes (then messages) in reassembly.
  DMOE_DECL std::uint64_t largest_holder() const noexcept;

  std::vector<partial>::iterator oldest_of(std::uint64_t source) noexcept {
    return std::find_if(partials_.begin(), partials_.end(), [&](const partial& p) { return p.source == source; });
  }

  void drop(std::vector<partial>::iterator it) {
    buffered_ -= it->data.size();
    partials_.erase(it);
  }

  datagram_limits limits_;
  std::vector<partial> partials_;  // oldest first; few, so a linear search beats a map
  std::size_t buffered_ = 0;
  std::uint64_t duplicates_ = 0;
  std::uint64_t evicted_ = 0;
  std::uint64_t expired_ = 0;
};

}  // namespace net
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace net {

DMOE_DEF auto datagram_reassembler::add(std::uint64_t source, const datagram_message& part, steady_time now,
                               std::string_view peer) -> std::optional<byte_buffer> {
  const datagram_header& h = part.header;
  if (h.part_count <= 1) return byte_buffer(part.payload.begin(), part.payload.end());

  auto it = std::find_if(partials_.begin(), partials_.end(), [&](const partial& p) {
    return p.source == source && p.header.transaction_id == h.transaction_id && p.header.kind == h.kind;
  });
  if (it == partials_.end()) {
    const std::size_t share = std::min(limits_.max_buffered_bytes, limits_.max_buffered_bytes_per_source);
    if (h.total_size > share)
      throw limit_error(dmoe::format("datagram message of {} exceeds the reassembly memory limit {} per source from {}",
                                    size_text(h.total_size), size_text(share), peer));
    if (limits_.max_partial_messages == 0 || limits_.max_partial_messages_per_source == 0) return std::nullopt;
    // First the source's own share: it gives way to itself.
    for (;;) {
      const auto [count, bytes] = held_by(source);
      if (count < std::min(limits_.max_partial_messages, limits_.max_partial_messages_per_source) &&
          bytes + h.total_size <= share)
        break;
      drop(oldest_of(source));
      ++evicted_;
    }
    // Then the whole: the source holding the most gives way.
    while (!partials_.empty() && (partials_.size() >= limits_.max_partial_messages ||
                                  buffered_ + h.total_size > limits_.max_buffered_bytes)) {
      drop(oldest_of(largest_holder()));
      ++evicted_;
    }
    partials_.push_back(partial{source, h, byte_buffer(h.total_size), std::vector<bool>(h.part_count, false),
                                h.part_count, now});
    buffered_ += h.total_size;
    it = partials_.end() - 1;
  } else if (!consistent(it->header, h)) {
    throw protocol_error(dmoe::format("datagram part {} of {} (message of {} bytes, type {}) contradicts part "
                                     "{} of {} (message of {} bytes, type {}) of transaction {:#x} from {}",
                                     h.part_index, h.part_count, h.total_size, h.type, it->header.part_index,
                                     it->header.part_count, it->header.total_size, it->header.type,
                                     h.transaction_id, peer));
  }
  if (it->received[h.part_index]) {
    ++duplicates_;
    return std::nullopt;
  }
  it->received[h.part_index] = true;
  if (!part.payload.empty())
    std::memcpy(it->data.data() + std::size_t{h.part_index} * h.part_size, part.payload.data(), part.payload.size());
  if (--it->missing > 0) return std::nullopt;
  buffered_ -= it->data.size();
  byte_buffer whole = std::move(it->data);
  partials_.erase(it);
  return whole;
}

DMOE_DEF auto datagram_reassembler::expire(steady_time now) -> void {
  std::erase_if(partials_, [&](const partial& p) {
    if (now < deadline_from(p.started, limits_.partial_timeout)) return false;
    buffered_ -= p.data.size();
    ++expired_;
    return true;
  });
}

DMOE_DEF auto datagram_reassembler::forget(std::uint64_t source, std::uint64_t transaction_id) -> void {
  std::erase_if(partials_, [&](const partial& p) {
    if (p.source != source || p.header.transaction_id != transaction_id) return false;
    buffered_ -= p.data.size();
    return true;
  });
}

DMOE_DEF auto datagram_reassembler::held_by(std::uint64_t source) const noexcept -> std::pair<std::size_t,
    std::size_t> {
  std::size_t count = 0;
  std::size_t bytes = 0;
  for (const partial& p : partials_) {
    if (p.source != source) continue;
    ++count;
    bytes += p.data.size();
  }
  return {count, bytes};
}

DMOE_DEF auto datagram_reassembler::largest_holder() const noexcept -> std::uint64_t {
  std::uint64_t best = partials_.front().source;
  std::pair<std::size_t, std::size_t> best_held{0, 0};
  for (const partial& p : partials_) {
    const auto [count, bytes] = held_by(p.source);
    if (std::pair(bytes, count) > std::pair(best_held.second, best_held.first)) {
      best = p.source;
      best_held = {count, bytes};
    }
  }
  return best;
}

}  // namespace net
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
