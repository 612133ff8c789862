// A model whose middle layer is a Decentralized Mixture-of-Experts: Linear -> ReLU -> DMoE -> Linear, trained from
// plain (non-coroutine) code with blocking calls. In one process for the example: a DHT bootstrap node, two expert
// servers hosting the 16 ffn experts of a 4 x 4 grid, and the trainer; across machines each part would be its own
// program (dmoe-server, and a trainer joining the same swarm with its initial peers).
#include <dmoe/dht/node_thread.hpp>
#include <dmoe/moe.hpp>
#include <dmoe/nn/activation.hpp>
#include <dmoe/nn/adam.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/loss.hpp>
#include <dmoe/server/background_server.hpp>

#include <chrono>
#include <cstdio>
#include <random>

using namespace dmoe;
using namespace std::chrono_literals;

int main() {
  const std::int64_t features = 16, hidden = 64, classes = 4, batch = 64;

  // The swarm: a bootstrap node and two servers that declare their experts in it.
  dht::node_thread bootstrap;
  const auto server_at = [&](const char* pattern) {
    server::server_options o;
    o.experts = moe::expand_expert_pattern(pattern);
    o.expert.hidden = hidden;
    o.expert.optimizer.learning_rate = 1e-3f;
    o.dht = dht::node_options{};
    o.initial_peers = {bootstrap.local_endpoint()};
    return o;
  };
  server::background_server first(server_at("ffn.[0:2].[0:4]"));
  server::background_server second(server_at("ffn.[2:4].[0:4]"));
  first.get().wait_for_declarations(1, 10s);
  second.get().wait_for_declarations(1, 10s);

  // The trainer's network (DHT node, RPC client, expert directory) on a thread of its own.
  moe::network_thread_options net_options;
  net_options.dht.client_mode = true;
  net_options.initial_peers = {bootstrap.local_endpoint()};
  moe::network_thread net(net_options);

  // The model: the DMoE layer finds each sample's 4 best live experts by a beam search over the DHT.
  random_engine gen(1);
  moe::remote_mixture_of_experts_options dmoe_options;
  dmoe_options.grid = {4, 4};
  dmoe_options.schema = moe::ffn_schema(hidden);
  dmoe_options.k = 4;
  dmoe_options.k_min = 2;
  moe::model model;
  model.emplace<nn::linear<>>(features, hidden, gen);
  model.emplace<nn::relu<>>();
  auto& layer = model.emplace<moe::remote_mixture_of_experts<>>(net.directory(), net.client(), dmoe_options, gen);
  model.emplace<nn::linear<>>(hidden, classes, gen);
  nn::adam<> optimizer(model.parameters(), {.learning_rate = 3e-3f});  // the local layers and the gating
  nn::cross_entropy_loss<> loss;

  // A toy task: the class is the quadrant of the first two features.
  std::normal_distribution<float> normal;
  for (int step = 1; step <= 100; ++step) {
    tensor x(shape{batch, features}), labels(shape{batch}, dtype::i64);
    for (std::int64_t i = 0; i < batch; ++i) {
      for (std::int64_t j = 0; j < features; ++j) x.at(i, j) = normal(gen);
      labels.at<std::int64_t>(i) = (x.at(i, 0) > 0 ? 1 : 0) + (x.at(i, 1) > 0 ? 2 : 0);
    }
    optimizer.zero_grad();
    // Forward and backward are coroutines; run() executes them on the network thread and waits.
    const float l = net.run([&]() -> task<float> {
      const float value = loss.forward(co_await model.forward(x), labels);
      co_await model.backward(loss.backward());
      co_return value;
    });
    optimizer.step();
    if (step % 20 == 0)
      std::printf("step %3d  loss %.4f  experts answering %llu of %llu chosen\n", step, l,
                  static_cast<unsigned long long>(layer.stats().experts_answered),
                  static_cast<unsigned long long>(layer.stats().experts_chosen));
  }
  return 0;
}
