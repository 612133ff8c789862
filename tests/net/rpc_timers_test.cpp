// Tests of the RPC layer's shared timers and batched writes: the client's deadline timer re-arming for an earlier
// deadline, the connection watchdogs (client read timeout, server idle and write timeouts), and many responses
// written together on one connection.
#include <dmoe/async/tcp_listener.hpp>
#include <dmoe/async/when_all.hpp>
#include <dmoe/net/rpc_client.hpp>
#include <dmoe/net/rpc_server.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "rpc_test_support.hpp"

using namespace dmoe;
using namespace dmoe::net;
using namespace std::chrono_literals;
using dmoe_test::elapsed_ms;
using dmoe_test::pattern;
using dmoe_test::with_server;

namespace {

using dmoe_test::loopback;

// A handler that answers only when its connection or the server stops it.
task<rpc_response> never_answer(rpc_request&) {
  async_event never;
  co_await never.wait();
  co_return rpc_response();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(net_rpc_timers)

BOOST_AUTO_TEST_CASE(an_earlier_deadline_ends_its_call_while_a_later_one_is_pending) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  server.add_handler("never", never_answer);
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    // The first call arms the client's deadline timer for 20 s; the second, due much sooner, must re-arm it.
    bool later_cancelled = false;
    auto later_call = [&]() -> task<void> {
      try {
        co_await client.call(server.local_endpoint(), "never", as_bytes("a"), deadline_after(20s));
      } catch (const cancelled_error&) {
        later_cancelled = true;
      }
    };
    task_group later;
    later.spawn(later_call());
    for (int i = 0; i < 2; ++i) {
      const auto started = std::chrono::steady_clock::now();
      std::string message;
      try {
        co_await client.call(server.local_endpoint(), "never", as_bytes("b"), deadline_after(150ms));
      } catch (const timeout_error& e) {
        message = e.what();
      }
      const double waited = elapsed_ms(started);
      BOOST_TEST_INFO(message);
      BOOST_TEST(message.find("rpc 'never' to 127.0.0.1:") != std::string::npos);
      BOOST_TEST(message.find("timed out after") != std::string::npos);
      BOOST_TEST(waited >= 140.0);
      BOOST_TEST(waited < 5000.0);
    }
    later.request_stop();
    co_await later.join();
    BOOST_TEST(later_cancelled);  // stopped by its caller, not timed out
  }));
}

BOOST_AUTO_TEST_CASE(a_server_stalling_mid_response_loses_the_connection_after_the_read_timeout) {
  io_context ctx;
  tcp_listener listener(ctx, loopback);
  rpc_client_options options;
  options.read_timeout = 200ms;
  rpc_client client(ctx, options);
  sync_wait(ctx, [&]() -> task<void> {
    // A server that answers with the first 10 bytes of a 1000-byte response, then nothing.
    auto half_answer = [&]() -> task<void> {
      tcp_socket peer = co_await listener.accept();
      std::array<std::byte, frame_header_size> request{};
      co_await peer.read_exactly(request, deadline_after(5s));
      const frame_header asked = parse_frame_header(request, "client");
      const auto head =
          encode_frame_header(frame_header{frame_kind::response, frame_status::ok, asked.method, 0, asked.request_id, 1000});
      const byte_buffer body(10, std::byte{7});
      const std::array<const_byte_span, 2> pieces{const_byte_span(head), const_byte_span(body)};
      co_await peer.write_all(pieces);
      std::array<std::byte, 64> rest;
      try {
        while (co_await peer.read_some(rest, deadline_after(5s)) > 0) {
        }
      } catch (const error&) {
      }
    };
    auto stalled_call = [&]() -> task<void> {
      const auto started = std::chrono::steady_clock::now();
      std::string message;
      try {
        co_await client.call(listener.local_endpoint(), "echo", const_byte_span(), deadline_after(10s));
      } catch (const closed_error& e) {
        message = e.what();
      }
      BOOST_TEST_INFO(message);
      BOOST_TEST(message.find("closed by this client: a response frame was not complete within 200 ms") !=
                 std::string::npos);
      BOOST_TEST(elapsed_ms(started) < 5000.0);
      co_await client.close();
    };
    co_await when_all(half_answer(), stalled_call());
  }());
  BOOST_TEST(client.stats().connections_lost == 1u);
}

BOOST_AUTO_TEST_CASE(the_server_closes_an_idle_connection_after_the_idle_timeout) {
  io_context ctx;
  rpc_server_options options;
  options.idle_timeout = 100ms;
  rpc_server server(ctx, loopback, options);
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    const auto started = std::chrono::steady_clock::now();
    tcp_socket silent = co_await tcp_socket::connect(ctx, server.local_endpoint());
    // The server announces the close (go_away: nothing read), then ends its stream.
    std::array<std::byte, frame_header_size> head{};
    co_await silent.read_exactly(head, deadline_after(5s));
    const frame_header go_away = parse_frame_header(head, "server");
    BOOST_TEST((go_away.kind == frame_kind::go_away));
    BOOST_TEST(go_away.request_id == 0u);
    byte_buffer why(go_away.payload_size);
    co_await silent.read_exactly(why, deadline_after(5s));
    BOOST_TEST(std::string(as_string_view(why)).find("idle for 100 ms") != std::string::npos);
    std::array<std::byte, 64> chunk;
    std::size_t n = 1;
    try {
      n = co_await silent.read_some(chunk, deadline_after(5s));
    } catch (const closed_error&) {
      n = 0;
    }
    BOOST_TEST(n == 0u);  // closed by the server
    BOOST_TEST(elapsed_ms(started) < 3000.0);
  }));
  BOOST_TEST(server.stats().connections_dropped == 0u);  // idle is a clean close
}

BOOST_AUTO_TEST_CASE(a_response_its_caller_does_not_read_is_cut_off_after_the_write_timeout) {
  io_context ctx;
  rpc_server_options options;
  options.write_timeout = 200ms;
  options.min_transfer_rate = std::uint64_t{1} << 30;  // the size adds 32 ms to the write deadline
  rpc_server server(ctx, loopback, options);
  constexpr std::size_t response_size = std::size_t{32} << 20;  // far more than the socket buffers hold
  server.add_handler("big", [](rpc_request&) -> task<rpc_response> { co_return rpc_response(byte_buffer(response_size)); });
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    tcp_socket reader = co_await tcp_socket::connect(ctx, server.local_endpoint());
    const auto head = encode_frame_header(frame_header{frame_kind::request, frame_status::ok, method_id("big"), 0, 1, 0});
    co_await reader.write_all(head);
    co_await sleep_for(600ms);  // reads nothing for three write timeouts
    std::uint64_t received = 0;
    std::vector<std::byte> chunk(1 << 20);
    for (;;) {
      std::size_t n = 0;
      try {
        n = co_await reader.read_some(chunk, deadline_after(5s));
      } catch (const closed_error&) {
        n = 0;
      }
      if (n == 0) break;
      received += n;
    }
    BOOST_TEST(received > 0u);
    BOOST_TEST(received < frame_header_size + response_size);  // the server gave up and closed mid-response
  }));
}

BOOST_AUTO_TEST_CASE(many_concurrent_calls_on_one_connection_each_get_their_own_response) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client_options options;
  options.max_connections_per_endpoint = 1;
  rpc_client client(ctx, options);
  constexpr int calls = 400;  // 800 response pieces: more than one batched write holds
  int matched = 0;
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    auto one_call = [&](int index) -> task<void> {
      const std::size_t size = static_cast<std::size_t>(index % 7 == 0 ? 100000 + index : index * 13 % 900);
      const byte_buffer sent = pattern(size, static_cast<unsigned>(index));
      const byte_buffer back = co_await client.call(server.local_endpoint(), "echo", sent, deadline_after(30s));
      if (back == sent) ++matched;
    };
    task_group group;
    for (int i = 0; i < calls; ++i) group.spawn(one_call(i));
    co_await group.join();
  }));
  BOOST_TEST(matched == calls);
  BOOST_TEST(client.stats().connects == 1u);
}

BOOST_AUTO_TEST_SUITE_END()
