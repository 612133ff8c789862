// Grid gating for dmoe_bench_ops: product-key top-k over a 256x256 grid against scoring all 65,536 experts.
//
// Every contender is single-threaded (product_key_topk has no parallel loop) and returns each sample's k best
// experts, best first. The exhaustive baselines compute every expert's score (the sum of its two coordinates'
// scores) and then select: with std::partial_sort or std::nth_element over (score, index) pairs, or with a
// vectorised scan that writes each grid row's 256 sums, takes the row's maximum, and looks at the row's entries
// only when that maximum beats the current k-th best.
#pragma once

#include "ops_timing.hpp"

#include <dmoe/moe/gating.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Core>

namespace dmoe_bench {

struct scored_expert {
  float score;
  std::uint32_t index;  // row-major over the grid
};

// Best first; equal scores by smaller index, as product_key_topk orders them.
inline bool scored_better(const scored_expert& a, const scored_expert& b) noexcept {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

enum class exhaustive_select { partial_sort, nth_element, simd_scan };

inline const char* to_string(exhaustive_select s) {
  switch (s) {
    case exhaustive_select::partial_sort: return "partial_sort";
    case exhaustive_select::nth_element: return "nth_element";
    case exhaustive_select::simd_scan: return "simd_scan";
  }
  return "?";
}

// The k best of every expert of a two-dimensional grid for each row of grid scores [batch, rows + cols];
// out holds [batch][k] indices, best first.
inline void exhaustive_topk(const dmoe::tensor& grid_scores, std::uint32_t grid_rows, std::uint32_t grid_cols,
                            std::size_t k, exhaustive_select how, std::vector<std::uint32_t>& out) {
  const auto batch = static_cast<std::size_t>(grid_scores.dim(0));
  const auto width = static_cast<std::size_t>(grid_scores.dim(1));
  const std::size_t experts = std::size_t{grid_rows} * grid_cols;
  out.resize(batch * k);
  std::vector<scored_expert> all(how == exhaustive_select::simd_scan ? 0 : experts);
  Eigen::ArrayXf row_sums(grid_cols);
  std::vector<scored_expert> best;
  const float* data = grid_scores.data<float>();
  for (std::size_t s = 0; s < batch; ++s) {
    const float* a = data + s * width;
    const Eigen::Map<const Eigen::ArrayXf> b(a + grid_rows, grid_cols);
    if (how == exhaustive_select::simd_scan) {
      best.assign(k, {-std::numeric_limits<float>::infinity(), 0});
      for (std::uint32_t i = 0; i < grid_rows; ++i) {
        row_sums = a[i] + b;
        if (!(row_sums.maxCoeff() > best[k - 1].score)) continue;
        for (std::uint32_t j = 0; j < grid_cols; ++j) {
          const scored_expert e{row_sums[j], i * grid_cols + j};
          if (!(e.score > best[k - 1].score)) continue;
          std::size_t at = k - 1;
          while (at > 0 && e.score > best[at - 1].score) {
            best[at] = best[at - 1];
            --at;
          }
          best[at] = e;
        }
      }
    } else {
      for (std::uint32_t i = 0; i < grid_rows; ++i)
        for (std::uint32_t j = 0; j < grid_cols; ++j) all[i * grid_cols + j] = {a[i] + b[j], i * grid_cols + j};
      const auto kth = all.begin() + static_cast<std::ptrdiff_t>(k);
      if (how == exhaustive_select::partial_sort) {
        std::partial_sort(all.begin(), kth, all.end(), scored_better);
      } else {
        std::nth_element(all.begin(), kth - 1, all.end(), scored_better);
        std::sort(all.begin(), kth, scored_better);
      }
      best.assign(all.begin(), kth);
    }
    for (std::size_t j = 0; j < k; ++j) out[s * k + j] = best[j].index;
  }
}

struct gating_result {
  std::int64_t batch = 0, k = 0;
  std::uint32_t grid_rows = 0, grid_cols = 0;
  double product_key_seconds = 0;
  std::vector<std::pair<exhaustive_select, double>> exhaustive_seconds;
  bool same_experts = false;  // every baseline chose product-key's experts, in its order
  double fastest_exhaustive(bool include_simd_scan) const {
    double best = std::numeric_limits<double>::infinity();
    for (auto [how, s] : exhaustive_seconds)
      if (include_simd_scan || how != exhaustive_select::simd_scan) best = std::min(best, s);
    return best;
  }
};

inline gating_result run_gating_bench(std::int64_t batch, std::uint32_t grid_rows, std::uint32_t grid_cols,
                                      std::int64_t k, const timing_budget& budget) {
  dmoe::random_engine gen(5);
  const dmoe::tensor scores = dmoe::tensor::normal(dmoe::shape{batch, std::int64_t{grid_rows} + grid_cols}, gen);
  const std::vector<std::uint32_t> grid = {grid_rows, grid_cols};
  gating_result r;
  r.batch = batch;
  r.k = k;
  r.grid_rows = grid_rows;
  r.grid_cols = grid_cols;
  dmoe::moe::grid_selection selection;
  r.product_key_seconds = best_seconds([&] { selection = dmoe::moe::product_key_topk(scores, grid, k); }, budget);
  std::vector<std::uint32_t> expected(static_cast<std::size_t>(batch * k));
  for (std::int64_t s = 0; s < batch; ++s)
    for (std::int64_t j = 0; j < k; ++j) {
      const auto c = selection.expert(s, j);
      expected[static_cast<std::size_t>(s * k + j)] = c[0] * grid_cols + c[1];
    }
  r.same_experts = true;
  for (auto how : {exhaustive_select::partial_sort, exhaustive_select::nth_element, exhaustive_select::simd_scan}) {
    std::vector<std::uint32_t> chosen;
    const double s = best_seconds(
        [&] { exhaustive_topk(scores, grid_rows, grid_cols, static_cast<std::size_t>(k), how, chosen); }, budget);
    r.exhaustive_seconds.emplace_back(how, s);
    r.same_experts = r.same_experts && chosen == expected;
  }
  return r;
}

}  // namespace dmoe_bench
