// Layer normalisation over the last dimension on the CPU: forward saves mean and 1/std per row for backward.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <string_view>

DMOE_BEGIN_NAMESPACE
namespace ops {

// y = (x - mean) * rstd * gamma + beta per row of x (rows = all leading dimensions, d = the last);
// mean and rstd ([rows]) are written for backward. eps must be positive and finite: with eps = 0 a row of tiny
// (or no) spread has a 1/std beyond f32's range, so rstd could not be saved for backward.
DMOE_DECL void layer_norm_forward(cpu_t, const tensor& x, const tensor& gamma, const tensor& beta, float eps, tensor& y,
                                  tensor& mean, tensor& rstd);

// dx = layer norm's input gradient for dy; dgamma and dbeta accumulate (+=). dx may be dy itself.
DMOE_DECL void layer_norm_backward(cpu_t, const tensor& x, const tensor& gamma, const tensor& mean, const tensor& rstd,
                                   const tensor& dy, tensor& dx, tensor& dgamma, tensor& dbeta);

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/ops/cpu/eigen.hpp>
#include <dmoe/ops/cpu/parallel.hpp>
#include <dmoe/ops/cpu/reduction.hpp>

#if defined(__AVX__)
#include <immintrin.h>
#endif
#include <cmath>
#include <mutex>
#include <vector>
#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace detail {

inline void check_layer_norm_params(std::string_view op, const tensor& gamma, const tensor& beta, std::int64_t d) {
  check_cpu_f32(op, "gamma", gamma);
  check_cpu_f32(op, "beta", beta);
  if (gamma.rank() != 1 || gamma.dim(0) != d)
    throw shape_error(dmoe::format("{}: gamma is {} but should be [{}]", op, gamma.shape(), d));
  expect_same_shape(op, "gamma", gamma, "beta", beta);
}

// Whether x - mean may overflow f32 in a row of d values with 1/std rstd: |x - mean| <= sqrt(d * var) <= sqrt(d) /
// rstd, so below 2^126 the f32 path is safe; rows beyond it (spread near f32's limit) are normalised in double.
inline bool layer_norm_row_is_wide(std::int64_t d, double rstd) noexcept {
  return std::sqrt(static_cast<double>(d)) >= 0x1p126 * rstd;
}

}  // namespace detail

DMOE_DEF void layer_norm_forward(cpu_t, const tensor& x, const tensor& gamma, const tensor& beta, float eps, tensor& y,
                                 tensor& mean, tensor& rstd) {
  constexpr std::string_view op = "layer_norm_forward";
  detail::check_cpu_f32(op, "x", x);
  const std::int64_t rows = x.shape().outer(), d = x.shape().inner();
  detail::check_layer_norm_params(op, gamma, beta, d);
  // eps >= the smallest subnormal keeps 1/std <= 2.7e22, within f32.
  if (!(eps > 0.0f) || !std::isfinite(eps))
    throw invalid_argument_error(dmoe::format("{}: eps is {} but must be positive and finite", op, eps));
  detail::prepare_output(op, "y", y, x.shape());
  detail::prepare_output(op, "mean", mean, shape{rows});
  detail::prepare_output(op, "rstd", rstd, shape{rows});
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  const float* g = gamma.data<float>();
  const float* b = beta.data<float>();
  float* mu = mean.data<float>();
  float* rs = rstd.data<float>();
  detail::parallel_for(rows, detail::row_grain(d), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t r = begin; r < end; ++r) {
      const float* xr = xp + r * d;
      float* yr = yp + r * d;
      // Two passes in double: the mean's rounding never becomes variance, whatever the row's length or magnitude.
      const double m = detail::sum_f64(xr, d) / static_cast<double>(d);
      const double var = detail::sum_squared_deviations_f64(xr, d, m) / static_cast<double>(d);
      const double s = 1.0 / std::sqrt(var + static_cast<double>(eps));
      // The mean as f32 plus its remainder: (x - m_hi) is exact near the mean, so outputs keep f32 precision.
      const auto m_hi = static_cast<float>(m);
      const auto m_lo = static_cast<float>(m - static_cast<double>(m_hi));
      const auto sf = static_cast<float>(s);
      mu[r] = m_hi;
      rs[r] = sf;
      if (!detail::layer_norm_row_is_wide(d, s)) {
        for (std::int64_t i = 0; i < d; ++i) yr[i] = ((xr[i] - m_hi) - m_lo) * sf * g[i] + b[i];
      } else {
        for (std::int64_t i = 0; i < d; ++i)
          yr[i] = static_cast<float>((static_cast<double>(xr[i]) - m) * s) * g[i] + b[i];
      }
    }
  });
}

DMOE_DEF void layer_norm_backward(cpu_t, const tensor& x, const tensor& gamma, const tensor& mean, const tensor& rstd,
                                  const tensor& dy, tensor& dx, tensor& dgamma, tensor& dbeta) {
  constexpr std::string_view op = "layer_norm_backward";
  detail::check_cpu_f32(op, "x", x);
  detail::check_cpu_f32(op, "dy", dy);
  expect_same_shape(op, "x", x, "dy", dy);
  const std::int64_t rows = x.shape().outer(), d = x.shape().inner();
  detail::check_layer_norm_params(op, gamma, gamma, d);
  detail::check_cpu_f32(op, "mean", mean);
  detail::check_cpu_f32(op, "rstd", rstd);
  expect_shape(op, "mean", mean, shape{rows});
  expect_shape(op, "rstd", rstd, shape{rows});
  detail::check_layer_norm_params(op, dgamma, dbeta, d);
  detail::prepare_output(op, "dx", dx, x.shape());
  const float* xp = x.data<float>();
  const float* dyp = dy.data<float>();
  float* dxp = dx.data<float>();
  const float* g = gamma.data<float>();
  const float* mu = mean.data<float>();
  const float* rs = rstd.data<float>();
  std::mutex merge;
  detail::parallel_for(rows, detail::row_grain(d), [&](std::int64_t begin, std::int64_t end) {
    // Column sums over many rows: double partials, so dgamma and dbeta do not drift with the batch size.
    std::vector<double> dg(static_cast<std::size_t>(d), 0.0), db(static_cast<std::size_t>(d), 0.0);
    const auto n = static_cast<double>(d);
    for (std::int64_t r = begin; r < end; ++r) {
      const float* xr = xp + r * d;
      const float* dyr = dyp + r * d;
      float* dxr = dxp + r * d;
      const float m_hi = mu[r], sf = rs[r];
      const double s = sf;
      // One pass in double: sum(dxhat), sum(dxhat * (x - m_hi)) and sum(x - m_hi), whose mean is the part of the
      // row's mean that the f32 m_hi lost; dxhat = dy * gamma.
      alignas(32) double a[8] = {}, bsum[8] = {}, c[8] = {};
      std::int64_t i = 0;
#if defined(__AVX__)
      {  // The same 8 lanes in registers (g++ keeps the arrays below in memory: several times slower).
        __m256d a0 = _mm256_setzero_pd(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0;
        const __m256d mh = _mm256_set1_pd(static_cast<double>(m_hi));
        const auto lanes = [](const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); };
        for (; i + 8 <= d; i += 8) {
          const __m256d gy0 = _mm256_mul_pd(lanes(dyr + i), lanes(g + i));
          const __m256d gy1 = _mm256_mul_pd(lanes(dyr + i + 4), lanes(g + i + 4));
          const __m256d xc0 = _mm256_sub_pd(lanes(xr + i), mh), xc1 = _mm256_sub_pd(lanes(xr + i + 4), mh);
          a0 = _mm256_add_pd(a0, gy0);
          a1 = _mm256_add_pd(a1, gy1);
          b0 = _mm256_add_pd(b0, _mm256_mul_pd(gy0, xc0));
          b1 = _mm256_add_pd(b1, _mm256_mul_pd(gy1, xc1));
          c0 = _mm256_add_pd(c0, xc0);
          c1 = _mm256_add_pd(c1, xc1);
        }
        _mm256_store_pd(a, a0);
        _mm256_store_pd(a + 4, a1);
        _mm256_store_pd(bsum, b0);
        _mm256_store_pd(bsum + 4, b1);
        _mm256_store_pd(c, c0);
        _mm256_store_pd(c + 4, c1);
      }
#endif
      for (; i + 8 <= d; i += 8)
        for (std::int64_t j = 0; j < 8; ++j) {
          const double gy = static_cast<double>(dyr[i + j]) * static_cast<double>(g[i + j]);
          const double xc = static_cast<double>(xr[i + j]) - static_cast<double>(m_hi);
          a[j] += gy;
          bsum[j] += gy * xc;
          c[j] += xc;
        }
      for (std::int64_t j = 0; i < d; ++i, ++j) {
        const double gy = static_cast<double>(dyr[i]) * static_cast<double>(g[i]);
        const double xc = static_cast<double>(xr[i]) - static_cast<double>(m_hi);
        a[j] += gy;
        bsum[j] += gy * xc;
        c[j] += xc;
      }
      for (int width = 4; width > 0; width /= 2)
        for (int j = 0; j < width; ++j) {
          a[j] += a[j + width];
          bsum[j] += bsum[j + width];
          c[j] += c[j + width];
        }
      const double m_lo = c[0] / n;
      const double mean_dxhat = a[0] / n;
      const double mean_dxhat_xhat = s * (bsum[0] - m_lo * a[0]) / n;
      if (!detail::layer_norm_row_is_wide(d, s)) {
        const auto lo = static_cast<float>(m_lo), md = static_cast<float>(mean_dxhat),
                   mdx = static_cast<float>(mean_dxhat_xhat);
        for (std::int64_t k = 0; k < d; ++k) {
          const float dyk = dyr[k];
          const float xhat = ((xr[k] - m_hi) - lo) * sf;
          dg[static_cast<std::size_t>(k)] += static_cast<double>(dyk * xhat);
          db[static_cast<std::size_t>(k)] += static_cast<double>(dyk);
          dxr[k] = (dyk * g[k] - md - xhat * mdx) * sf;
        }
      } else {
        const double m = static_cast<double>(m_hi) + m_lo;
        for (std::int64_t k = 0; k < d; ++k) {
          const double dyk = dyr[k];
          const double xhat = (static_cast<double>(xr[k]) - m) * s;
          dg[static_cast<std::size_t>(k)] += dyk * xhat;
          db[static_cast<std::size_t>(k)] += dyk;
          dxr[k] = static_cast<float>((dyk * g[k] - mean_dxhat - xhat * mean_dxhat_xhat) * s);
        }
      }
    }
    std::lock_guard lock(merge);
    float* dgp = dgamma.data<float>();
    float* dbp = dbeta.data<float>();
    for (std::int64_t k = 0; k < d; ++k) {
      dgp[k] = static_cast<float>(static_cast<double>(dgp[k]) + dg[static_cast<std::size_t>(k)]);
      dbp[k] = static_cast<float>(static_cast<double>(dbp[k]) + db[static_cast<std::size_t>(k)]);
    }
  });
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
