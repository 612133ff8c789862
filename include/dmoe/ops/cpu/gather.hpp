// Row gather and scatter-add on the CPU: picking samples for an expert and adding its outputs back, by row index.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <string_view>

DMOE_BEGIN_NAMESPACE
namespace ops {

// y[i] = x[indices[i]] for every i: x is [rows, ...], indices i64 [n], y gets [n, ...].
DMOE_DECL void gather_rows(cpu_t, const tensor& x, const tensor& indices, tensor& y);

// y[indices[i]] += scale[i] * x[i] for every i (scale may be empty for 1): x is [n, ...], y [rows, ...].
// Repeated indices add up.
DMOE_DECL void scatter_add_rows(cpu_t, const tensor& x, const tensor& indices, const tensor& scale, tensor& y);

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/ops/cpu/eigen.hpp>
#include <dmoe/ops/cpu/parallel.hpp>
#include <dmoe/ops/cpu/reduction.hpp>
#include <cstring>
#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace detail {

inline void check_row_indices(std::string_view op, const tensor& indices, std::int64_t rows) {
  expect_dtype(op, "indices", indices, dtype::i64);
  expect_rank(op, "indices", indices, 1);
  const std::int64_t* index = indices.data<std::int64_t>();
  for (std::int64_t i = 0; i < indices.numel(); ++i)
    if (index[i] < 0 || index[i] >= rows)
      throw invalid_argument_error(dmoe::format("{}: index {} at position {} is outside [0, {})", op, index[i], i, rows));
}

}  // namespace detail

DMOE_DEF void gather_rows(cpu_t, const tensor& x, const tensor& indices, tensor& y) {
  constexpr std::string_view op = "gather_rows";
  detail::check_cpu_f32(op, "x", x);
  if (x.rank() == 0) throw shape_error(dmoe::format("{}: x is a scalar", op));
  detail::check_row_indices(op, indices, x.dim(0));
  detail::prepare_output(op, "y", y, x.shape().with(0, indices.numel()));
  const std::int64_t width = x.dim(0) == 0 ? 0 : x.numel() / x.dim(0);
  const std::int64_t* index = indices.data<std::int64_t>();
  const float* from = x.data<float>();
  float* to = y.data<float>();
  detail::parallel_for(indices.numel(), detail::row_grain(width), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i)
      std::memcpy(to + i * width, from + index[i] * width, static_cast<std::size_t>(width) * sizeof(float));
  });
}

DMOE_DEF void scatter_add_rows(cpu_t, const tensor& x, const tensor& indices, const tensor& scale, tensor& y) {
  constexpr std::string_view op = "scatter_add_rows";
  detail::check_cpu_f32(op, "x", x);
  detail::check_cpu_f32(op, "y", y);
  if (x.rank() == 0 || y.rank() == 0) throw shape_error(dmoe::format("{}: x is {} and y is {}", op, x.shape(), y.shape()));
  if (x.shape().without_first() != y.shape().without_first())
    throw shape_error(dmoe::format("{}: x is {} but y is {}: rows differ", op, x.shape(), y.shape()));
  if (indices.numel() != x.dim(0))
    throw shape_error(dmoe::format("{}: x is {} but indices is {}", op, x.shape(), indices.shape()));
  detail::check_row_indices(op, indices, y.dim(0));
  if (!scale.empty()) {
    detail::check_cpu_f32(op, "scale", scale);
    expect_shape(op, "scale", scale, shape{x.dim(0)});
  }
  const std::int64_t width = x.shape().without_first().numel();
  const float* w = scale.empty() ? nullptr : scale.data<float>();
  // Serial: rows may repeat; this is memory-bound and small beside the experts' GEMMs.
  detail::scatter_add_rows_f64(x.data<float>(), indices.data<std::int64_t>(), x.dim(0), width, y.data<float>(),
                               [w](std::int64_t i) { return w ? w[i] : 1.0f; });
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
