// Tests of dmoe/net/datagram_endpoint.hpp: request/response over UDP, multi-part messages, retries, errors,
// spoofed and duplicate answers, and loss.
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/udp_socket.hpp>
#include <dmoe/async/when_all.hpp>
#include <dmoe/net/datagram_endpoint.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <exception>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "rpc_test_support.hpp"

using namespace dmoe;
using namespace dmoe::net;
using namespace std::chrono_literals;
using dmoe_test::pattern;

namespace {

constexpr std::uint16_t echo_type = 1, big_type = 2, fail_type = 3;

datagram_sender_id node_id(std::uint8_t seed) {
  datagram_sender_id id{};
  for (std::size_t i = 0; i < id.size(); ++i) id[i] = static_cast<std::byte>(seed + i);
  return id;
}

void add_test_handlers(datagram_endpoint& node) {
  node.add_handler(echo_type, [](datagram_request& r) -> task<byte_buffer> { co_return std::move(r.message); });
  // Answers with as many pattern bytes as the request asks for (a multi-part response).
  node.add_handler(big_type, [](datagram_request& r) -> task<byte_buffer> {
    co_return pattern(std::stoul(std::string(as_string_view(r.message))), 7);
  });
  node.add_handler(fail_type, [](datagram_request&) -> task<byte_buffer> {
    throw std::runtime_error("value too old");
    co_return byte_buffer();
  });
}

// Serves every endpoint while `body` runs, then closes them all (also when `body` throws).
template <class Body>
task<void> with_endpoints(std::initializer_list<datagram_endpoint*> nodes, Body body) {
  task_group serving;
  for (auto* node : nodes) serving.spawn(node->serve());
  std::exception_ptr failure;
  try {
    co_await body();
  } catch (...) {
    failure = std::current_exception();
  }
  for (auto* node : nodes) node->close();
  co_await serving.join();
  if (failure) std::rethrow_exception(failure);
}

using dmoe_test::loopback;

}  // namespace

BOOST_AUTO_TEST_SUITE(net_datagram_endpoint)

BOOST_AUTO_TEST_CASE(request_and_response) {
  io_context ctx;
  datagram_endpoint a(ctx, loopback, node_id(1)), b(ctx, loopback, node_id(2));
  add_test_handlers(b);
  sync_wait(ctx, with_endpoints({&a, &b}, [&]() -> task<void> {
    datagram_response r = co_await a.request(b.local_endpoint(), echo_type, as_bytes("ping"), deadline_after(5s));
    BOOST_TEST(as_string_view(r.message) == "ping");
    BOOST_TEST((r.sender == node_id(2)));
    BOOST_TEST((r.peer == b.local_endpoint()));
    BOOST_TEST(r.attempts == 1);
  }));
  BOOST_TEST(b.stats().requests_received == 1u);
}

BOOST_AUTO_TEST_CASE(large_requests_and_responses_travel_in_parts) {
  io_context ctx;
  datagram_endpoint a(ctx, loopback, node_id(1)), b(ctx, loopback, node_id(2));
  add_test_handlers(b);
  sync_wait(ctx, with_endpoints({&a, &b}, [&]() -> task<void> {
    datagram_response r = co_await a.request(b.local_endpoint(), big_type, as_bytes("20000"), deadline_after(5s));
    BOOST_TEST((r.message == pattern(20000, 7)));
    const byte_buffer big_request = pattern(9000, 3);
    datagram_response echoed = co_await a.request(b.local_endpoint(), echo_type, big_request, deadline_after(5s));
    BOOST_TEST((echoed.message == big_request));
  }));
  BOOST_TEST(a.reassembler().partial_messages() == 0u);
  BOOST_TEST(b.reassembler().partial_messages() == 0u);
}

BOOST_AUTO_TEST_CASE(handler_errors_and_unknown_types_come_back_as_remote_errors) {
  io_context ctx;
  datagram_endpoint a(ctx, loopback, node_id(1)), b(ctx, loopback, node_id(2));
  add_test_handlers(b);
  sync_wait(ctx, with_endpoints({&a, &b}, [&]() -> task<void> {
    std::string failed, unknown;
    try {
      co_await a.request(b.local_endpoint(), fail_type, as_bytes("x"), deadline_after(5s));
    } catch (const remote_error& e) {
      failed = e.what();
    }
    try {
      co_await a.request(b.local_endpoint(), 99, as_bytes("x"), deadline_after(5s));
    } catch (const remote_error& e) {
      unknown = e.what();
    }
    BOOST_TEST_INFO(failed);
    BOOST_TEST(failed.find("refused: value too old") != std::string::npos);
    BOOST_TEST_INFO(unknown);
    BOOST_TEST(unknown.find("has no handler for datagram type 99") != std::string::npos);
  }));
}

BOOST_AUTO_TEST_CASE(a_silent_peer_gets_every_retry_then_the_request_times_out) {
  io_context ctx;
  auto stalled = std::make_shared<fault_policy>();
  stalled->set_stall();
  datagram_endpoint_options options;
  options.attempt_timeout = 50ms;
  options.max_attempts = 4;
  datagram_endpoint a(ctx, loopback, node_id(1), options), b(ctx, loopback, node_id(2), {}, stalled);
  add_test_handlers(b);
  sync_wait(ctx, with_endpoints({&a, &b}, [&]() -> task<void> {
    const auto started = std::chrono::steady_clock::now();
    std::string message;
    try {
      co_await a.request(b.local_endpoint(), echo_type, as_bytes("x"), deadline_after(5s));
    } catch (const timeout_error& e) {
      message = e.what();
    }
    BOOST_TEST_INFO(message);
    BOOST_TEST(message.find("no answer after 4 attempts") != std::string::npos);
    BOOST_TEST(dmoe_test::elapsed_ms(started) < 2000.0);
    // The overall deadline cuts the retries short.
    message.clear();
    try {
      co_await a.request(b.local_endpoint(), echo_type, as_bytes("x"), deadline_after(75ms));
    } catch (const timeout_error& e) {
      message = e.what();
    }
    BOOST_TEST_INFO(message);
    BOOST_TEST(message.find("no answer after 2 attempts") != std::string::npos);
  }));
  BOOST_TEST(a.stats().requests_sent == 6u);
  BOOST_TEST(b.stats().requests_received == 6u);
}

BOOST_AUTO_TEST_CASE(spoofed_duplicate_and_late_answers_are_ignored) {
  io_context ctx;
  datagram_endpoint a(ctx, loopback, node_id(1));
  udp_socket server(ctx, loopback), forger(ctx, loopback);
  sync_wait(ctx, with_endpoints({&a}, [&]() -> task<void> {
    // A raw "server": answers the first request after a forger has answered with the same transaction id.
    auto fake_server = [&]() -> task<void> {
      byte_buffer buffer(2048);
      dmoe::datagram got = co_await server.receive_from(buffer);
      const datagram_message request = decode_datagram(const_byte_span(buffer).first(got.size), {}, "test");
      datagram_header answer = request.header;
      answer.kind = datagram_kind::response;
      answer.sender = node_id(9);
      byte_buffer bytes;
      datagram_parts(answer, as_bytes("forged"), {}).encode(0, bytes);
      co_await forger.send_to(bytes, got.peer);
      answer.sender = node_id(2);
      datagram_parts(answer, as_bytes("real"), {}).encode(0, bytes);
      co_await sleep_for(20ms);
      co_await server.send_to(bytes, got.peer);
      co_await server.send_to(bytes, got.peer);  // a duplicate
    };
    auto ask = [&]() -> task<std::string> {
      datagram_response r = co_await a.request(server.local_endpoint(), echo_type, as_bytes("x"), deadline_after(5s));
      co_return std::string(as_string_view(r.message));
    };
    auto [answer, ignored] = co_await when_all(ask(), fake_server());
    BOOST_TEST(answer == "real");
    co_await sleep_for(20ms);  // let the duplicate arrive
  }));
  BOOST_TEST(a.stats().unexpected == 2u);  // the forged answer and the duplicate
}

BOOST_AUTO_TEST_CASE(malformed_datagrams_are_counted_and_ignored) {
  io_context ctx;
  datagram_endpoint b(ctx, loopback, node_id(2));
  add_test_handlers(b);
  datagram_endpoint a(ctx, loopback, node_id(1));
  udp_socket junk(ctx, loopback);
  sync_wait(ctx, with_endpoints({&a, &b}, [&]() -> task<void> {
    const byte_buffer noise = pattern(300, 1);
    co_await junk.send_to(noise, b.local_endpoint());
    co_await junk.send_to(const_byte_span(noise).first(10), b.local_endpoint());
    datagram_response r = co_await a.request(b.local_endpoint(), echo_type, as_bytes("fine"), deadline_after(5s));
    BOOST_TEST(as_string_view(r.message) == "fine");
  }));
  BOOST_TEST(b.stats().malformed == 2u);
}

BOOST_AUTO_TEST_CASE(multi_part_answers_arrive_despite_20_percent_loss, *boost::unit_test::label("integration")) {
  io_context ctx;
  auto lossy_a = std::make_shared<fault_policy>(11), lossy_b = std::make_shared<fault_policy>(12);
  lossy_a->set_loss(0.2);
  lossy_b->set_loss(0.2);
  datagram_endpoint_options options;
  // An attempt succeeds when its request and all four answer parts get through: 0.8^5 = 0.33. With 40 attempts a
  // request fails with probability 0.67^40 = 1e-7, so 200 requests all succeed unless retries are broken (with 15,
  // one of the 200 failed in about 1 run in 3).
  options.attempt_timeout = 100ms;
  options.max_attempts = 40;
  datagram_endpoint a(ctx, loopback, node_id(1), options, lossy_a), b(ctx, loopback, node_id(2), options, lossy_b);
  add_test_handlers(b);
  constexpr int requests = 200;
  int correct = 0, retried = 0;
  sync_wait(ctx, with_endpoints({&a, &b}, [&]() -> task<void> {
    auto ask = [&](int i) -> task<void> {
      const std::string size = std::to_string(4000 + i);  // four parts each
      datagram_response r = co_await a.request(b.local_endpoint(), big_type, as_bytes(size), deadline_after(20s));
      correct += r.message == pattern(4000 + static_cast<std::size_t>(i), 7);
      retried += r.attempts > 1;
    };
    std::vector<task<void>> all;
    for (int i = 0; i < requests; ++i) all.push_back(ask(i));
    co_await when_all(std::move(all));
  }));
  BOOST_TEST(correct == requests);
  BOOST_TEST(retried > 0);  // the loss was real
  BOOST_TEST(lossy_a->stats().dropped + lossy_b->stats().dropped > 0u);
}

// Issue 8, fault 1's kind: once serve() returns, requests still waiting have ended (closed_error) and the endpoint
// may be destroyed.
BOOST_AUTO_TEST_CASE(an_endpoint_is_safe_to_destroy_once_serve_returns_whatever_requests_wait) {
  io_context ctx;
  auto node = std::make_unique<datagram_endpoint>(ctx, endpoint::loopback_v4(0), node_id(1));
  udp_socket silent(ctx, endpoint::loopback_v4(0));  // never answers
  int closed = 0;
  sync_wait(ctx, [&]() -> task<void> {
    task_group serving;
    serving.spawn(node->serve());
    task_group requests;
    auto ask = [&]() -> task<void> {
      try {
        co_await node->request(silent.local_endpoint(), echo_type, as_bytes("hello"), deadline_after(10s));
      } catch (const closed_error&) {
        ++closed;
      }
    };
    for (int i = 0; i < 5; ++i) requests.spawn(ask());
    co_await sleep_for(20ms);
    const auto started = std::chrono::steady_clock::now();
    node->close();
    co_await serving.join();
    node.reset();
    co_await requests.join();
    const double waited_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
    BOOST_TEST(waited_ms < 1000.0);
  }());
  BOOST_TEST(closed == 5);
}

// Issue 8, fault 12: a datagram size no UDP socket can send is refused at construction.
BOOST_AUTO_TEST_CASE(an_endpoint_refuses_a_datagram_size_over_the_udp_maximum) {
  io_context ctx;
  datagram_endpoint_options options;
  options.limits.max_datagram = 65'508;
  options.receive_buffer = 70'000;
  BOOST_CHECK_THROW(datagram_endpoint(ctx, endpoint::loopback_v4(0), node_id(1), options), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
