// Every module's forward and backward on CUDA against the CPU (same seeds give the same initial parameters), and
// training on the GPU: an MLP and a local mixture of experts reach the CPU's accuracy; a training step in steady
// state makes no cudaMalloc.
#include <cuda/cuda_test_util.hpp>

#include <dmoe/moe.hpp>
#include <dmoe/nn.hpp>
#include <dmoe/ops/cuda.hpp>

#include <boost/test/unit_test.hpp>

#include <functional>
#include <memory>
#include <string>

using namespace dmoe;
using namespace dmoe::testing;

namespace {

// Runs forward and backward of the same module on both backends and compares outputs, dx and every gradient.
void compare_module(nn::module& cpu_module, nn::module& gpu_module, const tensor& x, double rtol, double atol,
                    const std::string& what) {
  random_engine gen(99);
  const tensor y_cpu = cpu_module.forward(x);
  const tensor y_gpu = gpu_module.forward(dev(x));
  BOOST_CHECK(y_gpu.device() == device::cuda);
  expect_close(y_gpu, y_cpu, rtol, atol, what + " forward");
  const tensor dy = tensor::normal(y_cpu.shape(), gen);
  const tensor dx_cpu = cpu_module.backward(dy);
  const tensor dx_gpu = gpu_module.backward(dev(dy));
  expect_close(dx_gpu, dx_cpu, rtol, atol, what + " dx");
  auto pc = cpu_module.parameters();
  auto pg = gpu_module.parameters();
  BOOST_REQUIRE_EQUAL(pc.size(), pg.size());
  for (std::size_t i = 0; i < pc.size(); ++i) {
    BOOST_CHECK(pg[i].value->device() == device::cuda);
    expect_close(*pg[i].grad, *pc[i].grad, rtol, atol * 10, what + " grad " + pc[i].name);
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cuda_modules)

BOOST_AUTO_TEST_CASE(modules_match_cpu_forward_and_backward) {
  random_engine data(1);
  for (auto act : {ops::activation::identity, ops::activation::relu, ops::activation::gelu}) {
    random_engine g1(7), g2(7);
    nn::linear<ops::cpu_t> a(33, 17, g1, act);
    nn::linear<ops::cuda_t> b(33, 17, g2, act);
    compare_module(a, b, tensor::normal(shape{1023, 33}, data), 1e-3, 1e-4,
                   "linear " + std::string(ops::to_string(act)));
  }
  nn::layer_norm<ops::cpu_t> ln_cpu(130);
  nn::layer_norm<ops::cuda_t> ln_gpu(130);
  compare_module(ln_cpu, ln_gpu, tensor::normal(shape{17, 130}, data, 1, 3), 1e-4, 1e-5, "layer_norm");
  for (const char* kind : {"ffn", "transformer", "nop"}) {
    const nn::expert_options options{.seq_len = 9, .heads = 2};
    auto e_cpu = nn::make_expert<ops::cpu_t>(kind, 32, 5, options);
    auto e_gpu = nn::make_expert<ops::cuda_t>(kind, 32, 5, options);
    const shape in = e_cpu->schema().input.batch_shape(17);
    compare_module(*e_cpu, *e_gpu, tensor::normal(in, data), 2e-3, 2e-4, std::string("expert ") + kind);
  }
  nn::gelu<ops::cpu_t> gelu_cpu;
  nn::gelu<ops::cuda_t> gelu_gpu;
  compare_module(gelu_cpu, gelu_gpu, tensor::normal(shape{17, 33}, data, 0, 3), 1e-5, 2e-5, "gelu module");
  nn::relu<ops::cpu_t> relu_cpu;
  nn::relu<ops::cuda_t> relu_gpu;
  compare_module(relu_cpu, relu_gpu, tensor::normal(shape{17, 33}, data), 0, 0, "relu module");
  {  // a sequential MLP with dropout in evaluation mode (the identity on both backends)
    random_engine g1(8), g2(8);
    nn::sequential a, b;
    a.emplace<nn::linear<ops::cpu_t>>(33, 64, g1, ops::activation::gelu);
    a.emplace<nn::dropout<ops::cpu_t>>(0.5f, 1);
    a.emplace<nn::linear<ops::cpu_t>>(64, 10, g1);
    b.emplace<nn::linear<ops::cuda_t>>(33, 64, g2, ops::activation::gelu);
    b.emplace<nn::dropout<ops::cuda_t>>(0.5f, 1);
    b.emplace<nn::linear<ops::cuda_t>>(64, 10, g2);
    a.set_training(false);
    b.set_training(false);
    compare_module(a, b, tensor::normal(shape{17, 33}, data), 2e-3, 2e-4, "sequential mlp");
  }
  {  // dropout in training mode: the same mask drops the same elements forward and backward
    nn::dropout<ops::cuda_t> drop(0.25f, 3);
    const tensor x = tensor::full(shape{64, 64}, 1.0f);
    const tensor y = host(drop.forward(dev(x)));
    const tensor dx = host(drop.backward(dev(x)));
    std::int64_t zeros = 0;
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      BOOST_REQUIRE_EQUAL(y.data<float>()[i], dx.data<float>()[i]);
      zeros += y.data<float>()[i] == 0.0f;
    }
    BOOST_CHECK_GT(zeros, 64 * 64 / 8);
    BOOST_CHECK_LT(zeros, 64 * 64 * 3 / 8);
  }
  {  // losses: the same value and gradient
    const tensor logits = tensor::normal(shape{17, 10}, data), labels = random_ids(shape{17}, 10, data);
    nn::cross_entropy_loss<ops::cpu_t> ce_cpu;
    nn::cross_entropy_loss<ops::cuda_t> ce_gpu;
    BOOST_CHECK_CLOSE(ce_gpu.forward(dev(logits), dev(labels)), ce_cpu.forward(logits, labels), 1e-4);
    expect_close(ce_gpu.backward(), ce_cpu.backward(), 1e-5, 1e-7, "cross_entropy_loss gradient");
    const tensor target = tensor::normal(shape{17, 10}, data);
    nn::mse_loss<ops::cpu_t> mse_cpu;
    nn::mse_loss<ops::cuda_t> mse_gpu;
    BOOST_CHECK_CLOSE(mse_gpu.forward(dev(logits), dev(target)), mse_cpu.forward(logits, target), 1e-4);
    expect_close(mse_gpu.backward(), mse_cpu.backward(), 1e-6, 1e-7, "mse_loss gradient");
  }
  nn::embedding<ops::cpu_t> emb_cpu(50, 12, *std::make_unique<random_engine>(3));
  random_engine g3(3);
  nn::embedding<ops::cuda_t> emb_gpu(50, 12, g3);
  const tensor ids = random_ids(shape{4, 9}, 50, data);
  const tensor ye_cpu = emb_cpu.forward(ids), ye_gpu = emb_gpu.forward(dev(ids));
  expect_close(ye_gpu, ye_cpu, 0, 0, "embedding forward");
  const tensor dye = tensor::normal(ye_cpu.shape(), data);
  emb_cpu.backward(dye);
  emb_gpu.backward(dev(dye));
  expect_close(*emb_gpu.parameters()[0].grad, *emb_cpu.parameters()[0].grad, 1e-6, 1e-6, "embedding gradient");
}

BOOST_AUTO_TEST_CASE(ops_refuse_host_tensors_and_mixed_devices) {
  const tensor a(shape{4, 4}), b = dev(tensor(shape{4, 4}));
  tensor c;
  BOOST_CHECK_THROW(ops::gemm(ops::cuda, a, b, c), invalid_argument_error);
  BOOST_CHECK_THROW(ops::gemm(ops::cpu, a, b, c), invalid_argument_error);
  try {
    ops::add(ops::cuda, b, a, c);
    BOOST_ERROR("add of a host tensor on CUDA did not throw");
  } catch (const invalid_argument_error& e) {
    BOOST_CHECK_MESSAGE(std::string(e.what()).find("add: b is f32 [4, 4] host") != std::string::npos, e.what());
  }
  nn::linear<ops::cuda_t> layer(4, 4, *std::make_unique<random_engine>(1));
  BOOST_CHECK_THROW(layer.forward(a), invalid_argument_error);
  BOOST_CHECK_THROW(dev(tensor(shape{1})).item(), invalid_argument_error);  // element access needs the host
}

namespace {

struct blobs {
  tensor centres;
  std::int64_t features = 8, classes = 4;
  // Each class two blobs at +c and -c (no linear model of the raw input beats chance).
  std::pair<tensor, tensor> make(std::int64_t n, random_engine& gen) const {
    std::pair<tensor, tensor> d{tensor::normal(shape{n, features}, gen), tensor(shape{n}, dtype::i64)};
    std::uniform_int_distribution<std::int64_t> pick(0, 2 * classes - 1);
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t blob = pick(gen), c = blob / 2;
      const float sign = blob % 2 ? 1.0f : -1.0f;
      d.second.at<std::int64_t>(i) = c;
      for (std::int64_t j = 0; j < features; ++j) d.first.at(i, j) += sign * centres.at(c, j);
    }
    return d;
  }
};

double accuracy(const tensor& logits_any, const tensor& labels) {
  const tensor logits = host(logits_any);
  std::int64_t right = 0;
  for (std::int64_t i = 0; i < logits.dim(0); ++i) {
    std::int64_t best = 0;
    for (std::int64_t c = 1; c < logits.dim(1); ++c)
      if (logits.at(i, c) > logits.at(i, best)) best = c;
    right += best == labels.at<std::int64_t>(i);
  }
  return double(right) / double(logits.dim(0));
}

// Trains a model (forward/backward over its device) for `steps` steps of fresh samples; returns test accuracy.
template <class Backend>
double train(const blobs& task, nn::parameter_list params, const std::function<tensor(const tensor&)>& forward,
             const std::function<void(const tensor&)>& backward, int steps, std::uint64_t seed,
             std::uint64_t* mallocs_in_steady_state = nullptr) {
  random_engine gen(seed);
  nn::adam<Backend> optimizer(std::move(params), {.learning_rate = 1e-2f});
  nn::cross_entropy_loss<Backend> loss;
  for (int step = 0; step < steps; ++step) {
    if (step == 3 && mallocs_in_steady_state) *mallocs_in_steady_state = cuda::memory_statistics().device_mallocs;
    const auto [x, labels] = task.make(64, gen);
    optimizer.zero_grad();
    loss.forward(forward(x.to(Backend::device)), labels.to(Backend::device));
    backward(loss.backward());
    optimizer.step();
  }
  if (mallocs_in_steady_state) *mallocs_in_steady_state = cuda::memory_statistics().device_mallocs - *mallocs_in_steady_state;
  random_engine test_gen(seed + 1);
  const auto [tx, ty] = task.make(1024, test_gen);
  return accuracy(forward(tx.to(Backend::device)), ty);
}

template <class Backend>
double train_mlp(const blobs& task, std::uint64_t* mallocs = nullptr) {
  random_engine gen(5);
  nn::sequential net;
  net.emplace<nn::linear<Backend>>(task.features, 64, gen, ops::activation::relu);
  net.emplace<nn::linear<Backend>>(64, task.classes, gen);
  return train<Backend>(
      task, net.parameters(), [&](const tensor& x) { return net.forward(x); },
      [&](const tensor& d) { net.backward(d); }, 300, 11, mallocs);
}

template <class Backend>
double train_moe(const blobs& task) {
  random_engine gen(6);
  moe::local_mixture_of_experts<Backend> layer({.grid = {4, 4}, .k = 2}, "ffn", task.features, 31, gen);
  nn::linear<Backend> head(task.features, task.classes, gen);
  nn::parameter_list params;
  nn::append_parameters(params, "moe", layer.parameters());
  nn::append_parameters(params, "head", head.parameters());
  return train<Backend>(
      task, params, [&](const tensor& x) { return head.forward(layer.forward(x)); },
      [&](const tensor& d) { layer.backward(head.backward(d)); }, 200, 12);
}

}  // namespace

BOOST_AUTO_TEST_CASE(mlp_trains_on_the_gpu_like_on_the_cpu, *boost::unit_test::label("train")) {
  random_engine gen(2024);
  const blobs task{tensor::normal(shape{4, 8}, gen, 0.0f, 2.0f)};
  std::uint64_t mallocs = 0;
  const double cpu = train_mlp<ops::cpu_t>(task);
  const double gpu = train_mlp<ops::cuda_t>(task, &mallocs);
  BOOST_TEST_MESSAGE("MLP accuracy: CPU " << cpu << ", CUDA " << gpu);
  BOOST_CHECK_GT(cpu, 0.9);
  BOOST_CHECK_CLOSE(gpu, cpu, 3.0);  // within 3 % of the CPU's accuracy
  BOOST_CHECK_EQUAL(mallocs, 0u);    // steps after the third: every buffer from the cache
}

BOOST_AUTO_TEST_CASE(local_moe_trains_on_the_gpu_like_on_the_cpu, *boost::unit_test::label("train")) {
  random_engine gen(2025);
  const blobs task{tensor::normal(shape{4, 8}, gen, 0.0f, 2.0f)};
  const double cpu = train_moe<ops::cpu_t>(task);
  const double gpu = train_moe<ops::cuda_t>(task);
  BOOST_TEST_MESSAGE("local MoE accuracy: CPU " << cpu << ", CUDA " << gpu);
  BOOST_CHECK_GT(cpu, 0.8);
  BOOST_CHECK_CLOSE(gpu, cpu, 5.0);
}

BOOST_AUTO_TEST_SUITE_END()
