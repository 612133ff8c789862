// The demo: a TCP echo server and client on one io_context over loopback; prints what it did.
#include <dmoe/dmoe.hpp>

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace {

using clock_type = std::chrono::steady_clock;

double milliseconds_since(clock_type::time_point start) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
}

dmoe::byte_buffer message_of(std::size_t size, std::size_t seed) {
  dmoe::byte_buffer bytes(size);
  for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<std::byte>((i * 131 + seed * 7) & 0xff);
  return bytes;
}

// Echoes one connection until the client closes its side.
dmoe::task<std::size_t> serve_echo(dmoe::tcp_listener& listener) {
  dmoe::tcp_socket socket = co_await listener.accept();
  dmoe::byte_buffer buffer(64 * 1024);
  std::size_t echoed = 0;
  for (;;) {
    const std::size_t n = co_await socket.read_some(buffer);
    if (n == 0) break;
    co_await socket.write_all(dmoe::const_byte_span(buffer.data(), n));
    echoed += n;
  }
  co_return echoed;
}

struct client_report {
  std::size_t mismatches = 0;
  std::size_t bytes_sent = 0;
  std::size_t round_trips = 0;
  double ping_pong_ms = 0;
};

dmoe::task<void> send_message(dmoe::tcp_socket& socket, dmoe::const_byte_span message) {
  co_await socket.write_all(message);
}
dmoe::task<void> receive_message(dmoe::tcp_socket& socket, dmoe::byte_span into) { co_await socket.read_exactly(into); }

// Sends messages of growing size and checks each echo, then times small round trips.
dmoe::task<client_report> run_client(dmoe::endpoint server) {
  client_report report;
  dmoe::tcp_socket socket =
      co_await dmoe::tcp_socket::connect(*dmoe::io_context::current(), server, dmoe::deadline_after(std::chrono::seconds(5)));
  fmt::print("client: connected from {} to {}\n", socket.local_endpoint(), socket.peer());

  const std::vector<std::size_t> sizes{5, 1024, 64 * 1024, 1 << 20, 8 << 20};
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const dmoe::byte_buffer message = message_of(sizes[i], i);
    dmoe::byte_buffer echo(sizes[i]);
    const auto start = clock_type::now();
    // Writing and reading together: a large message does not fit in the socket buffers.
    co_await dmoe::when_all(send_message(socket, message), receive_message(socket, echo));
    const double ms = milliseconds_since(start);
    const bool same = echo == message;
    report.mismatches += same ? 0 : 1;
    report.bytes_sent += message.size();
    ++report.round_trips;
    fmt::print("client: {:>8} bytes echoed in {:8.3f} ms ({:7.1f} MB/s){}\n", message.size(), ms,
               static_cast<double>(message.size()) / 1e3 / (ms > 0 ? ms : 1e-9), same ? "" : "  MISMATCH");
  }

  constexpr int ping_pongs = 2000;
  dmoe::byte_buffer ping = message_of(64, 99);
  dmoe::byte_buffer pong(ping.size());
  const auto start = clock_type::now();
  for (int i = 0; i < ping_pongs; ++i) {
    ping[0] = static_cast<std::byte>(i);
    co_await socket.write_all(ping);
    co_await socket.read_exactly(pong);
    if (pong != ping) ++report.mismatches;
  }
  report.ping_pong_ms = milliseconds_since(start);
  report.round_trips += ping_pongs;
  report.bytes_sent += ping_pongs * ping.size();
  fmt::print("client: {} round trips of {} bytes in {:.1f} ms ({:.1f} us each, client and server on one thread)\n",
             ping_pongs, ping.size(), report.ping_pong_ms, report.ping_pong_ms * 1e3 / ping_pongs);
  socket.shutdown_write();
  std::byte end[1];
  if (co_await socket.read_some(end) != 0) ++report.mismatches;
  co_return report;
}

}  // namespace

int main() {
  fmt::print("dmoe {}.{}.{}: io_uring echo demo\n", DMOE_VERSION_MAJOR, DMOE_VERSION_MINOR, DMOE_VERSION_PATCH);
  try {
    dmoe::io_context ctx;
    dmoe::tcp_listener listener(ctx, dmoe::endpoint::loopback_v4());
    fmt::print("server: listening on {} (io_uring setup flags 0x{:x})\n", listener.local_endpoint(), ctx.setup_flags());
    const auto start = clock_type::now();
    auto [echoed, report] = ctx.run(dmoe::with_timeout(
        dmoe::when_all(serve_echo(listener), run_client(listener.local_endpoint())), std::chrono::seconds(60)));
    fmt::print("server: echoed {} bytes\n", echoed);
    fmt::print("total: {} round trips, {} bytes each way, {:.1f} ms, {} mismatches\n", report.round_trips,
               report.bytes_sent, milliseconds_since(start), report.mismatches);
    if (report.mismatches != 0 || echoed != report.bytes_sent) {
      fmt::print(stderr, "demo failed: echo did not match what was sent\n");
      return 1;
    }
    fmt::print("demo ok\n");
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "demo failed: {}\n", e.what());
    return 1;
  }
}
