// Eigen views over host tensors for the CPU ops: row-major matrix and array maps without copies.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/simd.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <string_view>

#include <Eigen/Core>  // after core/simd.hpp, which includes immintrin.h first
#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace detail {

using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using matrix_map = Eigen::Map<row_matrix>;
using const_matrix_map = Eigen::Map<const row_matrix>;
using row_array = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using row_array_map = Eigen::Map<row_array>;
using const_row_array_map = Eigen::Map<const row_array>;
using vector_map = Eigen::Map<Eigen::ArrayXf>;
using const_vector_map = Eigen::Map<const Eigen::ArrayXf>;

// Every CPU op takes f32 tensors on the host; anything else is refused with the op's name.
DMOE_LAZY inline void check_cpu_f32(std::string_view op, std::string_view name, const tensor& t) {
  if (t.empty()) throw invalid_argument_error(dmoe::format("{}: {} is an empty tensor", op, name));
  if (!t.is_host())
    throw invalid_argument_error(dmoe::format("{}: {} is {}: the CPU backend needs host tensors", op, name,
                                             t.description()));
  if (t.dtype() != dtype::f32)
    throw invalid_argument_error(dmoe::format("{}: {} is {} but should be f32", op, name, t.description()));
}

// An output: allocated with the shape when empty, else it must have that shape.
DMOE_LAZY inline void prepare_output(std::string_view op, std::string_view name, tensor& t, const shape& expected) {
  if (t.empty()) {
    t = tensor::uninitialized(expected);
    return;
  }
  check_cpu_f32(op, name, t);
  expect_shape(op, name, t, expected);
}

// The tensor as a [rows, cols] matrix where cols is its last dimension.
inline matrix_map as_matrix(tensor& t) {
  return {t.data<float>(), static_cast<Eigen::Index>(t.shape().outer()), static_cast<Eigen::Index>(t.shape().inner())};
}
inline const_matrix_map as_matrix(const tensor& t) {
  return {t.data<float>(), static_cast<Eigen::Index>(t.shape().outer()), static_cast<Eigen::Index>(t.shape().inner())};
}
inline row_array_map as_array(tensor& t) {
  return {t.data<float>(), static_cast<Eigen::Index>(t.shape().outer()), static_cast<Eigen::Index>(t.shape().inner())};
}
inline const_row_array_map as_array(const tensor& t) {
  return {t.data<float>(), static_cast<Eigen::Index>(t.shape().outer()), static_cast<Eigen::Index>(t.shape().inner())};
}
inline vector_map as_vector(tensor& t) { return {t.data<float>(), static_cast<Eigen::Index>(t.numel())}; }
inline const_vector_map as_vector(const tensor& t) {
  return {t.data<float>(), static_cast<Eigen::Index>(t.numel())};
}

// Rows below which splitting an elementwise loop across threads costs more than it saves.
inline constexpr std::int64_t elementwise_grain = 1 << 15;

// A row grain for a [rows, cols] elementwise loop.
inline std::int64_t row_grain(std::int64_t cols) { return std::max<std::int64_t>(1, elementwise_grain / std::max<std::int64_t>(1, cols)); }

}  // namespace detail
}  // namespace ops
DMOE_END_NAMESPACE
