// moe::network_thread: a trainer's network on a thread of its own (an io_context with a DHT node, an RPC client and
// an expert directory), so that code that is not a coroutine can run DMoE models with blocking calls.
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
#include <dmoe/moe/beam_search.hpp>
#include <dmoe/net/rpc_client.hpp>

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
namespace moe {

struct network_thread_options {
  dht::node_options dht{};                  // the trainer's DHT node (client_mode is a good choice for trainers)
  std::vector<endpoint> initial_peers{};    // the swarm to join; empty: start a new one
  std::chrono::milliseconds join_timeout{10'000};
  net::rpc_client_options rpc{};
  dht_directory_options directory{};
  // Fault injection on the expert calls (added latency, lost requests); null: none. The DHT's traffic is untouched.
  std::shared_ptr<net::fault_policy> faults{};
};

// Starts a thread with an io_context, a DHT node (joined to initial_peers), an RPC client and a DHT expert
// directory. run() executes a coroutine there and blocks until it ends; everything made from node(), client() and
// directory() (e.g. a remote_mixture_of_experts, a moe::model holding one) must be used inside run() only. The
// destructor (or shutdown()) cancels runs in progress, closes the client, shuts the node down and joins the thread.
class network_thread {
 public:
  // Throws what the node's constructor throws (invalid_argument_error, system_error when the bind fails), and
  // unavailable_error when initial peers were given and none answered within join_timeout.
  DMOE_DECL explicit network_thread(network_thread_options options = {});
  network_thread(const network_thread&) = delete;
  network_thread& operator=(const network_thread&) = delete;
  ~network_thread() { shutdown(); }

  // Runs make() on the network thread (make returns a task<T>; it may capture references to the caller's objects,
  // which the caller keeps alive: run blocks until the task has ended) and returns its result or rethrows its error.
  // Errors: closed_error after shutdown; invalid_argument_error from the network thread itself (it would wait for
  // itself); the task's errors (cancelled_error when shut down meanwhile).
  template <class Make>
  auto run(Make make) -> typename std::invoke_result_t<Make&>::value_type {
    using result = typename std::invoke_result_t<Make&>::value_type;
    if (std::this_thread::get_id() == thread_.get_id())
      throw invalid_argument_error("moe::network_thread: run() called on the network thread (co_await the task instead)");
    auto answer = dmoe::detail::make_handoff<result>();
    {
      std::lock_guard lock(post_mutex_);
      if (stopping_) throw closed_error("moe::network_thread is shut down");
      // Dropped unrun when the context ends first: the sender then answers handoff_abandoned.
      dmoe::detail::handoff_sender<result> sender(answer);
      ctx_->post([this, sender = std::move(sender), &make]() mutable {
        if (!runs_) {
          sender->set_exception(std::make_exception_ptr(closed_error("moe::network_thread is shut down")));
          return;
        }
        runs_->spawn(run_one<result>(make, std::move(sender)));
      });
    }
    try {
      return answer->get();
    } catch (const dmoe::detail::handoff_abandoned&) {
      throw closed_error("moe::network_thread shut down before the call ran");
    }
  }

  // Cancels runs in progress, closes the client, shuts the node down and joins the thread. Idempotent.
  DMOE_DECL void shutdown();

  // The objects are used on the network thread only (inside run()); passing the references to a constructor, or
  // reading a layer's stats between runs, is fine from any thread.
  dht::node& node() noexcept { return *node_; }
  net::rpc_client& client() noexcept { return *client_; }
  dht_expert_directory& directory() noexcept { return *directory_; }
  io_context& context() noexcept { return *ctx_; }
  // The DHT node's address (others may join the swarm through it unless it is in client mode).
  const endpoint& local_endpoint() const noexcept { return local_; }

 private:
  template <class Result, class Make>
  task<void> run_one(Make& make, dmoe::detail::handoff_sender<Result> answer) {
    try {
      if constexpr (std::is_void_v<Result>) {
        co_await make();
        answer->set_value();
      } else {
        answer->set_value(co_await make());
      }
    } catch (...) {
      answer->set_exception(std::current_exception());
    }
  }

  DMOE_DECL void thread_main(network_thread_options options, dmoe::detail::handoff<void>& ready);

  DMOE_DECL task<void> main(network_thread_options options, dmoe::detail::handoff<void>& ready);

  std::thread thread_;
  io_context* ctx_ = nullptr;
  dht::node* node_ = nullptr;
  net::rpc_client* client_ = nullptr;
  dht_expert_directory* directory_ = nullptr;
  task_group* runs_ = nullptr;  // touched only on the network thread
  async_event stop_;            // set on the network thread
  std::mutex post_mutex_;
  bool stopping_ = false;  // guarded by post_mutex_
  endpoint local_;
};

}  // namespace moe
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace moe {

DMOE_DEF network_thread::network_thread(network_thread_options options) {
  auto started = dmoe::detail::make_handoff<void>();
  thread_ = std::thread([this, options = std::move(options), ready = dmoe::detail::handoff_sender<void>(started)]() mutable {
    thread_main(std::move(options), *ready);
  });
  try {
    started->get();
  } catch (...) {
    thread_.join();
    throw;
  }
}

DMOE_DEF auto network_thread::shutdown() -> void {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(post_mutex_);
    if (!stopping_) {
      stopping_ = true;
      ctx_->post([this] { stop_.set(); });
    }
  }
  thread_.join();
}

DMOE_DEF auto network_thread::thread_main(network_thread_options options, dmoe::detail::handoff<void>& ready) -> void {
  std::optional<io_context> ctx;
  std::optional<dht::node> node;
  std::optional<net::rpc_client> client;
  std::optional<dht_expert_directory> directory;
  try {
    ctx.emplace();
    node.emplace(*ctx, options.dht);
    client.emplace(*ctx, options.rpc, options.faults);
    directory.emplace(*node, options.directory);
  } catch (...) {
    ready.set_exception(std::current_exception());
    return;
  }
  ctx_ = &*ctx;
  node_ = &*node;
  client_ = &*client;
  directory_ = &*directory;
  local_ = node->local_endpoint();
  ctx->run(main(std::move(options), ready));
}

DMOE_DEF auto network_thread::main(network_thread_options options, dmoe::detail::handoff<void>& ready) -> task<void> {
  task_group runs(*ctx_);
  std::exception_ptr failed;
  try {
    const auto joined = co_await node_->bootstrap(options.initial_peers, deadline_after(options.join_timeout));
    if (!joined.joined)
      throw unavailable_error(dmoe::format("moe::network_thread: none of the {} initial peers answered within {} ms",
                                          options.initial_peers.size(), options.join_timeout.count()));
  } catch (...) {
    failed = std::current_exception();
  }
  if (failed) {
    {
      std::lock_guard lock(post_mutex_);
      stopping_ = true;
    }
    co_await client_->close();
    co_await node_->shutdown();
    ready.set_exception(failed);
    co_return;
  }
  runs_ = &runs;
  ready.set_value();
  try {
    co_await stop_.wait();
  } catch (const cancelled_error&) {
  }
  runs_ = nullptr;
  runs.request_stop();
  co_await runs.join();
  co_await client_->close();
  co_await node_->shutdown();
}

}  // namespace moe
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
