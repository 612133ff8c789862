// Top-k per row on the CPU: the k largest values of each row, largest first, with their column indices.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <string_view>

DMOE_BEGIN_NAMESPACE
namespace ops {

// x is [rows, n] (leading dimensions fold into rows); values (f32) and indices (i64) get [rows, k].
// Equal values keep the lower index first; NaN counts as larger than everything, so it is never hidden.
DMOE_DECL void topk(cpu_t, const tensor& x, std::int64_t k, tensor& values, tensor& indices);

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/ops/cpu/eigen.hpp>
#include <algorithm>
#include <numeric>
#include <vector>
#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace ops {

DMOE_DEF void topk(cpu_t, const tensor& x, std::int64_t k, tensor& values, tensor& indices) {
  constexpr std::string_view op = "topk";
  detail::check_cpu_f32(op, "x", x);
  const std::int64_t rows = x.shape().outer(), n = x.shape().inner();
  if (k < 0 || k > n)
    throw invalid_argument_error(dmoe::format("{}: k = {} but x is {} with {} columns", op, k, x.shape(), n));
  const shape out{rows, k};
  detail::prepare_output(op, "values", values, out);
  if (indices.empty()) indices = tensor::uninitialized(out, dtype::i64);
  expect_dtype(op, "indices", indices, dtype::i64);
  expect_shape(op, "indices", indices, out);
  const float* xs = x.data<float>();
  float* vs = values.data<float>();
  std::int64_t* is = indices.data<std::int64_t>();
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = xs + r * n;
    std::iota(order.begin(), order.end(), std::int64_t{0});
    auto before = [row](std::int64_t a, std::int64_t b) {
      const float va = row[a], vb = row[b];
      const bool na = va != va, nb = vb != vb;
      if (na != nb) return na;
      if (!na && va != vb) return va > vb;
      return a < b;
    };
    std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
    for (std::int64_t j = 0; j < k; ++j) {
      is[r * k + j] = order[static_cast<std::size_t>(j)];
      vs[r * k + j] = row[order[static_cast<std::size_t>(j)]];
    }
  }
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
