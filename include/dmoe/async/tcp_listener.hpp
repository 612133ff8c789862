// tcp_listener: a listening TCP socket whose accept is an awaitable.
#pragma once

#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/io_operation.hpp>
#include <dmoe/async/tcp_socket.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <cerrno>
#include <utility>

#include <fmt/core.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

DMOE_BEGIN_NAMESPACE

namespace detail {

class accept_operation final : public io_operation<accept_operation> {
 public:
  accept_operation(io_context* ctx, int fd, const endpoint* local, steady_time deadline) noexcept
      : io_operation(ctx, deadline), fd_(fd), local_(local) {}

  DMOE_DECL tcp_socket await_resume();

 private:
  friend class io_operation<accept_operation>;

  DMOE_LAZY void prepare(io_uring_sqe* sqe) noexcept {
    peer_length_ = sizeof peer_;
    io_uring_prep_accept(sqe, fd_, &peer_.base, &peer_length_, SOCK_CLOEXEC);
  }

  int fd_;
  const endpoint* local_;
  union {
    sockaddr base;
    sockaddr_in v4;
    sockaddr_in6 v6;
  } peer_{};
  socklen_t peer_length_ = 0;
};

}  // namespace detail

// A TCP socket listening on a local endpoint (SO_REUSEADDR on). Port 0 picks a free port;
// local_endpoint() tells which.
class tcp_listener {
 public:
  tcp_listener() noexcept = default;
  DMOE_DECL tcp_listener(io_context& ctx, const endpoint& local, int backlog = 1024);
  tcp_listener(tcp_listener&& other) noexcept
      : ctx_(other.ctx_), fd_(std::exchange(other.fd_, -1)), local_(other.local_) {}
  tcp_listener& operator=(tcp_listener&& other) noexcept;
  tcp_listener(const tcp_listener&) = delete;
  tcp_listener& operator=(const tcp_listener&) = delete;
  ~tcp_listener() { close(); }

  // co_await listener.accept(): the next connection (TCP_NODELAY on).
  detail::accept_operation accept(steady_time deadline = no_deadline) {
    return detail::accept_operation(ctx_, fd_, &local_, deadline);
  }

  void close() noexcept {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  }
  bool is_open() const noexcept { return fd_ >= 0; }
  int native_handle() const noexcept { return fd_; }
  const endpoint& local_endpoint() const noexcept { return local_; }

 private:
  io_context* ctx_ = nullptr;
  int fd_ = -1;
  endpoint local_;
};

DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace detail {

DMOE_DEF auto accept_operation::await_resume() -> tcp_socket {
  if (result() < 0) throw_failure(result(), dmoe::format("tcp accept on {}", *local_));
  tcp_socket socket(*ctx, result(), endpoint::from_sockaddr(&peer_.base, peer_length_));
  socket.set_option(IPPROTO_TCP, TCP_NODELAY, 1);
  return socket;
}

}  // namespace detail

DMOE_DEF tcp_listener::tcp_listener(io_context& ctx, const endpoint& local, int backlog) : ctx_(&ctx) {
  if (!local.is_specified()) throw invalid_argument_error("tcp_listener needs a specified local endpoint");
  fd_ = ::socket(local.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw system_error(errno, "socket");
  try {
    detail::set_socket_option(fd_, SOL_SOCKET, SO_REUSEADDR, 1, "setsockopt(SO_REUSEADDR)");
    if (::bind(fd_, local.data(), local.size()) != 0) throw system_error(errno, dmoe::format("bind to {}", local));
    if (::listen(fd_, backlog) != 0) throw system_error(errno, dmoe::format("listen on {}", local));
    local_ = detail::local_endpoint_of(fd_);
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

DMOE_INLINE auto tcp_listener::operator=(tcp_listener&& other) noexcept -> tcp_listener& {
  if (this != &other) {
    close();
    ctx_ = other.ctx_;
    fd_ = std::exchange(other.fd_, -1);
    local_ = other.local_;
  }
  return *this;
}

DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
