// dmoe's side of dmoe_bench_echo: an echo server and ping-pong clients on the io_uring runtime.
#pragma once

#include "echo_case.hpp"

#include <dmoe/async.hpp>

#include <thread>
#include <vector>

namespace dmoe_bench {

inline dmoe::task<void> dmoe_echo_session(dmoe::tcp_socket socket, std::size_t message_size) {
  std::vector<std::byte> buffer(message_size);
  try {
    for (;;) {
      co_await socket.read_exactly(buffer);
      co_await socket.write_all(buffer);
    }
  } catch (const dmoe::closed_error&) {
    // The client closed its end: the session is over.
  }
}

inline dmoe::task<void> dmoe_echo_server(dmoe::tcp_listener& listener, int connections, std::size_t message_size) {
  dmoe::task_group sessions;
  for (int i = 0; i < connections; ++i) {
    dmoe::tcp_socket socket = co_await listener.accept();
    sessions.spawn(dmoe_echo_session(std::move(socket), message_size));
  }
  co_await sessions.join();
}

inline dmoe::task<void> dmoe_ping_pong(dmoe::io_context& ctx, dmoe::endpoint server, std::size_t message_size,
                                       echo_clock::time_point end, std::uint64_t& round_trips) {
  dmoe::tcp_socket socket = co_await dmoe::tcp_socket::connect(ctx, server);
  std::vector<std::byte> out(message_size, std::byte{'x'}), in(message_size);
  while (echo_clock::now() < end) {
    co_await socket.write_all(out);
    co_await socket.read_exactly(in);
    ++round_trips;
  }
  socket.close();
}

inline dmoe::task<void> dmoe_clients(dmoe::io_context& ctx, dmoe::endpoint server, const echo_case& c,
                                     echo_clock::time_point end, std::vector<std::uint64_t>& counts) {
  dmoe::task_group clients(ctx);
  for (int i = 0; i < c.connections; ++i) clients.spawn(dmoe_ping_pong(ctx, server, c.message_size, end, counts[i]));
  co_await clients.join();
}

// Server on one thread, clients on another, as for Asio.
inline echo_result run_dmoe_echo(const echo_case& c) {
  dmoe::io_context server_context;
  dmoe::tcp_listener listener(server_context, dmoe::endpoint::loopback_v4(0));
  std::thread server_thread(
      [&] { server_context.run(dmoe_echo_server(listener, c.connections, c.message_size)); });

  dmoe::io_context client_context;
  std::vector<std::uint64_t> counts(c.connections, 0);
  auto start = echo_clock::now();
  client_context.run(dmoe_clients(client_context, listener.local_endpoint(), c, start + c.duration, counts));
  auto elapsed = std::chrono::duration<double>(echo_clock::now() - start).count();
  server_thread.join();

  echo_result r;
  for (auto n : counts) r.round_trips += n;
  r.seconds = elapsed;
  return r;
}

}  // namespace dmoe_bench
