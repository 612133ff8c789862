// The pieces of one outgoing RPC frame (header, body, borrowed views) as one list for a vectored write.
#pragma once

#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/net/frame.hpp>

#include <array>
#include <cstddef>
#include <span>
#include <vector>

DMOE_BEGIN_NAMESPACE
namespace net::detail {

// The pieces of one outgoing frame (header, body, views) for one vectored write; two or three fit inline.
class frame_pieces {
 public:
  DMOE_DECL frame_pieces(const frame_header_bytes& header, const_byte_span body, std::span<const const_byte_span> views);
  DMOE_LAZY std::span<const const_byte_span> span() const noexcept {
    return heap_.empty() ? std::span<const const_byte_span>(inline_.data(), count_)
                         : std::span<const const_byte_span>(heap_);
  }

 private:
  DMOE_DECL void add(const_byte_span piece);

  std::array<const_byte_span, 4> inline_{};
  std::vector<const_byte_span> heap_;
  std::size_t count_ = 0;
};

}  // namespace net::detail
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace net::detail {

DMOE_DEF frame_pieces::frame_pieces(const frame_header_bytes& header, const_byte_span body,
    std::span<const const_byte_span> views) {
  if (views.size() + 2 > inline_.size()) heap_.reserve(views.size() + 2);
  add(header);
  add(body);
  for (const auto& view : views) add(view);
}

DMOE_DEF auto frame_pieces::add(const_byte_span piece) -> void {
  if (piece.empty()) return;
  if (heap_.capacity() > 0) {
    heap_.push_back(piece);
  } else {
    inline_[count_++] = piece;
  }
}

}  // namespace net::detail
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
