// Softmax over the last dimension on the CPU, and its backward.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <string_view>

DMOE_BEGIN_NAMESPACE
namespace ops {

// y = softmax(x) per row (the last dimension); y may be x itself. A row of all -inf gives NaN, as it should
// not occur; callers that mask rows keep at least one finite entry.
DMOE_DECL void softmax(cpu_t, const tensor& x, tensor& y);

// dx = y * (dy - sum(dy * y)) per row, for y = softmax(x); dx may be dy itself.
DMOE_DECL void softmax_backward(cpu_t, const tensor& y, const tensor& dy, tensor& dx);

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/ops/cpu/eigen.hpp>
#include <dmoe/ops/cpu/parallel.hpp>
#include <dmoe/ops/cpu/reduction.hpp>

DMOE_BEGIN_NAMESPACE
namespace ops {

DMOE_DEF void softmax(cpu_t, const tensor& x, tensor& y) {
  constexpr std::string_view op = "softmax";
  detail::check_cpu_f32(op, "x", x);
  detail::prepare_output(op, "y", y, x.shape());
  const auto xm = detail::as_array(x);
  auto ym = detail::as_array(y);
  const std::int64_t cols = x.shape().inner();
  detail::parallel_for(x.shape().outer(), detail::row_grain(cols), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t r = begin; r < end; ++r) {
      const float m = xm.row(r).maxCoeff();
      ym.row(r) = (xm.row(r) - m).exp();
      // The denominator in double: its error does not grow with the row's length.
      ym.row(r) /= static_cast<float>(detail::sum_f64(&ym(r, 0), cols));
    }
  });
}

DMOE_DEF void softmax_backward(cpu_t, const tensor& y, const tensor& dy, tensor& dx) {
  constexpr std::string_view op = "softmax_backward";
  detail::check_cpu_f32(op, "y", y);
  detail::check_cpu_f32(op, "dy", dy);
  expect_same_shape(op, "y", y, "dy", dy);
  detail::prepare_output(op, "dx", dx, y.shape());
  const auto ym = detail::as_array(y);
  const auto dym = detail::as_array(dy);
  auto dxm = detail::as_array(dx);
  const std::int64_t cols = y.shape().inner();
  detail::parallel_for(y.shape().outer(), detail::row_grain(cols), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t r = begin; r < end; ++r) {
      const auto dot =
          static_cast<float>(detail::dot_f64(dy.data<float>() + r * cols, y.data<float>() + r * cols, cols));
      dxm.row(r) = ym.row(r) * (dym.row(r) - dot);
    }
  });
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
