// The baseline for dmoe_bench_rpc: a Boost.Asio C++20-coroutine RPC server and callers with dmoe's framing.
//
// It does the work dmoe's RPC layer does, with the same code where the work is the same: dmoe::net::frame_reader
// cuts the stream (64 KiB receive buffer, large payloads received in place), encode_frame_header writes the
// 32-byte header, requests are dispatched by method id to a handler that owns the payload, and responses go out
// as one gathered write of header and payload. Callers sharing a connection are matched to responses by request
// id. What it leaves out is dmoe's robustness: deadlines, stop tokens, limits, backpressure, the pool.
#pragma once

#include "rpc_case.hpp"

#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <boost/asio.hpp>

#include <dmoe/core/error.hpp>
#include <dmoe/net/frame.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

namespace dmoe_bench {

namespace asio = boost::asio;
using asio_tcp = asio::ip::tcp;

// A handler takes the request payload (it may move it) and returns the response payload.
using asio_rpc_handler = std::function<dmoe::byte_buffer(dmoe::byte_buffer&)>;
using asio_rpc_handlers = std::unordered_map<std::uint32_t, asio_rpc_handler>;

inline asio::const_buffer asio_bytes(dmoe::const_byte_span bytes) { return {bytes.data(), bytes.size()}; }

// Reads the next whole frame through `reader`.
inline asio::awaitable<dmoe::net::frame> asio_read_frame(asio_tcp::socket& socket, dmoe::net::frame_reader& reader,
                                                         const std::string& peer) {
  for (;;) {
    if (std::optional<dmoe::net::frame> f = reader.next(peer)) co_return std::move(*f);
    const dmoe::byte_span room = reader.prepare();
    const std::size_t n = co_await socket.async_read_some(asio::buffer(room.data(), room.size()), asio::use_awaitable);
    reader.commit(n);
  }
}

// One connection: requests answered in order, each with one gathered write.
inline asio::awaitable<void> asio_rpc_session(asio_tcp::socket socket, const asio_rpc_handlers& handlers) {
  const std::string peer = socket.remote_endpoint().address().to_string();
  dmoe::net::frame_reader reader;
  try {
    for (;;) {
      dmoe::net::frame request = co_await asio_read_frame(socket, reader, peer);
      if (request.header.kind != dmoe::net::frame_kind::request) throw dmoe::protocol_error("expected a request");
      dmoe::net::frame_status status = dmoe::net::frame_status::ok;
      dmoe::byte_buffer body;
      const auto found = handlers.find(request.header.method);
      if (found == handlers.end()) {
        status = dmoe::net::frame_status::unknown_method;
        body = dmoe::to_buffer("no such method");
      } else {
        body = found->second(request.payload);
      }
      const auto head = dmoe::net::encode_frame_header(dmoe::net::frame_header{
          dmoe::net::frame_kind::response, status, request.header.method, 0, request.header.request_id, body.size()});
      const std::array<asio::const_buffer, 2> out{asio::buffer(head), asio::buffer(body.data(), body.size())};
      co_await asio::async_write(socket, out, asio::use_awaitable);
    }
  } catch (const boost::system::system_error&) {
    // The client closed its end: the session is over.
  }
}

inline asio::awaitable<void> asio_rpc_acceptor(asio_tcp::acceptor& acceptor, int connections,
                                               const asio_rpc_handlers& handlers) {
  for (int i = 0; i < connections; ++i) {
    auto socket = co_await acceptor.async_accept(asio::use_awaitable);
    socket.set_option(asio_tcp::no_delay(true));
    asio::co_spawn(acceptor.get_executor(), asio_rpc_session(std::move(socket), handlers), asio::detached);
  }
}

inline void asio_check_response(const dmoe::net::frame& response, std::uint64_t id, std::size_t size) {
  if (response.header.kind != dmoe::net::frame_kind::response || response.header.request_id != id ||
      response.header.status != dmoe::net::frame_status::ok || response.payload.size() != size)
    throw dmoe::protocol_error(fmt::format("bad echo response to request {}", id));
}

inline std::array<asio::const_buffer, 3> asio_request_buffers(const dmoe::net::frame_header_bytes& head,
                                                              const rpc_request_payload& request) {
  return {asio::buffer(head), asio_bytes(request.pieces()[0]), asio_bytes(request.pieces()[1])};
}

// One caller alone on its connection: write a request, read its response, repeat.
inline asio::awaitable<void> asio_rpc_sequential_caller(asio_tcp::endpoint server, const rpc_request_payload& request,
                                                        rpc_clock::time_point end, rpc_counts& counts) {
  asio_tcp::socket socket(co_await asio::this_coro::executor);
  co_await socket.async_connect(server, asio::use_awaitable);
  socket.set_option(asio_tcp::no_delay(true));
  const std::string peer = server.address().to_string();
  dmoe::net::frame_reader reader;
  std::uint64_t id = 0;
  for (auto started = rpc_clock::now(); started < end; started = rpc_clock::now()) {
    ++id;
    const auto head = dmoe::net::encode_frame_header(dmoe::net::frame_header{
        dmoe::net::frame_kind::request, dmoe::net::frame_status::ok, rpc_echo_method, 0, id, request.size()});
    co_await asio::async_write(socket, asio_request_buffers(head, request), asio::use_awaitable);
    const dmoe::net::frame response = co_await asio_read_frame(socket, reader, peer);
    asio_check_response(response, id, request.size());
    counts.add(request.size() + response.payload.size(), started);
  }
  socket.close();
}

// Callers sharing one connection: whoever finds the socket free writes its request and then those queued behind
// it; one reader hands each response to its caller by request id and wakes it (by cancelling its timer).
struct asio_shared_connection {
  explicit asio_shared_connection(asio::any_io_executor executor) : socket(executor) {}

  struct call {
    explicit call(asio::any_io_executor executor) : wake(executor, rpc_clock::time_point::max()) {}
    asio::steady_timer wake;
    std::uint64_t id = 0;
    std::optional<dmoe::net::frame> response;
  };

  asio_tcp::socket socket;
  std::string peer;
  dmoe::net::frame_reader reader;
  std::unordered_map<std::uint64_t, call*> pending;
  std::deque<call*> queued;
  bool writing = false;
  std::uint64_t next_id = 1;
  int callers = 0;
};

inline asio::awaitable<void> asio_rpc_reader(asio_shared_connection& c) {
  try {
    for (;;) {
      dmoe::net::frame response = co_await asio_read_frame(c.socket, c.reader, c.peer);
      const auto found = c.pending.find(response.header.request_id);
      if (found == c.pending.end()) throw dmoe::protocol_error("response to no pending call");
      asio_shared_connection::call* waiting = found->second;
      c.pending.erase(found);
      waiting->response.emplace(std::move(response));
      waiting->wake.cancel();
    }
  } catch (const boost::system::system_error&) {
    // The socket was closed after the last caller finished.
  }
}

inline asio::awaitable<void> asio_rpc_shared_caller(asio_shared_connection& c, const rpc_request_payload& request,
                                                    rpc_clock::time_point end, rpc_counts& counts) {
  asio_shared_connection::call call(co_await asio::this_coro::executor);
  for (auto started = rpc_clock::now(); started < end; started = rpc_clock::now()) {
    call.id = c.next_id++;
    call.response.reset();
    c.pending.emplace(call.id, &call);
    if (c.writing) {
      c.queued.push_back(&call);
    } else {
      c.writing = true;
      asio_shared_connection::call* next = &call;
      while (next) {
        const auto head = dmoe::net::encode_frame_header(dmoe::net::frame_header{
            dmoe::net::frame_kind::request, dmoe::net::frame_status::ok, rpc_echo_method, 0, next->id, request.size()});
        co_await asio::async_write(c.socket, asio_request_buffers(head, request), asio::use_awaitable);
        next = nullptr;
        if (!c.queued.empty()) {
          next = c.queued.front();
          c.queued.pop_front();
        }
      }
      c.writing = false;
    }
    boost::system::error_code ignored;
    while (!call.response) co_await call.wake.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    asio_check_response(*call.response, call.id, request.size());
    counts.add(request.size() + call.response->payload.size(), started);
  }
  if (--c.callers == 0) c.socket.close();  // ends the reader
}

inline asio::awaitable<void> asio_rpc_shared_connection(asio_tcp::endpoint server, const rpc_request_payload& request,
                                                        rpc_clock::time_point end, std::span<rpc_counts> counts) {
  const auto executor = co_await asio::this_coro::executor;
  asio_shared_connection c(executor);
  co_await c.socket.async_connect(server, asio::use_awaitable);
  c.socket.set_option(asio_tcp::no_delay(true));
  c.peer = server.address().to_string();
  c.callers = static_cast<int>(counts.size());
  for (auto& n : counts) asio::co_spawn(executor, asio_rpc_shared_caller(c, request, end, n), asio::detached);
  co_await asio_rpc_reader(c);
}

// Server on one thread, clients on another, as for dmoe.
inline rpc_result run_asio_rpc(const rpc_case& c) {
  const rpc_request_payload request(c);
  const double cpu_before = process_cpu_seconds();
  asio_rpc_handlers handlers;
  handlers[rpc_echo_method] = [](dmoe::byte_buffer& payload) { return std::move(payload); };

  asio::io_context server_context(1);
  asio_tcp::acceptor acceptor(server_context, asio_tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const auto server_endpoint = acceptor.local_endpoint();
  asio::co_spawn(server_context, asio_rpc_acceptor(acceptor, c.connections, handlers), asio::detached);
  std::thread server_thread([&] {
    const auto pin = rpc_pin(c, 0);
    server_context.run();
  });

  const auto pin = rpc_pin(c, 1);
  asio::io_context client_context(1);
  std::vector<rpc_counts> counts = make_rpc_counts(c);
  const auto start = rpc_clock::now();
  const auto end = start + c.duration;
  std::exception_ptr failure;
  const auto record = [&failure](std::exception_ptr e) {
    if (e && !failure) failure = e;
  };
  if (c.callers == c.connections) {
    for (auto& n : counts)
      asio::co_spawn(client_context, asio_rpc_sequential_caller(server_endpoint, request, end, n), record);
  } else {
    const std::size_t per_connection = counts.size() / static_cast<std::size_t>(c.connections);
    for (int i = 0; i < c.connections; ++i)
      asio::co_spawn(client_context,
                     asio_rpc_shared_connection(server_endpoint, request, end,
                                                std::span(counts).subspan(static_cast<std::size_t>(i) * per_connection, per_connection)),
                     record);
  }
  client_context.run();
  const auto elapsed = std::chrono::duration<double>(rpc_clock::now() - start).count();
  server_thread.join();
  if (failure) std::rethrow_exception(failure);

  return make_rpc_result(counts, elapsed, process_cpu_seconds() - cpu_before);
}

}  // namespace dmoe_bench
