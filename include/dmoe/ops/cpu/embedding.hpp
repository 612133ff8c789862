// Embedding lookup on the CPU (gather rows of a table by id) and its gradient (scatter-add into the table).
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <string_view>

DMOE_BEGIN_NAMESPACE
namespace ops {

// y[..., :] = table[ids[...], :]; table is [vocabulary, dim], ids i64 of any shape, y is ids.shape + [dim].
DMOE_DECL void embedding_forward(cpu_t, const tensor& table, const tensor& ids, tensor& y);

// dtable[ids[...], :] += dy[..., :] (repeated ids add up).
DMOE_DECL void embedding_backward(cpu_t, const tensor& ids, const tensor& dy, tensor& dtable);

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

inline void check_ids(std::string_view op, const tensor& ids, std::int64_t vocabulary) {
  expect_dtype(op, "ids", ids, dtype::i64);
  if (ids.rank() + 1 > shape::max_rank)
    throw shape_error(dmoe::format("{}: ids is {}: one more dimension would exceed rank {}", op, ids.shape(),
                                  shape::max_rank));
  const std::int64_t* id = ids.data<std::int64_t>();
  for (std::int64_t i = 0; i < ids.numel(); ++i)
    if (id[i] < 0 || id[i] >= vocabulary)
      throw invalid_argument_error(dmoe::format("{}: id {} at position {} is outside [0, {})", op, id[i], i, vocabulary));
}

inline shape embedding_output_shape(const tensor& ids, std::int64_t dim) {
  std::array<std::int64_t, shape::max_rank> d{};
  for (std::size_t i = 0; i < ids.rank(); ++i) d[i] = ids.shape()[i];
  d[ids.rank()] = dim;
  return shape(std::span<const std::int64_t>(d.data(), ids.rank() + 1));
}

}  // namespace detail

DMOE_DEF void embedding_forward(cpu_t, const tensor& table, const tensor& ids, tensor& y) {
  constexpr std::string_view op = "embedding_forward";
  detail::check_cpu_f32(op, "table", table);
  expect_rank(op, "table", table, 2);
  detail::check_ids(op, ids, table.dim(0));
  const std::int64_t dim = table.dim(1);
  detail::prepare_output(op, "y", y, detail::embedding_output_shape(ids, dim));
  const std::int64_t* id = ids.data<std::int64_t>();
  const float* t = table.data<float>();
  float* out = y.data<float>();
  detail::parallel_for(ids.numel(), detail::row_grain(dim), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i)
      std::memcpy(out + i * dim, t + id[i] * dim, static_cast<std::size_t>(dim) * sizeof(float));
  });
}

DMOE_DEF void embedding_backward(cpu_t, const tensor& ids, const tensor& dy, tensor& dtable) {
  constexpr std::string_view op = "embedding_backward";
  detail::check_cpu_f32(op, "dtable", dtable);
  expect_rank(op, "dtable", dtable, 2);
  detail::check_ids(op, ids, dtable.dim(0));
  detail::check_cpu_f32(op, "dy", dy);
  const std::int64_t dim = dtable.dim(1);
  expect_shape(op, "dy", dy, detail::embedding_output_shape(ids, dim));
  // Serial: two threads could add into the same row; the work is memory-bound and small beside the model's GEMMs.
  // A repeated id's rows add up in double (a padding id may repeat millions of times).
  detail::scatter_add_rows_f64(dy.data<float>(), ids.data<std::int64_t>(), ids.numel(), dim, dtable.data<float>(),
                               [](std::int64_t) { return 1.0f; });
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
