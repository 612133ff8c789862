// dht::node_thread: a DHT node on its own thread and io_context, for code that is not a coroutine.
#pragma once

#include <dmoe/async/async_event.hpp>
#include <dmoe/async/detail/handoff.hpp>
#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/dht/node.hpp>

#include <chrono>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace dht {

// Runs a dht::node on a thread of its own; every method may be called from any thread and blocks until the node
// has answered (each call is a coroutine posted to the node's io_context). Timeouts are the node's deadlines, so a
// call returns within its timeout plus a scheduling delay. The destructor (or shutdown()) cancels calls in progress
// (they fail with cancelled_error), shuts the node down and joins the thread.
class node_thread {
 public:
  // Starts the thread and the node. Rethrows what the node's constructor threw (invalid_argument_error,
  // system_error when the bind fails).
  DMOE_DECL explicit node_thread(node_options options = {});
  node_thread(const node_thread&) = delete;
  node_thread& operator=(const node_thread&) = delete;
  ~node_thread() { shutdown(); }

  // node::bootstrap, with a timeout instead of a deadline.
  DMOE_DECL bootstrap_result bootstrap(std::vector<endpoint> initial_peers, std::chrono::milliseconds timeout = default_timeout);
  DMOE_DECL store_outcome store(key_id key, byte_buffer value, wall_seconds expiration,
                      std::chrono::milliseconds timeout = default_timeout);
  DMOE_DECL store_outcome store(key_id key, byte_buffer subkey, byte_buffer value, wall_seconds expiration,
                      std::chrono::milliseconds timeout = default_timeout);
  DMOE_DECL std::vector<store_outcome> store_many(std::vector<store_entry> entries,
                                        std::chrono::milliseconds timeout = default_timeout);
  DMOE_LAZY std::optional<record> get(key_id key, bool latest = false, std::chrono::milliseconds timeout = default_timeout) {
    const steady_time deadline = deadline_after(timeout);
    return call([=](node& n) { return n.get(key, latest, deadline); });
  }
  DMOE_DECL std::vector<get_result> get_many(std::vector<key_id> keys, bool latest = false,
                                   std::chrono::milliseconds timeout = default_timeout);
  DMOE_DECL node_stats stats();

  // Cancels calls in progress, shuts the node down and joins its thread. Idempotent; later calls throw closed_error.
  DMOE_DECL void shutdown();

  const node_id& id() const noexcept { return id_; }
  // The address others join with.
  const endpoint& local_endpoint() const noexcept { return local_; }

 private:
  static constexpr std::chrono::milliseconds default_timeout{10'000};

  template <class Make>
  auto call(Make make) -> typename std::invoke_result_t<Make&, node&>::value_type {
    using result = typename std::invoke_result_t<Make&, node&>::value_type;
    auto answer = dmoe::detail::make_handoff<result>();
    {
      // Posting and shutting down exclude each other: nothing is posted to a context that is gone.
      std::lock_guard lock(post_mutex_);
      if (stopping_) throw closed_error(dmoe::format("dht node {} is shut down", local_));
      // Dropped unrun when the context ends first: the sender then answers handoff_abandoned.
      dmoe::detail::handoff_sender<result> sender(answer);
      ctx_->post([this, sender = std::move(sender), make = std::move(make)]() mutable {
        if (!calls_) {
          sender->set_exception(std::make_exception_ptr(closed_error("dht node is shut down")));
          return;
        }
        calls_->spawn(run_call<result>(std::move(make), std::move(sender)));
      });
    }
    try {
      return answer->get();
    } catch (const dmoe::detail::handoff_abandoned&) {
      throw closed_error(dmoe::format("dht node {} shut down before the call ran", local_));
    }
  }

  template <class Result, class Make>
  task<void> run_call(Make make, dmoe::detail::handoff_sender<Result> answer) {
    try {
      answer->set_value(co_await make(*node_));
    } catch (...) {
      answer->set_exception(std::current_exception());
    }
  }

  DMOE_DECL void run(node_options options, dmoe::detail::handoff<void>& ready);

  DMOE_DECL task<void> main();

  std::thread thread_;
  io_context* ctx_ = nullptr;
  node* node_ = nullptr;
  task_group* calls_ = nullptr;  // touched only on the node's thread
  async_event stop_;             // set on the node's thread
  std::mutex post_mutex_;
  bool stopping_ = false;  // guarded by post_mutex_
  node_id id_;
  endpoint local_;
};

}  // namespace dht
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace dht {

DMOE_DEF node_thread::node_thread(node_options options) {
  auto started = dmoe::detail::make_handoff<void>();
  thread_ = std::thread([this, options = std::move(options), ready = dmoe::detail::handoff_sender<void>(started)]() mutable {
    run(std::move(options), *ready);
  });
  try {
    started->get();
  } catch (...) {
    thread_.join();
    throw;
  }
}

DMOE_DEF auto node_thread::bootstrap(std::vector<endpoint> initial_peers, std::chrono::milliseconds timeout)
    -> bootstrap_result {
  const steady_time deadline = deadline_after(timeout);
  return call([peers = std::move(initial_peers), deadline](node& n) mutable {
    return n.bootstrap(std::move(peers), deadline);
  });
}

DMOE_DEF auto node_thread::store(key_id key, byte_buffer value, wall_seconds expiration,
                    std::chrono::milliseconds timeout) -> store_outcome {
  const steady_time deadline = deadline_after(timeout);
  return call([=, value = std::move(value)](node& n) mutable {
    return n.store(key, std::move(value), expiration, deadline);
  });
}

DMOE_DEF auto node_thread::store(key_id key, byte_buffer subkey, byte_buffer value, wall_seconds expiration,
                    std::chrono::milliseconds timeout) -> store_outcome {
  const steady_time deadline = deadline_after(timeout);
  return call([=, subkey = std::move(subkey), value = std::move(value)](node& n) mutable {
    return n.store(key, std::move(subkey), std::move(value), expiration, deadline);
  });
}

DMOE_DEF auto node_thread::store_many(std::vector<store_entry> entries,
                                      std::chrono::milliseconds timeout) -> std::vector<store_outcome> {
  const steady_time deadline = deadline_after(timeout);
  return call([entries = std::move(entries), deadline](node& n) mutable {
    return n.store_many(std::move(entries), deadline);
  });
}

DMOE_DEF auto node_thread::get_many(std::vector<key_id> keys, bool latest,
                                 std::chrono::milliseconds timeout) -> std::vector<get_result> {
  const steady_time deadline = deadline_after(timeout);
  return call([keys = std::move(keys), latest, deadline](node& n) mutable {
    return n.get_many(std::move(keys), latest, deadline);
  });
}

DMOE_DEF auto node_thread::stats() -> node_stats {
  return call([](node& n) -> task<node_stats> { co_return n.stats(); });
}

DMOE_DEF auto node_thread::shutdown() -> void {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(post_mutex_);
    if (stopping_) return;
    stopping_ = true;
    ctx_->post([this] { stop_.set(); });
  }
  thread_.join();
}

DMOE_DEF auto node_thread::run(node_options options, dmoe::detail::handoff<void>& ready) -> void {
  std::optional<io_context> ctx;
  std::optional<node> n;
  try {
    ctx.emplace();
    n.emplace(*ctx, std::move(options));
  } catch (...) {
    ready.set_exception(std::current_exception());
    return;
  }
  ctx_ = &*ctx;
  node_ = &*n;
  id_ = n->id();
  local_ = n->local_endpoint();
  ready.set_value();
  ctx->run(main());
}

DMOE_DEF auto node_thread::main() -> task<void> {
  task_group calls(*ctx_);
  calls_ = &calls;
  try {
    co_await stop_.wait();
  } catch (const cancelled_error&) {
  }
  calls_ = nullptr;
  calls.request_stop();
  co_await calls.join();
  co_await node_->shutdown();
}

}  // namespace dht
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
