// Tests for dmoe/async/udp_socket.hpp: round trips with sender addresses (IPv4, IPv6), truncation, deadlines.
#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/udp_socket.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <memory>
#include <string>

using dmoe::byte_buffer;
using dmoe::endpoint;
using dmoe::io_context;
using dmoe::task;
using dmoe::udp_socket;
using namespace std::chrono_literals;

namespace {

struct round_trip_result {
  bool request_ok = false;
  bool reply_ok = false;
  bool truncated_flagged = false;
};

task<round_trip_result> round_trip(udp_socket& a, udp_socket& b) {
  round_trip_result r;
  co_await a.send_to(dmoe::as_bytes("ping"), b.local_endpoint());
  byte_buffer buffer(64);
  const dmoe::datagram request = co_await b.receive_from(buffer);
  r.request_ok = request.size == 4 && !request.truncated && request.peer == a.local_endpoint() &&
                 dmoe::as_string_view(dmoe::const_byte_span(buffer.data(), request.size)) == "ping";
  co_await b.send_to(dmoe::as_bytes("pong!"), request.peer);
  const dmoe::datagram reply = co_await a.receive_from(buffer);
  r.reply_ok = reply.size == 5 && reply.peer == b.local_endpoint() &&
               dmoe::as_string_view(dmoe::const_byte_span(buffer.data(), reply.size)) == "pong!";
  co_await a.send_to(dmoe::as_bytes("a datagram longer than the buffer"), b.local_endpoint());
  byte_buffer small(8);
  const dmoe::datagram cut = co_await b.receive_from(small);
  r.truncated_flagged = cut.truncated && cut.size == 8;
  co_return r;
}

task<void> receive_within(udp_socket& s, std::chrono::milliseconds limit) {
  byte_buffer buffer(16);
  co_await s.receive_from(buffer, dmoe::deadline_after(limit));
}

void check_round_trip(io_context& ctx, const endpoint& local) {
  udp_socket a(ctx, local);
  udp_socket b(ctx, local);
  BOOST_TEST(a.local_endpoint().port() != 0);
  const round_trip_result r = ctx.run(round_trip(a, b));
  BOOST_TEST(r.request_ok);
  BOOST_TEST(r.reply_ok);
  BOOST_TEST(r.truncated_flagged);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(async_udp_socket)

BOOST_AUTO_TEST_CASE(round_trip_over_ipv4_with_addresses) {
  io_context ctx;
  check_round_trip(ctx, endpoint::loopback_v4());
}

BOOST_AUTO_TEST_CASE(round_trip_over_ipv6_with_addresses) {
  io_context ctx;
  try {
    udp_socket probe(ctx, endpoint::loopback_v6());
  } catch (const dmoe::system_error& e) {
    BOOST_TEST_MESSAGE("skipped: no IPv6 loopback (" << e.what() << ")");
    return;
  }
  check_round_trip(ctx, endpoint::loopback_v6());
}

BOOST_AUTO_TEST_CASE(a_receive_times_out) {
  io_context ctx;
  udp_socket s(ctx, endpoint::loopback_v4());
  BOOST_CHECK_EXCEPTION(ctx.run(receive_within(s, 2ms)), dmoe::timeout_error, [&](const dmoe::timeout_error& e) {
    return std::string(e.what()) == "udp recv on " + s.local_endpoint().to_string() + ": deadline passed";
  });
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

BOOST_AUTO_TEST_SUITE_END()
