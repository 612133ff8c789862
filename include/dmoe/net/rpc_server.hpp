// rpc_server: coroutine handlers by method over TCP; many connections, many requests in flight per connection,
// responses in completion order; limits with clear errors, fault injection, graceful shutdown.
#pragma once

#include <dmoe/async/async_event.hpp>
#include <dmoe/async/async_semaphore.hpp>
#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/io_operation.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/tcp_listener.hpp>
#include <dmoe/async/tcp_socket.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/with_stop_token.hpp>
#include <dmoe/async/with_timeout.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/boxed.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/log.hpp>
#include <dmoe/net/detail/frame_pieces.hpp>
#include <dmoe/net/detail/send_now.hpp>
#include <dmoe/net/fault.hpp>
#include <dmoe/net/frame.hpp>
#include <dmoe/net/rpc_method.hpp>
#include <dmoe/net/size_text.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/core.h>
#include <sys/socket.h>

DMOE_BEGIN_NAMESPACE
namespace net {

// One request as a handler sees it; the handler may move the payload out.
struct rpc_request {
  endpoint peer;
  rpc_method method;
  std::uint64_t id = 0;
  byte_buffer payload;
};

// A handler's answer: `body`, then `views` sent without copying (e.g. a tensor's storage), kept alive by `owner`
// until written.
struct rpc_response {
  rpc_response() = default;
  rpc_response(byte_buffer bytes) : body(std::move(bytes)) {}

  byte_buffer body;
  std::vector<const_byte_span> views;
  std::shared_ptr<const void> owner;

  DMOE_LAZY std::uint64_t size() const noexcept {
    std::uint64_t total = body.size();
    for (const auto& view : views) total += view.size();
    return total;
  }
};

// Handlers run on the server's io_context; the request lives until the returned task finishes.
using rpc_handler = std::function<task<rpc_response>(rpc_request&)>;

struct rpc_server_options {
  frame_limits limits;                          // largest request and response payload (default 256 MiB)
  std::size_t max_connections = 1024;           // more are accepted, told why (go_away) and closed
  std::size_t max_connections_per_address = 256;  // one peer address's share of max_connections
  std::size_t max_in_flight_per_connection = 256;  // handlers running at once per connection
  // Requests read ahead of a free handler (they wait for one, holding their payload's budget; a cancel frame read
  // meanwhile ends one unrun); beyond, requests are not read (backpressure), cancel and go_away frames still are
  // until a request's header comes next. The default matches the client's own max_in_flight_per_connection.
  std::size_t max_waiting_per_connection = 1024;
  // Request payloads held and responses queued, at once; past it no connection is read until memory is freed
  // (backpressure). Handlers running may add at most one response each over it.
  std::uint64_t max_buffered_bytes = std::uint64_t{1} << 30;
  // One connection's share of it; 0: a quarter of max_buffered_bytes, but at least limits.max_payload.
  std::uint64_t max_buffered_bytes_per_connection = 0;
  // One peer address's share of it, over all its connections (so one peer cannot take it all by opening many);
  // 0: half of max_buffered_bytes, but at least a connection's share.
  std::uint64_t max_buffered_bytes_per_address = 0;
  std::chrono::milliseconds idle_timeout{60'000};  // a connection with nothing in flight and no bytes is closed
  std::chrono::milliseconds read_timeout{10'000};  // a frame must arrive within this plus its size at min_transfer_rate
  std::chrono::milliseconds write_timeout{30'000}; // a write must finish within this plus its size at min_transfer_rate
  std::uint64_t min_transfer_rate = std::uint64_t{1} << 20;  // bytes per second a peer must keep up mid-frame
  std::size_t receive_buffer = 64 * 1024;          // per connection; larger payloads are received in place
};

// Throws invalid_argument_error naming the first unusable option.
DMOE_DECL void validate(const rpc_server_options& o);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void validate(const rpc_server_options& o) {
  validate(o.limits, "rpc server");
  const auto fail = [](std::string_view what) {
    throw invalid_argument_error(dmoe::format("rpc server options: {}", what));
  };
  if (o.max_connections == 0 || o.max_connections_per_address == 0) fail("connection limits must be at least 1");
  if (o.max_in_flight_per_connection == 0) fail("max_in_flight_per_connection must be at least 1");
  if (o.max_in_flight_per_connection > (std::size_t{1} << 30) || o.max_waiting_per_connection > (std::size_t{1} << 30))
    fail("max_in_flight_per_connection and max_waiting_per_connection must be at most 2^30");
  if (o.max_buffered_bytes == 0) fail("max_buffered_bytes must be at least 1 B");
  if (o.min_transfer_rate == 0) fail("min_transfer_rate must be at least 1 B/s");
  if (o.idle_timeout.count() <= 0 || o.read_timeout.count() <= 0 || o.write_timeout.count() <= 0)
    fail("timeouts must be positive");
  if (o.receive_buffer < frame_header_size || o.receive_buffer > (std::size_t{1} << 30))
    fail(dmoe::format("receive_buffer of {} bytes is outside {} B to 1 GiB", o.receive_buffer, frame_header_size));
}
#endif  // DMOE_HEAVY_DEFINITIONS

namespace detail {
// A connection's state and its queued responses, defined with the server's code (behind DMOE_HEAVY_DEFINITIONS).
struct queued_frame;
struct server_connection;
}  // namespace detail

class rpc_server {
 public:
  struct counters {
    std::uint64_t connections_accepted = 0;
    std::uint64_t connections_refused = 0;  // over max_connections or max_connections_per_address
    std::uint64_t connections_dropped = 0;  // for a protocol error or a stall
    std::uint64_t connections_idle = 0;     // closed when idle (announced with go_away)
    std::uint64_t accept_failures = 0;      // accept() errors (e.g. out of descriptors)
    std::uint64_t requests = 0;
    std::uint64_t requests_refused = 0;     // over a size or buffer limit; their connection goes on
    std::uint64_t requests_cancelled = 0;   // stopped by the caller's cancel frame
    std::uint64_t handler_errors = 0;
    std::uint64_t unknown_methods = 0;
    std::uint64_t responses_dropped = 0;  // by fault injection
  };

  // Listens on `local` (port 0 picks one; see local_endpoint()). The server belongs to `ctx`'s thread. Throws
  // invalid_argument_error for unusable options (see validate()), system_error when it cannot listen.
  DMOE_LAZY rpc_server(io_context& ctx, const endpoint& local, rpc_server_options options = {},
             std::shared_ptr<fault_policy> faults = nullptr)
      : ctx_(ctx),
        options_(options),
        faults_(std::move(faults)),
        listener_(ctx, local),
        local_(listener_.local_endpoint()),
        local_text_(local_.to_string()) {
    validate(options_);
  }
  rpc_server(const rpc_server&) = delete;
  rpc_server& operator=(const rpc_server&) = delete;

  // Registers the handler of a method (replacing an earlier one).
  DMOE_DECL void add_handler(rpc_method method, rpc_handler handler);

  // Accepts and serves until shutdown() (after the grace period) or a stop request on the awaiting coroutine
  // (at once). Every coroutine the server started has finished when it returns, so the server may then be
  // destroyed. Accept failures (e.g. out of descriptors) are retried every 10 ms and logged once a second.
  DMOE_DECL task<void> serve();

  // Stops accepting; requests in flight get `grace` to finish (new ones on open connections are answered
  // "shutting down"); then serve() closes every connection and returns. Call on the server's thread.
  DMOE_DECL void shutdown(std::chrono::milliseconds grace = std::chrono::milliseconds(5000));

  const endpoint& local_endpoint() const noexcept { return local_; }
  std::size_t open_connections() const noexcept { return open_connections_; }
  // Requests read and not yet answered: running, waiting for a handler, or being refused.
  std::size_t requests_in_flight() const noexcept { return in_flight_; }
  std::uint64_t buffered_bytes() const noexcept { return buffered_; }
  const counters& stats() const noexcept { return stats_; }
  const rpc_server_options& options() const noexcept { return options_; }

 private:
  struct registered {
    std::string name;
    rpc_handler handler;
  };

  DMOE_DECL task<void> wait_drained();

  DMOE_DECL task<void> accept_loop();

  // Tells a connection over a limit why it is closed (go_away, nothing read), then waits briefly for the peer to
  // close first, so its requests in flight do not turn the close into a reset that loses the message.
  DMOE_DECL task<void> refuse_connection(tcp_socket socket, std::string message);

  DMOE_DECL task<void> serve_connection(tcp_socket socket);

  // Reads and dispatches requests until the stream ends. True when the peer ended it cleanly (EOF: it sends no
  // more requests but may wait for answers); false when the connection went idle or away.
  DMOE_DECL task<bool> read_requests(detail::server_connection& conn, task_group& requests);

  // Before the next frame's payload is stored: takes budget for a request (waiting for it, which stops reading
  // this connection), or refuses the request and skips its payload. False when the frame was skipped.
  DMOE_DECL task<bool> admit_next(detail::server_connection& conn, task_group& requests, frame_reader& reader,
                        frame_deadline& progress);

  DMOE_DECL std::uint64_t connection_share() const noexcept;

  // One peer address's share of the budget, over all its connections; never less than a connection's share.
  DMOE_DECL std::uint64_t address_share() const noexcept;

  // Answers a request the server will not take with limit_exceeded; the connection goes on. The answer holds one
  // of the connection's slots until it is written, so a peer that sends refused requests and never reads stops
  // being read like any other.
  DMOE_DECL void refuse(detail::server_connection& conn, task_group& requests, const frame_header& header, std::string why);

  DMOE_DECL task<void> send_refusal(detail::server_connection& conn, frame_header header, std::string why);

  // Resumes the awaiting coroutine after what is already ready to run on the context.
  struct next_iteration;

  // Clears a flag when the operation it marks ends, however it ends.
  struct operation_flag;

  // Enforces the connection's read and write deadlines: one timer per connection that sleeps until the earliest
  // deadline in force, instead of a kernel timer armed and cancelled with every read and write. Past a deadline it
  // shuts the socket down, which ends the read or write in progress. An idle connection is announced (go_away)
  // before it is closed, so a request crossing the announcement is retried by its caller, not lost.
  DMOE_DECL task<void> watch_connection(detail::server_connection& conn);

  DMOE_DECL void charge_buffered(detail::server_connection& conn, std::uint64_t bytes) noexcept;

  DMOE_DECL void release_buffered(detail::server_connection& conn, std::uint64_t bytes);

  DMOE_DECL void dispatch(detail::server_connection& conn, task_group& requests, frame f);

  // Releases what a request held when its coroutine ends, however it ends.
  struct request_scope;

  DMOE_DECL task<void> handle_request(detail::server_connection& conn, frame request, std::uint64_t charge,
                            std::stop_source cancel);

  DMOE_DECL static task<void> wait_event(async_event& event);
  DMOE_DECL static task<async_semaphore::permit> take_handler_slot(async_semaphore& slots);

  DMOE_DECL task<void> send_error(detail::server_connection& conn, frame_header request, frame_status status,
                        std::string message);

  DMOE_DECL task<void> send_frame(detail::server_connection& conn, frame_header header, const_byte_span body,
                        std::span<const const_byte_span> views);

  // Waits until the connection's writer is done with a queued frame.
  struct written;

  // Writes what is queued on the connection, oldest first, many responses per vectored write (one system call
  // and fewer TCP segments for responses that complete together), until the queue is empty. Every queued
  // sender is released, also when the stream breaks or the connection stops.
  DMOE_DECL task<void> write_queued(detail::server_connection& conn);

  io_context& ctx_;
  rpc_server_options options_;
  std::shared_ptr<fault_policy> faults_;
  tcp_listener listener_;
  endpoint local_;
  std::string local_text_;
  dmoe::detail::boxed<std::unordered_map<std::uint32_t, registered>> handlers_;
  detail::write_pass write_pass_{ctx_};

  task_group* accepting_ = nullptr;
  task_group* connections_ = nullptr;
  bool serving_ = false;
  bool draining_ = false;
  steady_time drain_deadline_{};
  async_event drained_;
  async_event memory_freed_;
  std::size_t open_connections_ = 0;
  dmoe::detail::boxed<std::unordered_map<std::string, std::size_t>> connections_by_address_;
  // budget in use per peer address
  dmoe::detail::boxed<std::unordered_map<std::string, std::uint64_t>> buffered_by_address_;
  std::size_t in_flight_ = 0;
  std::uint64_t buffered_ = 0;
  counters stats_;
};

}  // namespace net
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace net {

namespace detail {

// A response waiting to be written, in its sender's coroutine frame (never moved: `pieces` points at `head`).
struct queued_frame {
  queued_frame(const frame_header& header, const_byte_span body, std::span<const const_byte_span> views)
      : head(encode_frame_header(header)), pieces(head, body, views) {}
  queued_frame(const queued_frame&) = delete;
  queued_frame& operator=(const queued_frame&) = delete;

  frame_header_bytes head;
  frame_pieces pieces;
  queued_frame* next = nullptr;
  std::coroutine_handle<> waiter;  // resumed once the writer is done with the frame (sent, or given up)
  bool done = false;
};

// What one accepted connection shares between its reader, its request coroutines and its watchdog.
struct server_connection {
  server_connection(tcp_socket s, std::size_t handlers)
      : socket(std::move(s)), peer(socket.peer().to_string()), address(socket.peer().address()),
        handler_slots(handlers) {}

  // Why the watchdog ended the connection (it shuts the socket down; the reader then sees the end of the stream).
  enum class expiry { none, idle, stalled };

  tcp_socket socket;
  std::string peer;
  std::string address;  // the peer's address without its port: whose share a connection counts against
  // Responses wait here while one is written; the writer then sends all that wait in one vectored write.
  queued_frame* queue_head = nullptr;
  queued_frame* queue_tail = nullptr;
  bool writer_busy = false;
  std::vector<const_byte_span> batch;  // the pieces of the write in progress (capacity kept)
  async_event slot_freed;
  async_semaphore handler_slots;  // max_in_flight_per_connection handlers run at once; later requests wait here
  std::size_t in_flight = 0;      // requests read and not yet answered (running, waiting, being refused)
  bool more_requests_read = false;  // bytes of a later request are read already (the peer pipelines)
  std::uint64_t reserved = 0;  // budget taken for the next request, before its payload is stored
  std::uint64_t buffered = 0;  // this connection's share of the budget in use (requests and responses)
  std::uint64_t* address_buffered = nullptr;  // its address's share in use, over all its connections
  std::unordered_map<std::uint64_t, std::stop_source> running;  // handlers by request id, for cancel frames
  std::uint64_t last_request_id = 0;  // the highest id read: what go_away reports
  bool broken = false;                // a write failed: the stream is unusable
  bool going_away = false;            // go_away sent: requests are not read any more

  // Read and write deadlines, checked by the connection's watchdog rather than by a kernel timer per operation.
  bool reading = false;
  bool read_mid_frame = false;  // the read in progress waits for the rest of a frame
  steady_time read_deadline = no_deadline;
  bool writing = false;
  steady_time write_deadline = no_deadline;
  steady_time going_away_deadline = no_deadline;  // the peer should have closed by then
  expiry expired = expiry::none;
};

}  // namespace detail

// Resumes the awaiting coroutine after what is already ready to run on the context.
struct rpc_server::next_iteration {
  io_context& ctx;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> waiter) { ctx.schedule(waiter); }
  void await_resume() const noexcept {}
};

// Clears a flag when the operation it marks ends, however it ends.
struct rpc_server::operation_flag {
  bool& flag;
  ~operation_flag() { flag = false; }
};

// Releases what a request held when its coroutine ends, however it ends.
struct rpc_server::request_scope {
  rpc_server* server;
  detail::server_connection* conn;
  std::uint64_t charge;
  std::uint64_t id;
  const std::stop_source* cancel;
  ~request_scope();
};

// Waits until the connection's writer is done with a queued frame.
struct rpc_server::written {
  detail::queued_frame& frame;
  bool await_ready() const noexcept { return frame.done; }
  void await_suspend(std::coroutine_handle<> waiter) noexcept { frame.waiter = waiter; }
  void await_resume() const noexcept {}
};

DMOE_DEF void rpc_server::charge_buffered(detail::server_connection& conn, std::uint64_t bytes) noexcept {
  buffered_ += bytes;
  conn.buffered += bytes;
  *conn.address_buffered += bytes;
}

DMOE_DEF void rpc_server::refuse(detail::server_connection& conn, task_group& requests, const frame_header& header,
                                 std::string why) {
  ++stats_.requests_refused;
  log_debug("{}", why);
  if (header.kind != frame_kind::request) return;
  ++conn.in_flight;
  ++in_flight_;
  requests.spawn(send_refusal(conn, header, std::move(why)));
}

DMOE_DEF auto rpc_server::serve() -> task<void> {
  if (serving_) throw invalid_argument_error(dmoe::format("rpc server on {} is already serving", local_text_));
  serving_ = true;
  task_group accepting(ctx_);
  task_group connections(ctx_);
  accepting_ = &accepting;
  connections_ = &connections;
  if (!draining_) accepting.spawn(accept_loop());
  std::exception_ptr failure;
  try {
    co_await accepting.join();
  } catch (...) {
    failure = std::current_exception();
  }
  listener_.close();
  const std::stop_token token = co_await this_task::get_stop_token();
  if (draining_ && !token.stop_requested() && in_flight_ > 0) {
    try {
      co_await with_deadline(wait_drained(), drain_deadline_);
    } catch (const error&) {
      // the grace period ended, or the caller stopped the wait: what is left is cancelled below
    }
  }
  connections.request_stop();
  try {
    co_await connections.join();
  } catch (...) {
    if (!failure) failure = std::current_exception();
  }
  accepting_ = connections_ = nullptr;
  serving_ = false;
  if (failure) std::rethrow_exception(failure);
}

DMOE_DEF auto rpc_server::shutdown(std::chrono::milliseconds grace) -> void {
  if (draining_) return;
  draining_ = true;
  drain_deadline_ = deadline_after(grace);
  if (accepting_) accepting_->request_stop();
  if (in_flight_ == 0) drained_.set();
}

DMOE_DEF auto rpc_server::wait_drained() -> task<void> { co_await drained_.wait(); }

DMOE_DEF auto rpc_server::accept_loop() -> task<void> {
  steady_time next_report{};
  std::uint64_t unreported = 0;
  for (;;) {
    std::optional<tcp_socket> socket;
    std::string failure;
    try {
      socket.emplace(co_await listener_.accept());
    } catch (const cancelled_error&) {
      co_return;
    } catch (const std::exception& e) {
      failure = e.what();
    }
    if (!socket) {
      ++stats_.accept_failures;
      ++unreported;
      // Out of descriptors or memory fails every accept: one warning a second, not one per attempt.
      const steady_time now = std::chrono::steady_clock::now();
      if (now >= next_report) {
        log_warn("rpc server on {}: accept failed {} {} since the last report: {}", local_text_, unreported,
                 unreported == 1 ? "time" : "times", failure);
        unreported = 0;
        next_report = deadline_from(now, std::chrono::seconds(1));
      }
      try {
        // Give the process a moment instead of spinning; shutdown() may come meanwhile.
        co_await sleep_for(std::chrono::milliseconds(10));
      } catch (const cancelled_error&) {
        co_return;
      }
      continue;
    }
    const std::string address = socket->peer().address();
    std::size_t& from_address = (*connections_by_address_)[address];
    if (open_connections_ >= options_.max_connections || from_address >= options_.max_connections_per_address) {
      ++stats_.connections_refused;
      std::string message =
          open_connections_ >= options_.max_connections
              ? dmoe::format("rpc server on {} refused the connection from {}: {} connections open (limit {})",
                            local_text_, socket->peer(), open_connections_, options_.max_connections)
              : dmoe::format("rpc server on {} refused the connection from {}: {} connections open from {} (limit "
                            "{} per address)",
                            local_text_, socket->peer(), from_address, address,
                            options_.max_connections_per_address);
      if (from_address == 0) connections_by_address_->erase(address);
      log_info("{}", message);
      connections_->spawn(refuse_connection(std::move(*socket), std::move(message)));
      continue;
    }
    ++stats_.connections_accepted;
    ++open_connections_;
    ++from_address;
    connections_->spawn(serve_connection(std::move(*socket)));
  }
}

DMOE_DEF auto rpc_server::refuse_connection(tcp_socket socket, std::string message) -> task<void> {
  const frame_header_bytes head = encode_frame_header(
      frame_header{frame_kind::go_away, frame_status::limit_exceeded, 0, 0, 0, message.size()});
  const std::array<const_byte_span, 2> pieces{const_byte_span(head), as_bytes(message)};
  try {
    const steady_time deadline = deadline_after(std::chrono::milliseconds(1000));
    co_await socket.write_all(pieces, deadline);
    ::shutdown(socket.native_handle(), SHUT_WR);
    std::array<std::byte, 4096> sink;
    while (co_await socket.read_some(sink, deadline) > 0) {
    }
  } catch (const std::exception&) {
    // the peer is gone already, or did not close in time
  }
}

DMOE_DEF auto rpc_server::serve_connection(tcp_socket socket) -> task<void> {
  detail::server_connection conn(std::move(socket), options_.max_in_flight_per_connection);
  conn.address_buffered = &(*buffered_by_address_)[conn.address];  // unordered_map entries stay where they are
  task_group requests(ctx_);
  task_group watchdog(ctx_);
  watchdog.spawn(watch_connection(conn));
  bool peer_done = false;  // the peer half-closed: what is in flight still gets its answer
  try {
    peer_done = co_await read_requests(conn, requests);
  } catch (const cancelled_error&) {
    // the server is stopping
  } catch (const std::exception& e) {
    ++stats_.connections_dropped;
    log_debug("rpc server on {}: dropped connection from {}: {}", local_text_, conn.peer, e.what());
  }
  release_buffered(conn, std::exchange(conn.reserved, 0));
  // Otherwise the peer is gone or the stream is unusable: what is still running for it is stopped.
  if (!peer_done) requests.request_stop();
  try {
    co_await requests.join();
  } catch (const std::exception& e) {
    log_debug("rpc server on {}: request from {} failed: {}", local_text_, conn.peer, e.what());
  }
  watchdog.request_stop();
  co_await watchdog.join();
  --open_connections_;
  if (--(*connections_by_address_)[conn.address] == 0) {
    connections_by_address_->erase(conn.address);
    buffered_by_address_->erase(conn.address);
  }
}

DMOE_DEF auto rpc_server::read_requests(detail::server_connection& conn, task_group& requests) -> task<bool> {
  using expiry = detail::server_connection::expiry;
  frame_reader reader(options_.limits, options_.receive_buffer);
  frame_deadline progress;
  std::size_t dispatched_unyielded = 0;
  for (;;) {
    for (;;) {
      // Backpressure: requests wait in the buffer (and then in the socket) while the connection has as many
      // requests running and waiting for a handler as it may. Cancel and go_away frames are still read and acted
      // on: the reader reads on until the next frame's header shows a request.
      const std::size_t most = options_.max_in_flight_per_connection + options_.max_waiting_per_connection;
      bool read_more = false;
      bool waited = false;
      while (conn.in_flight >= most) {
        if (!reader.large_frame()) {
          const std::optional<frame_header> ahead = reader.peek(conn.peer);
          if (ahead && ahead->kind != frame_kind::request) break;
          if (!ahead) {  // no whole header yet (or a refused frame being skipped): only bytes can change that
            read_more = true;
            break;
          }
        }
        waited = true;
        conn.slot_freed.reset();
        co_await conn.slot_freed.wait();
      }
      if (waited) progress.restart(std::chrono::steady_clock::now());  // the peer was not the one waiting
      if (read_more) break;
      if (conn.reserved == 0) {
        const bool admitted = co_await admit_next(conn, requests, reader, progress);
        if (!admitted) continue;
      }
      std::optional<frame> next;
      try {
        next = reader.next(conn.peer);
      } catch (const limit_error& e) {
        // Over max_payload: the reader skips the payload, the stream goes on; only its caller learns why.
        refuse(conn, requests, *reader.refused_header(), e.what());
        continue;
      }
      if (!next) break;
      if (conn.going_away) continue;  // not read for processing: the peer retries it elsewhere
      conn.more_requests_read = reader.mid_frame();
      dispatch(conn, requests, std::move(*next));
      conn.more_requests_read = false;
      // Let the handlers just started charge their responses before more are read: every few requests, and
      // after each one near the budget (a handler's response is only known once it has run).
      if (++dispatched_unyielded >= 16 || buffered_ * 2 > options_.max_buffered_bytes ||
          conn.buffered * 2 > connection_share()) {
        dispatched_unyielded = 0;
        co_await next_iteration{ctx_};
      }
    }
    const steady_time now = std::chrono::steady_clock::now();
    progress.update(reader, now);
    conn.read_mid_frame = progress.active();
    conn.read_deadline = progress.active()
                             ? progress.deadline(reader, options_.read_timeout, options_.min_transfer_rate)
                             : deadline_from(now, options_.idle_timeout);
    if (conn.going_away) conn.read_deadline = std::min(conn.read_deadline, conn.going_away_deadline);
    const byte_span room = reader.prepare();
    conn.reading = true;
    const operation_flag reading{conn.reading};
    const std::size_t received = co_await conn.socket.read_some(room);
    if (conn.expired == expiry::stalled)
      throw timeout_error(dmoe::format("rpc server on {} dropped the connection from {}: a frame of {} was not "
                                      "complete within {} ms plus {} per second ({} still missing)",
                                      local_text_, conn.peer, size_text(reader.frame_in_progress_size()),
                                      options_.read_timeout.count(), size_text(options_.min_transfer_rate),
                                      size_text(reader.pending_payload())));
    if (conn.expired != expiry::none) co_return false;  // closed when idle
    if (received == 0) co_return !conn.going_away;
    reader.commit(received);
    if (reader.mid_frame()) progress.update(reader, std::chrono::steady_clock::now());
  }
}

DMOE_DEF auto rpc_server::admit_next(detail::server_connection& conn, task_group& requests, frame_reader& reader,
                      frame_deadline& progress) -> task<bool> {
  const std::optional<frame_header> header = reader.peek(conn.peer);
  if (!header) co_return true;
  // A client sends requests, cancels and go_away frames (the last two bounded by the header check); a response
  // is refused here, on its header, before next() would commit memory for its payload outside the budget.
  if (header->kind == frame_kind::response)
    throw protocol_error(dmoe::format("rpc server on {} got a response frame of {} from {}", local_text_,
                                     size_text(header->payload_size), conn.peer));
  if (header->kind != frame_kind::request || header->payload_size > options_.limits.max_payload)
    co_return true;  // next() delivers or reports it
  if (conn.going_away) {
    reader.skip_frame();
    co_return false;
  }
  const std::uint64_t size = header->payload_size;
  const std::uint64_t share = connection_share();
  if (size > share) {
    reader.skip_frame();
    refuse(conn, requests, *header,
           dmoe::format("rpc frame of {} exceeds the server's buffer limit {} from {}", size_text(size),
                       size_text(share), conn.peer));
    co_return false;
  }
  bool waited = false;
  const std::uint64_t address_share = this->address_share();
  while ((buffered_ > 0 && buffered_ + size > options_.max_buffered_bytes) ||
         (conn.buffered > 0 && conn.buffered + size > share) ||
         (*conn.address_buffered > 0 && *conn.address_buffered + size > address_share)) {
    waited = true;
    memory_freed_.reset();
    co_await memory_freed_.wait();
  }
  charge_buffered(conn, size);
  conn.reserved = size;
  if (waited) progress.restart(std::chrono::steady_clock::now());  // the peer was not the one waiting
  co_return true;
}

DMOE_DEF auto rpc_server::connection_share() const noexcept -> std::uint64_t {
  const std::uint64_t share = options_.max_buffered_bytes_per_connection != 0
                                  ? options_.max_buffered_bytes_per_connection
                                  : std::max(options_.max_buffered_bytes / 4, options_.limits.max_payload);
  return std::min(options_.max_buffered_bytes, share);
}

DMOE_DEF auto rpc_server::address_share() const noexcept -> std::uint64_t {
  const std::uint64_t share = options_.max_buffered_bytes_per_address != 0
                                  ? options_.max_buffered_bytes_per_address
                                  : options_.max_buffered_bytes / 2;
  return std::min(options_.max_buffered_bytes, std::max(share, connection_share()));
}

DMOE_DEF auto rpc_server::send_refusal(detail::server_connection& conn, frame_header header, std::string why)
    -> task<void> {
  const std::stop_source no_handler{std::nostopstate};
  request_scope scope{this, &conn, 0, header.request_id, &no_handler};  // frees the slot refuse() took
  co_await send_error(conn, header, frame_status::limit_exceeded, std::move(why));
}

DMOE_DEF auto rpc_server::watch_connection(detail::server_connection& conn) -> task<void> {
  using expiry = detail::server_connection::expiry;
  // Between operations nothing is due; a deadline set later is at least this far away.
  const auto period = std::max(std::chrono::milliseconds(1),
                               std::min({options_.read_timeout, options_.idle_timeout, options_.write_timeout}));
  for (;;) {
    steady_time next = deadline_after(period);
    if (conn.reading) next = std::min(next, conn.read_deadline);
    if (conn.writing) next = std::min(next, conn.write_deadline);
    try {
      co_await sleep_until(next);
    } catch (const cancelled_error&) {
      co_return;  // the connection is ending
    }
    const steady_time now = std::chrono::steady_clock::now();
    if (conn.writing && now >= conn.write_deadline) {
      // The write in progress fails (its sender logs it and marks the stream broken); the reader then ends.
      ::shutdown(conn.socket.native_handle(), SHUT_RDWR);
      co_return;
    }
    if (!conn.reading || now < conn.read_deadline) continue;
    if (conn.read_mid_frame && !conn.going_away) {
      conn.expired = expiry::stalled;
      ::shutdown(conn.socket.native_handle(), SHUT_RDWR);
      co_return;
    }
    if (conn.going_away) {
      // The peer did not close after go_away in time.
      conn.expired = expiry::idle;
      ::shutdown(conn.socket.native_handle(), SHUT_RDWR);
      co_return;
    }
    if (conn.in_flight > 0 || conn.writer_busy) {
      conn.read_deadline = deadline_from(now, options_.idle_timeout);  // idle only counts with nothing in flight
      continue;
    }
    ++stats_.connections_idle;
    conn.going_away = true;
    conn.going_away_deadline = deadline_from(now, options_.read_timeout);
    conn.read_deadline = conn.going_away_deadline;
    const std::string why = dmoe::format("rpc server on {} closed the connection from {}: idle for {} ms",
                                        local_text_, conn.peer, options_.idle_timeout.count());
    const frame_header go_away{frame_kind::go_away, frame_status::ok, 0, 0, conn.last_request_id, why.size()};
    try {
      co_await send_frame(conn, go_away, as_bytes(why), {});
    } catch (const cancelled_error&) {
      co_return;
    }
    // The peer sees the end of our stream after go_away; its close ends the reader.
    ::shutdown(conn.socket.native_handle(), SHUT_WR);
  }
}

DMOE_DEF auto rpc_server::release_buffered(detail::server_connection& conn, std::uint64_t bytes) -> void {
  if (bytes == 0) return;
  buffered_ -= bytes;
  conn.buffered -= bytes;
  *conn.address_buffered -= bytes;
  memory_freed_.set();
}

DMOE_DEF auto rpc_server::dispatch(detail::server_connection& conn, task_group& requests, frame f) -> void {
  switch (f.header.kind) {
    case frame_kind::request: {
      const std::uint64_t charge = std::exchange(conn.reserved, 0);
      conn.last_request_id = std::max(conn.last_request_id, f.header.request_id);
      ++conn.in_flight;
      ++in_flight_;
      ++stats_.requests;
      // Registered now, so a cancel frame read before the handler starts still reaches it.
      std::stop_source cancel;
      conn.running.insert_or_assign(f.header.request_id, cancel);
      requests.spawn(handle_request(conn, std::move(f), charge, std::move(cancel)));
      return;
    }
    case frame_kind::cancel: {
      // The caller gave up: its handler is asked to stop (an answer nobody waits for is wasted work).
      const auto found = conn.running.find(f.header.request_id);
      if (found != conn.running.end()) found->second.request_stop();
      return;
    }
    case frame_kind::go_away:
      return;  // the client closes; it sends no more requests
    case frame_kind::response:
      throw protocol_error(dmoe::format("rpc server on {} got a response frame from {}", local_text_, conn.peer));
  }
}

DMOE_INLINE rpc_server::request_scope::~request_scope() {
  server->release_buffered(*conn, charge);
  const auto found = conn->running.find(id);
  if (found != conn->running.end() && found->second == *cancel) conn->running.erase(found);
  --conn->in_flight;
  conn->slot_freed.set();
  if (--server->in_flight_ == 0 && server->draining_) server->drained_.set();
}

DMOE_DEF auto rpc_server::handle_request(detail::server_connection& conn, frame request, std::uint64_t charge,
                          std::stop_source cancel) -> task<void> {
  const frame_header header = request.header;
  request_scope scope{this, &conn, charge, header.request_id, &cancel};
  if (draining_) {
    std::string message = dmoe::format("rpc server on {} is shutting down", local_text_);
    co_await send_error(conn, header, frame_status::shutting_down, std::move(message));
    co_return;
  }
  // A handler slot of the connection, waiting in order for one; a cancel (or the connection's end) meanwhile ends
  // the request unrun.
  async_semaphore::permit slot;
  if (conn.handler_slots.try_acquire()) {
    slot = async_semaphore::permit(conn.handler_slots);
  } else {
    try {
      slot = co_await with_stop_token(take_handler_slot(conn.handler_slots), cancel.get_token());
    } catch (const cancelled_error&) {
      if (cancel.stop_requested()) ++stats_.requests_cancelled;
      co_return;
    }
    if (draining_) {
      std::string message = dmoe::format("rpc server on {} is shutting down", local_text_);
      co_await send_error(conn, header, frame_status::shutting_down, std::move(message));
      co_return;
    }
  }
  if (faults_ && faults_->stalled()) {
    // A stalled server holds the request until its connection or the server stops.
    async_event never;
    try {
      co_await with_stop_token(wait_event(never), cancel.get_token());
    } catch (const cancelled_error&) {
    }
    co_return;
  }
  const auto found = handlers_->find(header.method);
  if (found == handlers_->end()) {
    ++stats_.unknown_methods;
    std::string message =
        dmoe::format("rpc server on {} has no handler for method {:#010x}", local_text_, header.method);
    co_await send_error(conn, header, frame_status::unknown_method, std::move(message));
    co_return;
  }
  rpc_request req{conn.socket.peer(), rpc_method::from_id(header.method), header.request_id,
                  std::move(request.payload)};
  req.method.name = found->second.name;
  request.payload = byte_buffer();
  rpc_response response;
  std::string failure;
  bool failed = false;
  try {
    response = co_await with_stop_token(found->second.handler(req), cancel.get_token());
  } catch (const std::exception& e) {
    failed = true;
    failure = e.what();
  } catch (...) {
    failed = true;
    failure = "unknown exception";
  }
  if (cancel.stop_requested()) {
    ++stats_.requests_cancelled;
    co_return;  // the caller gave up: nobody waits for the answer
  }
  if (failed) {
    const std::stop_token token = co_await this_task::get_stop_token();
    if (token.stop_requested()) co_return;  // stopped with its connection: nobody to answer
    ++stats_.handler_errors;
    co_await send_error(conn, header, frame_status::handler_error, failure);
    co_return;
  }
  req.payload = byte_buffer();  // the request's memory goes before the response is sent
  release_buffered(conn, std::exchange(scope.charge, 0));
  const std::uint64_t size = response.size();
  if (size > options_.limits.max_payload) {
    std::string message = dmoe::format("rpc response of {} exceeds limit {} on {}", size_text(size),
                                      size_text(options_.limits.max_payload), local_text_);
    co_await send_error(conn, header, frame_status::limit_exceeded, std::move(message));
    co_return;
  }
  // Queued responses count against the budget until written, so a peer that does not read stops being read.
  charge_buffered(conn, size);
  scope.charge = size;
  frame_header out{frame_kind::response, frame_status::ok, header.method, 0, header.request_id, size};
  co_await send_frame(conn, out, response.body, response.views);
}

DMOE_DEF auto rpc_server::wait_event(async_event& event) -> task<void> { co_await event.wait(); }

DMOE_DEF auto rpc_server::take_handler_slot(async_semaphore& slots) -> task<async_semaphore::permit> {
  co_return co_await slots.acquire_permit();
}

DMOE_DEF auto rpc_server::send_error(detail::server_connection& conn, frame_header request, frame_status status,
                      std::string message) -> task<void> {
  frame_header out{frame_kind::response, status, request.method, 0, request.request_id, message.size()};
  co_await send_frame(conn, out, as_bytes(message), {});
}

DMOE_DEF auto rpc_server::send_frame(detail::server_connection& conn, frame_header header, const_byte_span body,
                      std::span<const const_byte_span> views) -> task<void> {
  if (faults_) {
    const fault_decision decision = faults_->on_send(local_text_, conn.peer);
    if (decision.drop) {
      ++stats_.responses_dropped;
      co_return;
    }
    if (decision.delay.count() > 0) co_await sleep_for(decision.delay);
  }
  if (conn.broken) co_return;
  detail::queued_frame frame(header, body, views);
  if (conn.queue_tail) {
    conn.queue_tail->next = &frame;
  } else {
    conn.queue_head = &frame;
  }
  conn.queue_tail = &frame;
  if (conn.writer_busy) {
    // The writer sends it with what else waits; its bytes may be in a write, so this wait cannot be cancelled
    // (the writer always finishes: a stopped connection cancels the write itself).
    co_await written{frame};
    co_return;
  }
  co_await write_queued(conn);
}

DMOE_DEF auto rpc_server::write_queued(detail::server_connection& conn) -> task<void> {
  constexpr std::size_t max_pieces = 512;  // well under IOV_MAX
  conn.writer_busy = true;
  // Handlers finishing in this loop iteration queue their responses first, to go out in the same write; a
  // connection with no other request in flight or read has nothing to wait for, and its response goes now (its
  // client can get on with it while this loop reads the other connections).
  if (conn.in_flight > 1 || conn.more_requests_read) co_await write_pass_.join();
  std::exception_ptr stopped;
  while (conn.queue_head) {
    conn.batch.clear();
    detail::queued_frame* first = conn.queue_head;
    detail::queued_frame* last = first;
    for (detail::queued_frame* f = first; f; f = f->next) {
      const auto pieces = f->pieces.span();
      if (f != first && conn.batch.size() + pieces.size() > max_pieces) break;
      conn.batch.insert(conn.batch.end(), pieces.begin(), pieces.end());
      last = f;
    }
    conn.queue_head = last->next;
    if (!conn.queue_head) conn.queue_tail = nullptr;
    last->next = nullptr;
    if (!conn.broken && !stopped) {
      bool failed = false;
      try {
        std::size_t total = 0;
        for (const auto& piece : conn.batch) total += piece.size();
        // What the socket takes now goes out at once (tcp_socket tries a send before the ring); the deadline
        // covers what has to wait.
        conn.write_deadline = deadline_from(
            deadline_after(options_.write_timeout),
            std::chrono::duration<double>(static_cast<double>(total) / static_cast<double>(options_.min_transfer_rate)));
        conn.writing = true;
        const operation_flag writing{conn.writing};
        co_await conn.socket.write_all(conn.batch);
      } catch (const cancelled_error&) {
        conn.broken = true;
        stopped = std::current_exception();
      } catch (const std::exception& e) {
        failed = true;
        log_debug("rpc server on {}: responses to {} not sent: {}", local_text_, conn.peer, e.what());
      }
      if (failed) {
        // Half a frame may have gone out: end the connection (its reader sees the shutdown).
        conn.broken = true;
        ::shutdown(conn.socket.native_handle(), SHUT_RDWR);
      }
    }
    for (detail::queued_frame* f = first; f;) {
      detail::queued_frame* next = f->next;  // read first: a released sender frees its frame
      f->done = true;
      if (f->waiter) ctx_.schedule(f->waiter);
      f = next;
    }
  }
  conn.writer_busy = false;
  if (stopped) std::rethrow_exception(stopped);
}

DMOE_DEF void rpc_server::add_handler(rpc_method method, rpc_handler handler) {
  (*handlers_)[method.id] = registered{std::string(method.name), std::move(handler)};
}

}  // namespace net
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
