// with_timeout / with_deadline: race a task against a timer; the loser is cancelled and awaited.
#pragma once

#include <dmoe/async/detail/child_group.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/io_operation.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <string>

#include <fmt/core.h>
#include <liburing.h>

DMOE_BEGIN_NAMESPACE

namespace detail {

// A task racing an IORING_OP_TIMEOUT. If the timer fires first the task is asked to stop; if the
// task finishes first the timer is cancelled. The parent resumes after both have completed.
class timeout_race final : public child_observer, public io_completion {
 public:
  explicit timeout_race(steady_time deadline) noexcept : deadline_(deadline) { complete = &timeout_race::on_timer; }
  timeout_race(const timeout_race&) = delete;
  timeout_race& operator=(const timeout_race&) = delete;

  template <class T>
  auto run(task<T>& child) noexcept {
    child.handle().promise().set_observer(this, 0);
    child.handle().promise().set_stop_token(&stop_.token());
    return run_awaiter{*this, child.handle()};
  }

  // Whether the deadline passed before the task finished (so the task was asked to stop).
  bool timed_out() const noexcept { return timed_out_; }

  std::coroutine_handle<> child_done(std::size_t, task_promise_base&) noexcept override {
    child_finished_ = true;
    if (timer_armed_) ctx_->submit_cancel(this);
    return finish_one() ? parent_ : std::noop_coroutine();
  }

 private:
  struct run_awaiter {
    timeout_race& race;
    std::coroutine_handle<> child;

    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> parent) {
      race.ctx_ = io_context::current();
      if (!race.ctx_) throw invalid_argument_error("with_timeout awaited outside a running io_context");
      race.stop_.link(stop_token_of(parent));
      race.parent_ = parent;
      race.remaining_ = 2;  // the child, and this start (so the child cannot resume the parent yet)
      child.resume();
      // No deadline, no timer: the race is the task alone.
      if (!race.child_finished_ && race.deadline_ != no_deadline) race.arm_timer();
      return !race.finish_one();
    }
    void await_resume() const noexcept {}
  };

  DMOE_DECL void arm_timer();

  DMOE_LAZY bool finish_one() noexcept {
    if (--remaining_ != 0) return false;
    stop_.unlink();
    return true;
  }

  DMOE_DECL static void on_timer(io_completion* completion, int result, unsigned) noexcept;

  steady_time deadline_;
  __kernel_timespec deadline_ts_{};
  io_context* ctx_ = nullptr;
  std::coroutine_handle<> parent_;
  std::size_t remaining_ = 0;
  bool timer_armed_ = false;
  bool child_finished_ = false;
  bool timed_out_ = false;
  linked_stop_source stop_;
};

// Rethrows the task's failure; a cancellation the deadline caused becomes timeout_error.
DMOE_DECL void rethrow_timed_out(const std::exception_ptr& error, bool timed_out, const std::string& limit);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void rethrow_timed_out(const std::exception_ptr& error, bool timed_out, const std::string& limit) {
  try {
    std::rethrow_exception(error);
  } catch (const cancelled_error& cancelled) {
    if (timed_out) throw timeout_error(dmoe::format("timed out after {} ({})", limit, cancelled.what()));
    throw;
  }
}
#endif  // DMOE_HEAVY_DEFINITIONS

template <class T>
task<T> race_deadline(task<T> work, steady_time deadline, std::string limit) {
  if (!work.valid()) throw invalid_argument_error("with_timeout given an empty task");
  timeout_race race(deadline);
  co_await race.run(work);
  if (const auto& error = work.handle().promise().exception()) rethrow_timed_out(error, race.timed_out(), limit);
  co_return work.handle().promise().take_result();
}

}  // namespace detail

// Runs `work` until `deadline` (no_deadline: no limit); past it, `work` is asked to stop and, once it has finished, a
// cancellation becomes dmoe::timeout_error. A result that arrives despite the deadline is kept.
template <class T>
task<T> with_deadline(task<T> work, steady_time deadline) {
  return detail::race_deadline(std::move(work), deadline, "deadline");
}

// with_deadline(work, now + timeout), with the timeout in the error message; saturates (`max()` means no limit).
template <class T, class Rep, class Period>
task<T> with_timeout(task<T> work, std::chrono::duration<Rep, Period> timeout) {
  const auto ms = std::chrono::duration<double, std::milli>(timeout).count();
  return detail::race_deadline(std::move(work), deadline_after(timeout), dmoe::format("{} ms", ms));
}

DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace detail {

DMOE_DEF auto timeout_race::arm_timer() -> void {
  deadline_ts_ = to_kernel_timespec(deadline_);
  io_uring_prep_timeout(ctx_->get_sqe(this), &deadline_ts_, 0, IORING_TIMEOUT_ABS);
  timer_armed_ = true;
  ++remaining_;
}

DMOE_DEF auto timeout_race::on_timer(io_completion* completion, int result, unsigned) noexcept -> void {
  auto& self = static_cast<timeout_race&>(*completion);
  self.timer_armed_ = false;
  if (result == -ETIME && !self.child_finished_) {
    self.timed_out_ = true;
    self.stop_.request_stop();
  }
  if (self.finish_one()) self.parent_.resume();
}

}  // namespace detail
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
