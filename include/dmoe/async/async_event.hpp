// async_event: a manual-reset event for coroutines of one io_context; waits are cancellable.
#pragma once

#include <dmoe/async/detail/wait_list.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <coroutine>

DMOE_BEGIN_NAMESPACE

// set() releases every waiter (now and until reset()). Use it from its context's thread only;
// other threads can post() a set().
class async_event {
 public:
  explicit async_event(bool initially_set = false) noexcept : set_(initially_set) {}
  async_event(const async_event&) = delete;
  async_event& operator=(const async_event&) = delete;

  // co_await event.wait(): returns once the event is set; cancelled_error on stop.
  auto wait() noexcept { return wait_awaiter{*this}; }

  DMOE_LAZY void set() {
    set_ = true;
    while (detail::list_waiter* w = waiters_.pop_front()) w->ctx->schedule(w->handle);
  }
  void reset() noexcept { set_ = false; }
  bool is_set() const noexcept { return set_; }

 private:
  struct wait_awaiter : detail::list_waiter {
    explicit wait_awaiter(async_event& e) noexcept : event(e) {}
    async_event& event;

    bool await_ready() const noexcept { return event.set_; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> waiter) {
      if (!detail::begin_wait(*this, waiter, &wait_awaiter::on_cancel)) return false;
      event.waiters_.push_back(this);
      detail::watch_stop(*this, waiter);
      return true;
    }
    void await_resume() {
      detail::end_wait(*this);
      if (cancelled) throw cancelled_error("event wait: cancelled");
    }
    DMOE_LAZY static void on_cancel(detail::cancel_target* target) noexcept {
      auto& self = static_cast<wait_awaiter&>(*target);
      if (!self.linked) return;
      self.event.waiters_.remove(&self);
      self.cancelled = true;
      self.ctx->schedule(self.handle);
    }
  };

  bool set_;
  detail::wait_list waiters_;
};

DMOE_END_NAMESPACE
