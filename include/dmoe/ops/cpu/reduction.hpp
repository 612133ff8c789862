// Row reductions of f32 data accumulated in double, so their error grows neither with the length nor the magnitude.
#pragma once

#include <dmoe/core/config.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace detail {

// Independent partial sums: the compiler vectorises the lanes without reassociating a single chain.
inline constexpr std::int64_t reduction_lanes = 16;

// Adds term(i) for the tail i in [from, n) to the lanes, then the lanes pairwise; returns the sum.
template <class Term>
double finish_lanes(double* acc, std::int64_t from, std::int64_t n, Term&& term) {
  const std::int64_t tail = std::min(n - from, reduction_lanes);  // fewer than reduction_lanes terms are left
  for (std::int64_t j = 0; j < tail; ++j) acc[j] += term(from + j);
  for (std::int64_t width = reduction_lanes / 2; width > 0; width /= 2)
    for (std::int64_t j = 0; j < width; ++j) acc[j] += acc[j + width];
  return acc[0];
}

// sum over i < n of term(i) (a double), in reduction_lanes interleaved double accumulators added pairwise.
template <class Term>
double sum_f64(std::int64_t n, Term&& term) {
  double acc[reduction_lanes] = {};
  std::int64_t i = 0;
  for (; i + reduction_lanes <= n; i += reduction_lanes)
    for (std::int64_t j = 0; j < reduction_lanes; ++j) acc[j] += term(i + j);
  return finish_lanes(acc, i, n, term);
}

#if defined(__AVX__)
// The same 16 lanes as sum_f64(n, term), four per register: lane j adds term(16k + j) in the same order, so the result
// is the generic one to the bit (g++ keeps the generic loop's lanes in memory: several times slower). term4(i) gives
// terms i .. i+3.
template <class Term4, class Term>
double sum_f64_avx(std::int64_t n, Term4&& term4, Term&& term) {
  __m256d v0 = _mm256_setzero_pd(), v1 = _mm256_setzero_pd(), v2 = _mm256_setzero_pd(), v3 = _mm256_setzero_pd();
  std::int64_t i = 0;
  for (; i + reduction_lanes <= n; i += reduction_lanes) {
    v0 = _mm256_add_pd(v0, term4(i));
    v1 = _mm256_add_pd(v1, term4(i + 4));
    v2 = _mm256_add_pd(v2, term4(i + 8));
    v3 = _mm256_add_pd(v3, term4(i + 12));
  }
  alignas(32) double acc[reduction_lanes];
  _mm256_store_pd(acc, v0);
  _mm256_store_pd(acc + 4, v1);
  _mm256_store_pd(acc + 8, v2);
  _mm256_store_pd(acc + 12, v3);
  return finish_lanes(acc, i, n, term);
}
#endif

// sum of x[0..n) in double.
DMOE_LAZY inline double sum_f64(const float* x, std::int64_t n) {
  const auto term = [x](std::int64_t i) { return static_cast<double>(x[i]); };
#if defined(__AVX__)
  return sum_f64_avx(
      n,
      [x](std::int64_t i) { return _mm256_cvtps_pd(_mm_loadu_ps(x + i)); },
      term);
#else
  return sum_f64(n, term);
#endif
}

// sum of x[i] * y[i] in double (each product exact).
DMOE_LAZY inline double dot_f64(const float* x, const float* y, std::int64_t n) {
  const auto term = [x, y](std::int64_t i) { return static_cast<double>(x[i]) * static_cast<double>(y[i]); };
#if defined(__AVX__)
  return sum_f64_avx(
      n,
      [x, y](std::int64_t i) {  // the product is exact: adding it equals a fused multiply-add
        return _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + i)), _mm256_cvtps_pd(_mm_loadu_ps(y + i)));
      },
      term);
#else
  return sum_f64(n, term);
#endif
}

// sum of (x[i] - center)^2 in double: the second pass of a two-pass variance.
DMOE_LAZY inline double sum_squared_deviations_f64(const float* x, std::int64_t n, double center) {
  const auto term = [x, center](std::int64_t i) {
    const double deviation = static_cast<double>(x[i]) - center;
    return deviation * deviation;
  };
#if defined(__AVX__)
  return sum_f64_avx(
      n,
      [x, c = _mm256_set1_pd(center)](std::int64_t i) {
        const __m256d deviation = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + i)), c);
        return _mm256_mul_pd(deviation, deviation);
      },
      term);
#else
  return sum_f64(n, term);
#endif
}

// partial[c] += sum over r < rows of x[r * cols + c]: column sums of a row-major block, in double.
DMOE_LAZY inline void add_column_sums_f64(const float* x, std::int64_t rows, std::int64_t cols, double* partial) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) partial[c] += static_cast<double>(x[r * cols + c]);
}

// y[index[i]] += weight(i) * x[i] for rows i < n of `width` floats. Rows with the same target are summed in double
// (in their order) and each target is rounded once to f32: a row that many rows add into does not drift with their
// count, and the result does not depend on how the rows were split.
template <class Weight>
void scatter_add_rows_f64(const float* x, const std::int64_t* index, std::int64_t n, std::int64_t width, float* y,
                          Weight&& weight) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  std::stable_sort(order.begin(), order.end(), [index](std::int64_t a, std::int64_t b) { return index[a] < index[b]; });
  std::vector<double> acc(static_cast<std::size_t>(width));
  for (std::int64_t g = 0; g < n;) {
    const std::int64_t target = index[order[static_cast<std::size_t>(g)]];
    float* row = y + target * width;
    for (std::int64_t c = 0; c < width; ++c) acc[static_cast<std::size_t>(c)] = static_cast<double>(row[c]);
    std::int64_t e = g;
    for (; e < n && index[order[static_cast<std::size_t>(e)]] == target; ++e) {
      const std::int64_t i = order[static_cast<std::size_t>(e)];
      const auto w = static_cast<double>(weight(i));
      const float* source = x + i * width;
      for (std::int64_t c = 0; c < width; ++c) acc[static_cast<std::size_t>(c)] += w * static_cast<double>(source[c]);
    }
    for (std::int64_t c = 0; c < width; ++c) row[c] = static_cast<float>(acc[static_cast<std::size_t>(c)]);
    g = e;
  }
}

// sum[c] += partial[c], rounded once to f32.
inline void add_to_f32(const double* partial, std::int64_t n, float* sum) {
  for (std::int64_t i = 0; i < n; ++i) sum[i] = static_cast<float>(static_cast<double>(sum[i]) + partial[i]);
}

}  // namespace detail
}  // namespace ops
DMOE_END_NAMESPACE
