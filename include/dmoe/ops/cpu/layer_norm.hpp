// Layer normalisation over the last dimension on the CPU: forward saves mean and 1/std per row for backward.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <string_view>

DMOE_BEGIN_NAMESPACE
namespace ops {

// y = (x - mean) * rstd * gamma + beta per row of x (rows = all leading dimensions, d = the last);
// mean and rstd ([rows]) are written for backward.
DMOE_DECL void layer_norm_forward(cpu_t, const tensor& x, const tensor& gamma, const tensor& beta, float eps, tensor& y,
                                  tensor& mean, tensor& rstd);

// dx = layer norm's input gradient for dy; dgamma and dbeta accumulate (+=). dx may be dy itself.
DMOE_DECL void layer_norm_backward(cpu_t, const tensor& x, const tensor& gamma, const tensor& mean, const tensor& rstd,
                                   const tensor& dy, tensor& dx, tensor& dgamma, tensor& dbeta);

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/ops/cpu/eigen.hpp>
#include <dmoe/ops/cpu/parallel.hpp>
#include <cmath>
#include <mutex>
#include <fmt/format.h>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace detail {

inline void check_layer_norm_params(std::string_view op, const tensor& gamma, const tensor& beta, std::int64_t d) {
  check_cpu_f32(op, "gamma", gamma);
  check_cpu_f32(op, "beta", beta);
  if (gamma.rank() != 1 || gamma.dim(0) != d)
    throw shape_error(fmt::format("{}: gamma is {} but should be [{}]", op, gamma.shape(), d));
  expect_same_shape(op, "gamma", gamma, "beta", beta);
}

}  // namespace detail

DMOE_DEF void layer_norm_forward(cpu_t, const tensor& x, const tensor& gamma, const tensor& beta, float eps, tensor& y,
                                 tensor& mean, tensor& rstd) {
  constexpr std::string_view op = "layer_norm_forward";
  detail::check_cpu_f32(op, "x", x);
  const std::int64_t rows = x.shape().outer(), d = x.shape().inner();
  detail::check_layer_norm_params(op, gamma, beta, d);
  detail::prepare_output(op, "y", y, x.shape());
  detail::prepare_output(op, "mean", mean, shape{rows});
  detail::prepare_output(op, "rstd", rstd, shape{rows});
  const auto xm = detail::as_array(x);
  auto ym = detail::as_array(y);
  const auto g = detail::as_vector(gamma).transpose();
  const auto b = detail::as_vector(beta).transpose();
  float* mu = mean.data<float>();
  float* rs = rstd.data<float>();
  detail::parallel_for(rows, detail::row_grain(d), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t r = begin; r < end; ++r) {
      const auto xr = xm.row(r);
      const float m = xr.mean();
      const float var = (xr - m).square().mean();
      const float s = 1.0f / std::sqrt(var + eps);
      mu[r] = m;
      rs[r] = s;
      ym.row(r) = (xr - m) * s * g + b;
    }
  });
}

DMOE_DEF void layer_norm_backward(cpu_t, const tensor& x, const tensor& gamma, const tensor& mean, const tensor& rstd,
                                  const tensor& dy, tensor& dx, tensor& dgamma, tensor& dbeta) {
  constexpr std::string_view op = "layer_norm_backward";
  detail::check_cpu_f32(op, "x", x);
  detail::check_cpu_f32(op, "dy", dy);
  expect_same_shape(op, "x", x, "dy", dy);
  const std::int64_t rows = x.shape().outer(), d = x.shape().inner();
  detail::check_layer_norm_params(op, gamma, gamma, d);
  detail::check_cpu_f32(op, "mean", mean);
  detail::check_cpu_f32(op, "rstd", rstd);
  expect_shape(op, "mean", mean, shape{rows});
  expect_shape(op, "rstd", rstd, shape{rows});
  detail::check_layer_norm_params(op, dgamma, dbeta, d);
  detail::prepare_output(op, "dx", dx, x.shape());
  const auto xm = detail::as_array(x);
  const auto dym = detail::as_array(dy);
  auto dxm = detail::as_array(dx);
  const auto g = detail::as_vector(gamma).transpose();
  const float* mu = mean.data<float>();
  const float* rs = rstd.data<float>();
  std::mutex merge;
  detail::parallel_for(rows, detail::row_grain(d), [&](std::int64_t begin, std::int64_t end) {
    Eigen::Array<float, 1, Eigen::Dynamic> dg = Eigen::Array<float, 1, Eigen::Dynamic>::Zero(d);
    Eigen::Array<float, 1, Eigen::Dynamic> db = Eigen::Array<float, 1, Eigen::Dynamic>::Zero(d);
    Eigen::Array<float, 1, Eigen::Dynamic> xhat(d), dxhat(d);
    for (std::int64_t r = begin; r < end; ++r) {
      xhat = (xm.row(r) - mu[r]) * rs[r];
      const auto dyr = dym.row(r);
      dg += dyr * xhat;
      db += dyr;
      dxhat = dyr * g;
      const float mean_dxhat = dxhat.mean();
      const float mean_dxhat_xhat = (dxhat * xhat).mean();
      dxm.row(r) = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * rs[r];
    }
    std::lock_guard lock(merge);
    detail::as_vector(dgamma) += dg.transpose();
    detail::as_vector(dbeta) += db.transpose();
  });
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
