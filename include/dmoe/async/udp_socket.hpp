// udp_socket: datagrams with the peer's address (sendmsg/recvmsg; liburing 2.3 has no sendto).
#pragma once

#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/io_operation.hpp>
#include <dmoe/async/tcp_socket.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <limits>
#include <utility>

#include <fmt/core.h>
#include <liburing.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

DMOE_BEGIN_NAMESPACE

// One received datagram: its size (capped at the buffer), sender, and whether it was cut short.
struct datagram {
  std::size_t size = 0;
  endpoint peer;
  bool truncated = false;
};

namespace detail {

class udp_send_operation final : public io_operation<udp_send_operation> {
 public:
  udp_send_operation(io_context* ctx, int fd, const_byte_span data, const endpoint& peer, steady_time deadline)
      : io_operation(ctx, deadline), fd_(fd), peer_(peer) {
    piece_ = iovec{const_cast<std::byte*>(data.data()), data.size()};
  }

  std::size_t await_resume() const {
    if (result() < 0) throw_failure(result(), dmoe::format("udp send to {}", peer_));
    return static_cast<std::size_t>(result());
  }

 private:
  friend class io_operation<udp_send_operation>;

  DMOE_DECL void prepare(io_uring_sqe* sqe) noexcept;

  int fd_;
  endpoint peer_;
  iovec piece_{};
  msghdr message_{};
};

class udp_receive_operation final : public io_operation<udp_receive_operation> {
 public:
  udp_receive_operation(io_context* ctx, int fd, byte_span buffer, const endpoint* local, steady_time deadline) noexcept
      : io_operation(ctx, deadline), fd_(fd), local_(local) {
    piece_ = iovec{buffer.data(), buffer.size()};
  }

  DMOE_DECL datagram await_resume() const;

 private:
  friend class io_operation<udp_receive_operation>;

  DMOE_DECL void prepare(io_uring_sqe* sqe) noexcept;

  int fd_;
  const endpoint* local_;
  iovec piece_{};
  msghdr message_{};
  union {
    sockaddr base;
    sockaddr_in v4;
    sockaddr_in6 v6;
  } peer_{};
};

}  // namespace detail

// A UDP socket bound to a local endpoint (port 0 picks a free one). Same error and cancellation
// rules as tcp_socket. Must outlive (and not move during) its in-flight operations.
class udp_socket {
 public:
  udp_socket() noexcept = default;
  DMOE_DECL udp_socket(io_context& ctx, const endpoint& local);
  udp_socket(udp_socket&& other) noexcept : ctx_(other.ctx_), fd_(std::exchange(other.fd_, -1)), local_(other.local_) {}
  udp_socket& operator=(udp_socket&& other) noexcept;
  udp_socket(const udp_socket&) = delete;
  udp_socket& operator=(const udp_socket&) = delete;
  ~udp_socket() { close(); }

  // co_await sock.send_to(bytes, peer): the bytes sent (the whole datagram).
  detail::udp_send_operation send_to(const_byte_span data, const endpoint& peer, steady_time deadline = no_deadline) {
    return detail::udp_send_operation(ctx_, fd_, data, peer, deadline);
  }
  // co_await sock.receive_from(buffer): the next datagram's size and sender.
  detail::udp_receive_operation receive_from(byte_span buffer, steady_time deadline = no_deadline) {
    return detail::udp_receive_operation(ctx_, fd_, buffer, &local_, deadline);
  }

  void set_option(int level, int name, int value) { detail::set_socket_option(fd_, level, name, value, "setsockopt"); }
  void close() noexcept {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  }
  bool is_open() const noexcept { return fd_ >= 0; }
  int native_handle() const noexcept { return fd_; }
  const endpoint& local_endpoint() const noexcept { return local_; }

  // Asks the kernel for a receive queue of `bytes` (SO_RCVBUF: it holds datagrams that arrive faster than they
  // are read; Linux caps the request at net.core.rmem_max and books twice the size for its overhead). Returns
  // the size granted. Throws system_error if the socket refuses the option.
  DMOE_DECL std::size_t set_receive_queue(std::size_t bytes);

 private:
  io_context* ctx_ = nullptr;
  int fd_ = -1;
  endpoint local_;
};

DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace detail {

DMOE_DEF auto udp_send_operation::prepare(io_uring_sqe* sqe) noexcept -> void {
  message_ = msghdr{};
  message_.msg_name = const_cast<sockaddr*>(peer_.data());
  message_.msg_namelen = peer_.size();
  message_.msg_iov = &piece_;
  message_.msg_iovlen = 1;
  io_uring_prep_sendmsg(sqe, fd_, &message_, MSG_NOSIGNAL);
}

DMOE_DEF auto udp_receive_operation::await_resume() const -> datagram {
  if (result() < 0) throw_failure(result(), dmoe::format("udp recv on {}", *local_));
  datagram received;
  const auto length = static_cast<std::size_t>(result());  // MSG_TRUNC: the datagram's real length
  received.size = length < piece_.iov_len ? length : piece_.iov_len;
  received.truncated = length > piece_.iov_len;
  received.peer = endpoint::from_sockaddr(&peer_.base, peer_.base.sa_family == AF_INET6 ? sizeof(sockaddr_in6)
                                                                                        : sizeof(sockaddr_in));
  return received;
}

DMOE_DEF auto udp_receive_operation::prepare(io_uring_sqe* sqe) noexcept -> void {
  message_ = msghdr{};
  message_.msg_name = &peer_.base;
  message_.msg_namelen = sizeof peer_;
  message_.msg_iov = &piece_;
  message_.msg_iovlen = 1;
  io_uring_prep_recvmsg(sqe, fd_, &message_, MSG_TRUNC);
}

}  // namespace detail

DMOE_DEF udp_socket::udp_socket(io_context& ctx, const endpoint& local) : ctx_(&ctx) {
  if (!local.is_specified()) throw invalid_argument_error("udp_socket needs a specified local endpoint");
  fd_ = ::socket(local.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw system_error(errno, "socket");
  if (::bind(fd_, local.data(), local.size()) != 0) {
    const int error = errno;
    ::close(fd_);
    throw system_error(error, dmoe::format("bind to {}", local));
  }
  local_ = detail::local_endpoint_of(fd_);
}

DMOE_INLINE auto udp_socket::operator=(udp_socket&& other) noexcept -> udp_socket& {
  if (this != &other) {
    close();
    ctx_ = other.ctx_;
    fd_ = std::exchange(other.fd_, -1);
    local_ = other.local_;
  }
  return *this;
}

DMOE_DEF auto udp_socket::set_receive_queue(std::size_t bytes) -> std::size_t {
  const int wanted = static_cast<int>(std::min<std::size_t>(bytes, std::numeric_limits<int>::max() / 2));
  if (::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &wanted, sizeof wanted) != 0) throw system_error(errno, "SO_RCVBUF");
  int granted = 0;
  socklen_t size = sizeof granted;
  if (::getsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &granted, &size) != 0) throw system_error(errno, "SO_RCVBUF");
  return static_cast<std::size_t>(granted);
}

DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
