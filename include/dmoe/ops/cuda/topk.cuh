// Top-k on CUDA: per row (a block per row, repeated block arg-max over 64-bit keys that order NaN first and equal
// values by index) and the grid gating's product-key top-k (a block per sample, bitonic sorts in shared memory).
#pragma once

#include <dmoe/ops/cpu/topk.hpp>
#include <dmoe/ops/cuda/common.cuh>
#include <dmoe/ops/cuda/elementwise.cuh>

#include <bit>
#include <vector>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace cuda_detail {

inline constexpr int topk_threads = 256;
inline constexpr std::int64_t topk_max_row = 4096;  // a row's keys fit shared memory

// Larger value -> larger key; NaN above everything; equal values: the lower index has the larger key. 0 = taken.
__device__ __forceinline__ unsigned long long topk_key(float v, std::int64_t index) {
  unsigned bits = v == 0.0f ? 0u : __float_as_uint(v);  // -0 and +0 are equal values
  unsigned ordered;
  if (v != v)
    ordered = 0xffffffffu;
  else
    ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<unsigned long long>(ordered) << 32) | (0xffffffffu - static_cast<unsigned>(index));
}

__global__ void topk_kernel(std::int64_t n, std::int64_t k, const float* x, float* values,
                                   std::int64_t* indices) {
  __shared__ unsigned long long keys[topk_max_row];
  __shared__ unsigned long long best[topk_threads / 32];
  const std::int64_t row = blockIdx.x;
  const float* xr = x + row * n;
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) keys[i] = topk_key(xr[i], i);
  __syncthreads();
  for (std::int64_t r = 0; r < k; ++r) {
    unsigned long long m = 0;
    for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) m = max(m, keys[i]);
    for (int offset = 16; offset > 0; offset /= 2) m = max(m, __shfl_xor_sync(0xffffffffu, m, offset));
    if (threadIdx.x % 32 == 0) best[threadIdx.x / 32] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long b = 0;
      for (int w = 0; w < topk_threads / 32; ++w) b = max(b, best[w]);
      const auto index = static_cast<std::int64_t>(0xffffffffu - static_cast<unsigned>(b & 0xffffffffu));
      values[row * k + r] = xr[index];
      indices[row * k + r] = index;
      keys[index] = 0;
    }
    __syncthreads();
  }
}

// ---- product-key top-k ----
// Sums of the dimensions' scores are taken in double, left to right, as on the CPU.
__device__ __forceinline__ bool pk_before(double sa, unsigned long long ka, double sb, unsigned long long kb) {
  return sa > sb || (sa == sb && ka < kb);
}

// Sorts count (a power of two) entries best first.
__device__ inline void pk_bitonic(double* s, unsigned long long* key, int count) {
  for (int size = 2; size <= count; size <<= 1)
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < count; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool forward = (i & size) == 0;
          const bool swap = forward ? pk_before(s[j], key[j], s[i], key[i]) : pk_before(s[i], key[i], s[j], key[j]);
          if (swap) {
            const double ts = s[i];
            s[i] = s[j];
            s[j] = ts;
            const unsigned long long tk = key[i];
            key[i] = key[j];
            key[j] = tk;
          }
        }
      }
      __syncthreads();
    }
}

inline constexpr int pk_threads = 512;

struct pk_args {
  const float* scores;
  std::int64_t width;          // sum(grid)
  const std::uint32_t* grid;   // device copy of the extents
  const std::int64_t* offsets; // column where each dimension starts
  int dims;
  int k;
  int capacity;  // entries of the sort buffer (a power of two)
  float* out_scores;
  std::int64_t* out_keys;
  int* nonfinite;
};

__global__ void product_key_kernel(pk_args a) {
  extern __shared__ unsigned char shared[];
  auto* buf_key = reinterpret_cast<unsigned long long*>(shared);
  auto* l_key = buf_key + a.capacity;
  auto* m_key = l_key + a.k;
  auto* buf_s = reinterpret_cast<double*>(m_key + a.k);
  double* l_s = buf_s + a.capacity;
  double* m_s = l_s + a.k;
  int* row_start = reinterpret_cast<int*>(m_s + a.k);  // k + 1 prefix sums
  __shared__ int l_size, m_size, c_size;
  const std::int64_t b = blockIdx.x;
  const float* row = a.scores + b * a.width;

  // Loads dimension d's scores into the buffer, sorts them and keeps the best k in (s, key).
  auto best_of_dimension = [&](int d, double* s, unsigned long long* key) -> int {
    const int extent = static_cast<int>(a.grid[d]);
    int count = 1;
    while (count < extent) count <<= 1;
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
      if (i < extent) {
        const float v = row[a.offsets[d] + i];
        if (!isfinite(v)) atomicOr(a.nonfinite, 1);
        buf_s[i] = v;
        buf_key[i] = static_cast<unsigned long long>(i);
      } else {
        buf_s[i] = -INFINITY;
        buf_key[i] = ~0ull;
      }
    }
    __syncthreads();
    pk_bitonic(buf_s, buf_key, count);
    const int keep = min(extent, a.k);
    for (int i = threadIdx.x; i < keep; i += blockDim.x) {
      s[i] = buf_s[i];
      key[i] = buf_key[i];
    }
    __syncthreads();
    return keep;
  };

  if (threadIdx.x == 0) l_size = 0;
  const int first = best_of_dimension(0, l_s, l_key);
  if (threadIdx.x == 0) l_size = first;
  __syncthreads();
  for (int d = 1; d < a.dims; ++d) {
    const int got = best_of_dimension(d, m_s, m_key);
    if (threadIdx.x == 0) {
      m_size = got;
      int total = 0;
      for (int i = 0; i < l_size; ++i) {
        row_start[i] = total;
        total += min(m_size, a.k / (i + 1));  // pairs (i, j) with (i + 1)(j + 1) <= k
      }
      row_start[l_size] = total;
      c_size = total;
    }
    __syncthreads();
    int count = 1;
    while (count < c_size) count <<= 1;
    const auto extent = static_cast<unsigned long long>(a.grid[d]);
    for (int c = threadIdx.x; c < count; c += blockDim.x) {
      if (c < c_size) {
        int lo = 0, hi = l_size - 1;
        while (lo < hi) {
          const int mid = (lo + hi + 1) / 2;
          if (row_start[mid] <= c)
            lo = mid;
          else
            hi = mid - 1;
        }
        const int j = c - row_start[lo];
        buf_s[c] = l_s[lo] + m_s[j];
        buf_key[c] = l_key[lo] * extent + m_key[j];
      } else {
        buf_s[c] = -INFINITY;
        buf_key[c] = ~0ull;
      }
    }
    __syncthreads();
    pk_bitonic(buf_s, buf_key, count);
    const int keep = min(c_size, a.k);
    for (int i = threadIdx.x; i < keep; i += blockDim.x) {
      l_s[i] = buf_s[i];
      l_key[i] = buf_key[i];
    }
    __syncthreads();
    if (threadIdx.x == 0) l_size = keep;
    __syncthreads();
  }
  for (int i = threadIdx.x; i < a.k; i += blockDim.x) {
    a.out_scores[b * a.k + i] = static_cast<float>(l_s[i]);
    a.out_keys[b * a.k + i] = static_cast<std::int64_t>(l_key[i]);
  }
}

inline int next_power_of_two(std::int64_t n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

}  // namespace cuda_detail

void topk(cuda_t, const tensor& x, std::int64_t k, tensor& values, tensor& indices) {
  constexpr std::string_view op = "topk";
  cuda_detail::check_f32(op, "x", x);
  const std::int64_t rows = cuda_detail::rows_of(x), n = cuda_detail::cols_of(x);
  if (k < 0 || k > n)
    throw invalid_argument_error(fmt::format("{}: k = {} but x is {} with {} columns", op, k, x.shape(), n));
  const shape out{rows, k};  // leading dimensions fold into rows, as on the CPU
  cuda_detail::prepare_output(op, "values", values, out);
  cuda_detail::prepare_output(op, "indices", indices, out, dtype::i64);
  if (rows == 0 || k == 0) return;
  if (n > cuda_detail::topk_max_row) {  // rows beyond shared memory: the CPU's top-k on a host copy
    tensor hv, hi;
    topk(cpu, x.to(device::host), k, hv, hi);
    values.copy_from(hv);
    indices.copy_from(hi);
    return;
  }
  cuda_detail::topk_kernel<<<static_cast<unsigned>(rows), cuda_detail::topk_threads, 0, cuda_detail::stream()>>>(
      n, k, x.device_data<float>(), values.device_data<float>(), indices.device_data<std::int64_t>());
  DMOE_CUDA_CHECK_LAUNCH("topk_kernel");
}

void product_key_topk(cuda_t, const tensor& grid_scores, std::span<const std::uint32_t> grid, std::int64_t k,
                             tensor& scores, tensor& keys) {
  constexpr std::string_view op = "product_key_topk";
  cuda_detail::check_f32(op, "grid_scores", grid_scores);
  expect_rank(op, "grid_scores", grid_scores, 2);
  if (grid.empty()) throw invalid_argument_error(fmt::format("{}: the grid has no dimensions", op));
  std::vector<std::int64_t> offsets(grid.size() + 1, 0);
  double experts = 1;
  std::uint32_t largest = 0;
  for (std::size_t d = 0; d < grid.size(); ++d) {
    if (grid[d] == 0) throw invalid_argument_error(fmt::format("{}: dimension {} of the grid is empty", op, d));
    offsets[d + 1] = offsets[d] + grid[d];
    experts *= grid[d];
    largest = std::max(largest, grid[d]);
  }
  if (grid_scores.dim(1) != offsets.back())
    throw shape_error(fmt::format("{}: grid_scores is {} but the grid's width is {}", op, grid_scores.shape(),
                                  offsets.back()));
  if (k < 1 || static_cast<double>(k) > experts)
    throw invalid_argument_error(fmt::format("{}: k is {} for {} experts", op, k, experts));
  if (k > cuda_product_key_max_k || largest > cuda_product_key_max_extent)
    throw invalid_argument_error(fmt::format("{}: k {} or extent {} beyond the CUDA kernel's limits ({}, {})", op, k,
                                             largest, cuda_product_key_max_k, cuda_product_key_max_extent));
  const std::int64_t batch = grid_scores.dim(0);
  cuda_detail::prepare_output(op, "scores", scores, shape{batch, k});
  cuda_detail::prepare_output(op, "keys", keys, shape{batch, k}, dtype::i64);
  if (batch == 0) return;
  std::int64_t candidates = 0;
  for (std::int64_t i = 1; i <= k; ++i) candidates += k / i;
  const int capacity = cuda_detail::next_power_of_two(std::max<std::int64_t>(largest, candidates));
  // Device copies of the grid, the offsets and the non-finite flag, in one allocation.
  const std::size_t grid_bytes = grid.size() * 4, offsets_bytes = offsets.size() * 8;
  std::vector<std::byte> staging(offsets_bytes + 8 + grid_bytes, std::byte{0});
  std::memcpy(staging.data(), offsets.data(), offsets_bytes);
  std::memcpy(staging.data() + offsets_bytes + 8, grid.data(), grid_bytes);
  tensor meta = tensor::uninitialized(shape{static_cast<std::int64_t>(staging.size())}, dtype::u8, device::cuda);
  DMOE_CUDA_CHECK(cudaMemcpyAsync(meta.bytes_data(), staging.data(), staging.size(), cudaMemcpyHostToDevice,
                                  cuda_detail::stream()));
  cuda_detail::pk_args args{grid_scores.device_data<float>(),
                            grid_scores.dim(1),
                            reinterpret_cast<const std::uint32_t*>(meta.bytes_data() + offsets_bytes + 8),
                            reinterpret_cast<const std::int64_t*>(meta.bytes_data()),
                            static_cast<int>(grid.size()),
                            static_cast<int>(k),
                            capacity,
                            scores.device_data<float>(),
                            keys.device_data<std::int64_t>(),
                            reinterpret_cast<int*>(meta.bytes_data() + offsets_bytes)};
  {  // non-finite scores are refused before anything is written, naming the first as the CPU does
    tensor flag = tensor::uninitialized(shape{8}, dtype::u8, device::cuda);
    auto* first = reinterpret_cast<unsigned long long*>(flag.bytes_data());
    DMOE_CUDA_CHECK(cudaMemsetAsync(first, 0xff, 8, cuda_detail::stream()));
    const float* ps = grid_scores.device_data<float>();
    cuda_detail::launch_map("product_key_topk finite check", grid_scores.numel(), [=] __device__(std::int64_t i) {
      if (!isfinite(ps[i])) atomicMin(first, static_cast<unsigned long long>(i));
    });
    unsigned long long bad = ~0ull;
    DMOE_CUDA_CHECK(cudaMemcpyAsync(&bad, first, 8, cudaMemcpyDeviceToHost, cuda_detail::stream()));
    DMOE_CUDA_CHECK(cudaStreamSynchronize(cuda_detail::stream()));
    if (bad != ~0ull) {
      float value = 0;
      DMOE_CUDA_CHECK(cudaMemcpy(&value, ps + bad, sizeof value, cudaMemcpyDeviceToHost));
      const auto width = static_cast<unsigned long long>(grid_scores.dim(1));
      throw invalid_argument_error(fmt::format("{}: score {} of sample {} is {}", op, bad % width, bad / width, value));
    }
  }
  const std::size_t shared_bytes =
      static_cast<std::size_t>(capacity + 2 * k) * 16 + static_cast<std::size_t>(k + 1) * 4;
  DMOE_CUDA_CHECK(cudaFuncSetAttribute(cuda_detail::product_key_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(shared_bytes)));
  cuda_detail::product_key_kernel<<<static_cast<unsigned>(batch), cuda_detail::pk_threads, shared_bytes,
                                    cuda_detail::stream()>>>(args);
  DMOE_CUDA_CHECK_LAUNCH("product_key_kernel");
  DMOE_CUDA_CHECK(cudaStreamSynchronize(cuda_detail::stream()));
}

}  // namespace ops
DMOE_END_NAMESPACE
