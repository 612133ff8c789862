// Every CUDA kernel against its CPU twin on random inputs, odd sizes included; tolerances stated per op.
// GEMMs run with cuBLAS pinned to f32 math (TF32 has its own, looser case).
#include <cuda/cuda_test_util.hpp>

#include <dmoe/moe/gating.hpp>
#include <dmoe/ops.hpp>
#include <dmoe/ops/cuda.hpp>
#include <dmoe/tensor/half.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>
#include <vector>

using namespace dmoe;
using namespace dmoe::testing;

namespace {
std::string case_name(const char* op, std::int64_t rows, std::int64_t cols) {
  return std::string(op) + " [" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
}
}  // namespace

BOOST_AUTO_TEST_SUITE(cuda_ops)

// f32 GEMM: both sides accumulate k products in f32 in different orders: |error| <= 1e-5 * sqrt(k) * (|a||b|).
BOOST_AUTO_TEST_CASE(gemm_matches_cpu_for_every_transpose) {
  random_engine gen(1);
  for (auto [m, n, k] : {std::array<std::int64_t, 3>{1, 1, 1}, {17, 33, 7}, {1023, 130, 65}, {64, 1, 300}}) {
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (float beta : {0.0f, 1.0f}) {
          const tensor a = tensor::normal(ta ? shape{k, m} : shape{m, k}, gen);
          const tensor b = tensor::normal(tb ? shape{n, k} : shape{k, n}, gen);
          const tensor c0 = tensor::normal(shape{m, n}, gen);
          tensor c_cpu = c0.clone(), c_gpu = dev(c0);
          const ops::gemm_options o{.trans_a = ta, .trans_b = tb, .alpha = 0.5f, .beta = beta};
          ops::gemm(ops::cpu, a, b, c_cpu, o);
          ops::gemm(ops::cuda, dev(a), dev(b), c_gpu, o);
          expect_close(c_gpu, c_cpu, 1e-5, 2e-5 * std::sqrt(double(k)) * 4,
                       "gemm m" + std::to_string(m) + " n" + std::to_string(n) + " k" + std::to_string(k));
        }
  }
}

// TF32 keeps 10 mantissa bits in the products: relative error about 1e-3 * sqrt(k).
BOOST_AUTO_TEST_CASE(gemm_tf32_is_within_its_precision) {
  random_engine gen(2);
  const tensor a = tensor::normal(shape{256, 512}, gen), b = tensor::normal(shape{512, 128}, gen);
  tensor c_cpu, c_gpu;
  ops::gemm(ops::cpu, a, b, c_cpu);
  cuda::set_tf32(true);
  ops::gemm(ops::cuda, dev(a), dev(b), c_gpu);
  cuda::set_tf32(false);
  expect_close(c_gpu, c_cpu, 1e-2, 2e-3 * std::sqrt(512.0) * 4, "gemm tf32");
}

// cuBLASLt's epilogue GELU against gemm + bias_activation_forward on the CPU.
BOOST_AUTO_TEST_CASE(linear_forward_fuses_bias_and_activation) {
  random_engine gen(3);
  for (auto act : {ops::activation::identity, ops::activation::relu, ops::activation::gelu})
    for (bool with_bias : {false, true})
      for (std::int64_t rows : test_rows) {
        const std::int64_t in = 33, out = 130;
        const tensor x = tensor::normal(shape{rows, in}, gen), w = tensor::normal(shape{out, in}, gen, 0, 0.2f);
        const tensor bias = with_bias ? tensor::normal(shape{out}, gen) : tensor();
        tensor z_cpu, y_cpu;
        ops::gemm(ops::cpu, x, w, z_cpu, {.trans_b = true});
        ops::bias_activation_forward(ops::cpu, z_cpu, bias, y_cpu, act);
        tensor z_gpu, y_gpu;
        ops::linear_forward(ops::cuda, dev(x), dev(w), with_bias ? dev(bias) : tensor(), z_gpu, y_gpu, act);
        const std::string name = case_name("linear_forward", rows, out) + " " + std::string(ops::to_string(act));
        expect_close(z_gpu, z_cpu, 1e-5, 1e-4, name + " z");
        // cuBLASLt's GELU is its own tanh approximation: 1e-3 of the value or 1e-4.
        expect_close(y_gpu, y_cpu, act == ops::activation::gelu ? 1e-3 : 1e-5, 1e-4, name + " y");
      }
}

BOOST_AUTO_TEST_CASE(bias_activation_forward_and_backward_match_cpu) {
  random_engine gen(4);
  for (auto act : {ops::activation::identity, ops::activation::relu, ops::activation::gelu})
    for (std::int64_t rows : test_rows)
      for (std::int64_t cols : test_cols) {
        const tensor z0 = tensor::normal(shape{rows, cols}, gen, 0, 3), bias = tensor::normal(shape{cols}, gen);
        const tensor dy = tensor::normal(shape{rows, cols}, gen);
        tensor z_cpu = z0.clone(), y_cpu, z_gpu = dev(z0), y_gpu;
        ops::bias_activation_forward(ops::cpu, z_cpu, bias, y_cpu, act);
        ops::bias_activation_forward(ops::cuda, z_gpu, dev(bias), y_gpu, act);
        const std::string name = case_name("bias_activation", rows, cols) + " " + std::string(ops::to_string(act));
        expect_close(z_gpu, z_cpu, 0, 0, name + " z");
        expect_close(y_gpu, y_cpu, 1e-5, act == ops::activation::gelu ? 2e-5 : 1e-6, name + " y");
        tensor dz_cpu, dz_gpu, db_cpu = tensor::full(shape{cols}, 1.0f), db_gpu = dev(db_cpu);
        ops::bias_activation_backward(ops::cpu, z_cpu, dy, dz_cpu, &db_cpu, act);
        ops::bias_activation_backward(ops::cuda, z_gpu, dev(dy), dz_gpu, &db_gpu, act);
        // GELU's slope uses tanh: Eigen's f32 tanh (a rational approximation, exactly -1 below -9) and CUDA's tanhf
        // differ by up to about 1e-5 absolute; the other activations agree to rounding.
        const bool gelu = act == ops::activation::gelu;
        expect_close(dz_gpu, dz_cpu, gelu ? 1e-5 : 1e-6, gelu ? 2e-5 : 1e-6, name + " dz");
        expect_close(db_gpu, db_cpu, 1e-5, (gelu ? 2e-5 : 1e-6) * double(rows) + 1e-5, name + " dbias");
        tensor a_cpu, a_gpu;
        ops::activation_forward(ops::cpu, z_cpu, a_cpu, act);
        ops::activation_forward(ops::cuda, z_gpu, a_gpu, act);
        expect_close(a_gpu, a_cpu, 1e-5, act == ops::activation::gelu ? 2e-5 : 1e-6, name + " activation_forward");
      }
}

BOOST_AUTO_TEST_CASE(elementwise_ops_match_cpu) {
  random_engine gen(5);
  for (std::int64_t rows : test_rows)
    for (std::int64_t cols : test_cols) {
      const tensor a = tensor::normal(shape{rows, cols}, gen), b = tensor::normal(shape{rows, cols}, gen);
      const tensor row = tensor::normal(shape{cols}, gen);
      const std::string name = case_name("elementwise", rows, cols);
      tensor y_cpu, y_gpu;
      ops::add(ops::cpu, a, b, y_cpu);
      ops::add(ops::cuda, dev(a), dev(b), y_gpu);
      expect_close(y_gpu, y_cpu, 0, 0, name + " add");
      tensor m_cpu, m_gpu;
      ops::multiply(ops::cpu, a, b, m_cpu);
      ops::multiply(ops::cuda, dev(a), dev(b), m_gpu);
      expect_close(m_gpu, m_cpu, 0, 0, name + " multiply");
      ops::axpy(ops::cpu, 0.25f, a, y_cpu);
      ops::axpy(ops::cuda, 0.25f, dev(a), y_gpu);
      expect_close(y_gpu, y_cpu, 1e-7, 1e-7, name + " axpy");
      ops::scale(ops::cpu, y_cpu, -3.0f);
      ops::scale(ops::cuda, y_gpu, -3.0f);
      expect_close(y_gpu, y_cpu, 0, 0, name + " scale");
      tensor c_gpu;
      ops::copy(ops::cuda, dev(a), c_gpu);
      expect_close(c_gpu, a, 0, 0, name + " copy");
      tensor br_cpu(shape{rows, cols}), br_gpu = dev(br_cpu);
      ops::broadcast_rows(ops::cpu, row, br_cpu);
      ops::broadcast_rows(ops::cuda, dev(row), br_gpu);
      expect_close(br_gpu, br_cpu, 0, 0, name + " broadcast_rows");
      tensor s_cpu = tensor::full(shape{cols}, 2.0f), s_gpu = dev(s_cpu);
      ops::sum_rows(ops::cpu, a, s_cpu);
      ops::sum_rows(ops::cuda, dev(a), s_gpu);
      expect_close(s_gpu, s_cpu, 1e-6, 1e-5, name + " sum_rows");
    }
}

// Sums in double on both sides: outputs agree to a few f32 ulps.
BOOST_AUTO_TEST_CASE(layer_norm_forward_and_backward_match_cpu) {
  random_engine gen(6);
  for (std::int64_t rows : test_rows)
    for (std::int64_t cols : {1, 7, 33, 130, 1030, 3000, 9000}) {
      const tensor x = tensor::normal(shape{rows, cols}, gen, 3, 2), gamma = tensor::normal(shape{cols}, gen);
      const tensor beta = tensor::normal(shape{cols}, gen), dy = tensor::normal(shape{rows, cols}, gen);
      tensor y_cpu, mean_cpu, rstd_cpu, y_gpu, mean_gpu, rstd_gpu;
      ops::layer_norm_forward(ops::cpu, x, gamma, beta, 1e-5f, y_cpu, mean_cpu, rstd_cpu);
      ops::layer_norm_forward(ops::cuda, dev(x), dev(gamma), dev(beta), 1e-5f, y_gpu, mean_gpu, rstd_gpu);
      const std::string name = case_name("layer_norm", rows, cols);
      expect_close(y_gpu, y_cpu, 1e-5, 1e-5, name + " y");
      expect_close(mean_gpu, mean_cpu, 1e-6, 1e-6, name + " mean");
      expect_close(rstd_gpu, rstd_cpu, 1e-6, 1e-6, name + " rstd");
      tensor dx_cpu, dx_gpu, dg_cpu(shape{cols}), db_cpu(shape{cols});
      tensor dg_gpu = dev(dg_cpu), db_gpu = dev(db_cpu);
      ops::layer_norm_backward(ops::cpu, x, gamma, mean_cpu, rstd_cpu, dy, dx_cpu, dg_cpu, db_cpu);
      ops::layer_norm_backward(ops::cuda, dev(x), dev(gamma), mean_gpu, rstd_gpu, dev(dy), dx_gpu, dg_gpu, db_gpu);
      expect_close(dx_gpu, dx_cpu, 1e-4, 1e-5, name + " dx");
      expect_close(dg_gpu, dg_cpu, 1e-5, 1e-4, name + " dgamma");
      expect_close(db_gpu, db_cpu, 1e-6, 1e-5, name + " dbeta");
    }
}

// The fault of constant rows with a large magnitude (issue 9) on the GPU: output exactly 0, rstd 316.228.
BOOST_AUTO_TEST_CASE(layer_norm_of_constant_large_rows_is_zero) {
  const tensor x = tensor::full(shape{2, 1000}, 10000.5f);
  tensor y, mean, rstd;
  ops::layer_norm_forward(ops::cuda, dev(x), dev(tensor::full(shape{1000}, 1.0f)), dev(tensor(shape{1000})), 1e-5f, y,
                          mean, rstd);
  expect_close(y, tensor(shape{2, 1000}), 0, 0, "layer_norm constant rows");
  expect_close(rstd, tensor::full(shape{2}, 316.22775f), 1e-6, 0, "layer_norm constant rows rstd");
}

BOOST_AUTO_TEST_CASE(softmax_cross_entropy_and_mse_match_cpu) {
  random_engine gen(7);
  std::vector<std::int64_t> widths(std::begin(test_cols), std::end(test_cols));
  widths.insert(widths.end(), {1500, 5000, 33000});  // the block-per-row kernels and the warp fallback
  for (std::int64_t rows : test_rows)
    for (std::int64_t cols : widths) {
      if (rows * cols > (std::int64_t{1} << 24)) continue;
      const tensor x = tensor::normal(shape{rows, cols}, gen, 0, 4), dy = tensor::normal(shape{rows, cols}, gen);
      const std::string name = case_name("softmax", rows, cols);
      tensor y_cpu, y_gpu, dx_cpu, dx_gpu;
      ops::softmax(ops::cpu, x, y_cpu);
      ops::softmax(ops::cuda, dev(x), y_gpu);
      expect_close(y_gpu, y_cpu, 1e-5, 1e-7, name);
      ops::softmax_backward(ops::cpu, y_cpu, dy, dx_cpu);
      ops::softmax_backward(ops::cuda, y_gpu, dev(dy), dx_gpu);
      expect_close(dx_gpu, dx_cpu, 1e-4, 1e-6, name + " backward");
      const tensor labels = random_ids(shape{rows}, cols, gen);
      tensor g_cpu, g_gpu;
      const float l_cpu = ops::cross_entropy(ops::cpu, x, labels, &g_cpu);
      const float l_gpu = ops::cross_entropy(ops::cuda, dev(x), dev(labels), &g_gpu);
      BOOST_CHECK_CLOSE(l_gpu + 1.0f, l_cpu + 1.0f, 1e-4);
      expect_close(g_gpu, g_cpu, 1e-5, 1e-7, name + " cross_entropy gradient");
      // In place: the gradient overwrites the logits.
      tensor in_place = dev(x);
      const float l_in_place = ops::cross_entropy(ops::cuda, in_place, dev(labels), &in_place);
      BOOST_CHECK_EQUAL(l_in_place, l_gpu);
      expect_close(in_place, host(g_gpu), 0, 0, name + " cross_entropy in place");
      tensor d_cpu, d_gpu;
      const float e_cpu = ops::mse(ops::cpu, x, dy, &d_cpu);
      const float e_gpu = ops::mse(ops::cuda, dev(x), dev(dy), &d_gpu);
      BOOST_CHECK_CLOSE(e_gpu, e_cpu, 1e-4);
      expect_close(d_gpu, d_cpu, 1e-6, 1e-7, name + " mse gradient");
    }
}

// Large logits (issue 9): ln 2 for [1e8, 1e8]; a bad label is refused before the gradient is written.
BOOST_AUTO_TEST_CASE(cross_entropy_large_logits_and_bad_labels) {
  tensor logits = dev(tensor::from(shape{1, 2}, {1e8f, 1e8f}));
  const tensor label = dev(tensor::from<std::int64_t>(shape{1}, std::vector<std::int64_t>{1}));
  BOOST_CHECK_CLOSE(ops::cross_entropy(ops::cuda, logits, label), 0.6931472f, 1e-4);
  const tensor bad = dev(tensor::from<std::int64_t>(shape{1}, std::vector<std::int64_t>{2}));
  BOOST_CHECK_THROW(ops::cross_entropy(ops::cuda, logits, bad, &logits), invalid_argument_error);
  expect_close(logits, tensor::from(shape{1, 2}, {1e8f, 1e8f}), 0, 0, "logits untouched after a bad label");
  tensor separate;  // a separate gradient: the label is checked with the loss
  BOOST_CHECK_THROW(ops::cross_entropy(ops::cuda, logits, bad, &separate), invalid_argument_error);
  const tensor negative = dev(tensor::from<std::int64_t>(shape{1}, std::vector<std::int64_t>{-1}));
  BOOST_CHECK_THROW(ops::cross_entropy(ops::cuda, logits, negative), invalid_argument_error);
  // Wide rows (the block-per-row kernel) refuse bad labels too.
  const tensor wide = dev(tensor(shape{2, 5000}));
  const tensor wide_bad = dev(tensor::from<std::int64_t>(shape{2}, std::vector<std::int64_t>{0, 5000}));
  BOOST_CHECK_THROW(ops::cross_entropy(ops::cuda, wide, wide_bad), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(optimizers_match_cpu) {
  random_engine gen(8);
  for (bool decoupled : {false, true}) {
    ops::adam_hyper h{.learning_rate = 1e-2f, .weight_decay = 0.1, .decoupled_weight_decay = decoupled};
    std::vector<tensor> p_cpu, g, m_cpu, v_cpu, p_gpu, g_gpu, m_gpu, v_gpu;
    for (std::int64_t n : {1, 17, 1023, 4097}) {
      p_cpu.push_back(tensor::normal(shape{n}, gen));
      g.push_back(tensor::normal(shape{n}, gen));
      m_cpu.push_back(tensor(shape{n}));
      v_cpu.push_back(tensor(shape{n}));
      p_gpu.push_back(dev(p_cpu.back()));
      g_gpu.push_back(dev(g.back()));
      m_gpu.push_back(dev(m_cpu.back()));
      v_gpu.push_back(dev(v_cpu.back()));
    }
    std::vector<tensor*> pp, mp, vp;
    std::vector<const tensor*> gp;
    for (std::size_t i = 0; i < p_gpu.size(); ++i) {
      pp.push_back(&p_gpu[i]);
      gp.push_back(&g_gpu[i]);
      mp.push_back(&m_gpu[i]);
      vp.push_back(&v_gpu[i]);
    }
    for (std::int64_t step = 1; step <= 3; ++step) {
      for (std::size_t i = 0; i < p_cpu.size(); ++i) ops::adam_step(ops::cpu, p_cpu[i], g[i], m_cpu[i], v_cpu[i], step, h);
      ops::adam_step_many(ops::cuda, pp, gp, mp, vp, step, h);
    }
    for (std::size_t i = 0; i < p_cpu.size(); ++i) {
      expect_close(p_gpu[i], p_cpu[i], 1e-6, 1e-6, "adam param " + std::to_string(i));
      expect_close(v_gpu[i], v_cpu[i], 1e-6, 1e-9, "adam v " + std::to_string(i));
    }
  }
  for (bool nesterov : {false, true}) {
    const ops::sgd_hyper h{.learning_rate = 0.1f, .momentum = 0.9, .weight_decay = 0.01, .nesterov = nesterov};
    const tensor p0 = tensor::normal(shape{33, 7}, gen), gr = tensor::normal(shape{33, 7}, gen);
    tensor p_cpu = p0.clone(), b_cpu(shape{33, 7}), p_gpu = dev(p0), b_gpu = dev(b_cpu);
    for (int step = 0; step < 3; ++step) {
      ops::sgd_step(ops::cpu, p_cpu, gr, b_cpu, h);
      ops::sgd_step(ops::cuda, p_gpu, dev(gr), b_gpu, h);
    }
    expect_close(p_gpu, p_cpu, 1e-6, 1e-6, "sgd");
  }
  std::vector<tensor> grads_cpu{tensor::normal(shape{1023}, gen, 0, 5), tensor::normal(shape{17, 3}, gen)};
  std::vector<tensor> grads_gpu{dev(grads_cpu[0]), dev(grads_cpu[1])};
  BOOST_CHECK_CLOSE(ops::grad_norm(ops::cuda, grads_gpu), ops::grad_norm(ops::cpu, grads_cpu), 1e-9);
  const double n_cpu = ops::clip_grad_norm(ops::cpu, grads_cpu, 1.0f);
  const double n_gpu = ops::clip_grad_norm(ops::cuda, grads_gpu, 1.0f);
  BOOST_CHECK_CLOSE(n_gpu, n_cpu, 1e-9);
  expect_close(grads_gpu[0], grads_cpu[0], 1e-6, 0, "clip_grad_norm");
  std::vector<tensor> nan_grads{dev(tensor::from(shape{2}, {1.0f, NAN}))};
  BOOST_CHECK_THROW(ops::clip_grad_norm(ops::cuda, nan_grads, 1.0f), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(gather_scatter_and_embedding_match_cpu) {
  random_engine gen(9);
  for (std::int64_t rows : test_rows)
    for (std::int64_t cols : test_cols) {
      const std::string name = case_name("gather", rows, cols);
      const tensor x = tensor::normal(shape{rows, cols}, gen);
      const tensor idx = random_ids(shape{2 * rows + 1}, rows, gen);
      tensor y_cpu, y_gpu;
      ops::gather_rows(ops::cpu, x, idx, y_cpu);
      ops::gather_rows(ops::cuda, dev(x), dev(idx), y_gpu);
      expect_close(y_gpu, y_cpu, 0, 0, name);
      const tensor w = tensor::normal(shape{2 * rows + 1}, gen);
      tensor s_cpu = tensor::normal(shape{rows, cols}, gen), s_gpu = dev(s_cpu);
      ops::scatter_add_rows(ops::cpu, y_cpu, idx, w, s_cpu);
      ops::scatter_add_rows(ops::cuda, y_gpu, dev(idx), dev(w), s_gpu);
      expect_close(s_gpu, s_cpu, 1e-5, 1e-5, name + " scatter_add");
      tensor e_cpu, e_gpu;
      const tensor ids = random_ids(shape{3, 5}, rows, gen);
      ops::embedding_forward(ops::cpu, x, ids, e_cpu);
      ops::embedding_forward(ops::cuda, dev(x), dev(ids), e_gpu);
      expect_close(e_gpu, e_cpu, 0, 0, name + " embedding");
      const tensor dy = tensor::normal(shape{3, 5, cols}, gen);
      tensor dt_cpu(shape{rows, cols}), dt_gpu = dev(dt_cpu);
      ops::embedding_backward(ops::cpu, ids, dy, dt_cpu);
      ops::embedding_backward(ops::cuda, dev(ids), dev(dy), dt_gpu);
      expect_close(dt_gpu, dt_cpu, 1e-5, 1e-5, name + " embedding backward");
    }
  const tensor x = dev(tensor::normal(shape{4, 3}, gen));
  const tensor bad = dev(tensor::from<std::int64_t>(shape{2}, std::vector<std::int64_t>{1, 4}));
  tensor y;
  BOOST_CHECK_THROW(ops::gather_rows(ops::cuda, x, bad, y), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(topk_matches_cpu) {
  random_engine gen(10);
  for (std::int64_t rows : test_rows)
    for (std::int64_t cols : {1, 7, 33, 130, 5000}) {
      tensor x = tensor::normal(shape{rows, cols}, gen);
      if (cols > 3) {  // ties and a NaN: the lower index first, NaN on top
        x.at(0, 1) = x.at(0, 2);
        x.at(0, 3) = NAN;
      }
      const std::int64_t k = std::min<std::int64_t>(cols, 5);
      tensor v_cpu, i_cpu, v_gpu, i_gpu;
      ops::topk(ops::cpu, x, k, v_cpu, i_cpu);
      ops::topk(ops::cuda, dev(x), k, v_gpu, i_gpu);
      expect_equal_i64(i_gpu, i_cpu, case_name("topk indices", rows, cols));
      expect_close(v_gpu, v_cpu, 0, 0, case_name("topk values", rows, cols));
    }
}

// Product-key top-k: the same experts, in the same order, with the same scores, as the CPU's exact top-k.
BOOST_AUTO_TEST_CASE(product_key_topk_equals_cpu) {
  random_engine gen(11);
  const std::vector<std::vector<std::uint32_t>> grids{{16}, {8, 8}, {32, 32}, {5, 7, 3}, {256, 256}, {4096, 2}, {3, 4, 5, 6}};
  for (const auto& grid : grids)
    for (std::int64_t k : {1, 4, 17, 256}) {
      std::int64_t experts = 1, width = 0;
      for (auto e : grid) {
        experts *= e;
        width += e;
      }
      if (k > experts) continue;
      const tensor scores = tensor::normal(shape{33, width}, gen);
      const moe::grid_selection cpu_sel = moe::product_key_topk(scores, grid, k);
      const moe::grid_selection gpu_sel = moe::product_key_topk(ops::cuda, dev(scores), grid, k);
      BOOST_REQUIRE_EQUAL(gpu_sel.k, k);
      BOOST_CHECK_MESSAGE(gpu_sel.coordinates == cpu_sel.coordinates,
                          "product_key_topk: different experts for grid of " << grid.size() << " dims, k " << k);
      BOOST_CHECK_MESSAGE(gpu_sel.scores == cpu_sel.scores, "product_key_topk: different scores, k " << k);
    }
  tensor bad = tensor::normal(shape{2, 16}, gen);
  bad.at(1, 3) = NAN;
  BOOST_CHECK_THROW(moe::product_key_topk(ops::cuda, dev(bad), std::vector<std::uint32_t>{8, 8}, 2),
                    invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(dropout_mask_keeps_the_right_fraction) {
  random_engine gen(12);
  tensor mask = dev(tensor(shape{1000, 1000}));
  ops::dropout_mask(ops::cuda, mask, 0.3f, gen);
  const tensor m = host(mask);
  std::int64_t zeros = 0;
  bool scaled = true;
  for (float v : m.span<float>()) {
    if (v == 0.0f)
      ++zeros;
    else
      scaled = scaled && std::fabs(v - 1.0f / 0.7f) < 1e-6f;
  }
  BOOST_CHECK(scaled);
  BOOST_CHECK_CLOSE(double(zeros) / 1e6, 0.3, 1.0);  // 1 % of 0.3: about 7 standard deviations
  random_engine same(12);
  tensor again = dev(tensor(shape{1000, 1000}));
  ops::dropout_mask(ops::cuda, again, 0.3f, same);
  expect_close(again, m, 0, 0, "dropout mask from the same generator state");
}

BOOST_AUTO_TEST_CASE(causal_attention_matches_cpu) {
  random_engine gen(13);
  for (auto [batch, seq, width, heads] : {std::array<std::int64_t, 4>{1, 1, 4, 1}, {3, 17, 12, 3}, {2, 33, 64, 4}}) {
    const tensor qkv = tensor::normal(shape{batch, seq, 3 * width}, gen), dy = tensor::normal(shape{batch, seq, width}, gen);
    tensor y_cpu, p_cpu, y_gpu, p_gpu, d_cpu, d_gpu;
    ops::causal_attention_forward(ops::cpu, qkv, heads, y_cpu, p_cpu);
    ops::causal_attention_forward(ops::cuda, dev(qkv), heads, y_gpu, p_gpu);
    const std::string name = "attention seq " + std::to_string(seq);
    expect_close(p_gpu, p_cpu, 1e-5, 1e-6, name + " probs");
    expect_close(y_gpu, y_cpu, 1e-4, 1e-5, name + " y");
    ops::causal_attention_backward(ops::cpu, qkv, p_cpu, dy, heads, d_cpu);
    ops::causal_attention_backward(ops::cuda, dev(qkv), p_gpu, dev(dy), heads, d_gpu);
    expect_close(d_gpu, d_cpu, 1e-4, 1e-5, name + " dqkv");
  }
}

// f16/bf16 conversion on the device: the same bits as the CPU's codec for finite values and infinities.
BOOST_AUTO_TEST_CASE(half_conversions_match_cpu) {
  random_engine gen(14);
  tensor x = tensor::normal(shape{1031}, gen, 0, 1000);
  x.at(0) = 1e6f;  // beyond f16: inf
  x.at(1) = -INFINITY;
  x.at(2) = 6.1e-5f;  // f16 subnormal range
  x.at(3) = NAN;
  tensor h16, b16;
  ops::convert(ops::cuda, dev(x), dtype::f16, h16);
  ops::convert(ops::cuda, dev(x), dtype::bf16, b16);
  const tensor h = host(h16), b = host(b16);
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const float v = x.at(i);
    const half expected = to_half(v);
    if (std::isnan(v)) {
      BOOST_CHECK(std::isnan(to_float(h.data<half>()[i])));
      continue;
    }
    BOOST_CHECK_EQUAL(h.data<half>()[i].bits, expected.bits);
    BOOST_CHECK_EQUAL(b.data<bfloat16>()[i].bits, to_bfloat16(v).bits);
  }
  tensor back;
  ops::convert(ops::cuda, h16, dtype::f32, back);
  const tensor hb = host(back);
  for (std::int64_t i = 4; i < x.numel(); ++i) BOOST_CHECK_EQUAL(hb.at(i), to_float(h.data<half>()[i]));
  tensor wrong;
  BOOST_CHECK_THROW(ops::convert(ops::cuda, dev(x), dtype::i64, wrong), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
