// Memory-bound ops for dmoe_bench_ops: layer norm, softmax and Adam in GB/s against memcpy moving the same bytes.
//
// Bytes count each tensor an op must read or write once (compulsory traffic): layer norm forward reads x and
// writes y (plus 8 bytes of mean and 1/std per row), its backward reads x and dy and writes dx, softmax reads x and
// writes y, Adam reads param, grad, m, v and writes param, m, v (7 floats per element). memcpy of S bytes moves
// 2S (a read and a write). Tensors are 64 MiB each, beyond the 32 MiB L3, so this is DRAM bandwidth.
#pragma once

#include "ops_timing.hpp"

#include <dmoe/ops/cpu/layer_norm.hpp>
#include <dmoe/ops/cpu/optimizer.hpp>
#include <dmoe/ops/cpu/parallel.hpp>
#include <dmoe/ops/cpu/softmax.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace dmoe_bench {

struct memory_op_result {
  std::string op;
  std::int64_t rows = 0, cols = 0;
  double bytes = 0;
  double seconds = 0;
  int threads = 1;
  double gbps() const { return bytes / seconds / 1e9; }
};

// A memcpy split over `threads` threads of dmoe's pool (1: the calling thread alone).
inline void parallel_memcpy(float* dst, const float* src, std::int64_t count, int threads) {
  if (threads <= 1) {
    std::memcpy(dst, src, static_cast<std::size_t>(count) * sizeof(float));
    return;
  }
  dmoe::ops::detail::parallel_for(threads, 1, [&](std::int64_t begin, std::int64_t end) {
    const std::int64_t from = count * begin / threads, to = count * end / threads;
    std::memcpy(dst + from, src + from, static_cast<std::size_t>(to - from) * sizeof(float));
  });
}

struct memory_bench {
  std::int64_t rows = 16384, cols = 1024;
  timing_budget budget{.warmups = 1, .min_runs = 5, .min_seconds = 0.3};

  // memcpy of one [rows, cols] tensor with 1 thread and with all of dmoe's threads; the faster is the baseline.
  std::vector<memory_op_result> memcpy_baselines() const {
    const std::int64_t count = rows * cols;
    dmoe::tensor src(dmoe::shape{count}), dst(dmoe::shape{count});
    std::vector<int> thread_counts = {1};
    if (dmoe::ops::cpu_threads() > 1) thread_counts.push_back(dmoe::ops::cpu_threads());
    std::vector<memory_op_result> out;
    for (int threads : thread_counts) {
      const double s =
          best_seconds([&] { parallel_memcpy(dst.data<float>(), src.data<float>(), count, threads); }, budget);
      out.push_back({"memcpy", count, 1, 2.0 * static_cast<double>(count) * sizeof(float), s, threads});
    }
    return out;
  }

  std::vector<memory_op_result> run() const {
    using namespace dmoe;
    random_engine gen(11);
    const double n = static_cast<double>(rows * cols);
    const int threads = ops::cpu_threads();
    std::vector<memory_op_result> out;
    {
      tensor x = tensor::normal(shape{rows, cols}, gen), dy = tensor::normal(shape{rows, cols}, gen);
      tensor gamma = tensor::uniform(shape{cols}, gen, 0.5f, 1.5f), beta = tensor::uniform(shape{cols}, gen, -0.1f, 0.1f);
      tensor y(shape{rows, cols}), dx(shape{rows, cols}), mean(shape{rows}), rstd(shape{rows}), dgamma(shape{cols}),
          dbeta(shape{cols});
      out.push_back({"layer_norm_forward", rows, cols, 8.0 * n + 8.0 * rows,
                     best_seconds([&] { ops::layer_norm_forward(ops::cpu, x, gamma, beta, 1e-5f, y, mean, rstd); }, budget),
                     threads});
      out.push_back({"layer_norm_backward", rows, cols, 12.0 * n + 8.0 * rows,
                     best_seconds([&] { ops::layer_norm_backward(ops::cpu, x, gamma, mean, rstd, dy, dx, dgamma, dbeta); },
                                  budget),
                     threads});
      out.push_back({"softmax", rows, cols, 8.0 * n, best_seconds([&] { ops::softmax(ops::cpu, x, y); }, budget), threads});
    }
    {
      tensor param = tensor::normal(shape{rows * cols}, gen), grad = tensor::normal(shape{rows * cols}, gen);
      tensor m(shape{rows * cols}), v(shape{rows * cols});
      std::int64_t step = 0;
      out.push_back({"adam_step", rows * cols, 1, 28.0 * n,
                     best_seconds([&] { ops::adam_step(ops::cpu, param, grad, m, v, ++step, ops::adam_hyper{}); }, budget),
                     1});
    }
    return out;
  }
};

}  // namespace dmoe_bench
