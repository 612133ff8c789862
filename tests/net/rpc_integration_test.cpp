// Integration tests of the RPC layer on loopback: many concurrent calls, a 300 MiB tensor, added latency.
#include <dmoe/async/when_all.hpp>
#include <dmoe/net/rpc_client.hpp>
#include <dmoe/net/rpc_server.hpp>
#include <dmoe/tensor/wire.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "rpc_test_support.hpp"

using namespace dmoe;
using namespace dmoe::net;
using namespace std::chrono_literals;
using dmoe_test::server_thread;

BOOST_AUTO_TEST_SUITE(net_rpc_integration, *boost::unit_test::label("integration"))

BOOST_AUTO_TEST_CASE(ten_thousand_concurrent_calls_over_eight_connections) {
  server_thread remote({}, [](rpc_server& server) { server.add_handler("echo", dmoe_test::echo_handler); });
  io_context ctx;
  rpc_client_options options;
  options.max_connections_per_endpoint = 8;
  rpc_client client(ctx, options);
  constexpr int calls = 10000;
  std::vector<std::uint64_t> payloads(calls);
  std::iota(payloads.begin(), payloads.end(), std::uint64_t{1} << 40);
  int correct = 0;
  std::size_t connections = 0;
  sync_wait(ctx, [&]() -> task<void> {
    std::vector<task<byte_buffer>> pending;
    pending.reserve(calls);
    for (const auto& value : payloads)
      pending.push_back(client.call(remote.address(), "echo",
                                    const_byte_span(reinterpret_cast<const std::byte*>(&value), sizeof value),
                                    deadline_after(60s)));
    std::vector<byte_buffer> answers = co_await when_all(std::move(pending));
    for (int i = 0; i < calls; ++i) {
      std::uint64_t back = 0;
      if (answers[i].size() == sizeof back) std::memcpy(&back, answers[i].data(), sizeof back);
      correct += back == payloads[i];
    }
    connections = client.connections(remote.address());
    co_await client.close();
  }());
  remote.stop();
  BOOST_TEST(correct == calls);
  BOOST_TEST(connections == 8u);
  BOOST_TEST(client.stats().connects == 8u);
  BOOST_TEST(remote.stats().requests == static_cast<std::uint64_t>(calls));
  BOOST_TEST(remote.stats().connections_accepted == 8u);
}

BOOST_AUTO_TEST_CASE(a_300_mib_tensor_is_refused_by_the_default_limit_and_round_trips_with_a_raised_one) {
  random_engine gen(300);
  tensor big = tensor::uninitialized({300, 256, 1024});  // 300 MiB of f32
  BOOST_REQUIRE(big.nbytes() == std::size_t{300} << 20);
  std::uniform_real_distribution<float> values(-1.0f, 1.0f);
  float* data = big.data<float>();
  for (std::int64_t i = 0; i < big.numel(); i += 997) data[i] = values(gen);  // sparse writes keep setup fast
  std::memset(data, 0x3c, 1 << 20);

  rpc_server_options raised;
  raised.limits.max_payload = std::uint64_t{512} << 20;
  server_thread remote(raised, [](rpc_server& server) { server.add_handler("echo", dmoe_test::echo_handler); });
  io_context ctx;
  rpc_client default_client(ctx);
  rpc_client_options client_raised;
  client_raised.limits.max_payload = std::uint64_t{512} << 20;
  rpc_client raised_client(ctx, client_raised);
  std::string refusal;
  bool identical = false;
  sync_wait(ctx, [&]() -> task<void> {
    const tensor_wire_view view = wire_view(big);  // header + the tensor's own storage: nothing copied to send
    const std::array<const_byte_span, 2> pieces{view.header.span(), view.data};
    try {
      co_await default_client.call(remote.address(), "echo", pieces, deadline_after(60s));
    } catch (const limit_error& e) {
      refusal = e.what();
    }
    byte_buffer back = co_await raised_client.call(remote.address(), "echo", pieces, deadline_after(120s));
    wire_limits limits;
    limits.max_elements = std::int64_t{1} << 30;
    const tensor decoded = decode_tensor(back, limits);
    identical = decoded.shape() == big.shape() && decoded.dtype() == big.dtype() &&
                std::memcmp(decoded.bytes_data(), big.bytes_data(), big.nbytes()) == 0;
    co_await default_client.close();
    co_await raised_client.close();
  }());
  remote.stop();
  BOOST_TEST(refusal == fmt::format("rpc request of 300 MiB exceeds limit 256 MiB to {}", remote.address()));
  BOOST_TEST(identical);
}

// Wall-clock timing on a shared machine: the delayed calls run side by side with control calls that sleep the
// same drawn delays themselves, so both see the same scheduling noise; the injection must add what the control's
// sleep adds (within 5% of the configured mean), never less than drawn, and the draws must have the configured mean.
BOOST_AUTO_TEST_CASE(injected_latency_adds_the_configured_delay_on_average) {
  io_context ctx;
  rpc_server server(ctx, endpoint::loopback_v4(0));
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client plain(ctx);
  const latency_model model = latency_model::exponential(16ms, 4ms);
  auto faults = std::make_shared<fault_policy>(2024);
  faults->set_latency(model);
  fault_policy control_draws(2024);  // the same seed: the same 1,000 delays
  control_draws.set_latency(model);
  rpc_client delayed(ctx, {}, faults);
  constexpr int calls = 1000, workers = 20, plain_calls = 200;
  double plain_ms = 0, delayed_ms = 0, control_ms = 0;
  auto worker = [&](rpc_client& client, int count, fault_policy* sleep_draws, double& total_ms) -> task<void> {
    for (int i = 0; i < count; ++i) {
      const auto started = std::chrono::steady_clock::now();
      if (sleep_draws) co_await sleep_for(sleep_draws->sample_delay());
      co_await client.call(server.local_endpoint(), "echo", as_bytes("ping"), deadline_after(10s));
      total_ms += dmoe_test::elapsed_ms(started);
    }
  };
  sync_wait(ctx, dmoe_test::with_server(server, plain, [&]() -> task<void> {
    co_await worker(plain, plain_calls, nullptr, plain_ms);  // the bare round trip, one call at a time
    std::vector<task<void>> running;
    for (int w = 0; w < workers; ++w) {
      running.push_back(worker(delayed, calls / workers, nullptr, delayed_ms));
      running.push_back(worker(plain, calls / workers, &control_draws, control_ms));
    }
    co_await when_all(std::move(running));
    co_await delayed.close();
  }));
  const double round_trip_ms = plain_ms / plain_calls;
  const double added_ms = delayed_ms / calls - round_trip_ms;
  const double control_added_ms = control_ms / calls - round_trip_ms;
  const double configured_ms = std::chrono::duration<double, std::milli>(model.mean()).count();
  const auto drawn = faults->stats();
  const double drawn_ms = std::chrono::duration<double, std::milli>(drawn.total_delay).count() / drawn.sent;
  BOOST_TEST_MESSAGE("added " << added_ms << " ms per call (control sleeping the same delays: " << control_added_ms
                              << " ms); configured mean " << configured_ms << " ms, drawn mean " << drawn_ms
                              << " ms; bare round trip " << round_trip_ms << " ms");
  BOOST_TEST(drawn.sent == static_cast<std::uint64_t>(calls));
  BOOST_TEST(drawn_ms == configured_ms, boost::test_tools::tolerance(0.05));
  BOOST_TEST(added_ms >= drawn_ms);
  BOOST_TEST(std::abs(added_ms - control_added_ms) <= 0.05 * configured_ms);
}

BOOST_AUTO_TEST_SUITE_END()
