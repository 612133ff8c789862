// Row reductions of f32 data accumulated in double, so their error grows neither with the length nor the magnitude.
#pragma once

#include <dmoe/core/config.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace detail {

// Independent partial sums: the compiler vectorises the lanes without reassociating a single chain.
inline constexpr std::int64_t reduction_lanes = 16;

// sum over i < n of term(i) (a double), in reduction_lanes interleaved double accumulators added pairwise.
template <class Term>
double sum_f64(std::int64_t n, Term&& term) {
  double acc[reduction_lanes] = {};
  std::int64_t i = 0;
  for (; i + reduction_lanes <= n; i += reduction_lanes)
    for (std::int64_t j = 0; j < reduction_lanes; ++j) acc[j] += term(i + j);
  for (std::int64_t j = 0; i < n; ++i, ++j) acc[j] += term(i);
  for (std::int64_t width = reduction_lanes / 2; width > 0; width /= 2)
    for (std::int64_t j = 0; j < width; ++j) acc[j] += acc[j + width];
  return acc[0];
}

// sum of x[0..n) in double.
inline double sum_f64(const float* x, std::int64_t n) {
  return sum_f64(n, [x](std::int64_t i) { return static_cast<double>(x[i]); });
}

// sum of x[i] * y[i] in double (each product exact).
inline double dot_f64(const float* x, const float* y, std::int64_t n) {
  return sum_f64(n, [x, y](std::int64_t i) { return static_cast<double>(x[i]) * static_cast<double>(y[i]); });
}

// sum of (x[i] - center)^2 in double: the second pass of a two-pass variance.
inline double sum_squared_deviations_f64(const float* x, std::int64_t n, double center) {
  return sum_f64(n, [x, center](std::int64_t i) {
    const double deviation = static_cast<double>(x[i]) - center;
    return deviation * deviation;
  });
}

// partial[c] += sum over r < rows of x[r * cols + c]: column sums of a row-major block, in double.
inline void add_column_sums_f64(const float* x, std::int64_t rows, std::int64_t cols, double* partial) {
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
