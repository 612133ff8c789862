// Grid gating with product keys: per-dimension expert scores from a linear projection, exact top-k over the grid, and its backward pass.
//
// Experts sit on a grid, e.g. {16, 16} or {4, 4, 4}. One linear layer maps an input row to one
// score vector per grid dimension (all of them side by side: [batch, sum(grid)]); the expert at
// coordinates (c0, c1, ...) scores the sum over d of dimension d's score at c_d. Its top k are
// found without scoring every expert (Lample et al., "Large Memory Layers with Product Keys"):
// the k best of each dimension, then the k best partial sums, one dimension at a time.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/ops/cuda.hpp>  // declarations only: the CUDA path of product_key_topk
#include <dmoe/nn/module.hpp>
#include <dmoe/nn/parameter.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace moe {

// The experts chosen for each sample of a batch, best first: coordinates [batch][k][dims] and the
// experts' scores [batch][k]. The gating backward accepts any such set (e.g. from a beam search
// over live experts), not only an exact top-k.
struct grid_selection {
  std::vector<std::uint32_t> grid;
  std::int64_t batch_size = 0;
  std::int64_t k = 0;
  std::vector<std::uint32_t> coordinates;
  std::vector<float> scores;

  std::size_t dims() const noexcept { return grid.size(); }
  DMOE_LAZY std::span<const std::uint32_t> expert(std::int64_t sample, std::int64_t rank) const {
    const std::size_t at = static_cast<std::size_t>(sample * k + rank) * dims();
    return std::span<const std::uint32_t>(coordinates).subspan(at, dims());
  }
  float score(std::int64_t sample, std::int64_t rank) const { return scores[static_cast<std::size_t>(sample * k + rank)]; }
};

namespace detail {

// A grid or coordinates as text, "[4, 4]", for error messages (without fmt/ranges.h).
DMOE_LAZY inline std::string grid_text(std::span<const std::uint32_t> values) {
  return dmoe::format("[{}]", dmoe::detail::join_text(values, ", "));
}

DMOE_DECL void check_grid(std::string_view op, std::span<const std::uint32_t> grid);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void check_grid(std::string_view op, std::span<const std::uint32_t> grid) {
  if (grid.empty()) throw invalid_argument_error(dmoe::format("{}: the grid has no dimensions", op));
  for (std::uint32_t extent : grid)
    if (extent == 0)
      throw invalid_argument_error(dmoe::format("{}: grid {} has an empty dimension", op, grid_text(grid)));
}
#endif  // DMOE_HEAVY_DEFINITIONS

// The top-k keys every expert by its row-major index in 64 bits: grids with more than 2^64 experts are refused
// (e.g. 8192^5), rather than have keys wrap and return wrong coordinates.
DMOE_DECL void check_grid_keys(std::string_view op, std::span<const std::uint32_t> grid);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void check_grid_keys(std::string_view op, std::span<const std::uint32_t> grid) {
  std::uint64_t last = 0;  // the largest row-major index so far
  for (std::uint32_t extent : grid) {
    if (last > (UINT64_MAX - (extent - 1)) / extent)
      throw invalid_argument_error(dmoe::format(
          "{}: grid {} has more than 2^64 experts; product-key top-k keys experts by a 64-bit row-major index", op,
          grid_text(grid)));
    last = last * extent + (extent - 1);
  }
}
#endif  // DMOE_HEAVY_DEFINITIONS

inline std::int64_t grid_width(std::span<const std::uint32_t> grid) {
  return std::accumulate(grid.begin(), grid.end(), std::int64_t{0});
}

// Number of experts, saturating at INT64_MAX (a grid may be larger than anything we enumerate).
DMOE_DECL std::int64_t grid_size(std::span<const std::uint32_t> grid);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::int64_t grid_size(std::span<const std::uint32_t> grid) {
  std::int64_t n = 1;
  for (std::uint32_t extent : grid) {
    if (n > INT64_MAX / static_cast<std::int64_t>(extent)) return INT64_MAX;
    n *= extent;
  }
  return n;
}
#endif  // DMOE_HEAVY_DEFINITIONS

}  // namespace detail

// Column where each dimension's scores start in grid scores, plus the total width at the end:
// grid {4, 8, 2} gives {0, 4, 12, 14}.
DMOE_LAZY inline std::vector<std::int64_t> grid_offsets(std::span<const std::uint32_t> grid) {
  std::vector<std::int64_t> offsets(grid.size() + 1, 0);
  for (std::size_t d = 0; d < grid.size(); ++d) offsets[d + 1] = offsets[d] + grid[d];
  return offsets;
}

// The k best experts of each sample from grid scores, f32 [batch, sum(grid)] with dimension d's
// scores in columns [sum(grid[:d]), sum(grid[:d+1])). Exact: equal to scoring all experts and
// sorting them by score (best first), equal scores by lexicographically smaller coordinates.
// Needs 1 <= k <= the number of experts and finite scores.
DMOE_DECL grid_selection product_key_topk(const tensor& grid_scores, std::span<const std::uint32_t> grid,
                                          std::int64_t k);

// Gradient of the grid scores [batch, sum(grid)] from the gradient of each selected expert's score
// [batch, k]: an expert's score is a sum, so each coordinate's score receives the expert's gradient
// (added up over the experts that share it).
DMOE_DECL tensor grid_scores_backward(const grid_selection& selection, const tensor& grad_scores);

// product_key_topk on the backend's device: the CPU's on the host; on CUDA the kernel of ops/cuda (k <= 256 and
// extents <= 4096; beyond them the CPU's on a host copy) for scores on the device. Same result, same errors.
template <class Backend>
grid_selection product_key_topk(Backend, const tensor& grid_scores, std::span<const std::uint32_t> grid,
                                std::int64_t k) {
  if constexpr (Backend::device == device::host) {
    return product_key_topk(grid_scores, grid, k);
  } else {
    detail::check_grid("product_key_topk", grid);
    detail::check_grid_keys("product_key_topk", grid);
    const bool within = k <= ops::cuda_product_key_max_k &&
                        std::all_of(grid.begin(), grid.end(),
                                    [](std::uint32_t e) { return e <= ops::cuda_product_key_max_extent; });
    if (grid_scores.device() != Backend::device)
      throw invalid_argument_error(dmoe::format("product_key_topk: grid_scores is {} but the {} gating needs it on its "
                                               "device",
                                               grid_scores.description(), Backend::name));
    if (!within) return product_key_topk(grid_scores.to(device::host), grid, k);
    tensor scores, keys;
    ops::product_key_topk(Backend{}, grid_scores, grid, k, scores, keys);
    const tensor hs = scores.to(device::host), hk = keys.to(device::host);
    grid_selection out;
    out.grid.assign(grid.begin(), grid.end());
    out.batch_size = grid_scores.dim(0);
    out.k = k;
    out.scores.assign(hs.data<float>(), hs.data<float>() + hs.numel());
    out.coordinates.resize(static_cast<std::size_t>(hk.numel()) * grid.size());
    const std::int64_t* key = hk.data<std::int64_t>();
    for (std::int64_t i = 0; i < hk.numel(); ++i) {
      auto rest = static_cast<std::uint64_t>(key[i]);
      for (std::size_t d = grid.size(); d-- > 0;) {
        out.coordinates[static_cast<std::size_t>(i) * grid.size() + d] = static_cast<std::uint32_t>(rest % grid[d]);
        rest /= grid[d];
      }
    }
    return out;
  }
}

// The gating function of a DMoE layer: a linear projection of each input row to grid scores
// [batch, sum(grid)], the exact top-k experts of those scores, and the backward pass from the
// chosen experts' score gradients to the input and the projection's weights.
template <class Backend = ops::cpu_t>
class grid_gating : public nn::module {
 public:
  grid_gating(std::int64_t in_features, std::vector<std::uint32_t> grid, random_engine& gen)
      : grid_(checked(std::move(grid))), projection_(in_features, detail::grid_width(grid_), gen) {}

  // x [batch, in] -> grid scores [batch, sum(grid)]; keeps x for backward.
  tensor forward(const tensor& x) override {
    expect_rank("grid_gating", "x", x, 2);
    return projection_.forward(x);
  }
  // d loss / d grid scores [batch, sum(grid)] -> d loss / d x; the projection's gradients accumulate.
  tensor backward(const tensor& grad_grid_scores) override { return projection_.backward(grad_grid_scores); }

  // The k best experts of each row of grid scores returned by forward (on the backend's device).
  grid_selection select(const tensor& grid_scores, std::int64_t k) const {
    return product_key_topk(Backend{}, grid_scores, grid_, k);
  }
  // Backward from d loss / d score of each selected expert ([batch, k]) of the last forward.
  DMOE_LAZY tensor backward_selected(const grid_selection& selection, const tensor& grad_scores) {
    if (selection.grid != grid_)
      throw invalid_argument_error(
          dmoe::format("grid_gating: selection is over grid {} but the gating's grid is {}",
                      detail::grid_text(selection.grid), detail::grid_text(grid_)));
    return backward(grid_scores_backward(selection, grad_scores.to(device::host)).to(Backend::device));
  }

  nn::parameter_list parameters() override {
    nn::parameter_list out;
    nn::append_parameters(out, "projection", projection_.parameters());
    return out;
  }

  const std::vector<std::uint32_t>& grid() const noexcept { return grid_; }
  std::int64_t in_features() const noexcept { return projection_.in_features(); }
  nn::linear<Backend>& projection() noexcept { return projection_; }

 private:
  DMOE_LAZY static std::vector<std::uint32_t> checked(std::vector<std::uint32_t> grid) {
    detail::check_grid("grid_gating", grid);
    detail::check_grid_keys("grid_gating", grid);
    return grid;
  }

  std::vector<std::uint32_t> grid_;
  nn::linear<Backend> projection_;
};

}  // namespace moe
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/core/simd.hpp>

#include <bit>
#include <cmath>
#include <limits>
#include <utility>

DMOE_BEGIN_NAMESPACE
namespace moe {
namespace detail {

// A partial expert: its score so far and its key over the dimensions seen so far. The key orders experts as
// their coordinates do (lexicographically): the row-major index, or, when every coordinate fits a fixed bit field
// and all fields fit 64 bits, the coordinates side by side in those fields (decoded by shifts, not divisions).
struct product_key_candidate {
  double score;
  std::uint64_t index;
};

// Best first; equal scores by smaller row-major index (i.e. lexicographically smaller coordinates).
inline bool better(const product_key_candidate& a, const product_key_candidate& b) noexcept {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

// Per-sample working memory reused across samples.
struct product_key_scratch {
  std::vector<product_key_candidate> candidates;
  std::vector<product_key_candidate> column;
  std::vector<product_key_candidate> pairs;
  std::vector<product_key_candidate> found;  // a dimension's scores at or above its bound
  std::vector<unsigned> field_bits;          // bits of each coordinate's field in a key; empty: row-major keys

  explicit product_key_scratch(std::span<const std::uint32_t> grid) {
    unsigned total = 0;
    for (std::uint32_t extent : grid) {
      field_bits.push_back(static_cast<unsigned>(std::bit_width(extent - 1)));
      total += field_bits.back();
    }
    if (total > 63) field_bits.clear();
  }
};

// Scores looked at together: one vector compare accepts or rejects a whole block.
inline constexpr std::uint32_t topk_block = 16;

// The exponent field of a float: all ones for inf and NaN only.
inline constexpr std::uint32_t exponent_field = 0x7f800000u;

// Whether every score is finite: the largest exponent field (an integer max, so it vectorises).
inline bool all_finite(const float* scores, std::size_t n) noexcept {
  std::uint32_t exponent = 0;
  for (std::size_t i = 0; i < n; ++i)
    exponent = std::max(exponent, std::bit_cast<std::uint32_t>(scores[i]) & exponent_field);
  return exponent != exponent_field;
}

// Lane l of `out` gets the largest of scores[l], scores[l + 16], ... over `blocks` whole blocks (blocks >= 1).
// Returns whether all those scores are finite (checked in the same pass, so the row is read once).
inline bool lane_maxima(const float* scores, std::uint32_t blocks, float* out) noexcept {
#if defined(__AVX2__)  // also on AVX-512 machines: g++ 12 warns inside _mm512_max_ps (GCC bug 105593)
  const __m256i field = _mm256_set1_epi32(static_cast<int>(exponent_field));
  const auto exponent = [&](__m256 x) { return _mm256_and_si256(_mm256_castps_si256(x), field); };
  __m256 lo = _mm256_loadu_ps(scores), hi = _mm256_loadu_ps(scores + 8);
  __m256i e_lo = exponent(lo), e_hi = exponent(hi);
  for (std::uint32_t b = 1; b < blocks; ++b) {
    const __m256 x_lo = _mm256_loadu_ps(scores + b * topk_block);
    const __m256 x_hi = _mm256_loadu_ps(scores + b * topk_block + 8);
    lo = _mm256_max_ps(lo, x_lo);
    hi = _mm256_max_ps(hi, x_hi);
    e_lo = _mm256_max_epu32(e_lo, exponent(x_lo));
    e_hi = _mm256_max_epu32(e_hi, exponent(x_hi));
  }
  _mm256_storeu_ps(out, lo);
  _mm256_storeu_ps(out + 8, hi);
  return _mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_max_epu32(e_lo, e_hi), field)) == 0;
#else
  std::copy_n(scores, topk_block, out);
  for (std::uint32_t b = 1; b < blocks; ++b)
    for (std::uint32_t l = 0; l < topk_block; ++l) out[l] = std::max(out[l], scores[b * topk_block + l]);
  return all_finite(scores, std::size_t{blocks} * topk_block);
#endif
}

// Bit l set where block[l] >= bound, for a block of 16 scores.
inline std::uint32_t at_least_mask(const float* block, float bound) noexcept {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask(_mm512_loadu_ps(block), _mm512_set1_ps(bound), _CMP_GE_OQ);
#elif defined(__AVX2__)
  const __m256 b = _mm256_set1_ps(bound);
  const auto lo = static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(block), b, _CMP_GE_OQ)));
  const auto hi = static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(block + 8), b, _CMP_GE_OQ)));
  return lo | hi << 8;
#else
  std::uint32_t mask = 0;
  for (std::uint32_t l = 0; l < topk_block; ++l) mask |= static_cast<std::uint32_t>(block[l] >= bound) << l;
  return mask;
#endif
}

// The k best of one dimension's finite scores, sorted best first (equal scores by smaller index), for
// k <= 16 <= extent. The maximum of each of 16 strided lanes is a distinct score, so the k-th largest lane
// maximum is a bound no greater than the k-th best score: only the few scores at or above it can be among the
// k best, one vector compare per block finds them, and only they are sorted.
// Returns false (out unspecified) when a score is not finite.
inline bool top_of_dimension_bounded(const float* scores, std::uint32_t extent, std::size_t keep,
                                     std::vector<product_key_candidate>& candidates,
                                     std::vector<product_key_candidate>& out) {
  const std::uint32_t blocks = extent / topk_block;
  float lane_max[topk_block];
  if (!lane_maxima(scores, blocks, lane_max) || !all_finite(scores + blocks * topk_block, extent % topk_block))
    return false;
  for (std::uint32_t i = blocks * topk_block; i < extent; ++i)
    lane_max[i % topk_block] = std::max(lane_max[i % topk_block], scores[i]);
  // The k-th largest lane maximum: the largest one that at least k lane maxima reach (16 compares, no sort).
  float bound = -std::numeric_limits<float>::infinity();  // the smallest lane maximum always qualifies
  for (std::uint32_t l = 0; l < topk_block; ++l)
    if (static_cast<std::size_t>(std::popcount(at_least_mask(lane_max, lane_max[l]))) >= keep)
      bound = std::max(bound, lane_max[l]);

  if (candidates.size() < extent) candidates.resize(extent);  // ties may put every score at the bound
  product_key_candidate* const found = candidates.data();
  std::size_t n = 0;
  for (std::uint32_t b = 0; b < blocks; ++b)
    for (std::uint32_t mask = at_least_mask(scores + b * topk_block, bound); mask != 0; mask &= mask - 1) {
      const std::uint32_t i = b * topk_block + static_cast<std::uint32_t>(std::countr_zero(mask));
      found[n++] = {static_cast<double>(scores[i]), i};
    }
  for (std::uint32_t i = blocks * topk_block; i < extent; ++i)
    if (scores[i] >= bound) found[n++] = {static_cast<double>(scores[i]), i};
  // Candidates are in index order, so a stable sort by score alone breaks ties by smaller index.
  for (std::size_t j = 1; j < n; ++j) {
    const product_key_candidate c = found[j];
    std::size_t at = j;
    for (; at > 0 && c.score > found[at - 1].score; --at) found[at] = found[at - 1];
    found[at] = c;
  }
  out.assign(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(keep));
  return true;
}

// The k best of one dimension's scores, sorted best first; false (out unspecified) when a score is not finite.
inline bool top_of_dimension(const float* scores, std::uint32_t extent, std::size_t keep,
                             std::vector<product_key_candidate>& scratch, std::vector<product_key_candidate>& out) {
  if (keep <= topk_block && extent >= topk_block) return top_of_dimension_bounded(scores, extent, keep, scratch, out);
  if (!all_finite(scores, extent)) return false;  // before sorting: NaN breaks the order a sort relies on
  out.resize(extent);
  for (std::uint32_t i = 0; i < extent; ++i) out[i] = {static_cast<double>(scores[i]), i};
  std::partial_sort(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(keep), out.end(), better);
  out.resize(keep);
  return true;
}

// Exact top-k of one sample. Sums are taken in double, left to right over the dimensions, and
// rounding is monotone, so a prefix outside the k best prefixes (or a coordinate outside its
// dimension's k best) cannot complete an expert inside the k best. Only pairs (i, j) with
// (i+1)(j+1) <= k can make the k best of a product of two sorted lists, so the combine step
// looks at O(k log k) pairs, not k^2.
// Returns false (outputs unspecified) when a score is not finite.
inline bool product_key_topk_row(const float* row, std::span<const std::uint32_t> grid, std::size_t k,
                                 std::uint32_t* coordinates_out, float* scores_out, product_key_scratch& scratch) {
  const bool fields = !scratch.field_bits.empty();
  auto& candidates = scratch.candidates;
  if (!top_of_dimension(row, grid[0], std::min<std::size_t>(k, grid[0]), scratch.found, candidates)) return false;
  const float* dimension_scores = row + grid[0];
  for (std::size_t d = 1; d < grid.size(); ++d) {
    const std::uint32_t extent = grid[d];
    if (!top_of_dimension(dimension_scores, extent, std::min<std::size_t>(k, extent), scratch.found, scratch.column))
      return false;
    dimension_scores += extent;
    const std::size_t total = candidates.size() * scratch.column.size();
    const std::size_t keep = std::min(k, total);
    auto& pairs = scratch.pairs;
    pairs.clear();
    for (std::size_t i = 0; i < candidates.size() && i + 1 <= keep; ++i)
      for (std::size_t j = 0; j < scratch.column.size() && (i + 1) * (j + 1) <= keep; ++j)
        pairs.push_back({candidates[i].score + scratch.column[j].score,
                         fields ? candidates[i].index << scratch.field_bits[d] | scratch.column[j].index
                                : candidates[i].index * extent + scratch.column[j].index});
    if (pairs.size() <= 64) {  // few pairs (k small): an insertion sort has no heap to build
      for (std::size_t j = 1; j < pairs.size(); ++j) {
        const product_key_candidate c = pairs[j];
        std::size_t at = j;
        for (; at > 0 && better(c, pairs[at - 1]); --at) pairs[at] = pairs[at - 1];
        pairs[at] = c;
      }
    } else {
      std::partial_sort(pairs.begin(), pairs.begin() + static_cast<std::ptrdiff_t>(keep), pairs.end(), better);
    }
    pairs.resize(keep);
    std::swap(candidates, pairs);
  }
  const std::size_t dims = grid.size();
  for (std::size_t j = 0; j < k; ++j) {
    scores_out[j] = static_cast<float>(candidates[j].score);
    std::uint64_t index = candidates[j].index;
    if (fields) {
      for (std::size_t d = dims; d-- > 0;) {
        const std::uint64_t field_mask = (std::uint64_t{1} << scratch.field_bits[d]) - 1;
        coordinates_out[j * dims + d] = static_cast<std::uint32_t>(index & field_mask);
        index >>= scratch.field_bits[d];
      }
      continue;
    }
    for (std::size_t d = dims; d-- > 0;) {
      coordinates_out[j * dims + d] = static_cast<std::uint32_t>(index % grid[d]);
      index /= grid[d];
    }
  }
  return true;
}

}  // namespace detail

DMOE_DEF grid_selection product_key_topk(const tensor& grid_scores, std::span<const std::uint32_t> grid,
                                         std::int64_t k) {
  constexpr std::string_view op = "product_key_topk";
  detail::check_grid(op, grid);
  detail::check_grid_keys(op, grid);
  expect_dtype(op, "grid_scores", grid_scores, dtype::f32);
  expect_rank(op, "grid_scores", grid_scores, 2);
  if (grid_scores.dim(1) != detail::grid_width(grid))
    throw shape_error(dmoe::format("{}: grid_scores is {} but grid {} needs {} columns", op, grid_scores.shape(),
                                  detail::grid_text(grid), detail::grid_width(grid)));
  if (k < 1 || k > detail::grid_size(grid))
    throw invalid_argument_error(
        dmoe::format("{}: k = {} but grid {} has {} experts", op, k, detail::grid_text(grid),
                    detail::grid_size(grid)));

  grid_selection out;
  out.grid.assign(grid.begin(), grid.end());
  out.batch_size = grid_scores.dim(0);
  out.k = k;
  const auto batch = static_cast<std::size_t>(out.batch_size);
  const auto width = static_cast<std::size_t>(grid_scores.dim(1));
  const auto kk = static_cast<std::size_t>(k);
  out.coordinates.resize(batch * kk * grid.size());
  out.scores.resize(batch * kk);
  const float* data = grid_scores.data<float>();
  detail::product_key_scratch scratch(grid);
  for (std::size_t b = 0; b < batch; ++b) {
    const float* row = data + b * width;
    if (!detail::product_key_topk_row(row, grid, kk, out.coordinates.data() + b * kk * grid.size(),
                                      out.scores.data() + b * kk, scratch))
      for (std::size_t c = 0; c < width; ++c)
        if (!std::isfinite(row[c]))
          throw invalid_argument_error(dmoe::format("{}: score {} of sample {} is {}", op, c, b, row[c]));
  }
  return out;
}

DMOE_DEF tensor grid_scores_backward(const grid_selection& selection, const tensor& grad_scores) {
  constexpr std::string_view op = "grid_scores_backward";
  detail::check_grid(op, selection.grid);
  expect_dtype(op, "grad_scores", grad_scores, dtype::f32);
  expect_shape(op, "grad_scores", grad_scores, shape{selection.batch_size, selection.k});
  const std::size_t dims = selection.dims();
  const auto batch = static_cast<std::size_t>(selection.batch_size);
  const auto k = static_cast<std::size_t>(selection.k);
  if (selection.coordinates.size() != batch * k * dims)
    throw shape_error(dmoe::format("{}: {} coordinates for batch {}, k {} and {} dimensions", op,
                                  selection.coordinates.size(), batch, k, dims));
  const std::vector<std::int64_t> offsets = grid_offsets(selection.grid);
  const auto width = static_cast<std::size_t>(offsets.back());
  tensor out(shape{selection.batch_size, static_cast<std::int64_t>(width)});
  float* o = out.data<float>();
  const float* g = grad_scores.data<float>();
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t j = 0; j < k; ++j) {
      const float grad = g[b * k + j];
      const std::uint32_t* c = selection.coordinates.data() + (b * k + j) * dims;
      for (std::size_t d = 0; d < dims; ++d) {
        if (c[d] >= selection.grid[d])
          throw invalid_argument_error(dmoe::format("{}: coordinate {} of dimension {} is outside grid {}", op, c[d],
                                                   d, detail::grid_text(selection.grid)));
        o[b * width + static_cast<std::size_t>(offsets[d]) + c[d]] += grad;
      }
    }
  return out;
}

}  // namespace moe
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
