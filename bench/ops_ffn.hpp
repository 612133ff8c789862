// The ffn expert for dmoe_bench_ops: its FLOP count, seeded instances and inputs, and a per-op time breakdown.
#pragma once

#include "ops_openblas.hpp"
#include "ops_timing.hpp"

#include <dmoe/nn/experts.hpp>
#include <dmoe/ops/cpu/activation.hpp>
#include <dmoe/ops/cpu/elementwise.hpp>
#include <dmoe/ops/cpu/gemm.hpp>
#include <dmoe/ops/cpu/layer_norm.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace dmoe_bench {

// GEMM FLOPs of one forward+backward of the ffn expert: forward x*W1^T and h1*W2^T, backward two weight
// gradients and two input gradients, six GEMMs of 2*b*h*4h each: 12*b*h*4h = 48*b*h^2 (elementwise work uncounted).
inline double ffn_flops(std::int64_t batch, std::int64_t hidden) {
  return 12.0 * static_cast<double>(batch) * static_cast<double>(hidden) * 4.0 * static_cast<double>(hidden);
}

// The registry's ffn expert with its biases, LayerNorm gain and shift drawn at random too (they start as 0 and 1,
// which would leave parts of the comparison with PyTorch untested).
inline std::unique_ptr<dmoe::nn::expert> make_bench_ffn(std::int64_t hidden, std::uint64_t seed) {
  auto expert = dmoe::nn::make_expert("ffn", hidden, seed);
  dmoe::random_engine gen(seed + 1);
  for (auto& p : expert->parameters()) {
    if (p.name.ends_with(".bias"))
      p.value->fill_uniform(gen, -0.1f, 0.1f);
    else if (p.name == "norm.weight")
      p.value->fill_uniform(gen, 0.5f, 1.5f);
  }
  return expert;
}

struct ffn_inputs {
  dmoe::tensor x, dy;
};

inline ffn_inputs make_ffn_inputs(std::int64_t batch, std::int64_t hidden, std::uint64_t seed) {
  dmoe::random_engine gen(seed);
  return {dmoe::tensor::normal(dmoe::shape{batch, hidden}, gen), dmoe::tensor::normal(dmoe::shape{batch, hidden}, gen)};
}

// One training pass of the expert as a server runs it: forward, then backward (parameter gradients accumulate).
inline void ffn_step(dmoe::nn::expert& expert, const ffn_inputs& in) {
  const dmoe::tensor y = expert.forward(in.x);
  const dmoe::tensor dx = expert.backward(in.dy);
}

// The ffn's six GEMMs, same shapes and transposes, done by OpenBLAS alone: what a pass would cost if all of it ran
// at the practical GEMM peak (the elementwise work, a few percent, left out). The denominator of the ffn's
// fraction of peak, timed between dmoe's passes.
class openblas_ffn_gemms {
 public:
  openblas_ffn_gemms(std::int64_t batch, std::int64_t hidden)
      : b_(static_cast<int>(batch)), h_(static_cast<int>(hidden)), f_(4 * h_) {
    dmoe::random_engine gen(9);
    for (auto* t : {&x_, &dres_}) *t = dmoe::tensor::normal(dmoe::shape{batch, hidden}, gen);
    for (auto* t : {&w1_, &w1g_}) *t = dmoe::tensor::normal(dmoe::shape{4 * hidden, hidden}, gen);
    for (auto* t : {&w2_, &w2g_}) *t = dmoe::tensor::normal(dmoe::shape{hidden, 4 * hidden}, gen);
    for (auto* t : {&z1_, &dz1_}) *t = dmoe::tensor::normal(dmoe::shape{batch, 4 * hidden}, gen);
    for (auto* t : {&z2_, &dx_}) *t = dmoe::tensor::normal(dmoe::shape{batch, hidden}, gen);
  }

  void run() {
    const auto p = [](const dmoe::tensor& t) { return t.data<float>(); };
    const auto q = [](dmoe::tensor& t) { return t.data<float>(); };
    openblas_sgemm(false, true, b_, f_, h_, p(x_), p(w1_), 0, q(z1_));         // z1 = x W1^T
    openblas_sgemm(false, true, b_, h_, f_, p(z1_), p(w2_), 0, q(z2_));        // z2 = h1 W2^T
    openblas_sgemm(true, false, h_, f_, b_, p(dres_), p(z1_), 1, q(w2g_));     // dW2 += dres^T h1
    openblas_sgemm(false, false, b_, f_, h_, p(dres_), p(w2_), 0, q(dz1_));    // dh1 = dres W2
    openblas_sgemm(true, false, f_, h_, b_, p(dz1_), p(x_), 1, q(w1g_));       // dW1 += dz1^T x
    openblas_sgemm(false, false, b_, h_, f_, p(dz1_), p(w1_), 0, q(dx_));      // dx = dz1 W1
  }

 private:
  int b_, h_, f_;
  dmoe::tensor x_, dres_, w1_, w1g_, w2_, w2g_, z1_, dz1_, z2_, dx_;
};

// One op of the breakdown: its mean and best time per pass, and for GEMMs OpenBLAS's best on the same call.
struct breakdown_row {
  std::string op;
  double flops = 0;  // GEMMs
  double bytes = 0;  // elementwise ops: each tensor read or written once counts once
  double total_seconds = 0, best_seconds = std::numeric_limits<double>::infinity();
  double openblas_seconds = 0;
};

struct breakdown_result {
  std::vector<breakdown_row> rows;
  int iterations = 0;
  double module_mean_seconds = 0, module_best_seconds = 0;  // the expert's own forward+backward
};

// Times each op of the ffn expert's forward and backward separately, calling the ops as nn::linear,
// nn::layer_norm and nn::ffn_expert do (keep in step with include/dmoe/nn/{linear,layer_norm,experts}.hpp),
// on buffers allocated once; then the expert's own forward+backward, whose excess over the ops' sum is the
// modules' overhead (allocations, checks, views).
inline breakdown_result ffn_breakdown(dmoe::nn::expert& expert, const ffn_inputs& in, int iterations) {
  using namespace dmoe;
  const std::int64_t b = in.x.dim(0), h = in.x.dim(1), f = 4 * h;
  std::map<std::string, tensor*> values;
  for (auto& p : expert.parameters()) values[p.name] = p.value;
  const tensor& w1 = *values.at("fc1.weight");
  const tensor& b1 = *values.at("fc1.bias");
  const tensor& w2 = *values.at("fc2.weight");
  const tensor& b2 = *values.at("fc2.bias");
  const tensor& gamma = *values.at("norm.weight");
  const tensor& beta = *values.at("norm.bias");
  tensor w1g(shape{f, h}), b1g(shape{f}), w2g(shape{h, f}), b2g(shape{h}), gg(shape{h}), bg(shape{h});
  tensor z1(shape{b, f}), y1(shape{b, f}), z2(shape{b, h}), res(shape{b, h}), y(shape{b, h}), mean(shape{b}),
      rstd(shape{b}), dres(shape{b, h}), dy1(shape{b, f}), dz1(shape{b, f}), dx(shape{b, h});
  const tensor& x = in.x;
  const tensor& dy = in.dy;
  const double gemm_flops = 2.0 * b * h * f;
  const double bh = 4.0 * b * h, bf = 4.0 * b * f;  // bytes of one [b, h] and one [b, f] tensor

  struct op {
    std::string name;
    double flops, bytes;
    std::function<void()> run;
    std::function<void()> openblas;  // empty for elementwise ops
  };
  const std::vector<op> ops_list = {
      {"fc1.forward gemm z1=x*W1^T", gemm_flops, 0, [&] { ops::gemm(ops::cpu, x, w1, z1, {.trans_b = true}); },
       [&] { openblas_sgemm(false, true, b, f, h, x.data<float>(), w1.data<float>(), 0, z1.data<float>()); }},
      {"fc1.forward bias+gelu", 0, 3 * bf, [&] { ops::bias_activation_forward(ops::cpu, z1, b1, y1, ops::activation::gelu); },
       {}},
      {"fc2.forward gemm z2=y1*W2^T", gemm_flops, 0, [&] { ops::gemm(ops::cpu, y1, w2, z2, {.trans_b = true}); },
       [&] { openblas_sgemm(false, true, b, h, f, y1.data<float>(), w2.data<float>(), 0, z2.data<float>()); }},
      {"fc2.forward bias", 0, 2 * bh,
       [&] { ops::bias_activation_forward(ops::cpu, z2, b2, z2, ops::activation::identity); }, {}},
      {"residual add", 0, 3 * bh, [&] { ops::add(ops::cpu, x, z2, res); }, {}},
      {"norm.forward", 0, 2 * bh, [&] { ops::layer_norm_forward(ops::cpu, res, gamma, beta, 1e-5f, y, mean, rstd); },
       {}},
      {"norm.backward", 0, 3 * bh,
       [&] { ops::layer_norm_backward(ops::cpu, res, gamma, mean, rstd, dy, dres, gg, bg); }, {}},
      {"fc2.backward bias grad (sum_rows)", 0, bh, [&] { ops::sum_rows(ops::cpu, dres, b2g); }, {}},
      {"fc2.backward gemm dW2+=dres^T*y1", gemm_flops, 0,
       [&] { ops::gemm(ops::cpu, dres, y1, w2g, {.trans_a = true, .beta = 1.0f}); },
       [&] { openblas_sgemm(true, false, h, f, b, dres.data<float>(), y1.data<float>(), 1, w2g.data<float>()); }},
      {"fc2.backward gemm dy1=dres*W2", gemm_flops, 0, [&] { ops::gemm(ops::cpu, dres, w2, dy1); },
       [&] { openblas_sgemm(false, false, b, f, h, dres.data<float>(), w2.data<float>(), 0, dy1.data<float>()); }},
      {"fc1.backward gelu'+bias grad", 0, 3 * bf,
       [&] { ops::bias_activation_backward(ops::cpu, z1, dy1, dz1, &b1g, ops::activation::gelu); }, {}},
      {"fc1.backward gemm dW1+=dz1^T*x", gemm_flops, 0,
       [&] { ops::gemm(ops::cpu, dz1, x, w1g, {.trans_a = true, .beta = 1.0f}); },
       [&] { openblas_sgemm(true, false, f, h, b, dz1.data<float>(), x.data<float>(), 1, w1g.data<float>()); }},
      {"fc1.backward gemm dx=dz1*W1", gemm_flops, 0, [&] { ops::gemm(ops::cpu, dz1, w1, dx); },
       [&] { openblas_sgemm(false, false, b, h, f, dz1.data<float>(), w1.data<float>(), 0, dx.data<float>()); }},
      {"residual backward (axpy)", 0, 3 * bh, [&] { ops::axpy(ops::cpu, 1.0f, dres, dx); }, {}},
  };

  breakdown_result result;
  result.iterations = iterations;
  for (const op& o : ops_list) result.rows.push_back({o.name, o.flops, o.bytes});
  for (const op& o : ops_list) o.run();  // warm up
  for (int it = 0; it < iterations; ++it)
    for (std::size_t i = 0; i < ops_list.size(); ++i) {
      const auto start = ops_clock::now();
      ops_list[i].run();
      const double dt = seconds_since(start);
      result.rows[i].total_seconds += dt;
      result.rows[i].best_seconds = std::min(result.rows[i].best_seconds, dt);
    }
  for (std::size_t i = 0; i < ops_list.size(); ++i)
    if (ops_list[i].openblas)
      result.rows[i].openblas_seconds =
          best_seconds(ops_list[i].openblas, {.warmups = 1, .min_runs = iterations, .min_seconds = 0});
  let_openblas_threads_sleep();

  ffn_step(expert, in);
  double module_total = 0, module_best = std::numeric_limits<double>::infinity();
  for (int it = 0; it < iterations; ++it) {
    const auto start = ops_clock::now();
    ffn_step(expert, in);
    const double dt = seconds_since(start);
    module_total += dt;
    module_best = std::min(module_best, dt);
  }
  result.module_mean_seconds = module_total / iterations;
  result.module_best_seconds = module_best;
  return result;
}

}  // namespace dmoe_bench
