// Tests of dmoe/moe/gating.hpp: product-key top-k against exhaustive search, tie order, and gradients by finite differences.
#include <dmoe/moe/gating.hpp>

#include <boost/test/unit_test.hpp>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

using namespace dmoe;
namespace tt = boost::test_tools;

namespace {

// Scores every expert (summing in double, dimension by dimension, like the search) and sorts them
// best first, equal scores by lexicographically smaller coordinates.
moe::grid_selection exhaustive_topk(const tensor& grid_scores, const std::vector<std::uint32_t>& grid, std::int64_t k) {
  const std::vector<std::int64_t> offsets = moe::grid_offsets(grid);
  std::uint64_t experts = 1;
  for (auto extent : grid) experts *= extent;
  moe::grid_selection out;
  out.grid = grid;
  out.batch_size = grid_scores.dim(0);
  out.k = k;
  struct scored {
    double score;
    std::uint64_t index;
  };
  std::vector<scored> all(experts);
  std::vector<std::uint32_t> coords(grid.size());
  for (std::int64_t b = 0; b < out.batch_size; ++b) {
    const float* row = grid_scores.data<float>() + b * offsets.back();
    for (std::uint64_t e = 0; e < experts; ++e) {
      std::uint64_t rest = e;
      for (std::size_t d = grid.size(); d-- > 0;) {
        coords[d] = static_cast<std::uint32_t>(rest % grid[d]);
        rest /= grid[d];
      }
      double sum = 0.0;
      for (std::size_t d = 0; d < grid.size(); ++d) sum += static_cast<double>(row[offsets[d] + coords[d]]);
      all[e] = {sum, e};
    }
    std::partial_sort(all.begin(), all.begin() + k, all.end(), [](const scored& a, const scored& b) {
      return a.score > b.score || (a.score == b.score && a.index < b.index);
    });
    for (std::int64_t j = 0; j < k; ++j) {
      out.scores.push_back(static_cast<float>(all[static_cast<std::size_t>(j)].score));
      std::uint64_t rest = all[static_cast<std::size_t>(j)].index;
      for (std::size_t d = grid.size(); d-- > 0;) {
        coords[d] = static_cast<std::uint32_t>(rest % grid[d]);
        rest /= grid[d];
      }
      out.coordinates.insert(out.coordinates.end(), coords.begin(), coords.end());
    }
  }
  return out;
}

void expect_same_selection(const moe::grid_selection& got, const moe::grid_selection& expected) {
  BOOST_TEST(got.grid == expected.grid, tt::per_element());
  BOOST_TEST(got.batch_size == expected.batch_size);
  BOOST_TEST(got.k == expected.k);
  BOOST_TEST(got.coordinates == expected.coordinates, tt::per_element());
  BOOST_TEST(got.scores == expected.scores, tt::per_element());
}

std::int64_t width(const std::vector<std::uint32_t>& grid) { return moe::grid_offsets(grid).back(); }

}  // namespace

BOOST_AUTO_TEST_SUITE(moe_gating)

BOOST_AUTO_TEST_CASE(product_key_topk_equals_exhaustive_on_random_grids) {
  random_engine gen(11);
  struct grid_case {
    std::vector<std::uint32_t> grid;
    std::int64_t batch;
    std::vector<std::int64_t> ks;
  };
  const std::vector<grid_case> cases{
      {{16, 16}, 8, {1, 4, 16, 100, 256}},
      {{256, 256}, 3, {1, 4, 8, 64}},
      {{32, 48}, 64, {1, 2, 4, 16}},  // whole 16-score blocks only: the bounded search with no tail
      {{3, 200}, 4, {1, 5, 600}},
      {{4, 4, 4}, 8, {1, 2, 7, 64}},
      {{16, 8, 32}, 4, {3, 33, 128}},
      {{64, 64, 64}, 2, {10, 50}},
      {{1, 5, 3}, 3, {15}},
      {{37}, 5, {1, 37}},
      {{2, 3, 2, 5}, 3, {1, 13, 60}},
  };
  for (const auto& c : cases) {
    const tensor scores = tensor::normal(shape{c.batch, width(c.grid)}, gen);
    for (std::int64_t k : c.ks) {
      BOOST_TEST_CONTEXT("grid " << fmt::format("{}", c.grid) << " k " << k) {
        const moe::grid_selection got = moe::product_key_topk(scores, c.grid, k);
        expect_same_selection(got, exhaustive_topk(scores, c.grid, k));
        for (std::int64_t b = 0; b < c.batch; ++b)
          for (std::int64_t j = 1; j < k; ++j) BOOST_TEST(got.score(b, j - 1) >= got.score(b, j));
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(grids_wider_than_64_key_bits_decode_row_major_indices) {
  // 32 dimensions of 3 need 64 bits of 2-bit fields, so keys are row-major indices (3^32 < 2^64). Too many
  // experts to enumerate: the best is every dimension's best, the second differs in the cheapest dimension.
  const std::vector<std::uint32_t> grid(32, 3);
  random_engine gen(3);
  const tensor scores = tensor::normal(shape{4, width(grid)}, gen);
  const moe::grid_selection got = moe::product_key_topk(scores, grid, 2);
  for (std::int64_t b = 0; b < 4; ++b) {
    double best = 0, cheapest_gap = 1e300;
    for (std::size_t d = 0; d < grid.size(); ++d) {
      std::vector<float> dim(3);
      for (std::int64_t c = 0; c < 3; ++c)
        dim[static_cast<std::size_t>(c)] = scores.at(b, static_cast<std::int64_t>(3 * d) + c);
      const auto top = static_cast<std::uint32_t>(std::max_element(dim.begin(), dim.end()) - dim.begin());
      BOOST_TEST(got.expert(b, 0)[d] == top);
      std::vector<float> sorted = dim;
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      best += sorted[0];
      cheapest_gap = std::min(cheapest_gap, static_cast<double>(sorted[0]) - sorted[1]);
    }
    BOOST_TEST(got.score(b, 0) == best, tt::tolerance(1e-5));
    BOOST_TEST(got.score(b, 1) == best - cheapest_gap, tt::tolerance(1e-5));
    int differing = 0;
    for (std::size_t d = 0; d < grid.size(); ++d) differing += got.expert(b, 0)[d] != got.expert(b, 1)[d];
    BOOST_TEST(differing == 1);
  }
}

BOOST_AUTO_TEST_CASE(ties_go_to_lexicographically_smaller_coordinates) {
  // Small integer scores make many experts tie; sums of them are exact in double.
  random_engine gen(5);
  for (const auto& [grid, levels] : std::vector<std::pair<std::vector<std::uint32_t>, int>>{
           {{6, 6}, 3}, {{5, 4, 3}, 3}, {{3, 3, 3, 3}, 3}, {{32, 48}, 3}, {{64, 32}, 40}, {{16, 16, 16}, 20}}) {
    std::uniform_int_distribution<int> level(0, levels - 1);
    tensor scores(shape{16, width(grid)});
    for (float& x : scores.span<float>()) x = static_cast<float>(level(gen));
    std::int64_t experts = 1;
    for (auto extent : grid) experts *= extent;
    for (std::int64_t k : {std::int64_t{1}, std::int64_t{5}, experts / 2, experts}) {
      BOOST_TEST_CONTEXT("grid " << fmt::format("{}", grid) << " k " << k) {
        expect_same_selection(moe::product_key_topk(scores, grid, k), exhaustive_topk(scores, grid, k));
      }
    }
  }
  // All equal: the first k experts in row-major order.
  const tensor flat(shape{1, 6});
  const auto all_equal = moe::product_key_topk(flat, std::vector<std::uint32_t>{3, 3}, 4);
  BOOST_TEST(all_equal.coordinates == (std::vector<std::uint32_t>{0, 0, 0, 1, 0, 2, 1, 0}), tt::per_element());
}

BOOST_AUTO_TEST_CASE(grids_of_more_than_2_to_the_64_experts_are_refused_at_construction) {
  // 8192^5 = 2^65 experts: their row-major keys would wrap (best 8191 everywhere came back as 4095, 8191, ...).
  const std::vector<std::uint32_t> huge(5, 8192);
  const tensor scores(shape{1, width(huge)});
  random_engine gen(4);
  BOOST_CHECK_EXCEPTION(moe::grid_gating<>(1, huge, gen), invalid_argument_error, [](const invalid_argument_error& e) {
    return std::string(e.what()).find("more than 2^64 experts") != std::string::npos;
  });
  BOOST_CHECK_THROW(moe::product_key_topk(scores, huge, 1), invalid_argument_error);
  // Exactly 2^64 experts (65536^4) still fit: the last expert's index is 2^64 - 1.
  const std::vector<std::uint32_t> largest(4, 65536);
  tensor edge(shape{1, width(largest)});
  for (std::int64_t d = 0; d < 4; ++d) edge.at(0, d * 65536 + 65535) = 1.0f;
  const moe::grid_selection top = moe::product_key_topk(edge, largest, 1);
  BOOST_TEST(top.coordinates == (std::vector<std::uint32_t>{65535, 65535, 65535, 65535}), tt::per_element());
  BOOST_TEST(top.score(0, 0) == 4.0f);
}

BOOST_AUTO_TEST_CASE(small_example_by_hand) {
  // Dimension 0 scores [1, 3], dimension 1 scores [0.5, -1, 2]: experts (1,2) = 5, (0,2) = 3,
  // (1,0) = 3.5, (1,1) = 2, (0,0) = 1.5, (0,1) = 0.
  const tensor scores = tensor::from(shape{1, 5}, {1.0f, 3.0f, 0.5f, -1.0f, 2.0f});
  const std::vector<std::uint32_t> grid{2, 3};
  const auto top = moe::product_key_topk(scores, grid, 3);
  BOOST_TEST(top.coordinates == (std::vector<std::uint32_t>{1, 2, 1, 0, 0, 2}), tt::per_element());
  BOOST_TEST(top.scores == (std::vector<float>{5.0f, 3.5f, 3.0f}), tt::per_element());
  BOOST_TEST(top.expert(0, 1)[0] == 1u);
  BOOST_TEST(top.expert(0, 1)[1] == 0u);
}

BOOST_AUTO_TEST_CASE(refuses_bad_arguments) {
  const tensor scores(shape{2, 5});
  const std::vector<std::uint32_t> grid{2, 3};
  BOOST_CHECK_THROW(moe::product_key_topk(scores, grid, 0), invalid_argument_error);
  BOOST_CHECK_THROW(moe::product_key_topk(scores, grid, 7), invalid_argument_error);
  BOOST_CHECK_THROW(moe::product_key_topk(scores, std::vector<std::uint32_t>{2, 4}, 1), shape_error);
  BOOST_CHECK_THROW(moe::product_key_topk(scores, std::vector<std::uint32_t>{}, 1), invalid_argument_error);
  BOOST_CHECK_THROW(moe::product_key_topk(scores, std::vector<std::uint32_t>{5, 0}, 1), invalid_argument_error);
  tensor nan_scores(shape{2, 5});
  nan_scores.at(1, 3) = std::numeric_limits<float>::quiet_NaN();
  BOOST_CHECK_THROW(moe::product_key_topk(nan_scores, grid, 2), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(refuses_non_finite_scores_anywhere_in_the_row) {
  // Grid {32, 40}: whole 16-score blocks in both dimensions and a tail of 8 in the second; k = 4 and k = 20
  // take the bounded search and the sort. Each bad value is named by its column and sample.
  const std::vector<std::uint32_t> grid{32, 40};
  random_engine gen(9);
  const tensor clean = tensor::normal(shape{3, 72}, gen);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()})
    for (std::int64_t column : {0, 17, 31, 32, 47, 64, 71})
      for (std::int64_t k : {4, 20}) {
        tensor scores = clean.clone();
        scores.at(2, column) = bad;
        BOOST_TEST_CONTEXT("value " << bad << " at column " << column << " k " << k) {
          try {
            moe::product_key_topk(scores, grid, k);
            BOOST_ERROR("no error");
          } catch (const invalid_argument_error& e) {
            const std::string what = e.what();
            BOOST_TEST(what.find(fmt::format("score {} of sample 2", column)) != std::string::npos, what);
          }
        }
      }
  BOOST_TEST(moe::product_key_topk(clean, grid, 4).scores.size() == 12u);
}

BOOST_AUTO_TEST_CASE(scores_backward_adds_up_shared_coordinates) {
  // Grid {2, 3}; sample 0 chose (1,2) and (1,0), sample 1 chose (0,1) twice over (a beam search may).
  moe::grid_selection sel{.grid = {2, 3}, .batch_size = 2, .k = 2, .coordinates = {1, 2, 1, 0, 0, 1, 0, 1}, .scores = {}};
  const tensor grad = tensor::from(shape{2, 2}, {0.5f, -2.0f, 1.0f, 3.0f});
  const tensor out = moe::grid_scores_backward(sel, grad);
  // Sample 0: dim 0 coordinate 1 gets 0.5 - 2; dim 1 coordinate 2 gets 0.5, coordinate 0 gets -2.
  const std::vector<float> expected{0.0f, -1.5f, -2.0f, 0.0f, 0.5f, 4.0f, 0.0f, 0.0f, 4.0f, 0.0f};
  BOOST_TEST(std::vector<float>(out.span<float>().begin(), out.span<float>().end()) == expected, tt::per_element());
  sel.coordinates[1] = 3;  // outside the grid
  BOOST_CHECK_THROW(moe::grid_scores_backward(sel, grad), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(gating_backward_matches_finite_differences) {
  random_engine gen(21);
  const std::vector<std::uint32_t> grid{4, 3, 5};
  const std::int64_t batch = 3, in = 6, k = 4;
  moe::grid_gating<> gating(in, grid, gen);
  gating.projection().bias().fill_normal(gen, 0.0f, 0.5f);
  const tensor x = tensor::normal(shape{batch, in}, gen);
  const tensor weights = tensor::normal(shape{batch, k}, gen);

  const tensor scores = gating.forward(x);
  const moe::grid_selection sel = gating.select(scores, k);
  // The loss sum_b,j weights[b,j] * score of chosen expert j of sample b, for fixed choices.
  auto loss = [&](const tensor& input) {
    const tensor s = gating.forward(input);
    const std::vector<std::int64_t> offsets = moe::grid_offsets(grid);
    double total = 0.0;
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t j = 0; j < k; ++j) {
        double expert_score = 0.0;
        for (std::size_t d = 0; d < grid.size(); ++d) expert_score += s.at(b, offsets[d] + sel.expert(b, j)[d]);
        total += weights.at(b, j) * expert_score;
      }
    return total;
  };
  // The selection's scores are the chosen experts' summed scores.
  for (std::int64_t j = 0; j < k; ++j) {
    double sum = 0.0;
    const auto offsets = moe::grid_offsets(grid);
    for (std::size_t d = 0; d < grid.size(); ++d) sum += scores.at(0, offsets[d] + sel.expert(0, j)[d]);
    BOOST_TEST(sel.score(0, j) == sum, tt::tolerance(1e-5));
  }

  gating.zero_grad();
  gating.forward(x);
  const tensor dx = gating.backward_selected(sel, weights);
  const nn::parameter_list params = gating.parameters();
  BOOST_TEST_REQUIRE(params.size() == 2u);
  BOOST_TEST(params[0].name == "projection.weight");
  BOOST_TEST(params[1].name == "projection.bias");

  // The loss is linear in x and in each weight, so central differences are exact up to rounding.
  const float eps = 1e-2f;
  auto check = [&](tensor& variable, const tensor& analytic, const std::string& what) {
    for (std::int64_t i = 0; i < variable.numel(); ++i) {
      const auto at = static_cast<std::size_t>(i);
      const float saved = variable.span<float>()[at];
      variable.span<float>()[at] = saved + eps;
      const double up = loss(x);
      variable.span<float>()[at] = saved - eps;
      const double down = loss(x);
      variable.span<float>()[at] = saved;
      const double numeric = (up - down) / (2.0 * eps);
      BOOST_TEST(std::abs(analytic.span<float>()[at] - numeric) <= 2e-3 * (1.0 + std::abs(numeric)),
                 what << "[" << i << "]: analytic " << analytic.span<float>()[at] << " numeric " << numeric);
    }
  };
  tensor x_copy = x;  // shares storage: perturbing it perturbs the input of `loss`
  check(x_copy, dx, "dx");
  check(*params[0].value, *params[0].grad, "d weight");
  check(*params[1].value, *params[1].grad, "d bias");
  // Not vacuous: every gradient has entries away from zero.
  auto any_nonzero = [](const tensor& t) {
    return std::any_of(t.span<float>().begin(), t.span<float>().end(), [](float v) { return std::abs(v) > 1e-3f; });
  };
  BOOST_TEST(any_nonzero(dx));
  BOOST_TEST(any_nonzero(*params[0].grad));
  BOOST_TEST(any_nonzero(*params[1].grad));
}

BOOST_AUTO_TEST_SUITE_END()
