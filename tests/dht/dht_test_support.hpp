// Helpers of the DHT node tests: one loopback address per node, fast timeouts, swarms that always shut down.
#pragma once

#include <dmoe/async/io_context.hpp>
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/dht/node.hpp>

#include <atomic>
#include <chrono>
#include <exception>
#include <memory>
#include <random>
#include <vector>

#include <fmt/format.h>

namespace dmoe_test {

// A fresh 127.a.b.c address per call (port 0): nodes differ by IP address, as per-source limits see them.
inline dmoe::endpoint next_loopback() {
  static std::atomic<unsigned> counter{0};
  const unsigned n = counter.fetch_add(1);
  return dmoe::endpoint(fmt::format("127.{}.{}.{}", 20 + n / 62500 % 200, n / 250 % 250, n % 250 + 1), 0);
}

// Options with timeouts short enough for tests on loopback.
inline dmoe::dht::node_options fast_options() {
  using namespace std::chrono_literals;
  dmoe::dht::node_options o;
  o.listen = next_loopback();
  o.datagram.attempt_timeout = 100ms;
  o.datagram.max_attempts = 2;
  o.datagram.receive_buffer = 8192;
  o.rpc_timeout = 250ms;
  o.default_timeout = 5s;
  o.bootstrap_retry_pause = 20ms;
  return o;
}

// Nodes on one io_context; run() shuts every node down after the body, also when it throws.
class swarm {
 public:
  explicit swarm(dmoe::io_context& ctx) : ctx_(ctx) {}

  dmoe::dht::node& add(dmoe::dht::node_options options = fast_options()) {
    if (options.listen.port() == 0 && options.listen == dmoe::endpoint::loopback_v4(0)) options.listen = next_loopback();
    nodes_.push_back(std::make_unique<dmoe::dht::node>(ctx_, options));
    return *nodes_.back();
  }

  // Adds `count` nodes, each joining through up to 3 random earlier ones; returns how many joined.
  dmoe::task<std::size_t> grow(std::size_t count, dmoe::dht::node_options options = fast_options()) {
    std::size_t joined = 0;
    for (std::size_t i = 0; i < count; ++i) {
      std::vector<dmoe::endpoint> peers;
      std::vector<dmoe::dht::node*> alive;
      for (auto& n : nodes_)
        if (!n->is_shut_down()) alive.push_back(n.get());
      std::uniform_int_distribution<std::size_t> pick(0, alive.empty() ? 0 : alive.size() - 1);
      for (std::size_t j = 0; j < 3 && !alive.empty(); ++j) peers.push_back(alive[pick(random_)]->local_endpoint());
      options.listen = next_loopback();
      dmoe::dht::node& fresh = add(options);
      const auto result = co_await fresh.bootstrap(peers);
      if (result.joined) ++joined;
    }
    co_return joined;
  }

  template <class Body>
  dmoe::task<void> run(Body body) {
    std::exception_ptr failure;
    try {
      co_await body();
    } catch (...) {
      failure = std::current_exception();
    }
    for (auto& n : nodes_) co_await n->shutdown();
    if (failure) std::rethrow_exception(failure);
  }

  dmoe::dht::node& operator[](std::size_t i) { return *nodes_[i]; }
  std::size_t size() const noexcept { return nodes_.size(); }
  std::vector<std::unique_ptr<dmoe::dht::node>>& nodes() noexcept { return nodes_; }
  std::mt19937_64& random() noexcept { return random_; }

 private:
  dmoe::io_context& ctx_;
  std::vector<std::unique_ptr<dmoe::dht::node>> nodes_;
  std::mt19937_64 random_{20240610};
};

// Waits until `condition()` holds, checking every 5 ms, for at most `timeout`; returns whether it held. For
// effects that happen in the background (hand-overs), with a bound instead of a fixed sleep.
template <class Condition>
dmoe::task<bool> eventually(Condition condition, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= deadline) co_return false;
    co_await dmoe::sleep_for(std::chrono::milliseconds(5));
  }
  co_return true;
}

// A vector of one element (g++ 12 mishandles braced lists inside co_await expressions).
template <class T>
std::vector<T> list(T item) {
  std::vector<T> out;
  out.push_back(std::move(item));
  return out;
}

inline double now_wall() { return dmoe::default_clock().wall_now(); }

}  // namespace dmoe_test
