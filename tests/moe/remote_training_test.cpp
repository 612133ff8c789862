// The DMoE layer over real expert servers found through a real DHT: remote equals local, the deadline holds when
// the DHT is unreachable, and a model Linear -> ReLU -> DMoE -> Linear trains with blocking calls from a plain
// thread, also when a server is killed halfway.
#include <dmoe/dht/node_thread.hpp>
#include <dmoe/moe/async_module.hpp>
#include <dmoe/moe/local_mixture_of_experts.hpp>
#include <dmoe/moe/network_thread.hpp>
#include <dmoe/moe/remote_mixture_of_experts.hpp>
#include <dmoe/nn/activation.hpp>
#include <dmoe/nn/adam.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/loss.hpp>
#include <dmoe/server/background_server.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "dht/dht_test_support.hpp"
#include "remote_test_support.hpp"

using namespace dmoe;
using namespace dmoe::moe;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t training_base_seed = 41;

// A server hosting `pattern` (e.g. "ffn.[1:2].[0:4]") that declares its experts in the swarm of `bootstrap`.
server::server_options server_options(const std::string& pattern, std::int64_t hidden, const endpoint& bootstrap,
                                      float learning_rate) {
  server::server_options o;
  o.experts = expand_expert_pattern(pattern);
  o.expert.kind = "ffn";
  o.expert.hidden = hidden;
  o.expert.optimizer.learning_rate = learning_rate;
  o.seed = training_base_seed;
  o.runtime.max_batch_size = 1024;
  o.dht = dmoe_test::fast_options();
  o.initial_peers = {bootstrap};
  o.shutdown_grace = 0ms;
  return o;
}

network_thread_options trainer_options(const endpoint& bootstrap) {
  network_thread_options o;
  o.dht = dmoe_test::fast_options();
  o.dht.client_mode = true;
  o.initial_peers = {bootstrap};
  return o;
}

remote_mixture_of_experts_options layer_options(std::int64_t hidden, std::int64_t k, std::int64_t k_min) {
  remote_mixture_of_experts_options o;
  o.grid = {4, 4};
  o.schema = ffn_schema(hidden);
  o.k = k;
  o.k_min = k_min;
  o.timeout_after_k_min = 500ms;
  return o;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(moe_remote_training, *boost::unit_test::label("integration"))

BOOST_AUTO_TEST_CASE(remote_equals_local_over_servers_found_through_the_dht) {
  const std::int64_t hidden = 8;
  dht::node_thread bootstrap(dmoe_test::fast_options());
  server::background_server a(server_options("ffn.[0:2].[0:4]", hidden, bootstrap.local_endpoint(), 1e-3f));
  server::background_server b(server_options("ffn.[2:4].[0:4]", hidden, bootstrap.local_endpoint(), 1e-3f));
  BOOST_REQUIRE(a.get().wait_for_declarations(1, 20s));
  BOOST_REQUIRE(b.get().wait_for_declarations(1, 20s));
  network_thread net(trainer_options(bootstrap.local_endpoint()));
  random_engine data(3);
  const tensor x = tensor::normal(shape{32, hidden}, data);
  const tensor dy = tensor::normal(shape{32, hidden}, data);
  random_engine gen(500);
  remote_mixture_of_experts<> layer(net.directory(), net.client(), layer_options(hidden, 4, 4), gen);
  tensor y, dx;
  net.run([&]() -> task<void> {
    y = co_await layer.forward_async(x);
    dx = co_await layer.backward_async(dy);
  });
  random_engine gen_local(500);
  local_mixture_of_experts<> local({.grid = {4, 4}, .k = 4, .k_min = 4, .uid_prefix = "ffn"}, "ffn", hidden,
                                   training_base_seed, gen_local);
  BOOST_TEST(dmoe_test::max_difference(y, local.forward(x, call_conditions{&layer.routing().selection, {}})) <= 1e-5f);
  BOOST_TEST(dmoe_test::max_difference(dx, local.backward(dy)) <= 1e-5f);
  BOOST_TEST(dmoe_test::max_difference(dmoe_test::grad_of(layer.parameters(), "gating.projection.weight"),
                                       dmoe_test::grad_of(local.parameters(), "gating.projection.weight")) <= 1e-5f);
  // The beam search chose each sample's exact top-4 (all 16 experts are live).
  const grid_selection exact = local.gating().select(local.gating().forward(x), 4);
  BOOST_TEST(exact.coordinates == layer.routing().selection.coordinates);
  net.shutdown();
}

BOOST_AUTO_TEST_CASE(a_call_ends_within_its_deadline_when_the_dht_is_unreachable) {
  auto slow = dmoe_test::fast_options();
  slow.rpc_timeout = 5s;  // a lookup that waited for its peers would take this long
  slow.datagram.attempt_timeout = 2s;
  std::optional<dht::node_thread> peer(std::in_place, dmoe_test::fast_options());
  auto o = trainer_options(peer->local_endpoint());
  o.dht = slow;
  network_thread net(o);
  peer.reset();  // the trainer's only peer is gone
  auto options = layer_options(8, 2, 1);
  options.forward_timeout = 400ms;
  random_engine gen(1);
  remote_mixture_of_experts<> layer(net.directory(), net.client(), options, gen);
  const tensor x = tensor::full(shape{4, 8}, 1.0f);
  const auto started = std::chrono::steady_clock::now();
  BOOST_CHECK_THROW(net.run([&]() -> task<tensor> { co_return co_await layer.forward_async(x); }), unavailable_error);
  const auto took = std::chrono::steady_clock::now() - started;
  BOOST_TEST(took < 2s, "took " << std::chrono::duration<double>(took).count() << " s for a 0.4 s deadline");
  // With zero outputs allowed the same call gives zeros within the deadline.
  auto lenient = options;
  lenient.allow_zero_outputs = true;
  remote_mixture_of_experts<> zeros(net.directory(), net.client(), lenient, gen);
  const tensor y = net.run([&]() -> task<tensor> { co_return co_await zeros.forward_async(x); });
  for (float v : y.span<float>()) BOOST_TEST(v == 0.0f);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_CASE(a_model_trains_over_four_servers_and_survives_losing_one, *boost::unit_test::label("train")) {
  // Each class is two blobs at +c and -c, so no linear model of the raw input beats chance: the experts must learn.
  const std::int64_t features = 8, classes = 4, hidden = 16, batch = 64;
  random_engine gen(2024);
  const tensor centres = tensor::normal(shape{classes, features}, gen, 0.0f, 2.0f);
  const auto make = [&](std::int64_t n) {
    std::pair<tensor, tensor> d{tensor::normal(shape{n, features}, gen), tensor(shape{n}, dtype::i64)};
    std::uniform_int_distribution<std::int64_t> pick(0, 2 * classes - 1);
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t blob = pick(gen), c = blob / 2;
      const float sign = blob % 2 ? 1.0f : -1.0f;
      d.second.at<std::int64_t>(i) = c;
      for (std::int64_t j = 0; j < features; ++j) d.first.at(i, j) += sign * centres.at(c, j);
    }
    return d;
  };

  dht::node_thread bootstrap(dmoe_test::fast_options());
  std::vector<std::unique_ptr<server::background_server>> servers;
  for (int row = 0; row < 4; ++row)
    servers.push_back(std::make_unique<server::background_server>(
        server_options(fmt::format("ffn.{}.[0:4]", row), hidden, bootstrap.local_endpoint(), 1e-2f)));
  for (auto& s : servers) BOOST_REQUIRE(s->get().wait_for_declarations(1, 20s));
  network_thread net(trainer_options(bootstrap.local_endpoint()));

  model m;
  m.emplace<nn::linear<>>(features, hidden, gen);
  m.emplace<nn::relu<>>();
  auto& dmoe_layer = m.emplace<remote_mixture_of_experts<>>(net.directory(), net.client(), layer_options(hidden, 4, 1), gen);
  m.emplace<nn::linear<>>(hidden, classes, gen);
  nn::adam<> optimizer(m.parameters(), {.learning_rate = 1e-2f});
  nn::cross_entropy_loss<> loss;

  const auto test_set = make(512);
  const tensor& test_x = test_set.first;
  const tensor& test_y = test_set.second;
  const auto accuracy = [&] {
    const tensor logits = net.run([&] { return m.forward(test_x); });  // a blocking call from this thread
    std::int64_t right = 0;
    for (std::int64_t i = 0; i < logits.dim(0); ++i) {
      std::int64_t best = 0;
      for (std::int64_t c = 1; c < classes; ++c)
        if (logits.at(i, c) > logits.at(i, best)) best = c;
      right += best == test_y.at<std::int64_t>(i);
    }
    return static_cast<double>(right) / static_cast<double>(logits.dim(0));
  };
  float first = 0, last = 0;
  std::uint64_t answered_before_kill = 0;
  for (int step = 0; step < 200; ++step) {
    if (step == 100) {
      answered_before_kill = dmoe_layer.stats().experts_answered;
      servers[2]->stop();  // a quarter of the experts are gone from now on
    }
    const auto data = make(batch);
    const tensor& x = data.first;
    const tensor& labels = data.second;
    optimizer.zero_grad();
    const auto train_step = [&]() -> task<float> {
      const tensor logits = co_await m.forward(x);
      const float l = loss.forward(logits, labels);
      co_await m.backward(loss.backward());
      co_return l;
    };
    last = net.run(train_step);
    if (step == 0) first = last;
    optimizer.step();
  }
  const double acc = accuracy();
  BOOST_TEST_MESSAGE("loss " << first << " -> " << last << ", accuracy " << acc << ", requests failed "
                             << dmoe_layer.stats().requests_failed);
  BOOST_TEST(last < first);
  BOOST_TEST(acc >= 0.9);
  BOOST_TEST(dmoe_layer.stats().experts_answered > answered_before_kill);
  BOOST_TEST(dmoe_layer.stats().requests_failed > 0u);  // the dead server's experts were chosen and failed
  net.shutdown();
}
