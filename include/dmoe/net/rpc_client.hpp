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

#include <fmt/format.h>
#include <sys/socket.h>

DMOE_BEGIN_NAMESPACE
namespace net {

struct rpc_client_options {
  frame_limits limits;                               // largest request and response payload
  std::size_t max_connections_per_endpoint = 4;      // a new one opens while every open one is busy
  std::size_t max_in_flight_per_connection = 1024;   // more calls wait for a slot
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds idle_timeout{60'000};    // a connection unused this long is closed
  std::chrono::milliseconds read_timeout{10'000};    // a server silent this long in the middle of a frame is dropped
  std::chrono::milliseconds default_timeout{60'000}; // the deadline of calls given none
  std::size_t receive_buffer = 64 * 1024;            // per connection; larger payloads are received in place
};

namespace detail {

// A call waiting for its response; lives in the calling coroutine's frame.
struct pending_call {
  async_event done;
  frame_status status = frame_status::ok;
  byte_buffer payload;
  std::exception_ptr failure;  // the connection failed before the response came
};

// One pooled connection, shared by the calls using it and the coroutine that connects and reads it.
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
  async_semaphore write_lock{1};
  async_semaphore slots;
  std::unordered_map<std::uint64_t, pending_call*> pending;
  std::uint64_t next_id = 1;
  std::size_t users = 0;      // calls assigned to this connection
  bool write_broken = false;  // a send failed: only reading goes on

  // The read in progress and its deadline, checked by the connection's watchdog (no kernel timer per read).
  bool reading = false;
  bool read_mid_frame = false;  // it waits for the rest of a frame
  steady_time read_deadline = no_deadline;
};

// A call's deadline as the client's deadline timer sees it; lives in the calling coroutine's frame.
struct call_deadline {
  explicit call_deadline(steady_time when) : at(when) {}
  steady_time at;
  std::stop_source stop;  // requested when the deadline passes (or the caller's own stop token stops)
  bool expired = false;
};

// Forwards a caller's stop request to its call.
struct stop_call {
  std::stop_source* call;
  void operator()() const noexcept { call->request_stop(); }
};

}  // namespace detail

// Belongs to one io_context and is used from its thread. Connections are opened on demand, reused, closed when
// idle and replaced after a failure. `co_await close()` before destroying the client (it joins the coroutines
// that read the connections).
class rpc_client {
 public:
  struct counters {
    std::uint64_t calls = 0;
    std::uint64_t connects = 0;
    std::uint64_t connect_failures = 0;
    std::uint64_t connections_lost = 0;
    std::uint64_t late_responses = 0;     // for calls that had already given up
    std::uint64_t requests_dropped = 0;   // by fault injection
  };

  explicit rpc_client(io_context& ctx, rpc_client_options options = {}, std::shared_ptr<fault_policy> faults = nullptr)
      : ctx_(ctx), options_(options), faults_(std::move(faults)), background_(ctx) {
    if (options_.max_connections_per_endpoint == 0 || options_.max_in_flight_per_connection == 0)
      throw invalid_argument_error("rpc client: connections per endpoint and calls per connection must be at least 1");
  }
  rpc_client(const rpc_client&) = delete;
  rpc_client& operator=(const rpc_client&) = delete;

  // Calls `method` on `server` with the payload made of `pieces` (sent with one vectored write, no copy; they must
  // stay valid until the call returns) and returns the response payload. Ends by `deadline` (or after
  // default_timeout) and on a stop request of the awaiting coroutine or of `stop`. Errors: limit_error (payload
  // over the limit, here or at the server), unavailable_error (cannot connect, server shutting down), closed_error
  // (connection lost), remote_error (the handler threw, or no such method), timeout_error, cancelled_error.
  task<byte_buffer> call(endpoint server, rpc_method method, std::span<const const_byte_span> pieces,
                         steady_time deadline = no_deadline, std::stop_token stop = {}) {
    std::uint64_t total = 0;
    for (const auto& piece : pieces) total += piece.size();
    if (total > options_.limits.max_payload)
      throw limit_error(fmt::format("rpc request of {} exceeds limit {} to {}", size_text(total),
                                    size_text(options_.limits.max_payload), server));
    if (closing_) throw closed_error(fmt::format("rpc {} to {}: the client is closed", method.description(), server));
    if (deadline == no_deadline) deadline = deadline_after(options_.default_timeout);
    ++stats_.calls;
    const steady_time started = std::chrono::steady_clock::now();
    // The deadline stops the call through its own stop source, from one client-wide timer (see expire_deadlines).
    detail::call_deadline limit(deadline);
    const deadline_registration registration(*this, limit);
    std::optional<std::stop_callback<detail::stop_call>> caller_stop;
    if (stop.stop_possible()) caller_stop.emplace(stop, detail::stop_call{&limit.stop});
    std::optional<byte_buffer> response;
    bool timed_out = false;
    try {
      response.emplace(co_await with_stop_token(call_on_connection(server, method, pieces, total), limit.stop.get_token()));
    } catch (const cancelled_error&) {
      if (!limit.expired) throw;
      timed_out = true;  // a result that arrived despite the deadline is kept; a cancellation it caused is a timeout
    }
    if (timed_out) {
      const auto waited = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started);
      throw timeout_error(fmt::format("rpc {} to {} timed out after {:.0f} ms", method.description(), server,
                                      waited.count()));
    }
    co_return std::move(*response);
  }

  task<byte_buffer> call(endpoint server, rpc_method method, const_byte_span payload,
                         steady_time deadline = no_deadline, std::stop_token stop = {}) {
    const std::array<const_byte_span, 1> pieces{payload};
    co_return co_await call(server, method, std::span<const const_byte_span>(pieces), deadline, std::move(stop));
  }

  // Closes every connection (calls still running fail with closed_error) and waits for their coroutines.
  task<void> close() {
    closing_ = true;
    std::vector<std::shared_ptr<detail::client_connection>> all;
    for (const auto& [server, list] : pool_) all.insert(all.end(), list.begin(), list.end());
    const auto reason = std::make_exception_ptr(closed_error("rpc client closed"));
    for (const auto& connection : all) fail(*connection, reason);
    background_.request_stop();
    co_await background_.join();
  }

  // Open (or opening) connections to `server`.
  std::size_t connections(const endpoint& server) const {
    const auto found = pool_.find(server);
    return found == pool_.end() ? 0 : found->second.size();
  }
  const counters& stats() const noexcept { return stats_; }
  const rpc_client_options& options() const noexcept { return options_; }

 private:
  // Takes a connection for the duration of one call.
  struct connection_use {
    std::shared_ptr<detail::client_connection> connection;
    explicit connection_use(std::shared_ptr<detail::client_connection> c) : connection(std::move(c)) {
      ++connection->users;
    }
    connection_use(const connection_use&) = delete;
    connection_use& operator=(const connection_use&) = delete;
    ~connection_use() { --connection->users; }
  };

  // Enters a call's deadline in the client's deadline timer for the duration of the call.
  struct deadline_registration {
    rpc_client& client;
    detail::call_deadline& limit;
    std::multimap<steady_time, detail::call_deadline*>::iterator entry;
    deadline_registration(rpc_client& c, detail::call_deadline& d)
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
  struct pending_entry {
    detail::client_connection* connection;
    std::uint64_t id;
    ~pending_entry() { connection->pending.erase(id); }
  };

  task<byte_buffer> call_on_connection(endpoint server, rpc_method method, std::span<const const_byte_span> pieces,
                                       std::uint64_t total) {
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
    if (send) co_await send_request(c, method, id, pieces, total);
    co_await pending.done.wait();
    if (pending.failure) std::rethrow_exception(pending.failure);
    if (pending.status == frame_status::ok) co_return std::move(pending.payload);
    throw_status(pending.status, method, c.peer_text, as_string_view(pending.payload));
  }

  task<void> send_request(detail::client_connection& c, rpc_method method, std::uint64_t id,
                          std::span<const const_byte_span> pieces, std::uint64_t total) {
    const frame_header_bytes head =
        encode_frame_header(frame_header{frame_kind::request, frame_status::ok, method.id, 0, id, total});
    const detail::frame_pieces frame(head, {}, pieces);
    auto permit = co_await c.write_lock.acquire_permit();
    const bool alone = co_await write_pass_.join();  // see detail::write_pass
    if (c.current == detail::client_connection::state::failed) std::rethrow_exception(c.failure);
    if (c.write_broken) co_return;  // the reader settles this call when the connection ends
    bool failed = false;
    std::size_t sent = 0;
    try {
      if (alone) sent = detail::send_now(c.socket.native_handle(), frame.span(), c.peer_text);
      if (sent < frame_header_size + total) {
        std::vector<const_byte_span> rest(frame.span().begin(), frame.span().end());
        detail::drop_sent(rest, sent);
        co_await c.socket.write_all(rest);
      }
    } catch (const cancelled_error&) {
      // The call's deadline or stop. Half a frame on the stream leaves it unusable: the write shuts it down when it
      // had moved bytes itself; here when only the first send had.
      if (sent > 0) ::shutdown(c.socket.native_handle(), SHUT_RDWR);
      throw;
    } catch (const std::exception& e) {
      failed = true;
      log_debug("rpc {} to {}: sending failed: {}", method.description(), c.peer_text, e.what());
    }
    if (failed) {
      // The server may have answered before it closed (e.g. refusing this request): keep reading what it sent,
      // send nothing more, and let the reader settle the waiting calls when the connection ends.
      c.write_broken = true;
      retire(c);
      ::shutdown(c.socket.native_handle(), SHUT_WR);
    }
  }

  [[noreturn]] static void throw_status(frame_status status, rpc_method method, const std::string& server,
                                        std::string_view text) {
    switch (status) {
      case frame_status::handler_error:
        throw remote_error(fmt::format("rpc {} on {} failed: {}", method.description(), server, text));
      case frame_status::unknown_method:
        throw remote_error(fmt::format("rpc {} on {}: {}", method.description(), server, text));
      case frame_status::limit_exceeded:
        throw limit_error(fmt::format("rpc {} on {}: {}", method.description(), server, text));
      case frame_status::shutting_down:
        throw unavailable_error(fmt::format("rpc {} on {}: {}", method.description(), server, text));
      case frame_status::bad_request:
      case frame_status::ok: break;
    }
    throw protocol_error(fmt::format("rpc {} on {}: {}", method.description(), server, text));
  }

  // The least busy connection to `server`, or a new one while every open one is busy and the pool has room.
  std::shared_ptr<detail::client_connection> pick(const endpoint& server) {
    auto& list = pool_[server];
    std::shared_ptr<detail::client_connection> best;
    for (const auto& c : list)
      if (!best || c->users < best->users) best = c;
    if (best && (best->users == 0 || list.size() >= options_.max_connections_per_endpoint)) return best;
    auto fresh = std::make_shared<detail::client_connection>(server, options_.max_in_flight_per_connection);
    list.push_back(fresh);
    ++stats_.connects;
    background_.spawn(run_connection(fresh));
    return fresh;
  }

  void deadline_added(steady_time at) {
    if (!expiring_) {
      expiring_ = true;
      background_.spawn(expire_deadlines());
    } else if (at < deadline_armed_) {
      deadline_changed_.set();  // the timer must wake sooner
    }
  }

  task<void> wait_deadline_change() { co_await deadline_changed_.wait(); }

  // The client's deadline timer: one kernel timer for the earliest deadline of the calls in progress, re-armed
  // only when that passes or an earlier one comes (deadlines mostly come in order, each later than the last),
  // rather than one timer armed and cancelled per call. Stops the calls whose deadline has passed.
  task<void> expire_deadlines() {
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

  // Enforces a connection's read and idle timeouts: one timer per connection that sleeps until the deadline of the
  // read in progress, instead of a kernel timer armed and cancelled with every read. Stopped with the connection.
  task<void> watch_connection(detail::client_connection& c) {
    // Between reads nothing is due; a deadline set later is at least this far away.
    const auto period = std::max(std::chrono::milliseconds(1), std::min(options_.read_timeout, options_.idle_timeout));
    for (;;) {
      steady_time next = deadline_after(period);
      if (c.reading) next = std::min(next, c.read_deadline);
      try {
        co_await sleep_until(next);
      } catch (const cancelled_error&) {
        co_return;
      }
      if (c.current == detail::client_connection::state::failed) co_return;
      const steady_time now = std::chrono::steady_clock::now();
      if (!c.reading || now < c.read_deadline) continue;
      if (c.read_mid_frame) {
        ++stats_.connections_lost;
        fail(c, std::make_exception_ptr(closed_error(
                    fmt::format("rpc connection to {} lost: the server sent part of a frame, then nothing for {} ms",
                                c.peer_text, options_.read_timeout.count()))));
        co_return;
      }
      if (c.users > 0 || !c.pending.empty()) {
        c.read_deadline = now + options_.idle_timeout;  // idle only counts when nothing is in flight
        continue;
      }
      // Out of the pool at once, so no call picks the connection while its reader winds down.
      fail(c, std::make_exception_ptr(closed_error(fmt::format("rpc connection to {} closed when idle", c.peer_text))));
      co_return;
    }
  }

  // Takes a connection out of the pool: no new call picks it.
  void retire(detail::client_connection& c) {
    const auto found = pool_.find(c.peer);
    if (found == pool_.end()) return;
    std::erase_if(found->second, [&](const auto& p) { return p.get() == &c; });
    if (found->second.empty()) pool_.erase(found);
  }

  // Marks a connection failed: out of the pool, its stream shut down, its waiting calls failed with `why`.
  void fail(detail::client_connection& c, const std::exception_ptr& why) {
    if (c.current == detail::client_connection::state::failed) return;
    c.current = detail::client_connection::state::failed;
    c.failure = why;
    retire(c);
    if (c.socket.is_open()) ::shutdown(c.socket.native_handle(), SHUT_RDWR);
    for (auto& [id, call] : c.pending) {
      call->failure = why;
      call->done.set();
    }
    c.pending.clear();
    c.ready.set();
  }

  task<void> run_connection(std::shared_ptr<detail::client_connection> connection) {
    detail::client_connection& c = *connection;
    std::exception_ptr failure;
    try {
      c.socket = co_await tcp_socket::connect(ctx_, c.peer, deadline_after(options_.connect_timeout));
      c.local_text = c.socket.local_endpoint().to_string();
    } catch (const cancelled_error&) {
      failure = std::make_exception_ptr(closed_error(fmt::format("rpc connect to {}: the client closed", c.peer_text)));
    } catch (const std::exception& e) {
      ++stats_.connect_failures;
      failure = std::make_exception_ptr(unavailable_error(fmt::format("rpc connect to {} failed: {}", c.peer_text, e.what())));
    }
    if (failure) {
      fail(c, failure);
      co_return;
    }
    c.current = detail::client_connection::state::ready;
    c.ready.set();
    task_group watchdog(ctx_);
    watchdog.spawn(watch_connection(c));
    try {
      co_await read_responses(c);
      failure = std::make_exception_ptr(closed_error(fmt::format("rpc connection to {} closed when idle", c.peer_text)));
    } catch (const cancelled_error&) {
      failure = std::make_exception_ptr(closed_error(fmt::format("rpc connection to {}: the client closed", c.peer_text)));
    } catch (const std::exception& e) {
      ++stats_.connections_lost;
      failure = std::make_exception_ptr(closed_error(fmt::format("rpc connection to {} lost: {}", c.peer_text, e.what())));
    }
    fail(c, failure);
    watchdog.request_stop();
    co_await watchdog.join();
  }

  struct reading_flag {
    detail::client_connection& c;
    ~reading_flag() { c.reading = false; }
  };

  // Hands each response to its call until the connection fails or idles out (then returns).
  task<void> read_responses(detail::client_connection& c) {
    frame_reader reader(options_.limits, options_.receive_buffer);
    for (;;) {
      try {
        while (std::optional<frame> f = reader.next(c.peer_text)) deliver(c, std::move(*f));
      } catch (const limit_error& e) {
        // The call whose response is too large learns why; the others lose the connection.
        if (const auto& refused = reader.refused_header()) {
          const auto found = c.pending.find(refused->request_id);
          if (found != c.pending.end()) {
            found->second->failure = std::make_exception_ptr(limit_error(e.what()));
            found->second->done.set();
            c.pending.erase(found);
          }
        }
        throw;
      }
      c.read_mid_frame = reader.mid_frame();
      c.read_deadline = deadline_after(c.read_mid_frame ? options_.read_timeout : options_.idle_timeout);
      const byte_span room = reader.prepare();
      c.reading = true;
      const reading_flag reading{c};
      const std::size_t received = co_await c.socket.read_some(room);
      // Failed meanwhile (closed, idle or stalled; see watch_connection): the reason is recorded already.
      if (c.current == detail::client_connection::state::failed) co_return;
      if (received == 0) throw closed_error("the server closed the connection");
      reader.commit(received);
    }
  }

  void deliver(detail::client_connection& c, frame f) {
    if (f.header.kind != frame_kind::response)
      throw protocol_error(fmt::format("rpc server {} sent a {} frame; only responses are expected", c.peer_text,
                                       to_string(f.header.kind)));
    // Request id 0 is no call's: the server speaks about the connection itself (e.g. refusing it).
    if (f.header.request_id == 0 && f.header.status != frame_status::ok)
      throw closed_error(std::string(as_string_view(f.payload)));
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

  io_context& ctx_;
  rpc_client_options options_;
  std::shared_ptr<fault_policy> faults_;
  std::unordered_map<endpoint, std::vector<std::shared_ptr<detail::client_connection>>> pool_;
  bool closing_ = false;
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
