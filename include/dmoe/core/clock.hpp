// Clocks: steady time for timers, wall-clock seconds for expirations; replaceable in tests.
#pragma once

#include <dmoe/core/config.hpp>

#include <atomic>
#include <chrono>

DMOE_BEGIN_NAMESPACE

using steady_time = std::chrono::steady_clock::time_point;
// The deadline of an operation that may wait forever.
inline constexpr steady_time no_deadline = steady_time::max();

// `when + timeout`, saturating: a sum past the clock's range (e.g. `milliseconds::max()`, `hours::max()`) is
// no_deadline, and a negative timeout is `when`. Every deadline computation goes through here.
template <class Rep, class Period>
constexpr steady_time deadline_from(steady_time when, std::chrono::duration<Rep, Period> timeout) noexcept {
  using ticks = steady_time::duration;
  if (when == no_deadline) return no_deadline;
  if (timeout <= std::chrono::duration<Rep, Period>::zero()) return when;
  // Compared in floating point, so the conversion itself cannot overflow.
  const long double room = (static_cast<long double>(no_deadline.time_since_epoch().count()) -
                           static_cast<long double>(when.time_since_epoch().count())) *
                          ticks::period::num / ticks::period::den;
  const long double wanted = static_cast<long double>(timeout.count()) * Period::num / Period::den;
  if (wanted >= room) return no_deadline;
  return when + std::chrono::duration_cast<ticks>(timeout);
}

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
DMOE_LAZY inline const clock_source& default_clock() noexcept {
  static const system_clock instance;
  return instance;
}

// A clock that moves only when told to; safe to read from several threads.
class manual_clock final : public clock_source {
 public:
  explicit manual_clock(wall_seconds wall_start = 1.0e9) : wall_(wall_start) {}

  steady_time steady_now() const override { return steady_time(std::chrono::nanoseconds(steady_ns_.load())); }
  wall_seconds wall_now() const override { return wall_.load(); }

  DMOE_LAZY void advance(std::chrono::nanoseconds by) {
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
