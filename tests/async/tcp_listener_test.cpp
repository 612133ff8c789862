// Tests for dmoe/async/tcp_listener.hpp: binding, ephemeral ports, accept deadlines and cancellation.
#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/tcp_listener.hpp>
#include <dmoe/async/tcp_socket.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/when_all.hpp>
#include <dmoe/async/when_any.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <string>

using dmoe::endpoint;
using dmoe::io_context;
using dmoe::task;
using dmoe::tcp_listener;
using dmoe::tcp_socket;
using namespace std::chrono_literals;

namespace {

task<endpoint> accept_peer(tcp_listener& listener) {
  tcp_socket socket = co_await listener.accept();
  co_return socket.peer();
}
task<endpoint> connect_local(endpoint to) {
  tcp_socket socket = co_await tcp_socket::connect(*io_context::current(), to);
  co_return socket.local_endpoint();
}
task<void> accept_forever(tcp_listener& listener) { tcp_socket ignored = co_await listener.accept(); }
task<void> accept_within(tcp_listener& listener, std::chrono::milliseconds limit) {
  tcp_socket ignored = co_await listener.accept(dmoe::deadline_after(limit));
}
task<void> nap() { co_await dmoe::sleep_for(1ms); }

}  // namespace

BOOST_AUTO_TEST_SUITE(async_tcp_listener)

BOOST_AUTO_TEST_CASE(binds_an_ephemeral_port_and_accepts) {
  io_context ctx;
  tcp_listener listener(ctx, endpoint::loopback_v4());
  BOOST_TEST(listener.local_endpoint().port() != 0);
  BOOST_TEST(listener.local_endpoint().address() == "127.0.0.1");
  auto [accepted_peer, connected_local] = ctx.run(dmoe::when_all(accept_peer(listener), connect_local(listener.local_endpoint())));
  BOOST_TEST((accepted_peer == connected_local));  // the server sees the client's address
}

BOOST_AUTO_TEST_CASE(a_port_in_use_is_a_clear_error) {
  io_context ctx;
  tcp_listener first(ctx, endpoint::loopback_v4());
  BOOST_CHECK_EXCEPTION(tcp_listener(ctx, first.local_endpoint()), dmoe::system_error, [&](const dmoe::system_error& e) {
    return std::string(e.what()) == "bind to " + first.local_endpoint().to_string() + ": Address already in use";
  });
}

BOOST_AUTO_TEST_CASE(accept_honours_deadlines_and_cancellation) {
  io_context ctx;
  tcp_listener listener(ctx, endpoint::loopback_v4());
  BOOST_CHECK_THROW(ctx.run(accept_within(listener, 2ms)), dmoe::timeout_error);
  BOOST_TEST(ctx.run(dmoe::when_any(accept_forever(listener), nap())).index() == 1u);
  BOOST_TEST(ctx.operations_in_flight() == 0u);
  // Still usable after both.
  auto [peer, local] = ctx.run(dmoe::when_all(accept_peer(listener), connect_local(listener.local_endpoint())));
  BOOST_TEST((peer == local));
}

BOOST_AUTO_TEST_SUITE_END()
