// The baseline for dmoe_bench_echo: a Boost.Asio C++20-coroutine echo server and ping-pong clients.
#pragma once

#include "echo_case.hpp"

#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <boost/asio.hpp>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace dmoe_bench {

namespace asio = boost::asio;
using asio::ip::tcp;

inline asio::awaitable<void> asio_echo_session(tcp::socket socket, std::size_t message_size) {
  std::vector<char> buffer(message_size);
  try {
    for (;;) {
      co_await asio::async_read(socket, asio::buffer(buffer), asio::use_awaitable);
      co_await asio::async_write(socket, asio::buffer(buffer), asio::use_awaitable);
    }
  } catch (const boost::system::system_error&) {
    // The client closed its end: the session is over.
  }
}

inline asio::awaitable<void> asio_echo_acceptor(tcp::acceptor& acceptor, int connections, std::size_t message_size) {
  for (int i = 0; i < connections; ++i) {
    auto socket = co_await acceptor.async_accept(asio::use_awaitable);
    socket.set_option(tcp::no_delay(true));
    asio::co_spawn(acceptor.get_executor(), asio_echo_session(std::move(socket), message_size), asio::detached);
  }
}

inline asio::awaitable<void> asio_ping_pong(tcp::endpoint server, std::size_t message_size, echo_clock::time_point end,
                                            std::uint64_t& round_trips) {
  tcp::socket socket(co_await asio::this_coro::executor);
  co_await socket.async_connect(server, asio::use_awaitable);
  socket.set_option(tcp::no_delay(true));
  std::vector<char> out(message_size, 'x'), in(message_size);
  while (echo_clock::now() < end) {
    co_await asio::async_write(socket, asio::buffer(out), asio::use_awaitable);
    co_await asio::async_read(socket, asio::buffer(in), asio::use_awaitable);
    ++round_trips;
  }
  socket.close();
}

// Server on one thread, clients on another, as for dmoe.
inline echo_result run_asio_echo(const echo_case& c) {
  asio::io_context server_context(1);
  tcp::acceptor acceptor(server_context, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  auto server_endpoint = acceptor.local_endpoint();
  asio::co_spawn(server_context, asio_echo_acceptor(acceptor, c.connections, c.message_size), asio::detached);
  std::thread server_thread([&] { server_context.run(); });

  asio::io_context client_context(1);
  std::vector<std::uint64_t> counts(c.connections, 0);
  auto start = echo_clock::now();
  auto end = start + c.duration;
  for (int i = 0; i < c.connections; ++i)
    asio::co_spawn(client_context, asio_ping_pong(server_endpoint, c.message_size, end, counts[i]), asio::detached);
  client_context.run();
  auto elapsed = std::chrono::duration<double>(echo_clock::now() - start).count();
  server_thread.join();

  echo_result r;
  for (auto n : counts) r.round_trips += n;
  r.seconds = elapsed;
  return r;
}

}  // namespace dmoe_bench
