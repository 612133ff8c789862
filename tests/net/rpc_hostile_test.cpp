// Tests of dmoe/net/rpc_client.hpp and rpc_server.hpp against hostile peers that send frames of a kind the receiver
// never takes (a client's response, a server's request) or control frames, announcing large payloads: the receiver
// must refuse them on their header, never commit memory for them outside its budget (issue 8, fault 2's kind).
#include <dmoe/async/async_event.hpp>
#include <dmoe/async/tcp_listener.hpp>
#include <dmoe/async/when_all.hpp>
#include <dmoe/net/datagram_endpoint.hpp>
#include <dmoe/net/rpc_client.hpp>
#include <dmoe/net/rpc_server.hpp>

#include <boost/test/unit_test.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "async/test_support.hpp"
#include "rpc_test_support.hpp"

using namespace dmoe;
using namespace dmoe::net;
using namespace std::chrono_literals;
using dmoe_test::elapsed_ms;
using dmoe_test::with_server;

namespace {

using dmoe_test::loopback;

byte_buffer header_bytes(const frame_header& header) {
  const auto head = encode_frame_header(header);
  return byte_buffer(head.begin(), head.end());
}

// Reads from `peer` until the other side ends the stream; false when it did not within `limit`.
task<bool> closed_within(tcp_socket& peer, std::chrono::milliseconds limit) {
  const steady_time deadline = deadline_after(limit);
  std::array<std::byte, 4096> sink;
  try {
    while (co_await peer.read_some(sink, deadline) > 0) {
    }
  } catch (const timeout_error&) {
    co_return false;
  } catch (const error&) {
    // reset: closed too
  }
  co_return true;
}

// A TCP connection to `server` from `source` (a loopback address other than 127.0.0.1: another peer address).
tcp_socket connect_from(io_context& ctx, const char* source, const endpoint& server) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  BOOST_REQUIRE(fd >= 0);
  sockaddr_in local{};
  local.sin_family = AF_INET;
  ::inet_pton(AF_INET, source, &local.sin_addr);
  sockaddr_in remote{};
  remote.sin_family = AF_INET;
  remote.sin_port = htons(server.port());
  ::inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr);
  // A loopback connect completes in the kernel's backlog, without the server's accept.
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&local), sizeof local) != 0 ||
      ::connect(fd, reinterpret_cast<const sockaddr*>(&remote), sizeof remote) != 0) {
    ::close(fd);
    BOOST_FAIL("cannot connect from " << source);
  }
  return tcp_socket(ctx, fd, server);
}

constexpr std::uint64_t announced = std::uint64_t{200} << 20;

}  // namespace

BOOST_AUTO_TEST_SUITE(net_rpc_hostile)

// A client announcing a 200 MiB response or go_away frame to a server (which takes only requests, cancels and short
// go_aways) is dropped on the header: before, the server allocated 200 MiB per connection outside its budget and
// held it for the frame's whole progress deadline (10 s + 200 s at 1 MiB/s).
BOOST_AUTO_TEST_CASE(a_server_refuses_large_frames_of_kinds_it_never_takes_on_their_header) {
  io_context ctx;
  rpc_server_options options;
  options.max_buffered_bytes = 16 << 20;
  rpc_server server(ctx, loopback, options);
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    for (const frame_kind kind : {frame_kind::response, frame_kind::go_away}) {
      BOOST_TEST_CONTEXT("kind " << to_string(kind)) {
        tcp_socket hostile = co_await tcp_socket::connect(ctx, server.local_endpoint());
        co_await hostile.write_all(header_bytes(frame_header{kind, frame_status::ok, 0, 0, 1, announced}));
        const std::array<std::byte, 1> one{};
        co_await hostile.write_all(one);  // the frame has begun: it is not merely idle
        const auto started = std::chrono::steady_clock::now();
        BOOST_TEST(co_await closed_within(hostile, 3s));
        BOOST_TEST(elapsed_ms(started) < 2000.0);
      }
    }
    // Other peers are served meanwhile.
    const byte_buffer answer = co_await client.call(server.local_endpoint(), "echo", as_bytes(std::string("hi")),
                                                    deadline_after(5s));
    BOOST_TEST(std::string(as_string_view(answer)) == "hi");
  }));
  BOOST_TEST(server.stats().connections_dropped == 2u);
  BOOST_TEST(server.buffered_bytes() == 0u);
}

// A server answering with a 200 MiB request or go_away frame: the client drops that connection on the header and
// its call learns why at once, instead of allocating 200 MiB outside its receive budget and timing out.
BOOST_AUTO_TEST_CASE(a_client_refuses_large_frames_of_kinds_it_never_takes_on_their_header) {
  for (const frame_kind kind : {frame_kind::request, frame_kind::go_away}) {
    BOOST_TEST_CONTEXT("kind " << to_string(kind)) {
      io_context ctx;
      tcp_listener listener(ctx, loopback);
      rpc_client_options options;
      options.max_buffered_bytes = 16 << 20;
      rpc_client client(ctx, options);
      sync_wait(ctx, [&]() -> task<void> {
        auto hostile = [&]() -> task<void> {
          tcp_socket peer = co_await listener.accept();
          std::array<std::byte, frame_header_size> request{};
          co_await peer.read_exactly(request, deadline_after(5s));
          const frame_header asked = parse_frame_header(request, "client");
          co_await peer.write_all(
              header_bytes(frame_header{kind, frame_status::ok, asked.method, 0, asked.request_id, announced}));
          const std::array<std::byte, 1> one{};
          co_await peer.write_all(one);
          BOOST_TEST(co_await closed_within(peer, 5s));
        };
        auto caller = [&]() -> task<void> {
          const auto started = std::chrono::steady_clock::now();
          std::string message;
          try {
            co_await client.call(listener.local_endpoint(), "echo", const_byte_span(), deadline_after(4s));
            message = "answered";
          } catch (const closed_error& e) {
            message = e.what();
          } catch (const std::exception& e) {
            message = std::string("other: ") + e.what();
          }
          BOOST_TEST_INFO(message);
          BOOST_TEST(message.find("lost: rpc") != std::string::npos);
          BOOST_TEST(message.find("200 MiB") != std::string::npos);
          BOOST_TEST(elapsed_ms(started) < 2000.0);
          BOOST_TEST(client.buffered_bytes() == 0u);
          BOOST_TEST(client.stats().connections_lost == 1u);
          co_await client.close();
        };
        co_await when_all(hostile(), caller());
      }());
    }
  }
}

// The header check itself: a go_away carries a reason text, not a payload worth an allocation.
BOOST_AUTO_TEST_CASE(a_go_away_header_announcing_more_than_a_reason_text_is_malformed) {
  const auto small = encode_frame_header(frame_header{frame_kind::go_away, frame_status::ok, 0, 0, 3, frame_max_control_payload});
  BOOST_TEST(parse_frame_header(small, "peer").payload_size == frame_max_control_payload);
  const auto large = encode_frame_header(frame_header{frame_kind::go_away, frame_status::ok, 0, 0, 3, frame_max_control_payload + 1});
  BOOST_CHECK_EXCEPTION(parse_frame_header(large, "127.0.0.9:7"), protocol_error, [](const protocol_error& e) {
    const std::string what = e.what();
    return what.find("go_away frame carries") != std::string::npos && what.find("from 127.0.0.9:7") != std::string::npos;
  });
}

// One peer address opening many connections, each within its connection's share of the server's buffer budget,
// cannot take the whole budget: the address has a share over all its connections, and the other peers are served.
// Before, four connections from 127.0.0.2 holding 1 MiB each for a handler that does not finish took the whole
// 4 MiB, and a 512 KiB call from another address waited for memory until its deadline.
BOOST_AUTO_TEST_CASE(one_address_cannot_take_the_servers_whole_buffer_budget_over_many_connections) {
  io_context ctx;
  rpc_server_options options;
  options.limits.max_payload = 1 << 20;
  options.max_buffered_bytes = 4 << 20;  // a connection's share: 1 MiB; an address's: 2 MiB
  rpc_server server(ctx, loopback, options);
  async_event release;
  server.add_handler("hold", [&](rpc_request&) -> task<rpc_response> {
    co_await release.wait();
    co_return rpc_response();
  });
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client client(ctx);
  constexpr std::size_t size = (1 << 20) - 64;
  const byte_buffer payload = dmoe_test::pattern(size, 7);
  std::vector<tcp_socket> hogs;
  std::vector<byte_buffer> frames;
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    task_group writers;
    for (std::uint64_t i = 0; i < 4; ++i) {
      hogs.push_back(connect_from(ctx, "127.0.0.2", server.local_endpoint()));
      byte_buffer bytes = header_bytes(frame_header{frame_kind::request, frame_status::ok, method_id("hold"), 0, i + 1, size});
      bytes.insert(bytes.end(), payload.begin(), payload.end());
      frames.push_back(std::move(bytes));
    }
    auto write = [](tcp_socket& socket, const byte_buffer& bytes) -> task<void> { co_await socket.write_all(bytes); };
    for (std::size_t i = 0; i < 4; ++i) writers.spawn(write(hogs[i], frames[i]));
    const steady_time until = deadline_after(5s);
    while (server.requests_in_flight() < 2 && std::chrono::steady_clock::now() < until) co_await sleep_for(2ms);
    BOOST_TEST(server.requests_in_flight() >= 2u);
    std::string outcome = "ok";
    try {
      const byte_buffer answer = co_await client.call(server.local_endpoint(), "echo",
                                                      const_byte_span(payload).first(512 << 10), deadline_after(3s));
      BOOST_TEST(answer.size() == std::size_t{512 << 10});
    } catch (const std::exception& e) {
      outcome = e.what();
    }
    BOOST_TEST(outcome == "ok");
    // The echo's handler ends; the address's other two requests wait for its memory.
    const steady_time settled = deadline_after(5s);
    while (server.requests_in_flight() > 2 && std::chrono::steady_clock::now() < settled) co_await sleep_for(2ms);
    BOOST_TEST(server.requests_in_flight() == 2u);
    BOOST_TEST(server.buffered_bytes() <= std::uint64_t{2} << 20);
    release.set();
    co_await writers.join();
    const steady_time drained = deadline_after(5s);
    while (server.requests_in_flight() > 0 && std::chrono::steady_clock::now() < drained) co_await sleep_for(2ms);
    BOOST_TEST(server.requests_in_flight() == 0u);
    hogs.clear();
  }));
  BOOST_TEST(server.buffered_bytes() == 0u);
}

// One server announcing large responses it never sends, on every pooled connection, cannot take the client's whole
// receive budget: a server has a share over all its connections, and responses from other servers still come.
// Before, four 1 MiB reservations for the silent server took the whole 4 MiB budget and a 512 KiB response from
// another server waited for memory until its call's deadline.
BOOST_AUTO_TEST_CASE(one_server_cannot_take_the_clients_whole_receive_budget_over_many_connections) {
  io_context ctx;
  tcp_listener silent(ctx, loopback);
  rpc_server server(ctx, loopback);
  server.add_handler("echo", dmoe_test::echo_handler);
  rpc_client_options options;
  options.limits.max_payload = 1 << 20;
  options.max_buffered_bytes = 4 << 20;  // a server's share: 2 MiB
  rpc_client client(ctx, options);
  constexpr std::uint64_t size = 1 << 20;
  bool stop = false;
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    task_group work;
    // Announces a 1 MiB response to each request and sends nothing more until the client closes.
    auto hostile = [&](tcp_socket peer) -> task<void> {
      std::array<std::byte, frame_header_size> request{};
      co_await peer.read_exactly(request, deadline_after(5s));
      const frame_header asked = parse_frame_header(request, "client");
      co_await peer.write_all(
          header_bytes(frame_header{frame_kind::response, frame_status::ok, asked.method, 0, asked.request_id, size}));
      std::array<std::byte, 64> sink;
      try {
        while (!stop && co_await peer.read_some(sink, deadline_after(10s)) > 0) {
        }
      } catch (const error&) {
      }
    };
    auto accept_four = [&]() -> task<void> {
      for (int i = 0; i < 4; ++i) {
        tcp_socket peer = co_await silent.accept();
        work.spawn(hostile(std::move(peer)));
      }
    };
    int hostile_ended = 0;
    auto hostile_call = [&]() -> task<void> {
      try {
        co_await client.call(silent.local_endpoint(), "echo", const_byte_span(), deadline_after(8s));
      } catch (const error&) {
      }
      ++hostile_ended;
    };
    work.spawn(accept_four());
    for (int i = 0; i < 4; ++i) work.spawn(hostile_call());
    const steady_time until = deadline_after(5s);
    while (client.buffered_bytes() < 2 * size && std::chrono::steady_clock::now() < until) co_await sleep_for(2ms);
    BOOST_TEST(client.buffered_bytes() >= 2 * size);
    const byte_buffer payload = dmoe_test::pattern(512 << 10, 3);
    std::string outcome = "ok";
    try {
      const byte_buffer answer = co_await client.call(server.local_endpoint(), "echo", payload, deadline_after(3s));
      BOOST_TEST((answer == payload));
    } catch (const std::exception& e) {
      outcome = e.what();
    }
    BOOST_TEST(outcome == "ok");
    BOOST_TEST(client.buffered_bytes() == 2 * size);  // the silent server's two other responses wait for its share
    stop = true;
    co_await client.close();
    co_await work.join();
    BOOST_TEST(hostile_ended == 4);
    BOOST_TEST(client.buffered_bytes() == 0u);
  }));
}

// A go_away larger than a small receive buffer is still heard: before, the client took it for a late response
// nobody waited for and skipped it, so a request the server announced it never read failed with "closed by the
// server" instead of being sent again on a fresh connection.
BOOST_AUTO_TEST_CASE(a_go_away_larger_than_the_receive_buffer_still_gets_its_requests_retried) {
  io_context ctx;
  tcp_listener listener(ctx, loopback);
  rpc_client_options options;
  options.receive_buffer = frame_header_size;  // every frame with a payload is received in place
  rpc_client client(ctx, options);
  sync_wait(ctx, [&]() -> task<void> {
    auto server = [&]() -> task<void> {
      // The first connection is closed at once, announced: nothing was read (request id 0).
      tcp_socket first = co_await listener.accept();
      std::array<std::byte, frame_header_size> request{};
      co_await first.read_exactly(request, deadline_after(5s));
      const std::string why = "rpc server closed the connection: idle for 1 ms";
      co_await first.write_all(header_bytes(frame_header{frame_kind::go_away, frame_status::ok, 0, 0, 0, why.size()}));
      co_await first.write_all(as_bytes(why));
      ::shutdown(first.native_handle(), SHUT_WR);
      // The second one answers.
      tcp_socket second = co_await listener.accept();
      co_await second.read_exactly(request, deadline_after(5s));
      const frame_header asked = parse_frame_header(request, "client");
      const std::string answer = "answered";
      co_await second.write_all(header_bytes(
          frame_header{frame_kind::response, frame_status::ok, asked.method, 0, asked.request_id, answer.size()}));
      co_await second.write_all(as_bytes(answer));
      BOOST_TEST(co_await closed_within(first, 5s));
      BOOST_TEST(co_await closed_within(second, 5s));
    };
    auto caller = [&]() -> task<void> {
      std::string outcome;
      try {
        const byte_buffer answer = co_await client.call(listener.local_endpoint(), "echo", const_byte_span(),
                                                        deadline_after(5s));
        outcome = std::string(as_string_view(answer));
      } catch (const std::exception& e) {
        outcome = e.what();
      }
      BOOST_TEST(outcome == "answered");
      BOOST_TEST(client.stats().retries == 1u);
      co_await client.close();
    };
    co_await when_all(server(), caller());
  }());
}

// Two owners closing one client at once (say a trainer's shutdown and its model's) while a call is pending: both
// closes return and the call ends with closed_error. Before, the second close() took the first one's place as the
// only waiter for the calls and the background coroutines, so the first never resumed (a hang, and a leaked frame).
BOOST_AUTO_TEST_CASE(a_client_closed_by_two_owners_at_once_lets_both_return) {
  io_context ctx;
  rpc_server server(ctx, loopback);
  async_event release;
  server.add_handler("hold", [&](rpc_request&) -> task<rpc_response> {
    co_await release.wait();
    co_return rpc_response();
  });
  rpc_client client(ctx);
  sync_wait(ctx, with_server(server, client, [&]() -> task<void> {
    std::string outcome;
    auto caller = [&]() -> task<void> {
      try {
        co_await client.call(server.local_endpoint(), "hold", const_byte_span(), deadline_after(10s));
        outcome = "answered";
      } catch (const closed_error& e) {
        outcome = e.what();
      }
    };
    int closes_done = 0;
    auto closer = [&]() -> task<void> {
      co_await client.close();
      ++closes_done;
    };
    task_group work;
    work.spawn(caller());
    const steady_time until = deadline_after(5s);
    while (server.requests_in_flight() == 0 && std::chrono::steady_clock::now() < until) co_await sleep_for(2ms);
    BOOST_REQUIRE(server.requests_in_flight() == 1u);
    work.spawn(closer());
    work.spawn(closer());
    const steady_time closing = deadline_after(5s);
    while ((closes_done < 2 || outcome.empty()) && std::chrono::steady_clock::now() < closing) co_await sleep_for(2ms);
    BOOST_TEST(closes_done == 2);
    BOOST_TEST_INFO(outcome);
    BOOST_TEST((!outcome.empty() && outcome != "answered" && outcome.find("closed") != std::string::npos));
    release.set();
    if (closes_done == 2) co_await work.join();
    // A close after the client closed returns at once.
    co_await client.close();
  }));
}

// Option validation at the maximum: a datagram receive buffer of SIZE_MAX was accepted at construction and failed
// serve() with a bare allocation error; it is refused at construction, naming the option.
BOOST_AUTO_TEST_CASE(a_datagram_receive_buffer_no_datagram_needs_is_refused_at_construction) {
  io_context ctx;
  datagram_endpoint_options options;
  options.receive_buffer = SIZE_MAX;
  BOOST_CHECK_EXCEPTION(datagram_endpoint(ctx, loopback, datagram_sender_id{}, options), invalid_argument_error,
                        [](const invalid_argument_error& e) {
                          return std::string(e.what()).find("receive_buffer") != std::string::npos;
                        });
  options.receive_buffer = std::size_t{1} << 20;
  BOOST_CHECK_NO_THROW(datagram_endpoint(ctx, loopback, datagram_sender_id{}, options));
}

BOOST_AUTO_TEST_SUITE_END()
