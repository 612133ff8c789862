// Tests for dmoe/async/tcp_socket.hpp: echo with partial transfers, many connections, reset and
// half-close errors, deadlines and cancellation releasing sockets and buffers.
#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/tcp_listener.hpp>
#include <dmoe/async/tcp_socket.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/when_all.hpp>
#include <dmoe/async/with_timeout.hpp>

#include <boost/test/unit_test.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "test_support.hpp"

using dmoe::byte_buffer;
using dmoe::byte_span;
using dmoe::const_byte_span;
using dmoe::endpoint;
using dmoe::io_context;
using dmoe::task;
using dmoe::tcp_listener;
using dmoe::tcp_socket;
using dmoe_test::counted;
using dmoe_test::counted_buffer;
using namespace std::chrono_literals;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

byte_buffer pattern(std::size_t size, std::uint64_t seed) {
  byte_buffer bytes(size);
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& b : bytes) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<std::byte>(x);
  }
  return bytes;
}

task<tcp_socket> connect_to(endpoint peer) { co_return co_await tcp_socket::connect(*io_context::current(), peer); }
task<tcp_socket> accept_one(tcp_listener& listener) { co_return co_await listener.accept(); }

// A connected pair over loopback: (server side, client side).
task<std::pair<tcp_socket, tcp_socket>> connected_pair(tcp_listener& listener) {
  auto [server, client] = co_await dmoe::when_all(accept_one(listener), connect_to(listener.local_endpoint()));
  co_return std::pair<tcp_socket, tcp_socket>(std::move(server), std::move(client));
}

task<void> echo_connection(counted, tcp_socket socket) {
  byte_buffer buffer(64 * 1024);
  for (;;) {
    const std::size_t n = co_await socket.read_some(buffer);
    if (n == 0) break;
    co_await socket.write_all(byte_span(buffer.data(), n));
  }
}

task<void> echo_server(counted, tcp_listener& listener, int connections, int send_buffer) {
  dmoe::task_group group;
  for (int i = 0; i < connections; ++i) {
    tcp_socket socket = co_await listener.accept();
    if (send_buffer) socket.set_option(SOL_SOCKET, SO_SNDBUF, send_buffer);
    group.spawn(echo_connection(counted{}, std::move(socket)));
  }
  co_await group.join();
}

struct write_stats {
  std::size_t writes = 0;
  std::size_t partial = 0;
};

task<void> write_in_random_chunks(tcp_socket& socket, const_byte_span data, std::uint32_t seed, write_stats& stats) {
  std::mt19937 rng(seed);
  std::size_t offset = 0;
  while (offset < data.size()) {
    const std::size_t want =
        std::min(data.size() - offset, std::uniform_int_distribution<std::size_t>(1, 1 << 20)(rng));
    const std::size_t sent = co_await socket.write_some(data.subspan(offset, want));
    ++stats.writes;
    if (sent < want) ++stats.partial;
    offset += sent;
  }
  socket.shutdown_write();
}

task<std::size_t> read_back(tcp_socket& socket, byte_span into) {
  co_await socket.read_exactly(into);
  std::byte extra[1];
  co_return co_await socket.read_some(extra);  // 0: the server closed after echoing everything
}

task<bool> echo_once(counted, endpoint server, std::size_t size, int send_buffer, write_stats& stats) {
  tcp_socket socket = co_await tcp_socket::connect(*io_context::current(), server);
  socket.set_option(SOL_SOCKET, SO_SNDBUF, send_buffer);
  const byte_buffer sent = pattern(size, size);
  byte_buffer received(size);
  auto [ignored, extra] = co_await dmoe::when_all(
      write_in_random_chunks(socket, sent, static_cast<std::uint32_t>(size), stats), read_back(socket, received));
  co_return extra == 0 && received == sent;
}

task<bool> hello(counted, endpoint server, int id) {
  tcp_socket socket = co_await tcp_socket::connect(*io_context::current(), server);
  char message[32];
  const int length = std::snprintf(message, sizeof message, "hello from %05d", id);
  co_await socket.write_all(dmoe::as_bytes(std::string_view(message, static_cast<std::size_t>(length))));
  std::array<char, 32> reply{};
  co_await socket.read_exactly(std::as_writable_bytes(std::span(reply.data(), static_cast<std::size_t>(length))));
  co_return std::memcmp(reply.data(), message, static_cast<std::size_t>(length)) == 0;
}

task<int> many_clients(endpoint server, int count) {
  std::vector<task<bool>> clients;
  for (int i = 0; i < count; ++i) clients.push_back(hello(counted{}, server, i));
  const std::vector<bool> ok = co_await dmoe::when_all(std::move(clients));
  co_return static_cast<int>(std::count(ok.begin(), ok.end(), true));
}

template <class Work>
task<std::string> error_text(Work work) {
  try {
    co_await std::move(work);
  } catch (const dmoe::error& e) {
    co_return std::string(e.what());
  }
  co_return "no error";
}

task<void> read_some_into(tcp_socket& socket, byte_span buffer, dmoe::steady_time deadline = dmoe::no_deadline) {
  co_await socket.read_some(buffer, deadline);
}
task<void> read_exactly_into(tcp_socket& socket, byte_span buffer, dmoe::steady_time deadline = dmoe::no_deadline) {
  co_await socket.read_exactly(buffer, deadline);
}
task<void> read_exactly_pieces(tcp_socket& socket, std::span<const byte_span> pieces) {
  co_await socket.read_exactly(pieces);
}
task<void> write_all_of(tcp_socket& socket, const_byte_span data) { co_await socket.write_all(data); }
task<void> write_all_pieces(tcp_socket& socket, std::span<const const_byte_span> pieces) {
  co_await socket.write_all(pieces);
}

task<std::string> reset_errors(tcp_listener& listener) {
  auto [server, client] = co_await connected_pair(listener);
  // Linger 0: close sends RST instead of FIN.
  const linger abort_on_close{1, 0};
  ::setsockopt(server.native_handle(), SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
  server.close();
  std::byte buffer[16];
  std::string read_error = co_await error_text(read_some_into(client, buffer));
  const std::byte data[4] = {};
  std::string write_error = co_await error_text(write_all_of(client, data));
  co_return read_error + " | " + write_error;
}

task<std::string> half_close(tcp_listener& listener) {
  auto [server, client] = co_await connected_pair(listener);
  co_await client.write_all(dmoe::as_bytes("12345"));
  client.shutdown_write();
  std::byte buffer[10];
  std::string error = co_await error_text(read_exactly_into(server, buffer));
  // The half-closed side can still receive.
  co_await server.write_all(dmoe::as_bytes("ok"));
  std::byte reply[2];
  co_await client.read_exactly(reply);
  co_return error + (dmoe::as_string_view(reply) == "ok" ? " | reply ok" : " | reply missing");
}

// Owns a socket and a buffer; its read times out. Returns the descriptor it used.
task<int> read_until_deadline(counted, endpoint server, bool through_with_timeout) {
  tcp_socket socket = co_await tcp_socket::connect(*io_context::current(), server);
  const int fd = socket.native_handle();
  auto buffer = std::make_unique<counted_buffer>(4096);
  bool timed_out = false;
  try {
    if (through_with_timeout) {
      co_await dmoe::with_timeout(read_some_into(socket, buffer->span()), 3ms);
    } else {
      co_await socket.read_some(buffer->span(), dmoe::deadline_after(3ms));
    }
  } catch (const dmoe::timeout_error&) {
    timed_out = true;
  }
  co_return timed_out ? fd : -1;
}

task<std::vector<int>> timed_out_reads(tcp_listener& listener) {
  std::vector<int> fds;
  for (bool through_with_timeout : {false, true}) {
    auto [server, fd] = co_await dmoe::when_all(accept_one(listener),
                                                read_until_deadline(counted{}, listener.local_endpoint(), through_with_timeout));
    fds.push_back(fd);
  }
  co_return fds;
}

task<std::string> partial_read_then_deadline(tcp_listener& listener) {
  auto [server, client] = co_await connected_pair(listener);
  co_await server.write_all(dmoe::as_bytes("abc"));
  std::byte buffer[10];
  std::string error = co_await error_text(read_exactly_into(client, buffer, dmoe::deadline_after(5ms)));
  std::byte after[1];
  const std::size_t n = co_await client.read_some(after);  // shut down: end of stream at once
  co_return error + (n == 0 ? " | shut down" : " | still open");
}

task<std::string> partial_write_then_timeout(tcp_listener& listener) {
  auto [server, client] = co_await connected_pair(listener);
  client.set_option(SOL_SOCKET, SO_SNDBUF, 4096);
  server.set_option(SOL_SOCKET, SO_RCVBUF, 4096);
  const byte_buffer data(16 << 20);
  co_return co_await error_text(dmoe::with_timeout(write_all_of(client, data), 20ms));
}

task<bool> vectored(tcp_listener& listener) {
  auto [server, client] = co_await connected_pair(listener);
  const byte_buffer header = pattern(4, 1);
  const byte_buffer body = pattern(100'000, 2);
  const std::array<const_byte_span, 3> pieces{const_byte_span(header), const_byte_span(), const_byte_span(body)};
  byte_buffer first(50);
  byte_buffer second(header.size() + body.size() - first.size());
  const std::array<byte_span, 2> into{byte_span(first), byte_span(second)};
  co_await dmoe::when_all(write_all_pieces(client, pieces), read_exactly_pieces(server, into));
  byte_buffer joined(first);
  joined.insert(joined.end(), second.begin(), second.end());
  byte_buffer expected(header);
  expected.insert(expected.end(), body.begin(), body.end());
  co_return joined == expected;
}


// Round trips of small vectored messages around the 512-byte size below which a send gathers its pieces into one
// buffer, then a burst written before it is read with a small buffer (the socket is not empty after each read): the
// bytes arrive whole and in order whether the previous receive emptied the socket or not.
task<bool> small_vectored_round_trips(tcp_listener& listener) {
  auto [server, client] = co_await connected_pair(listener);
  bool ok = true;
  std::uint64_t seed = 10;
  for (const std::size_t size : {1, 3, 96, 500, 511, 512, 513, 600, 4096}) {
    const byte_buffer message = pattern(size, ++seed);
    const std::size_t cut = size / 3;
    const std::array<const_byte_span, 3> pieces{const_byte_span(message.data(), cut), const_byte_span(),
                                                const_byte_span(message.data() + cut, size - cut)};
    byte_buffer received(size);
    const std::array<byte_span, 1> into{byte_span(received)};
    co_await dmoe::when_all(write_all_pieces(client, pieces), read_exactly_pieces(server, into));
    ok = ok && received == message;
    // And back, answered from the side that just emptied its socket.
    const std::array<const_byte_span, 2> back{const_byte_span(received.data(), size / 2),
                                              const_byte_span(received.data() + size / 2, size - size / 2)};
    byte_buffer echoed(size);
    const std::array<byte_span, 1> into_echo{byte_span(echoed)};
    co_await dmoe::when_all(write_all_pieces(server, back), read_exactly_pieces(client, into_echo));
    ok = ok && echoed == message;
  }
  const byte_buffer burst = pattern(10'000, 99);
  for (std::size_t at = 0; at < burst.size(); at += 100) {
    const std::array<const_byte_span, 2> pieces{const_byte_span(burst.data() + at, 40),
                                                const_byte_span(burst.data() + at + 40, 60)};
    co_await write_all_pieces(client, pieces);
  }
  byte_buffer got;
  byte_buffer room(7);
  while (got.size() < burst.size()) {
    const std::size_t n = co_await server.read_some(room);
    if (n == 0) break;
    got.insert(got.end(), room.begin(), room.begin() + static_cast<std::ptrdiff_t>(n));
  }
  co_return ok && got == burst;
}

// Writes `count` 10-byte messages the socket can take at once; returns how many finished before `other_ran` was set
// (by a coroutine started after this one's first suspension).
task<int> write_small_messages(tcp_socket& socket, const bool& other_ran, int count) {
  int before_other = 0;
  for (int i = 0; i < count; ++i) {
    const std::string message = fmt::format("{:010}", i);
    co_await socket.write_all(dmoe::as_bytes(message));
    if (!other_ran) ++before_other;
  }
  co_return before_other;
}

task<void> mark_ran(bool& ran) {
  ran = true;
  co_return;
}

// Sends the socket can take now finish without suspending, but only a bounded number per loop iteration: a
// coroutine whose every write finishes at once still lets the others run. Every byte arrives, in order.
task<std::pair<int, bool>> writes_that_finish_at_once(tcp_listener& listener, int count) {
  auto [server, client] = co_await connected_pair(listener);
  bool other_ran = false;
  auto [before_other, unused] = co_await dmoe::when_all(write_small_messages(client, other_ran, count), mark_ran(other_ran));
  byte_buffer got(static_cast<std::size_t>(count) * 10);
  co_await server.read_exactly(got);
  bool in_order = true;
  for (int i = 0; i < count; ++i)
    in_order = in_order && dmoe::as_string_view(const_byte_span(got).subspan(static_cast<std::size_t>(i) * 10, 10)) ==
                               fmt::format("{:010}", i);
  co_return std::pair(before_other, in_order);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(async_tcp_socket)

BOOST_AUTO_TEST_CASE(writes_that_finish_at_once_still_let_other_coroutines_run) {
  io_context ctx;
  tcp_listener listener(ctx, endpoint::loopback_v4());
  constexpr int count = 2000;  // 20 kB: the socket buffers take them all
  const auto [before_other, in_order] = ctx.run(writes_that_finish_at_once(listener, count));
  BOOST_TEST(before_other > 0);       // the first writes did not wait for the ring
  BOOST_TEST(before_other < count);   // ... but the other coroutine ran long before the last
  BOOST_TEST(in_order);
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

// Send buffers below 64 KiB make loopback TCP crawl (kernel behaviour); random writes of up to
// 1 MiB into 64 KiB buffers still come back partial.
BOOST_AUTO_TEST_CASE(echo_from_one_byte_to_64_mib_with_partial_writes) {
  counted::reset();
  io_context ctx;
  tcp_listener listener(ctx, endpoint::loopback_v4());
  const std::vector<std::size_t> sizes{1, 2, 3, 1000, 65'543, 1 << 20, 64 << 20};
  write_stats stats;
  std::vector<task<bool>> clients;
  for (std::size_t size : sizes) clients.push_back(echo_once(counted{}, listener.local_endpoint(), size, 65536, stats));
  auto [served, ok] = ctx.run(dmoe::when_all(echo_server(counted{}, listener, static_cast<int>(sizes.size()), 65536),
                                             dmoe::when_all(std::move(clients))));
  for (std::size_t i = 0; i < sizes.size(); ++i) BOOST_TEST_CONTEXT("size " << sizes[i]) BOOST_TEST(ok[i]);
  BOOST_TEST_MESSAGE("writes: " << stats.writes << ", partial: " << stats.partial);
  BOOST_TEST(stats.partial > 0u);
  BOOST_TEST(counted::alive() == 0);
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

BOOST_AUTO_TEST_CASE(a_thousand_concurrent_connections) {
  constexpr int count = 1000;
  if (dmoe_test::raise_open_file_limit() < 2 * count + 64) {
    BOOST_TEST_MESSAGE("skipped: RLIMIT_NOFILE too low for " << count << " loopback connections");
    return;
  }
  counted::reset();
  io_context ctx;
  tcp_listener listener(ctx, endpoint::loopback_v4(), count);
  auto [served, ok] =
      ctx.run(dmoe::when_all(echo_server(counted{}, listener, count, 0), many_clients(listener.local_endpoint(), count)));
  BOOST_TEST(ok == count);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(peer_reset_names_the_peer) {
  io_context ctx;
  tcp_listener listener(ctx, endpoint::loopback_v4());
  const std::string errors = ctx.run(reset_errors(listener));
  BOOST_TEST_MESSAGE(errors);
  BOOST_TEST(contains(errors, "tcp recv from 127.0.0.1:"));
  BOOST_TEST(contains(errors, "connection reset by peer"));
  BOOST_TEST(contains(errors, "tcp send to 127.0.0.1:"));
}

BOOST_AUTO_TEST_CASE(half_close_reports_how_much_arrived) {
  io_context ctx;
  tcp_listener listener(ctx, endpoint::loopback_v4());
  const std::string text = ctx.run(half_close(listener));
  BOOST_TEST_MESSAGE(text);
  BOOST_TEST(contains(text, "closed the connection after 5 of 10 bytes"));
  BOOST_TEST(contains(text, "peer 127.0.0.1:"));
  BOOST_TEST(contains(text, "reply ok"));
}

BOOST_AUTO_TEST_CASE(a_timed_out_read_releases_its_socket_and_buffer) {
  counted::reset();
  io_context ctx;
  tcp_listener listener(ctx, endpoint::loopback_v4());
  const std::vector<int> fds = ctx.run(timed_out_reads(listener));
  BOOST_REQUIRE(fds.size() == 2u);
  for (int fd : fds) {
    BOOST_TEST(fd >= 0);  // the read timed out
    BOOST_TEST(::fcntl(fd, F_GETFD) == -1);  // and its socket is closed
  }
  BOOST_TEST(counted_buffer::alive.load() == 0);
  BOOST_TEST(counted::alive() == 0);
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

BOOST_AUTO_TEST_CASE(an_interrupted_partial_transfer_shuts_the_connection_down) {
  io_context ctx;
  tcp_listener listener(ctx, endpoint::loopback_v4());
  const std::string read_text = ctx.run(partial_read_then_deadline(listener));
  BOOST_TEST_MESSAGE(read_text);
  BOOST_TEST(contains(read_text, "after 3 of 10 bytes"));
  BOOST_TEST(contains(read_text, "deadline passed"));
  BOOST_TEST(contains(read_text, "| shut down"));
  const std::string write_text = ctx.run(partial_write_then_timeout(listener));
  BOOST_TEST_MESSAGE(write_text);
  BOOST_TEST(contains(write_text, "timed out after 20 ms"));
  BOOST_TEST(contains(write_text, "of 16777216 bytes (stream state unknown: connection shut down)"));
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

BOOST_AUTO_TEST_CASE(vectored_write_all_and_read_exactly) {
  io_context ctx;
  tcp_listener listener(ctx, endpoint::loopback_v4());
  BOOST_TEST(ctx.run(vectored(listener)));
}

BOOST_AUTO_TEST_CASE(small_vectored_messages_and_reads_after_an_emptied_socket) {
  io_context ctx;
  tcp_listener listener(ctx, endpoint::loopback_v4());
  BOOST_TEST(ctx.run(small_vectored_round_trips(listener)));
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

BOOST_AUTO_TEST_CASE(connection_refused_is_a_clear_error) {
  io_context ctx;
  endpoint closed;
  {
    tcp_listener listener(ctx, endpoint::loopback_v4());
    closed = listener.local_endpoint();
  }
  BOOST_CHECK_EXCEPTION(ctx.run(connect_to(closed)), dmoe::system_error, [&](const dmoe::system_error& e) {
    return std::string(e.what()) == "tcp connect to " + closed.to_string() + ": Connection refused";
  });
}

BOOST_AUTO_TEST_CASE(echo_over_ipv6_loopback) {
  io_context ctx;
  std::unique_ptr<tcp_listener> listener;
  try {
    listener = std::make_unique<tcp_listener>(ctx, endpoint::loopback_v6());
  } catch (const dmoe::system_error& e) {
    BOOST_TEST_MESSAGE("skipped: no IPv6 loopback (" << e.what() << ")");
    return;
  }
  write_stats stats;
  auto [served, ok] = ctx.run(dmoe::when_all(echo_server(counted{}, *listener, 1, 0),
                                             echo_once(counted{}, listener->local_endpoint(), 100'000, 65536, stats)));
  BOOST_TEST(ok);
}

BOOST_AUTO_TEST_SUITE_END()
