// Elementwise kernels on CUDA: add, axpy, multiply, scale, copy, broadcast and column sums (in double), and the
// fused bias + activation forward and backward (the backward sums the bias gradient in the same pass).
#pragma once

#include <dmoe/ops/cuda/common.cuh>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace cuda_detail {

inline constexpr int elementwise_threads = 256;

// The same formulas as the CPU's (ops/cpu/activation.hpp): GELU's tanh form with its saturation clamps.
__device__ __forceinline__ float act_forward(activation act, float z) {
  switch (act) {
    case activation::identity: return z;
    case activation::relu: return z > 0.0f ? z : 0.0f;
    case activation::gelu: {
      const float k0 = 0.7978845608028654f, k1 = 0.044715f;
      return 0.5f * fmaxf(z, -10.0f) * (1.0f + tanhf(k0 * (z + k1 * z * z * z)));
    }
  }
  return z;
}
__device__ __forceinline__ float act_backward(activation act, float z, float dy) {
  switch (act) {
    case activation::identity: return dy;
    case activation::relu: return z > 0.0f ? dy : 0.0f;
    case activation::gelu: {
      const float k0 = 0.7978845608028654f, k1 = 0.044715f;
      const float zc = fminf(fmaxf(z, -10.0f), 10.0f);
      const float t = tanhf(k0 * (zc + k1 * zc * zc * zc));
      return dy * (0.5f * (1.0f + t) + 0.5f * zc * (1.0f - t * t) * k0 * (1.0f + 3.0f * k1 * zc * zc));
    }
  }
  return dy;
}

template <class F>
__global__ void map_kernel(std::int64_t n, F f) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    f(i);
}

// f(i) for every i < n on the current stream.
template <class F>
void launch_map(const char* name, std::int64_t n, F f) {
  if (n == 0) return;
  map_kernel<<<blocks_for(n, elementwise_threads), elementwise_threads, 0, stream()>>>(n, f);
  cuda::detail::check(cudaGetLastError(), name, __FILE__, __LINE__);
}

// Four floats at a time when every pointer is 16-byte aligned and n is a multiple of 4.
inline bool aligned4(std::int64_t n, std::initializer_list<const void*> pointers) {
  if (n % 4 != 0) return false;
  for (const void* p : pointers)
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// Column sums of a [rows, cols] matrix of terms, added to out[cols] (+=), in double and in a fixed order
// (deterministic). A block owns 32 columns of up to 256 rows, its 8 warps striding over them; each block writes
// its partial sums, and a second kernel adds the partials of each column in order. term(r, c) is called exactly
// once per element, so it may also write (the bias backward writes dz on the way).
inline constexpr int column_chunk_rows = 256;

template <class Term>
__global__ void column_partial_kernel(std::int64_t rows, std::int64_t cols, std::int64_t chunk_rows, Term term,
                                      double* partials) {
  __shared__ double partial[8][33];
  const std::int64_t col = blockIdx.x * 32ll + threadIdx.x;
  const std::int64_t first = blockIdx.y * chunk_rows;
  const std::int64_t last = min(rows, first + chunk_rows);
  double sum = 0.0;
  if (col < cols) {
#pragma unroll 4
    for (std::int64_t r = first + threadIdx.y; r < last; r += 8) sum += static_cast<double>(term(r, col));
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    double total = 0.0;
    for (int w = 0; w < 8; ++w) total += partial[w][threadIdx.x];
    partials[blockIdx.y * cols + col] = total;
  }
}

// out[c] += the sum over chunks of partials[chunk, c]: a block owns 32 columns, its 32 warps take every 32nd
// chunk and meet in shared memory in a fixed order (deterministic, and enough loads in flight for tall tables).
__global__ void __launch_bounds__(1024) column_finish_kernel(std::int64_t chunks, std::int64_t cols,
                                                            const double* partials, float* out) {
  __shared__ double partial[32][33];
  const std::int64_t col = blockIdx.x * 32ll + threadIdx.x;
  double total = 0.0;
  if (col < cols) {
#pragma unroll 4
    for (std::int64_t c = threadIdx.y; c < chunks; c += 32) total += partials[c * cols + col];
  }
  partial[threadIdx.y][threadIdx.x] = total;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    double sum = 0.0;
    for (int w = 0; w < 32; ++w) sum += partial[w][threadIdx.x];
    out[col] = static_cast<float>(static_cast<double>(out[col]) + sum);
  }
}

inline void finish_columns(const char* name, std::int64_t chunks, std::int64_t cols, const double* partials,
                           float* out) {
  column_finish_kernel<<<static_cast<unsigned>((cols + 31) / 32), dim3(32, 32), 0, stream()>>>(chunks, cols, partials,
                                                                                              out);
  cuda::detail::check(cudaGetLastError(), name, __FILE__, __LINE__);
}

inline tensor partial_table(std::int64_t chunks, std::int64_t cols) {
  return tensor::uninitialized(shape{chunks * cols * 8}, dtype::u8, device::cuda);
}

template <class Term>
void launch_column_sum(const char* name, std::int64_t rows, std::int64_t cols, Term term, float* out) {
  if (cols == 0) return;
  // At most 65,535 chunks (the grid's y limit): very tall matrices get taller chunks.
  const std::int64_t chunk_rows = std::max<std::int64_t>(column_chunk_rows, (rows + 65534) / 65535);
  const std::int64_t chunks = std::max<std::int64_t>(1, (rows + chunk_rows - 1) / chunk_rows);
  const tensor table = partial_table(chunks, cols);
  auto* partials = reinterpret_cast<double*>(const_cast<std::byte*>(table.bytes_data()));
  column_partial_kernel<<<dim3(static_cast<unsigned>((cols + 31) / 32), static_cast<unsigned>(chunks)), dim3(32, 8),
                          0, stream()>>>(rows, cols, chunk_rows, term, partials);
  cuda::detail::check(cudaGetLastError(), name, __FILE__, __LINE__);
  finish_columns(name, chunks, cols, partials, out);
}

// Activation backward with the bias gradient: a block owns 256 * 4 columns of 64 rows; each thread loads its four
// columns of a row before it stores any (so the loads overlap), writes dz and keeps the column sums in double
// registers; the partials of each chunk of rows go to a table that finish_columns adds up in order.
inline constexpr int bias_backward_rows = 64;

__global__ void __launch_bounds__(256) bias_activation_backward_kernel(std::int64_t rows, std::int64_t cols,
                                                                      activation act, const float* z,
                                                                      const float* dy, float* dz,
                                                                      double* partials) {
  const std::int64_t c0 = blockIdx.x * 1024ll + threadIdx.x;
  const std::int64_t first = blockIdx.y * std::int64_t(bias_backward_rows);
  const std::int64_t last = min(rows, first + bias_backward_rows);
  double sum[4] = {0.0, 0.0, 0.0, 0.0};
  for (std::int64_t r = first; r < last; ++r) {
    float zv[4], gv[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const std::int64_t c = c0 + 256 * j;
      zv[j] = c < cols ? z[r * cols + c] : 0.0f;
      gv[j] = c < cols ? dy[r * cols + c] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const std::int64_t c = c0 + 256 * j;
      if (c < cols) {
        const float g = act_backward(act, zv[j], gv[j]);
        dz[r * cols + c] = g;
        sum[j] += static_cast<double>(g);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const std::int64_t c = c0 + 256 * j;
    if (c < cols) partials[blockIdx.y * cols + c] = sum[j];
  }
}

inline void check_bias(std::string_view op, const tensor& bias, std::int64_t cols) {
  check_f32(op, "bias", bias);
  if (bias.rank() != 1 || bias.dim(0) != cols)
    throw shape_error(fmt::format("{}: bias is {} but should be [{}]", op, bias.shape(), cols));
}

}  // namespace cuda_detail

void add(cuda_t, const tensor& a, const tensor& b, tensor& y) {
  cuda_detail::check_f32("add", "a", a);
  cuda_detail::check_f32("add", "b", b);
  expect_same_shape("add", "a", a, "b", b);
  cuda_detail::prepare_output("add", "y", y, a.shape());
  const float *pa = a.device_data<float>(), *pb = b.device_data<float>();
  float* py = y.device_data<float>();
  cuda_detail::launch_map("add", a.numel(), [=] __device__(std::int64_t i) { py[i] = pa[i] + pb[i]; });
}

void axpy(cuda_t, float alpha, const tensor& x, tensor& y) {
  cuda_detail::check_f32("axpy", "x", x);
  cuda_detail::check_f32("axpy", "y", y);
  expect_same_shape("axpy", "x", x, "y", y);
  const float* px = x.device_data<float>();
  float* py = y.device_data<float>();
  cuda_detail::launch_map("axpy", x.numel(), [=] __device__(std::int64_t i) { py[i] += alpha * px[i]; });
}

void multiply(cuda_t, const tensor& a, const tensor& b, tensor& y) {
  cuda_detail::check_f32("multiply", "a", a);
  cuda_detail::check_f32("multiply", "b", b);
  expect_same_shape("multiply", "a", a, "b", b);
  cuda_detail::prepare_output("multiply", "y", y, a.shape());
  const float *pa = a.device_data<float>(), *pb = b.device_data<float>();
  float* py = y.device_data<float>();
  cuda_detail::launch_map("multiply", a.numel(), [=] __device__(std::int64_t i) { py[i] = pa[i] * pb[i]; });
}

void scale(cuda_t, tensor& x, float alpha) {
  cuda_detail::check_f32("scale", "x", x);
  float* px = x.device_data<float>();
  cuda_detail::launch_map("scale", x.numel(), [=] __device__(std::int64_t i) { px[i] *= alpha; });
}

void copy(cuda_t, const tensor& x, tensor& y) {
  cuda_detail::check_f32("copy", "x", x);
  cuda_detail::prepare_output("copy", "y", y, x.shape());
  if (x.nbytes() > 0 && x.bytes_data() != y.bytes_data())
    DMOE_CUDA_CHECK(cudaMemcpyAsync(y.bytes_data(), x.bytes_data(), x.nbytes(), cudaMemcpyDeviceToDevice,
                                    cuda_detail::stream()));
}

void broadcast_rows(cuda_t, const tensor& row, tensor& y) {
  cuda_detail::check_f32("broadcast_rows", "row", row);
  cuda_detail::check_f32("broadcast_rows", "y", y);
  const std::int64_t cols = cuda_detail::cols_of(y);
  if (row.numel() != cols)
    throw shape_error(fmt::format("broadcast_rows: row is {} but y is {}", row.shape(), y.shape()));
  const float* pr = row.device_data<float>();
  float* py = y.device_data<float>();
  cuda_detail::launch_map("broadcast_rows", y.numel(), [=] __device__(std::int64_t i) { py[i] = pr[i % cols]; });
}

void sum_rows(cuda_t, const tensor& x, tensor& sum) {
  cuda_detail::check_f32("sum_rows", "x", x);
  cuda_detail::check_f32("sum_rows", "sum", sum);
  const std::int64_t rows = cuda_detail::rows_of(x), cols = cuda_detail::cols_of(x);
  if (sum.numel() != cols) throw shape_error(fmt::format("sum_rows: x is {} but sum is {}", x.shape(), sum.shape()));
  const float* px = x.device_data<float>();
  cuda_detail::launch_column_sum(
      "sum_rows", rows, cols, [=] __device__(std::int64_t r, std::int64_t c) { return px[r * cols + c]; },
      sum.device_data<float>());
}

void bias_activation_forward(cuda_t, tensor& z, const tensor& bias, tensor& y, activation act) {
  constexpr std::string_view op = "bias_activation_forward";
  cuda_detail::check_f32(op, "z", z);
  const std::int64_t cols = cuda_detail::cols_of(z);
  if (!bias.empty()) cuda_detail::check_bias(op, bias, cols);
  cuda_detail::prepare_output(op, "y", y, z.shape());
  if (act != activation::identity && z.overlaps(y))
    throw invalid_argument_error(fmt::format("{}: y may be z only for the identity", op));
  float* pz = z.device_data<float>();
  float* py = y.device_data<float>();
  const float* pb = bias.empty() ? nullptr : bias.device_data<float>();
  if (cuda_detail::aligned4(z.numel(), {pz, py}) && cols % 4 == 0) {
    auto* z4 = reinterpret_cast<float4*>(pz);
    auto* y4 = reinterpret_cast<float4*>(py);
    const std::int64_t cols4 = cols / 4;
    cuda_detail::launch_map(op.data(), z.numel() / 4, [=] __device__(std::int64_t i) {
      float4 v = z4[i];
      if (pb) {
        const std::int64_t c = (i % cols4) * 4;
        v.x += pb[c];
        v.y += pb[c + 1];
        v.z += pb[c + 2];
        v.w += pb[c + 3];
        z4[i] = v;
      }
      y4[i] = make_float4(cuda_detail::act_forward(act, v.x), cuda_detail::act_forward(act, v.y),
                          cuda_detail::act_forward(act, v.z), cuda_detail::act_forward(act, v.w));
    });
    return;
  }
  cuda_detail::launch_map(op.data(), z.numel(), [=] __device__(std::int64_t i) {
    float v = pz[i];
    if (pb) {
      v += pb[i % cols];
      pz[i] = v;
    }
    py[i] = cuda_detail::act_forward(act, v);
  });
}

void bias_activation_backward(cuda_t, const tensor& z, const tensor& dy, tensor& dz, tensor* dbias,
                                     activation act) {
  constexpr std::string_view op = "bias_activation_backward";
  cuda_detail::check_f32(op, "z", z);
  cuda_detail::check_f32(op, "dy", dy);
  expect_same_shape(op, "z", z, "dy", dy);
  cuda_detail::prepare_output(op, "dz", dz, z.shape());
  const std::int64_t rows = cuda_detail::rows_of(z), cols = cuda_detail::cols_of(z);
  const float *pz = z.device_data<float>(), *pdy = dy.device_data<float>();
  float* pdz = dz.device_data<float>();
  if (dbias) {
    cuda_detail::check_bias(op, *dbias, cols);
    if (rows == 0 || cols == 0) return;
    // One pass: dz, and the bias gradient's partial sums per chunk of rows, then the chunks added in order.
    const std::int64_t chunks = (rows + cuda_detail::bias_backward_rows - 1) / cuda_detail::bias_backward_rows;
    if (chunks <= 65535) {
      const tensor table = cuda_detail::partial_table(chunks, cols);
      auto* partials = reinterpret_cast<double*>(const_cast<std::byte*>(table.bytes_data()));
      cuda_detail::bias_activation_backward_kernel<<<dim3(static_cast<unsigned>((cols + 1023) / 1024),
                                                          static_cast<unsigned>(chunks)),
                                                     256, 0, cuda_detail::stream()>>>(rows, cols, act, pz, pdy, pdz,
                                                                                      partials);
      DMOE_CUDA_CHECK_LAUNCH("bias_activation_backward_kernel");
      cuda_detail::finish_columns(op.data(), chunks, cols, partials, dbias->device_data<float>());
      return;
    }
    cuda_detail::launch_column_sum(
        op.data(), rows, cols,
        [=] __device__(std::int64_t r, std::int64_t c) {
          const std::int64_t i = r * cols + c;
          const float g = cuda_detail::act_backward(act, pz[i], pdy[i]);
          pdz[i] = g;
          return g;
        },
        dbias->device_data<float>());
    return;
  }
  cuda_detail::launch_map(op.data(), z.numel(),
                          [=] __device__(std::int64_t i) { pdz[i] = cuda_detail::act_backward(act, pz[i], pdy[i]); });
}

void activation_forward(cuda_t, const tensor& x, tensor& y, activation act) {
  cuda_detail::check_f32("activation_forward", "x", x);
  cuda_detail::prepare_output("activation_forward", "y", y, x.shape());
  const float* px = x.device_data<float>();
  float* py = y.device_data<float>();
  cuda_detail::launch_map("activation_forward", x.numel(),
                          [=] __device__(std::int64_t i) { py[i] = cuda_detail::act_forward(act, px[i]); });
}

}  // namespace ops
DMOE_END_NAMESPACE
