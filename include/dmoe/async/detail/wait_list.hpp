// wait_list: intrusive FIFO of coroutines waiting on a synchronisation primitive, cancellable.
#pragma once

#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <coroutine>
#include <stop_token>

DMOE_BEGIN_NAMESPACE

namespace detail {

// One waiting coroutine; lives in its frame (inside the awaiter).
struct list_waiter : cancel_target {
  list_waiter* prev = nullptr;
  list_waiter* next = nullptr;
  std::coroutine_handle<> handle;
  bool linked = false;     // in a wait list (not yet granted, not cancelled)
  bool cancelled = false;  // a stop request took it out of the list
  stop_link stop;
  posted_resume resume_node;  // for a resumption from another thread
};

class wait_list {
 public:
  bool empty() const noexcept { return head_ == nullptr; }
  list_waiter* front() const noexcept { return head_; }

  DMOE_LAZY void push_back(list_waiter* w) noexcept {
    w->prev = tail_;
    w->next = nullptr;
    if (tail_) {
      tail_->next = w;
    } else {
      head_ = w;
    }
    tail_ = w;
    w->linked = true;
  }
  DMOE_LAZY void remove(list_waiter* w) noexcept {
    if (w->prev) {
      w->prev->next = w->next;
    } else {
      head_ = w->next;
    }
    if (w->next) {
      w->next->prev = w->prev;
    } else {
      tail_ = w->prev;
    }
    w->prev = w->next = nullptr;
    w->linked = false;
  }
  DMOE_LAZY list_waiter* pop_front() noexcept {
    list_waiter* w = head_;
    if (w) remove(w);
    return w;
  }

 private:
  list_waiter* head_ = nullptr;
  list_waiter* tail_ = nullptr;
};

// Prepares `w` to wait in a coroutine on the current context; false if stop was already requested.
template <class P>
bool begin_wait(list_waiter& w, std::coroutine_handle<P> waiter, void (*cancel)(cancel_target*) noexcept) {
  if (stop_token_of(waiter).stop_requested()) {
    w.cancelled = true;
    return false;
  }
  w.ctx = io_context::current();
  if (!w.ctx) throw invalid_argument_error("an async primitive was awaited outside a running io_context");
  w.handle = waiter;
  w.resume_node.handle = waiter;
  w.cancel = cancel;
  return true;
}

// After linking: a stop request from now on takes the waiter out (may run `cancel` at once).
template <class P>
void watch_stop(list_waiter& w, std::coroutine_handle<P> waiter) {
  const std::stop_token& token = stop_token_of(waiter);
  if (token.stop_possible()) w.stop.emplace(token, stop_forwarder{&w});
}

// In await_resume: the stop callback is gone before the frame can be.
DMOE_LAZY inline void end_wait(list_waiter& w) noexcept {
  w.stop.reset();
  if (w.ctx) w.ctx->forget_cancel(&w);
}

}  // namespace detail

DMOE_END_NAMESPACE
