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
#include <dmoe/async/with_timeout.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/log.hpp>
#include <dmoe/net/detail/frame_pieces.hpp>
#include <dmoe/net/fault.hpp>
#include <dmoe/net/frame.hpp>
#include <dmoe/net/rpc_method.hpp>
#include <dmoe/net/size_text.hpp>

#include <array>
#include <chrono>
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

#include <fmt/format.h>
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

  std::uint64_t size() const noexcept {
    std::uint64_t total = body.size();
    for (const auto& view : views) total += view.size();
    return total;
  }
};

// Handlers run on the server's io_context; the request lives until the returned task finishes.
using rpc_handler = std::function<task<rpc_response>(rpc_request&)>;

struct rpc_server_options {
  frame_limits limits;                                          // largest request and response payload
  std::size_t max_connections = 1024;                           // more are accepted and closed at once
  std::size_t max_in_flight_per_connection = 256;               // beyond, the connection is not read (backpressure)
  std::uint64_t max_buffered_bytes = std::uint64_t{1} << 30;   // request and response payloads held at once
  std::chrono::milliseconds idle_timeout{60'000};  // a connection with nothing in flight and no bytes is closed
  std::chrono::milliseconds read_timeout{10'000};  // a peer silent this long in the middle of a frame is dropped
  std::chrono::milliseconds write_timeout{30'000}; // to send one response
  std::size_t receive_buffer = 64 * 1024;          // per connection; larger payloads are received in place
};

namespace detail {

// What one accepted connection shares between its reader and its request coroutines.
struct server_connection {
  explicit server_connection(tcp_socket s) : socket(std::move(s)), peer(socket.peer().to_string()) {}

  tcp_socket socket;
  std::string peer;
  async_semaphore write_lock{1};
  async_event slot_freed;
  std::size_t in_flight = 0;
  std::uint64_t reserved = 0;  // budget taken for a large payload being received
  std::optional<frame_header> refused;
  bool broken = false;  // a write failed: the stream is unusable
};

}  // namespace detail

class rpc_server {
 public:
  struct counters {
    std::uint64_t connections_accepted = 0;
    std::uint64_t connections_refused = 0;  // over max_connections
    std::uint64_t connections_dropped = 0;  // for a protocol error, a limit or a stall
    std::uint64_t requests = 0;
    std::uint64_t handler_errors = 0;
    std::uint64_t unknown_methods = 0;
    std::uint64_t responses_dropped = 0;  // by fault injection
  };

  // Listens on `local` (port 0 picks one; see local_endpoint()). The server belongs to `ctx`'s thread.
  rpc_server(io_context& ctx, const endpoint& local, rpc_server_options options = {},
             std::shared_ptr<fault_policy> faults = nullptr)
      : ctx_(ctx),
        options_(options),
        faults_(std::move(faults)),
        listener_(ctx, local),
        local_(listener_.local_endpoint()),
        local_text_(local_.to_string()) {
    if (options_.max_in_flight_per_connection == 0)
      throw invalid_argument_error("rpc server: max_in_flight_per_connection must be at least 1");
  }
  rpc_server(const rpc_server&) = delete;
  rpc_server& operator=(const rpc_server&) = delete;

  // Registers the handler of a method (replacing an earlier one).
  void add_handler(rpc_method method, rpc_handler handler) {
    handlers_[method.id] = registered{std::string(method.name), std::move(handler)};
  }

  // Accepts and serves until shutdown() (after the grace period) or a stop request on the awaiting coroutine
  // (at once). Every coroutine the server started has finished when it returns.
  task<void> serve() {
    if (serving_) throw invalid_argument_error(fmt::format("rpc server on {} is already serving", local_text_));
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

  // Stops accepting; requests in flight get `grace` to finish (new ones on open connections are answered
  // "shutting down"); then serve() closes every connection and returns. Call on the server's thread.
  void shutdown(std::chrono::milliseconds grace = std::chrono::milliseconds(5000)) {
    if (draining_) return;
    draining_ = true;
    drain_deadline_ = deadline_after(grace);
    if (accepting_) accepting_->request_stop();
    if (in_flight_ == 0) drained_.set();
  }

  const endpoint& local_endpoint() const noexcept { return local_; }
  std::size_t open_connections() const noexcept { return open_connections_; }
  std::size_t requests_in_flight() const noexcept { return in_flight_; }
  std::uint64_t buffered_bytes() const noexcept { return buffered_; }
  const counters& stats() const noexcept { return stats_; }
  const rpc_server_options& options() const noexcept { return options_; }

 private:
  struct registered {
    std::string name;
    rpc_handler handler;
  };

  task<void> wait_drained() { co_await drained_.wait(); }

  task<void> accept_loop() {
    for (;;) {
      std::optional<tcp_socket> socket;
      bool failed = false;
      try {
        socket.emplace(co_await listener_.accept());
      } catch (const cancelled_error&) {
        co_return;
      } catch (const std::exception& e) {
        log_warn("rpc server on {}: accept failed: {}", local_text_, e.what());
        failed = true;
      }
      if (failed) {
        // Out of descriptors or memory: give the process a moment instead of spinning.
        co_await sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      if (open_connections_ >= options_.max_connections) {
        ++stats_.connections_refused;
        std::string message = fmt::format("rpc server on {} refused the connection from {}: {} connections open (limit {})",
                                          local_text_, socket->peer(), open_connections_, options_.max_connections);
        log_info("{}", message);
        connections_->spawn(refuse_connection(std::move(*socket), std::move(message)));
        continue;
      }
      ++stats_.connections_accepted;
      ++open_connections_;
      connections_->spawn(serve_connection(std::move(*socket)));
    }
  }

  // Tells a connection over the limit why it is closed: a response to request 0 (no call has that id).
  task<void> refuse_connection(tcp_socket socket, std::string message) {
    const frame_header_bytes head = encode_frame_header(
        frame_header{frame_kind::response, frame_status::limit_exceeded, 0, 0, 0, message.size()});
    const std::array<const_byte_span, 2> pieces{const_byte_span(head), as_bytes(message)};
    try {
      co_await socket.write_all(pieces, deadline_after(std::chrono::milliseconds(1000)));
    } catch (const std::exception&) {
      // the peer is gone already
    }
  }

  task<void> serve_connection(tcp_socket socket) {
    detail::server_connection conn(std::move(socket));
    task_group requests(ctx_);
    try {
      co_await read_requests(conn, requests);
    } catch (const cancelled_error&) {
      // the server is stopping
    } catch (const std::exception& e) {
      ++stats_.connections_dropped;
      log_debug("rpc server on {}: dropped connection from {}: {}", local_text_, conn.peer, e.what());
    }
    release_buffered(std::exchange(conn.reserved, 0));
    // The peer is gone or the stream is unusable: what is still running for it is stopped.
    requests.request_stop();
    try {
      co_await requests.join();
    } catch (const std::exception& e) {
      log_debug("rpc server on {}: request from {} failed: {}", local_text_, conn.peer, e.what());
    }
    --open_connections_;
  }

  task<void> read_requests(detail::server_connection& conn, task_group& requests) {
    frame_reader reader(options_.limits, options_.receive_buffer);
    std::optional<frame_header> refused;
    std::string refusal;
    try {
      co_await read_loop(conn, requests, reader);
      co_return;
    } catch (const limit_error& e) {
      refused = conn.refused ? conn.refused : reader.refused_header();
      if (!refused) throw;
      refusal = e.what();
    }
    // A request too large to take: tell its caller why, then close (the rest of the stream cannot be trusted).
    if (refused->kind == frame_kind::request) {
      std::string message = refusal;
      co_await send_error(conn, *refused, frame_status::limit_exceeded, std::move(message));
    }
    throw limit_error(refusal);
  }

  task<void> read_loop(detail::server_connection& conn, task_group& requests, frame_reader& reader) {
    for (;;) {
      for (;;) {
        // Backpressure: frames wait in the buffer (and then in the socket) while the connection is at its limit.
        while (conn.in_flight >= options_.max_in_flight_per_connection) {
          conn.slot_freed.reset();
          co_await conn.slot_freed.wait();
        }
        if (conn.reserved == 0) {
          if (const auto large = reader.large_frame_ahead(conn.peer)) co_await reserve_large(conn, *large);
        }
        std::optional<frame> next = reader.next(conn.peer);
        if (!next) break;
        dispatch(conn, requests, std::move(*next));
      }
      const bool mid_frame = reader.mid_frame();
      const steady_time deadline = deadline_after(mid_frame ? options_.read_timeout : options_.idle_timeout);
      const byte_span room = reader.prepare();
      std::size_t received = 0;
      bool timed_out = false;
      try {
        received = co_await conn.socket.read_some(room, deadline);
      } catch (const timeout_error&) {
        timed_out = true;
      }
      if (timed_out) {
        if (mid_frame)
          throw timeout_error(fmt::format("rpc peer {} sent part of a frame, then nothing for {} ms", conn.peer,
                                          options_.read_timeout.count()));
        if (conn.in_flight > 0) continue;  // idle only counts when nothing is in flight
        co_return;
      }
      if (received == 0) co_return;  // the peer closed the connection
      reader.commit(received);
    }
  }

  // Waits until the server-wide budget has room for a large payload, then takes it.
  task<void> reserve_large(detail::server_connection& conn, const frame_header& header) {
    const std::uint64_t size = header.payload_size;
    if (size > options_.max_buffered_bytes) {
      conn.refused = header;
      throw limit_error(fmt::format("rpc frame of {} exceeds the server's buffer limit {} from {}", size_text(size),
                                    size_text(options_.max_buffered_bytes), conn.peer));
    }
    while (buffered_ > 0 && buffered_ + size > options_.max_buffered_bytes) {
      memory_freed_.reset();
      co_await memory_freed_.wait();
    }
    buffered_ += size;
    conn.reserved = size;
  }

  void release_buffered(std::uint64_t bytes) {
    if (bytes == 0) return;
    buffered_ -= bytes;
    memory_freed_.set();
  }

  void dispatch(detail::server_connection& conn, task_group& requests, frame f) {
    switch (f.header.kind) {
      case frame_kind::request: {
        std::uint64_t charge = std::exchange(conn.reserved, 0);
        if (charge == 0) {
          charge = f.payload.size();
          buffered_ += charge;
        }
        ++conn.in_flight;
        ++in_flight_;
        ++stats_.requests;
        requests.spawn(handle_request(conn, std::move(f), charge));
        return;
      }
      case frame_kind::cancel:
        return;  // reserved: handlers are stopped only with their connection or the server
      case frame_kind::response:
        throw protocol_error(fmt::format("rpc server on {} got a response frame from {}", local_text_, conn.peer));
    }
  }

  // Releases what a request held when its coroutine ends, however it ends.
  struct request_scope {
    rpc_server* server;
    detail::server_connection* conn;
    std::uint64_t charge;
    ~request_scope() {
      server->release_buffered(charge);
      --conn->in_flight;
      conn->slot_freed.set();
      if (--server->in_flight_ == 0 && server->draining_) server->drained_.set();
    }
  };

  task<void> handle_request(detail::server_connection& conn, frame request, std::uint64_t charge) {
    request_scope scope{this, &conn, charge};
    const frame_header header = request.header;
    if (draining_) {
      std::string message = fmt::format("rpc server on {} is shutting down", local_text_);
      co_await send_error(conn, header, frame_status::shutting_down, std::move(message));
      co_return;
    }
    if (faults_ && faults_->stalled()) {
      // A stalled server holds the request until its connection or the server stops.
      async_event never;
      try {
        co_await never.wait();
      } catch (const cancelled_error&) {
      }
      co_return;
    }
    const auto found = handlers_.find(header.method);
    if (found == handlers_.end()) {
      ++stats_.unknown_methods;
      std::string message =
          fmt::format("rpc server on {} has no handler for method {:#010x}", local_text_, header.method);
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
      response = co_await found->second.handler(req);
    } catch (const std::exception& e) {
      failed = true;
      failure = e.what();
    } catch (...) {
      failed = true;
      failure = "unknown exception";
    }
    if (failed) {
      const std::stop_token token = co_await this_task::get_stop_token();
      if (token.stop_requested()) co_return;  // stopped with its connection: nobody to answer
      ++stats_.handler_errors;
      co_await send_error(conn, header, frame_status::handler_error, failure);
      co_return;
    }
    req.payload = byte_buffer();  // the request's memory goes before the response is sent
    const std::uint64_t size = response.size();
    if (size > options_.limits.max_payload) {
      std::string message = fmt::format("rpc response of {} exceeds limit {} on {}", size_text(size),
                                        size_text(options_.limits.max_payload), local_text_);
      co_await send_error(conn, header, frame_status::limit_exceeded, std::move(message));
      co_return;
    }
    buffered_ += size;
    scope.charge += size;
    frame_header out{frame_kind::response, frame_status::ok, header.method, 0, header.request_id, size};
    co_await send_frame(conn, out, response.body, response.views);
  }

  task<void> send_error(detail::server_connection& conn, frame_header request, frame_status status,
                        std::string message) {
    frame_header out{frame_kind::response, status, request.method, 0, request.request_id, message.size()};
    co_await send_frame(conn, out, as_bytes(message), {});
  }

  task<void> send_frame(detail::server_connection& conn, frame_header header, const_byte_span body,
                        std::span<const const_byte_span> views) {
    if (faults_) {
      const fault_decision decision = faults_->on_send(local_text_, conn.peer);
      if (decision.drop) {
        ++stats_.responses_dropped;
        co_return;
      }
      if (decision.delay.count() > 0) co_await sleep_for(decision.delay);
    }
    if (conn.broken) co_return;
    const frame_header_bytes head = encode_frame_header(header);
    const detail::frame_pieces pieces(head, body, views);
    auto permit = co_await conn.write_lock.acquire_permit();
    if (conn.broken) co_return;
    bool failed = false;
    try {
      co_await conn.socket.write_all(pieces.span(), deadline_after(options_.write_timeout));
    } catch (const cancelled_error&) {
      conn.broken = true;
      throw;
    } catch (const std::exception& e) {
      failed = true;
      log_debug("rpc server on {}: response to {} not sent: {}", local_text_, conn.peer, e.what());
    }
    if (failed) {
      // Half a frame may have gone out: end the connection (its reader sees the shutdown).
      conn.broken = true;
      ::shutdown(conn.socket.native_handle(), SHUT_RDWR);
    }
  }

  io_context& ctx_;
  rpc_server_options options_;
  std::shared_ptr<fault_policy> faults_;
  tcp_listener listener_;
  endpoint local_;
  std::string local_text_;
  std::unordered_map<std::uint32_t, registered> handlers_;

  task_group* accepting_ = nullptr;
  task_group* connections_ = nullptr;
  bool serving_ = false;
  bool draining_ = false;
  steady_time drain_deadline_{};
  async_event drained_;
  async_event memory_freed_;
  std::size_t open_connections_ = 0;
  std::size_t in_flight_ = 0;
  std::uint64_t buffered_ = 0;
  counters stats_;
};

}  // namespace net
DMOE_END_NAMESPACE
