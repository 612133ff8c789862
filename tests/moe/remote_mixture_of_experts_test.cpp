// Tests of moe/remote_mixture_of_experts.hpp, moe/switch_mixture_of_experts.hpp, moe/remote_expert.hpp and
// moe/async_module.hpp: fault-tolerant forward and backward against the single-process local_reference (per-expert, with
// live, missing, slow and failing experts), zero outputs without NaN, the deadline with an unreachable DHT, the
// Switch variant's gradients, and training over real servers (one of them killed halfway).
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/dht/node.hpp>
#include <dmoe/moe/async_module.hpp>
#include <dmoe/moe/local_mixture_of_experts.hpp>
#include <dmoe/moe/network_thread.hpp>
#include <dmoe/moe/remote_expert.hpp>
#include <dmoe/moe/remote_mixture_of_experts.hpp>
#include <dmoe/moe/switch_mixture_of_experts.hpp>
#include <dmoe/nn/activation.hpp>
#include <dmoe/nn/adam.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/loss.hpp>
#include <dmoe/server/background_server.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cmath>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "dht/dht_test_support.hpp"
#include "remote_test_support.hpp"

using namespace dmoe;
using namespace dmoe::moe;
using namespace std::chrono_literals;

namespace {

constexpr std::int64_t hidden = 8;
constexpr std::uint64_t expert_base_seed = 41;

remote_mixture_of_experts_options layer_options(std::int64_t k, std::int64_t k_min) {
  remote_mixture_of_experts_options o;
  o.uid_prefix = "ffn";
  o.grid = {4, 4};
  o.schema = ffn_schema(hidden);
  o.k = k;
  o.k_min = k_min;
  o.forward_timeout = 10s;
  o.backward_timeout = 10s;
  o.timeout_after_k_min = 100ms;
  return o;
}

// The local_reference: the same experts and the same gating weights (both layers draw the gating from gen(seed) first).
local_mixture_of_experts<> local_reference(std::int64_t k, std::uint64_t gating_seed) {
  random_engine gen(gating_seed);
  return local_mixture_of_experts<>({.grid = {4, 4}, .k = k, .k_min = 0, .on_shortfall = shortfall_policy::flag,
                                     .uid_prefix = "ffn"},
                                    "ffn", hidden, expert_base_seed, gen);
}

// A fault-injection bench on one io_context: a server with the 16 experts of a 4 x 4 grid (some of them faulty or
// "missing": declared at an address nobody listens on), a client and a directory that lists them.
struct bench {
  io_context ctx;
  dmoe_test::faulty_expert_server server{ctx, "ffn", hidden, expert_base_seed};
  net::rpc_client client{ctx};
  dmoe_test::list_directory directory;
  std::set<std::string> missing;

  explicit bench(std::set<std::string> gone = {}) : missing(std::move(gone)) {
    for (std::uint32_t a = 0; a < 4; ++a)
      for (std::uint32_t b = 0; b < 4; ++b) {
        const std::string uid = fmt::format("ffn.{}.{}", a, b);
        directory.add(uid, missing.contains(uid) ? endpoint("127.0.0.1", 1) : server.address());
      }
  }
  template <class Body>
  void run(Body body) {
    sync_wait(ctx, dmoe_test::with_server(server.rpc(), client, body));
  }
};

// Checks the remote layer's last forward and backward against the local_reference's under the same selection and faults.
void check_against_reference(remote_mixture_of_experts<>& remote, const tensor& x, const tensor& y, const tensor& dy,
                             const tensor& dx, std::uint64_t gating_seed, const std::set<std::string>& not_answering) {
  auto local = local_reference(remote.config().k, gating_seed);
  const remote_routing& routing = remote.routing();
  std::vector<std::int64_t> failed;
  for (const auto& uid : not_answering) failed.push_back(local.index_of(uid));
  const tensor y_local = local.forward(x, call_conditions{&routing.selection, failed});
  BOOST_TEST(dmoe_test::max_difference(y, y_local) <= 1e-5f);
  for (std::int64_t b = 0; b < x.dim(0); ++b)
    for (std::int64_t j = 0; j < remote.config().k; ++j) {
      const std::string& uid = routing.uids[static_cast<std::size_t>(b * remote.config().k + j)];
      BOOST_TEST(routing.answered(b, j) == !not_answering.contains(uid), "sample " << b << " expert " << uid);
      BOOST_TEST(std::abs(routing.weight(b, j) - local.routing().weight(b, j)) <= 1e-6f);
    }
  const tensor dx_local = local.backward(dy);
  BOOST_TEST(dmoe_test::max_difference(dx, dx_local) <= 1e-5f);
  for (const char* name : {"gating.projection.weight", "gating.projection.bias"})
    BOOST_TEST(dmoe_test::max_difference(dmoe_test::grad_of(remote.parameters(), name),
                                         dmoe_test::grad_of(local.parameters(), name)) <= 1e-5f,
               name);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(moe_remote_mixture_of_experts)

BOOST_AUTO_TEST_CASE(with_every_expert_answering_equals_the_local_layer) {
  bench b;
  random_engine gen(100);
  remote_mixture_of_experts<> layer(b.directory, b.client, layer_options(4, 4), gen);
  random_engine data(7);
  const tensor x = tensor::normal(shape{24, hidden}, data);
  const tensor dy = tensor::normal(shape{24, hidden}, data);
  b.run([&]() -> task<void> {
    const tensor y = co_await layer.forward_async(x);
    const tensor dx = co_await layer.backward_async(dy);
    check_against_reference(layer, x, y, dy, dx, 100, {});
    // Each chosen expert got one forward and one backward request for all its rows.
    std::set<std::string> chosen(layer.routing().uids.begin(), layer.routing().uids.end());
    BOOST_TEST(b.server.forward_requests == chosen.size());
    BOOST_TEST(b.server.backward_requests == chosen.size());
    BOOST_TEST(layer.stats().experts_answered == 24u * 4u);
  });
}

BOOST_AUTO_TEST_CASE(live_missing_slow_and_failing_experts_give_the_right_mask_outputs_and_gradients) {
  const std::set<std::string> missing{"ffn.1.1", "ffn.2.3"};
  bench b(missing);
  b.server.set_fault("ffn.0.2", dmoe_test::expert_fault::slow);
  b.server.set_fault("ffn.3.0", dmoe_test::expert_fault::fails);
  std::set<std::string> not_answering = missing;
  not_answering.insert({"ffn.0.2", "ffn.3.0"});
  random_engine gen(200);
  auto options = layer_options(4, 1);
  options.allow_zero_outputs = true;  // a sample may draw only faulty experts
  remote_mixture_of_experts<> layer(b.directory, b.client, options, gen);
  random_engine data(8);
  const tensor x = tensor::normal(shape{48, hidden}, data);
  const tensor dy = tensor::normal(shape{48, hidden}, data);
  b.run([&]() -> task<void> {
    const tensor y = co_await layer.forward_async(x);
    // The faulty experts must have been chosen at all for the test to mean something.
    std::set<std::string> chosen(layer.routing().uids.begin(), layer.routing().uids.end());
    for (const auto& uid : not_answering) BOOST_TEST_REQUIRE(chosen.contains(uid), uid << " was never chosen");
    const tensor dx = co_await layer.backward_async(dy);
    check_against_reference(layer, x, y, dy, dx, 200, not_answering);
    // Backward went to the experts that answered forward only.
    for (const auto& uid : b.server.backward_uids) BOOST_TEST(!not_answering.contains(uid));
    // Later calls avoid the experts that failed by their own fault; the slow one was cut off by the layer (after
    // k_min and timeout_after_k_min), which blames nobody.
    std::set<std::string> failed = missing;
    failed.insert("ffn.3.0");
    for (const auto& uid : failed) BOOST_TEST(layer.dispatcher().avoided(uid));
    BOOST_TEST(!layer.dispatcher().avoided("ffn.0.2"));
    co_await layer.forward_async(x);
    for (const auto& uid : layer.routing().uids) BOOST_TEST(!failed.contains(uid), uid);
  });
}

BOOST_AUTO_TEST_CASE(a_sample_whose_experts_all_fail_gets_zeros_or_a_clear_error) {
  // Only experts of row 0 of the grid live; the others fail at once.
  std::set<std::string> gone;
  for (int a = 1; a < 4; ++a)
    for (int c = 0; c < 4; ++c) gone.insert(fmt::format("ffn.{}.{}", a, c));
  bench b;
  for (const auto& uid : gone) b.server.set_fault(uid, dmoe_test::expert_fault::fails);
  random_engine gen(300);
  auto options = layer_options(2, 1);
  options.allow_zero_outputs = true;
  remote_mixture_of_experts<> zeros(b.directory, b.client, options, gen);
  // Scores that send sample 0 to row 0 and sample 1 to row 3 (both of its experts fail).
  zeros.gating().projection().weight().zero();
  float* bias = zeros.gating().projection().bias().data<float>();
  const tensor x = tensor::full(shape{2, hidden}, 1.0f);
  b.run([&]() -> task<void> {
    // Sample 0: row 0 scores high; both samples see the same scores without a weight, so use two layers' calls.
    bias[0] = 5.0f;
    tensor y = co_await zeros.forward_async(x);
    for (float v : y.span<float>()) BOOST_TEST(std::isfinite(v));
    BOOST_TEST(zeros.routing().responders[0] == 2);
    bias[0] = -5.0f;
    bias[3] = 5.0f;  // row 3 only: both chosen experts fail
    y = co_await zeros.forward_async(x);
    BOOST_TEST(zeros.routing().responders[0] == 0);
    for (float v : y.span<float>()) BOOST_TEST(v == 0.0f);  // zeros, never NaN
    const tensor ones = tensor::full(shape{2, hidden}, 1.0f);
    const tensor dx = co_await zeros.backward_async(ones);
    for (float v : dx.span<float>()) BOOST_TEST(v == 0.0f);

    options.allow_zero_outputs = false;
    random_engine gen2(301);
    remote_mixture_of_experts<> strict(b.directory, b.client, options, gen2);
    strict.gating().projection().weight().zero();
    strict.gating().projection().bias().copy_from(zeros.gating().projection().bias());
    std::string message;
    try {
      co_await strict.forward_async(x);
    } catch (const unavailable_error& e) {
      message = e.what();
    }
    BOOST_TEST(message.find("sample 0 has 0 of its 2 chosen experts answering") != std::string::npos, message);
    BOOST_TEST(message.find("k_min is 1") != std::string::npos, message);
    BOOST_TEST(message.find("injected failure") != std::string::npos, message);
  });
}

BOOST_AUTO_TEST_CASE(checks_its_input_and_its_options) {
  bench b;
  random_engine gen(1);
  auto bad = layer_options(4, 5);
  BOOST_CHECK_THROW(remote_mixture_of_experts<>(b.directory, b.client, bad, gen), invalid_argument_error);
  bad = layer_options(17, 1);
  BOOST_CHECK_THROW(remote_mixture_of_experts<>(b.directory, b.client, bad, gen), invalid_argument_error);
  bad = layer_options(4, 1);
  bad.schema = {};
  BOOST_CHECK_THROW(remote_mixture_of_experts<>(b.directory, b.client, bad, gen), invalid_argument_error);
  bad = layer_options(4, 1);
  bad.grid = {4, 0};  // an empty dimension: refused, not a division by zero
  BOOST_CHECK_THROW(remote_mixture_of_experts<>(b.directory, b.client, bad, gen), invalid_argument_error);
  bad.grid = {};
  BOOST_CHECK_THROW(remote_mixture_of_experts<>(b.directory, b.client, bad, gen), invalid_argument_error);
  switch_mixture_of_experts_options switch_bad;
  static_cast<dispatch_options&>(switch_bad) = layer_options(1, 0);
  switch_bad.k = 1;
  switch_bad.grid = {0};
  BOOST_CHECK_THROW(switch_mixture_of_experts<>(b.directory, b.client, switch_bad, gen), invalid_argument_error);
  bad = layer_options(4, 1);
  bad.uid_prefix = "ffn.";
  BOOST_CHECK_THROW(remote_mixture_of_experts<>(b.directory, b.client, bad, gen), invalid_argument_error);
  remote_mixture_of_experts<> layer(b.directory, b.client, layer_options(2, 1), gen);
  const tensor wide(shape{2, hidden + 1}), good(shape{2, hidden}), three(shape{3, hidden});
  b.run([&]() -> task<void> {
    bool shape_refused = false, backward_refused = false;
    try {
      co_await layer.forward_async(wide);
    } catch (const shape_error&) {
      shape_refused = true;
    }
    try {
      co_await layer.backward_async(good);
    } catch (const invalid_argument_error&) {
      backward_refused = true;
    }
    BOOST_TEST(shape_refused);
    BOOST_TEST(backward_refused);
    co_await layer.forward_async(good);
    bool dy_refused = false;
    try {
      co_await layer.backward_async(three);
    } catch (const shape_error&) {
      dy_refused = true;
    }
    BOOST_TEST(dy_refused);
  });
}

BOOST_AUTO_TEST_CASE(remote_expert_stub_caches_info_and_checks_answers) {
  bench b;
  b.run([&]() -> task<void> {
    remote_expert expert(b.client, "ffn.1.2", b.server.address());
    random_engine data(9);
    const tensor x = tensor::normal(shape{3, hidden}, data);
    const tensor y = co_await expert.forward(x);
    auto reference_expert = nn::make_expert<ops::cpu_t>("ffn", hidden, expert_seed("ffn.1.2", expert_base_seed));
    BOOST_TEST(dmoe_test::max_difference(y, reference_expert->forward(x)) == 0.0f);
    const tensor dx = co_await expert.backward(x, y);
    BOOST_TEST(dx.shape() == x.shape());
    // The fake server has no info method: the error is the server's, and nothing is cached.
    bool failed = false;
    try {
      co_await expert.info();
    } catch (const remote_error&) {
      failed = true;
    }
    BOOST_TEST(failed);
  });
  BOOST_CHECK_THROW(remote_expert(b.client, "ffn.01", b.server.address()), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(switch_layer_gradients_match_finite_differences_and_fall_back_to_the_input) {
  bench b;
  b.server.set_fault("ffn.2.2", dmoe_test::expert_fault::fails);
  random_engine gen(400);
  switch_mixture_of_experts_options o;
  static_cast<dispatch_options&>(o) = layer_options(1, 0);
  o.k = 1;
  o.balancing_loss_weight = 0.5f;
  o.avoid_failed_for = 0ms;  // the same routing on every call below
  switch_mixture_of_experts<> layer(b.directory, b.client, o, gen);
  random_engine data(10);
  const tensor x = tensor::normal(shape{16, hidden}, data);
  const tensor dy = tensor::normal(shape{16, hidden}, data);
  float* bias = layer.gating().projection().bias().data<float>();
  b.run([&]() -> task<void> {
    // loss = sum(y * dy) + balancing loss; its gradient wrt the gating bias against central differences.
    std::vector<double> numeric;
    for (int i = 0; i < 8; ++i) {
      const float saved = bias[i];
      std::vector<double> sides(2);
      for (int side = 0; side < 2; ++side) {
        bias[i] = saved + (side == 0 ? 1e-2f : -1e-2f);
        const tensor y = co_await layer.forward_async(x);
        double l = layer.balancing_loss();
        for (std::int64_t e = 0; e < y.numel(); ++e) l += static_cast<double>(y.data<float>()[e]) * dy.data<float>()[e];
        sides[static_cast<std::size_t>(side)] = l;
      }
      bias[i] = saved;
      numeric.push_back((sides[0] - sides[1]) / 2e-2);
    }
    for (auto& p : layer.parameters()) p.grad->zero();
    co_await layer.forward_async(x);
    const tensor dx = co_await layer.backward_async(dy);
    BOOST_TEST(dx.shape() == x.shape());
    const tensor analytic = dmoe_test::grad_of(layer.parameters(), "gating.projection.bias");
    for (int i = 0; i < 8; ++i)
      BOOST_TEST(std::abs(analytic.data<float>()[i] - numeric[static_cast<std::size_t>(i)]) <=
                     2e-2 * std::max(1.0, std::abs(numeric[static_cast<std::size_t>(i)])),
                 "bias " << i << ": analytic " << analytic.data<float>()[i] << " numeric " << numeric[static_cast<std::size_t>(i)]);
    BOOST_TEST(layer.balancing_loss() > 0.0f);

    // Every sample sent to the failing expert: the output is the input (the residual path), its gradient dy.
    layer.gating().projection().weight().zero();
    for (int i = 0; i < 8; ++i) bias[i] = 0.0f;
    bias[2] = 50.0f;
    bias[4 + 2] = 50.0f;
    const tensor y = co_await layer.forward_async(x);
    for (std::int64_t s = 0; s < 16; ++s) BOOST_TEST(layer.answered()[static_cast<std::size_t>(s)] == 0);
    BOOST_TEST(dmoe_test::max_difference(y, x) == 0.0f);
    const tensor dx_residual = co_await layer.backward_async(dy);
    BOOST_TEST(dmoe_test::max_difference(dx_residual, dy) <= 1e-5f);
  });
}

BOOST_AUTO_TEST_SUITE_END()
