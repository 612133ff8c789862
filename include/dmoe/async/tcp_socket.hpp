// tcp_socket: a connected TCP stream with awaitable connect, read and write (vectored, partial, all).
#pragma once

#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/io_operation.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/core.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

DMOE_BEGIN_NAMESPACE

class tcp_socket;

namespace detail {

inline void set_socket_option(int fd, int level, int name, int value, const char* what) {
  if (::setsockopt(fd, level, name, &value, sizeof value) != 0) throw system_error(errno, what);
}

DMOE_DECL endpoint local_endpoint_of(int fd);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF endpoint local_endpoint_of(int fd) {
  sockaddr_in6 storage{};
  socklen_t length = sizeof storage;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &length) != 0) throw system_error(errno, "getsockname");
  return endpoint::from_sockaddr(reinterpret_cast<sockaddr*>(&storage), length);
}
#endif  // DMOE_HEAVY_DEFINITIONS

// The pieces of one scatter/gather transfer, advanced as bytes move; a few fit inline.
class iovec_list {
 public:
  template <class Span>
  explicit iovec_list(std::span<const Span> pieces) {
    iovec* out = pieces.size() <= inline_.size() ? inline_.data() : (heap_.resize(pieces.size()), heap_.data());
    for (const auto& piece : pieces) {
      if (piece.empty()) continue;
      out[count_++] = iovec{const_cast<std::byte*>(piece.data()), piece.size()};
      total_ += piece.size();
    }
    data_ = out;
  }
  iovec_list(const iovec_list&) = delete;
  iovec_list& operator=(const iovec_list&) = delete;

  iovec* current() noexcept { return data_ + first_; }
  std::size_t current_count() const noexcept { return count_ - first_; }
  std::size_t total() const noexcept { return total_; }

  DMOE_DECL void advance(std::size_t bytes) noexcept;

 private:
  std::array<iovec, 4> inline_{};
  std::vector<iovec> heap_;
  iovec* data_ = nullptr;
  std::size_t count_ = 0;
  std::size_t first_ = 0;
  std::size_t total_ = 0;
};

enum class stream_direction { receive, send };

// What a tcp_socket knows between its operations, shared with them.
struct stream_state {
  // The kernel reports whether a receive emptied the socket (IORING_CQE_F_SOCK_NONEMPTY and
  // IORING_RECVSEND_POLL_FIRST, Linux 5.19; a ring with IORING_SETUP_DEFER_TASKRUN, 6.1, proves it has them).
  bool drain_notes = false;
  bool drained = false;  // the last receive emptied the socket (as far as the kernel said)
  // Operations of each direction waiting in the ring: while one is, a later one must not overtake it by
  // transferring at once.
  unsigned receives_in_ring = 0;
  unsigned sends_in_ring = 0;
};

// read_some / write_some (All = false) and read_exactly / write_all (All = true, resubmitting after
// partial transfers). A cancelled or timed-out transfer that moved some but not all bytes leaves
// the stream in an unknown state: the connection is shut down (both ways) and the error says so.

template <stream_direction Direction, bool All>
class stream_operation final : public io_operation<stream_operation<Direction, All>> {
  using base = io_operation<stream_operation<Direction, All>>;

 public:
  using result_type = std::conditional_t<All, void, std::size_t>;

  // `state`: the socket's notes between operations (null: none kept, every operation goes through the ring).
  template <class Span>
  stream_operation(io_context* ctx, int fd, const endpoint* peer, std::span<const Span> pieces, steady_time deadline,
                   stream_state* state = nullptr)
      : base(ctx, deadline), fd_(fd), peer_(peer), pieces_(pieces), state_(state) {}
  ~stream_operation() {
    if (in_ring_) --in_ring_count();
  }

  // Reading or writing nothing completes at once.
  bool await_ready() const noexcept { return All && pieces_.total() == 0; }

  result_type await_resume() {
    const int result = this->result();
    note_drained(result);
    if constexpr (All) {
      if (transferred_ == pieces_.total()) return;
      if (result == 0 && Direction == stream_direction::receive) {
        throw closed_error(dmoe::format("peer {} closed the connection after {} of {} bytes", *peer_, transferred_,
                                       pieces_.total()));
      }
      fail(result > 0 ? -ECANCELED : result);  // > 0: stopped between partial transfers
    } else {
      if (result >= 0) return static_cast<std::size_t>(result);
      fail(result);
    }
  }

 private:
  friend class io_operation<stream_operation<Direction, All>>;

  // A send, or a receive from a socket not known to be empty, first tries a non-blocking system call: one system
  // call instead of an SQE, its completion and a suspension, when the socket can take or give bytes now (a
  // request or response that fits the send buffer; a receive after one that left bytes behind). Only when no
  // operation of its direction waits in the ring (bytes must not overtake), and within the loop's inline turns.
  DMOE_LAZY bool try_now() noexcept {
    if (!state_ || in_ring_count() > 0 || pieces_.total() == 0) return false;
    if (Direction == stream_direction::receive && (!state_->drain_notes || state_->drained)) return false;
    if (!this->ctx->take_inline_turn()) return false;
    ssize_t done;
    if (pieces_.current_count() == 1) {
      const iovec piece = *pieces_.current();
      if constexpr (Direction == stream_direction::receive) {
        done = ::recv(fd_, piece.iov_base, piece.iov_len, MSG_DONTWAIT);
      } else {
        done = ::send(fd_, piece.iov_base, piece.iov_len, MSG_DONTWAIT | MSG_NOSIGNAL);
      }
    } else if (Direction == stream_direction::send && remaining() <= gather_limit) {
      done = ::send(fd_, gathered_.data(), gather(), MSG_DONTWAIT | MSG_NOSIGNAL);
    } else {
      msghdr message{};
      message.msg_iov = pieces_.current();
      message.msg_iovlen = pieces_.current_count();
      if constexpr (Direction == stream_direction::receive) {
        done = ::recvmsg(fd_, &message, MSG_DONTWAIT);
      } else {
        done = ::sendmsg(fd_, &message, MSG_DONTWAIT | MSG_NOSIGNAL);
      }
    }
    if (done < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        if (Direction == stream_direction::receive) state_->drained = true;
        return false;  // the ring waits for the socket
      }
      this->complete_now(-errno);
      return true;
    }
    const std::size_t wanted = remaining();
    // A receive that filled what it was given may have left bytes behind: noted as the kernel's flag would.
    const unsigned flags =
        Direction == stream_direction::receive && static_cast<std::size_t>(done) == wanted ? IORING_CQE_F_SOCK_NONEMPTY : 0;
    if constexpr (All) {
      if (done == 0 || static_cast<std::size_t>(done) == wanted) {
        transferred_ += static_cast<std::size_t>(done);
        this->complete_now(static_cast<int>(done), flags);
        return true;
      }
      transferred_ += static_cast<std::size_t>(done);  // the rest goes through the ring
      pieces_.advance(static_cast<std::size_t>(done));
      if (Direction == stream_direction::receive) state_->drained = true;
      return false;
    } else {
      this->complete_now(static_cast<int>(done), flags);
      return true;
    }
  }

  // Before the first SQE: the operation now waits in the ring.
  DMOE_LAZY void start() noexcept {
    if (state_) {
      in_ring_ = true;
      ++in_ring_count();
    }
  }

  unsigned& in_ring_count() noexcept {
    return Direction == stream_direction::receive ? state_->receives_in_ring : state_->sends_in_ring;
  }

  DMOE_LAZY void prepare(io_uring_sqe* sqe) noexcept {
    if (pieces_.current_count() <= 1) {
      const iovec piece = pieces_.current_count() == 1 ? *pieces_.current() : iovec{nullptr, 0};
      if constexpr (Direction == stream_direction::receive) {
        io_uring_prep_recv(sqe, fd_, piece.iov_base, piece.iov_len, 0);
      } else {
        io_uring_prep_send(sqe, fd_, piece.iov_base, piece.iov_len, MSG_NOSIGNAL);
      }
    } else if (Direction == stream_direction::send && remaining() <= gather_limit) {
      io_uring_prep_send(sqe, fd_, gathered_.data(), gather(), MSG_NOSIGNAL);
    } else {
      message_ = msghdr{};
      message_.msg_iov = pieces_.current();
      message_.msg_iovlen = pieces_.current_count();
      if constexpr (Direction == stream_direction::receive) {
        io_uring_prep_recvmsg(sqe, fd_, &message_, 0);
      } else {
        io_uring_prep_sendmsg(sqe, fd_, &message_, MSG_NOSIGNAL);
      }
    }
    // The last receive left the socket empty: wait for data before trying (a receive that can only find
    // nothing costs a socket lock and a return to the poll path).
    if (Direction == stream_direction::receive && state_ && state_->drain_notes && state_->drained)
      sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
  }

  // A few small pieces to send (a frame header and a short payload): copied into one buffer for a plain send,
  // which the kernel sets up for less than a sendmsg. Returns their size.
  DMOE_LAZY std::size_t gather() noexcept {
    std::size_t size = 0;
    for (std::size_t i = 0; i < pieces_.current_count(); ++i) {
      const iovec& piece = pieces_.current()[i];
      std::memcpy(gathered_.data() + size, piece.iov_base, piece.iov_len);
      size += piece.iov_len;
    }
    return size;
  }

  // IORING_CQE_F_SOCK_NONEMPTY on a receive's completion: bytes were still queued after it.
  DMOE_LAZY void note_drained(int result) noexcept {
    if (Direction == stream_direction::receive && state_ && state_->drain_notes)
      state_->drained = result > 0 && !(this->cqe_flags() & IORING_CQE_F_SOCK_NONEMPTY);
  }

  DMOE_LAZY bool resubmit(int result) noexcept {
    if constexpr (!All) {
      (void)result;
      return false;
    } else {
      note_drained(result);
      if (result <= 0) return false;
      transferred_ += static_cast<std::size_t>(result);
      pieces_.advance(static_cast<std::size_t>(result));
      return transferred_ < pieces_.total() && !this->cancelled();
    }
  }

  [[noreturn]] void fail(int result) {
    std::string what = dmoe::format("tcp {} {}", Direction == stream_direction::receive ? "recv from" : "send to", *peer_);
    if (result == -ECONNRESET || result == -EPIPE) {
      throw closed_error(dmoe::format("{}: connection reset by peer ({})", what, std::strerror(-result)));
    }
    if (All && transferred_ > 0 && this->interrupted(result)) {
      ::shutdown(fd_, SHUT_RDWR);
      what += dmoe::format(" after {} of {} bytes (stream state unknown: connection shut down)", transferred_,
                          pieces_.total());
    }
    this->throw_failure(result, what);
  }

  static constexpr std::size_t gather_limit = Direction == stream_direction::send ? 512 : 0;

  std::size_t remaining() const noexcept { return pieces_.total() - transferred_; }

  int fd_;
  const endpoint* peer_;
  iovec_list pieces_;
  [[no_unique_address]] std::conditional_t<(gather_limit > 0), std::array<std::byte, gather_limit>, std::array<std::byte, 0>>
      gathered_;
  msghdr message_{};
  std::size_t transferred_ = 0;
  stream_state* state_;
  bool in_ring_ = false;
};

// tcp_socket::connect: creates the socket when awaited; yields the connected tcp_socket.
class connect_operation final : public io_operation<connect_operation> {
 public:
  connect_operation(io_context& ctx, const endpoint& peer, steady_time deadline)
      : io_operation(&ctx, deadline), peer_(peer) {}
  ~connect_operation() {
    if (fd_ >= 0) ::close(fd_);
  }

  inline tcp_socket await_resume();

 private:
  friend class io_operation<connect_operation>;

  DMOE_LAZY void start() {
    if (!peer_.is_specified()) throw invalid_argument_error("tcp connect to an unspecified endpoint");
    fd_ = ::socket(peer_.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw system_error(errno, "socket");
  }
  void prepare(io_uring_sqe* sqe) noexcept { io_uring_prep_connect(sqe, fd_, peer_.data(), peer_.size()); }

  endpoint peer_;
  int fd_ = -1;
};

}  // namespace detail

// A connected TCP stream (TCP_NODELAY on) belonging to one io_context. Operations are awaitables
// that take an optional deadline and honour the awaiting coroutine's stop token. Errors:
// closed_error when the peer closes or resets the connection (naming the peer), timeout_error past
// a deadline, cancelled_error on stop, system_error otherwise. Sends never raise SIGPIPE.
// The socket must outlive (and not move during) its in-flight operations.
class tcp_socket {
 public:
  template <detail::stream_direction D, bool A>
  using stream_operation = detail::stream_operation<D, A>;

  tcp_socket() noexcept = default;
  // Adopts a connected socket descriptor.
  tcp_socket(io_context& ctx, int fd, const endpoint& peer) noexcept : ctx_(&ctx), fd_(fd), peer_(peer) {
    state_.drain_notes = (ctx.setup_flags() & IORING_SETUP_DEFER_TASKRUN) != 0;
  }
  tcp_socket(tcp_socket&& other) noexcept
      : ctx_(other.ctx_), fd_(std::exchange(other.fd_, -1)), peer_(other.peer_), state_(other.state_) {}
  tcp_socket& operator=(tcp_socket&& other) noexcept;
  tcp_socket(const tcp_socket&) = delete;
  tcp_socket& operator=(const tcp_socket&) = delete;
  ~tcp_socket() { close(); }

  // co_await tcp_socket::connect(ctx, peer): a connected socket; system_error (e.g. "Connection refused").
  DMOE_LAZY static detail::connect_operation connect(io_context& ctx, const endpoint& peer, steady_time deadline = no_deadline) {
    return detail::connect_operation(ctx, peer, deadline);
  }

  // The bytes received (at least 1), or 0 when the peer has closed its side.
  DMOE_LAZY auto read_some(byte_span buffer, steady_time deadline = no_deadline) {
    return stream_operation<detail::stream_direction::receive, false>(ctx_, fd_, &peer_, std::span<const byte_span>(&buffer, 1), deadline, &state_);
  }
  DMOE_LAZY auto read_some(std::span<const byte_span> buffers, steady_time deadline = no_deadline) {
    return stream_operation<detail::stream_direction::receive, false>(ctx_, fd_, &peer_, buffers, deadline, &state_);
  }
  // The bytes sent (possibly fewer than given).
  DMOE_LAZY auto write_some(const_byte_span buffer, steady_time deadline = no_deadline) {
    return stream_operation<detail::stream_direction::send, false>(ctx_, fd_, &peer_, std::span<const const_byte_span>(&buffer, 1), deadline, &state_);
  }
  DMOE_LAZY auto write_some(std::span<const const_byte_span> buffers, steady_time deadline = no_deadline) {
    return stream_operation<detail::stream_direction::send, false>(ctx_, fd_, &peer_, buffers, deadline, &state_);
  }
  // Fills the buffers completely; closed_error "peer ... closed the connection after N of M bytes".
  DMOE_LAZY auto read_exactly(byte_span buffer, steady_time deadline = no_deadline) {
    return stream_operation<detail::stream_direction::receive, true>(ctx_, fd_, &peer_, std::span<const byte_span>(&buffer, 1), deadline, &state_);
  }
  DMOE_LAZY auto read_exactly(std::span<const byte_span> buffers, steady_time deadline = no_deadline) {
    return stream_operation<detail::stream_direction::receive, true>(ctx_, fd_, &peer_, buffers, deadline, &state_);
  }
  // Sends every byte, continuing after partial sends.
  DMOE_LAZY auto write_all(const_byte_span buffer, steady_time deadline = no_deadline) {
    return stream_operation<detail::stream_direction::send, true>(ctx_, fd_, &peer_, std::span<const const_byte_span>(&buffer, 1), deadline, &state_);
  }
  DMOE_LAZY auto write_all(std::span<const const_byte_span> buffers, steady_time deadline = no_deadline) {
    return stream_operation<detail::stream_direction::send, true>(ctx_, fd_, &peer_, buffers, deadline, &state_);
  }

  // Half-close: the peer reads end-of-stream; this side can still read.
  DMOE_LAZY void shutdown_write() {
    if (::shutdown(fd_, SHUT_WR) != 0) throw system_error(errno, dmoe::format("shutdown of connection to {}", peer_));
  }
  void close() noexcept {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  }

  void set_option(int level, int name, int value) { detail::set_socket_option(fd_, level, name, value, "setsockopt"); }

  bool is_open() const noexcept { return fd_ >= 0; }
  int native_handle() const noexcept { return fd_; }
  const endpoint& peer() const noexcept { return peer_; }
  endpoint local_endpoint() const { return detail::local_endpoint_of(fd_); }
  io_context* context() const noexcept { return ctx_; }

 private:
  io_context* ctx_ = nullptr;
  int fd_ = -1;
  endpoint peer_;
  detail::stream_state state_;
};

inline tcp_socket detail::connect_operation::await_resume() {
  if (result() < 0) throw_failure(result(), dmoe::format("tcp connect to {}", peer_));
  set_socket_option(fd_, IPPROTO_TCP, TCP_NODELAY, 1, "setsockopt(TCP_NODELAY)");
  return tcp_socket(*ctx, std::exchange(fd_, -1), peer_);
}

DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace detail {

DMOE_DEF auto iovec_list::advance(std::size_t bytes) noexcept -> void {
  while (bytes > 0 && first_ < count_) {
    iovec& piece = data_[first_];
    const std::size_t step = bytes < piece.iov_len ? bytes : piece.iov_len;
    piece.iov_base = static_cast<std::byte*>(piece.iov_base) + step;
    piece.iov_len -= step;
    bytes -= step;
    if (piece.iov_len == 0) ++first_;
  }
}

}  // namespace detail

DMOE_INLINE auto tcp_socket::operator=(tcp_socket&& other) noexcept -> tcp_socket& {
  if (this != &other) {
    close();
    ctx_ = other.ctx_;
    fd_ = std::exchange(other.fd_, -1);
    peer_ = other.peer_;
    state_ = other.state_;
  }
  return *this;
}

DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
