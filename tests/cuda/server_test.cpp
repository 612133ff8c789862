// The server's experts on a GPU (make_expert_backend with a CUDA device, as `dmoe-server --device cuda:0` makes
// them): the same outputs, input gradients and optimizer steps as the same expert on the CPU; checkpoints written
// from the GPU load on the CPU; the runtime computes a device's experts on its own thread with that device current.
#include <cuda/cuda_test_util.hpp>

#include <dmoe/server/background_server.hpp>
#include <dmoe/server/expert_backend.hpp>
#include <dmoe/server/runtime.hpp>

#include "server/server_test_support.hpp"
#include "temp_dir.hpp"

#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>

using namespace dmoe;
using namespace dmoe::testing;

namespace {

server::expert_options ffn_options(std::int64_t hidden) {
  server::expert_options o;
  o.kind = "ffn";
  o.hidden = hidden;
  o.optimizer.name = "adam";
  o.optimizer.learning_rate = 1e-2f;
  o.optimizer.clip_grad_norm = 1.0f;
  return o;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cuda_server)

BOOST_AUTO_TEST_CASE(expert_on_gpu_matches_the_cpu_through_training_steps_and_checkpoints) {
  const device_choice gpu = parse_device("cuda:0");
  auto cpu_expert = server::make_expert_backend("ffn.3", ffn_options(48), 11);
  auto gpu_expert = server::make_expert_backend("ffn.3", ffn_options(48), 11, gpu);
  BOOST_CHECK(gpu_expert->module().parameters().front().value->device() == device::cuda);
  random_engine gen(5);
  for (int step = 0; step < 3; ++step) {
    const tensor x = tensor::normal(shape{17, 48}, gen);
    const tensor dy = tensor::normal(shape{17, 48}, gen);
    const tensor y_gpu = gpu_expert->forward(x);
    BOOST_CHECK(y_gpu.is_host());  // requests and answers stay on the host
    expect_close(y_gpu, cpu_expert->forward(x), 1e-3, 1e-4, "forward, step " + std::to_string(step));
    expect_close(gpu_expert->backward(x, dy), cpu_expert->backward(x, dy), 1e-3, 1e-4,
                 "backward, step " + std::to_string(step));
  }
  BOOST_CHECK_EQUAL(gpu_expert->updates(), 3u);

  dmoe_test::temp_dir dir;
  gpu_expert->save(dir.path / "gpu.dmoe");  // device parameters and Adam state, copied to the host
  auto restored = server::make_expert_backend("ffn.3", ffn_options(48), 999);  // other initial parameters
  restored->load(dir.path / "gpu.dmoe");
  const tensor x = tensor::normal(shape{5, 48}, gen);
  expect_close(gpu_expert->forward(x), restored->forward(x), 1e-3, 1e-4, "forward after loading on the CPU");
  const tensor dy = tensor::normal(shape{5, 48}, gen);
  expect_close(gpu_expert->backward(x, dy), restored->backward(x, dy), 1e-3, 1e-4,
               "a step after loading on the CPU (Adam's moments came along)");
}

// On the last GPU: where there are two or more, neither the experts nor the runtime's thread are on the default
// device 0, so this fails if make_expert_backend or the runtime do not select the device they are given.
BOOST_AUTO_TEST_CASE(runtime_computes_gpu_experts_on_its_own_thread) {
  const int last = cuda::device_count() - 1;
  if (last == 0) BOOST_TEST_MESSAGE("one GPU: device selection is not distinguished from the default device here");
  const device_choice gpu = parse_device("cuda:" + std::to_string(last));
  std::unique_ptr<server::expert_backend> expert;
  std::thread([&] { expert = server::make_expert_backend("ffn.0", ffn_options(32), 3, gpu); }).join();
  BOOST_CHECK_EQUAL(expert->module().parameters().front().value->device_index(), last);
  auto reference = server::make_expert_backend("ffn.0", ffn_options(32), 3);
  server::runtime_options o;
  o.device = gpu;
  server::runtime rt({expert.get()}, o);
  rt.start();
  random_engine gen(8);
  const tensor x = tensor::normal(shape{9, 32}, gen);
  auto done = rt.submit("ffn.0", server::expert_direction::forward, x);
  server::task_outcome out = *done->done.receive_blocking();
  BOOST_REQUIRE(!out.error);
  expect_close(out.result, reference->forward(x), 1e-3, 1e-4, "forward on the runtime's thread");
  rt.stop();
}

// dmoe-server --device cuda:N: a server's GPU experts train, write checkpoints when stopped, and a new server on
// the GPU loads them (parameters and Adam's state) and answers as the old one did.
BOOST_AUTO_TEST_CASE(a_gpu_server_checkpoints_and_loads_on_the_gpu) {
  dmoe_test::temp_dir dir;
  auto o = dmoe_test::small_options({"ffn.0.0", "ffn.0.1"}, 16);
  o.device = "cuda:" + std::to_string(cuda::device_count() - 1);
  o.checkpoint_dir = dir.path;
  const tensor x = dmoe_test::random_batch(4, 16, 3);
  tensor before;
  {
    server::background_server s(o);
    BOOST_CHECK(s.get().experts()[1]->module().parameters().front().value->device() == device::cuda);
    dmoe_test::expert_client client;
    client.backward(s.rpc_endpoint(), "ffn.0.1", x, dmoe_test::random_batch(4, 16, 4));  // the parameters move
    before = client.forward(s.rpc_endpoint(), "ffn.0.1", x);
  }  // stopping writes the final checkpoint (from the GPU)
  {
    server::background_server s(o);
    BOOST_CHECK_EQUAL(s.get().loaded_checkpoints().at("ffn.0.1").filename(), "checkpoint-000001.dmoe");
    dmoe_test::expert_client client;
    expect_close(client.forward(s.rpc_endpoint(), "ffn.0.1", x), before, 1e-6, 1e-6, "forward after loading");
    BOOST_CHECK_EQUAL(s.get().experts()[1]->optimizer().step_count(), 1);
  }
  auto on_cpu = o;
  on_cpu.device = "cpu";  // and the same checkpoint on the CPU
  server::background_server s(on_cpu);
  dmoe_test::expert_client client;
  expect_close(client.forward(s.rpc_endpoint(), "ffn.0.1", x), before, 1e-3, 1e-4, "forward on the CPU");
}

BOOST_AUTO_TEST_CASE(a_device_that_does_not_exist_is_refused_with_its_name) {
  try {
    server::make_expert_backend("ffn.0", ffn_options(8), 1, parse_device("cuda:1000"));
    BOOST_ERROR("cuda:1000 was accepted");
  } catch (const device_error& e) {
    BOOST_CHECK(std::string(e.what()).find("cuda:1000") != std::string::npos);
  }
  server::runtime_options o;
  o.device = parse_device("cuda:1000");
  BOOST_CHECK_THROW(server::validate(o), device_error);
}

BOOST_AUTO_TEST_SUITE_END()
