// rpc_client: calls over a pool of TCP connections per server, many requests multiplexed on each by request id,
// with a deadline and a stop token per call; failures arrive as typed errors, never as hangs.
#pragma once

#include <dmoe/async/async_event.hpp>
#include <dmoe/async/async_semaphore.hpp>
#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/io_operation.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
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
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/core.h>
#include <sys/socket.h>

DMOE_BEGIN_NAMESPACE
namespace net {

struct rpc_client_options {
  frame_limits limits;                               // largest request and response payload (default 256 MiB)
  std::size_t max_connections_per_endpoint = 4;      // a new one opens while every open one is busy
  std::size_t max_in_flight_per_connection = 1024;   // more calls wait for a slot
  // Response payloads being received at once, over every connection; a response that needs more waits for
  // memory (its connection is not read meanwhile), and one larger than a server's share of it (below) fails its
  // call with limit_error.
  std::uint64_t max_buffered_bytes = std::uint64_t{1} << 30;
  // One server's share of it, over all its connections (so one server announcing large responses it never sends
  // cannot stall the responses of every other); 0: half of max_buffered_bytes, but at least limits.max_payload.
  std::uint64_t max_buffered_bytes_per_server = 0;
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds idle_timeout{60'000};    // a connection unused this long is closed
  std::chrono::milliseconds read_timeout{10'000};    // a response must arrive within this plus its size at min_transfer_rate
  std::chrono::milliseconds write_timeout{30'000};   // a write must finish within this plus its size at min_transfer_rate
  std::uint64_t min_transfer_rate = std::uint64_t{1} << 20;  // bytes per second the server must keep up mid-frame
  std::chrono::milliseconds default_timeout{60'000}; // the deadline of calls given none; max() means none
  std::size_t receive_buffer = 64 * 1024;            // per connection; larger payloads are received in place
};

// Throws invalid_argument_error naming the first unusable option.
DMOE_DECL void validate(const rpc_client_options& o);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void validate(const rpc_client_options& o) {
  validate(o.limits, "rpc client");
  const auto fail = [](std::string_view what) {
    throw invalid_argument_error(dmoe::format("rpc client options: {}", what));
  };
  if (o.max_connections_per_endpoint == 0 || o.max_in_flight_per_connection == 0)
    fail("connections per endpoint and calls per connection must be at least 1");
  if (o.max_buffered_bytes == 0) fail("max_buffered_bytes must be at least 1 B");
  if (o.min_transfer_rate == 0) fail("min_transfer_rate must be at least 1 B/s");
  if (o.connect_timeout.count() <= 0 || o.idle_timeout.count() <= 0 || o.read_timeout.count() <= 0 ||
      o.write_timeout.count() <= 0 || o.default_timeout.count() <= 0)
    fail("timeouts must be positive");
  if (o.receive_buffer < frame_header_size || o.receive_buffer > (std::size_t{1} << 30))
    fail(dmoe::format("receive_buffer of {} bytes is outside {} B to 1 GiB", o.receive_buffer, frame_header_size));
}
#endif  // DMOE_HEAVY_DEFINITIONS

namespace detail {
// The client's per-call and per-connection state, defined with its code (below, behind DMOE_HEAVY_DEFINITIONS).
struct pending_call;
struct outgoing_request;
struct client_connection;
struct call_deadline;
struct stop_call;
}  // namespace detail

// Belongs to one io_context and is used from its thread. Connections are opened on demand, reused, closed when
// idle and replaced after a failure. `co_await close()` before destroying the client: it stops every call still
// running (they fail with closed_error) and joins every coroutine the client started, so the client may be
// destroyed as soon as close() returns.
class rpc_client {
 public:
  struct counters {
    std::uint64_t calls = 0;
    std::uint64_t connects = 0;
    std::uint64_t connect_failures = 0;
    std::uint64_t connections_lost = 0;
    std::uint64_t late_responses = 0;     // for calls that had already given up (skipped unread when large)
    std::uint64_t requests_dropped = 0;   // by fault injection
    std::uint64_t request_writes = 0;     // vectored writes of requests (many requests share one under load)
    std::uint64_t cancels_sent = 0;       // cancel frames for calls that gave up after their request went out
    std::uint64_t retries = 0;            // calls sent again after their connection provably did not process them
  };

  // Throws invalid_argument_error for unusable options (see validate()).
  DMOE_LAZY explicit rpc_client(io_context& ctx, rpc_client_options options = {}, std::shared_ptr<fault_policy> faults = nullptr)
      : ctx_(ctx), options_(options), faults_(std::move(faults)), background_(ctx) {
    validate(options_);
  }
  rpc_client(const rpc_client&) = delete;
  rpc_client& operator=(const rpc_client&) = delete;

  // Calls `method` on `server` with the payload made of `pieces` (sent with one vectored write, no copy; they must
  // stay valid until the call returns) and returns the response payload. Ends by `deadline` (or after
  // default_timeout) and on a stop request of the awaiting coroutine or of `stop`; a call that gives up after its
  // request went out sends a cancel frame, so the server stops its handler. Errors: limit_error (payload over the
  // limit, here or at the server, or a response over the server's share of max_buffered_bytes), unavailable_error
  // (cannot connect, the server refused the connection or is shutting down), closed_error (connection lost, or the client closed),
  // remote_error (the handler threw, or no such method), timeout_error, cancelled_error. Giving up on one call
  // never fails another.
  DMOE_DECL task<byte_buffer> call(endpoint server, rpc_method method, std::span<const const_byte_span> pieces,
                         steady_time deadline = no_deadline, std::stop_token stop = {});

  DMOE_DECL task<byte_buffer> call(endpoint server, rpc_method method, const_byte_span payload,
                         steady_time deadline = no_deadline, std::stop_token stop = {});

  // Closes every connection, stops every call still running (they fail with closed_error) and waits until they
  // and every coroutine of the client have finished: the client may be destroyed once it returns. Several owners
  // may close it, also at once: each returns once the client is closed.
  DMOE_DECL task<void> close();

  // Open (or opening) connections to `server`.
  DMOE_DECL std::size_t connections(const endpoint& server) const;
  // Receive budget in use for large responses being received.
  std::uint64_t buffered_bytes() const noexcept { return buffered_; }
  // Calls in progress.
  std::size_t active_calls() const noexcept { return active_calls_; }
  const counters& stats() const noexcept { return stats_; }
  const rpc_client_options& options() const noexcept { return options_; }

 private:
  // Counts a call in progress (close() waits for none to be left).
  struct call_scope;

  // A later close() waits for the first one to finish.
  struct close_finished;

  struct calls_gone;

  // Takes a connection for the duration of one call.
  struct connection_use;

  // Enters a call's deadline in the client's deadline timer for the duration of the call.
  struct deadline_registration;

  // Forgets a call's pending entry when the call ends before its response (deadline, stop, failure).
  struct pending_entry;

  DMOE_DECL task<byte_buffer> call_on_connection(endpoint server, rpc_method method, std::span<const const_byte_span> pieces,
                                       std::uint64_t total);

  // Queues a request on its connection's writer and waits until it is written; false when it was not (the
  // connection failed first). A stop request takes the request back while it only waits in the queue; once its
  // bytes are in a write the frame is finished (never cut in half, which would break the stream for every other
  // call) and the stop takes effect after it.
  DMOE_DECL task<bool> send_request(std::shared_ptr<detail::client_connection> connection, rpc_method method, std::uint64_t id,
                          std::span<const const_byte_span> pieces, std::uint64_t total);

  // Waits, without a way out, until the writer is done with a request whose bytes it is writing.
  struct until_written;

  DMOE_DECL static void unqueue(detail::client_connection& c, detail::outgoing_request& out) noexcept;

  // Sends a cancel frame for a request the server may be working on, with the connection's next write.
  DMOE_DECL void send_cancel(const std::shared_ptr<detail::client_connection>& connection, std::uint64_t id);

  DMOE_DECL void start_writer(detail::client_connection& c);

  // One vectored write: the requests and cancel frames it carries, and the pieces still to send.
  struct write_batch;

  // Takes what waits on the connection (oldest first) into one batch; its requests can no longer be taken back.
  DMOE_DECL static void take_batch(detail::client_connection& c, write_batch& batch);

  // Releases the callers of a batch's requests: sent (all of it went out) or not.
  DMOE_DECL void release_batch(write_batch& batch, bool sent);

  // A send failed: the server may have answered before it closed (e.g. refusing a request), so reading goes on,
  // nothing more is sent, and the reader settles the waiting calls when the connection ends.
  DMOE_DECL void write_failed(detail::client_connection& c, const std::exception& e);

  // The caller whose request finds the writer idle sends at once what the socket takes (the lone caller's round
  // trip gains no loop iteration); whatever is left goes to a writer of its own, never in the caller's coroutine,
  // so one call's deadline never cuts a frame in half.
  DMOE_DECL task<void> write_first(std::shared_ptr<detail::client_connection> connection);

  // Writes what is queued on a connection (after `started`, a batch already begun), many requests and cancel
  // frames per vectored write, until the queue is empty.
  DMOE_DECL task<void> write_requests(std::shared_ptr<detail::client_connection> connection, write_batch started);

  struct flag_clear;

  // A transfer of `bytes` must end within `timeout` plus the bytes at min_transfer_rate.
  DMOE_LAZY steady_time transfer_deadline(std::chrono::milliseconds timeout, std::uint64_t bytes) const noexcept {
    return deadline_from(deadline_after(timeout), std::chrono::duration<double>(static_cast<double>(bytes) /
                                                                               static_cast<double>(options_.min_transfer_rate)));
  }

  DMOE_DECL [[noreturn]] static void throw_status(frame_status status, rpc_method method, const std::string& server,
                                        std::string_view text);

  // The least busy connection to `server`, or a new one while every open one is busy and the pool has room.
  DMOE_DECL std::shared_ptr<detail::client_connection> pick(const endpoint& server);

  DMOE_DECL void deadline_added(steady_time at);

  DMOE_DECL task<void> wait_deadline_change();

  // The client's deadline timer: one kernel timer for the earliest deadline of the calls in progress, re-armed
  // only when that passes or an earlier one comes (deadlines mostly come in order, each later than the last),
  // rather than one timer armed and cancelled per call. Stops the calls whose deadline has passed.
  DMOE_DECL task<void> expire_deadlines();

  // Enforces a connection's read, write and idle deadlines: one timer per connection that sleeps until the
  // earliest deadline in force, instead of a kernel timer armed and cancelled with every operation. Stopped with
  // the connection.
  DMOE_DECL task<void> watch_connection(detail::client_connection& c);

  // Takes a connection out of the pool: no new call picks it.
  DMOE_DECL void retire(detail::client_connection& c);

  // Marks a connection failed: out of the pool, its stream shut down, its waiting calls failed with `why`.
  DMOE_DECL void fail(detail::client_connection& c, const std::exception_ptr& why);

  DMOE_DECL task<void> run_connection(std::shared_ptr<detail::client_connection> connection);

  struct reading_flag;

  DMOE_DECL void release_receive(detail::client_connection& c);

  // One server's share of the receive budget, over all its connections.
  DMOE_DECL std::uint64_t server_share() const noexcept;

  DMOE_DECL std::uint64_t buffered_from(const endpoint& server) const;

  // Fails one call (its connection goes on).
  DMOE_DECL static void settle(detail::client_connection& c, std::uint64_t id, std::exception_ptr why);

  // Before a large response's payload is stored: skips it when nobody waits for it or it can never fit the
  // receive budget, else waits for budget (not reading this connection meanwhile) and takes it.
  DMOE_DECL task<void> admit_large(detail::client_connection& c, frame_reader& reader, frame_deadline& progress);

  // Hands each response to its call until the connection fails or the server closes it (then returns).
  DMOE_DECL task<void> read_responses(detail::client_connection& c);

  DMOE_DECL void deliver(detail::client_connection& c, frame f);

  // The server closes the connection: requests above its last id were never read. They are sent again on another
  // connection when it closes for being idle, and fail with unavailable_error when it refused the connection.
  DMOE_DECL void on_go_away(detail::client_connection& c, const frame& f);

  io_context& ctx_;
  rpc_client_options options_;
  std::shared_ptr<fault_policy> faults_;
  dmoe::detail::boxed<std::unordered_map<endpoint, std::vector<std::shared_ptr<detail::client_connection>>>> pool_;
  // Every connection whose coroutines still run, pooled or retired (a writer or a cancel may need it).
  dmoe::detail::boxed<std::unordered_map<detail::client_connection*, std::weak_ptr<detail::client_connection>>> owners_;
  bool closing_ = false;
  bool closed_ = false;                               // the first close() has finished
  std::vector<std::coroutine_handle<>> close_waiters_;  // later close() calls, waiting for it
  std::size_t active_calls_ = 0;
  std::coroutine_handle<> close_waiter_;  // close(), waiting for the last call to end
  std::uint64_t buffered_ = 0;  // receive budget in use
  // of it, per server (entries only while in use)
  dmoe::detail::boxed<std::unordered_map<endpoint, std::uint64_t>> buffered_by_server_;
  async_event memory_freed_;
  counters stats_;
  detail::write_pass write_pass_{ctx_};
  std::multimap<steady_time, detail::call_deadline*> deadlines_;  // of the calls in progress
  async_event deadline_changed_;                                   // an earlier deadline than the armed one came
  steady_time deadline_armed_ = no_deadline;
  bool expiring_ = false;                                          // expire_deadlines() is running
  task_group background_;  // last: destroyed first, after close() joined it
};

}  // namespace net
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace net {

namespace detail {

// A call waiting for its response; lives in the calling coroutine's frame.
struct pending_call {
  async_event done;
  frame_status status = frame_status::ok;
  byte_buffer payload;
  std::exception_ptr failure;  // the connection failed before the response came
  bool unprocessed = false;    // provably never processed by the server (not sent, or above its go_away): retry
};

// A request waiting to be written, in its caller's frame (never moved: `pieces` points at `head`).
struct outgoing_request {
  DMOE_DECL outgoing_request(const frame_header& header, std::span<const const_byte_span> payload)
      : head(encode_frame_header(header)), pieces(head, {}, payload) {}
  outgoing_request(const outgoing_request&) = delete;
  outgoing_request& operator=(const outgoing_request&) = delete;

  frame_header_bytes head;
  frame_pieces pieces;
  outgoing_request* next = nullptr;
  bool in_write = false;  // its bytes are in a write: it cannot be taken back
  bool done = false;      // the writer is done with it
  bool sent = false;      // and all of it went out
  async_event written;
  std::coroutine_handle<> waiter;  // for the wait that cannot be cancelled (see rpc_client::send_request)
};

// One pooled connection, shared by the calls using it and the coroutines that connect, read and write it.
struct client_connection {
  enum class state { connecting, ready, failed };

  client_connection(const endpoint& server, std::size_t slots_per_connection)
      : peer(server), peer_text(server.to_string()), slots(slots_per_connection) {}

  endpoint peer;
  std::string peer_text;
  std::string local_text;
  tcp_socket socket;
  state current = state::connecting;
  std::exception_ptr failure;
  async_event ready;  // set once connected or failed
  async_semaphore slots;
  std::unordered_map<std::uint64_t, pending_call*> pending;
  std::uint64_t next_id = 1;
  std::size_t users = 0;      // calls assigned to this connection
  bool write_broken = false;  // a send failed: only reading goes on
  bool retired = false;       // out of the pool (go_away, failure): no new call picks it
  std::optional<std::uint64_t> go_away_id;  // the server's last read request, once it announced its close

  // Requests wait here while one write is in progress; the writer then sends all that wait in one vectored write.
  outgoing_request* queue_head = nullptr;
  outgoing_request* queue_tail = nullptr;
  std::vector<frame_header_bytes> cancels;  // cancel frames to send with the next write
  bool writer_busy = false;

  // The read and write in progress and their deadlines, checked by the connection's watchdog (no kernel timer
  // per operation).
  bool reading = false;
  bool read_mid_frame = false;  // it waits for the rest of a frame
  steady_time read_deadline = no_deadline;
  bool writing = false;
  steady_time write_deadline = no_deadline;
  std::uint64_t reserved = 0;  // receive budget held for the large response in progress
};

// A call's deadline as the client's deadline timer sees it; lives in the calling coroutine's frame.
struct call_deadline {
  explicit call_deadline(steady_time when) : at(when) {}
  steady_time at;
  std::stop_source stop;  // requested when the deadline passes (or the caller's own stop token stops)
  bool expired = false;
  bool closed = false;  // stopped by close()
};

// Forwards a caller's stop request to its call.
struct stop_call {
  std::stop_source* call;
  void operator()() const noexcept { call->request_stop(); }
};

}  // namespace detail

// Counts a call in progress (close() waits for none to be left).
struct rpc_client::call_scope {
  rpc_client& client;
  explicit call_scope(rpc_client& c) : client(c) { ++client.active_calls_; }
  call_scope(const call_scope&) = delete;
  call_scope& operator=(const call_scope&) = delete;
  ~call_scope() {
    if (--client.active_calls_ == 0 && client.close_waiter_)
      client.ctx_.schedule(std::exchange(client.close_waiter_, nullptr));
  }
};

// A later close() waits for the first one to finish.
struct rpc_client::close_finished {
  rpc_client& client;
  bool await_ready() const noexcept { return client.closed_; }
  void await_suspend(std::coroutine_handle<> waiter) { client.close_waiters_.push_back(waiter); }
  void await_resume() const noexcept {}
};

struct rpc_client::calls_gone {
  rpc_client& client;
  bool await_ready() const noexcept { return client.active_calls_ == 0; }
  void await_suspend(std::coroutine_handle<> waiter) noexcept { client.close_waiter_ = waiter; }
  void await_resume() const noexcept {}
};

// Takes a connection for the duration of one call.
struct rpc_client::connection_use {
  std::shared_ptr<detail::client_connection> connection;
  explicit connection_use(std::shared_ptr<detail::client_connection> c) : connection(std::move(c)) {
    ++connection->users;
  }
  connection_use(const connection_use&) = delete;
  connection_use& operator=(const connection_use&) = delete;
  ~connection_use() { --connection->users; }
};

// Enters a call's deadline in the client's deadline timer for the duration of the call.
struct rpc_client::deadline_registration {
  rpc_client& client;
  detail::call_deadline& limit;
  std::multimap<steady_time, detail::call_deadline*>::iterator entry;
  DMOE_DECL deadline_registration(rpc_client& c, detail::call_deadline& d)
      : client(c), limit(d), entry(c.deadlines_.emplace_hint(c.deadlines_.end(), d.at, &d)) {
    client.deadline_added(d.at);
  }
  deadline_registration(const deadline_registration&) = delete;
  deadline_registration& operator=(const deadline_registration&) = delete;
  ~deadline_registration() {
    if (!limit.expired) client.deadlines_.erase(entry);
  }
};

// Forgets a call's pending entry when the call ends before its response (deadline, stop, failure).
struct rpc_client::pending_entry {
  detail::client_connection* connection;
  std::uint64_t id;
  ~pending_entry() { connection->pending.erase(id); }
};

// Waits, without a way out, until the writer is done with a request whose bytes it is writing.
struct rpc_client::until_written {
  detail::outgoing_request& out;
  bool await_ready() const noexcept { return out.done; }
  void await_suspend(std::coroutine_handle<> waiter) noexcept { out.waiter = waiter; }
  void await_resume() const noexcept {}
};

// One vectored write: the requests and cancel frames it carries, and the pieces still to send.
struct rpc_client::write_batch {
  std::vector<const_byte_span> pieces;
  std::vector<frame_header_bytes> cancels;
  detail::outgoing_request* first = nullptr;
  std::uint64_t total = 0;
};

struct rpc_client::flag_clear {
  bool& flag;
  ~flag_clear() { flag = false; }
};

struct rpc_client::reading_flag {
  detail::client_connection& c;
  ~reading_flag() { c.reading = false; }
};


DMOE_DEF auto rpc_client::call(endpoint server, rpc_method method, std::span<const const_byte_span> pieces,
                       steady_time deadline, std::stop_token stop) -> task<byte_buffer> {
  std::uint64_t total = 0;
  for (const auto& piece : pieces) total += piece.size();
  if (total > options_.limits.max_payload)
    throw limit_error(dmoe::format("rpc request of {} exceeds limit {} to {}", size_text(total),
                                  size_text(options_.limits.max_payload), server));
  if (closing_) throw closed_error(dmoe::format("rpc {} to {}: the client is closed", method.description(), server));
  if (deadline == no_deadline) deadline = deadline_after(options_.default_timeout);
  ++stats_.calls;
  const call_scope active(*this);
  const steady_time started = std::chrono::steady_clock::now();
  // The deadline stops the call through its own stop source, from one client-wide timer (see expire_deadlines).
  detail::call_deadline limit(deadline);
  const deadline_registration registration(*this, limit);
  std::optional<std::stop_callback<detail::stop_call>> caller_stop;
  if (stop.stop_possible()) caller_stop.emplace(stop, detail::stop_call{&limit.stop});
  std::optional<byte_buffer> response;
  bool timed_out = false;
  bool closed = false;
  try {
    response.emplace(co_await with_stop_token(call_on_connection(server, method, pieces, total), limit.stop.get_token()));
  } catch (const cancelled_error&) {
    if (limit.closed) {
      closed = true;
    } else if (limit.expired) {
      timed_out = true;  // a result that arrived despite the deadline is kept; a cancellation it caused is a timeout
    } else {
      throw;
    }
  }
  if (closed)
    throw closed_error(dmoe::format("rpc {} to {}: the client was closed during the call", method.description(), server));
  if (timed_out) {
    const auto waited = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started);
    throw timeout_error(dmoe::format("rpc {} to {} timed out after {:.0f} ms", method.description(), server,
                                    waited.count()));
  }
  co_return std::move(*response);
}

DMOE_DEF auto rpc_client::call(endpoint server, rpc_method method, const_byte_span payload,
                       steady_time deadline, std::stop_token stop) -> task<byte_buffer> {
  const std::array<const_byte_span, 1> pieces{payload};
  co_return co_await call(server, method, std::span<const const_byte_span>(pieces), deadline, std::move(stop));
}

DMOE_DEF auto rpc_client::close() -> task<void> {
  if (closing_) {
    co_await close_finished{*this};  // not cancellable, like the first close()
    co_return;
  }
  closing_ = true;
  std::vector<std::shared_ptr<detail::client_connection>> all;
  for (const auto& [server, list] : *pool_) all.insert(all.end(), list.begin(), list.end());
  const auto reason = std::make_exception_ptr(closed_error("rpc client closed"));
  for (const auto& connection : all) fail(*connection, reason);
  // Calls waiting for a connection, a slot or a write are stopped too, and awaited: they touch the client.
  std::vector<detail::call_deadline*> running;
  for (const auto& [at, call] : deadlines_) running.push_back(call);
  for (detail::call_deadline* call : running) {
    call->closed = true;
    call->stop.request_stop();
  }
  co_await calls_gone{*this};  // not cancellable: the client must outlive its calls
  background_.request_stop();
  std::exception_ptr failure;
  try {
    co_await background_.join();
  } catch (...) {
    failure = std::current_exception();
  }
  closed_ = true;
  for (const std::coroutine_handle<> waiter : std::exchange(close_waiters_, {})) ctx_.schedule(waiter);
  if (failure) std::rethrow_exception(failure);
}

DMOE_DEF auto rpc_client::call_on_connection(endpoint server, rpc_method method,
    std::span<const const_byte_span> pieces,
                                     std::uint64_t total) -> task<byte_buffer> {
  // A request its connection provably did not process (never written, or above the server's go_away) is sent
  // again on another connection, a bounded number of times.
  constexpr int max_attempts = 3;
  for (int attempt = 1;; ++attempt) {
    const connection_use use(pick(server));
    detail::client_connection& c = *use.connection;
    if (c.current == detail::client_connection::state::connecting) co_await c.ready.wait();
    if (c.current == detail::client_connection::state::failed) std::rethrow_exception(c.failure);
    auto slot = co_await c.slots.acquire_permit();
    if (c.current == detail::client_connection::state::failed) std::rethrow_exception(c.failure);
    const std::uint64_t id = c.next_id++;
    detail::pending_call pending;
    c.pending.emplace(id, &pending);
    const pending_entry entry{&c, id};
    bool send = true;
    if (faults_) {
      const fault_decision decision = faults_->on_send(c.local_text, c.peer_text);
      if (decision.drop) {
        send = false;
        ++stats_.requests_dropped;
      } else if (decision.delay.count() > 0) {
        co_await sleep_for(decision.delay);
      }
    }
    bool sent = false;
    if (send) sent = co_await send_request(use.connection, method, id, pieces, total);
    if (send && !sent) pending.unprocessed = true;  // never written: the server cannot have seen it
    bool gave_up = false;
    try {
      if (!pending.unprocessed) co_await pending.done.wait();
    } catch (const cancelled_error&) {
      gave_up = true;
    }
    if (gave_up) {
      // The server may be working on it: tell it to stop (an answer nobody waits for is wasted work).
      if (sent && c.pending.contains(id)) send_cancel(use.connection, id);
      throw cancelled_error(dmoe::format("rpc {} to {}: cancelled", method.description(), c.peer_text));
    }
    if (pending.unprocessed && attempt < max_attempts && !closing_) {
      ++stats_.retries;
      continue;
    }
    if (pending.failure) std::rethrow_exception(pending.failure);
    if (pending.unprocessed) {
      if (c.failure) std::rethrow_exception(c.failure);
      throw closed_error(dmoe::format("rpc {} to {}: the request could not be written after {} attempts",
                                     method.description(), c.peer_text, attempt));
    }
    if (pending.status == frame_status::ok) co_return std::move(pending.payload);
    throw_status(pending.status, method, c.peer_text, as_string_view(pending.payload));
  }
}

DMOE_DEF auto rpc_client::send_request(std::shared_ptr<detail::client_connection> connection, rpc_method method,
    std::uint64_t id,
                        std::span<const const_byte_span> pieces, std::uint64_t total) -> task<bool> {
  detail::client_connection& c = *connection;
  if (c.current == detail::client_connection::state::failed || c.write_broken || c.retired) co_return false;
  detail::outgoing_request out(frame_header{frame_kind::request, frame_status::ok, method.id, 0, id, total}, pieces);
  if (c.queue_tail) {
    c.queue_tail->next = &out;
  } else {
    c.queue_head = &out;
  }
  c.queue_tail = &out;
  if (!c.writer_busy && c.current == detail::client_connection::state::ready) {
    co_await write_first(connection);
  } else {
    start_writer(c);
  }
  bool stopped = false;
  try {
    co_await out.written.wait();
  } catch (const cancelled_error&) {
    stopped = true;
  }
  if (stopped) {
    if (!out.in_write && !out.done) {
      unqueue(c, out);
      throw cancelled_error(dmoe::format("rpc {} to {}: cancelled before it was sent", method.description(),
                                        c.peer_text));
    }
    co_await until_written{out};  // bounded by the connection's write deadline
    if (out.sent) send_cancel(connection, id);
    throw cancelled_error(dmoe::format("rpc {} to {}: cancelled", method.description(), c.peer_text));
  }
  co_return out.sent;
}

DMOE_DEF auto rpc_client::unqueue(detail::client_connection& c, detail::outgoing_request& out) noexcept -> void {
  detail::outgoing_request* before = nullptr;
  for (detail::outgoing_request* r = c.queue_head; r; before = r, r = r->next) {
    if (r != &out) continue;
    (before ? before->next : c.queue_head) = r->next;
    if (c.queue_tail == r) c.queue_tail = before;
    r->next = nullptr;
    return;
  }
}

DMOE_DEF auto rpc_client::send_cancel(const std::shared_ptr<detail::client_connection>& connection,
    std::uint64_t id) -> void {
  if (!connection || closing_) return;
  detail::client_connection& c = *connection;
  if (c.current == detail::client_connection::state::failed || c.write_broken) return;
  c.cancels.push_back(encode_frame_header(frame_header{frame_kind::cancel, frame_status::ok, 0, 0, id, 0}));
  ++stats_.cancels_sent;
  start_writer(c);
}

DMOE_DEF auto rpc_client::start_writer(detail::client_connection& c) -> void {
  if (c.writer_busy || c.current != detail::client_connection::state::ready) return;
  const auto owner = owners_->find(&c);
  if (owner == owners_->end()) return;
  c.writer_busy = true;
  background_.spawn(write_requests(owner->second.lock(), {}));
}

DMOE_DEF auto rpc_client::take_batch(detail::client_connection& c, write_batch& batch) -> void {
  constexpr std::size_t max_pieces = 512;  // well under IOV_MAX
  batch = {};
  batch.cancels.swap(c.cancels);
  detail::outgoing_request* last = nullptr;
  for (detail::outgoing_request* r = c.queue_head; r; r = r->next) {
    const auto pieces = r->pieces.span();
    if (last && batch.pieces.size() + pieces.size() > max_pieces) break;
    batch.pieces.insert(batch.pieces.end(), pieces.begin(), pieces.end());
    r->in_write = true;
    last = r;
  }
  for (const auto& head : batch.cancels) batch.pieces.emplace_back(head);
  if (last) {
    batch.first = c.queue_head;
    c.queue_head = last->next;
    if (!c.queue_head) c.queue_tail = nullptr;
    last->next = nullptr;
  }
  for (const auto& piece : batch.pieces) batch.total += piece.size();
}

DMOE_DEF auto rpc_client::release_batch(write_batch& batch, bool sent) -> void {
  for (detail::outgoing_request* r = std::exchange(batch.first, nullptr); r;) {
    detail::outgoing_request* next = r->next;  // read first: a released caller frees its request
    r->done = true;
    r->sent = sent;
    r->written.set();
    if (r->waiter) ctx_.schedule(std::exchange(r->waiter, nullptr));
    r = next;
  }
}

DMOE_DEF auto rpc_client::write_failed(detail::client_connection& c, const std::exception& e) -> void {
  log_debug("rpc client: requests to {} not sent: {}", c.peer_text, e.what());
  c.write_broken = true;
  retire(c);
  if (c.socket.is_open()) ::shutdown(c.socket.native_handle(), SHUT_WR);
}

DMOE_DEF auto rpc_client::write_first(std::shared_ptr<detail::client_connection> connection) -> task<void> {
  detail::client_connection& c = *connection;
  c.writer_busy = true;
  // Calls made in this loop iteration queue their requests first, to go out in the same write; a connection with
  // no other call in flight has nothing to wait for, and its request goes now.
  bool alone = true;
  if (c.pending.size() > 1) alone = co_await write_pass_.join();
  write_batch batch;
  take_batch(c, batch);
  if (!batch.first && batch.cancels.empty()) {
    c.writer_busy = false;
    co_return;
  }
  std::size_t sent = 0;
  bool failed = c.current == detail::client_connection::state::failed || c.write_broken;
  if (!failed && alone) {
    ++stats_.request_writes;
    try {
      sent = detail::send_now(c.socket.native_handle(), batch.pieces, c.peer_text);
    } catch (const std::exception& e) {
      write_failed(c, e);
      failed = true;
    }
  }
  if (failed || sent == batch.total) {
    release_batch(batch, !failed);
    c.writer_busy = false;
    if (c.queue_head || !c.cancels.empty()) start_writer(c);
    co_return;
  }
  if (sent > 0) {
    detail::drop_sent(batch.pieces, sent);
    batch.total -= sent;
  }
  background_.spawn(write_requests(std::move(connection), std::move(batch)));
}

DMOE_DEF auto rpc_client::write_requests(std::shared_ptr<detail::client_connection> connection,
    write_batch started) -> task<void> {
  detail::client_connection& c = *connection;
  if (!started.first && started.cancels.empty()) {
    // Calls made in this loop iteration queue their requests first, to go out in the same write.
    co_await write_pass_.join();
  }
  write_batch batch = std::move(started);
  for (;;) {
    if (!batch.first && batch.cancels.empty()) {
      if (!c.queue_head && c.cancels.empty()) break;
      take_batch(c, batch);
    }
    bool ok = false;
    if (c.current != detail::client_connection::state::failed && !c.write_broken) {
      try {
        // What the socket takes now goes out at once (tcp_socket tries a send before the ring); the deadline
        // covers what has to wait.
        ++stats_.request_writes;
        c.write_deadline = transfer_deadline(options_.write_timeout, batch.total);
        c.writing = true;
        const flag_clear writing{c.writing};
        co_await c.socket.write_all(batch.pieces);
        ok = true;
      } catch (const std::exception& e) {
        write_failed(c, e);
      }
    }
    release_batch(batch, ok);
    batch = {};
  }
  c.writer_busy = false;
}

DMOE_DEF auto rpc_client::throw_status(frame_status status, rpc_method method, const std::string& server,
                         std::string_view text) -> void {
    switch (status) {
      case frame_status::handler_error:
        throw remote_error(dmoe::format("rpc {} on {} failed: {}", method.description(), server, text));
      case frame_status::unknown_method:
        throw remote_error(dmoe::format("rpc {} on {}: {}", method.description(), server, text));
      case frame_status::limit_exceeded:
        throw limit_error(dmoe::format("rpc {} on {}: {}", method.description(), server, text));
      case frame_status::shutting_down:
        throw unavailable_error(dmoe::format("rpc {} on {}: {}", method.description(), server, text));
      case frame_status::bad_request:
      case frame_status::ok: break;
    }
    throw protocol_error(dmoe::format("rpc {} on {}: {}", method.description(), server, text));
  }

DMOE_DEF auto rpc_client::pick(const endpoint& server) -> std::shared_ptr<detail::client_connection> {
  auto& list = (*pool_)[server];
  std::shared_ptr<detail::client_connection> best;
  for (const auto& c : list)
    if (!best || c->users < best->users) best = c;
  if (best && (best->users == 0 || list.size() >= options_.max_connections_per_endpoint)) return best;
  auto fresh = std::make_shared<detail::client_connection>(server, options_.max_in_flight_per_connection);
  list.push_back(fresh);
  (*owners_)[fresh.get()] = fresh;
  ++stats_.connects;
  background_.spawn(run_connection(fresh));
  return fresh;
}

DMOE_DEF auto rpc_client::deadline_added(steady_time at) -> void {
  if (!expiring_) {
    expiring_ = true;
    background_.spawn(expire_deadlines());
  } else if (at < deadline_armed_) {
    deadline_changed_.set();  // the timer must wake sooner
  }
}

DMOE_DEF auto rpc_client::wait_deadline_change() -> task<void> { co_await deadline_changed_.wait(); }

DMOE_DEF auto rpc_client::expire_deadlines() -> task<void> {
  try {
    for (;;) {
      const steady_time now = std::chrono::steady_clock::now();
      while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
        detail::call_deadline* due = deadlines_.begin()->second;
        deadlines_.erase(deadlines_.begin());
        due->expired = true;
        due->stop.request_stop();
      }
      deadline_changed_.reset();
      // Calls without a deadline sort last and never arm the timer.
      deadline_armed_ = deadlines_.empty() ? no_deadline : deadlines_.begin()->first;
      if (deadline_armed_ == no_deadline) {
        co_await deadline_changed_.wait();
        continue;
      }
      try {
        co_await with_deadline(wait_deadline_change(), deadline_armed_);
      } catch (const timeout_error&) {
        // the earliest deadline has come
      }
    }
  } catch (const cancelled_error&) {
    // the client is closing
  }
  deadline_armed_ = no_deadline;
  expiring_ = false;
}

DMOE_DEF auto rpc_client::watch_connection(detail::client_connection& c) -> task<void> {
  // Between reads nothing is due; a deadline set later is at least this far away.
  const auto period = std::max(std::chrono::milliseconds(1),
                               std::min({options_.read_timeout, options_.idle_timeout, options_.write_timeout}));
  for (;;) {
    steady_time next = deadline_after(period);
    if (c.reading) next = std::min(next, c.read_deadline);
    if (c.writing) next = std::min(next, c.write_deadline);
    try {
      co_await sleep_until(next);
    } catch (const cancelled_error&) {
      co_return;
    }
    if (c.current == detail::client_connection::state::failed) co_return;
    const steady_time now = std::chrono::steady_clock::now();
    if (c.writing && now >= c.write_deadline) {
      ++stats_.connections_lost;
      fail(c, std::make_exception_ptr(closed_error(dmoe::format(
                  "rpc connection {} -> {} closed by this client: the server did not take a write within {} ms "
                  "plus {} per second",
                  c.local_text, c.peer_text, options_.write_timeout.count(), size_text(options_.min_transfer_rate)))));
      co_return;
    }
    if (!c.reading || now < c.read_deadline) continue;
    if (c.read_mid_frame) {
      ++stats_.connections_lost;
      fail(c, std::make_exception_ptr(closed_error(dmoe::format(
                  "rpc connection {} -> {} closed by this client: a response frame was not complete within {} ms "
                  "plus {} per second",
                  c.local_text, c.peer_text, options_.read_timeout.count(), size_text(options_.min_transfer_rate)))));
      co_return;
    }
    if (c.users > 0 || !c.pending.empty() || c.writer_busy) {
      c.read_deadline = deadline_from(now, options_.idle_timeout);  // idle only counts when nothing is in flight
      continue;
    }
    // Out of the pool at once, so no call picks the connection while its reader winds down.
    fail(c, std::make_exception_ptr(closed_error(
                dmoe::format("rpc connection {} -> {} closed by this client when idle", c.local_text, c.peer_text))));
    co_return;
  }
}

DMOE_DEF auto rpc_client::retire(detail::client_connection& c) -> void {
  c.retired = true;
  const auto found = pool_->find(c.peer);
  if (found == pool_->end()) return;
  std::erase_if(found->second, [&](const auto& p) { return p.get() == &c; });
  if (found->second.empty()) pool_->erase(found);
}

DMOE_DEF auto rpc_client::fail(detail::client_connection& c, const std::exception_ptr& why) -> void {
  if (c.current == detail::client_connection::state::failed) return;
  c.current = detail::client_connection::state::failed;
  c.failure = why;
  retire(c);
  if (c.socket.is_open()) ::shutdown(c.socket.native_handle(), SHUT_RDWR);
  for (auto& [id, call] : c.pending) {
    // Above the server's go_away: provably never read, so the call may go elsewhere.
    if (c.go_away_id && id > *c.go_away_id) {
      call->unprocessed = true;
    } else {
      call->failure = why;
    }
    call->done.set();
  }
  c.pending.clear();
  // Requests still queued (not in a write) will never be written: their callers learn it now.
  for (detail::outgoing_request* r = std::exchange(c.queue_head, nullptr); r;) {
    detail::outgoing_request* next = std::exchange(r->next, nullptr);
    r->done = true;
    r->written.set();
    r = next;
  }
  c.queue_tail = nullptr;
  c.ready.set();
}

DMOE_DEF auto rpc_client::run_connection(std::shared_ptr<detail::client_connection> connection) -> task<void> {
  detail::client_connection& c = *connection;
  std::exception_ptr failure;
  try {
    c.socket = co_await tcp_socket::connect(ctx_, c.peer, deadline_after(options_.connect_timeout));
    c.local_text = c.socket.local_endpoint().to_string();
  } catch (const cancelled_error&) {
    failure = std::make_exception_ptr(closed_error(dmoe::format("rpc connect to {}: the client closed", c.peer_text)));
  } catch (const std::exception& e) {
    ++stats_.connect_failures;
    failure = std::make_exception_ptr(unavailable_error(dmoe::format("rpc connect to {} failed: {}", c.peer_text, e.what())));
  }
  if (failure) {
    fail(c, failure);
    owners_->erase(&c);
    co_return;
  }
  c.current = detail::client_connection::state::ready;
  c.ready.set();
  if (c.queue_head) start_writer(c);
  task_group watchdog(ctx_);
  watchdog.spawn(watch_connection(c));
  try {
    co_await read_responses(c);
    failure = std::make_exception_ptr(closed_error(
        dmoe::format("rpc connection {} -> {} closed by the server", c.local_text, c.peer_text)));
  } catch (const cancelled_error&) {
    failure = std::make_exception_ptr(closed_error(dmoe::format("rpc connection to {}: the client closed", c.peer_text)));
  } catch (const std::exception& e) {
    ++stats_.connections_lost;
    failure = std::make_exception_ptr(closed_error(dmoe::format("rpc connection {} -> {} lost: {}", c.local_text,
                                                               c.peer_text, e.what())));
  }
  release_receive(c);
  fail(c, failure);
  watchdog.request_stop();
  co_await watchdog.join();
  owners_->erase(&c);
}

DMOE_DEF auto rpc_client::release_receive(detail::client_connection& c) -> void {
  if (c.reserved == 0) return;
  const std::uint64_t bytes = std::exchange(c.reserved, 0);
  buffered_ -= bytes;
  const auto server = buffered_by_server_->find(c.peer);
  if (server != buffered_by_server_->end() && (server->second -= bytes) == 0) buffered_by_server_->erase(server);
  memory_freed_.set();
}

DMOE_DEF auto rpc_client::server_share() const noexcept -> std::uint64_t {
  const std::uint64_t share = options_.max_buffered_bytes_per_server != 0
                                  ? options_.max_buffered_bytes_per_server
                                  : std::max(options_.max_buffered_bytes / 2, options_.limits.max_payload);
  return std::min(options_.max_buffered_bytes, share);
}

DMOE_DEF auto rpc_client::settle(detail::client_connection& c, std::uint64_t id, std::exception_ptr why) -> void {
  const auto found = c.pending.find(id);
  if (found == c.pending.end()) return;
  found->second->failure = std::move(why);
  found->second->done.set();
  c.pending.erase(found);
}

DMOE_DEF auto rpc_client::admit_large(detail::client_connection& c, frame_reader& reader,
    frame_deadline& progress) -> task<void> {
  const std::optional<frame_header> header = reader.large_frame_ahead(c.peer_text);
  if (!header) co_return;
  // A server sends responses and go_away frames (bounded by the header check); anything else is refused here,
  // on its header, before next() would commit memory for its payload outside the receive budget.
  if (header->kind != frame_kind::response && header->kind != frame_kind::go_away)
    throw protocol_error(dmoe::format("rpc server {} sent a {} frame of {}; only responses are expected",
                                     c.peer_text, to_string(header->kind), size_text(header->payload_size)));
  if (header->kind != frame_kind::response || header->payload_size > options_.limits.max_payload)
    co_return;  // next() reports it
  if (!c.pending.contains(header->request_id)) {
    ++stats_.late_responses;
    reader.skip_frame();
    co_return;
  }
  const std::uint64_t size = header->payload_size;
  const std::uint64_t share = server_share();
  if (size > share) {
    reader.skip_frame();
    settle(c, header->request_id,
           std::make_exception_ptr(limit_error(dmoe::format(
               "rpc response of {} from {} exceeds the client's receive budget {}", size_text(size), c.peer_text,
               size_text(share)))));
    co_return;
  }
  bool waited = false;
  while ((buffered_ > 0 && buffered_ + size > options_.max_buffered_bytes) ||
         (buffered_from(c.peer) > 0 && buffered_from(c.peer) + size > share)) {
    waited = true;
    memory_freed_.reset();
    co_await memory_freed_.wait();
    if (!c.pending.contains(header->request_id)) {
      reader.skip_frame();
      co_return;
    }
  }
  buffered_ += size;
  (*buffered_by_server_)[c.peer] += size;
  c.reserved = size;
  if (waited) progress.restart(std::chrono::steady_clock::now());
}

DMOE_DEF auto rpc_client::read_responses(detail::client_connection& c) -> task<void> {
  frame_reader reader(options_.limits, options_.receive_buffer);
  frame_deadline progress;
  for (;;) {
    for (;;) {
      // A large response nobody waits for any more: its memory goes now, the rest of it is skipped.
      if (const frame_header* large = reader.large_frame();
          large && large->kind == frame_kind::response && !c.pending.contains(large->request_id)) {
        ++stats_.late_responses;
        reader.abandon_large();
        release_receive(c);
      }
      if (c.reserved == 0) co_await admit_large(c, reader, progress);
      std::optional<frame> f;
      try {
        f = reader.next(c.peer_text);
      } catch (const limit_error& e) {
        // The call whose response is too large learns why; the reader skips it and the others go on.
        if (const auto& refused = reader.refused_header())
          settle(c, refused->request_id, std::make_exception_ptr(limit_error(e.what())));
        continue;
      }
      if (!f) break;
      release_receive(c);
      deliver(c, std::move(*f));
      if (c.current == detail::client_connection::state::failed) co_return;
    }
    const steady_time now = std::chrono::steady_clock::now();
    progress.update(reader, now);
    c.read_mid_frame = progress.active();
    c.read_deadline = progress.active()
                          ? progress.deadline(reader, options_.read_timeout, options_.min_transfer_rate)
                          : deadline_from(now, options_.idle_timeout);
    const byte_span room = reader.prepare();
    c.reading = true;
    const reading_flag reading{c};
    const std::size_t received = co_await c.socket.read_some(room);
    // Failed meanwhile (closed, idle or stalled; see watch_connection): the reason is recorded already.
    if (c.current == detail::client_connection::state::failed) co_return;
    if (received == 0) co_return;
    reader.commit(received);
    if (reader.mid_frame()) progress.update(reader, std::chrono::steady_clock::now());
  }
}

DMOE_DEF auto rpc_client::deliver(detail::client_connection& c, frame f) -> void {
  if (f.header.kind == frame_kind::go_away) {
    on_go_away(c, f);
    return;
  }
  if (f.header.kind != frame_kind::response)
    throw protocol_error(dmoe::format("rpc server {} sent a {} frame; only responses are expected", c.peer_text,
                                     to_string(f.header.kind)));
  // Request id 0 is no call's: an older server speaking about the connection itself (refusing it).
  if (f.header.request_id == 0 && f.header.status != frame_status::ok) {
    fail(c, std::make_exception_ptr(unavailable_error(std::string(as_string_view(f.payload)))));
    return;
  }
  const auto found = c.pending.find(f.header.request_id);
  if (found == c.pending.end()) {
    ++stats_.late_responses;
    return;
  }
  detail::pending_call* call = found->second;
  c.pending.erase(found);
  call->status = f.header.status;
  call->payload = std::move(f.payload);
  call->done.set();
}

DMOE_DEF auto rpc_client::on_go_away(detail::client_connection& c, const frame& f) -> void {
  const std::string why(as_string_view(f.payload));
  retire(c);
  const bool refused = f.header.status != frame_status::ok;
  if (!refused) c.go_away_id = f.header.request_id;
  std::vector<std::uint64_t> unread;
  for (const auto& [id, call] : c.pending)
    if (id > f.header.request_id) unread.push_back(id);
  for (const std::uint64_t id : unread) {
    detail::pending_call* call = c.pending[id];
    c.pending.erase(id);
    if (refused) {
      call->failure = std::make_exception_ptr(unavailable_error(why));
    } else {
      call->unprocessed = true;
    }
    call->done.set();
  }
  if (refused) fail(c, std::make_exception_ptr(unavailable_error(why)));
  if (!c.failure) c.failure = std::make_exception_ptr(closed_error(why));
}

DMOE_DEF std::size_t rpc_client::connections(const endpoint& server) const {
  const auto found = pool_->find(server);
  return found == pool_->end() ? 0 : found->second.size();
}

DMOE_DEF std::uint64_t rpc_client::buffered_from(const endpoint& server) const {
  const auto found = buffered_by_server_->find(server);
  return found == buffered_by_server_->end() ? 0 : found->second;
}

}  // namespace net
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
