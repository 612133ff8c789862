// A hostile review of the CUDA backend: the allocator across threads, cuBLASLt on views, outputs left untouched by
// errors, empty and very tall tensors, and errors that name the op. Every case checks itself and runs in well under
// a second on an H200 (the tall column sums about one second, most of it on the host).
#include <cuda/cuda_test_util.hpp>

#include <dmoe/moe/gating.hpp>
#include <dmoe/ops.hpp>
#include <dmoe/ops/cuda.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>
#include <thread>
#include <vector>

using namespace dmoe;
using namespace dmoe::testing;

namespace {

tensor dev_i64(std::vector<std::int64_t> values) {
  const auto n = static_cast<std::int64_t>(values.size());
  return dev(tensor::from<std::int64_t>(shape{n}, std::span<const std::int64_t>(values)));
}

// Runs f and fails with its message unless it throws E whose what() contains every one of `needles`.
template <class E, class F>
void expect_error(F&& f, std::initializer_list<const char*> needles, const std::string& what) {
  try {
    f();
    BOOST_ERROR(what << ": no error");
  } catch (const E& e) {
    const std::string message = e.what();
    for (const char* needle : needles)
      BOOST_CHECK_MESSAGE(message.find(needle) != std::string::npos,
                          what << ": the message \"" << message << "\" does not name \"" << needle << "\"");
  } catch (const std::exception& e) {
    BOOST_ERROR(what << ": wrong exception type: " << e.what());
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cuda_review)

// The caching allocator keys its free lists by (device, stream), and every thread's default stream is the one
// handle cudaStreamPerThread. A block freed by thread A while A's stream still has work queued on it goes into the
// same free list that thread B allocates from; B's stream does not wait for A's, so B may overwrite the block
// before A's queued work reads it. Here: A queues ~20 ms of GEMMs, then a copy out of t, and drops t; B allocates
// a zero-filled tensor of t's size at once. The copy must still see t's ones.
BOOST_AUTO_TEST_CASE(a_block_freed_on_one_thread_is_not_reused_by_another_while_still_in_use) {
  cuda::synchronize();
  cuda::release_cached_memory();  // nothing cached: t's block is the only candidate for B's request
  constexpr std::int64_t n = (3 << 20) + 12345;  // an odd size (12.05 MiB)
  const tensor a(shape{4096, 4096}, dtype::f32, device::cuda), b(shape{4096, 4096}, dtype::f32, device::cuda);
  tensor c;
  ops::gemm(ops::cuda, a, b, c);  // handle creation and c's allocation before the timed part
  cuda::synchronize();
  tensor t = tensor::full(shape{n}, 1.0f).to(device::cuda);
  const tensor u(shape{2 * n}, dtype::f32, device::cuda);  // twice the size: never a candidate for B
  tensor u_head = u.rows(0, n);
  const void* t_address = t.bytes_data();
  for (int i = 0; i < 8; ++i) ops::gemm(ops::cuda, a, b, c);  // about 2 ms each in f32 on an H200
  ops::copy(ops::cuda, t, u_head);                             // queued behind the GEMMs
  t = tensor();                                                // t's block goes back to the cache now
  const void* other_address = nullptr;
  std::string other_error;
  std::thread other([&] {
    try {
      const tensor z(shape{n}, dtype::f32, device::cuda);  // zero-filled on this thread's default stream
      other_address = z.bytes_data();
      (void)z.to(device::host);  // waits for the zero fill
    } catch (const std::exception& e) {
      other_error = e.what();
    }
  });
  other.join();
  BOOST_REQUIRE_MESSAGE(other_error.empty(), "the other thread failed: " << other_error);
  const tensor got = u_head.to(device::host);
  std::int64_t wrong = 0;
  for (float v : got.span<float>()) wrong += v != 1.0f;
  BOOST_CHECK_MESSAGE(wrong == 0, "caching allocator: " << wrong << " of " << n
                                                        << " elements of a tensor were overwritten by another thread "
                                                           "before this thread's queued copy read them (same block: "
                                                        << (other_address == t_address ? "yes" : "no") << ")");
}

// linear_forward with the identity writes z and copies it to y only when y does not share z's storage; two
// disjoint row ranges of one buffer share storage, so y is never written.
BOOST_AUTO_TEST_CASE(linear_forward_writes_y_when_z_and_y_are_disjoint_views_of_one_buffer) {
  random_engine gen(101);
  const std::int64_t rows = 17, in = 33, out = 130;
  const tensor x = tensor::normal(shape{rows, in}, gen), w = tensor::normal(shape{out, in}, gen, 0, 0.2f);
  const tensor bias = tensor::normal(shape{out}, gen);
  tensor z_cpu, y_cpu;
  ops::gemm(ops::cpu, x, w, z_cpu, {.trans_b = true});
  ops::bias_activation_forward(ops::cpu, z_cpu, bias, y_cpu, ops::activation::identity);
  for (bool with_bias : {false, true}) {
    tensor expected = z_cpu.clone();
    if (!with_bias) ops::gemm(ops::cpu, x, w, expected, {.trans_b = true});
    const tensor buffer = tensor::full(shape{2 * rows, out}, -7.0f).to(device::cuda);
    tensor z = buffer.rows(0, rows), y = buffer.rows(rows, 2 * rows);
    ops::linear_forward(ops::cuda, dev(x), dev(w), with_bias ? dev(bias) : tensor(), z, y,
                        ops::activation::identity);
    const std::string name = std::string("linear_forward identity, z and y rows of one buffer, bias ") +
                             (with_bias ? "yes" : "no");
    expect_close(z, expected, 1e-5, 1e-4, name + ": z");
    expect_close(y, expected, 1e-5, 1e-4, name + ": y");
  }
}

// cuBLASLt picks its algorithm assuming 256-byte-aligned buffers unless told otherwise
// (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES). Row views of odd widths start 4 bytes past an alignment: a
// micro-batch x = batch.rows(i, j), or a bias inside a flat parameter buffer. Every activation must still give the
// CPU's numbers (no CUBLAS_STATUS_NOT_SUPPORTED / misaligned address).
BOOST_AUTO_TEST_CASE(linear_forward_accepts_views_at_odd_offsets) {
  random_engine gen(102);
  const std::int64_t rows = 33, in = 17, out = 19;
  const tensor x_all = tensor::normal(shape{rows + 1, in}, gen), w_all = tensor::normal(shape{out + 1, in}, gen);
  const tensor bias_all = tensor::normal(shape{out + 1}, gen);
  const tensor x = x_all.rows(1, rows + 1).clone(), w = w_all.rows(1, out + 1).clone();
  const tensor bias = bias_all.rows(1, out + 1).clone();
  const tensor x_dev = dev(x_all).rows(1, rows + 1), w_dev = dev(w_all).rows(1, out + 1);
  const tensor bias_dev = dev(bias_all).rows(1, out + 1);
  for (auto act : {ops::activation::identity, ops::activation::relu, ops::activation::gelu}) {
    tensor z_cpu, y_cpu;
    ops::gemm(ops::cpu, x, w, z_cpu, {.trans_b = true});
    ops::bias_activation_forward(ops::cpu, z_cpu, bias, y_cpu, act);
    const tensor z_all(shape{rows + 1, out}, dtype::f32, device::cuda), y_all(shape{rows + 1, out}, dtype::f32,
                                                                             device::cuda);
    tensor z = z_all.rows(1, rows + 1), y = y_all.rows(1, rows + 1);
    const std::string name = "linear_forward on views at odd offsets, " + std::string(ops::to_string(act));
    try {
      ops::linear_forward(ops::cuda, x_dev, w_dev, bias_dev, z, y, act);
    } catch (const std::exception& e) {
      BOOST_ERROR(name << ": " << e.what());
      continue;
    }
    expect_close(z, z_cpu, 1e-5, 1e-4, name + ": z");
    expect_close(y, y_cpu, act == ops::activation::gelu ? 1e-3 : 1e-5, 1e-4, name + ": y");
  }
  // The module path: nn::linear<cuda_t> forwards a caller's micro-batch view as is.
  tensor z2, y2;
  const tensor batch = dev(tensor::normal(shape{65, in}, gen));
  BOOST_CHECK_NO_THROW(ops::linear_forward(ops::cuda, batch.rows(3, 40), w_dev, bias_dev, z2, y2,
                                           ops::activation::gelu));
}

// ops/cpu/cross_entropy.hpp checks every label before it writes dlogits; the CUDA twin checks them only after its
// kernel has overwritten a separate dlogits, so an error loses the caller's buffer (e.g. a module's gradient).
BOOST_AUTO_TEST_CASE(a_bad_label_leaves_a_separate_dlogits_untouched) {
  random_engine gen(103);
  for (std::int64_t classes : {7, 5000}) {  // warp-per-row and block-per-row kernels
    const tensor logits = dev(tensor::normal(shape{5, classes}, gen));
    const tensor labels = dev_i64({0, 1, 2, classes, 3});
    const tensor before = tensor::full(shape{5, classes}, 7.0f);
    tensor dlogits = dev(before);
    tensor dlogits_cpu = before.clone();
    BOOST_CHECK_THROW(ops::cross_entropy(ops::cpu, host(logits), host(labels), &dlogits_cpu), invalid_argument_error);
    expect_close(dlogits_cpu, before, 0, 0, "CPU cross_entropy: dlogits after a bad label");
    BOOST_CHECK_THROW(ops::cross_entropy(ops::cuda, logits, labels, &dlogits), invalid_argument_error);
    expect_close(dlogits, before, 0, 0,
                 "CUDA cross_entropy (" + std::to_string(classes) + " classes): dlogits after a bad label");
  }
}

// product_key_topk reports a non-finite score only after its kernel has written scores and keys; and the gating
// wrapper promises the CPU's errors ("same result, same errors"), which name the sample and the score.
BOOST_AUTO_TEST_CASE(a_nan_grid_score_leaves_the_outputs_untouched_and_is_named_like_the_cpu) {
  random_engine gen(104);
  const std::vector<std::uint32_t> grid{8, 8};
  tensor scores_host = tensor::normal(shape{3, 16}, gen);
  scores_host.at(1, 3) = NAN;
  const tensor scores = dev(scores_host);
  const tensor before_scores = tensor::full(shape{3, 4}, 5.0f);
  const tensor before_keys = tensor::from<std::int64_t>(shape{3, 4}, std::vector<std::int64_t>(12, 42));
  tensor out_scores = dev(before_scores), out_keys = dev(before_keys);
  BOOST_CHECK_THROW(ops::product_key_topk(ops::cuda, scores, grid, 4, out_scores, out_keys), invalid_argument_error);
  expect_close(out_scores, before_scores, 0, 0, "product_key_topk: scores after a NaN");
  expect_equal_i64(out_keys, before_keys, "product_key_topk: keys after a NaN");
  std::string cpu_message, gpu_message;
  try {
    (void)moe::product_key_topk(scores_host, grid, 4);
  } catch (const invalid_argument_error& e) {
    cpu_message = e.what();
  }
  try {
    (void)moe::product_key_topk(ops::cuda, scores, grid, 4);
  } catch (const invalid_argument_error& e) {
    gpu_message = e.what();
  }
  BOOST_CHECK_MESSAGE(!cpu_message.empty() && cpu_message == gpu_message,
                      "product_key_topk errors differ: CPU \"" << cpu_message << "\", CUDA \"" << gpu_message << "\"");
}

// Ties everywhere: scores from {0, 1} so many experts share a score; the order must still be the CPU's
// (equal scores by smaller coordinates).
BOOST_AUTO_TEST_CASE(product_key_topk_with_many_ties_equals_cpu) {
  random_engine gen(105);
  std::bernoulli_distribution coin(0.5);
  for (const auto& grid : std::vector<std::vector<std::uint32_t>>{{16, 16}, {5, 7, 3}, {64, 64}})
    for (std::int64_t k : {3, 17, 256}) {
      std::int64_t experts = 1, width = 0;
      for (auto e : grid) {
        experts *= e;
        width += e;
      }
      if (k > experts) continue;
      tensor scores(shape{9, width});
      for (float& v : scores.span<float>()) v = coin(gen) ? 1.0f : 0.0f;
      const moe::grid_selection cpu_sel = moe::product_key_topk(scores, grid, k);
      const moe::grid_selection gpu_sel = moe::product_key_topk(ops::cuda, dev(scores), grid, k);
      BOOST_CHECK_MESSAGE(gpu_sel.coordinates == cpu_sel.coordinates,
                          "product_key_topk with ties: different experts, " << grid.size() << " dims, k " << k);
      BOOST_CHECK_MESSAGE(gpu_sel.scores == cpu_sel.scores, "product_key_topk with ties: different scores, k " << k);
    }
}

// Tensors with no rows (an expert that got no samples this step) or no columns: every op does nothing, or what
// its CPU twin does, without a bad launch configuration.
BOOST_AUTO_TEST_CASE(ops_on_tensors_without_rows_or_columns) {
  const tensor x0 = dev(tensor(shape{0, 7}));
  const tensor gamma = dev(tensor::full(shape{7}, 1.0f)), beta = dev(tensor(shape{7}));
  try {
    tensor y;
    ops::add(ops::cuda, x0, x0, y);
    BOOST_CHECK(y.shape() == (shape{0, 7}));
    tensor s;
    ops::softmax(ops::cuda, x0, s);
    BOOST_CHECK(s.shape() == (shape{0, 7}));
    tensor ln, mean, rstd;
    ops::layer_norm_forward(ops::cuda, x0, gamma, beta, 1e-5f, ln, mean, rstd);
    BOOST_CHECK(mean.shape() == (shape{0}));
    tensor dx, dgamma = dev(tensor::full(shape{7}, 1.0f)), dbeta = dev(tensor::full(shape{7}, 1.0f));
    ops::layer_norm_backward(ops::cuda, x0, gamma, mean, rstd, x0, dx, dgamma, dbeta);
    expect_close(dgamma, tensor::full(shape{7}, 1.0f), 0, 0, "layer_norm_backward, no rows: dgamma");
    tensor sum = dev(tensor::full(shape{7}, 1.0f));
    ops::sum_rows(ops::cuda, x0, sum);
    expect_close(sum, tensor::full(shape{7}, 1.0f), 0, 0, "sum_rows, no rows");
    tensor dz, dbias = dev(tensor::full(shape{7}, 1.0f));
    ops::bias_activation_backward(ops::cuda, x0, x0, dz, &dbias, ops::activation::gelu);
    expect_close(dbias, tensor::full(shape{7}, 1.0f), 0, 0, "bias_activation_backward, no rows: dbias");
    tensor c;
    ops::gemm(ops::cuda, x0, dev(tensor(shape{7, 3})), c);
    BOOST_CHECK(c.shape() == (shape{0, 3}));
    tensor acc = dev(tensor::full(shape{4, 3}, 2.0f));
    ops::gemm(ops::cuda, dev(tensor(shape{4, 0})), dev(tensor(shape{0, 3})), acc, {.beta = 1.0f});
    expect_close(acc, tensor::full(shape{4, 3}, 2.0f), 0, 0, "gemm with k = 0, beta 1");
    tensor values, indices;
    ops::topk(ops::cuda, x0, 3, values, indices);
    BOOST_CHECK(values.shape() == (shape{0, 3}));
    tensor gathered;
    ops::gather_rows(ops::cuda, dev(tensor(shape{4, 7})), dev(tensor(shape{0}, dtype::i64)), gathered);
    BOOST_CHECK(gathered.shape() == (shape{0, 7}));
    tensor target = dev(tensor::full(shape{4, 7}, 3.0f));
    ops::scatter_add_rows(ops::cuda, x0, dev(tensor(shape{0}, dtype::i64)), tensor(), target);
    expect_close(target, tensor::full(shape{4, 7}, 3.0f), 0, 0, "scatter_add_rows, no rows");
    tensor half;
    ops::convert(ops::cuda, x0, dtype::f16, half);
    BOOST_CHECK(half.shape() == (shape{0, 7}) && half.dtype() == dtype::f16);
    const tensor no_cols = dev(tensor(shape{5, 0}));
    tensor sum0 = dev(tensor(shape{0}));
    ops::sum_rows(ops::cuda, no_cols, sum0);
    tensor sm0;
    ops::softmax(ops::cuda, no_cols, sm0);
    BOOST_CHECK_CLOSE(ops::grad_norm(ops::cuda, std::vector<tensor>{x0}), 0.0, 1e-9);
    tensor p = dev(tensor(shape{0})), g = dev(tensor(shape{0})), m = dev(tensor(shape{0})), v = dev(tensor(shape{0}));
    ops::adam_step(ops::cuda, p, g, m, v, 1, {});
    cuda::synchronize();
  } catch (const std::exception& e) {
    BOOST_ERROR("an op on a tensor without rows or columns failed: " << e.what());
  }
  BOOST_CHECK_THROW(ops::cross_entropy(ops::cuda, x0, dev(tensor(shape{0}, dtype::i64))), invalid_argument_error);
  BOOST_CHECK_THROW(ops::mse(ops::cuda, x0, x0), invalid_argument_error);
}

// Column sums of very tall matrices take the other code paths: bias_activation_backward beyond 65,535 chunks of
// 64 rows (launch_column_sum with the gradient written on the way) and sum_rows beyond 65,535 chunks of 256 rows
// (taller chunks).
BOOST_AUTO_TEST_CASE(column_sums_of_very_tall_matrices_match_cpu) {
  random_engine gen(106);
  {
    const std::int64_t rows = 64 * 65535 + 1, cols = 3;
    const tensor z = tensor::uniform(shape{rows, cols}, gen, -3, 3), dy = tensor::uniform(shape{rows, cols}, gen, -1, 1);
    tensor dz_cpu, dz_gpu, db_cpu = tensor::full(shape{cols}, 1.0f), db_gpu = dev(db_cpu);
    ops::bias_activation_backward(ops::cpu, z, dy, dz_cpu, &db_cpu, ops::activation::relu);
    ops::bias_activation_backward(ops::cuda, dev(z), dev(dy), dz_gpu, &db_gpu, ops::activation::relu);
    expect_close(dz_gpu, dz_cpu, 0, 0, "bias_activation_backward, 4.2M rows: dz");
    expect_close(db_gpu, db_cpu, 1e-6, 1e-3, "bias_activation_backward, 4.2M rows: dbias");
  }
  {
    const std::int64_t rows = 256 * 65535 + 7, cols = 1;
    const tensor x = tensor::uniform(shape{rows, cols}, gen, -1, 1);
    tensor s_cpu = tensor::full(shape{cols}, 2.0f), s_gpu = dev(s_cpu);
    ops::sum_rows(ops::cpu, x, s_cpu);
    ops::sum_rows(ops::cuda, dev(x), s_gpu);
    expect_close(s_gpu, s_cpu, 1e-6, 1e-3, "sum_rows, 16.8M rows");
  }
}

// A host tensor, a wrong dtype or a default (empty) tensor given to a cuda op: invalid_argument_error naming the op
// and the argument.
BOOST_AUTO_TEST_CASE(wrong_device_or_dtype_errors_name_the_op_and_the_argument) {
  const tensor h(shape{4, 4});
  const tensor d = dev(h);
  expect_error<invalid_argument_error>([&] { tensor c; ops::gemm(ops::cuda, h, d, c); }, {"gemm", "a", "host"},
                                       "gemm with a host a");
  expect_error<invalid_argument_error>(
      [&] { tensor y; ops::linear_forward(ops::cuda, d, h, tensor(), y, y, ops::activation::identity); },
      {"linear_forward", "w"}, "linear_forward with a host w");
  const tensor labels_i32 = dev(tensor(shape{4}, dtype::i32));
  expect_error<invalid_argument_error>([&] { (void)ops::cross_entropy(ops::cuda, d, labels_i32); },
                                       {"cross_entropy", "labels", "i64"}, "cross_entropy with i32 labels");
  expect_error<invalid_argument_error>([&] { tensor y; ops::gather_rows(ops::cuda, d, tensor(shape{2}, dtype::i64), y); },
                                       {"gather_rows", "host"}, "gather_rows with host indices");
  expect_error<invalid_argument_error>([&] { tensor y; ops::convert(ops::cuda, h, dtype::f16, y); },
                                       {"convert", "host"}, "convert of a host tensor");
  expect_error<invalid_argument_error>([&] { tensor y; ops::softmax(ops::cuda, tensor(), y); }, {"softmax", "empty"},
                                       "softmax of a default tensor");
  tensor host_target(shape{4, 4});
  std::vector<std::byte> bytes(host_target.nbytes());
  expect_error<invalid_argument_error>([&] { cuda::copy_to_device_async(bytes, host_target); },
                                       {"copy_to_device_async", "host"}, "copy_to_device_async into a host tensor");
  tensor p = dev(h), g = h, m = dev(h), v = dev(h);
  expect_error<invalid_argument_error>([&] { ops::adam_step(ops::cuda, p, g, m, v, 1, {}); }, {"adam", "grad"},
                                       "adam_step with a host grad");
}

// ops/cpu/topk.hpp: "x is [rows, n] (leading dimensions fold into rows); values and indices get [rows, k]", and
// k = 0 is allowed. The CUDA twin keeps x's leading dimensions ([2, 3, k]) and refuses k = 0, so an output
// prepared for the CPU's shape is refused and code written against the CPU breaks.
BOOST_AUTO_TEST_CASE(topk_output_shape_and_k_follow_the_cpu_contract) {
  random_engine gen(107);
  const tensor x = tensor::normal(shape{2, 3, 8}, gen);
  tensor v_cpu, i_cpu;
  ops::topk(ops::cpu, x, 3, v_cpu, i_cpu);
  tensor v_gpu, i_gpu;
  try {
    ops::topk(ops::cuda, dev(x), 3, v_gpu, i_gpu);
    expect_close(v_gpu, v_cpu, 0, 0, "topk of a rank-3 tensor: values");
    expect_equal_i64(i_gpu, i_cpu, "topk of a rank-3 tensor: indices");
  } catch (const std::exception& e) {
    BOOST_ERROR("topk of a rank-3 tensor: " << e.what());
  }
  tensor v0_cpu, i0_cpu, v0_gpu, i0_gpu;
  ops::topk(ops::cpu, x, 0, v0_cpu, i0_cpu);
  try {
    ops::topk(ops::cuda, dev(x), 0, v0_gpu, i0_gpu);
    BOOST_CHECK_MESSAGE(v0_gpu.shape() == v0_cpu.shape(), "topk k = 0: shape " << v0_gpu.shape() << " on CUDA but "
                                                                              << v0_cpu.shape() << " on the CPU");
  } catch (const std::exception& e) {
    BOOST_ERROR("topk with k = 0 is allowed on the CPU but not on CUDA: " << e.what());
  }
}

// A zero-filled device tensor (tensor(shape, dtype, device::cuda), used for every module's gradients and Adam's
// moments) is filled by an asynchronous memset on the creating thread's current stream. A copy into it on another
// stream (the networking thread's copy_to_device_async, as the README suggests) is not ordered after that memset,
// so the late zero fill can wipe the copied data. Here the creating thread's stream is kept busy by GEMMs first.
BOOST_AUTO_TEST_CASE(a_zero_filled_tensor_is_not_wiped_after_a_copy_on_another_stream) {
  constexpr std::int64_t n = 1 << 20;
  const tensor a(shape{4096, 4096}, dtype::f32, device::cuda), b(shape{4096, 4096}, dtype::f32, device::cuda);
  tensor c;
  ops::gemm(ops::cuda, a, b, c);
  cuda::synchronize();
  cuda::pinned_buffer ones(n * sizeof(float));
  for (std::int64_t i = 0; i < n; ++i) reinterpret_cast<float*>(ones.data())[i] = 1.0f;
  for (int i = 0; i < 8; ++i) ops::gemm(ops::cuda, a, b, c);  // this thread's stream is busy for ~20 ms
  tensor received(shape{n}, dtype::f32, device::cuda);        // its zero fill waits behind the GEMMs
  cuda::stream network;
  cuda::copy_to_device_async(ones.bytes(), received, network.native());
  network.synchronize();
  cuda::synchronize();
  const tensor got = received.to(device::host);
  std::int64_t wrong = 0;
  for (float v : got.span<float>()) wrong += v != 1.0f;
  BOOST_CHECK_MESSAGE(wrong == 0, wrong << " of " << n
                                        << " copied elements were zeroed afterwards by the tensor's own asynchronous "
                                           "zero fill (tensor(shape, dtype, device::cuda) then a copy on another stream)");
}

BOOST_AUTO_TEST_SUITE_END()
