// Row gather and scatter-add on CUDA (grouping a batch's rows by expert and putting the weighted outputs back),
// embeddings, dropout and f16/bf16 conversion. Indices are checked on the device before anything is written.
#pragma once

#include <dmoe/ops/cuda/common.cuh>
#include <dmoe/ops/cuda/elementwise.cuh>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace cuda_detail {

__global__ void first_out_of_range_kernel(std::int64_t n, const std::int64_t* indices, std::int64_t limit,
                                                 unsigned long long* first) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    if (indices[i] < 0 || indices[i] >= limit) atomicMin(first, static_cast<unsigned long long>(i));
}

// Throws invalid_argument_error "op: index 7 at position 3 is outside [0, 5)" unless every index is in range.
inline void check_indices(std::string_view op, std::string_view what, const tensor& indices, std::int64_t limit) {
  check_f32(op, what, indices, dtype::i64);
  const std::int64_t n = indices.numel();
  if (n == 0) return;
  tensor flag = tensor::uninitialized(shape{8}, dtype::u8, device::cuda);
  auto* first = reinterpret_cast<unsigned long long*>(flag.bytes_data());
  const unsigned long long none = ~0ull;
  DMOE_CUDA_CHECK(cudaMemcpyAsync(first, &none, sizeof none, cudaMemcpyHostToDevice, stream()));
  const std::int64_t* p = indices.device_data<std::int64_t>();
  first_out_of_range_kernel<<<blocks_for(n, 256), 256, 0, stream()>>>(n, p, limit, first);
  DMOE_CUDA_CHECK_LAUNCH("first_out_of_range_kernel");
  unsigned long long bad = none;
  DMOE_CUDA_CHECK(cudaMemcpyAsync(&bad, first, sizeof bad, cudaMemcpyDeviceToHost, stream()));
  DMOE_CUDA_CHECK(cudaStreamSynchronize(stream()));
  if (bad == none) return;
  std::int64_t value = 0;
  DMOE_CUDA_CHECK(cudaMemcpy(&value, p + bad, sizeof value, cudaMemcpyDeviceToHost));
  throw invalid_argument_error(
      fmt::format("{}: {} {} at position {} is outside [0, {})", op, what, value, bad, limit));
}

// Row copies for gather (SCATTER false: dst[r] = src[idx[r]]) and scatter-add (dst[idx[r]] += scale[r] src[r]):
// a block per row (grid-stride), its threads along the row, four floats at a time when rows allow.
template <bool SCATTER, bool VEC4>
__global__ void __launch_bounds__(256) row_move_kernel(std::int64_t n, std::int64_t row, const float* src,
                                                      const std::int64_t* idx, const float* scale, float* dst) {
  for (std::int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const std::int64_t other = idx[r];
    if constexpr (!SCATTER) {
      const float* from = src + other * row;
      float* to = dst + r * row;
      if constexpr (VEC4) {
        for (std::int64_t c = threadIdx.x; c < row / 4; c += blockDim.x)
          reinterpret_cast<float4*>(to)[c] = reinterpret_cast<const float4*>(from)[c];
      } else {
        for (std::int64_t c = threadIdx.x; c < row; c += blockDim.x) to[c] = from[c];
      }
    } else {
      const float s = scale ? scale[r] : 1.0f;
      const float* from = src + r * row;
      float* to = dst + other * row;
      if constexpr (VEC4) {
        for (std::int64_t c = threadIdx.x; c < row / 4; c += blockDim.x) {
          const float4 v = reinterpret_cast<const float4*>(from)[c];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
          atomicAdd(reinterpret_cast<float4*>(to) + c, make_float4(s * v.x, s * v.y, s * v.z, s * v.w));
#else
          atomicAdd(to + 4 * c, s * v.x);
          atomicAdd(to + 4 * c + 1, s * v.y);
          atomicAdd(to + 4 * c + 2, s * v.z);
          atomicAdd(to + 4 * c + 3, s * v.w);
#endif
        }
      } else {
        for (std::int64_t c = threadIdx.x; c < row; c += blockDim.x) atomicAdd(to + c, s * from[c]);
      }
    }
  }
}

template <bool SCATTER>
void launch_row_move(const char* name, std::int64_t n, std::int64_t row, const float* src, const std::int64_t* idx,
                     const float* scale, float* dst) {
  if (n == 0 || row == 0) return;
  const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(n, 132 * 16));
  const int threads = row >= 1024 ? 256 : row >= 256 ? 64 : 32;
  if (aligned4(row, {src, dst}))
    row_move_kernel<SCATTER, true><<<blocks, threads, 0, stream()>>>(n, row, src, idx, scale, dst);
  else
    row_move_kernel<SCATTER, false><<<blocks, threads, 0, stream()>>>(n, row, src, idx, scale, dst);
  cuda::detail::check(cudaGetLastError(), name, __FILE__, __LINE__);
}

inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace cuda_detail

void gather_rows(cuda_t, const tensor& x, const tensor& indices, tensor& y) {
  constexpr std::string_view op = "gather_rows";
  cuda_detail::check_f32(op, "x", x);
  if (x.rank() < 1) throw shape_error(fmt::format("{}: x is a scalar", op));
  expect_rank(op, "indices", indices, 1);
  cuda_detail::check_indices(op, "index", indices, x.dim(0));
  const std::int64_t n = indices.dim(0), row = x.dim(0) == 0 ? 0 : x.numel() / x.dim(0);
  cuda_detail::prepare_output(op, "y", y, x.shape().with(0, n));
  if (y.overlaps(x)) throw invalid_argument_error(fmt::format("{}: y overlaps x", op));
  cuda_detail::launch_row_move<false>(op.data(), n, row, x.device_data<float>(), indices.device_data<std::int64_t>(),
                                      nullptr, y.device_data<float>());
}

void scatter_add_rows(cuda_t, const tensor& x, const tensor& indices, const tensor& scale, tensor& y) {
  constexpr std::string_view op = "scatter_add_rows";
  cuda_detail::check_f32(op, "x", x);
  cuda_detail::check_f32(op, "y", y);
  expect_rank(op, "indices", indices, 1);
  if (x.rank() < 1 || x.dim(0) != indices.dim(0) || x.shape().without_first() != y.shape().without_first())
    throw shape_error(fmt::format("{}: x is {}, indices {} and y {}", op, x.shape(), indices.shape(), y.shape()));
  if (!scale.empty()) {
    cuda_detail::check_f32(op, "scale", scale);
    expect_shape(op, "scale", scale, shape{indices.dim(0)});
  }
  cuda_detail::check_indices(op, "index", indices, y.dim(0));
  if (y.overlaps(x)) throw invalid_argument_error(fmt::format("{}: y overlaps x", op));
  const std::int64_t n = indices.dim(0), row = y.shape().without_first().numel();
  // Repeated indices add up with atomic adds: their order (and so the last bits) is not fixed.
  cuda_detail::launch_row_move<true>(op.data(), n, row, x.device_data<float>(), indices.device_data<std::int64_t>(),
                                     scale.empty() ? nullptr : scale.device_data<float>(), y.device_data<float>());
}

void embedding_forward(cuda_t, const tensor& table, const tensor& ids, tensor& y) {
  constexpr std::string_view op = "embedding_forward";
  cuda_detail::check_f32(op, "table", table);
  expect_rank(op, "table", table, 2);
  cuda_detail::check_indices(op, "id", ids, table.dim(0));
  const std::int64_t dim = table.dim(1), n = ids.numel();
  std::vector<std::int64_t> out_dims(ids.shape().begin(), ids.shape().end());
  out_dims.push_back(dim);
  cuda_detail::prepare_output(op, "y", y, shape(std::span<const std::int64_t>(out_dims)));
  cuda_detail::launch_row_move<false>(op.data(), n, dim, table.device_data<float>(), ids.device_data<std::int64_t>(),
                                      nullptr, y.device_data<float>());
}

void embedding_backward(cuda_t, const tensor& ids, const tensor& dy, tensor& dtable) {
  constexpr std::string_view op = "embedding_backward";
  cuda_detail::check_f32(op, "dtable", dtable);
  cuda_detail::check_f32(op, "dy", dy);
  expect_rank(op, "dtable", dtable, 2);
  cuda_detail::check_indices(op, "id", ids, dtable.dim(0));
  const std::int64_t dim = dtable.dim(1), n = ids.numel();
  if (dy.numel() != n * dim)
    throw shape_error(fmt::format("{}: dy is {} for ids {} and dim {}", op, dy.shape(), ids.shape(), dim));
  cuda_detail::launch_row_move<true>(op.data(), n, dim, dy.device_data<float>(), ids.device_data<std::int64_t>(),
                                     nullptr, dtable.device_data<float>());
}

void dropout_mask(cuda_t, tensor& mask, float p, random_engine& gen) {
  constexpr std::string_view op = "dropout_mask";
  cuda_detail::check_f32(op, "mask", mask);
  if (!(p >= 0.0f && p < 1.0f)) throw invalid_argument_error(fmt::format("{}: probability {} is outside [0, 1)", op, p));
  const std::uint64_t seed = cuda_detail::splitmix64(gen());
  const float keep = 1.0f / (1.0f - p);
  float* pm = mask.device_data<float>();
  cuda_detail::launch_map(op.data(), mask.numel(), [=] __device__(std::int64_t i) {
    std::uint64_t x = seed ^ (static_cast<std::uint64_t>(i) * 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    const float u = static_cast<float>(x >> 40) * 0x1p-24f;  // uniform in [0, 1)
    pm[i] = u < p ? 0.0f : keep;
  });
}

void dropout_apply(cuda_t, const tensor& x, const tensor& mask, tensor& y) {
  multiply(cuda, x, mask, y);
}

void convert(cuda_t, const tensor& x, dtype target, tensor& y) {
  constexpr std::string_view op = "convert";
  if (x.empty() || x.device() != device::cuda)
    throw invalid_argument_error(fmt::format("{}: x is {}: needs a device tensor", op, x.description()));
  const bool narrowing = x.dtype() == dtype::f32;
  const bool half_type = x.dtype() == dtype::f16 || x.dtype() == dtype::bf16;
  if (!(narrowing && (target == dtype::f16 || target == dtype::bf16)) && !(half_type && target == dtype::f32))
    throw invalid_argument_error(
        fmt::format("{}: {} to {}: converts f32 to f16 or bf16 and back", op, x.description(), target));
  cuda_detail::prepare_output(op, "y", y, x.shape(), target);
  const std::int64_t n = x.numel();
  const void* src = x.bytes_data();
  void* dst = y.bytes_data();
  if (narrowing && cuda_detail::aligned4(n, {src, dst})) {  // four values a thread: 16-byte loads, 8-byte stores
    const bool to_f16 = target == dtype::f16;
    cuda_detail::launch_map("convert f32->16 bits", n / 4, [=] __device__(std::int64_t i) {
      const float4 v = static_cast<const float4*>(src)[i];
      if (to_f16) {
        __half2* out = static_cast<__half2*>(dst) + 2 * i;
        out[0] = __floats2half2_rn(v.x, v.y);
        out[1] = __floats2half2_rn(v.z, v.w);
      } else {
        __nv_bfloat162* out = static_cast<__nv_bfloat162*>(dst) + 2 * i;
        out[0] = __floats2bfloat162_rn(v.x, v.y);
        out[1] = __floats2bfloat162_rn(v.z, v.w);
      }
    });
  } else if (narrowing && target == dtype::f16)
    cuda_detail::launch_map("convert f32->f16", n, [=] __device__(std::int64_t i) {
      static_cast<__half*>(dst)[i] = __float2half_rn(static_cast<const float*>(src)[i]);
    });
  else if (narrowing)
    cuda_detail::launch_map("convert f32->bf16", n, [=] __device__(std::int64_t i) {
      static_cast<__nv_bfloat16*>(dst)[i] = __float2bfloat16_rn(static_cast<const float*>(src)[i]);
    });
  else if (x.dtype() == dtype::f16)
    cuda_detail::launch_map("convert f16->f32", n, [=] __device__(std::int64_t i) {
      static_cast<float*>(dst)[i] = __half2float(static_cast<const __half*>(src)[i]);
    });
  else
    cuda_detail::launch_map("convert bf16->f32", n, [=] __device__(std::int64_t i) {
      static_cast<float*>(dst)[i] = __bfloat162float(static_cast<const __nv_bfloat16*>(src)[i]);
    });
}

}  // namespace ops
DMOE_END_NAMESPACE
