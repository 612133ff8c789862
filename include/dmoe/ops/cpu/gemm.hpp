// GEMM on the CPU: c = alpha * op(a) * op(b) + beta * c with our packed kernels (or Eigen), split over the cores
// by output blocks.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/cpu/gemm_kernel.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>

DMOE_BEGIN_NAMESPACE
namespace ops {

struct gemm_options {
  bool trans_a = false;  // use a^T
  bool trans_b = false;  // use b^T
  float alpha = 1.0f;
  float beta = 0.0f;  // 0: overwrite c (its old contents are ignored, NaN included); 1: accumulate into c
};

// c = alpha * op(a) * op(b) + beta * c for rank-2 f32 tensors. c may be empty (allocated here, beta must be 0).
DMOE_DECL void gemm(cpu_t, const tensor& a, const tensor& b, tensor& c, const gemm_options& options = {});

// op(a) * op(b) as a new tensor.
DMOE_DECL tensor matmul(cpu_t, const tensor& a, const tensor& b, bool trans_a = false, bool trans_b = false);

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/ops/cpu/eigen.hpp>
#include <dmoe/ops/cpu/parallel.hpp>
#include <algorithm>
#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace ops {

namespace detail {

// c = alpha * a * b + beta * c on Eigen expressions (transposes already applied).
template <class A, class B, class C>
void gemm_block(const A& a, const B& b, C&& c, float alpha, float beta) {
  if (beta == 0.0f) {
    if (alpha == 1.0f)
      c.noalias() = a * b;
    else
      c.noalias() = alpha * (a * b);
  } else {
    if (beta != 1.0f) c *= beta;
    if (alpha == 1.0f)
      c.noalias() += a * b;
    else
      c.noalias() += alpha * (a * b);
  }
}

// Below about 8 MFLOP a second thread costs more (wake-up, duplicated packing) than it saves.
inline bool gemm_worth_splitting(std::int64_t m, std::int64_t n, std::int64_t k) {
  return 2 * m * n * k >= (std::int64_t{8} << 20);
}

// Splits c into row or column blocks (along its longer side) over the pool, with Eigen.
template <class A, class B>
void gemm_parallel(const A& a, const B& b, matrix_map c, float alpha, float beta) {
  const std::int64_t m = c.rows(), n = c.cols(), k = a.cols();
  if (!gemm_worth_splitting(m, n, k)) {
    gemm_block(a, b, c, alpha, beta);
    return;
  }
  // Blocks are multiples of 16 so every thread runs whole register tiles.
  if (m >= n) {
    parallel_for((m + 15) / 16, 1, [&](std::int64_t begin, std::int64_t end) {
      const Eigen::Index r0 = begin * 16, r1 = std::min<std::int64_t>(m, end * 16);
      gemm_block(a.middleRows(r0, r1 - r0), b, c.middleRows(r0, r1 - r0), alpha, beta);
    });
  } else {
    parallel_for((n + 15) / 16, 1, [&](std::int64_t begin, std::int64_t end) {
      const Eigen::Index c0 = begin * 16, c1 = std::min<std::int64_t>(n, end * 16);
      gemm_block(a, b.middleCols(c0, c1 - c0), c.middleCols(c0, c1 - c0), alpha, beta);
    });
  }
}

// The same split with a packed kernel; blocks are whole register tiles (each thread packs its own panels).
inline void gemm_parallel_packed(gemm_kernel kernel, const gemm_problem& g) {
  if (!gemm_worth_splitting(g.m, g.n, g.k)) {
    gemm_packed_block(kernel, g);
    return;
  }
  const std::int64_t rows = 12, cols = 32;  // multiples of both kernels' tiles
  if (g.m >= g.n) {
    parallel_for((g.m + rows - 1) / rows, 1, [&](std::int64_t begin, std::int64_t end) {
      gemm_packed_block(kernel, g.block(begin * rows, std::min(g.m, end * rows), 0, g.n));
    });
  } else {
    parallel_for((g.n + cols - 1) / cols, 1, [&](std::int64_t begin, std::int64_t end) {
      gemm_packed_block(kernel, g.block(0, g.m, begin * cols, std::min(g.n, end * cols)));
    });
  }
}

}  // namespace detail

DMOE_DEF void gemm(cpu_t, const tensor& a, const tensor& b, tensor& c, const gemm_options& options) {
  detail::check_cpu_f32("gemm", "a", a);
  detail::check_cpu_f32("gemm", "b", b);
  expect_rank("gemm", "a", a, 2);
  expect_rank("gemm", "b", b, 2);
  const std::int64_t m = options.trans_a ? a.dim(1) : a.dim(0);
  const std::int64_t k = options.trans_a ? a.dim(0) : a.dim(1);
  const std::int64_t kb = options.trans_b ? b.dim(1) : b.dim(0);
  const std::int64_t n = options.trans_b ? b.dim(0) : b.dim(1);
  if (k != kb)
    throw shape_error(dmoe::format("gemm: a is {}{} but b is {}{}: inner dimensions {} and {} differ", a.shape(),
                                  options.trans_a ? " (transposed)" : "", b.shape(),
                                  options.trans_b ? " (transposed)" : "", k, kb));
  if (c.empty() && options.beta != 0.0f)
    throw invalid_argument_error("gemm: c is empty but beta is not 0: there is nothing to accumulate into");
  detail::prepare_output("gemm", "c", c, shape{m, n});
  if (c.overlaps(a) || c.overlaps(b)) throw invalid_argument_error("gemm: c overlaps an input");
  auto cm = detail::as_matrix(c);
  if (m == 0 || n == 0) return;
  if (k == 0 || options.alpha == 0.0f) {  // as BLAS: a and b are not read, so their NaNs do not reach c
    if (options.beta == 0.0f)
      cm.setZero();
    else
      cm *= options.beta;
    return;
  }
  if (const gemm_kernel kernel = current_gemm_kernel(); kernel != gemm_kernel::eigen) {
    detail::gemm_parallel_packed(kernel, {.m = m, .n = n, .k = k, .a = a.data<float>(), .lda = a.dim(1),
                                          .trans_a = options.trans_a, .b = b.data<float>(), .ldb = b.dim(1),
                                          .trans_b = options.trans_b, .c = c.data<float>(), .ldc = n,
                                          .alpha = options.alpha, .beta = options.beta});
    return;
  }
  const auto am = detail::as_matrix(a);
  const auto bm = detail::as_matrix(b);
  if (!options.trans_a && !options.trans_b)
    detail::gemm_parallel(am, bm, cm, options.alpha, options.beta);
  else if (!options.trans_a && options.trans_b)
    detail::gemm_parallel(am, bm.transpose(), cm, options.alpha, options.beta);
  else if (options.trans_a && !options.trans_b)
    detail::gemm_parallel(am.transpose(), bm, cm, options.alpha, options.beta);
  else
    detail::gemm_parallel(am.transpose(), bm.transpose(), cm, options.alpha, options.beta);
}

DMOE_DEF tensor matmul(cpu_t, const tensor& a, const tensor& b, bool trans_a, bool trans_b) {
  tensor c;
  gemm(cpu_t{}, a, b, c, {.trans_a = trans_a, .trans_b = trans_b});
  return c;
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
