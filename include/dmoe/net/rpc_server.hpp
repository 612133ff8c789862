// rpc_server: coroutine handlers by method over TCP; many connections, many requests in flight per connection,
// responses in completion order; limits with clear errors, fault injection, graceful shutdown.
#pragma once

#include <dmoe/async/async_event.hpp>
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
  explicit server_connection(tcp_socket s) : socket(std::move(s)), peer(socket.peer().to_string()) {}

  // Why the watchdog ended the connection (it shuts the socket down; the reader then sees the end of the stream).
  enum class expiry { none, idle, stalled };

  tcp_socket socket;
  std::string peer;
  // Responses wait here while one is written; the writer then sends all that wait in one vectored write.
  queued_frame* queue_head = nullptr;
  queued_frame* queue_tail = nullptr;
  bool writer_busy = false;
  std::vector<const_byte_span> batch;  // the pieces of the write in progress (capacity kept)
  async_event slot_freed;
  std::size_t in_flight = 0;
  std::uint64_t reserved = 0;  // budget taken for a large payload being received
  std::optional<frame_header> refused;
  bool broken = false;  // a write failed: the stream is unusable

  // Read and write deadlines, checked by the connection's watchdog rather than by a kernel timer per operation.
  bool reading = false;
  bool read_mid_frame = false;  // the read in progress waits for the rest of a frame
  steady_time read_deadline = no_deadline;
  bool writing = false;
  steady_time write_deadline = no_deadline;
  expiry expired = expiry::none;
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
    requests.spawn(watch_connection(conn));
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
      conn.read_mid_frame = reader.mid_frame();
      conn.read_deadline = deadline_after(conn.read_mid_frame ? options_.read_timeout : options_.idle_timeout);
      const byte_span room = reader.prepare();
      conn.reading = true;
      const operation_flag reading{conn.reading};
      const std::size_t received = co_await conn.socket.read_some(room);
      if (conn.expired == detail::server_connection::expiry::stalled)
        throw timeout_error(fmt::format("rpc peer {} sent part of a frame, then nothing for {} ms", conn.peer,
                                        options_.read_timeout.count()));
      if (received == 0 || conn.expired != detail::server_connection::expiry::none) co_return;  // closed, or idle
      reader.commit(received);
    }
  }

  // Clears a flag when the operation it marks ends, however it ends.
  struct operation_flag {
    bool& flag;
    ~operation_flag() { flag = false; }
  };

  // Enforces the connection's read and write timeouts: one timer per connection that sleeps until the earliest
  // deadline in force, instead of a kernel timer armed and cancelled with every read and write. Past a deadline it
  // shuts the socket down, which ends the read or write in progress. Stopped with the connection's requests.
  task<void> watch_connection(detail::server_connection& conn) {
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
      if (conn.reading && now >= conn.read_deadline) {
        if (!conn.read_mid_frame && conn.in_flight > 0) {
          conn.read_deadline = now + options_.idle_timeout;  // idle only counts when nothing is in flight
          continue;
        }
        conn.expired = conn.read_mid_frame ? expiry::stalled : expiry::idle;
        ::shutdown(conn.socket.native_handle(), SHUT_RDWR);
        co_return;
      }
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

  // Waits until the connection's writer is done with a queued frame.
  struct written {
    detail::queued_frame& frame;
    bool await_ready() const noexcept { return frame.done; }
    void await_suspend(std::coroutine_handle<> waiter) noexcept { frame.waiter = waiter; }
    void await_resume() const noexcept {}
  };

  // Writes what is queued on the connection, oldest first, many responses per vectored write (one system call
  // and fewer TCP segments for responses that complete together), until the queue is empty. Every queued
  // sender is released, also when the stream breaks or the connection stops.
  task<void> write_queued(detail::server_connection& conn) {
    constexpr std::size_t max_pieces = 512;  // well under IOV_MAX
    conn.writer_busy = true;
    // Handlers finishing in this loop iteration queue their responses first, to go out in the same write.
    const bool alone = co_await write_pass_.join();
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
          const std::size_t sent = alone ? detail::send_now(conn.socket.native_handle(), conn.batch, conn.peer) : 0;
          if (sent < total) {
            detail::drop_sent(conn.batch, sent);
            conn.write_deadline = deadline_after(options_.write_timeout);
            conn.writing = true;
            const operation_flag writing{conn.writing};
            co_await conn.socket.write_all(conn.batch);
          }
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

  io_context& ctx_;
  rpc_server_options options_;
  std::shared_ptr<fault_policy> faults_;
  tcp_listener listener_;
  endpoint local_;
  std::string local_text_;
  std::unordered_map<std::uint32_t, registered> handlers_;
  detail::write_pass write_pass_{ctx_};

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
