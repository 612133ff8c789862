// Timers: sleep_for and sleep_until on the steady clock (IORING_OP_TIMEOUT), cancellable.
#pragma once

#include <dmoe/async/io_operation.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/config.hpp>

#include <cerrno>
#include <chrono>

#include <liburing.h>

DMOE_BEGIN_NAMESPACE

// `co_await sleep_until(t)`: resumes at steady time t (at once if it has passed); a stop request
// ends the wait early with cancelled_error.
class sleep_operation final : public detail::io_operation<sleep_operation> {
 public:
  explicit sleep_operation(steady_time when) noexcept : io_operation(nullptr), when_(when) {}

  void await_resume() const {
    if (result() == -ETIME || result() >= 0) return;
    throw_failure(result(), "sleep");
  }

 private:
  friend class detail::io_operation<sleep_operation>;

  DMOE_LAZY void prepare(io_uring_sqe* sqe) noexcept {
    when_ts_ = detail::to_kernel_timespec(when_);
    io_uring_prep_timeout(sqe, &when_ts_, 0, IORING_TIMEOUT_ABS);
  }

  steady_time when_;
  __kernel_timespec when_ts_{};
};

inline sleep_operation sleep_until(steady_time when) noexcept { return sleep_operation(when); }

template <class Rep, class Period>
sleep_operation sleep_for(std::chrono::duration<Rep, Period> duration) noexcept {
  return sleep_operation(deadline_after(duration));
}

DMOE_END_NAMESPACE
