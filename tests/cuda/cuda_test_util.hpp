// Helpers of the CUDA tests: random tensors, copies between devices, and comparisons of a CUDA result with its CPU
// twin under a stated tolerance (|gpu - cpu| <= atol + rtol * |cpu| for every element).
#pragma once

#include <dmoe/ops/cuda.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>

namespace dmoe::testing {

inline tensor dev(const tensor& t) { return t.to(device::cuda); }
inline tensor host(const tensor& t) { return t.to(device::host); }

// Fails with the worst element when gpu (any device) and cpu differ beyond the tolerance.
inline void expect_close(const tensor& gpu, const tensor& cpu, double rtol, double atol, const std::string& what) {
  const tensor g = host(gpu);
  BOOST_REQUIRE_MESSAGE(g.shape() == cpu.shape(), what << ": shape " << g.shape() << " vs " << cpu.shape());
  const float* a = g.data<float>();
  const float* b = cpu.data<float>();
  double worst = 0.0;
  std::int64_t at = -1;
  for (std::int64_t i = 0; i < cpu.numel(); ++i) {
    if (std::isnan(b[i]) && std::isnan(a[i])) continue;
    const double excess = std::fabs(double(a[i]) - b[i]) - (atol + rtol * std::fabs(double(b[i])));
    if (!(excess <= worst)) {
      worst = std::isnan(excess) ? INFINITY : excess;
      at = i;
    }
  }
  BOOST_CHECK_MESSAGE(at < 0, what << ": element " << at << " is " << (at < 0 ? 0.f : a[at]) << " on CUDA but "
                                   << (at < 0 ? 0.f : b[at]) << " on the CPU (rtol " << rtol << ", atol " << atol
                                   << ")");
}

inline void expect_equal_i64(const tensor& gpu, const tensor& cpu, const std::string& what) {
  const tensor g = host(gpu);
  BOOST_REQUIRE_MESSAGE(g.shape() == cpu.shape(), what << ": shape " << g.shape() << " vs " << cpu.shape());
  for (std::int64_t i = 0; i < cpu.numel(); ++i)
    if (g.data<std::int64_t>()[i] != cpu.data<std::int64_t>()[i]) {
      BOOST_ERROR(what << ": element " << i << " is " << g.data<std::int64_t>()[i] << " on CUDA but "
                       << cpu.data<std::int64_t>()[i] << " on the CPU");
      return;
    }
}

inline tensor random_ids(shape s, std::int64_t limit, random_engine& gen) {
  tensor t = tensor::uninitialized(s, dtype::i64);
  std::uniform_int_distribution<std::int64_t> dist(0, limit - 1);
  for (auto& v : t.span<std::int64_t>()) v = dist(gen);
  return t;
}

// Row counts and widths every kernel is tried on: single rows, odd counts, widths not a multiple of 4.
inline constexpr std::int64_t test_rows[] = {1, 17, 1023};
inline constexpr std::int64_t test_cols[] = {1, 7, 33, 130};

}  // namespace dmoe::testing
