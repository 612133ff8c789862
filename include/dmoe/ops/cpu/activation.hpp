// Bias + activation on the CPU (identity, ReLU, GELU tanh form), fused in one pass, and its backward.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <string_view>

DMOE_BEGIN_NAMESPACE
namespace ops {

enum class activation { identity, relu, gelu };

constexpr std::string_view to_string(activation a) noexcept {
  switch (a) {
    case activation::identity: return "identity";
    case activation::relu: return "relu";
    case activation::gelu: return "gelu";
  }
  return "unknown";
}

// z += bias (broadcast over rows; bias may be empty for none), then y = act(z). z keeps the pre-activation for
// backward. y may be z itself only for the identity.
DMOE_DECL void bias_activation_forward(cpu_t, tensor& z, const tensor& bias, tensor& y, activation act);

// dz = dy * act'(z); dbias (when not null) += the column sums of dz. dz may be dy itself.
DMOE_DECL void bias_activation_backward(cpu_t, const tensor& z, const tensor& dy, tensor& dz, tensor* dbias,
                                        activation act);

// y = act(x) without a bias (x is left unchanged).
DMOE_DECL void activation_forward(cpu_t, const tensor& x, tensor& y, activation act);

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

inline constexpr float gelu_k0 = 0.7978845608028654f;  // sqrt(2 / pi)
inline constexpr float gelu_k1 = 0.044715f;
// Beyond it tanh(gelu_k0 * (z + gelu_k1 * z^3)) is +-1 in f32, so GELU's slope is exactly 1 or 0 there.
inline constexpr float gelu_saturation = 10.0f;

// act(z) for a block of rows.
template <class Z, class Y>
void activation_rows(activation act, const Z& z, Y&& y) {
  switch (act) {
    case activation::identity: y = z; break;
    case activation::relu: y = z.max(0.0f); break;
    // z's factor clamped below: for z <= -gelu_saturation, 1 + tanh is exactly 0 in f32, and -inf * 0 would be NaN.
    case activation::gelu:
      y = 0.5f * z.max(-gelu_saturation) * (1.0f + (gelu_k0 * (z + gelu_k1 * z.cube())).tanh());
      break;
  }
}

// dz = dy * act'(z) for a block of rows.
template <class Z, class DY, class DZ>
void activation_backward_rows(activation act, const Z& z, const DY& dy, DZ&& dz) {
  switch (act) {
    case activation::identity: dz = dy; break;
    case activation::relu: dz = (z > 0.0f).select(dy, 0.0f); break;
    case activation::gelu: {
      // z clamped where the slope is already exact: for huge |z|, z^3 overflows and the formula gives 0 * inf.
      const auto zc = z.max(-gelu_saturation).min(gelu_saturation).eval();
      const auto t = (gelu_k0 * (zc + gelu_k1 * zc.cube())).tanh().eval();
      dz = dy * (0.5f * (1.0f + t) + 0.5f * zc * (1.0f - t.square()) * gelu_k0 * (1.0f + 3.0f * gelu_k1 * zc.square()));
      break;
    }
  }
}

inline void check_bias(std::string_view op, const tensor& bias, std::int64_t cols) {
  check_cpu_f32(op, "bias", bias);
  if (bias.rank() != 1 || bias.dim(0) != cols)
    throw shape_error(dmoe::format("{}: bias is {} but should be [{}]", op, bias.shape(), cols));
}

// Sums the rows of a [rows, cols] block-wise computation into `sum` (+=), in parallel with per-chunk partials in
// double (a sum over the batch must not drift with the batch size).
template <class Body>
void parallel_rows_with_column_sum(std::int64_t rows, std::int64_t cols, float* sum, Body&& body) {
  std::mutex merge;
  parallel_for(rows, row_grain(cols), [&](std::int64_t begin, std::int64_t end) {
    std::vector<double> partial(static_cast<std::size_t>(cols), 0.0);
    body(begin, end, partial.data());
    std::lock_guard lock(merge);
    add_to_f32(partial.data(), cols, sum);
  });
}

}  // namespace detail

DMOE_DEF void bias_activation_forward(cpu_t, tensor& z, const tensor& bias, tensor& y, activation act) {
  constexpr std::string_view op = "bias_activation_forward";
  detail::check_cpu_f32(op, "z", z);
  const std::int64_t rows = z.shape().outer(), cols = z.shape().inner();
  if (!bias.empty()) detail::check_bias(op, bias, cols);
  detail::prepare_output(op, "y", y, z.shape());
  const bool in_place = y.shares_storage_with(z);
  if (in_place && (act != activation::identity || y.bytes_data() != z.bytes_data()))
    throw invalid_argument_error(dmoe::format("{}: y may alias z only for the identity", op));
  auto zm = detail::as_array(z);
  auto ym = detail::as_array(y);
  const float* b = bias.empty() ? nullptr : bias.data<float>();
  detail::parallel_for(rows, detail::row_grain(cols), [&](std::int64_t begin, std::int64_t end) {
    auto zb = zm.middleRows(begin, end - begin);
    if (b) zb.rowwise() += Eigen::Map<const Eigen::Array<float, 1, Eigen::Dynamic>>(b, cols);
    if (!in_place) detail::activation_rows(act, zb, ym.middleRows(begin, end - begin));
  });
}

DMOE_DEF void bias_activation_backward(cpu_t, const tensor& z, const tensor& dy, tensor& dz, tensor* dbias,
                                       activation act) {
  constexpr std::string_view op = "bias_activation_backward";
  detail::check_cpu_f32(op, "z", z);
  detail::check_cpu_f32(op, "dy", dy);
  expect_same_shape(op, "z", z, "dy", dy);
  const std::int64_t rows = z.shape().outer(), cols = z.shape().inner();
  detail::prepare_output(op, "dz", dz, z.shape());
  if (dbias) detail::check_bias(op, *dbias, cols);
  const auto zm = detail::as_array(z);
  const auto dym = detail::as_array(dy);
  auto dzm = detail::as_array(dz);
  if (!dbias) {
    detail::parallel_for(rows, detail::row_grain(cols), [&](std::int64_t begin, std::int64_t end) {
      const auto n = end - begin;
      detail::activation_backward_rows(act, zm.middleRows(begin, n), dym.middleRows(begin, n), dzm.middleRows(begin, n));
    });
    return;
  }
  detail::parallel_rows_with_column_sum(
      rows, cols, dbias->data<float>(), [&](std::int64_t begin, std::int64_t end, double* partial) {
        const auto n = end - begin;
        auto dzb = dzm.middleRows(begin, n);
        detail::activation_backward_rows(act, zm.middleRows(begin, n), dym.middleRows(begin, n), dzb);
        detail::add_column_sums_f64(&dzm(begin, 0), n, cols, partial);
      });
}

DMOE_DEF void activation_forward(cpu_t, const tensor& x, tensor& y, activation act) {
  constexpr std::string_view op = "activation_forward";
  detail::check_cpu_f32(op, "x", x);
  detail::prepare_output(op, "y", y, x.shape());
  const auto xm = detail::as_array(x);
  auto ym = detail::as_array(y);
  const std::int64_t cols = x.shape().inner();
  detail::parallel_for(x.shape().outer(), detail::row_grain(cols), [&](std::int64_t begin, std::int64_t end) {
    detail::activation_rows(act, xm.middleRows(begin, end - begin), ym.middleRows(begin, end - begin));
  });
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
