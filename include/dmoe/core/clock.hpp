// Clocks: steady time for timers, wall-clock seconds for expirations; replaceable in tests.
#pragma once

#include <dmoe/core/config.hpp>

#include <atomic>
#include <chrono>

DMOE_BEGIN_NAMESPACE

using steady_time = std::chrono::steady_clock::time_point;
// Seconds since the Unix epoch; what DHT peers compare (with a bounded skew).
using wall_seconds = double;

class clock_source {
 public:
  virtual ~clock_source() = default;
  virtual steady_time steady_now() const = 0;
  virtual wall_seconds wall_now() const = 0;
};

class system_clock final : public clock_source {
 public:
  steady_time steady_now() const override { return std::chrono::steady_clock::now(); }
  wall_seconds wall_now() const override {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  }
};

// The process-wide real clock.
inline const clock_source& default_clock() noexcept {
  static const system_clock instance;
  return instance;
}

// A clock that moves only when told to; safe to read from several threads.
class manual_clock final : public clock_source {
 public:
  explicit manual_clock(wall_seconds wall_start = 1.0e9) : wall_(wall_start) {}

  steady_time steady_now() const override { return steady_time(std::chrono::nanoseconds(steady_ns_.load())); }
  wall_seconds wall_now() const override { return wall_.load(); }

  void advance(std::chrono::nanoseconds by) {
    steady_ns_.fetch_add(by.count());
    wall_seconds old = wall_.load();
    while (!wall_.compare_exchange_weak(old, old + std::chrono::duration<double>(by).count())) {
    }
  }
  void set_wall(wall_seconds now) { wall_.store(now); }

 private:
  std::atomic<std::int64_t> steady_ns_{0};
  std::atomic<wall_seconds> wall_;
};

DMOE_END_NAMESPACE
