// dmoe's side of dmoe_bench_rpc: an rpc_server with an echo handler and callers on one rpc_client, over loopback.
#pragma once

#include "rpc_case.hpp"

#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/net/rpc_client.hpp>
#include <dmoe/net/rpc_server.hpp>

#include <exception>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace dmoe_bench {

inline dmoe::task<dmoe::net::rpc_response> dmoe_rpc_echo(dmoe::net::rpc_request& request) {
  co_return dmoe::net::rpc_response(std::move(request.payload));
}

inline dmoe::task<void> dmoe_rpc_caller(dmoe::net::rpc_client& client, dmoe::endpoint server,
                                        const rpc_request_payload& request, rpc_clock::time_point end,
                                        rpc_counts& counts) {
  for (auto started = rpc_clock::now(); started < end; started = rpc_clock::now()) {
    const dmoe::byte_buffer response = co_await client.call(server, "echo", request.pieces());
    if (response.size() != request.size())
      throw dmoe::protocol_error(fmt::format("echo answered {} bytes for {}", response.size(), request.size()));
    counts.add(request.size() + response.size(), started);
  }
}

// Every caller on one client whose pool may open `connections` connections (a new one opens while all are busy,
// so N callers on N allowed connections get one each).
inline dmoe::task<void> dmoe_rpc_callers(dmoe::io_context& ctx, dmoe::endpoint server, const rpc_case& c,
                                         const rpc_request_payload& request, rpc_clock::time_point end,
                                         std::vector<rpc_counts>& counts) {
  dmoe::net::rpc_client_options options;
  options.max_connections_per_endpoint = static_cast<std::size_t>(c.connections);
  dmoe::net::rpc_client client(ctx, options);
  dmoe::task_group callers(ctx);
  for (int i = 0; i < c.callers; ++i) callers.spawn(dmoe_rpc_caller(client, server, request, end, counts[i]));
  std::exception_ptr failure;
  try {
    co_await callers.join();
  } catch (...) {
    failure = std::current_exception();
  }
  co_await client.close();
  if (failure) std::rethrow_exception(failure);
}

// Server on one thread, clients on another, as for Asio.
inline rpc_result run_dmoe_rpc(const rpc_case& c) {
  const rpc_request_payload request(c);
  const double cpu_before = process_cpu_seconds();
  dmoe::io_context server_context;
  dmoe::net::rpc_server server(server_context, dmoe::endpoint::loopback_v4(0));
  server.add_handler("echo", dmoe_rpc_echo);
  std::exception_ptr server_failure;
  std::thread server_thread([&] {
    const auto pin = rpc_pin(c, 0);
    try {
      server_context.run(server.serve());
    } catch (...) {
      server_failure = std::current_exception();
    }
  });

  const auto pin = rpc_pin(c, 1);
  dmoe::io_context client_context;
  std::vector<rpc_counts> counts = make_rpc_counts(c);
  const auto start = rpc_clock::now();
  std::exception_ptr client_failure;
  try {
    client_context.run(dmoe_rpc_callers(client_context, server.local_endpoint(), c, request, start + c.duration, counts));
  } catch (...) {
    client_failure = std::current_exception();
  }
  const auto elapsed = std::chrono::duration<double>(rpc_clock::now() - start).count();
  server_context.post([&server] { server.shutdown(std::chrono::milliseconds(0)); });
  server_thread.join();
  if (client_failure) std::rethrow_exception(client_failure);
  if (server_failure) std::rethrow_exception(server_failure);

  return make_rpc_result(counts, elapsed, process_cpu_seconds() - cpu_before);
}

}  // namespace dmoe_bench
