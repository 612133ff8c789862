// Elementwise helpers on the CPU: add, axpy, scale, multiply, fill, broadcast a row, sum rows.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <string_view>

DMOE_BEGIN_NAMESPACE
namespace ops {

// y = a + b (same shapes); y may be a or b.
DMOE_DECL void add(cpu_t, const tensor& a, const tensor& b, tensor& y);

// y += alpha * x (same shapes).
DMOE_DECL void axpy(cpu_t, float alpha, const tensor& x, tensor& y);

// y = a * b elementwise (same shapes); y may be a or b.
DMOE_DECL void multiply(cpu_t, const tensor& a, const tensor& b, tensor& y);

// x *= alpha.
DMOE_DECL void scale(cpu_t, tensor& x, float alpha);

// y = x (same shapes).
DMOE_DECL void copy(cpu_t, const tensor& x, tensor& y);

// Every row of y (rows = leading dimensions) = row ([cols]).
DMOE_DECL void broadcast_rows(cpu_t, const tensor& row, tensor& y);

// sum += the column sums of x ([rows, cols] with rows = leading dimensions; sum is [cols]).
DMOE_DECL void sum_rows(cpu_t, const tensor& x, tensor& sum);

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/ops/cpu/eigen.hpp>
#include <dmoe/ops/cpu/parallel.hpp>
#include <dmoe/ops/cpu/reduction.hpp>
#include <mutex>
#include <vector>
#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace detail {

// body(begin, end) over flat element ranges, split for large tensors.
template <class Body>
void elementwise(std::int64_t n, Body&& body) {
  parallel_for(n, elementwise_grain, body);
}

}  // namespace detail

DMOE_DEF void add(cpu_t, const tensor& a, const tensor& b, tensor& y) {
  constexpr std::string_view op = "add";
  detail::check_cpu_f32(op, "a", a);
  detail::check_cpu_f32(op, "b", b);
  expect_same_shape(op, "a", a, "b", b);
  detail::prepare_output(op, "y", y, a.shape());
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* py = y.data<float>();
  detail::elementwise(a.numel(), [&](std::int64_t begin, std::int64_t end) {
    const auto n = end - begin;
    Eigen::Map<Eigen::ArrayXf>(py + begin, n) =
        Eigen::Map<const Eigen::ArrayXf>(pa + begin, n) + Eigen::Map<const Eigen::ArrayXf>(pb + begin, n);
  });
}

DMOE_DEF void axpy(cpu_t, float alpha, const tensor& x, tensor& y) {
  constexpr std::string_view op = "axpy";
  detail::check_cpu_f32(op, "x", x);
  detail::check_cpu_f32(op, "y", y);
  expect_same_shape(op, "x", x, "y", y);
  const float* px = x.data<float>();
  float* py = y.data<float>();
  detail::elementwise(x.numel(), [&](std::int64_t begin, std::int64_t end) {
    const auto n = end - begin;
    Eigen::Map<Eigen::ArrayXf>(py + begin, n) += alpha * Eigen::Map<const Eigen::ArrayXf>(px + begin, n);
  });
}

DMOE_DEF void multiply(cpu_t, const tensor& a, const tensor& b, tensor& y) {
  constexpr std::string_view op = "multiply";
  detail::check_cpu_f32(op, "a", a);
  detail::check_cpu_f32(op, "b", b);
  expect_same_shape(op, "a", a, "b", b);
  detail::prepare_output(op, "y", y, a.shape());
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* py = y.data<float>();
  detail::elementwise(a.numel(), [&](std::int64_t begin, std::int64_t end) {
    const auto n = end - begin;
    Eigen::Map<Eigen::ArrayXf>(py + begin, n) =
        Eigen::Map<const Eigen::ArrayXf>(pa + begin, n) * Eigen::Map<const Eigen::ArrayXf>(pb + begin, n);
  });
}

DMOE_DEF void scale(cpu_t, tensor& x, float alpha) {
  detail::check_cpu_f32("scale", "x", x);
  float* px = x.data<float>();
  detail::elementwise(x.numel(), [&](std::int64_t begin, std::int64_t end) {
    Eigen::Map<Eigen::ArrayXf>(px + begin, end - begin) *= alpha;
  });
}

DMOE_DEF void copy(cpu_t, const tensor& x, tensor& y) {
  detail::check_cpu_f32("copy", "x", x);
  detail::prepare_output("copy", "y", y, x.shape());
  y.copy_from(x);
}

DMOE_DEF void broadcast_rows(cpu_t, const tensor& row, tensor& y) {
  constexpr std::string_view op = "broadcast_rows";
  detail::check_cpu_f32(op, "row", row);
  detail::check_cpu_f32(op, "y", y);
  if (row.rank() != 1 || row.dim(0) != y.shape().inner())
    throw shape_error(dmoe::format("{}: row is {} but y is {}", op, row.shape(), y.shape()));
  auto ym = detail::as_array(y);
  const auto r = Eigen::Map<const Eigen::Array<float, 1, Eigen::Dynamic>>(row.data<float>(), row.dim(0));
  detail::parallel_for(y.shape().outer(), detail::row_grain(row.dim(0)),
                       [&](std::int64_t begin, std::int64_t end) { ym.middleRows(begin, end - begin).rowwise() = r; });
}

DMOE_DEF void sum_rows(cpu_t, const tensor& x, tensor& sum) {
  constexpr std::string_view op = "sum_rows";
  detail::check_cpu_f32(op, "x", x);
  detail::check_cpu_f32(op, "sum", sum);
  const std::int64_t cols = x.shape().inner();
  if (sum.rank() != 1 || sum.dim(0) != cols)
    throw shape_error(dmoe::format("{}: x is {} but sum is {}", op, x.shape(), sum.shape()));
  const float* xp = x.data<float>();
  std::mutex merge;
  detail::parallel_for(x.shape().outer(), detail::row_grain(cols), [&](std::int64_t begin, std::int64_t end) {
    // Partials in double: a sum over the batch must not drift with the batch size.
    std::vector<double> partial(static_cast<std::size_t>(cols), 0.0);
    detail::add_column_sums_f64(xp + begin * cols, end - begin, cols, partial.data());
    std::lock_guard lock(merge);
    detail::add_to_f32(partial.data(), cols, sum.data<float>());
  });
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
