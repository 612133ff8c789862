// The server's experts on a GPU (make_expert_backend with a CUDA device, as `dmoe-server --device cuda:0` makes
// them): the same outputs, input gradients and optimizer steps as the same expert on the CPU; checkpoints written
// from the GPU load on the CPU; the runtime computes a device's experts on its own thread with that device current.
#include <cuda/cuda_test_util.hpp>

#include <dmoe/server/expert_backend.hpp>
#include <dmoe/server/runtime.hpp>

#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <unistd.h>

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

struct temp_dir {
  std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("dmoe_cuda_server_" + std::to_string(::getpid()));
  temp_dir() { std::filesystem::create_directories(path); }
  ~temp_dir() { std::filesystem::remove_all(path); }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(cuda_server)

BOOST_AUTO_TEST_CASE(expert_on_gpu_matches_the_cpu_through_training_steps_and_checkpoints) {
  const device_choice gpu = parse_device("cuda:0");
  device_scope on_gpu(gpu);
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

  temp_dir dir;
  gpu_expert->save(dir.path / "gpu.dmoe");  // device parameters and Adam state, copied to the host
  auto restored = server::make_expert_backend("ffn.3", ffn_options(48), 999);  // other initial parameters
  restored->load(dir.path / "gpu.dmoe");
  const tensor x = tensor::normal(shape{5, 48}, gen);
  expect_close(gpu_expert->forward(x), restored->forward(x), 1e-3, 1e-4, "forward after loading on the CPU");
  const tensor dy = tensor::normal(shape{5, 48}, gen);
  expect_close(gpu_expert->backward(x, dy), restored->backward(x, dy), 1e-3, 1e-4,
               "a step after loading on the CPU (Adam's moments came along)");
}

BOOST_AUTO_TEST_CASE(runtime_computes_gpu_experts_on_its_own_thread) {
  const device_choice gpu = parse_device("cuda:0");
  std::unique_ptr<server::expert_backend> expert;
  {
    device_scope on_gpu(gpu);
    expert = server::make_expert_backend("ffn.0", ffn_options(32), 3, gpu);
  }
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
