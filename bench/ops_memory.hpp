// Memory-bound ops for dmoe_bench_ops: layer norm, softmax and Adam in GB/s against memcpy moving the same bytes.
//
// Bytes count each tensor an op must read or write once (compulsory traffic): layer norm forward reads x and
// writes y (plus 8 bytes of mean and 1/std per row), its backward reads x and dy and writes dx, softmax reads x and
// writes y, Adam reads param, grad, m, v and writes param, m, v (7 floats per element). memcpy of S bytes moves
// 2S (a read and a write); each op's baseline copies half its bytes, with one thread and with all of dmoe's
// threads, in turns with the op, and the faster copy counts. Tensors are 64 MiB each, beyond the 32 MiB L3.
#pragma once

#include "ops_timing.hpp"

#include <dmoe/ops/cpu/layer_norm.hpp>
#include <dmoe/ops/cpu/optimizer.hpp>
#include <dmoe/ops/cpu/parallel.hpp>
#include <dmoe/ops/cpu/softmax.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace dmoe_bench {

struct memory_op_result {
  std::string op;
  std::int64_t rows = 0, cols = 0;
  double bytes = 0;
  double seconds = 0;
  int threads = 1;
  double memcpy_seconds = 0;
  int memcpy_threads = 1;
  double gbps() const { return bytes / seconds / 1e9; }
  double memcpy_gbps() const { return bytes / memcpy_seconds / 1e9; }
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
  timing_budget budget{.warmups = 1, .min_runs = 5, .min_seconds = 0.2};
  int rounds = 2;

  std::vector<memory_op_result> run() const {
    using namespace dmoe;
    random_engine gen(11);
    const std::int64_t n = rows * cols;
    const int threads = ops::cpu_threads();
    // Large enough for the op moving the most bytes (Adam: 28 bytes per element, half of it copied).
    tensor copy_src(shape{7 * n / 2}), copy_dst(shape{7 * n / 2});
    std::vector<memory_op_result> out;
    const auto measure = [&](memory_op_result r, const std::function<void()>& op) {
      const auto count = static_cast<std::int64_t>(r.bytes / 2 / sizeof(float));
      std::vector<std::function<void()>> contenders = {
          op, [&] { parallel_memcpy(copy_dst.data<float>(), copy_src.data<float>(), count, 1); }};
      if (threads > 1)
        contenders.push_back([&] { parallel_memcpy(copy_dst.data<float>(), copy_src.data<float>(), count, threads); });
      const std::vector<double> best = take_turns(contenders, budget, rounds);
      r.seconds = best[0];
      const auto fastest_copy = std::min_element(best.begin() + 1, best.end());
      r.memcpy_seconds = *fastest_copy;
      r.memcpy_threads = fastest_copy == best.begin() + 1 ? 1 : threads;
      out.push_back(r);
    };
    {
      tensor x = tensor::normal(shape{rows, cols}, gen), dy = tensor::normal(shape{rows, cols}, gen);
      tensor gamma = tensor::uniform(shape{cols}, gen, 0.5f, 1.5f), beta = tensor::uniform(shape{cols}, gen, -0.1f, 0.1f);
      tensor y(shape{rows, cols}), dx(shape{rows, cols}), mean(shape{rows}), rstd(shape{rows}), dgamma(shape{cols}),
          dbeta(shape{cols});
      const double rn = static_cast<double>(rows);
      measure({"layer_norm_forward", rows, cols, 8.0 * n + 8.0 * rn, 0, threads},
              [&] { ops::layer_norm_forward(ops::cpu, x, gamma, beta, 1e-5f, y, mean, rstd); });
      measure({"layer_norm_backward", rows, cols, 12.0 * n + 8.0 * rn, 0, threads},
              [&] { ops::layer_norm_backward(ops::cpu, x, gamma, mean, rstd, dy, dx, dgamma, dbeta); });
      measure({"softmax", rows, cols, 8.0 * n, 0, threads}, [&] { ops::softmax(ops::cpu, x, y); });
    }
    {
      tensor param = tensor::normal(shape{n}, gen), grad = tensor::normal(shape{n}, gen);
      tensor m(shape{n}), v(shape{n});
      std::int64_t step = 0;
      // adam_step has no parallel loop: one thread.
      measure({"adam_step", n, 1, 28.0 * n, 0, 1},
              [&] { ops::adam_step(ops::cpu, param, grad, m, v, ++step, ops::adam_hyper{}); });
    }
    return out;
  }
};

}  // namespace dmoe_bench
