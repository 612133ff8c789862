// Tests of dmoe/net/rpc_server.hpp and rpc_client.hpp: calls, errors, limits, bad peers, deadlines, the pool,
// shutdown and fault injection, on loopback.
#include <dmoe/async/when_all.hpp>
#include <dmoe/net/rpc_client.hpp>
#include <dmoe/net/rpc_server.hpp>
#include <dmoe/tensor/wire.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <stdexcept>
#include <stop_token>
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

using dmoe_test::text_of;

// Sends raw bytes to the server as a misbehaving peer would, then returns what the server answered before closing.
task<byte_buffer> raw_exchange(io_context& ctx, endpoint server, byte_buffer bytes, bool close_after_send) {
  tcp_socket socket = co_await tcp_socket::connect(ctx, server);
  co_await socket.write_all(bytes);
  if (close_after_send) socket.shutdown_write();
  byte_buffer answer;
  std::array<std::byte, 4096> chunk;
  for (;;) {
    std::size_t n = 0;
    try {
      n = co_await socket.read_some(chunk, deadline_after(5s));
    } catch (const closed_error&) {
      n = 0;
    }
    if (n == 0) break;
    answer.insert(answer.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n));
  }
  co_return answer;
}

byte_buffer request_frame(std::uint32_t method, std::uint64_t id, const byte_buffer& payload) {
  auto head = encode_frame_header(frame_header{frame_kind::request, frame_status::ok, method, 0, id, payload.size()});
  byte_buffer out(head.size() + payload.size());
  std::memcpy(out.data(), head.data(), head.size());
  if (!payload.empty()) std::memcpy(out.data() + head.size(), payload.data(), payload.size());
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(net_rpc)

BOOST_AUTO_TEST_CASE(echo_round_trip_with_payload_in_pieces) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    const byte_buffer a = pattern(1000, 1), b = pattern(70000, 2);
    const std::array<const_byte_span, 3> pieces{const_byte_span(a), const_byte_span(), const_byte_span(b)};
    byte_buffer back = co_await client.call(server.local_endpoint(), "echo", pieces, deadline_after(5s));
    BOOST_REQUIRE(back.size() == a.size() + b.size());
    BOOST_TEST(std::memcmp(back.data(), a.data(), a.size()) == 0);
    BOOST_TEST(std::memcmp(back.data() + a.size(), b.data(), b.size()) == 0);
    byte_buffer empty = co_await client.call(server.local_endpoint(), "echo", const_byte_span());
    BOOST_TEST(empty.empty());
    BOOST_TEST(client.connections(server.local_endpoint()) == 1u);  // reused
  }));
  BOOST_TEST(server.stats().requests == 2u);
}

BOOST_AUTO_TEST_CASE(a_16_mib_tensor_round_trips_bit_exact) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  // The server decodes the tensor and answers with its storage as a view (nothing copied to send).
  server.add_handler("identity", [](rpc_request& r) -> task<rpc_response> {
    auto decoded = std::make_shared<tensor>(decode_tensor(r.payload));
    const tensor_wire_view view = wire_view(*decoded);
    rpc_response response(byte_buffer(view.header.span().begin(), view.header.span().end()));
    response.views = {view.data};
    response.owner = decoded;
    co_return response;
  });
  rpc_client client(ctx);
  random_engine gen(16);
  const tensor sent = tensor::normal({4096, 1024}, gen);
  BOOST_REQUIRE(sent.nbytes() == std::size_t{16} << 20);
  tensor received;
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    const tensor_wire_view view = wire_view(sent);
    const std::array<const_byte_span, 2> pieces{view.header.span(), view.data};
    byte_buffer back = co_await client.call(server.local_endpoint(), "identity", pieces, deadline_after(30s));
    received = decode_tensor(back);
  }));
  BOOST_TEST((received.shape() == sent.shape()));
  BOOST_TEST(std::memcmp(received.bytes_data(), sent.bytes_data(), sent.nbytes()) == 0);
}

BOOST_AUTO_TEST_CASE(responses_come_back_in_completion_order_on_one_connection) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  server.add_handler("sleep", [](rpc_request& r) -> task<rpc_response> {
    co_await sleep_for(std::chrono::milliseconds(std::stoi(std::string(as_string_view(r.payload)))));
    co_return rpc_response(std::move(r.payload));
  });
  rpc_client_options options;
  options.max_connections_per_endpoint = 1;
  rpc_client client(ctx, options);
  std::vector<std::string> finished;
  auto timed_call = [&](std::string ms) -> task<void> {
    byte_buffer back = co_await client.call(server.local_endpoint(), "sleep", as_bytes(ms), deadline_after(5s));
    finished.push_back(text_of(back));
  };
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    co_await when_all(timed_call("300"), timed_call("1"), timed_call("100"));
  }));
  BOOST_TEST(finished == (std::vector<std::string>{"1", "100", "300"}), boost::test_tools::per_element());
  BOOST_TEST(client.stats().connects == 1u);
}

BOOST_AUTO_TEST_CASE(a_handler_that_throws_reaches_the_caller_as_remote_error) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  server.add_handler("fail", [](rpc_request&) -> task<rpc_response> {
    throw std::runtime_error("expert ffn.3.17 has no batch dimension");
    co_return rpc_response();
  });
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    std::string message;
    try {
      co_await client.call(server.local_endpoint(), "fail", as_bytes("x"), deadline_after(5s));
    } catch (const remote_error& e) {
      message = e.what();
    }
    BOOST_TEST(message.find("rpc 'fail' on 127.0.0.1:") != std::string::npos);
    BOOST_TEST(message.find("failed: expert ffn.3.17 has no batch dimension") != std::string::npos);
    byte_buffer back = co_await client.call(server.local_endpoint(), "echo", as_bytes("still here"), deadline_after(5s));
    BOOST_TEST(text_of(back) == "still here");
  }));
  BOOST_TEST(server.stats().handler_errors == 1u);
}

BOOST_AUTO_TEST_CASE(an_unknown_method_is_a_remote_error_naming_it) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    std::string message;
    try {
      co_await client.call(server.local_endpoint(), "backward", as_bytes("x"), deadline_after(5s));
    } catch (const remote_error& e) {
      message = e.what();
    }
    BOOST_TEST_INFO(message);
    BOOST_TEST(message.find(fmt::format("has no handler for method {:#010x}", method_id("backward"))) !=
               std::string::npos);
    BOOST_TEST(message.find("rpc 'backward'") != std::string::npos);
  }));
  BOOST_TEST(server.stats().unknown_methods == 1u);
}

BOOST_AUTO_TEST_CASE(requests_over_the_limit_are_refused_before_sending) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    const byte_buffer mib(1 << 20);
    std::vector<const_byte_span> pieces(300, const_byte_span(mib));  // 300 MiB without allocating it
    std::string message;
    try {
      co_await client.call(server.local_endpoint(), "echo", pieces, deadline_after(5s));
    } catch (const limit_error& e) {
      message = e.what();
    }
    BOOST_TEST(message == fmt::format("rpc request of 300 MiB exceeds limit 256 MiB to {}", server.local_endpoint()));
  }));
  BOOST_TEST(server.stats().requests == 0u);
}

BOOST_AUTO_TEST_CASE(the_server_refuses_an_oversized_frame_naming_sizes_and_peer_and_keeps_serving) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    frame_header big{frame_kind::request, frame_status::ok, method_id("echo"), 0, 42, std::uint64_t{300} << 20};
    const auto head = encode_frame_header(big);
    tcp_socket peer = co_await tcp_socket::connect(ctx, server.local_endpoint());
    co_await peer.write_all(head);
    byte_buffer answer(frame_header_size);
    co_await peer.read_exactly(answer, deadline_after(5s));
    answer.resize(frame_header_size + parse_frame_header(answer, "server").payload_size);
    co_await peer.read_exactly(byte_span(answer).subspan(frame_header_size), deadline_after(5s));
    BOOST_REQUIRE(answer.size() >= frame_header_size);
    const frame_header reply = decode_frame_header(answer, {}, "server");
    BOOST_TEST(reply.request_id == 42u);
    BOOST_TEST((reply.status == frame_status::limit_exceeded));
    const std::string text(as_string_view(const_byte_span(answer).subspan(frame_header_size)));
    BOOST_TEST_INFO(text);
    BOOST_TEST(text.starts_with("rpc frame of 300 MiB exceeds limit 256 MiB from 127.0.0.1:"));
    byte_buffer back = co_await client.call(server.local_endpoint(), "echo", as_bytes("ok"), deadline_after(5s));
    BOOST_TEST(text_of(back) == "ok");
  }));
  // The refused frame's payload is skipped, not a reason to drop the stream; the peer closed it itself.
  BOOST_TEST(server.stats().connections_dropped == 0u);
  BOOST_TEST(server.stats().requests_refused == 1u);
}

BOOST_AUTO_TEST_CASE(truncated_frames_and_random_bytes_drop_only_their_connection) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    byte_buffer truncated = request_frame(method_id("echo"), 1, pattern(100, 1));
    truncated.resize(60);
    byte_buffer answer = co_await raw_exchange(ctx, server.local_endpoint(), truncated, true);
    BOOST_TEST(answer.empty());
    answer = co_await raw_exchange(ctx, server.local_endpoint(), pattern(5000, 9), false);
    BOOST_TEST(answer.empty());
    byte_buffer back = co_await client.call(server.local_endpoint(), "echo", as_bytes("ok"), deadline_after(5s));
    BOOST_TEST(text_of(back) == "ok");
  }));
  BOOST_TEST(server.stats().connections_dropped == 1u);  // the random bytes; the truncated frame was a clean close
  BOOST_TEST(server.stats().requests == 1u);
}

BOOST_AUTO_TEST_CASE(a_peer_stalling_mid_frame_is_dropped_after_the_read_timeout) {
  io_context ctx;
  rpc_server_options options;
  options.read_timeout = 200ms;
  rpc_server server(ctx, loopback, options);
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    tcp_socket stalled = co_await tcp_socket::connect(ctx, server.local_endpoint());
    byte_buffer half = request_frame(method_id("echo"), 1, pattern(1000, 1));
    half.resize(500);
    co_await stalled.write_all(half);
    // Others are served while the stalled peer holds its connection.
    byte_buffer back = co_await client.call(server.local_endpoint(), "echo", as_bytes("ok"), deadline_after(5s));
    BOOST_TEST(text_of(back) == "ok");
    const auto started = std::chrono::steady_clock::now();
    std::array<std::byte, 64> chunk;
    std::size_t n = 1;
    try {
      n = co_await stalled.read_some(chunk, deadline_after(10s));
    } catch (const closed_error&) {
      n = 0;
    }
    BOOST_TEST(n == 0u);  // the server closed it
    BOOST_TEST(elapsed_ms(started) < 5000.0);
  }));
  BOOST_TEST(server.stats().connections_dropped == 1u);
}

BOOST_AUTO_TEST_CASE(calls_to_a_stalled_server_end_at_their_deadline) {
  io_context ctx;
  auto faults = std::make_shared<fault_policy>();
  faults->set_stall();
  rpc_server server(ctx, loopback, {}, faults);
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    const auto started = std::chrono::steady_clock::now();
    std::string message;
    try {
      co_await client.call(server.local_endpoint(), "echo", as_bytes("x"), deadline_after(200ms));
    } catch (const timeout_error& e) {
      message = e.what();
    }
    const double waited = elapsed_ms(started);
    BOOST_TEST_INFO(message);
    BOOST_TEST(message.find("rpc 'echo' to 127.0.0.1:") != std::string::npos);
    BOOST_TEST(message.find("timed out after") != std::string::npos);
    BOOST_TEST(waited >= 190.0);
    BOOST_TEST(waited < 3000.0);
    // The stall ends; the connection still works and the late answer to the first call is dropped.
    faults->set_stall(false);
    byte_buffer back = co_await client.call(server.local_endpoint(), "echo", as_bytes("ok"), deadline_after(5s));
    BOOST_TEST(text_of(back) == "ok");
  }));
}

BOOST_AUTO_TEST_CASE(a_dead_server_is_a_connection_error_not_a_hang) {
  io_context ctx;
  endpoint dead;
  {
    tcp_listener probe(ctx, loopback);  // a free port, closed again: nothing listens there
    dead = probe.local_endpoint();
  }
  rpc_client client(ctx);
  sync_wait(ctx, [&]() -> task<void> {
    const auto started = std::chrono::steady_clock::now();
    std::string message;
    try {
      co_await client.call(dead, "echo", as_bytes("x"), deadline_after(10s));
    } catch (const unavailable_error& e) {
      message = e.what();
    }
    BOOST_TEST_INFO(message);
    BOOST_TEST(message.find(fmt::format("rpc connect to {} failed", dead)) != std::string::npos);
    BOOST_TEST(elapsed_ms(started) < 5000.0);
    co_await client.close();
  }());
  BOOST_TEST(client.stats().connect_failures == 1u);
}

BOOST_AUTO_TEST_CASE(a_server_going_away_mid_call_fails_the_call_and_a_new_server_is_reached) {
  io_context ctx;
  auto first = std::make_unique<rpc_server>(ctx, loopback);
  const endpoint address = first->local_endpoint();
  first->add_handler("slow", [](rpc_request&) -> task<rpc_response> {
    co_await sleep_for(10s);
    co_return rpc_response();
  });
  rpc_client client(ctx);
  sync_wait(ctx, [&]() -> task<void> {
    task_group serving;
    serving.spawn(first->serve());
    auto stop_soon = [&]() -> task<void> {
      co_await sleep_for(100ms);
      first->shutdown(0ms);
    };
    serving.spawn(stop_soon());
    std::string message;
    const auto started = std::chrono::steady_clock::now();
    try {
      co_await client.call(address, "slow", as_bytes("x"), deadline_after(10s));
    } catch (const closed_error& e) {
      message = e.what();
    }
    BOOST_TEST_INFO(message);
    BOOST_TEST(message.find(fmt::format("-> {} closed by the server", address)) != std::string::npos);
    BOOST_TEST(elapsed_ms(started) < 5000.0);
    co_await serving.join();
    // A new server on the same port: the client reconnects.
    rpc_server second(ctx, address);
    second.add_handler("echo", dmoe_test::echo_handler);
    serving.spawn(second.serve());
    byte_buffer back = co_await client.call(address, "echo", as_bytes("again"), deadline_after(5s));
    BOOST_TEST(text_of(back) == "again");
    co_await client.close();
    second.shutdown(0ms);
    co_await serving.join();
  }());
  BOOST_TEST(client.stats().connects == 2u);
}

BOOST_AUTO_TEST_CASE(graceful_shutdown_finishes_calls_in_flight) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  server.add_handler("slow", [](rpc_request& r) -> task<rpc_response> {
    co_await sleep_for(200ms);
    co_return rpc_response(std::move(r.payload));
  });
  rpc_client client(ctx);
  sync_wait(ctx, [&]() -> task<void> {
    task_group serving;
    serving.spawn(server.serve());
    auto call_slow = [&]() -> task<std::string> {
      byte_buffer back = co_await client.call(server.local_endpoint(), "slow", as_bytes("done"), deadline_after(5s));
      co_return text_of(back);
    };
    auto shut_down = [&]() -> task<void> {
      co_await sleep_for(50ms);
      server.shutdown(5s);
    };
    auto [answer, ignored] = co_await when_all(call_slow(), shut_down());
    BOOST_TEST(answer == "done");
    co_await serving.join();  // serve() returned once the call was answered
    BOOST_TEST(server.open_connections() == 0u);
    bool refused = false;
    try {
      co_await client.call(server.local_endpoint(), "slow", as_bytes("late"), deadline_after(5s));
    } catch (const error& e) {
      refused = e.code() == errc::unavailable || e.code() == errc::closed;
    }
    BOOST_TEST(refused);
    co_await client.close();
  }());
}

BOOST_AUTO_TEST_CASE(shutdown_cuts_handlers_that_outlive_the_grace_period) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  server.add_handler("forever", [](rpc_request&) -> task<rpc_response> {
    co_await sleep_for(1h);
    co_return rpc_response();
  });
  rpc_client client(ctx);
  sync_wait(ctx, [&]() -> task<void> {
    task_group serving;
    serving.spawn(server.serve());
    auto call_forever = [&]() -> task<bool> {
      try {
        co_await client.call(server.local_endpoint(), "forever", as_bytes("x"), deadline_after(10s));
      } catch (const closed_error&) {
        co_return true;
      }
      co_return false;
    };
    auto shut_down = [&]() -> task<void> {
      co_await sleep_for(50ms);
      server.shutdown(100ms);
    };
    const auto started = std::chrono::steady_clock::now();
    auto [closed, ignored] = co_await when_all(call_forever(), shut_down());
    BOOST_TEST(closed);
    co_await serving.join();
    BOOST_TEST(elapsed_ms(started) < 5000.0);
    co_await client.close();
  }());
}

BOOST_AUTO_TEST_CASE(a_call_honours_its_stop_token) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  server.add_handler("forever", [](rpc_request&) -> task<rpc_response> {
    co_await sleep_for(1h);
    co_return rpc_response();
  });
  rpc_client client(ctx);
  std::stop_source source;
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    auto call_forever = [&]() -> task<bool> {
      try {
        co_await client.call(server.local_endpoint(), "forever", as_bytes("x"), deadline_after(10s), source.get_token());
      } catch (const cancelled_error&) {
        co_return true;
      }
      co_return false;
    };
    auto cancel_soon = [&]() -> task<void> {
      co_await sleep_for(50ms);
      source.request_stop();
    };
    auto [cancelled, ignored] = co_await when_all(call_forever(), cancel_soon());
    BOOST_TEST(cancelled);
  }));
}

BOOST_AUTO_TEST_CASE(backpressure_when_a_connection_has_too_many_requests_in_flight) {
  io_context ctx;
  rpc_server_options options;
  options.max_in_flight_per_connection = 4;
  rpc_server server(ctx, loopback, options);
  std::size_t peak = 0, running = 0;
  server.add_handler("echo", [&](rpc_request& r) -> task<rpc_response> {
    peak = std::max(peak, ++running);
    co_await sleep_for(1ms);
    --running;
    co_return rpc_response(std::move(r.payload));
  });
  rpc_client_options client_options;
  client_options.max_connections_per_endpoint = 1;
  rpc_client client(ctx, client_options);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    std::vector<task<byte_buffer>> calls;
    const std::string text = "x";
    for (int i = 0; i < 100; ++i) calls.push_back(client.call(server.local_endpoint(), "echo", as_bytes(text), deadline_after(10s)));
    std::vector<byte_buffer> answers = co_await when_all(std::move(calls));
    BOOST_TEST(answers.size() == 100u);
  }));
  BOOST_TEST(peak <= 4u);
  BOOST_TEST(peak >= 2u);
}

BOOST_AUTO_TEST_CASE(responses_can_send_borrowed_views_without_copying) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  auto shared = std::make_shared<byte_buffer>(pattern(100000, 5));
  server.add_handler("views", [&](rpc_request&) -> task<rpc_response> {
    rpc_response response(to_buffer("head:"));
    response.views = {const_byte_span(*shared).first(10), const_byte_span(*shared)};
    response.owner = shared;
    co_return response;
  });
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    byte_buffer back = co_await client.call(server.local_endpoint(), "views", const_byte_span(), deadline_after(5s));
    BOOST_REQUIRE(back.size() == 5u + 10u + 100000u);
    BOOST_TEST(std::string(as_string_view(const_byte_span(back).first(5))) == "head:");
    BOOST_TEST(std::memcmp(back.data() + 15, shared->data(), shared->size()) == 0);
  }));
}

BOOST_AUTO_TEST_CASE(the_server_bounds_the_bytes_it_buffers) {
  io_context ctx;
  rpc_server_options options;
  options.max_buffered_bytes = 1 << 20;
  rpc_server server(ctx, loopback, options);
  int running = 0, peak = 0;
  server.add_handler("hold", [&](rpc_request& r) -> task<rpc_response> {
    peak = std::max(peak, ++running);
    co_await sleep_for(20ms);
    --running;
    co_return rpc_response(to_buffer(std::to_string(r.payload.size())));
  });
  rpc_client_options client_options;
  client_options.max_connections_per_endpoint = 4;
  rpc_client client(ctx, client_options);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    const byte_buffer payload = pattern(600 << 10, 1);
    std::vector<task<byte_buffer>> calls;
    for (int i = 0; i < 4; ++i) calls.push_back(client.call(server.local_endpoint(), "hold", payload, deadline_after(10s)));
    std::vector<byte_buffer> answers = co_await when_all(std::move(calls));
    for (const auto& a : answers) BOOST_TEST(text_of(a) == std::to_string(600 << 10));
    // A request larger than the whole budget is refused with the reason.
    const byte_buffer too_big = pattern(2 << 20, 2);
    std::string message;
    try {
      co_await client.call(server.local_endpoint(), "hold", too_big, deadline_after(10s));
    } catch (const limit_error& e) {
      message = e.what();
    }
    BOOST_TEST_INFO(message);
    BOOST_TEST(message.find("rpc frame of 2 MiB exceeds the server's buffer limit 1 MiB from 127.0.0.1:") !=
               std::string::npos);
  }));
  BOOST_TEST(peak == 1);  // two 600 KiB requests never fit the 1 MiB budget together
  BOOST_TEST(server.buffered_bytes() == 0u);
}

BOOST_AUTO_TEST_CASE(idle_connections_close_and_reopen_on_demand) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client_options options;
  options.idle_timeout = 100ms;
  rpc_client client(ctx, options);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    co_await client.call(server.local_endpoint(), "echo", as_bytes("a"), deadline_after(5s));
    BOOST_TEST(client.connections(server.local_endpoint()) == 1u);
    co_await sleep_for(500ms);  // well past the idle timeout: the connection is closed
    BOOST_TEST(client.connections(server.local_endpoint()) == 0u);
    byte_buffer back = co_await client.call(server.local_endpoint(), "echo", as_bytes("b"), deadline_after(5s));
    BOOST_TEST(text_of(back) == "b");
  }));
  BOOST_TEST(client.stats().connects == 2u);
  BOOST_TEST(client.stats().connections_lost == 0u);
}

BOOST_AUTO_TEST_CASE(connections_beyond_the_server_limit_are_refused) {
  io_context ctx;
  rpc_server_options options;
  options.max_connections = 1;
  rpc_server server(ctx, loopback, options);
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client first(ctx), second(ctx);
  sync_wait(ctx, with_server(server, first, [&]() -> task<void> {
    co_await first.call(server.local_endpoint(), "echo", as_bytes("a"), deadline_after(5s));
    std::string message;
    try {
      co_await second.call(server.local_endpoint(), "echo", as_bytes("b"), deadline_after(5s));
    } catch (const unavailable_error& e) {  // as call() documents; it was closed_error
      message = e.what();
    }
    BOOST_TEST_INFO(message);
    BOOST_TEST(message.find("refused the connection from 127.0.0.1:") != std::string::npos);
    BOOST_TEST(message.find("1 connections open (limit 1)") != std::string::npos);
    co_await second.close();
  }));
  BOOST_TEST(server.stats().connections_refused == 1u);
}

BOOST_AUTO_TEST_CASE(loss_and_partitions_make_calls_time_out) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  server.add_handler("echo", dmoe_test::echo_handler);
  auto faults = std::make_shared<fault_policy>();
  rpc_client client(ctx, {}, faults);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    co_await client.call(server.local_endpoint(), "echo", as_bytes("a"), deadline_after(5s));
    faults->add_partition({"127.0.0.1"}, {server.local_endpoint().to_string()});
    bool timed_out = false;
    try {
      co_await client.call(server.local_endpoint(), "echo", as_bytes("b"), deadline_after(100ms));
    } catch (const timeout_error&) {
      timed_out = true;
    }
    BOOST_TEST(timed_out);
    faults->heal().set_loss(1.0);
    timed_out = false;
    try {
      co_await client.call(server.local_endpoint(), "echo", as_bytes("c"), deadline_after(100ms));
    } catch (const timeout_error&) {
      timed_out = true;
    }
    BOOST_TEST(timed_out);
    faults->set_loss(0.0);
    byte_buffer back = co_await client.call(server.local_endpoint(), "echo", as_bytes("d"), deadline_after(5s));
    BOOST_TEST(text_of(back) == "d");
  }));
  BOOST_TEST(client.stats().requests_dropped == 2u);
}

BOOST_AUTO_TEST_SUITE_END()
