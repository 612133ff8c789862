// task_group: an async scope; spawned coroutines run concurrently and are joined by their owner.
#pragma once

#include <dmoe/async/detail/child_group.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/log.hpp>

#include <coroutine>
#include <cstddef>
#include <exception>
#include <optional>
#include <stop_token>
#include <utility>

DMOE_BEGIN_NAMESPACE

class task_group;

namespace detail {

// The frame of one spawned task: runs it, reports to the group, and frees itself.
class spawned_task {
 public:
  class promise_type {
   public:
    spawned_task get_return_object() noexcept {
      return spawned_task(std::coroutine_handle<promise_type>::from_promise(*this));
    }
    std::suspend_always initial_suspend() const noexcept { return {}; }
    struct final_awaiter {
      bool await_ready() const noexcept { return false; }
      void await_suspend(std::coroutine_handle<promise_type> self) const noexcept;
      void await_resume() const noexcept {}
    };
    final_awaiter final_suspend() const noexcept { return {}; }
    void return_void() const noexcept {}
    void unhandled_exception() noexcept { error = std::current_exception(); }
    const std::stop_token* stop_token_ptr() const noexcept { return token; }

    task_group* group = nullptr;
    const std::stop_token* token = &no_stop_token;
    std::exception_ptr error;
  };

  explicit spawned_task(std::coroutine_handle<promise_type> handle) noexcept : handle(handle) {}
  std::coroutine_handle<promise_type> handle;
};

template <class T>
spawned_task spawn_body(task<T> work) {
  co_await std::move(work);
}

struct group_stopper {
  task_group* group;
  void operator()() const noexcept;
};

}  // namespace detail

// Structured concurrency for a dynamic number of tasks. spawn() starts a task on the group's
// context (at its next loop iteration); `co_await group.join()` waits until every spawned task has
// finished. Spawned tasks see the group's stop token; request_stop() cancels them all, and so does
// a stop request on the coroutine waiting in join().
//
// Errors: a failed spawned task does not disturb the others. join() rethrows the first failure
// (then forgets it); failures() counts them all. Destroying a group whose tasks still run is a bug
// that ends the process: always co_await join() (also on error paths) before the group goes away.
class task_group {
 public:
  // A group on the context running this thread.
  task_group() : task_group(current_context_or_throw()) {}
  explicit task_group(io_context& ctx) noexcept : ctx_(&ctx), token_(source_.get_token()) {}
  task_group(const task_group&) = delete;
  task_group& operator=(const task_group&) = delete;
  ~task_group();

  template <class T>
  void spawn(task<T> work) {
    if (!work.valid()) throw invalid_argument_error("task_group::spawn given an empty task");
    detail::spawned_task spawned = detail::spawn_body(std::move(work));
    spawned.handle.promise().group = this;
    spawned.handle.promise().token = &token_;
    ++running_;
    ctx_->schedule(spawned.handle);
  }

  // co_await group.join(): every spawned task has finished; rethrows the first failure.
  auto join() noexcept { return join_awaiter(*this); }

  void request_stop() noexcept { source_.request_stop(); }
  const std::stop_token& stop_token() const noexcept { return token_; }
  std::size_t running() const noexcept { return running_; }
  std::size_t failures() const noexcept { return failures_; }

 private:
  friend class detail::spawned_task::promise_type;

  struct join_awaiter {
    explicit join_awaiter(task_group& g) noexcept : group(g) {}
    task_group& group;
    std::optional<std::stop_callback<detail::group_stopper>> link;

    bool await_ready() const noexcept { return group.running_ == 0; }
    template <class P>
    void await_suspend(std::coroutine_handle<P> waiter) {
      group.joiner_ = waiter;
      const std::stop_token& token = detail::stop_token_of(waiter);
      if (token.stop_possible()) link.emplace(token, detail::group_stopper{&group});
    }
    void await_resume() {
      link.reset();
      if (group.first_error_) std::rethrow_exception(std::exchange(group.first_error_, nullptr));
    }
  };

  static io_context& current_context_or_throw() {
    io_context* ctx = io_context::current();
    if (!ctx) throw invalid_argument_error("task_group created outside a running io_context");
    return *ctx;
  }

  DMOE_DECL void finished(std::exception_ptr error) noexcept;

  io_context* ctx_;
  std::stop_source source_;
  std::stop_token token_;
  std::size_t running_ = 0;
  std::size_t failures_ = 0;
  std::exception_ptr first_error_;
  std::coroutine_handle<> joiner_;
};

inline void detail::spawned_task::promise_type::final_awaiter::await_suspend(
    std::coroutine_handle<promise_type> self) const noexcept {
  task_group* group = self.promise().group;
  std::exception_ptr error = std::move(self.promise().error);
  self.destroy();
  group->finished(std::move(error));
}

inline void detail::group_stopper::operator()() const noexcept { group->request_stop(); }

DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
DMOE_INLINE task_group::~task_group() {
  if (running_ != 0) {
    log_error("task_group destroyed with {} tasks still running (join() was not awaited)", running_);
    std::terminate();
  }
}

DMOE_DEF auto task_group::finished(std::exception_ptr error) noexcept -> void {
  if (error) {
    ++failures_;
    if (!first_error_) first_error_ = std::move(error);
  }
  if (--running_ == 0 && joiner_) ctx_->schedule(std::exchange(joiner_, nullptr));
}

DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
