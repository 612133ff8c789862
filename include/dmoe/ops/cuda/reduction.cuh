// Sums over many elements on CUDA in double, in a fixed order (deterministic): block partials, then one block.
#pragma once

#include <dmoe/ops/cuda/common.cuh>

DMOE_BEGIN_NAMESPACE
namespace ops::cuda_detail {

inline constexpr int reduce_threads = 256;
inline constexpr unsigned reduce_blocks = 264;

template <class Term>
__global__ void partial_sum_kernel(std::int64_t n, Term term, double* partials) {
  __shared__ double warp_sums[reduce_threads / 32];
  double sum = 0.0;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    sum += term(i);
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < reduce_threads / 32; ++w) total += warp_sums[w];
    partials[blockIdx.x] = total;
  }
}

__global__ void final_sum_kernel(const double* partials, unsigned count, double* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    double total = 0.0;
    for (unsigned i = 0; i < count; ++i) total += partials[i];
    *out = total;
  }
}

// A device scratch of doubles for the reductions (the caching allocator makes it cheap).
inline tensor scratch_f64(std::int64_t count) {
  return tensor::uninitialized(shape{count * 8}, dtype::u8, device::cuda);
}

// Sum over i < n of term(i), in double, written to *out (device memory) on the current stream.
template <class Term>
void sum_f64_into(const char* name, std::int64_t n, Term term, double* out, tensor& scratch) {
  scratch = scratch_f64(reduce_blocks);
  auto* partials = reinterpret_cast<double*>(scratch.bytes_data());
  partial_sum_kernel<<<reduce_blocks, reduce_threads, 0, stream()>>>(n, term, partials);
  cuda::detail::check(cudaGetLastError(), name, __FILE__, __LINE__);
  final_sum_kernel<<<1, 32, 0, stream()>>>(partials, reduce_blocks, out);
  cuda::detail::check(cudaGetLastError(), name, __FILE__, __LINE__);
}

// The sum brought to the host (waits for the stream).
template <class Term>
double sum_f64(const char* name, std::int64_t n, Term term) {
  tensor scratch, result = scratch_f64(1);
  auto* out = reinterpret_cast<double*>(result.bytes_data());
  sum_f64_into(name, n, term, out, scratch);
  double host = 0.0;
  DMOE_CUDA_CHECK(cudaMemcpyAsync(&host, out, sizeof host, cudaMemcpyDeviceToHost, stream()));
  DMOE_CUDA_CHECK(cudaStreamSynchronize(stream()));
  return host;
}

}  // namespace ops::cuda_detail
DMOE_END_NAMESPACE
