// datagram_endpoint: request/response over one UDP socket for the DHT; transaction ids match answers to
// requests, requests are retried on a per-attempt timeout, large messages travel as reassembled parts.
#pragma once

#include <dmoe/async/async_event.hpp>
#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/io_operation.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/udp_socket.hpp>
#include <dmoe/async/with_timeout.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/boxed.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/log.hpp>
#include <dmoe/net/datagram_message.hpp>
#include <dmoe/net/datagram_reassembler.hpp>
#include <dmoe/net/fault.hpp>
#include <dmoe/net/size_text.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace net {

struct datagram_endpoint_options {
  datagram_limits limits;                             // datagram and message sizes, reassembly bounds
  std::chrono::milliseconds attempt_timeout{500};     // wait for an answer this long before sending again
  int max_attempts = 3;                               // sends of one request, the first included
  std::chrono::milliseconds default_timeout{10'000};  // the deadline of requests given none
  std::size_t max_handlers_in_flight = 1024;          // requests being handled at once; more are dropped
  std::size_t max_handlers_per_address = 64;          // one peer address's share of them
  std::size_t receive_buffer = 65536;                 // the largest datagram received whole (at most 1 MiB)
  // The kernel's queue of datagrams not yet read (SO_RCVBUF), for bursts such as the answers to a crawl's many
  // requests in flight; capped by net.core.rmem_max. 0 keeps the system default (net.core.rmem_default).
  std::size_t socket_receive_queue = std::size_t{4} << 20;
};

// A request as a handler sees it; the handler may move the message out.
struct datagram_request {
  endpoint peer;
  datagram_sender_id sender{};
  std::uint16_t type = 0;
  std::uint64_t transaction_id = 0;
  byte_buffer message;
};

struct datagram_response {
  endpoint peer;
  datagram_sender_id sender{};
  byte_buffer message;
  int attempts = 0;  // sends it took
};

// Handlers run on the endpoint's io_context; their answer goes back as one message (split into parts as needed).
// A handler that throws datagram_no_answer sends nothing at all; any other exception goes back as an error answer.
using datagram_handler = std::function<task<byte_buffer>(datagram_request&)>;

// Thrown by a handler to drop its request without a word (malformed, over a rate limit): the requester sees a lost
// datagram, and a flood gets no amplification. The message says why, for the handler's own logs and counters.
class datagram_no_answer : public protocol_error {
 public:
  using protocol_error::protocol_error;
};

namespace detail {

// A request waiting for its answer, defined with the endpoint's code (behind DMOE_HEAVY_DEFINITIONS).
struct pending_datagram_request;

// Transaction ids: unpredictable (so off-path peers cannot answer for others), drawn from one generator per
// thread seeded once (std::random_device is slow here).
DMOE_DECL std::uint64_t next_transaction_id();
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::uint64_t next_transaction_id() {
  thread_local std::mt19937_64 generator = [] {
    std::random_device device;
    std::seed_seq seeds{device(), device(), device(), device()};
    return std::mt19937_64(seeds);
  }();
  return generator();
}
#endif  // DMOE_HEAVY_DEFINITIONS

}  // namespace detail

// One UDP socket of a node. `serve()` must be running (it receives both requests and answers); close() or a stop
// request on it ends it. Belongs to one io_context's thread.
class datagram_endpoint {
 public:
  struct counters {
    std::uint64_t requests_sent = 0;     // sends of requests, retries included
    std::uint64_t requests_received = 0;
    std::uint64_t responses_sent = 0;
    std::uint64_t malformed = 0;         // undecodable, truncated or contradicting datagrams
    std::uint64_t unexpected = 0;        // answers nobody waits for: late, duplicate or from the wrong address
    std::uint64_t handlers_refused = 0;  // requests dropped at max_handlers_in_flight
    std::uint64_t unanswered = 0;        // requests their handler dropped without an answer (datagram_no_answer)
    std::uint64_t dropped = 0;           // datagrams dropped by fault injection
  };

  DMOE_DECL datagram_endpoint(io_context& ctx, const endpoint& local, const datagram_sender_id& self,
                    datagram_endpoint_options options = {}, std::shared_ptr<fault_policy> faults = nullptr);
  datagram_endpoint(const datagram_endpoint&) = delete;
  datagram_endpoint& operator=(const datagram_endpoint&) = delete;

  // The handler of one message type (replacing an earlier one); register before serve().
  DMOE_DECL void add_handler(std::uint16_t type, datagram_handler handler);

  // Receives and dispatches until close() or a stop request; handlers still running are then stopped and joined,
  // and requests still waiting fail with closed_error and are awaited: once it returns, the socket is closed (its
  // port free again) and the endpoint may be destroyed.
  DMOE_DECL task<void> serve();

  // Makes serve() return; requests still waiting then fail with closed_error.
  DMOE_LAZY void close() {
    closed_ = true;
    if (receiving_) receiving_->request_stop();
  }

  // Sends `message` as a request of `type` to `peer` and returns the answer. Sends again after each
  // attempt_timeout without an answer, up to max_attempts, and ends by `deadline` (or after default_timeout).
  // Errors: timeout_error (no answer), remote_error (the peer refused: its handler threw or knows no such type),
  // limit_error (message too large), closed_error (the endpoint closed), cancelled_error (stop request).
  DMOE_DECL task<datagram_response> request(endpoint peer, std::uint16_t type, const_byte_span message,
                                  steady_time deadline = no_deadline);

  const endpoint& local_endpoint() const noexcept { return local_; }
  const datagram_sender_id& id() const noexcept { return self_; }
  const counters& stats() const noexcept { return stats_; }
  const datagram_reassembler& reassembler() const noexcept { return reassembler_; }

 private:
  // Counts a request in progress (serve() waits for none to be left).
  struct request_scope;

  struct requests_gone;

  struct pending_entry;

  // A reassembly source: the peer (address and port) and its address, whose share its messages count against.
  static datagram_source source_key(const endpoint& peer) noexcept {
    return datagram_source{std::hash<endpoint>{}(peer), std::hash<endpoint>{}(peer.with_port(0))};
  }

  DMOE_DECL static task<void> wait_for(async_event& event);

  DMOE_DECL task<void> receive_loop(task_group& handling);

  DMOE_DECL void on_datagram(task_group& handling, const endpoint& peer, const_byte_span bytes, steady_time now);

  DMOE_DECL task<void> handle_request(datagram_request request, endpoint address);

  // Sends every part; fault injection may drop parts and delays the message by one draw.
  DMOE_DECL task<void> send_parts(const datagram_parts& parts, endpoint peer, bool is_request);

  io_context& ctx_;
  datagram_endpoint_options options_;
  std::shared_ptr<fault_policy> faults_;
  udp_socket socket_;
  endpoint local_;
  std::string local_text_;
  datagram_sender_id self_;
  datagram_reassembler reassembler_;
  dmoe::detail::boxed<std::unordered_map<std::uint16_t, datagram_handler>> handlers_;
  dmoe::detail::boxed<std::unordered_map<std::uint64_t, detail::pending_datagram_request*>> pending_;
  task_group* receiving_ = nullptr;
  bool serving_ = false;
  bool closed_ = false;
  std::size_t handlers_in_flight_ = 0;
  dmoe::detail::boxed<std::unordered_map<endpoint, std::size_t>> handlers_by_address_;  // by IP address (port 0)
  std::size_t requests_active_ = 0;
  std::coroutine_handle<> requests_waiter_;  // serve(), waiting for the last request to end
  counters stats_;
};

}  // namespace net
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace net {

namespace detail {
// A request waiting for its answer; lives in the requesting coroutine's frame.
struct pending_datagram_request {
  endpoint peer;
  async_event done;
  datagram_kind kind = datagram_kind::response;
  datagram_sender_id sender{};
  byte_buffer message;
  bool closed = false;  // the endpoint closed before an answer came
};
}  // namespace detail

// Counts a request in progress (serve() waits for none to be left).
struct datagram_endpoint::request_scope {
  datagram_endpoint* self;
  explicit request_scope(datagram_endpoint* e) : self(e) { ++self->requests_active_; }
  request_scope(const request_scope&) = delete;
  request_scope& operator=(const request_scope&) = delete;
  ~request_scope() {
    if (--self->requests_active_ == 0 && self->requests_waiter_)
      self->ctx_.schedule(std::exchange(self->requests_waiter_, nullptr));
  }
};

struct datagram_endpoint::requests_gone {
  datagram_endpoint& self;
  bool await_ready() const noexcept { return self.requests_active_ == 0; }
  void await_suspend(std::coroutine_handle<> waiter) noexcept { self.requests_waiter_ = waiter; }
  void await_resume() const noexcept {}
};

struct datagram_endpoint::pending_entry {
  datagram_endpoint* self;
  std::uint64_t id;
  endpoint peer;
  ~pending_entry() {
    self->pending_->erase(id);
    self->reassembler_.forget(source_key(peer).sender, id);
  }
};

DMOE_DEF datagram_endpoint::datagram_endpoint(io_context& ctx, const endpoint& local, const datagram_sender_id& self,
                  datagram_endpoint_options options, std::shared_ptr<fault_policy> faults) : ctx_(ctx),
      options_(options),
      faults_(std::move(faults)),
      socket_(ctx, local),
      local_(socket_.local_endpoint()),
      local_text_(local_.to_string()),
      self_(self),
      reassembler_(options.limits) {
  validate(options_.limits, "datagram endpoint");
  if (options_.max_attempts < 1) throw invalid_argument_error("datagram endpoint: max_attempts must be at least 1");
  if (options_.attempt_timeout.count() <= 0 || options_.default_timeout.count() <= 0)
    throw invalid_argument_error("datagram endpoint: timeouts must be positive");
  if (options_.max_handlers_in_flight == 0 || options_.max_handlers_per_address == 0)
    throw invalid_argument_error("datagram endpoint: handler limits must be at least 1");
  if (options_.receive_buffer > (std::size_t{1} << 20))
    throw invalid_argument_error(dmoe::format("datagram endpoint: receive_buffer of {} bytes is over 1 MiB (no "
                                             "datagram is larger than 64 KiB)",
                                             options_.receive_buffer));
  if (options_.socket_receive_queue > 0) socket_.set_receive_queue(options_.socket_receive_queue);
  if (options_.receive_buffer < options_.limits.max_datagram)
    throw invalid_argument_error(dmoe::format("datagram endpoint: receive_buffer of {} bytes is smaller than "
                                             "max_datagram ({} bytes)",
                                             options_.receive_buffer, options_.limits.max_datagram));
}

DMOE_DEF auto datagram_endpoint::serve() -> task<void> {
  if (serving_) throw invalid_argument_error(dmoe::format("datagram endpoint {} is already serving", local_text_));
  serving_ = true;
  task_group receiving(ctx_);
  task_group handling(ctx_);
  receiving_ = &receiving;
  if (!closed_) receiving.spawn(receive_loop(handling));
  std::exception_ptr failure;
  try {
    co_await receiving.join();
  } catch (...) {
    failure = std::current_exception();
  }
  handling.request_stop();
  try {
    co_await handling.join();
  } catch (const std::exception& e) {
    log_debug("datagram endpoint {}: handler failed while stopping: {}", local_text_, e.what());
  }
  // Nothing answers any more: requests still waiting end now, and are awaited (they touch the endpoint).
  closed_ = true;
  for (auto& [id, pending] : *pending_) {
    pending->closed = true;
    pending->done.set();
  }
  // Not cancellable: the endpoint must outlive them, however serve() is stopped.
  co_await requests_gone{*this};
  socket_.close();  // nothing uses it any more: its port is free for a successor
  receiving_ = nullptr;
  serving_ = false;
  if (failure) std::rethrow_exception(failure);
}

DMOE_DEF auto datagram_endpoint::request(endpoint peer, std::uint16_t type, const_byte_span message,
                                steady_time deadline) -> task<datagram_response> {
  if (closed_) throw closed_error(dmoe::format("datagram request of type {} to {}: endpoint {} is closed", type, peer,
                                              local_text_));
  const request_scope active{this};
  if (deadline == no_deadline) deadline = deadline_after(options_.default_timeout);
  std::uint64_t id = detail::next_transaction_id();
  while (pending_->contains(id)) id = detail::next_transaction_id();
  datagram_header header;
  header.kind = datagram_kind::request;
  header.type = type;
  header.transaction_id = id;
  header.sender = self_;
  const datagram_parts parts(header, message, options_.limits);
  detail::pending_datagram_request pending;
  pending.peer = peer;
  pending_->emplace(id, &pending);
  const pending_entry entry{this, id, peer};
  const steady_time started = std::chrono::steady_clock::now();
  int attempts = 0;
  while (!pending.done.is_set()) {
    const steady_time now = std::chrono::steady_clock::now();
    if (now >= deadline || attempts == options_.max_attempts) break;
    ++attempts;
    co_await send_parts(parts, peer, true);
    const steady_time attempt_end = std::min(deadline, deadline_from(now, options_.attempt_timeout));
    try {
      co_await with_deadline(wait_for(pending.done), attempt_end);
    } catch (const timeout_error&) {
      // no answer in time: send again
    }
  }
  if (pending.closed)
    throw closed_error(dmoe::format("datagram request of type {} to {}: endpoint {} closed before an answer came",
                                   type, peer, local_text_));
  if (!pending.done.is_set()) {
    const auto waited = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started);
    throw timeout_error(dmoe::format("datagram request of type {} to {}: no answer after {} attempts in {:.0f} ms",
                                    type, peer, attempts, waited.count()));
  }
  if (pending.kind == datagram_kind::error)
    throw remote_error(dmoe::format("datagram request of type {} to {} refused: {}", type, peer,
                                   as_string_view(pending.message)));
  co_return datagram_response{peer, pending.sender, std::move(pending.message), attempts};
}

DMOE_DEF auto datagram_endpoint::wait_for(async_event& event) -> task<void> { co_await event.wait(); }

DMOE_DEF auto datagram_endpoint::receive_loop(task_group& handling) -> task<void> {
  byte_buffer buffer(options_.receive_buffer);
  for (;;) {
    dmoe::datagram received;
    try {
      received = co_await socket_.receive_from(buffer);
    } catch (const cancelled_error&) {
      co_return;
    }
    const steady_time now = std::chrono::steady_clock::now();
    reassembler_.expire(now);
    if (received.truncated) {
      ++stats_.malformed;
      continue;
    }
    try {
      on_datagram(handling, received.peer, const_byte_span(buffer).first(received.size), now);
    } catch (const error& e) {
      ++stats_.malformed;
      log_debug("datagram endpoint {}: ignored a datagram from {}: {}", local_text_, received.peer, e.what());
    }
  }
}

DMOE_DEF auto datagram_endpoint::on_datagram(task_group& handling, const endpoint& peer, const_byte_span bytes,
    steady_time now) -> void {
  const std::string peer_text = peer.to_string();
  const datagram_message part = decode_datagram(bytes, options_.limits, peer_text);
  const datagram_header& h = part.header;
  if (h.kind == datagram_kind::request) {
    std::optional<byte_buffer> whole = reassembler_.add(source_key(peer), part, now, peer_text);
    if (!whole) return;
    ++stats_.requests_received;
    if (faults_ && faults_->stalled()) return;  // a stalled node hears requests and never answers
    // One address gets its share of the handlers, so a flood from it cannot shut the others out.
    const endpoint address = peer.with_port(0);
    const auto counted = handlers_by_address_->find(address);
    const std::size_t from_address = counted != handlers_by_address_->end() ? counted->second : 0;
    if (handlers_in_flight_ >= options_.max_handlers_in_flight || from_address >= options_.max_handlers_per_address) {
      ++stats_.handlers_refused;
      return;
    }
    ++handlers_in_flight_;
    ++(*handlers_by_address_)[address];
    handling.spawn(handle_request(datagram_request{peer, h.sender, h.type, h.transaction_id, std::move(*whole)},
                                  address));
    return;
  }
  // An answer counts only from the address the request went to, for a request still waiting.
  const auto found = pending_->find(h.transaction_id);
  if (found == pending_->end() || !(found->second->peer == peer) || found->second->done.is_set()) {
    ++stats_.unexpected;
    return;
  }
  std::optional<byte_buffer> whole = reassembler_.add(source_key(peer), part, now, peer_text);
  if (!whole) return;
  detail::pending_datagram_request& pending = *found->second;
  pending.kind = h.kind;
  pending.sender = h.sender;
  pending.message = std::move(*whole);
  pending.done.set();
}

DMOE_DEF auto datagram_endpoint::handle_request(datagram_request request, endpoint address) -> task<void> {
  struct in_flight_scope {
    datagram_endpoint* self;
    const endpoint& address;
    ~in_flight_scope() {
      --self->handlers_in_flight_;
      if (--(*self->handlers_by_address_)[address] == 0) self->handlers_by_address_->erase(address);
    }
  } scope{this, address};
  datagram_header header;
  header.kind = datagram_kind::response;
  header.type = request.type;
  header.transaction_id = request.transaction_id;
  header.sender = self_;
  byte_buffer answer;
  const auto found = handlers_->find(request.type);
  if (found == handlers_->end()) {
    header.kind = datagram_kind::error;
    answer = to_buffer(dmoe::format("{} has no handler for datagram type {}", local_text_, request.type));
  } else {
    bool failed = false;
    bool silent = false;
    std::string failure;
    try {
      answer = co_await found->second(request);
    } catch (const datagram_no_answer&) {
      silent = true;
    } catch (const std::exception& e) {
      failed = true;
      failure = e.what();
    }
    if (silent) {
      ++stats_.unanswered;
      co_return;
    }
    if (failed) {
      const std::stop_token token = co_await this_task::get_stop_token();
      if (token.stop_requested()) co_return;
      header.kind = datagram_kind::error;
      answer = to_buffer(failure);
    }
  }
  if (answer.size() > options_.limits.max_message) {
    header.kind = datagram_kind::error;
    answer = to_buffer(dmoe::format("answer of {} exceeds the message limit {}", size_text(answer.size()),
                                   size_text(options_.limits.max_message)));
  }
  const datagram_parts parts(header, answer, options_.limits);
  co_await send_parts(parts, request.peer, false);
  ++stats_.responses_sent;
}

DMOE_DEF auto datagram_endpoint::send_parts(const datagram_parts& parts, endpoint peer, bool is_request)
    -> task<void> {
  std::vector<bool> keep(parts.count(), true);
  if (faults_) {
    const std::string peer_text = peer.to_string();
    std::chrono::nanoseconds delay{-1};
    for (std::size_t i = 0; i < parts.count(); ++i) {
      const fault_decision decision = faults_->on_send(local_text_, peer_text);
      keep[i] = !decision.drop;
      if (decision.drop) ++stats_.dropped;
      if (!decision.drop && delay.count() < 0) delay = decision.delay;
    }
    if (delay.count() > 0) co_await sleep_for(delay);
  }
  if (is_request) ++stats_.requests_sent;
  byte_buffer datagram;
  for (std::size_t i = 0; i < parts.count(); ++i) {
    if (!keep[i]) continue;
    parts.encode(i, datagram);
    try {
      co_await socket_.send_to(datagram, peer);
    } catch (const cancelled_error&) {
      throw;
    } catch (const std::exception& e) {
      // UDP is lossy anyway: a refused send is one more lost datagram.
      log_debug("datagram endpoint {}: send to {} failed: {}", local_text_, peer, e.what());
    }
  }
}

DMOE_DEF void datagram_endpoint::add_handler(std::uint16_t type, datagram_handler handler) {
  (*handlers_)[type] = std::move(handler);
}

}  // namespace net
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
