// server::background_server: a server on threads of its own (a network thread with its io_context, and the
// runtime's compute thread), started and stopped from ordinary code: for tests, examples and benchmarks.
#pragma once

#include <dmoe/async/detail/handoff.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/server/server.hpp>

#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

DMOE_BEGIN_NAMESPACE
namespace server {

class background_server {
 public:
  // Starts the threads and the server, and returns once it serves. Rethrows what the server's constructor threw.
  DMOE_DECL explicit background_server(server_options options);
  background_server(const background_server&) = delete;
  background_server& operator=(const background_server&) = delete;
  ~background_server() { stop(); }

  // Finishes requests in flight, writes the final checkpoint, leaves the DHT and joins the threads. Idempotent;
  // rethrows what the server's run() threw, once.
  DMOE_DECL void stop();

  const endpoint& rpc_endpoint() const noexcept { return rpc_; }
  const std::optional<endpoint>& dht_endpoint() const noexcept { return dht_; }
  // Thread-safe parts of the server: its runtime (statistics, run_exclusive) and its experts' fixed properties.
  // Valid until stop() returns.
  server& get() noexcept { return *server_; }

 private:
  DMOE_DECL void main(server_options options, dmoe::detail::handoff<void>& ready);

  std::thread thread_;
  std::mutex mutex_;
  bool stopping_ = false;
  io_context* ctx_ = nullptr;
  server* server_ = nullptr;
  endpoint rpc_;
  std::optional<endpoint> dht_;
  std::exception_ptr failure_;
};

}  // namespace server
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace server {

DMOE_DEF background_server::background_server(server_options options) {
  auto started = dmoe::detail::make_handoff<void>();
  thread_ = std::thread([this, options = std::move(options), ready = dmoe::detail::handoff_sender<void>(started)]() mutable {
    main(std::move(options), *ready);
  });
  try {
    started->get();
  } catch (...) {
    thread_.join();
    throw;
  }
}

DMOE_DEF auto background_server::stop() -> void {
  // Held while joining (the server's threads never take it): a second thread stopping at once waits here.
  std::lock_guard lock(mutex_);
  if (!thread_.joinable()) return;
  if (!stopping_) {
    stopping_ = true;
    ctx_->post([this] { server_->request_shutdown(); });
  }
  thread_.join();
  if (failure_) std::rethrow_exception(std::exchange(failure_, nullptr));
}

DMOE_DEF auto background_server::main(server_options options, dmoe::detail::handoff<void>& ready) -> void {
  std::optional<io_context> ctx;
  // (Not std::optional<server>: its constexpr emplace makes clang instantiate the server's constructor, and through
  // it every expert kind, GEMM included, in each file that includes this header.)
  std::unique_ptr<server> s;
  try {
    ctx.emplace();
    s.reset(new server(*ctx, std::move(options)));
  } catch (...) {
    ready.set_exception(std::current_exception());
    return;
  }
  ctx_ = &*ctx;
  server_ = &*s;
  rpc_ = s->rpc_endpoint();
  dht_ = s->dht_endpoint();
  bool announced = false;
  try {
    ctx->run(s->run([&] {
      announced = true;
      ready.set_value();
    }));
  } catch (...) {
    if (!announced) ready.set_exception(std::current_exception());
    else failure_ = std::current_exception();
  }
}

}  // namespace server
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
