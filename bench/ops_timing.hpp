// Timing helpers for dmoe_bench_ops: best-of-N wall-clock runs, alternating two contenders, JSON number text.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <string>
#include <thread>
#include <utility>

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

// Best times of two contenders measured alternately for `rounds` rounds, so load changes hit both alike.
// `after_b` runs after each of b's turns (e.g. let_openblas_threads_sleep).
template <class A, class B, class After>
std::pair<double, double> alternate_best(A&& a, B&& b, const timing_budget& budget, int rounds, After&& after_b) {
  double best_a = std::numeric_limits<double>::infinity(), best_b = best_a;
  for (int r = 0; r < rounds; ++r) {
    best_a = std::min(best_a, best_seconds(a, budget));
    best_b = std::min(best_b, best_seconds(b, budget));
    after_b();
  }
  return {best_a, best_b};
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
