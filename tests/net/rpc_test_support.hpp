// Helpers for the RPC tests: a server and client on one io_context, raw peers, and payload patterns.
#pragma once

#include <dmoe/async/io_context.hpp>
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/tcp_socket.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/net/rpc_client.hpp>
#include <dmoe/net/rpc_server.hpp>

#include <chrono>
#include <cstring>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>

namespace dmoe_test {

// Port 0 on 127.0.0.1: the address every test server listens on (the kernel picks the port).
inline const dmoe::endpoint loopback = dmoe::endpoint::loopback_v4(0);

// A payload as text.
inline std::string text_of(const dmoe::byte_buffer& bytes) { return std::string(dmoe::as_string_view(bytes)); }

inline dmoe::byte_buffer pattern(std::size_t size, unsigned seed) {
  dmoe::byte_buffer out(size);
  std::mt19937 gen(seed);
  for (std::size_t i = 0; i + 4 <= size; i += 4) {
    const auto word = static_cast<std::uint32_t>(gen());
    std::memcpy(out.data() + i, &word, 4);
  }
  for (std::size_t i = size / 4 * 4; i < size; ++i) out[i] = static_cast<std::byte>(gen());
  return out;
}

inline dmoe::task<dmoe::net::rpc_response> echo_handler(dmoe::net::rpc_request& request) {
  co_return dmoe::net::rpc_response(std::move(request.payload));
}

// Runs `body` with `server` serving on the same context, then closes the client and shuts the server down,
// also when `body` throws (so a failed check never leaves coroutines behind).
template <class Body>
dmoe::task<void> with_server(dmoe::net::rpc_server& server, dmoe::net::rpc_client& client, Body body) {
  dmoe::task_group serving;
  serving.spawn(server.serve());
  std::exception_ptr failure;
  try {
    co_await body();
  } catch (...) {
    failure = std::current_exception();
  }
  co_await client.close();
  server.shutdown(std::chrono::milliseconds(0));
  co_await serving.join();
  if (failure) std::rethrow_exception(failure);
}

// An rpc_server on a thread (and io_context) of its own, as a remote server would be.
class server_thread {
 public:
  template <class Setup>
  server_thread(dmoe::net::rpc_server_options options, Setup setup) {
    std::promise<dmoe::endpoint> ready;
    auto address = ready.get_future();
    thread_ = std::thread([&, options] {
      bool announced = false;
      try {
        dmoe::io_context ctx;
        dmoe::net::rpc_server server(ctx, dmoe::endpoint::loopback_v4(0), options);
        setup(server);
        ctx_ = &ctx;
        server_ = &server;
        ready.set_value(server.local_endpoint());
        announced = true;
        dmoe::sync_wait(ctx, server.serve());
        stats_ = server.stats();
      } catch (...) {
        if (!announced) {
          ready.set_exception(std::current_exception());
        } else {
          failure_ = std::current_exception();
        }
      }
    });
    try {
      endpoint_ = address.get();
    } catch (...) {
      thread_.join();
      throw;
    }
  }
  server_thread(const server_thread&) = delete;
  server_thread& operator=(const server_thread&) = delete;
  ~server_thread() {
    try {
      stop();
    } catch (...) {
    }
  }

  const dmoe::endpoint& address() const noexcept { return endpoint_; }
  // The server's counters, once stopped.
  const dmoe::net::rpc_server::counters& stats() const noexcept { return stats_; }

  // Shuts the server down on its own thread and waits for it; rethrows what serve() threw.
  void stop() {
    if (!thread_.joinable()) return;
    if (ctx_) {
      dmoe::net::rpc_server* server = server_;
      ctx_->post([server] { server->shutdown(std::chrono::milliseconds(0)); });
    }
    thread_.join();
    if (failure_) std::rethrow_exception(std::exchange(failure_, nullptr));
  }

 private:
  std::thread thread_;
  dmoe::io_context* ctx_ = nullptr;
  dmoe::net::rpc_server* server_ = nullptr;
  dmoe::endpoint endpoint_;
  std::exception_ptr failure_;
  dmoe::net::rpc_server::counters stats_;
};

inline double elapsed_ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace dmoe_test
