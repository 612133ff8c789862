// Timing helpers for dmoe_bench_ops: best-of-N wall-clock runs, alternating two contenders, JSON number text.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace dmoe_bench {

using ops_clock = std::chrono::steady_clock;

inline double seconds_since(ops_clock::time_point start) {
  return std::chrono::duration<double>(ops_clock::now() - start).count();
}

// How long to measure one contender: at least min_runs timed calls and min_seconds in all, after `warmups` calls.
struct timing_budget {
  int warmups = 1;
  int min_runs = 3;
  double min_seconds = 0.3;
  int max_runs = 1000;
};

// The fastest of several timed calls: on a shared machine the minimum is the run least disturbed by others.
template <class F>
double best_seconds(F&& f, const timing_budget& budget) {
  for (int i = 0; i < budget.warmups; ++i) f();
  double best = std::numeric_limits<double>::infinity(), total = 0;
  for (int runs = 0; runs < budget.max_runs && (runs < budget.min_runs || total < budget.min_seconds); ++runs) {
    const auto start = ops_clock::now();
    f();
    const double dt = seconds_since(start);
    best = std::min(best, dt);
    total += dt;
  }
  return best;
}

// Idle OpenBLAS threads spin (sched_yield) for ~0.1 s after a call; let them sleep before timing someone else.
inline void let_openblas_threads_sleep() { std::this_thread::sleep_for(std::chrono::milliseconds(200)); }

// Best times of several contenders measured in turns for `rounds` rounds (warm-ups in the first round only), so
// that a change of load on the shared machine hits all of them alike. after(i) runs after contender i's turn.
inline std::vector<double> take_turns(const std::vector<std::function<void()>>& contenders, timing_budget budget,
                                      int rounds, const std::function<void(std::size_t)>& after = {}) {
  std::vector<double> best(contenders.size(), std::numeric_limits<double>::infinity());
  for (int r = 0; r < rounds; ++r) {
    for (std::size_t i = 0; i < contenders.size(); ++i) {
      best[i] = std::min(best[i], best_seconds(contenders[i], budget));
      if (after) after(i);
    }
    budget.warmups = 0;
  }
  return best;
}

// The 1-minute load average: how busy the shared machine was around a measurement.
inline double load_average() {
  std::ifstream in("/proc/loadavg");
  double one = 0;
  in >> one;
  return one;
}

// A finite number for JSON (NaN and infinities become null).
inline std::string json_number(double value, int precision = 3) {
  if (!std::isfinite(value)) return "null";
  return fmt::format("{:.{}f}", value, precision);
}

}  // namespace dmoe_bench
