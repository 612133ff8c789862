// send_now: a vectored send of what the socket takes at once, before falling back to an awaited write; write_pass:
// whether a writer is alone in its loop iteration (then sending at once beats batching with the loop's submission).
#pragma once

#include <dmoe/async/io_context.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include <fmt/core.h>
#include <sys/socket.h>
#include <sys/uio.h>

DMOE_BEGIN_NAMESPACE
namespace net::detail {

// Sends as much of `pieces` as the socket buffer takes now, without waiting (MSG_DONTWAIT), and returns the byte
// count (0 when it would block). A frame written this way leaves at once instead of at the event loop's next
// submission, which saves a loop iteration and a completion per frame; the caller awaits a write for the rest.
// Throws what a failed write throws: closed_error when the peer reset or closed the connection, system_error else.
DMOE_DECL std::size_t send_now(int fd, std::span<const const_byte_span> pieces, std::string_view peer);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::size_t send_now(int fd, std::span<const const_byte_span> pieces, std::string_view peer) {
  constexpr std::size_t max_pieces = 64;  // more wait for the awaited write
  std::array<iovec, max_pieces> iov;
  std::size_t count = 0;
  for (const auto& piece : pieces) {
    if (piece.empty()) continue;
    if (count == max_pieces) break;
    iov[count++] = iovec{const_cast<std::byte*>(piece.data()), piece.size()};
  }
  if (count == 0) return 0;
  msghdr message{};
  message.msg_iov = iov.data();
  message.msg_iovlen = count;
  for (;;) {
    const ssize_t sent = ::sendmsg(fd, &message, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent >= 0) return static_cast<std::size_t>(sent);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    if (errno == EPIPE || errno == ECONNRESET)
      throw closed_error(dmoe::format("tcp send to {}: connection reset by peer ({})", peer, std::strerror(errno)));
    throw system_error(errno, dmoe::format("tcp send to {}", peer));
  }
}
#endif  // DMOE_HEAVY_DEFINITIONS

// Drops the first `bytes` of a piece list (what send_now sent).
DMOE_DECL void drop_sent(std::vector<const_byte_span>& pieces, std::size_t bytes);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void drop_sent(std::vector<const_byte_span>& pieces, std::size_t bytes) {
  std::size_t whole = 0;
  while (whole < pieces.size() && bytes >= pieces[whole].size()) bytes -= pieces[whole++].size();
  pieces.erase(pieces.begin(), pieces.begin() + static_cast<std::ptrdiff_t>(whole));
  if (!pieces.empty()) pieces.front() = pieces.front().subspan(bytes);
}
#endif  // DMOE_HEAVY_DEFINITIONS

// The writers of one client or server that are ready to write in the same loop iteration. `co_await pass.join()`
// resumes a writer after the coroutines already resumed in this iteration (posted work runs after them, before the
// loop submits I/O), so what they produce can join its write, and says whether it is the pass's only writer (the
// client's first writer then sends at once with send_now, in the calling coroutine, which must never wait on a
// write).
class write_pass {
 public:
  explicit write_pass(io_context& ctx) noexcept : ctx_(ctx) {}
  write_pass(const write_pass&) = delete;
  write_pass& operator=(const write_pass&) = delete;

  struct awaiter {
    write_pass& pass;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> waiter) {
      pass.ctx_.post([waiter] { waiter.resume(); });
      ++pass.joined_;
      ++pass.waiting_;
    }
    // Whether this writer is alone in its pass.
    bool await_resume() noexcept {
      const bool alone = pass.joined_ == 1;
      if (--pass.waiting_ == 0) pass.joined_ = 0;
      return alone;
    }
  };
  awaiter join() noexcept { return awaiter{*this}; }

 private:
  io_context& ctx_;
  std::size_t joined_ = 0;   // writers in the current pass
  std::size_t waiting_ = 0;  // of them, not resumed yet
};

}  // namespace net::detail
DMOE_END_NAMESPACE
