// io_operation: the op-state base every io_uring awaitable derives from; it lives in the awaiting frame.
#pragma once

#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <cerrno>
#include <chrono>
#include <coroutine>
#include <stop_token>
#include <string>
#include <utility>

#include <fmt/core.h>
#include <liburing.h>

DMOE_BEGIN_NAMESPACE

// A deadline `timeout` from now (steady clock); saturates at no_deadline (`max()` durations mean none).
template <class Rep, class Period>
steady_time deadline_after(std::chrono::duration<Rep, Period> timeout) noexcept {
  return deadline_from(std::chrono::steady_clock::now(), timeout);
}

namespace detail {

// steady_clock is CLOCK_MONOTONIC, the clock of IORING_TIMEOUT_ABS.
DMOE_LAZY inline __kernel_timespec to_kernel_timespec(steady_time when) noexcept {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(when.time_since_epoch()).count();
  if (ns <= 0) return {0, 0};
  return {ns / 1'000'000'000, ns % 1'000'000'000};
}

// One io_uring operation as an awaitable. The SQE is prepared in await_suspend (never earlier), its
// user_data is this object, and only its own CQE resumes the awaiting coroutine. A stop request on
// the awaiting coroutine's token submits IORING_OP_ASYNC_CANCEL; the operation still completes and
// the coroutine resumes from that completion. A deadline is a linked IORING_OP_LINK_TIMEOUT.
//
// Derived provides (io_operation is its friend):
//   void prepare(io_uring_sqe*) noexcept   fill the SQE (again for every resubmission)
//   void start()                           optional: acquire resources before the first SQE
//   bool resubmit(int result) noexcept     optional: true = submit again (partial transfers)
//   bool try_now() noexcept                optional: try the operation at once, without the ring; true when it
//                                          finished (its result set by complete_now), so the coroutine goes on
//                                          without suspending
//   R await_resume()                       interpret result()
template <class Derived>
class io_operation : public io_completion, public cancel_target {
 public:
  io_operation(const io_operation&) = delete;
  io_operation& operator=(const io_operation&) = delete;

  bool await_ready() const noexcept { return false; }

  template <class P>
  bool await_suspend(std::coroutine_handle<P> waiter) {
    if (!ctx) {
      ctx = io_context::current();
      if (!ctx) throw invalid_argument_error("an io operation was awaited outside a running io_context");
    }
    const std::stop_token& token = stop_token_of(waiter);
    if (token.stop_requested()) {
      cancelled_ = true;
      result_ = -ECANCELED;
      return false;
    }
    if constexpr (requires(Derived& d) { d.try_now(); }) {
      if (derived().try_now()) return false;
    }
    if constexpr (requires(Derived& d) { d.start(); }) derived().start();
    waiter_ = waiter;
    submit();
    if (token.stop_possible()) stop_link_.emplace(token, stop_forwarder{this});
    return true;
  }

 protected:
  explicit io_operation(io_context* context, steady_time deadline = no_deadline) noexcept : deadline_(deadline) {
    io_completion::complete = &io_operation::on_complete;
    cancel_target::cancel = &io_operation::on_cancel;
    ctx = context;
  }
  ~io_operation() = default;

  // Records the result of an operation that try_now() finished without the ring (`flags` as a CQE's would be).
  void complete_now(int result, unsigned flags = 0) noexcept {
    result_ = result;
    cqe_flags_ = flags;
  }

  int result() const noexcept { return result_; }
  unsigned cqe_flags() const noexcept { return cqe_flags_; }
  // Whether a stop request reached this operation.
  bool cancelled() const noexcept { return cancelled_; }
  bool has_deadline() const noexcept { return deadline_ != no_deadline; }
  // Whether a negative result means the stop request or the deadline ended the operation.
  bool interrupted(int result) const noexcept { return result == -ECANCELED && (cancelled_ || has_deadline()); }

  // Throws what a failed result means: cancelled_error after a stop request, timeout_error after the
  // deadline, system_error otherwise. `what` names the operation ("tcp recv from 127.0.0.1:4000").
  [[noreturn]] void throw_failure(int result, const std::string& what) const {
    if (result == -ECANCELED) {
      if (cancelled_) throw cancelled_error(what + ": cancelled");
      if (has_deadline()) throw timeout_error(what + ": deadline passed");
    }
    throw system_error(-result, what);
  }

 private:
  Derived& derived() noexcept { return static_cast<Derived&>(*this); }

  DMOE_LAZY void submit() {
    if (has_deadline()) ctx->reserve_sqes(2);
    io_uring_sqe* sqe = ctx->get_sqe(this);
    derived().prepare(sqe);
    if (has_deadline()) {
      sqe->flags |= IOSQE_IO_LINK;
      deadline_ts_ = to_kernel_timespec(deadline_);
      io_uring_prep_link_timeout(ctx->get_ignored_sqe(), &deadline_ts_, IORING_TIMEOUT_ABS);
    }
  }

  DMOE_LAZY static void on_complete(io_completion* completion, int result, unsigned flags) noexcept {
    auto& self = static_cast<Derived&>(*static_cast<io_operation*>(completion));
    self.result_ = result;
    self.cqe_flags_ = flags;
    if constexpr (requires(Derived& d) { d.resubmit(result); }) {
      if (self.resubmit(result)) {
        try {
          self.submit();
          return;
        } catch (...) {
          self.result_ = -EBUSY;  // the ring refused more work; report it as an I/O error
        }
      }
    }
    self.stop_link_.reset();
    self.ctx->forget_cancel(&self);
    self.waiter_.resume();
  }

  DMOE_LAZY static void on_cancel(cancel_target* target) noexcept {
    auto& self = static_cast<io_operation&>(*target);
    self.cancelled_ = true;
    self.ctx->submit_cancel(&self);
  }

  std::coroutine_handle<> waiter_;
  steady_time deadline_;
  __kernel_timespec deadline_ts_{};
  int result_ = 0;
  unsigned cqe_flags_ = 0;
  bool cancelled_ = false;
  stop_link stop_link_;
};

}  // namespace detail

DMOE_END_NAMESPACE
