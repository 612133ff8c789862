// The CPU's FMA peak: every thread running independent register-only FMA chains, the ceiling no GEMM can pass.
#pragma once

#include <dmoe/core/simd.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace dmoe_bench {

namespace detail {

// GFLOP/s of one thread doing `iterations` steps of twelve independent FMA chains.
inline double fma_chains_gflops(std::int64_t iterations) {
#if defined(__AVX512F__) || defined(__AVX2__)
#if defined(__AVX512F__)
  using vec = __m512;
  constexpr int lanes = 16;
  const auto fma = [](vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); };
  const vec scale = _mm512_set1_ps(0.9999f), shift = _mm512_set1_ps(1e-4f);
  const auto start_at = [](int i) { return _mm512_set1_ps(0.01f * static_cast<float>(i)); };
#else
  using vec = __m256;
  constexpr int lanes = 8;
  const auto fma = [](vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); };
  const vec scale = _mm256_set1_ps(0.9999f), shift = _mm256_set1_ps(1e-4f);
  const auto start_at = [](int i) { return _mm256_set1_ps(0.01f * static_cast<float>(i)); };
#endif
  // Distinct starting values: identical chains would be folded into one by the compiler.
  vec c0 = start_at(0), c1 = start_at(1), c2 = start_at(2), c3 = start_at(3), c4 = start_at(4), c5 = start_at(5);
  vec c6 = start_at(6), c7 = start_at(7), c8 = start_at(8), c9 = start_at(9), c10 = start_at(10), c11 = start_at(11);
  const auto start = std::chrono::steady_clock::now();
  for (std::int64_t i = 0; i < iterations; ++i) {
    c0 = fma(c0, scale, shift), c1 = fma(c1, scale, shift), c2 = fma(c2, scale, shift);
    c3 = fma(c3, scale, shift), c4 = fma(c4, scale, shift), c5 = fma(c5, scale, shift);
    c6 = fma(c6, scale, shift), c7 = fma(c7, scale, shift), c8 = fma(c8, scale, shift);
    c9 = fma(c9, scale, shift), c10 = fma(c10, scale, shift), c11 = fma(c11, scale, shift);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  alignas(64) float sink[lanes];
  const vec all = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11;
  std::copy_n(reinterpret_cast<const float*>(&all), lanes, sink);
  volatile float keep = sink[0];
  (void)keep;
  return static_cast<double>(iterations) * 12 * lanes * 2 / seconds / 1e9;
#else
  (void)iterations;
  return NAN;
#endif
}

}  // namespace detail

// The FMA peak of `threads` threads together (best of a few short runs; NaN without AVX2/AVX-512 at build time).
inline double fma_peak_gflops(int threads) {
  double best = 0;
  for (int round = 0; round < 3; ++round) {
    std::vector<double> per(static_cast<std::size_t>(threads));
    std::vector<std::thread> workers;
    for (int t = 1; t < threads; ++t)
      workers.emplace_back([&per, t] { per[static_cast<std::size_t>(t)] = detail::fma_chains_gflops(50'000'000); });
    per[0] = detail::fma_chains_gflops(50'000'000);
    for (auto& w : workers) w.join();
    double total = 0;
    for (double g : per) total += g;
    best = std::max(best, total);
  }
  return best;
}

}  // namespace dmoe_bench
