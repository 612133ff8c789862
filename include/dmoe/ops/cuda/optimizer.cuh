// Optimizers on CUDA: Adam/AdamW for many parameters in one launch (a table of tensor slices on the device), SGD,
// the gradient norm (double) and clipping. The arithmetic is the CPU's (ops/cpu/optimizer.hpp).
#pragma once

#include <dmoe/ops/cuda/common.cuh>
#include <dmoe/ops/cuda/elementwise.cuh>
#include <dmoe/ops/cuda/reduction.cuh>

#include <algorithm>
#include <cmath>
#include <vector>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace cuda_detail {

struct adam_tensor {
  float* param;
  const float* grad;
  float* m;
  float* v;
  std::int64_t n;
};

struct adam_scalars {
  float step_size, inv_sqrt_bc2, beta1, beta2, eps, one_minus_beta1, one_minus_beta2, l2_decay, shrink;
  bool l2;
};

inline adam_scalars adam_scalars_for(std::int64_t step, const adam_hyper& hyper) {
  const double bias_correction1 = 1.0 - std::pow(hyper.beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(hyper.beta2, static_cast<double>(step));
  const double lr = hyper.learning_rate;
  return {static_cast<float>(lr / bias_correction1),
          static_cast<float>(1.0 / std::sqrt(bias_correction2)),
          static_cast<float>(hyper.beta1),
          static_cast<float>(hyper.beta2),
          static_cast<float>(hyper.epsilon),
          static_cast<float>(1.0 - hyper.beta1),
          static_cast<float>(1.0 - hyper.beta2),
          static_cast<float>(hyper.weight_decay),
          static_cast<float>(hyper.decoupled_weight_decay ? 1.0 - lr * hyper.weight_decay : 1.0),
          hyper.weight_decay != 0.0 && !hyper.decoupled_weight_decay};
}

// Blocks walk a flat index over all tensors: `starts` holds each tensor's first flat index (prefix sums).
__global__ void adam_many_kernel(const adam_tensor* tensors, const std::int64_t* starts, int count,
                                        std::int64_t total, adam_scalars s) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < total;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    int lo = 0, hi = count - 1;  // the tensor holding flat index i
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (starts[mid] <= i)
        lo = mid;
      else
        hi = mid - 1;
    }
    const adam_tensor t = tensors[lo];
    const std::int64_t j = i - starts[lo];
    const float p = t.param[j];
    const float g = s.l2 ? t.grad[j] + s.l2_decay * p : t.grad[j];
    const float m = s.beta1 * t.m[j] + s.one_minus_beta1 * g;
    const float v = s.beta2 * t.v[j] + s.one_minus_beta2 * (g * g);
    t.m[j] = m;
    t.v[j] = v;
    const float update = s.step_size * m / (sqrtf(v) * s.inv_sqrt_bc2 + s.eps);
    t.param[j] = s.shrink != 1.0f ? p * s.shrink - update : p - update;
  }
}

inline void check_adam_tensors(std::string_view op, const tensor& param, const tensor& grad, const tensor& m,
                               const tensor& v) {
  check_f32(op, "param", param);
  check_f32(op, "grad", grad);
  check_f32(op, "m", m);
  check_f32(op, "v", v);
  expect_same_shape(op, "param", param, "grad", grad);
  expect_same_shape(op, "param", param, "m", m);
  expect_same_shape(op, "param", param, "v", v);
}

}  // namespace cuda_detail

void adam_step_many(cuda_t, std::span<tensor* const> params, std::span<const tensor* const> grads,
                           std::span<tensor* const> m, std::span<tensor* const> v, std::int64_t step,
                           const adam_hyper& hyper) {
  constexpr std::string_view op = "adam_step_many";
  if (grads.size() != params.size() || m.size() != params.size() || v.size() != params.size())
    throw invalid_argument_error(fmt::format("{}: {} params, {} grads, {} m and {} v", op, params.size(),
                                             grads.size(), m.size(), v.size()));
  if (step < 1) throw invalid_argument_error(fmt::format("{}: step is {} but counts from 1", op, step));
  std::vector<cuda_detail::adam_tensor> table;
  std::vector<std::int64_t> starts;
  std::int64_t total = 0;
  for (std::size_t i = 0; i < params.size(); ++i) {
    cuda_detail::check_adam_tensors(op, *params[i], *grads[i], *m[i], *v[i]);
    if (params[i]->numel() == 0) continue;
    table.push_back({params[i]->device_data<float>(), grads[i]->device_data<float>(), m[i]->device_data<float>(),
                     v[i]->device_data<float>(), params[i]->numel()});
    starts.push_back(total);
    total += params[i]->numel();
  }
  if (total == 0) return;
  {  // one launch updates every element once: a tensor listed twice (tied weights) would race with itself
    std::vector<std::pair<const float*, const float*>> spans;
    for (const auto& t : table) spans.push_back({t.param, t.param + t.n});
    std::sort(spans.begin(), spans.end());
    for (std::size_t i = 1; i < spans.size(); ++i)
      if (spans[i].first < spans[i - 1].second)
        throw invalid_argument_error(fmt::format("{}: two parameters share memory (list a tied weight once)", op));
  }
  const auto count = static_cast<std::int64_t>(table.size());
  const std::size_t table_bytes = table.size() * sizeof(cuda_detail::adam_tensor);
  tensor device_table = tensor::uninitialized(shape{static_cast<std::int64_t>(table_bytes + count * 8)}, dtype::u8,
                                              device::cuda);
  DMOE_CUDA_CHECK(cudaMemcpyAsync(device_table.bytes_data(), table.data(), table_bytes, cudaMemcpyHostToDevice,
                                  cuda_detail::stream()));
  DMOE_CUDA_CHECK(cudaMemcpyAsync(device_table.bytes_data() + table_bytes, starts.data(), count * 8,
                                  cudaMemcpyHostToDevice, cuda_detail::stream()));
  // The host vectors must outlive the copies: pageable copies return only once the data is staged.
  cuda_detail::adam_many_kernel<<<cuda_detail::blocks_for(total, 256), 256, 0, cuda_detail::stream()>>>(
      reinterpret_cast<const cuda_detail::adam_tensor*>(device_table.bytes_data()),
      reinterpret_cast<const std::int64_t*>(device_table.bytes_data() + table_bytes), static_cast<int>(count), total,
      cuda_detail::adam_scalars_for(step, hyper));
  DMOE_CUDA_CHECK_LAUNCH("adam_many_kernel");
}

void adam_step(cuda_t, tensor& param, const tensor& grad, tensor& m, tensor& v, std::int64_t step,
                      const adam_hyper& hyper) {
  tensor* p = &param;
  const tensor* g = &grad;
  tensor* mp = &m;
  tensor* vp = &v;
  adam_step_many(cuda, std::span<tensor* const>(&p, 1), std::span<const tensor* const>(&g, 1),
                 std::span<tensor* const>(&mp, 1), std::span<tensor* const>(&vp, 1), step, hyper);
}

void sgd_step(cuda_t, tensor& param, const tensor& grad, tensor& momentum_buffer, const sgd_hyper& hyper) {
  constexpr std::string_view op = "sgd_step";
  cuda_detail::check_f32(op, "param", param);
  cuda_detail::check_f32(op, "grad", grad);
  expect_same_shape(op, "param", param, "grad", grad);
  const bool use_momentum = hyper.momentum != 0.0;
  if (use_momentum) {
    cuda_detail::check_f32(op, "momentum_buffer", momentum_buffer);
    expect_same_shape(op, "param", param, "momentum_buffer", momentum_buffer);
  }
  if (hyper.nesterov && !use_momentum) throw invalid_argument_error("sgd_step: nesterov needs a momentum other than 0");
  const float lr = hyper.learning_rate;
  const auto decay = static_cast<float>(hyper.weight_decay), mu = static_cast<float>(hyper.momentum);
  const bool nesterov = hyper.nesterov;
  float* p = param.device_data<float>();
  const float* g = grad.device_data<float>();
  float* b = use_momentum ? momentum_buffer.device_data<float>() : nullptr;
  cuda_detail::launch_map(op.data(), param.numel(), [=] __device__(std::int64_t i) {
    const float gd = decay != 0.0f ? g[i] + decay * p[i] : g[i];
    if (!b) {
      p[i] -= lr * gd;
      return;
    }
    const float buf = mu * b[i] + gd;
    b[i] = buf;
    p[i] -= nesterov ? lr * (gd + mu * buf) : lr * buf;
  });
}

double grad_norm(cuda_t, std::span<const tensor> grads) {
  // One reduction per tensor, added on the host in double (a handful of tensors per module).
  double sum_squares = 0.0;
  for (const tensor& t : grads) {
    cuda_detail::check_f32("grad_norm", "gradient", t);
    const float* data = t.device_data<float>();
    sum_squares += cuda_detail::sum_f64("grad_norm", t.numel(), [=] __device__(std::int64_t i) {
      const double x = data[i];
      return x * x;
    });
  }
  return std::sqrt(sum_squares);
}

double clip_grad_norm(cuda_t, std::span<tensor> grads, float max_norm, nonfinite_norm on_nonfinite) {
  detail::check_max_norm(max_norm);
  const double norm = grad_norm(cuda, std::span<const tensor>(grads.data(), grads.size()));
  const double coefficient = detail::clip_coefficient(norm, grads.size(), max_norm, on_nonfinite);
  if (coefficient >= 1.0) return norm;
  for (tensor& t : grads) scale(cuda, t, static_cast<float>(coefficient));
  return norm;
}

}  // namespace ops
DMOE_END_NAMESPACE
