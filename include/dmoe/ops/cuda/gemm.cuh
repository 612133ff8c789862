// GEMM on CUDA through cuBLAS (row-major tensors as column-major transposes), and the linear layer's forward in one
// cuBLASLt call with the bias and the activation in its epilogue.
#pragma once

#include <dmoe/ops/cuda/common.cuh>
#include <dmoe/ops/cuda/elementwise.cuh>
#include <dmoe/ops/cuda/runtime.cuh>

#include <map>

DMOE_BEGIN_NAMESPACE
namespace ops {

void gemm(cuda_t, const tensor& a, const tensor& b, tensor& c, const gemm_options& options) {
  constexpr std::string_view op = "gemm";
  cuda_detail::check_f32(op, "a", a);
  cuda_detail::check_f32(op, "b", b);
  expect_rank(op, "a", a, 2);
  expect_rank(op, "b", b, 2);
  const std::int64_t m = options.trans_a ? a.dim(1) : a.dim(0);
  const std::int64_t k = options.trans_a ? a.dim(0) : a.dim(1);
  const std::int64_t kb = options.trans_b ? b.dim(1) : b.dim(0);
  const std::int64_t n = options.trans_b ? b.dim(0) : b.dim(1);
  if (k != kb)
    throw shape_error(fmt::format("gemm: op(a) is [{}, {}] but op(b) is [{}, {}]", m, k, kb, n));
  if (c.empty() && options.beta != 0.0f)
    throw invalid_argument_error("gemm: c is empty but beta is not 0 (nothing to accumulate into)");
  cuda_detail::prepare_output(op, "c", c, shape{m, n});
  if (c.overlaps(a) || c.overlaps(b)) throw invalid_argument_error("gemm: c overlaps an input");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (options.beta == 0.0f)
      c.zero();
    else
      scale(cuda, c, options.beta);
    return;
  }
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS sees each buffer transposed.
  const float alpha = options.alpha, beta = options.beta;
  DMOE_CUDA_CHECK(cublasSgemm(cuda::detail::blas(), options.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                              options.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, cuda_detail::blas_int(op, n),
                              cuda_detail::blas_int(op, m), cuda_detail::blas_int(op, k), &alpha,
                              b.device_data<float>(), cuda_detail::blas_int(op, b.dim(1)), a.device_data<float>(),
                              cuda_detail::blas_int(op, a.dim(1)), &beta, c.device_data<float>(),
                              cuda_detail::blas_int(op, n)));
}

tensor matmul(cuda_t, const tensor& a, const tensor& b, bool trans_a, bool trans_b) {
  tensor c;
  gemm(cuda, a, b, c, {.trans_a = trans_a, .trans_b = trans_b});
  return c;
}

namespace cuda_detail {

// cuBLASLt's workspace for the calling thread's current device and stream (two streams never share one; a grown
// one frees the old in the order of its stream).
inline void* lt_workspace(std::size_t bytes) {
  thread_local std::map<std::pair<int, cudaStream_t>, tensor> workspaces;
  tensor& workspace = workspaces[{cuda::current_device(), stream()}];
  if (workspace.empty() || workspace.nbytes() < bytes)
    workspace = tensor::uninitialized(shape{static_cast<std::int64_t>(bytes)}, dtype::u8, device::cuda);
  return workspace.bytes_data();
}

// The largest power of two (at most 256) that divides the address: cuBLASLt assumes 256 unless told.
inline std::uint32_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t a = 256;
  while (a > 1 && address % a != 0) a /= 2;
  return a;
}

struct lt_desc {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~lt_desc() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

}  // namespace cuda_detail

void linear_forward(cuda_t, const tensor& x, const tensor& w, const tensor& bias, tensor& z, tensor& y,
                           activation act) {
  constexpr std::string_view op = "linear_forward";
  cuda_detail::check_f32(op, "x", x);
  cuda_detail::check_f32(op, "w", w);
  expect_rank(op, "x", x, 2);
  expect_rank(op, "w", w, 2);
  const std::int64_t rows = x.dim(0), in = x.dim(1), out = w.dim(0);
  if (w.dim(1) != in) throw shape_error(fmt::format("{}: x is {} but w is {}", op, x.shape(), w.shape()));
  if (!bias.empty()) {
    cuda_detail::check_f32(op, "bias", bias);
    expect_shape(op, "bias", bias, shape{out});
  }
  cuda_detail::prepare_output(op, "z", z, shape{rows, out});
  cuda_detail::prepare_output(op, "y", y, shape{rows, out});
  if (act != activation::identity && z.overlaps(y))
    throw invalid_argument_error(fmt::format("{}: z may be y only for the identity", op));
  if (x.overlaps(z) || x.overlaps(y)) throw invalid_argument_error(fmt::format("{}: an output overlaps x", op));
  if (rows == 0) return;
  if (in == 0) {  // nothing to multiply: z = bias (or 0)
    gemm(cuda, x, w, z, {.trans_b = true});
    bias_activation_forward(cuda, z, bias, y, act);
    return;
  }
  // Column-major view: Y^T [out, rows] = W [out, in] (the row-major w read as its transpose, op T) * X^T [in, rows].
  cuda_detail::lt_desc d;
  DMOE_CUDA_CHECK(cublasLtMatmulDescCreate(&d.op, cuda::tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                                           CUDA_R_32F));
  const cublasOperation_t trans = CUBLAS_OP_T, none = CUBLAS_OP_N;
  DMOE_CUDA_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans)));
  DMOE_CUDA_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &none, sizeof(none)));
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const bool with_bias = !bias.empty();
  const bool aux = act != activation::identity;  // z: the pre-activation, written as the epilogue's aux output
  switch (act) {
    case activation::identity: epilogue = with_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT; break;
    case activation::relu: epilogue = with_bias ? CUBLASLT_EPILOGUE_RELU_AUX_BIAS : CUBLASLT_EPILOGUE_RELU_AUX; break;
    case activation::gelu: epilogue = with_bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX; break;
  }
  if (act == activation::relu) {
    // ReLU's aux output is a bit mask, not the pre-activation: compute z with the bias, then y = relu(z).
    linear_forward(cuda, x, w, bias, z, z, activation::identity);
    activation_forward(cuda, z, y, act);
    return;
  }
  DMOE_CUDA_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  if (with_bias) {
    const void* bias_ptr = bias.device_data<float>();
    DMOE_CUDA_CHECK(
        cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr)));
  }
  if (aux) {
    void* aux_ptr = z.device_data<float>();
    const std::int64_t ld = out;
    DMOE_CUDA_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux_ptr,
                                                   sizeof(aux_ptr)));
    DMOE_CUDA_CHECK(
        cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
  }
  DMOE_CUDA_CHECK(cublasLtMatrixLayoutCreate(&d.a, CUDA_R_32F, static_cast<std::uint64_t>(in),
                                             static_cast<std::uint64_t>(out), in));
  DMOE_CUDA_CHECK(cublasLtMatrixLayoutCreate(&d.b, CUDA_R_32F, static_cast<std::uint64_t>(in),
                                             static_cast<std::uint64_t>(rows), in));
  DMOE_CUDA_CHECK(cublasLtMatrixLayoutCreate(&d.c, CUDA_R_32F, static_cast<std::uint64_t>(out),
                                             static_cast<std::uint64_t>(rows), out));
  constexpr std::size_t workspace_bytes = 32u << 20;
  DMOE_CUDA_CHECK(cublasLtMatmulPreferenceCreate(&d.pref));
  DMOE_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                       &workspace_bytes, sizeof(workspace_bytes)));
  // Views at odd offsets (rows of a batch, a bias inside a flat buffer) are fine: say how aligned each really is.
  const std::uint32_t align_w = cuda_detail::alignment_of(w.device_data<float>()),
                      align_x = cuda_detail::alignment_of(x.device_data<float>()),
                      align_out = std::min(cuda_detail::alignment_of(y.device_data<float>()),
                                           cuda_detail::alignment_of(z.device_data<float>()));
  DMOE_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_w,
                                                       sizeof(align_w)));
  DMOE_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_x,
                                                       sizeof(align_x)));
  DMOE_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                       &align_out, sizeof(align_out)));
  DMOE_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                       &align_out, sizeof(align_out)));
  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  const cublasLtHandle_t handle = cuda::detail::blas_lt();
  if (cublasLtMatmulAlgoGetHeuristic(handle, d.op, d.a, d.b, d.c, d.c, d.pref, 1, &heuristic, &found) !=
          CUBLAS_STATUS_SUCCESS ||
      found == 0) {
    gemm(cuda, x, w, z, {.trans_b = true});
    bias_activation_forward(cuda, z, bias, y, act);
    return;
  }
  const float alpha = 1.0f, beta = 0.0f;
  void* workspace = cuda_detail::lt_workspace(workspace_bytes);
  // The identity writes z (its pre-activation) and copies it to y when they differ; the others write y, z as aux.
  float* result = aux ? y.device_data<float>() : z.device_data<float>();
  const cublasStatus_t status =
      cublasLtMatmul(handle, d.op, &alpha, w.device_data<float>(), d.a, x.device_data<float>(), d.b, &beta, result,
                     d.c, result, d.c, &heuristic.algo, workspace, workspace_bytes, cuda_detail::stream());
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) {  // a layout cuBLASLt's epilogues cannot take: the unfused path
    gemm(cuda, x, w, z, {.trans_b = true});
    bias_activation_forward(cuda, z, bias, y, act);
    return;
  }
  DMOE_CUDA_CHECK(status);
  if (!aux) copy(cuda, z, y);  // a no-op when y is z
}

}  // namespace ops
DMOE_END_NAMESPACE
