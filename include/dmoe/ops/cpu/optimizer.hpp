// CPU optimizer kernels: Adam/AdamW and SGD steps (one pass over memory), gradient norm and clipping.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/optimizer.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

DMOE_BEGIN_NAMESPACE
namespace ops {

// One Adam (or AdamW) update of `param` in place; `m` and `v` are the moment estimates (zeros
// before the first step), `step` counts updates from 1. All tensors f32 and of one shape.
DMOE_DECL void adam_step(cpu_t, tensor& param, const tensor& grad, tensor& m, tensor& v, std::int64_t step,
                         const adam_hyper& hyper);

// One SGD update of `param` in place. `momentum_buffer` (zeros before the first step) is only
// touched when hyper.momentum != 0 and may then be an empty tensor otherwise.
DMOE_DECL void sgd_step(cpu_t, tensor& param, const tensor& grad, tensor& momentum_buffer, const sgd_hyper& hyper);

// The L2 norm of all elements of all tensors together (f32, host), summed in double.
DMOE_DECL double grad_norm(cpu_t, std::span<const tensor> grads);

// Scales the gradients so that their joint L2 norm is at most max_norm (by max_norm/(norm+1e-6),
// as torch.nn.utils.clip_grad_norm_) and returns the norm before clipping. A NaN or infinite norm
// leaves the gradients untouched and throws or is returned, as `on_nonfinite` says.
DMOE_DECL double clip_grad_norm(cpu_t, std::span<tensor> grads, float max_norm,
                                nonfinite_norm on_nonfinite = nonfinite_norm::error);

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/ops/cpu/eigen.hpp>
#include <algorithm>
#include <cmath>
#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace detail {

// Elements per block: four f32 blocks (param, grad, m, v) stay in L1 while a block is updated.
inline constexpr std::ptrdiff_t optimizer_block = 1024;

using array_map = Eigen::Map<Eigen::ArrayXf, Eigen::Unaligned>;
using const_array_map = Eigen::Map<const Eigen::ArrayXf, Eigen::Unaligned>;

inline void expect_f32_host(std::string_view op, std::string_view name, const tensor& t) {
  expect_dtype(op, name, t, dtype::f32);
  if (!t.is_host())
    throw invalid_argument_error(dmoe::format("{}: {} is {}, the cpu backend needs host tensors", op, name,
                                             t.description()));
}

}  // namespace detail

DMOE_DEF void adam_step(cpu_t, tensor& param, const tensor& grad, tensor& m, tensor& v, std::int64_t step,
                        const adam_hyper& hyper) {
  constexpr std::string_view op = "adam_step";
  detail::expect_f32_host(op, "param", param);
  detail::expect_f32_host(op, "grad", grad);
  detail::expect_f32_host(op, "m", m);
  detail::expect_f32_host(op, "v", v);
  expect_same_shape(op, "param", param, "grad", grad);
  expect_same_shape(op, "param", param, "m", m);
  expect_same_shape(op, "param", param, "v", v);
  if (step < 1) throw invalid_argument_error(dmoe::format("adam_step: step is {} but counts from 1", step));

  // Scalars in double: beta^step underflows gracefully and long runs keep their precision.
  const double bias_correction1 = 1.0 - std::pow(hyper.beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(hyper.beta2, static_cast<double>(step));
  const double lr = hyper.learning_rate;
  const auto step_size = static_cast<float>(lr / bias_correction1);
  const auto inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bias_correction2));
  const auto beta1 = static_cast<float>(hyper.beta1), beta2 = static_cast<float>(hyper.beta2);
  const auto eps = static_cast<float>(hyper.epsilon);
  const auto one_minus_beta1 = static_cast<float>(1.0 - hyper.beta1);
  const auto one_minus_beta2 = static_cast<float>(1.0 - hyper.beta2);
  const bool l2 = hyper.weight_decay != 0.0 && !hyper.decoupled_weight_decay;
  const auto l2_decay = static_cast<float>(hyper.weight_decay);
  const auto shrink = static_cast<float>(hyper.decoupled_weight_decay ? 1.0 - lr * hyper.weight_decay : 1.0);

  float* p = param.data<float>();
  const float* g = grad.data<float>();
  float* mp = m.data<float>();
  float* vp = v.data<float>();
  const auto n = static_cast<std::ptrdiff_t>(param.numel());
  for (std::ptrdiff_t begin = 0; begin < n; begin += detail::optimizer_block) {
    const std::ptrdiff_t count = std::min(detail::optimizer_block, n - begin);
    detail::array_map pa(p + begin, count), ma(mp + begin, count), va(vp + begin, count);
    detail::const_array_map ga(g + begin, count);
    if (l2) {
      // Recomputing g + decay*p costs an FMA; a buffer for it would cost a store and a load.
      ma = beta1 * ma + one_minus_beta1 * (ga + l2_decay * pa);
      va = beta2 * va + one_minus_beta2 * (ga + l2_decay * pa).square();
    } else {
      ma = beta1 * ma + one_minus_beta1 * ga;
      va = beta2 * va + one_minus_beta2 * ga.square();
    }
    if (shrink != 1.0f)
      pa = pa * shrink - step_size * ma / (va.sqrt() * inv_sqrt_bc2 + eps);
    else
      pa -= step_size * ma / (va.sqrt() * inv_sqrt_bc2 + eps);
  }
}

DMOE_DEF void sgd_step(cpu_t, tensor& param, const tensor& grad, tensor& momentum_buffer, const sgd_hyper& hyper) {
  constexpr std::string_view op = "sgd_step";
  detail::expect_f32_host(op, "param", param);
  detail::expect_f32_host(op, "grad", grad);
  expect_same_shape(op, "param", param, "grad", grad);
  const bool use_momentum = hyper.momentum != 0.0;
  if (use_momentum) {
    detail::expect_f32_host(op, "momentum_buffer", momentum_buffer);
    expect_same_shape(op, "param", param, "momentum_buffer", momentum_buffer);
  }
  if (hyper.nesterov && !use_momentum)
    throw invalid_argument_error("sgd_step: nesterov needs a momentum other than 0");

  const float lr = hyper.learning_rate;
  const auto decay = static_cast<float>(hyper.weight_decay), mu = static_cast<float>(hyper.momentum);
  float* p = param.data<float>();
  const float* g = grad.data<float>();
  float* b = use_momentum ? momentum_buffer.data<float>() : nullptr;
  const auto n = static_cast<std::ptrdiff_t>(param.numel());
  alignas(64) float decayed[detail::optimizer_block];
  for (std::ptrdiff_t begin = 0; begin < n; begin += detail::optimizer_block) {
    const std::ptrdiff_t count = std::min(detail::optimizer_block, n - begin);
    detail::array_map pa(p + begin, count), ga_decayed(decayed, count);
    detail::const_array_map ga(g + begin, count);
    if (decay != 0.0f)
      ga_decayed = ga + decay * pa;
    else
      ga_decayed = ga;
    if (!use_momentum) {
      pa -= lr * ga_decayed;
      continue;
    }
    detail::array_map ba(b + begin, count);
    ba = mu * ba + ga_decayed;
    if (hyper.nesterov)
      pa -= lr * (ga_decayed + mu * ba);
    else
      pa -= lr * ba;
  }
}

DMOE_DEF double grad_norm(cpu_t, std::span<const tensor> grads) {
  double sum_squares = 0.0;
  for (const tensor& t : grads) {
    detail::expect_f32_host("grad_norm", "gradient", t);
    const float* data = t.data<float>();
    const auto n = static_cast<std::ptrdiff_t>(t.numel());
    for (std::ptrdiff_t begin = 0; begin < n; begin += detail::optimizer_block) {
      const std::ptrdiff_t count = std::min(detail::optimizer_block, n - begin);
      sum_squares += detail::const_array_map(data + begin, count).cast<double>().square().sum();
    }
  }
  return std::sqrt(sum_squares);
}

DMOE_DEF double clip_grad_norm(cpu_t, std::span<tensor> grads, float max_norm,
                               nonfinite_norm on_nonfinite) {
  detail::check_max_norm(max_norm);
  const double norm = grad_norm(cpu, std::span<const tensor>(grads.data(), grads.size()));
  const double coefficient = detail::clip_coefficient(norm, grads.size(), max_norm, on_nonfinite);
  if (coefficient >= 1.0) return norm;
  const auto scale = static_cast<float>(coefficient);
  for (tensor& t : grads) {
    float* data = t.data<float>();
    const auto n = static_cast<std::ptrdiff_t>(t.numel());
    detail::array_map(data, n) *= scale;
  }
  return norm;
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
