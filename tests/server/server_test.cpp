// Tests of server/server.hpp through background_server and a real RPC client: batching invariance, backward and
// the optimizer step, clear errors for bad requests, checkpoints and restarts.
#include <dmoe/nn/adam.hpp>
#include <dmoe/nn/experts.hpp>
#include <dmoe/server/background_server.hpp>

#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <stop_token>
#include <thread>
#include <string>
#include <thread>
#include <vector>

#include "server_test_support.hpp"

using namespace dmoe;
using namespace dmoe::server;
using dmoe_test::expert_client;
using dmoe_test::random_batch;
using dmoe_test::small_options;

namespace {

std::string remote_message(auto&& fn) {
  try {
    fn();
  } catch (const remote_error& e) {
    return e.what();
  }
  return "<no remote error>";
}

std::vector<tensor> parameters_of(background_server& s, std::size_t expert) {
  return s.get().compute().run_exclusive([&] {
    std::vector<tensor> out;
    for (const auto& p : s.get().experts()[expert]->module().parameters()) out.push_back(p.value->clone());
    return out;
  });
}

// Polls until `done()` holds, for state another thread changes; false after 10 s.
template <class F>
task<bool> wait_until(F done) {
  const steady_time limit = deadline_after(std::chrono::seconds(10));
  while (!done()) {
    if (std::chrono::steady_clock::now() > limit) co_return false;
    co_await sleep_for(std::chrono::milliseconds(1));
  }
  co_return true;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(server_rpc)

BOOST_AUTO_TEST_CASE(info_states_the_schema) {
  background_server s(small_options({"ffn.0.0", "ffn.0.1"}, 16));
  expert_client client;
  const auto info = client.info(s.rpc_endpoint(), "ffn.0.1");
  BOOST_TEST(info.uid == "ffn.0.1");
  BOOST_TEST(info.kind == "ffn");
  BOOST_TEST(info.schema.input.sample_shape == shape{16});
  BOOST_TEST(info.schema.output.sample_shape == shape{16});
  BOOST_TEST(info.max_batch_size == 64);
  BOOST_TEST(info.parameter_count == s.get().experts()[1]->parameter_count());
  BOOST_TEST(remote_message([&] { client.info(s.rpc_endpoint(), "ffn.9.9"); }).find("no expert 'ffn.9.9'") !=
             std::string::npos);
}

BOOST_AUTO_TEST_CASE(forward_is_invariant_to_batching) {
  background_server s(small_options({"ffn.0.0"}, 32));
  expert_client client;
  const tensor x = random_batch(9, 32, 1);
  const tensor all = client.forward(s.rpc_endpoint(), "ffn.0.0", x);
  const tensor tail = client.forward(s.rpc_endpoint(), "ffn.0.0", x.rows(1, 9).clone());
  BOOST_TEST(dmoe_test::max_abs_diff(all.rows(1, 9).clone(), tail) <= 1e-5f);
  // And equal to the expert computed locally from the same seed.
  auto local = nn::make_expert("ffn", 32, expert_seed("ffn.0.0", 7));
  BOOST_TEST(dmoe_test::max_abs_diff(local->forward(x), all) <= 1e-5f);
  // Compressed answers decode close to the exact ones.
  const tensor half = client.forward(s.rpc_endpoint(), "ffn.0.0", x, wire_codec::none, wire_codec::bf16);
  BOOST_TEST(dmoe_test::max_abs_diff(half, all) <= 0.05f);
}

BOOST_AUTO_TEST_CASE(backward_matches_the_local_expert_and_one_optimizer_step) {
  auto o = small_options({"ffn.0.0"}, 16);
  background_server s(o);
  expert_client client;
  const tensor x = random_batch(5, 16, 11);
  const tensor dy = random_batch(5, 16, 12);
  // The same expert and optimizer, locally.
  auto local = nn::make_expert("ffn", 16, expert_seed("ffn.0.0", o.seed));
  ops::adam_hyper h;
  h.learning_rate = o.expert.optimizer.learning_rate;
  nn::adam<> opt(local->parameters(), h);
  local->zero_grad();
  local->forward(x);
  const tensor dx_local = local->backward(dy);
  opt.step();

  const tensor dx = client.backward(s.rpc_endpoint(), "ffn.0.0", x, dy);
  BOOST_TEST(dmoe_test::max_abs_diff(dx, dx_local) <= 1e-6f);
  const auto served = parameters_of(s, 0);
  const auto mine = local->parameters();
  BOOST_REQUIRE_EQUAL(served.size(), mine.size());
  for (std::size_t i = 0; i < served.size(); ++i)
    BOOST_TEST(dmoe_test::max_abs_diff(served[i], *mine[i].value) <= 1e-6f, mine[i].name);
  BOOST_TEST(s.get().compute().total_stats().updates == 1u);
}

BOOST_AUTO_TEST_CASE(bad_requests_get_clear_errors_and_the_next_good_one_succeeds) {
  background_server s(small_options({"ffn.0.0"}, 16));
  expert_client client;
  const endpoint at = s.rpc_endpoint();
  const tensor good = random_batch(3, 16, 1);
  auto expect = [&](auto&& call, std::string_view words) {
    const std::string message = remote_message(call);
    BOOST_TEST(message.find(words) != std::string::npos, message << " should say " << words);
    BOOST_TEST(client.forward(at, "ffn.0.0", good).shape() == good.shape());  // still serving
  };
  expect([&] { client.forward(at, "ffn.0.0", random_batch(3, 15, 1)); }, "schema says [batch] + [16]");
  expect([&] { client.forward(at, "ffn.9.9", good); }, "no expert 'ffn.9.9'");
  tensor nan = good.clone();
  nan.data<float>()[17] = std::nanf("");
  // The client's encoder refuses NaN itself, so the bytes are sent raw.
  {
    byte_buffer bytes;
    binary_writer w(bytes);
    w.write<std::uint8_t>(moe::expert_protocol_version);
    w.write_string("ffn.0.0");
    w.write<std::uint8_t>(0);
    const auto view = wire_view(good);
    bytes.insert(bytes.end(), view.header.span().begin(), view.header.span().end());
    const std::size_t data_at = bytes.size();
    bytes.insert(bytes.end(), view.data.begin(), view.data.end());
    const float bad = std::nanf("");
    std::memcpy(bytes.data() + data_at + 17 * 4, &bad, 4);
    expect([&] { client.raw(at, moe::forward_method, bytes); }, "element 17 is not finite");
    bytes.resize(bytes.size() - 3);
    expect([&] { client.raw(at, moe::forward_method, bytes); }, "expert forward request");
  }
  expect([&] { client.forward(at, "ffn.0.0", tensor(shape{0, 16})); }, "no samples");
  expect([&] { client.forward(at, "ffn.0.0", random_batch(65, 16, 1)); }, "exceeds max_batch_size 64");
  expect([&] { client.backward(at, "ffn.0.0", good, random_batch(2, 16, 1)); }, "3 inputs but 2 output gradients");
  expect([&] { client.raw(at, moe::forward_method, byte_buffer{std::byte{9}}); }, "version 9");
  expect([&] { client.raw(at, moe::info_method, moe::encode_info_request("ffn.00")); }, "leading zeros");
  BOOST_TEST(s.get().compute().total_stats().failed_batches == 0u);  // every refusal came before batching
}

BOOST_AUTO_TEST_CASE(many_clients_at_once_are_batched_within_max_batch_size) {
  auto o = small_options({"ffn.0.0", "ffn.0.1"}, 16);
  o.runtime.max_batch_size = 12;
  // A batch starts once 12 samples wait (or its oldest request waited 500 ms): with the default min_batch_size of 1
  // a compute thread faster than the requests' arrival ran each request alone, and the test failed on a busy machine.
  o.runtime.min_batch_size = 12;
  o.runtime.batching_window = std::chrono::milliseconds(500);
  background_server s(o);
  io_context ctx;
  net::rpc_client client(ctx);
  const endpoint at = s.rpc_endpoint();
  auto local0 = nn::make_expert("ffn", 16, expert_seed("ffn.0.0", o.seed));
  auto local1 = nn::make_expert("ffn", 16, expert_seed("ffn.0.1", o.seed));
  std::vector<tensor> inputs, answers(24);
  for (int i = 0; i < 24; ++i) inputs.push_back(random_batch(1 + i % 5, 16, 50 + i));
  auto one = [&](int i) -> task<void> {
    const std::string uid = i % 2 ? "ffn.0.1" : "ffn.0.0";
    auto request = moe::encode_expert_request(uid, inputs[i], nullptr);
    answers[i] = moe::decode_expert_response(co_await client.call(at, moe::forward_method, request.pieces));
  };
  ctx.run([&]() -> task<void> {
    task_group group;
    for (int i = 0; i < 24; ++i) group.spawn(one(i));
    co_await group.join();
    co_await client.close();
  }());
  for (int i = 0; i < 24; ++i) {
    const tensor expected = (i % 2 ? local1 : local0)->forward(inputs[i]);
    BOOST_TEST(dmoe_test::max_abs_diff(answers[i], expected) <= 1e-5f);
  }
  const auto stats = s.get().compute().total_stats();
  BOOST_TEST(stats.largest_batch <= 12u);
  BOOST_TEST(stats.forward_requests == 24u);
  BOOST_TEST(stats.forward_batches < 24u);  // requests were batched together
}

BOOST_AUTO_TEST_CASE(a_restarted_server_serves_bit_identical_outputs_from_its_checkpoint) {
  dmoe_test::temp_dir dir;
  auto o = small_options({"ffn.0.0", "ffn.0.1"}, 16);
  o.checkpoint_dir = dir.path;
  o.keep_checkpoints = 2;
  const tensor x = random_batch(4, 16, 3);
  tensor before;
  {
    background_server s(o);
    BOOST_TEST(s.get().loaded_checkpoints().empty());
    expert_client client;
    client.backward(s.rpc_endpoint(), "ffn.0.1", x, random_batch(4, 16, 4));  // the parameters move
    before = client.forward(s.rpc_endpoint(), "ffn.0.1", x);
  }  // stopping writes the final checkpoint
  BOOST_TEST(std::filesystem::exists(dir.path / "ffn.0.1" / "checkpoint-000001.dmoe"));
  {
    background_server s(o);
    BOOST_TEST(s.get().loaded_checkpoints().at("ffn.0.1").filename() == "checkpoint-000001.dmoe");
    expert_client client;
    BOOST_TEST(dmoe_test::bit_equal(client.forward(s.rpc_endpoint(), "ffn.0.1", x), before));
    // The optimizer state came back too: the step count goes on.
    BOOST_TEST(s.get().experts()[1]->optimizer().step_count() == 1);
  }
  // A corrupt newest checkpoint is skipped for the one before; only `keep` checkpoints are kept.
  {
    std::ofstream(dir.path / "ffn.0.1" / "checkpoint-000099.dmoe") << "not a checkpoint";
    background_server s(o);
    BOOST_TEST(s.get().loaded_checkpoints().at("ffn.0.1").filename() == "checkpoint-000002.dmoe");
    expert_client client;
    BOOST_TEST(dmoe_test::bit_equal(client.forward(s.rpc_endpoint(), "ffn.0.1", x), before));
  }
  std::size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path / "ffn.0.1")) files += entry.is_regular_file();
  BOOST_TEST(files == 2u);
}

BOOST_AUTO_TEST_CASE(stopping_finishes_the_requests_in_flight) {
  auto o = small_options({"ffn.0.0"}, 16);
  o.runtime.min_batch_size = 64;  // the requests wait for the (long) batching window...
  o.runtime.batching_window = std::chrono::microseconds(9'000'000);
  std::optional<background_server> s(std::in_place, o);
  const endpoint at = s->rpc_endpoint();
  const int calls = 6;
  std::vector<tensor> answers(calls);
  std::vector<std::string> failures;
  std::thread client_thread([&] {
    io_context ctx;
    net::rpc_client client(ctx);
    auto one = [&](int index) -> task<void> {  // named: the coroutines refer to its captures
      try {
        auto request = moe::encode_expert_request("ffn.0.0", random_batch(2, 16, index), nullptr);
        answers[index] = moe::decode_expert_response(co_await client.call(at, moe::forward_method, request.pieces));
      } catch (const error& e) {
        failures.push_back(e.what());
      }
    };
    ctx.run([&]() -> task<void> {
      task_group group;
      for (int i = 0; i < calls; ++i) group.spawn(one(i));
      co_await group.join();
      co_await client.close();
    }());
  });
  // ...until the server stops: every queued request is computed and answered, none is dropped.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (s->get().compute().total_stats().forward_requests < calls && std::chrono::steady_clock::now() < give_up)
    std::this_thread::yield();
  BOOST_CHECK_EQUAL(s->get().compute().total_stats().forward_requests, static_cast<std::uint64_t>(calls));
  s.reset();
  client_thread.join();
  BOOST_TEST(failures.empty(), (failures.empty() ? "" : failures.front()));
  for (const auto& a : answers) BOOST_TEST(a.shape() == (shape{2, 16}));
}

BOOST_AUTO_TEST_CASE(requests_whose_callers_give_up_leave_the_queue_at_once) {
  // Callers cancel while the compute thread is busy: their requests' tensors go with their handlers, not when
  // their batch would have come, so cancelled requests cannot pile up past the RPC server's memory limits.
  background_server s(small_options({"ffn.0.0"}, 16));
  runtime& rt = s.get().compute();
  dmoe_test::compute_gate gate;
  gate.hold(rt);
  io_context ctx;
  net::rpc_client client(ctx);
  const endpoint at = s.rpc_endpoint();
  constexpr int calls = 8;
  const tensor x = random_batch(4, 16, 1);
  auto request = moe::encode_expert_request("ffn.0.0", x, nullptr);
  std::stop_source give_up;
  int cancelled = 0;
  bool all_queued = false, all_withdrawn = false;
  auto one = [&]() -> task<void> {
    try {
      co_await client.call(at, moe::forward_method, request.pieces, no_deadline, give_up.get_token());
    } catch (const cancelled_error&) {
      ++cancelled;
    }
  };
  ctx.run([&]() -> task<void> {
    task_group group;
    for (int i = 0; i < calls; ++i) group.spawn(one());
    all_queued = co_await wait_until([&] { return rt.queued_samples() == 4 * calls; });
    give_up.request_stop();
    co_await group.join();
    all_withdrawn = co_await wait_until([&] { return rt.queued_samples() == 0; });
    co_await client.close();
  }());
  BOOST_TEST(all_queued);
  BOOST_TEST(cancelled == calls);
  BOOST_TEST(all_withdrawn);  // the compute thread is still held
  gate.release();
  expert_client good;
  BOOST_TEST(good.forward(at, "ffn.0.0", x).shape() == x.shape());
  const auto stats = rt.total_stats();
  BOOST_TEST(stats.forward_requests == calls + 1u);
  BOOST_TEST(stats.forward_samples == 4u);
  BOOST_TEST(stats.failed_batches == 0u);
}

BOOST_AUTO_TEST_CASE(key_files_that_cannot_be_used_are_refused_naming_why) {
  dmoe_test::temp_dir dir;
  // A new key is written, and read back the same.
  const auto made = load_or_create_key(dir.path / "server.key");
  BOOST_TEST((load_or_create_key(dir.path / "server.key").public_key() == made.public_key()));
  // A directory where the key should be: the read fails, and the error says so.
  std::filesystem::create_directories(dir.path / "a-directory");
  try {
    load_or_create_key(dir.path / "a-directory");
    BOOST_FAIL("a directory was taken for a key file");
  } catch (const system_error& e) {
    BOOST_TEST(std::string(e.what()).find("cannot read key file") != std::string::npos, e.what());
  }
  // An empty file is not replaced by a new identity.
  std::ofstream(dir.path / "empty.key").flush();
  BOOST_CHECK_THROW(load_or_create_key(dir.path / "empty.key"), corrupt_error);
  BOOST_TEST(std::filesystem::file_size(dir.path / "empty.key") == 0u);
  // No such directory.
  BOOST_CHECK_THROW(load_or_create_key(dir.path / "missing" / "server.key"), system_error);
}

BOOST_AUTO_TEST_CASE(the_largest_max_batch_size_still_serves) {
  // max_batch_size as large as it may be: the decoder's element limit derived from it must not overflow.
  auto o = small_options({"ffn.0.0"}, 16);
  o.runtime.max_batch_size = std::numeric_limits<std::int64_t>::max();
  background_server s(o);
  expert_client client;
  const tensor x = random_batch(3, 16, 1);
  BOOST_TEST(client.forward(s.rpc_endpoint(), "ffn.0.0", x).shape() == x.shape());
  BOOST_TEST(client.info(s.rpc_endpoint(), "ffn.0.0").max_batch_size == std::numeric_limits<std::int64_t>::max());
}

BOOST_AUTO_TEST_CASE(stopping_finishes_the_requests_already_queued) {
  // The server is told to stop while requests wait behind a busy compute thread: it refuses new ones, computes
  // those it has, answers them, then stops.
  auto o = small_options({"ffn.0.0"}, 16);
  std::optional<background_server> s(std::in_place, o);
  runtime& rt = s->get().compute();
  const endpoint at = s->rpc_endpoint();
  auto gate = std::make_unique<dmoe_test::compute_gate>();
  gate->hold(rt);
  io_context ctx;
  net::rpc_client client(ctx);
  constexpr int calls = 6;
  std::vector<tensor> inputs, answers(calls);
  for (int i = 0; i < calls; ++i) inputs.push_back(random_batch(2, 16, 20 + i));
  auto one = [&](int i) -> task<void> {
    auto request = moe::encode_expert_request("ffn.0.0", inputs[i], nullptr);
    answers[i] = moe::decode_expert_response(co_await client.call(at, moe::forward_method, request.pieces));
  };
  bool queued = false, refusing = false;
  std::thread stopper;
  ctx.run([&]() -> task<void> {
    task_group group;
    for (int i = 0; i < calls; ++i) group.spawn(one(i));
    queued = co_await wait_until([&] { return rt.queued_samples() == 2 * calls; });
    stopper = std::thread([&] { s->stop(); });
    // Draining: a new request on the same connection is refused.
    const byte_buffer info = moe::encode_info_request("ffn.0.0");
    const steady_time limit = deadline_after(std::chrono::seconds(10));
    while (!refusing && std::chrono::steady_clock::now() < limit) {
      try {
        co_await client.call(at, moe::info_method, info);
      } catch (const unavailable_error&) {
        refusing = true;
      }
      if (!refusing) co_await sleep_for(std::chrono::milliseconds(1));
    }
    gate->release();
    co_await group.join();
    co_await client.close();
  }());
  stopper.join();
  BOOST_TEST(queued);
  BOOST_TEST(refusing);
  auto local = nn::make_expert("ffn", 16, expert_seed("ffn.0.0", o.seed));
  for (int i = 0; i < calls; ++i) BOOST_TEST(dmoe_test::max_abs_diff(answers[i], local->forward(inputs[i])) <= 1e-5f);
}

BOOST_AUTO_TEST_CASE(a_stop_request_on_run_shuts_the_server_down) {
  // run() awaited by a coroutine that is stopped (a timeout, a when_any): the server shuts down as when asked,
  // its task groups joined, instead of ending the process.
  io_context ctx;
  dmoe::server::server s(ctx, small_options({"ffn.0.0"}, 16));
  std::stop_source stop;
  bool started = false;
  ctx.run(with_stop_token(s.run([&] {
                            started = true;
                            stop.request_stop();
                          }),
                          stop.get_token()));
  BOOST_TEST(started);
  BOOST_CHECK_THROW(s.compute().submit("ffn.0.0", expert_direction::forward, random_batch(1, 16, 1)), closed_error);
}

BOOST_AUTO_TEST_CASE(two_threads_may_stop_a_server_at_once) {
  for (int round = 0; round < 3; ++round) {
    background_server s(small_options({"ffn.0.0"}));
    std::thread other([&] { s.stop(); });
    s.stop();
    other.join();
    s.stop();  // and again, once stopped
  }
}

BOOST_AUTO_TEST_CASE(options_that_cannot_work_are_refused_at_start) {
  auto o = small_options({"ffn.0.0"});
  o.device = "cuda:0";  // (this test program does not link dmoe::cuda)
  try {
    background_server s{o};
    BOOST_ERROR("a server on cuda:0 started without a CUDA backend");
  } catch (const device_error& e) {
    BOOST_TEST(std::string(e.what()).find("cuda:0") != std::string::npos);
  }
  BOOST_CHECK_THROW(make_expert_backend("ffn.0", o.expert, 1, parse_device("cuda:0")), device_error);
  o.runtime.device = parse_device("cuda");
  BOOST_CHECK_THROW(validate(o.runtime), device_error);
  o = small_options({"ffn.0.0"});
  o.device = "tpu";
  BOOST_CHECK_THROW(background_server{o}, invalid_argument_error);
  o = small_options({"ffn.00"});
  BOOST_CHECK_THROW(background_server{o}, invalid_argument_error);
  o = small_options({});
  BOOST_CHECK_THROW(background_server{o}, invalid_argument_error);
  o = small_options({"ffn.0"});
  o.runtime.min_batch_size = 100;
  BOOST_CHECK_THROW(background_server{o}, invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
