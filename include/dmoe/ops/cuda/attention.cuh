// Causal multi-head self-attention on CUDA: strided-batched cuBLAS GEMMs over the heads of each sample and a
// warp-per-row causal softmax (forward) and softmax backward; the arithmetic of ops/cpu/attention.hpp.
#pragma once

#include <dmoe/ops/cuda/common.cuh>
#include <dmoe/ops/cuda/norm.cuh>
#include <dmoe/ops/cuda/runtime.cuh>

#include <cmath>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace cuda_detail {

// Row-major C_i = alpha op(A_i) op(B_i) + beta C_i for i < batch (C_i [m, n]), each matrix with its leading
// dimension (row length) and the stride between consecutive matrices, in elements.
inline void strided_gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                         const float* a, std::int64_t lda, std::int64_t stride_a, const float* b, std::int64_t ldb,
                         std::int64_t stride_b, float beta, float* c, std::int64_t ldc, std::int64_t stride_c,
                         std::int64_t batch) {
  DMOE_CUDA_CHECK(cublasSgemmStridedBatched(
      cuda::detail::blas(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
      blas_int("attention", n), blas_int("attention", m), blas_int("attention", k), &alpha, b,
      blas_int("attention", ldb), stride_b, a, blas_int("attention", lda), stride_a, &beta, c,
      blas_int("attention", ldc), stride_c, blas_int("attention", batch)));
}

// Row t of each [T, T] block: softmax over columns 0..t, zeros after.
__global__ void causal_softmax_kernel(std::int64_t rows, std::int64_t t_len, float* p) {
  const std::int64_t r = blockIdx.x * std::int64_t(rows_per_block) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const std::int64_t t = r % t_len;
  float* row = p + r * t_len;
  float m = -INFINITY;
  for (std::int64_t i = lane; i <= t; i += 32) m = fmaxf(m, row[i]);
  m = warp_max(m);
  double s = 0.0;
  for (std::int64_t i = lane; i <= t; i += 32) {
    const float e = expf(row[i] - m);
    row[i] = e;
    s += e;
  }
  const auto sum = static_cast<float>(warp_sum(s));
  for (std::int64_t i = lane; i < t_len; i += 32) row[i] = i <= t ? row[i] / sum : 0.0f;
}

// dp = p * (dp - sum(p * dp)) * scale over columns 0..t, zeros after.
__global__ void causal_softmax_backward_kernel(std::int64_t rows, std::int64_t t_len, const float* p,
                                                      float* dp, float scale) {
  const std::int64_t r = blockIdx.x * std::int64_t(rows_per_block) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const std::int64_t t = r % t_len;
  const float* pr = p + r * t_len;
  float* dr = dp + r * t_len;
  double s = 0.0;
  for (std::int64_t i = lane; i <= t; i += 32) s += static_cast<double>(pr[i]) * dr[i];
  const auto dot = static_cast<float>(warp_sum(s));
  for (std::int64_t i = lane; i < t_len; i += 32) dr[i] = i <= t ? pr[i] * (dr[i] - dot) * scale : 0.0f;
}

struct attention_dims {
  std::int64_t batch, seq, width, head_width;
};

inline attention_dims check_attention(std::string_view op, const tensor& qkv, std::int64_t heads) {
  check_f32(op, "qkv", qkv);
  expect_rank(op, "qkv", qkv, 3);
  if (heads < 1 || qkv.dim(2) % 3 != 0 || (qkv.dim(2) / 3) % heads != 0)
    throw shape_error(fmt::format("{}: qkv is {} but its last dimension must be 3 * width with width divisible by "
                                  "{} heads",
                                  op, qkv.shape(), heads));
  const std::int64_t width = qkv.dim(2) / 3;
  return {qkv.dim(0), qkv.dim(1), width, width / heads};
}

}  // namespace cuda_detail

void causal_attention_forward(cuda_t, const tensor& qkv, std::int64_t heads, tensor& y, tensor& probs) {
  constexpr std::string_view op = "causal_attention_forward";
  const auto d = cuda_detail::check_attention(op, qkv, heads);
  cuda_detail::prepare_output(op, "y", y, shape{d.batch, d.seq, d.width});
  cuda_detail::prepare_output(op, "probs", probs, shape{d.batch, heads, d.seq, d.seq});
  if (d.batch == 0 || d.seq == 0 || d.width == 0) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.head_width));
  const float* in = qkv.device_data<float>();
  float* out = y.device_data<float>();
  float* p = probs.device_data<float>();
  const std::int64_t T = d.seq, D = d.head_width, W = d.width;
  for (std::int64_t b = 0; b < d.batch; ++b) {
    const float* base = in + b * T * 3 * W;
    // scores = scale * q k^T for every head of sample b.
    cuda_detail::strided_gemm(false, true, T, T, D, scale, base, 3 * W, D, base + W, 3 * W, D, 0.0f,
                              p + b * heads * T * T, T, T * T, heads);
  }
  const std::int64_t rows = d.batch * heads * T;
  cuda_detail::causal_softmax_kernel<<<cuda_detail::row_blocks(rows), 32 * cuda_detail::rows_per_block, 0,
                                       cuda_detail::stream()>>>(rows, T, p);
  DMOE_CUDA_CHECK_LAUNCH("causal_softmax_kernel");
  for (std::int64_t b = 0; b < d.batch; ++b) {
    const float* v = in + b * T * 3 * W + 2 * W;
    cuda_detail::strided_gemm(false, false, T, D, T, 1.0f, p + b * heads * T * T, T, T * T, v, 3 * W, D, 0.0f,
                              out + b * T * W, W, D, heads);
  }
}

void causal_attention_backward(cuda_t, const tensor& qkv, const tensor& probs, const tensor& dy,
                                      std::int64_t heads, tensor& dqkv) {
  constexpr std::string_view op = "causal_attention_backward";
  const auto d = cuda_detail::check_attention(op, qkv, heads);
  cuda_detail::check_f32(op, "probs", probs);
  expect_shape(op, "probs", probs, shape{d.batch, heads, d.seq, d.seq});
  cuda_detail::check_f32(op, "dy", dy);
  expect_shape(op, "dy", dy, shape{d.batch, d.seq, d.width});
  cuda_detail::prepare_output(op, "dqkv", dqkv, qkv.shape());
  if (d.batch == 0 || d.seq == 0 || d.width == 0) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.head_width));
  const std::int64_t T = d.seq, D = d.head_width, W = d.width;
  const float* in = qkv.device_data<float>();
  const float* g = dy.device_data<float>();
  const float* p = probs.device_data<float>();
  float* dout = dqkv.device_data<float>();
  tensor dp = tensor::uninitialized(shape{d.batch, heads, T, T}, dtype::f32, device::cuda);
  float* dpp = dp.device_data<float>();
  for (std::int64_t b = 0; b < d.batch; ++b) {
    const float* base = in + b * T * 3 * W;
    const float* go = g + b * T * W;
    const float* pb = p + b * heads * T * T;
    float* db = dout + b * T * 3 * W;
    // dv = p^T go; dp = go v^T.
    cuda_detail::strided_gemm(true, false, T, D, T, 1.0f, pb, T, T * T, go, W, D, 0.0f, db + 2 * W, 3 * W, D, heads);
    cuda_detail::strided_gemm(false, true, T, T, D, 1.0f, go, W, D, base + 2 * W, 3 * W, D, 0.0f,
                              dpp + b * heads * T * T, T, T * T, heads);
  }
  const std::int64_t rows = d.batch * heads * T;
  cuda_detail::causal_softmax_backward_kernel<<<cuda_detail::row_blocks(rows), 32 * cuda_detail::rows_per_block, 0,
                                                cuda_detail::stream()>>>(rows, T, p, dpp, scale);
  DMOE_CUDA_CHECK_LAUNCH("causal_softmax_backward_kernel");
  for (std::int64_t b = 0; b < d.batch; ++b) {
    const float* base = in + b * T * 3 * W;
    const float* ds = dpp + b * heads * T * T;
    float* db = dout + b * T * 3 * W;
    // dq = ds k; dk = ds^T q.
    cuda_detail::strided_gemm(false, false, T, D, T, 1.0f, ds, T, T * T, base + W, 3 * W, D, 0.0f, db, 3 * W, D,
                              heads);
    cuda_detail::strided_gemm(true, false, T, D, T, 1.0f, ds, T, T * T, base, 3 * W, D, 0.0f, db + W, 3 * W, D,
                              heads);
  }
}

}  // namespace ops
DMOE_END_NAMESPACE
