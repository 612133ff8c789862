// Shared pieces of the CUDA backend's definitions (nvcc only): error checks that name the call, file and line,
// the current stream, launch sizes and the checks every cuda op makes on its tensors.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/ops/cuda.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace cuda::detail {

[[noreturn]] inline void throw_cuda(std::string_view call, const char* file, int line, std::string_view name,
                                    std::string_view text) {
  throw device_error(fmt::format("{} failed at {}:{}: {} ({})", call, file, line, name, text));
}

inline void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so the next call does not report it again
  throw_cuda(call, file, line, cudaGetErrorName(status), cudaGetErrorString(status));
}
inline void check(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw_cuda(call, file, line, cublasGetStatusName(status), cublasGetStatusString(status));
}

}  // namespace cuda::detail
DMOE_END_NAMESPACE

// Throws device_error "cudaMalloc(&p, n) failed at file:line: cudaErrorMemoryAllocation (out of memory)".
#define DMOE_CUDA_CHECK(call) ::dmoe::cuda::detail::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: a bad configuration is reported at once, faults inside the kernel by a later call.
#define DMOE_CUDA_CHECK_LAUNCH(kernel_name) \
  ::dmoe::cuda::detail::check(cudaGetLastError(), kernel_name " launch", __FILE__, __LINE__)

DMOE_BEGIN_NAMESPACE
namespace ops::cuda_detail {

inline cudaStream_t stream() noexcept { return cuda::current_stream(); }

// Blocks of `threads` for a grid-stride loop over n items: enough to fill the GPU, no more.
inline unsigned blocks_for(std::int64_t n, int threads) {
  const std::int64_t needed = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<std::int64_t>(needed, 1, 132 * 32));
}

// Every cuda op takes f32 tensors on the device; anything else is refused with the op's name.
inline void check_f32(std::string_view op, std::string_view name, const tensor& t, dtype type = dtype::f32) {
  if (t.empty()) throw invalid_argument_error(fmt::format("{}: {} is an empty tensor", op, name));
  if (t.device() != device::cuda)
    throw invalid_argument_error(
        fmt::format("{}: {} is {}: the CUDA backend needs device tensors (tensor::to(device::cuda))", op, name,
                    t.description()));
  if (t.dtype() != type)
    throw invalid_argument_error(fmt::format("{}: {} is {} but should be {}", op, name, t.description(), type));
  int current = 0;
  if (cudaGetDevice(&current) == cudaSuccess && t.device_index() != current)
    throw invalid_argument_error(fmt::format("{}: {} is {} but this thread computes on cuda:{} (copy it with to())",
                                             op, name, t.description(), current));
}

// cuBLAS takes int sizes: larger ones are refused with the op's name rather than wrapped.
inline int blas_int(std::string_view op, std::int64_t value) {
  if (value > 0x7fffffff)
    throw shape_error(fmt::format("{}: a dimension of {} is beyond cuBLAS's 2^31 - 1", op, value));
  return static_cast<int>(value);
}
inline void check_on_device(std::string_view op, std::string_view name, const tensor& t, dtype type) {
  check_f32(op, name, t, type);
}

// An output: allocated on the device with the shape when empty, else it must be an f32 device tensor of that shape.
inline void prepare_output(std::string_view op, std::string_view name, tensor& t, const shape& expected,
                           dtype type = dtype::f32) {
  if (t.empty()) {
    t = tensor::uninitialized(expected, type, device::cuda);
    return;
  }
  check_f32(op, name, t, type);
  expect_shape(op, name, t, expected);
}

inline std::int64_t rows_of(const tensor& t) { return t.shape().outer(); }
inline std::int64_t cols_of(const tensor& t) { return t.shape().inner(); }

// Warp-level sum (all 32 lanes get the total).
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

}  // namespace ops::cuda_detail
DMOE_END_NAMESPACE
