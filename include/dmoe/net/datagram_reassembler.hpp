// Reassembles multi-part datagram messages with bounded memory: few partial messages, each source address within its
// share, and when full the address holding the most gives way (its oldest message), so one peer cannot evict the
// others. A message that would take its own address past its share is dropped instead (its sender retries it): the
// messages already under way complete, however many a peer sends at once.
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

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace net {

// Who sent a part: the sender (its address and port; one message's parts all come from it) and the sender's
// address (whose share of the reassembly memory the message counts against, over all its ports). One key stands for
// both where they need not differ.
struct datagram_source {
  std::uint64_t sender = 0;
  std::uint64_t address = 0;
  datagram_source(std::uint64_t key) noexcept : sender(key), address(key) {}  // NOLINT: implicit on purpose
  datagram_source(std::uint64_t sender_key, std::uint64_t address_key) noexcept
      : sender(sender_key), address(address_key) {}
};

class datagram_reassembler {
 public:
  // Throws invalid_argument_error for unusable limits (see validate()).
  datagram_reassembler() = default;
  DMOE_LAZY explicit datagram_reassembler(datagram_limits limits) : limits_(limits) {
    validate(limits_, "datagram reassembler");
  }

  // Adds one decoded datagram from `source`. Returns the whole message once its last missing part arrives;
  // single-part messages come back at once. Duplicate parts are ignored; a part that contradicts the earlier parts
  // of its message throws protocol_error and leaves the message as it was; a message larger than a source's share
  // throws limit_error. The first part to arrive of a message that does not fit its address's share is dropped
  // (refused()).
  DMOE_DECL std::optional<byte_buffer> add(datagram_source source, const datagram_message& part, steady_time now,
                                 std::string_view peer = "peer");

  // Drops messages that have waited longer than the partial timeout for their missing parts.
  DMOE_DECL void expire(steady_time now);

  // Drops everything held for one transaction of one sender (its caller gave up).
  DMOE_DECL void forget(std::uint64_t sender, std::uint64_t transaction_id);

  std::size_t partial_messages() const noexcept { return partials_.size(); }
  std::size_t buffered_bytes() const noexcept { return buffered_; }
  std::uint64_t duplicates() const noexcept { return duplicates_; }
  std::uint64_t evicted() const noexcept { return evicted_; }   // partial messages dropped for newer ones
  std::uint64_t refused() const noexcept { return refused_; }   // parts dropped: their address's share was full
  std::uint64_t expired() const noexcept { return expired_; }
  const datagram_limits& limits() const noexcept { return limits_; }

 private:
  struct partial {
    std::uint64_t source;  // the sender
    std::uint64_t owner;   // the sender's address
    datagram_header header;  // of the first part that arrived
    byte_buffer data;
    std::vector<bool> received;
    std::size_t missing;
    steady_time started;
  };

  DMOE_LAZY static bool consistent(const datagram_header& a, const datagram_header& b) noexcept {
    return a.type == b.type && a.sender == b.sender && a.part_count == b.part_count && a.total_size == b.total_size &&
           a.part_size == b.part_size;
  }

  // Messages and bytes held for one address.
  DMOE_DECL std::pair<std::size_t, std::size_t> held_by(std::uint64_t owner) const noexcept;

  // The address holding the most in reassembly once `newcomer` adds a message of `bytes`: the most messages (then
  // bytes) when `by_count`, else the most bytes (then messages); on a tie, the newcomer.
  DMOE_DECL std::uint64_t largest_holder(std::uint64_t newcomer, std::size_t bytes, bool by_count) const noexcept;

  std::vector<partial>::iterator oldest_of(std::uint64_t owner) noexcept {
    return std::find_if(partials_.begin(), partials_.end(), [&](const partial& p) { return p.owner == owner; });
  }

  DMOE_LAZY void drop(std::vector<partial>::iterator it) {
    buffered_ -= it->data.size();
    partials_.erase(it);
  }

  datagram_limits limits_;
  std::vector<partial> partials_;  // oldest first; few, so a linear search beats a map
  std::size_t buffered_ = 0;
  std::uint64_t duplicates_ = 0;
  std::uint64_t evicted_ = 0;
  std::uint64_t refused_ = 0;
  std::uint64_t expired_ = 0;
};

}  // namespace net
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace net {

DMOE_DEF auto datagram_reassembler::add(datagram_source source, const datagram_message& part, steady_time now,
                               std::string_view peer) -> std::optional<byte_buffer> {
  const datagram_header& h = part.header;
  if (h.part_count <= 1) return byte_buffer(part.payload.begin(), part.payload.end());

  auto it = std::find_if(partials_.begin(), partials_.end(), [&](const partial& p) {
    return p.source == source.sender && p.header.transaction_id == h.transaction_id && p.header.kind == h.kind;
  });
  if (it == partials_.end()) {
    const std::size_t share = std::min(limits_.max_buffered_bytes, limits_.max_buffered_bytes_per_source);
    if (h.total_size > share)
      throw limit_error(dmoe::format("datagram message of {} exceeds the reassembly memory limit {} per source from {}",
                                    size_text(h.total_size), size_text(share), peer));
    if (limits_.max_partial_messages == 0 || limits_.max_partial_messages_per_source == 0) return std::nullopt;
    // First the address's own share: at it, the new message waits for those under way (evicting them would let
    // a peer that sends more messages at once than its share complete none of them).
    const auto [count, bytes] = held_by(source.address);
    if (count >= std::min(limits_.max_partial_messages, limits_.max_partial_messages_per_source) ||
        bytes + h.total_size > share) {
      ++refused_;
      return std::nullopt;
    }
    // Then the whole: the address holding the most of what is short (messages, else bytes) gives way, the
    // newcomer's included.
    while (!partials_.empty() && (partials_.size() >= limits_.max_partial_messages ||
                                  buffered_ + h.total_size > limits_.max_buffered_bytes)) {
      const bool by_count = partials_.size() >= limits_.max_partial_messages;
      const std::uint64_t loser = largest_holder(source.address, h.total_size, by_count);
      if (loser == source.address) {
        ++refused_;
        return std::nullopt;
      }
      drop(oldest_of(loser));
      ++evicted_;
    }
    partials_.push_back(partial{source.sender, source.address, h, byte_buffer(h.total_size),
                                std::vector<bool>(h.part_count, false), h.part_count, now});
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

DMOE_DEF auto datagram_reassembler::forget(std::uint64_t sender, std::uint64_t transaction_id) -> void {
  std::erase_if(partials_, [&](const partial& p) {
    if (p.source != sender || p.header.transaction_id != transaction_id) return false;
    buffered_ -= p.data.size();
    return true;
  });
}

DMOE_DEF auto datagram_reassembler::held_by(std::uint64_t owner) const noexcept -> std::pair<std::size_t,
    std::size_t> {
  std::size_t count = 0;
  std::size_t bytes = 0;
  for (const partial& p : partials_) {
    if (p.owner != owner) continue;
    ++count;
    bytes += p.data.size();
  }
  return {count, bytes};
}

DMOE_DEF auto datagram_reassembler::largest_holder(std::uint64_t newcomer, std::size_t bytes, bool by_count) const
    noexcept -> std::uint64_t {
  const auto rank = [by_count](std::size_t count, std::size_t held) {
    return by_count ? std::pair(count, held) : std::pair(held, count);
  };
  const auto [own_count, own_bytes] = held_by(newcomer);
  std::uint64_t best = newcomer;
  std::pair<std::size_t, std::size_t> best_rank = rank(own_count + 1, own_bytes + bytes);
  for (const partial& p : partials_) {
    if (p.owner == newcomer) continue;
    const auto [count, held] = held_by(p.owner);
    if (rank(count, held) > best_rank) {
      best = p.owner;
      best_rank = rank(count, held);
    }
  }
  return best;
}

}  // namespace net
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
