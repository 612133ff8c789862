// channel<T>: a bounded multi-producer queue into coroutines, which other threads can push into.
#pragma once

#include <dmoe/async/detail/wait_list.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <condition_variable>
#include <coroutine>
#include <cstddef>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

DMOE_BEGIN_NAMESPACE

// Holds at most `capacity` values. Coroutines (on any io_context) send and receive with co_await;
// plain threads use try_send/send_blocking and try_receive/receive_blocking. A coroutine woken from
// another thread is resumed on its own context through that context's post queue.
//
// close(): later sends fail with closed_error; values already queued can still be received, after
// which receive() returns std::nullopt. Waiting senders fail, waiting receivers get std::nullopt.
template <class T>
class channel {
 public:
  explicit channel(std::size_t capacity) : capacity_(capacity) {
    if (capacity == 0) throw invalid_argument_error("channel capacity must be at least 1");
  }
  channel(const channel&) = delete;
  channel& operator=(const channel&) = delete;

  // co_await ch.send(v): queues v, waiting while the channel is full. closed_error if closed.
  auto send(T value) { return send_awaiter(*this, std::move(value)); }
  // co_await ch.receive(): the next value, or std::nullopt once closed and drained.
  auto receive() noexcept { return receive_awaiter(*this); }

  // Any thread: queues `value` if there is room (moving from it only then).
  DMOE_LAZY bool try_send(T& value) {
    std::lock_guard lock(mutex_);
    return !closed_ && give_locked(value);
  }
  bool try_send(T&& value) { return try_send(value); }

  // A thread that runs no io_context: waits while full. closed_error if the channel is closed.
  DMOE_LAZY void send_blocking(T value) {
    refuse_blocking_in_context("send_blocking");
    std::unique_lock lock(mutex_);
    not_full_.wait(lock, [&] { return closed_ || !receivers_.empty() || buffer_.size() < capacity_; });
    if (closed_) throw closed_error("channel closed: send_blocking failed");
    give_locked(value);
  }

  // Any thread: the next value if one is queued.
  DMOE_LAZY std::optional<T> try_receive() {
    std::lock_guard lock(mutex_);
    std::optional<T> value;
    take_locked(value);
    return value;
  }

  // A thread that runs no io_context: waits for a value; std::nullopt once closed and drained.
  DMOE_LAZY std::optional<T> receive_blocking() {
    refuse_blocking_in_context("receive_blocking");
    std::unique_lock lock(mutex_);
    not_empty_.wait(lock, [&] { return closed_ || !buffer_.empty() || !senders_.empty(); });
    std::optional<T> value;
    take_locked(value);
    return value;
  }

  // Any thread.
  DMOE_LAZY void close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    while (detail::list_waiter* w = receivers_.pop_front()) wake(w);
    while (detail::list_waiter* w = senders_.pop_front()) {
      static_cast<send_awaiter*>(w)->closed = true;
      wake(w);
    }
    not_full_.notify_all();
    not_empty_.notify_all();
  }

  DMOE_LAZY bool closed() const {
    std::lock_guard lock(mutex_);
    return closed_;
  }
  DMOE_LAZY std::size_t size() const {
    std::lock_guard lock(mutex_);
    return buffer_.size();
  }
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  struct receive_awaiter : detail::list_waiter {
    explicit receive_awaiter(channel& c) noexcept : ch(c) {}
    channel& ch;
    std::optional<T> value;

    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> waiter) {
      if (!detail::begin_wait(*this, waiter, &receive_awaiter::on_cancel)) return false;
      {
        std::lock_guard lock(ch.mutex_);
        if (ch.take_locked(value) || ch.closed_) return false;
        ch.receivers_.push_back(this);
      }
      detail::watch_stop(*this, waiter);
      return true;
    }
    std::optional<T> await_resume() {
      detail::end_wait(*this);
      if (cancelled) throw cancelled_error("channel receive: cancelled");
      return std::move(value);
    }
    DMOE_LAZY static void on_cancel(detail::cancel_target* target) noexcept {
      auto& self = static_cast<receive_awaiter&>(*target);
      {
        std::lock_guard lock(self.ch.mutex_);
        if (!self.linked) return;
        self.ch.receivers_.remove(&self);
      }
      self.cancelled = true;
      self.ctx->schedule(self.handle);
    }
  };

  struct send_awaiter : detail::list_waiter {
    send_awaiter(channel& c, T v) : ch(c), value(std::move(v)) {}
    channel& ch;
    T value;
    bool closed = false;

    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> waiter) {
      if (!detail::begin_wait(*this, waiter, &send_awaiter::on_cancel)) return false;
      {
        std::lock_guard lock(ch.mutex_);
        if (ch.closed_) {
          closed = true;
          return false;
        }
        if (ch.give_locked(value)) return false;
        ch.senders_.push_back(this);
      }
      detail::watch_stop(*this, waiter);
      return true;
    }
    void await_resume() {
      detail::end_wait(*this);
      if (cancelled) throw cancelled_error("channel send: cancelled");
      if (closed) throw closed_error("channel closed: send failed");
    }
    DMOE_LAZY static void on_cancel(detail::cancel_target* target) noexcept {
      auto& self = static_cast<send_awaiter&>(*target);
      {
        std::lock_guard lock(self.ch.mutex_);
        if (!self.linked) return;
        self.ch.senders_.remove(&self);
      }
      self.cancelled = true;
      self.ctx->schedule(self.handle);
    }
  };

  DMOE_LAZY static void refuse_blocking_in_context(const char* what) {
    if (io_context::current()) {
      throw invalid_argument_error(std::string("channel::") + what +
                                   " called on a thread running an io_context; co_await send()/receive() instead");
    }
  }

  DMOE_LAZY static void wake(detail::list_waiter* w) { w->ctx->resume_from_any_thread(&w->resume_node); }

  // Hands `value` to a waiting receiver or queues it; false (value untouched) when full.
  DMOE_LAZY bool give_locked(T& value) {
    if (detail::list_waiter* w = receivers_.pop_front()) {
      static_cast<receive_awaiter*>(w)->value.emplace(std::move(value));
      wake(w);
      return true;
    }
    if (buffer_.size() >= capacity_) return false;
    buffer_.push_back(std::move(value));
    not_empty_.notify_one();
    return true;
  }

  // Takes the oldest value, letting the first waiting sender refill the room it leaves.
  DMOE_LAZY bool take_locked(std::optional<T>& out) {
    if (buffer_.empty()) return false;
    out.emplace(std::move(buffer_.front()));
    buffer_.pop_front();
    if (detail::list_waiter* w = senders_.pop_front()) {
      buffer_.push_back(std::move(static_cast<send_awaiter*>(w)->value));
      wake(w);
    } else {
      not_full_.notify_one();
    }
    return true;
  }

  mutable std::mutex mutex_;
  std::condition_variable not_full_;
  std::condition_variable not_empty_;
  std::deque<T> buffer_;
  std::size_t capacity_;
  bool closed_ = false;
  detail::wait_list receivers_;
  detail::wait_list senders_;
};

DMOE_END_NAMESPACE
