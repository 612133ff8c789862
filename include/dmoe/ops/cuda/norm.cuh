// Row-wise kernels on CUDA, a warp per row with sums in double: layer norm forward/backward, softmax and its
// backward, the fused softmax + cross-entropy that writes the logit gradient (in place if asked), and MSE.
#pragma once

#include <dmoe/ops/cuda/common.cuh>
#include <dmoe/ops/cuda/elementwise.cuh>
#include <dmoe/ops/cuda/reduction.cuh>

#include <cmath>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace cuda_detail {

inline constexpr int rows_per_block = 8;  // warps per block, one row each

inline unsigned row_blocks(std::int64_t rows) {
  return static_cast<unsigned>(std::max<std::int64_t>(1, (rows + rows_per_block - 1) / rows_per_block));
}

__global__ void layer_norm_forward_kernel(std::int64_t rows, std::int64_t d, const float* x, const float* gamma,
                                                 const float* beta, float eps, float* y, float* mean, float* rstd) {
  const std::int64_t r = blockIdx.x * std::int64_t(rows_per_block) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* xr = x + r * d;
  float* yr = y + r * d;
  double s = 0.0;
  for (std::int64_t i = lane; i < d; i += 32) s += xr[i];
  const double m = warp_sum(s) / static_cast<double>(d);
  double q = 0.0;
  for (std::int64_t i = lane; i < d; i += 32) {
    const double c = static_cast<double>(xr[i]) - m;
    q += c * c;
  }
  const double var = warp_sum(q) / static_cast<double>(d);
  const double sd = 1.0 / sqrt(var + static_cast<double>(eps));
  const auto m_hi = static_cast<float>(m);
  const auto m_lo = static_cast<float>(m - static_cast<double>(m_hi));
  const auto sf = static_cast<float>(sd);
  const bool wide = sqrt(static_cast<double>(d)) >= 0x1p126 * sd;
  if (lane == 0) {
    mean[r] = m_hi;
    rstd[r] = sf;
  }
  if (!wide) {
    for (std::int64_t i = lane; i < d; i += 32) yr[i] = ((xr[i] - m_hi) - m_lo) * sf * gamma[i] + beta[i];
  } else {
    for (std::int64_t i = lane; i < d; i += 32)
      yr[i] = static_cast<float>((static_cast<double>(xr[i]) - m) * sd) * gamma[i] + beta[i];
  }
}

// dx per row; lo[r] keeps the part of the row's mean that the f32 mean lost, for the dgamma pass.
__global__ void layer_norm_backward_kernel(std::int64_t rows, std::int64_t d, const float* x, const float* gamma,
                                                  const float* mean, const float* rstd, const float* dy, float* dx,
                                                  float* lo) {
  const std::int64_t r = blockIdx.x * std::int64_t(rows_per_block) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* xr = x + r * d;
  const float* dyr = dy + r * d;
  float* dxr = dx + r * d;
  const float m_hi = mean[r], sf = rstd[r];
  const double s = sf, n = static_cast<double>(d);
  double a = 0.0, b = 0.0, c = 0.0;
  for (std::int64_t i = lane; i < d; i += 32) {
    const double gy = static_cast<double>(dyr[i]) * static_cast<double>(gamma[i]);
    const double xc = static_cast<double>(xr[i]) - static_cast<double>(m_hi);
    a += gy;
    b += gy * xc;
    c += xc;
  }
  a = warp_sum(a);
  b = warp_sum(b);
  c = warp_sum(c);
  const double m_lo = c / n;
  const double mean_dxhat = a / n;
  const double mean_dxhat_xhat = s * (b - m_lo * a) / n;
  const bool wide = sqrt(n) >= 0x1p126 * s;
  if (lane == 0) lo[r] = static_cast<float>(m_lo);
  if (!wide) {
    const auto l = static_cast<float>(m_lo), md = static_cast<float>(mean_dxhat),
               mdx = static_cast<float>(mean_dxhat_xhat);
    for (std::int64_t i = lane; i < d; i += 32) {
      const float xhat = ((xr[i] - m_hi) - l) * sf;
      dxr[i] = (dyr[i] * gamma[i] - md - xhat * mdx) * sf;
    }
  } else {
    const double m = static_cast<double>(m_hi) + m_lo;
    for (std::int64_t i = lane; i < d; i += 32) {
      const double xhat = (static_cast<double>(xr[i]) - m) * s;
      dxr[i] = static_cast<float>((static_cast<double>(dyr[i]) * gamma[i] - mean_dxhat - xhat * mean_dxhat_xhat) * s);
    }
  }
}

__global__ void softmax_kernel(std::int64_t rows, std::int64_t n, const float* x, float* y) {
  const std::int64_t r = blockIdx.x * std::int64_t(rows_per_block) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* xr = x + r * n;
  float* yr = y + r * n;
  float m = -INFINITY;
  for (std::int64_t i = lane; i < n; i += 32) m = fmaxf(m, xr[i]);
  m = warp_max(m);
  double s = 0.0;
  for (std::int64_t i = lane; i < n; i += 32) s += expf(xr[i] - m);
  const auto inv = static_cast<float>(1.0 / warp_sum(s));
  for (std::int64_t i = lane; i < n; i += 32) yr[i] = expf(xr[i] - m) * inv;
}

__global__ void softmax_backward_kernel(std::int64_t rows, std::int64_t n, const float* y, const float* dy,
                                               float* dx) {
  const std::int64_t r = blockIdx.x * std::int64_t(rows_per_block) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float *yr = y + r * n, *dyr = dy + r * n;
  float* dxr = dx + r * n;
  double s = 0.0;
  for (std::int64_t i = lane; i < n; i += 32) s += static_cast<double>(dyr[i]) * yr[i];
  const auto dot = static_cast<float>(warp_sum(s));
  for (std::int64_t i = lane; i < n; i += 32) dxr[i] = yr[i] * (dyr[i] - dot);
}

// The first row whose label is outside [0, classes), or INT64_MAX.
__global__ void check_labels_kernel(std::int64_t rows, std::int64_t classes, const std::int64_t* labels,
                                           unsigned long long* first_bad) {
  for (std::int64_t r = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; r < rows;
       r += std::int64_t(gridDim.x) * blockDim.x)
    if (labels[r] < 0 || labels[r] >= classes) atomicMin(first_bad, static_cast<unsigned long long>(r));
}

// Per row: loss = log(sum exp(x - max)) + (max - x[label]) in double; dx = softmax / rows - onehot / rows.
// Writes nothing when check_labels_kernel found a bad label (*first_bad is set; the host reports it afterwards).
__global__ void cross_entropy_kernel(std::int64_t rows, std::int64_t classes, const float* x,
                                            const std::int64_t* labels, float* dx, double* row_loss,
                                            const unsigned long long* first_bad) {
  const std::int64_t r = blockIdx.x * std::int64_t(rows_per_block) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows || *first_bad != ~0ull) return;
  const float* xr = x + r * classes;
  const std::int64_t label = labels[r];
  float m = -INFINITY;
  for (std::int64_t i = lane; i < classes; i += 32) m = fmaxf(m, xr[i]);
  m = warp_max(m);
  double s = 0.0;
  for (std::int64_t i = lane; i < classes; i += 32) s += expf(xr[i] - m);
  s = warp_sum(s);
  const bool valid = label >= 0 && label < classes;
  const float target = valid ? xr[label] : 0.0f;  // a bad label is reported after the kernel
  if (lane == 0) row_loss[r] = log(s) + (static_cast<double>(m) - static_cast<double>(target));
  if (dx) {
    const float inv_rows = 1.0f / static_cast<float>(rows);
    const auto scale = static_cast<float>(static_cast<double>(inv_rows) / s);
    __syncwarp();
    for (std::int64_t i = lane; i < classes; i += 32) {
      float g = expf(xr[i] - m) * scale;
      if (i == label) g -= inv_rows;
      dx[r * classes + i] = g;  // may overwrite x (in place): every lane read x[i] and target above
    }
  }
}


// ---- block-per-row kernels: the row is read once into registers (VPT values per thread) ----

// Sum of v over the block (every thread gets it); `scratch` holds one double per warp.
template <int THREADS>
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < THREADS / 32; ++w) total += scratch[w];
  __syncthreads();
  return total;
}
template <int THREADS>
__device__ __forceinline__ float block_max(float v, float* scratch) {
  v = warp_max(v);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < THREADS / 32; ++w) m = fmaxf(m, scratch[w]);
  __syncthreads();
  return m;
}

template <int THREADS, int VPT>
__global__ void __launch_bounds__(THREADS) layer_norm_forward_block_kernel(std::int64_t d, const float* x,
                                                                          const float* gamma, const float* beta,
                                                                          float eps, float* y, float* mean,
                                                                          float* rstd) {
  __shared__ double scratch[THREADS / 32];
  const std::int64_t r = blockIdx.x;
  const float* xr = x + r * d;
  float* yr = y + r * d;
  float v[VPT];
  double s = 0.0;
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const std::int64_t i = threadIdx.x + std::int64_t(j) * THREADS;
    v[j] = i < d ? xr[i] : 0.0f;
    s += v[j];
  }
  const double m = block_sum<THREADS>(s, scratch) / static_cast<double>(d);
  double q = 0.0;
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const std::int64_t i = threadIdx.x + std::int64_t(j) * THREADS;
    if (i < d) {
      const double c = static_cast<double>(v[j]) - m;
      q += c * c;
    }
  }
  const double var = block_sum<THREADS>(q, scratch) / static_cast<double>(d);
  const double sd = 1.0 / sqrt(var + static_cast<double>(eps));
  const auto m_hi = static_cast<float>(m);
  const auto m_lo = static_cast<float>(m - static_cast<double>(m_hi));
  const auto sf = static_cast<float>(sd);
  const bool wide = sqrt(static_cast<double>(d)) >= 0x1p126 * sd;
  if (threadIdx.x == 0) {
    mean[r] = m_hi;
    rstd[r] = sf;
  }
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const std::int64_t i = threadIdx.x + std::int64_t(j) * THREADS;
    if (i < d)
      yr[i] = !wide ? ((v[j] - m_hi) - m_lo) * sf * gamma[i] + beta[i]
                    : static_cast<float>((static_cast<double>(v[j]) - m) * sd) * gamma[i] + beta[i];
  }
}

// Layer norm backward, `rows_per_block` rows per block with each row in registers (VPT values per thread; the
// next row's loads are issued before this row's sums): dx, and the block's dgamma/dbeta partials kept in double
// registers (every thread owns the same columns in every row) and written to [blocks, d] tables at the end.
inline constexpr int ln_backward_rows_per_block = 16;

template <int THREADS>
__device__ __forceinline__ void block_sum3(double& a, double& b, double& c, double (*scratch)[THREADS / 32]) {
  a = warp_sum(a);
  b = warp_sum(b);
  c = warp_sum(c);
  if (threadIdx.x % 32 == 0) {
    scratch[0][threadIdx.x / 32] = a;
    scratch[1][threadIdx.x / 32] = b;
    scratch[2][threadIdx.x / 32] = c;
  }
  __syncthreads();
  a = b = c = 0.0;
  for (int w = 0; w < THREADS / 32; ++w) {
    a += scratch[0][w];
    b += scratch[1][w];
    c += scratch[2][w];
  }
  __syncthreads();
}

template <int THREADS, int VPT>
__global__ void __launch_bounds__(THREADS)
    layer_norm_backward_rows_kernel(std::int64_t rows, std::int64_t d, const float* x, const float* gamma,
                                    const float* mean, const float* rstd, const float* dy, float* dx,
                                    double* dgamma_partial, double* dbeta_partial) {
  __shared__ double scratch[3][THREADS / 32];
  const std::int64_t first = blockIdx.x * std::int64_t(ln_backward_rows_per_block);
  const std::int64_t last = min(rows, first + ln_backward_rows_per_block);
  const double n = static_cast<double>(d);
  float g[VPT], xv[VPT], yv[VPT];
  double dg[VPT], db[VPT];
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const std::int64_t i = threadIdx.x + std::int64_t(j) * THREADS;
    g[j] = i < d ? gamma[i] : 0.0f;
    dg[j] = db[j] = 0.0;
    xv[j] = i < d ? x[first * d + i] : 0.0f;
    yv[j] = i < d ? dy[first * d + i] : 0.0f;
  }
  for (std::int64_t r = first; r < last; ++r) {
    float xn[VPT], yn[VPT];
    const bool more = r + 1 < last;
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
      const std::int64_t i = threadIdx.x + std::int64_t(j) * THREADS;
      xn[j] = more && i < d ? x[(r + 1) * d + i] : 0.0f;
      yn[j] = more && i < d ? dy[(r + 1) * d + i] : 0.0f;
    }
    const float m_hi = mean[r], sf = rstd[r];
    const double s = sf;
    double a = 0.0, b = 0.0, c = 0.0;
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
      if (threadIdx.x + std::int64_t(j) * THREADS >= d) continue;
      const double gy = static_cast<double>(yv[j]) * static_cast<double>(g[j]);
      const double xc = static_cast<double>(xv[j]) - static_cast<double>(m_hi);
      a += gy;
      b += gy * xc;
      c += xc;
    }
    block_sum3<THREADS>(a, b, c, scratch);
    const double m_lo = c / n, mean_dxhat = a / n, mean_dxhat_xhat = s * (b - m_lo * a) / n;
    const bool wide = sqrt(n) >= 0x1p126 * s;
    const auto lo = static_cast<float>(m_lo), md = static_cast<float>(mean_dxhat),
               mdx = static_cast<float>(mean_dxhat_xhat);
    float* dxr = dx + r * d;
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
      const std::int64_t i = threadIdx.x + std::int64_t(j) * THREADS;
      if (i >= d) continue;
      if (!wide) {
        const float xhat = ((xv[j] - m_hi) - lo) * sf;
        dg[j] += static_cast<double>(yv[j] * xhat);
        db[j] += static_cast<double>(yv[j]);
        dxr[i] = (yv[j] * g[j] - md - xhat * mdx) * sf;
      } else {
        const double xhat = (static_cast<double>(xv[j]) - (static_cast<double>(m_hi) + m_lo)) * s;
        dg[j] += static_cast<double>(yv[j]) * xhat;
        db[j] += static_cast<double>(yv[j]);
        dxr[i] = static_cast<float>((static_cast<double>(yv[j]) * g[j] - mean_dxhat - xhat * mean_dxhat_xhat) * s);
      }
      xv[j] = xn[j];
      yv[j] = yn[j];
    }
  }
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const std::int64_t i = threadIdx.x + std::int64_t(j) * THREADS;
    if (i < d) {
      dgamma_partial[blockIdx.x * d + i] = dg[j];
      dbeta_partial[blockIdx.x * d + i] = db[j];
    }
  }
}

// A row of n values into registers (VPT per thread) as exp(x - max): m gets the row's maximum and s the sum of the
// exponentials (in double), the same in every thread. Every read of the row happens before the first barrier.
template <int THREADS, int VPT>
__device__ __forceinline__ void row_exponentials(const float* xr, std::int64_t n, float (&v)[VPT], float& m,
                                                 double& s) {
  __shared__ double dscratch[THREADS / 32];
  __shared__ float fscratch[THREADS / 32];
  m = -INFINITY;
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const std::int64_t i = threadIdx.x + std::int64_t(j) * THREADS;
    v[j] = i < n ? xr[i] : -INFINITY;
    m = fmaxf(m, v[j]);
  }
  m = block_max<THREADS>(m, fscratch);
  double sum = 0.0;
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    v[j] = threadIdx.x + std::int64_t(j) * THREADS < n ? expf(v[j] - m) : 0.0f;
    sum += v[j];
  }
  s = block_sum<THREADS>(sum, dscratch);
}

// Softmax of one row per block with the row in registers (rows wider than a warp handles well).
template <int THREADS, int VPT>
__global__ void __launch_bounds__(THREADS) softmax_block_kernel(std::int64_t n, const float* x, float* y) {
  const std::int64_t r = blockIdx.x;
  float v[VPT], m;
  double s;
  row_exponentials<THREADS, VPT>(x + r * n, n, v, m, s);
  const auto inv = static_cast<float>(1.0 / s);
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const std::int64_t i = threadIdx.x + std::int64_t(j) * THREADS;
    if (i < n) y[r * n + i] = v[j] * inv;
  }
}

template <int THREADS, int VPT>
__global__ void __launch_bounds__(THREADS) cross_entropy_block_kernel(std::int64_t rows, std::int64_t classes,
                                                                     const float* x, const std::int64_t* labels,
                                                                     float* dx, double* row_loss,
                                                                     const unsigned long long* first_bad) {
  if (*first_bad != ~0ull) return;  // (the same for the whole block: no barrier is skipped by some threads only)
  const std::int64_t r = blockIdx.x;
  const float* xr = x + r * classes;
  const std::int64_t label = labels[r];
  const float target = label >= 0 && label < classes ? xr[label] : 0.0f;  // read before dx may overwrite x
  float v[VPT], m;
  double s;
  row_exponentials<THREADS, VPT>(xr, classes, v, m, s);  // its barriers order every read of x before the writes
  if (threadIdx.x == 0) row_loss[r] = log(s) + (static_cast<double>(m) - static_cast<double>(target));
  if (!dx) return;
  const float inv_rows = 1.0f / static_cast<float>(rows);
  const auto scale = static_cast<float>(static_cast<double>(inv_rows) / s);
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const std::int64_t i = threadIdx.x + std::int64_t(j) * THREADS;
    if (i < classes) dx[r * classes + i] = i == label ? v[j] * scale - inv_rows : v[j] * scale;
  }
}

// Calls f(kernel_tag) with the narrowest block-per-row configuration that holds n values, or returns false.
template <class F>
bool with_row_block(std::int64_t n, F&& f) {
  if (n <= 1024) return f.template operator()<128, 8>();
  if (n <= 2048) return f.template operator()<256, 8>();
  if (n <= 4096) return f.template operator()<512, 8>();
  if (n <= 8192) return f.template operator()<1024, 8>();
  if (n <= 32768) return f.template operator()<1024, 32>();
  return false;
}

}  // namespace cuda_detail

void layer_norm_forward(cuda_t, const tensor& x, const tensor& gamma, const tensor& beta, float eps, tensor& y,
                               tensor& mean, tensor& rstd) {
  constexpr std::string_view op = "layer_norm_forward";
  cuda_detail::check_f32(op, "x", x);
  const std::int64_t rows = cuda_detail::rows_of(x), d = cuda_detail::cols_of(x);
  cuda_detail::check_f32(op, "gamma", gamma);
  cuda_detail::check_f32(op, "beta", beta);
  expect_shape(op, "gamma", gamma, shape{d});
  expect_shape(op, "beta", beta, shape{d});
  if (!(eps > 0.0f) || !std::isfinite(eps))
    throw invalid_argument_error(fmt::format("{}: eps is {} but must be positive and finite", op, eps));
  cuda_detail::prepare_output(op, "y", y, x.shape());
  cuda_detail::prepare_output(op, "mean", mean, shape{rows});
  cuda_detail::prepare_output(op, "rstd", rstd, shape{rows});
  if (rows == 0 || d == 0) return;
  // Rows of 64 to 32,768 values: a block per row with the row in registers (read once); others a warp per row.
  const float *px = x.device_data<float>(), *pg = gamma.device_data<float>(), *pb = beta.device_data<float>();
  float *py = y.device_data<float>(), *pm = mean.device_data<float>(), *ps = rstd.device_data<float>();
  if (d >= 64 && cuda_detail::with_row_block(d, [&]<int THREADS, int VPT>() {
        cuda_detail::layer_norm_forward_block_kernel<THREADS, VPT>
            <<<static_cast<unsigned>(rows), THREADS, 0, cuda_detail::stream()>>>(d, px, pg, pb, eps, py, pm, ps);
        DMOE_CUDA_CHECK_LAUNCH("layer_norm_forward_block_kernel");
        return true;
      }))
    return;
  cuda_detail::layer_norm_forward_kernel<<<cuda_detail::row_blocks(rows), 32 * cuda_detail::rows_per_block, 0,
                                           cuda_detail::stream()>>>(
      rows, d, x.device_data<float>(), gamma.device_data<float>(), beta.device_data<float>(), eps,
      y.device_data<float>(), mean.device_data<float>(), rstd.device_data<float>());
  DMOE_CUDA_CHECK_LAUNCH("layer_norm_forward_kernel");
}

void layer_norm_backward(cuda_t, const tensor& x, const tensor& gamma, const tensor& mean, const tensor& rstd,
                                const tensor& dy, tensor& dx, tensor& dgamma, tensor& dbeta) {
  constexpr std::string_view op = "layer_norm_backward";
  cuda_detail::check_f32(op, "x", x);
  cuda_detail::check_f32(op, "dy", dy);
  expect_same_shape(op, "x", x, "dy", dy);
  const std::int64_t rows = cuda_detail::rows_of(x), d = cuda_detail::cols_of(x);
  for (const auto& [name, t] : {std::pair<const char*, const tensor*>{"gamma", &gamma}, {"dgamma", &dgamma},
                                {"dbeta", &dbeta}}) {
    cuda_detail::check_f32(op, name, *t);
    expect_shape(op, name, *t, shape{d});
  }
  cuda_detail::check_f32(op, "mean", mean);
  cuda_detail::check_f32(op, "rstd", rstd);
  expect_shape(op, "mean", mean, shape{rows});
  expect_shape(op, "rstd", rstd, shape{rows});
  cuda_detail::prepare_output(op, "dx", dx, x.shape());
  if (rows == 0 || d == 0) return;
  if (d >= 64 && d <= 8192) {  // one pass: dx, and dgamma/dbeta partials per block of rows
    const std::int64_t blocks =
        (rows + cuda_detail::ln_backward_rows_per_block - 1) / cuda_detail::ln_backward_rows_per_block;
    const tensor tables = cuda_detail::partial_table(2 * blocks, d);
    auto* dg_partial = reinterpret_cast<double*>(const_cast<std::byte*>(tables.bytes_data()));
    double* db_partial = dg_partial + blocks * d;
    cuda_detail::with_row_block(d, [&]<int THREADS, int VPT>() {
      cuda_detail::layer_norm_backward_rows_kernel<THREADS, VPT>
          <<<static_cast<unsigned>(blocks), THREADS, 0, cuda_detail::stream()>>>(
              rows, d, x.device_data<float>(), gamma.device_data<float>(), mean.device_data<float>(),
              rstd.device_data<float>(), dy.device_data<float>(), dx.device_data<float>(), dg_partial, db_partial);
      DMOE_CUDA_CHECK_LAUNCH("layer_norm_backward_rows_kernel");
      return true;
    });
    cuda_detail::finish_columns("layer_norm_backward dgamma", blocks, d, dg_partial, dgamma.device_data<float>());
    cuda_detail::finish_columns("layer_norm_backward dbeta", blocks, d, db_partial, dbeta.device_data<float>());
    return;
  }
  // Wider rows: a warp per row for dx, then column sums for dgamma and dbeta (dy kept apart: dx may be dy).
  tensor lo = tensor::uninitialized(shape{rows}, dtype::f32, device::cuda);
  tensor dy_saved = dx.overlaps(dy) ? dy.clone() : dy;
  const float *px = x.device_data<float>(), *pdy = dy_saved.device_data<float>(), *pm = mean.device_data<float>(),
              *ps = rstd.device_data<float>();
  cuda_detail::layer_norm_backward_kernel<<<cuda_detail::row_blocks(rows), 32 * cuda_detail::rows_per_block, 0,
                                            cuda_detail::stream()>>>(rows, d, px, gamma.device_data<float>(), pm, ps,
                                                                     pdy, dx.device_data<float>(),
                                                                     lo.device_data<float>());
  DMOE_CUDA_CHECK_LAUNCH("layer_norm_backward_kernel");
  const float* pl = lo.device_data<float>();
  cuda_detail::launch_column_sum(
      "layer_norm_backward dgamma", rows, d,
      [=] __device__(std::int64_t r, std::int64_t c) {
        return pdy[r * d + c] * (((px[r * d + c] - pm[r]) - pl[r]) * ps[r]);
      },
      dgamma.device_data<float>());
  cuda_detail::launch_column_sum(
      "layer_norm_backward dbeta", rows, d, [=] __device__(std::int64_t r, std::int64_t c) { return pdy[r * d + c]; },
      dbeta.device_data<float>());
}

void softmax(cuda_t, const tensor& x, tensor& y) {
  cuda_detail::check_f32("softmax", "x", x);
  cuda_detail::prepare_output("softmax", "y", y, x.shape());
  const std::int64_t rows = cuda_detail::rows_of(x), n = cuda_detail::cols_of(x);
  if (rows == 0 || n == 0) return;
  if (n > 1024 && cuda_detail::with_row_block(n, [&]<int THREADS, int VPT>() {
        cuda_detail::softmax_block_kernel<THREADS, VPT><<<static_cast<unsigned>(rows), THREADS, 0,
                                                          cuda_detail::stream()>>>(n, x.device_data<float>(),
                                                                                   y.device_data<float>());
        DMOE_CUDA_CHECK_LAUNCH("softmax_block_kernel");
        return true;
      }))
    return;
  cuda_detail::softmax_kernel<<<cuda_detail::row_blocks(rows), 32 * cuda_detail::rows_per_block, 0,
                                cuda_detail::stream()>>>(rows, n, x.device_data<float>(), y.device_data<float>());
  DMOE_CUDA_CHECK_LAUNCH("softmax_kernel");
}

void softmax_backward(cuda_t, const tensor& y, const tensor& dy, tensor& dx) {
  cuda_detail::check_f32("softmax_backward", "y", y);
  cuda_detail::check_f32("softmax_backward", "dy", dy);
  expect_same_shape("softmax_backward", "y", y, "dy", dy);
  cuda_detail::prepare_output("softmax_backward", "dx", dx, y.shape());
  const std::int64_t rows = cuda_detail::rows_of(y), n = cuda_detail::cols_of(y);
  if (rows == 0 || n == 0) return;
  cuda_detail::softmax_backward_kernel<<<cuda_detail::row_blocks(rows), 32 * cuda_detail::rows_per_block, 0,
                                         cuda_detail::stream()>>>(rows, n, y.device_data<float>(),
                                                                  dy.device_data<float>(), dx.device_data<float>());
  DMOE_CUDA_CHECK_LAUNCH("softmax_backward_kernel");
}

float cross_entropy(cuda_t, const tensor& logits, const tensor& labels, tensor* dlogits) {
  constexpr std::string_view op = "cross_entropy";
  cuda_detail::check_f32(op, "logits", logits);
  cuda_detail::check_f32(op, "labels", labels, dtype::i64);
  const std::int64_t rows = cuda_detail::rows_of(logits), classes = cuda_detail::cols_of(logits);
  if (labels.numel() != rows)
    throw shape_error(fmt::format("{}: logits is {} ({} rows) but labels is {}", op, logits.shape(), rows,
                                  labels.shape()));
  if (rows == 0) throw invalid_argument_error(fmt::format("{}: logits is {}: no rows to average over", op, logits.shape()));
  const std::int64_t* pl = labels.device_data<std::int64_t>();
  // Labels are checked on the device before anything is written, as on the CPU: a bad label leaves the logits and
  // dlogits untouched.
  tensor result = tensor::uninitialized(shape{16}, dtype::u8, device::cuda);  // {double loss, u64 first bad row}
  auto* loss_out = reinterpret_cast<double*>(result.bytes_data());
  auto* first_bad = reinterpret_cast<unsigned long long*>(result.bytes_data() + 8);
  const unsigned long long none = ~0ull;
  DMOE_CUDA_CHECK(cudaMemsetAsync(first_bad, 0xff, sizeof none, cuda_detail::stream()));
  cuda_detail::check_labels_kernel<<<cuda_detail::blocks_for(rows, 256), 256, 0, cuda_detail::stream()>>>(
      rows, classes, pl, first_bad);
  DMOE_CUDA_CHECK_LAUNCH("check_labels_kernel");
  struct {
    double loss;
    unsigned long long bad;
  } host{0.0, none};
  const auto read_back = [&] {
    DMOE_CUDA_CHECK(cudaMemcpyAsync(&host, result.bytes_data(), sizeof host, cudaMemcpyDeviceToHost,
                                    cuda_detail::stream()));
    DMOE_CUDA_CHECK(cudaStreamSynchronize(cuda_detail::stream()));
    if (host.bad == none) return;
    std::int64_t value = 0;
    DMOE_CUDA_CHECK(cudaMemcpy(&value, pl + host.bad, sizeof value, cudaMemcpyDeviceToHost));
    throw invalid_argument_error(
        fmt::format("{}: label {} of row {} is outside [0, {})", op, value, host.bad, classes));
  };
  // The kernels below write nothing when a label is bad, so the labels' verdict is read back with the loss, in one
  // round trip; only a dlogits that must be reallocated waits for it first (a bad label leaves dlogits as it was).
  if (dlogits && !(dlogits->device() == device::cuda && dlogits->dtype() == dtype::f32 &&
                   dlogits->shape() == logits.shape()))
    read_back();
  if (dlogits) cuda_detail::prepare_output(op, "dlogits", *dlogits, logits.shape());
  tensor row_loss = tensor::uninitialized(shape{rows * 8}, dtype::u8, device::cuda);
  auto* losses = reinterpret_cast<double*>(row_loss.bytes_data());
  float* pd = dlogits ? dlogits->device_data<float>() : nullptr;
  const bool wide = classes > 1024 && cuda_detail::with_row_block(classes, [&]<int THREADS, int VPT>() {
    cuda_detail::cross_entropy_block_kernel<THREADS, VPT><<<static_cast<unsigned>(rows), THREADS, 0,
                                                            cuda_detail::stream()>>>(
        rows, classes, logits.device_data<float>(), pl, pd, losses, first_bad);
    DMOE_CUDA_CHECK_LAUNCH("cross_entropy_block_kernel");
    return true;
  });
  if (!wide) {
    cuda_detail::cross_entropy_kernel<<<cuda_detail::row_blocks(rows), 32 * cuda_detail::rows_per_block, 0,
                                        cuda_detail::stream()>>>(rows, classes, logits.device_data<float>(), pl, pd,
                                                                 losses, first_bad);
    DMOE_CUDA_CHECK_LAUNCH("cross_entropy_kernel");
  }
  tensor scratch;
  cuda_detail::sum_f64_into("cross_entropy sum", rows, [=] __device__(std::int64_t i) { return losses[i]; }, loss_out,
                            scratch);
  read_back();
  const double total = host.loss;
  return static_cast<float>(total / static_cast<double>(rows));
}

float mse(cuda_t, const tensor& prediction, const tensor& target, tensor* dprediction) {
  constexpr std::string_view op = "mse";
  cuda_detail::check_f32(op, "prediction", prediction);
  cuda_detail::check_f32(op, "target", target);
  expect_same_shape(op, "prediction", prediction, "target", target);
  const std::int64_t n = prediction.numel();
  if (n == 0) throw invalid_argument_error(fmt::format("{}: prediction is {}: nothing to average", op, prediction.shape()));
  const float *pp = prediction.device_data<float>(), *pt = target.device_data<float>();
  const double total = cuda_detail::sum_f64("mse sum", n, [=] __device__(std::int64_t i) {
    const double e = static_cast<double>(pp[i]) - static_cast<double>(pt[i]);
    return e * e;
  });
  if (dprediction) {
    cuda_detail::prepare_output(op, "dprediction", *dprediction, prediction.shape());
    float* pd = dprediction->device_data<float>();
    const float factor = 2.0f / static_cast<float>(n);
    cuda_detail::launch_map("mse gradient", n, [=] __device__(std::int64_t i) { pd[i] = factor * (pp[i] - pt[i]); });
  }
  return static_cast<float>(total / static_cast<double>(n));
}

}  // namespace ops
DMOE_END_NAMESPACE
