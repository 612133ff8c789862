// Fault injection for tests and experiments: added one-way latency, message loss, partitions between address
// groups, and stalls (accept but never answer). RPC clients, servers and datagram endpoints hold an optional
// policy; without one they pay a single null check.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace net {

enum class delay_distribution : std::uint8_t { none, exponential, weibull };

// Delay = constant + a random part drawn from the distribution.
struct latency_model {
  std::chrono::nanoseconds constant{0};
  delay_distribution distribution = delay_distribution::none;
  std::chrono::nanoseconds scale{0};  // exponential: the mean; Weibull: the scale λ
  double shape = 1.0;                 // Weibull: the shape k (1 is exponential, < 1 heavy-tailed)

  static latency_model fixed(std::chrono::nanoseconds delay) { return {delay}; }
  static latency_model exponential(std::chrono::nanoseconds constant, std::chrono::nanoseconds mean) {
    return {constant, delay_distribution::exponential, mean};
  }
  static latency_model weibull(std::chrono::nanoseconds constant, std::chrono::nanoseconds scale, double shape) {
    return {constant, delay_distribution::weibull, scale, shape};
  }

  // The expected delay.
  DMOE_DECL std::chrono::nanoseconds mean() const noexcept;
};

// What to do with one message.
struct fault_decision {
  bool drop = false;
  std::chrono::nanoseconds delay{0};
};

// A seeded policy; safe to share between endpoints on different threads.
class fault_policy {
 public:
  explicit fault_policy(std::uint64_t seed = 1) : random_(seed) {}

  DMOE_DECL fault_policy& set_latency(const latency_model& model);
  DMOE_DECL fault_policy& set_loss(double probability);
  // A stalled endpoint accepts connections and requests but never answers.
  DMOE_LAZY fault_policy& set_stall(bool stalled = true) {
    stalled_.store(stalled, std::memory_order_relaxed);
    return *this;
  }
  // Messages between an address in `a` and one in `b` (either direction) are dropped. An entry is a host
  // ("127.0.0.5", matching every port) or an endpoint ("127.0.0.5:4100").
  DMOE_LAZY fault_policy& add_partition(std::vector<std::string> a, std::vector<std::string> b) {
    std::lock_guard lock(mutex_);
    partitions_.push_back({std::move(a), std::move(b)});
    return *this;
  }
  DMOE_LAZY fault_policy& heal() {
    std::lock_guard lock(mutex_);
    partitions_.clear();
    return *this;
  }

  bool stalled() const noexcept { return stalled_.load(std::memory_order_relaxed); }

  // The fate of one message from `from` to `to` (endpoint texts such as "127.0.0.5:4100").
  DMOE_DECL fault_decision on_send(std::string_view from, std::string_view to);

  // A delay drawn from the latency model alone (no loss, no partition).
  DMOE_LAZY std::chrono::nanoseconds sample_delay() {
    std::lock_guard lock(mutex_);
    return sample_delay_locked();
  }

  DMOE_LAZY bool partitioned(std::string_view from, std::string_view to) const {
    std::lock_guard lock(mutex_);
    return partitioned_locked(from, to);
  }

  struct counters {
    std::uint64_t sent = 0;     // messages decided on
    std::uint64_t dropped = 0;  // of them, dropped by loss or partition
    std::chrono::nanoseconds total_delay{0};  // added to the others
  };
  DMOE_LAZY counters stats() const {
    std::lock_guard lock(mutex_);
    return {sent_, dropped_, total_delay_};
  }

 private:
  struct partition {
    std::vector<std::string> a, b;
  };

  DMOE_DECL static bool matches(const std::vector<std::string>& group, std::string_view address);

  DMOE_LAZY bool partitioned_locked(std::string_view from, std::string_view to) const {
    for (const auto& p : partitions_)
      if ((matches(p.a, from) && matches(p.b, to)) || (matches(p.b, from) && matches(p.a, to))) return true;
    return false;
  }

  DMOE_DECL std::chrono::nanoseconds sample_delay_locked();

  mutable std::mutex mutex_;
  std::mt19937_64 random_;
  std::uniform_real_distribution<double> uniform_{0.0, 1.0};
  latency_model latency_;
  double loss_ = 0.0;
  std::atomic<bool> stalled_{false};
  std::vector<partition> partitions_;
  std::uint64_t sent_ = 0;
  std::uint64_t dropped_ = 0;
  std::chrono::nanoseconds total_delay_{0};
};

}  // namespace net
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace net {

DMOE_DEF auto latency_model::mean() const noexcept -> std::chrono::nanoseconds {
  double random_part = 0;
  if (distribution == delay_distribution::exponential) random_part = static_cast<double>(scale.count());
  if (distribution == delay_distribution::weibull)
    random_part = static_cast<double>(scale.count()) * std::tgamma(1.0 + 1.0 / shape);
  return constant + std::chrono::nanoseconds(static_cast<std::int64_t>(random_part));
}

DMOE_DEF auto fault_policy::set_latency(const latency_model& model) -> fault_policy& {
  if (model.constant.count() < 0 || model.scale.count() < 0 || !(model.shape > 0))
    throw invalid_argument_error(dmoe::format("fault policy: latency needs non-negative times and a positive shape "
                                             "(constant {} ns, scale {} ns, shape {})",
                                             model.constant.count(), model.scale.count(), model.shape));
  std::lock_guard lock(mutex_);
  latency_ = model;
  return *this;
}

DMOE_DEF auto fault_policy::set_loss(double probability) -> fault_policy& {
  if (!(probability >= 0.0 && probability <= 1.0))
    throw invalid_argument_error(dmoe::format("fault policy: loss probability {} is outside [0, 1]", probability));
  std::lock_guard lock(mutex_);
  loss_ = probability;
  return *this;
}

DMOE_DEF auto fault_policy::on_send(std::string_view from, std::string_view to) -> fault_decision {
  std::lock_guard lock(mutex_);
  ++sent_;
  fault_decision d;
  if (partitioned_locked(from, to) || (loss_ > 0.0 && uniform_(random_) < loss_)) {
    d.drop = true;
    ++dropped_;
    return d;
  }
  d.delay = sample_delay_locked();
  total_delay_ += d.delay;
  return d;
}

DMOE_DEF auto fault_policy::matches(const std::vector<std::string>& group, std::string_view address) -> bool {
  const auto colon = address.rfind(':');
  const std::string_view host = colon == std::string_view::npos ? address : address.substr(0, colon);
  return std::any_of(group.begin(), group.end(), [&](const std::string& entry) {
    return entry == address || entry == host;
  });
}

DMOE_DEF auto fault_policy::sample_delay_locked() -> std::chrono::nanoseconds {
  double random_part = 0;
  switch (latency_.distribution) {
    case delay_distribution::none: break;
    case delay_distribution::exponential:
      random_part = std::exponential_distribution<double>(1.0)(random_) * static_cast<double>(latency_.scale.count());
      break;
    case delay_distribution::weibull:
      random_part = std::weibull_distribution<double>(latency_.shape, static_cast<double>(latency_.scale.count()))(random_);
      break;
  }
  // Heavy tails are cut at an hour so a delay always fits a timer.
  random_part = std::min(random_part, 3.6e12);
  return latency_.constant + std::chrono::nanoseconds(static_cast<std::int64_t>(random_part));
}

}  // namespace net
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
