// async_semaphore: a counting semaphore for coroutines of one io_context; waiters are FIFO and cancellable.
#pragma once

#include <dmoe/async/detail/wait_list.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <coroutine>
#include <cstddef>
#include <utility>

DMOE_BEGIN_NAMESPACE

// Permits are handed to waiters in order (no barging). Use it from its context's thread only.
class async_semaphore {
 public:
  explicit async_semaphore(std::size_t initial) noexcept : available_(initial) {}
  async_semaphore(const async_semaphore&) = delete;
  async_semaphore& operator=(const async_semaphore&) = delete;

  // co_await sem.acquire(): takes one permit, waiting if none is free; cancelled_error on stop.
  auto acquire() noexcept { return acquire_awaiter{*this}; }

  DMOE_LAZY bool try_acquire() noexcept {
    if (available_ == 0 || !waiters_.empty()) return false;
    --available_;
    return true;
  }

  DMOE_LAZY void release(std::size_t count = 1) {
    available_ += count;
    while (available_ > 0 && !waiters_.empty()) {
      detail::list_waiter* w = waiters_.pop_front();
      --available_;
      w->ctx->schedule(w->handle);
    }
  }

  std::size_t available() const noexcept { return available_; }

  // Releases one permit when destroyed (unless released earlier).
  class permit {
   public:
    permit() noexcept = default;
    explicit permit(async_semaphore& sem) noexcept : sem_(&sem) {}
    permit(permit&& other) noexcept : sem_(std::exchange(other.sem_, nullptr)) {}
    permit& operator=(permit&& other) noexcept {
      if (this != &other) {
        release();
        sem_ = std::exchange(other.sem_, nullptr);
      }
      return *this;
    }
    ~permit() { release(); }
    void release() {
      if (sem_) std::exchange(sem_, nullptr)->release();
    }

   private:
    async_semaphore* sem_ = nullptr;
  };

  // co_await sem.acquire_permit(): like acquire(), returning a permit that releases itself.
  auto acquire_permit() noexcept { return permit_awaiter(*this); }

 private:
  struct acquire_awaiter : detail::list_waiter {
    explicit acquire_awaiter(async_semaphore& s) noexcept : sem(s) {}
    async_semaphore& sem;

    bool await_ready() noexcept { return sem.try_acquire(); }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> waiter) {
      if (!detail::begin_wait(*this, waiter, &acquire_awaiter::on_cancel)) return false;
      sem.waiters_.push_back(this);
      detail::watch_stop(*this, waiter);
      return true;
    }
    void await_resume() {
      detail::end_wait(*this);
      if (cancelled) throw cancelled_error("semaphore acquire: cancelled");
    }
    DMOE_LAZY static void on_cancel(detail::cancel_target* target) noexcept {
      auto& self = static_cast<acquire_awaiter&>(*target);
      if (!self.linked) return;
      self.sem.waiters_.remove(&self);
      self.cancelled = true;
      self.ctx->schedule(self.handle);
    }
  };

  struct permit_awaiter : acquire_awaiter {
    explicit permit_awaiter(async_semaphore& s) noexcept : acquire_awaiter(s) {}
    permit await_resume() {
      acquire_awaiter::await_resume();
      return permit(sem);
    }
  };

  std::size_t available_;
  detail::wait_list waiters_;
};

DMOE_END_NAMESPACE
