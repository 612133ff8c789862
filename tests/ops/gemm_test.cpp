// Tests of dmoe/ops/cpu/gemm.hpp and gemm_kernel.hpp: every kernel this CPU runs, every transpose, alpha/beta,
// tile and cache-block edges, the multi-threaded split and shape errors.
#include <dmoe/ops/cpu/gemm.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>
#include <vector>

using namespace dmoe;

namespace {

// c = alpha op(a) op(b) + beta c0, in double.
std::vector<double> reference(const tensor& a, const tensor& b, const tensor& c0, bool ta, bool tb, double alpha,
                              double beta) {
  const std::int64_t m = ta ? a.dim(1) : a.dim(0), k = ta ? a.dim(0) : a.dim(1), n = tb ? b.dim(0) : b.dim(1);
  std::vector<double> c(static_cast<std::size_t>(m * n));
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::int64_t p = 0; p < k; ++p) s += double(ta ? a.at(p, i) : a.at(i, p)) * (tb ? b.at(j, p) : b.at(p, j));
      c[static_cast<std::size_t>(i * n + j)] = alpha * s + (beta == 0.0 ? 0.0 : beta * c0.at(i, j));
    }
  return c;
}

void check_case(std::int64_t m, std::int64_t k, std::int64_t n, bool ta, bool tb, float alpha, float beta) {
  random_engine gen(static_cast<std::uint64_t>(m * 1000 + k * 10 + n));
  const tensor a = tensor::normal(ta ? shape{k, m} : shape{m, k}, gen);
  const tensor b = tensor::normal(tb ? shape{n, k} : shape{k, n}, gen);
  tensor c = tensor::normal(shape{m, n}, gen);
  const tensor c0 = c.clone();
  ops::gemm(ops::cpu, a, b, c, {.trans_a = ta, .trans_b = tb, .alpha = alpha, .beta = beta});
  test::check_close("gemm " + std::to_string(m) + "x" + std::to_string(k) + "x" + std::to_string(n), c,
                    reference(a, b, c0, ta, tb, alpha, beta), 1e-4);
}

// Runs body once with each GEMM kernel this CPU supports, restoring the kernel in use afterwards.
template <class Body>
void for_each_kernel(Body&& body) {
  const ops::gemm_kernel saved = ops::current_gemm_kernel();
  struct restore {
    ops::gemm_kernel kernel;
    ~restore() { ops::set_gemm_kernel(kernel); }
  } restore_on_exit{saved};
  for (auto kernel : {ops::gemm_kernel::eigen, ops::gemm_kernel::avx2, ops::gemm_kernel::avx512}) {
    if (!ops::gemm_kernel_supported(kernel)) {
      BOOST_TEST_MESSAGE("this CPU cannot run the " << ops::to_string(kernel) << " kernel; not tested");
      continue;
    }
    BOOST_TEST_CONTEXT("kernel " << ops::to_string(kernel)) {
      ops::set_gemm_kernel(kernel);
      body();
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(ops_gemm)

BOOST_AUTO_TEST_CASE(every_kernel_at_tile_edges) {
  // Sizes on both sides of the register tiles (6/12 rows, 16/32 columns) and of the k block (256/384).
  for_each_kernel([] {
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (std::int64_t m : {1, 6, 11, 13, 25})
          for (std::int64_t n : {1, 15, 32, 33, 65}) {
            check_case(m, 7, n, ta, tb, 1.0f, 0.0f);
            check_case(m, 385, n, ta, tb, 0.5f, 1.0f);
          }
  });
}

BOOST_AUTO_TEST_CASE(every_kernel_across_cache_blocks) {
  // More rows than one packed block of a (1,536) and more columns than one of b (256/320), k over two blocks.
  for_each_kernel([] {
    check_case(1600, 20, 40, false, false, 1.0f, 0.0f);
    check_case(1600, 20, 40, true, true, 1.0f, 1.0f);
    check_case(13, 400, 700, false, true, 1.0f, 0.0f);
    check_case(13, 800, 700, true, false, -1.0f, 0.5f);
  });
}

BOOST_AUTO_TEST_CASE(kernels_agree_with_each_other) {
  random_engine gen(7);
  const tensor a = tensor::normal(shape{300, 500}, gen), b = tensor::normal(shape{260, 500}, gen);
  std::vector<tensor> results;
  for_each_kernel([&] { results.push_back(ops::matmul(ops::cpu, a, b, false, true)); });
  for (const tensor& c : results)
    for (std::int64_t i = 0; i < c.numel(); ++i)
      BOOST_TEST(std::abs(c.span<float>()[i] - results[0].span<float>()[i]) <= 1e-3f);
}

BOOST_AUTO_TEST_CASE(alpha_zero_reads_neither_input) {
  for_each_kernel([] {
    const tensor a = tensor::full(shape{13, 5}, std::nanf("")), b = tensor::full(shape{5, 33}, 1.0f);
    tensor c = tensor::full(shape{13, 33}, 2.0f);
    ops::gemm(ops::cpu, a, b, c, {.alpha = 0.0f, .beta = 0.5f});
    for (float v : c.span<float>()) BOOST_TEST(v == 1.0f);
  });
}

BOOST_AUTO_TEST_CASE(unsupported_kernel_is_refused) {
  for (auto kernel : {ops::gemm_kernel::avx2, ops::gemm_kernel::avx512})
    if (!ops::gemm_kernel_supported(kernel)) BOOST_CHECK_THROW(ops::set_gemm_kernel(kernel), invalid_argument_error);
  BOOST_TEST(ops::gemm_kernel_supported(ops::current_gemm_kernel()));
}

BOOST_AUTO_TEST_CASE(all_transposes_alpha_beta) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_case(5, 7, 3, ta, tb, 1.0f, 0.0f);
      check_case(4, 6, 9, ta, tb, 0.5f, 1.0f);
      check_case(3, 2, 8, ta, tb, -2.0f, 0.25f);
    }
}

BOOST_AUTO_TEST_CASE(split_across_threads_by_rows_and_columns) {
  // Above the split threshold (8 MFLOP), with sizes that are not multiples of the blocks each thread gets.
  for_each_kernel([] {
    check_case(203, 150, 141, false, true, 1.0f, 0.0f);
    check_case(37, 150, 900, true, false, 1.0f, 1.0f);
  });
}

BOOST_AUTO_TEST_CASE(beta_zero_ignores_nan_in_c) {
  for_each_kernel([] {
    const tensor a = tensor::full(shape{13, 3}, 1.0f), b = tensor::full(shape{3, 35}, 2.0f);
    tensor c = tensor::full(shape{13, 35}, std::nanf(""));
    ops::gemm(ops::cpu, a, b, c);
    for (float v : c.span<float>()) BOOST_TEST(v == 6.0f);
  });
}

BOOST_AUTO_TEST_CASE(empty_output_is_allocated) {
  const tensor a = tensor::full(shape{2, 3}, 1.0f), b = tensor::full(shape{3, 4}, 1.0f);
  const tensor c = ops::matmul(ops::cpu, a, b);
  BOOST_TEST((c.shape() == shape{2, 4}));
  BOOST_TEST(c.at(1, 3) == 3.0f);
  tensor none;
  BOOST_CHECK_THROW(ops::gemm(ops::cpu, a, b, none, {.beta = 1.0f}), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(output_may_share_storage_without_overlapping) {
  tensor big = tensor::full(shape{4, 2}, 1.0f);
  const tensor a = big.rows(0, 2);
  tensor c = big.rows(2, 4);
  ops::gemm(ops::cpu, a, tensor::full(shape{2, 2}, 1.0f), c);
  BOOST_TEST(big.at(3, 1) == 2.0f);
  tensor overlapping = big.rows(1, 3);
  BOOST_CHECK_THROW(ops::gemm(ops::cpu, a, tensor::full(shape{2, 2}, 1.0f), overlapping), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(shape_errors_name_the_shapes) {
  const tensor a(shape{3, 4}), b(shape{5, 6});
  tensor c;
  try {
    ops::gemm(ops::cpu, a, b, c);
    BOOST_FAIL("no error");
  } catch (const shape_error& e) {
    const std::string what = e.what();
    BOOST_TEST(what.find("gemm: a is [3, 4]") != std::string::npos, what);
    BOOST_TEST(what.find("b is [5, 6]") != std::string::npos, what);
  }
  tensor wrong(shape{3, 5});
  const tensor b2(shape{4, 6});
  BOOST_CHECK_THROW(ops::gemm(ops::cpu, a, b2, wrong), shape_error);
  BOOST_CHECK_THROW(ops::gemm(ops::cpu, tensor(shape{2, 2, 2}), b2, c), shape_error);
  BOOST_CHECK_THROW(ops::gemm(ops::cpu, tensor(shape{4}, dtype::f16), b2, c), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
