// handoff: one result (a value or an error) passed from one thread to a thread that blocks for it.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <atomic>
#include <exception>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

DMOE_BEGIN_NAMESPACE
namespace detail {

// std::promise and std::future in one object, blocking on std::atomic's wait and notify (C++20): <future> costs
// every translation unit that includes it about half a second of compilation. Share it through a shared_ptr
// (make_handoff), so that the producer's notify never touches an object the consumer has already destroyed.
template <class T>
class handoff {
  static_assert(!std::is_reference_v<T>, "dmoe::detail::handoff holds values: hand over a pointer instead");

 public:
  // The producer sets one of these, once (a second set is a data race); the error is never null.
  template <class... V>
  void set_value(V&&... v) {
    value_.emplace(std::forward<V>(v)...);
    finish();
  }
  DMOE_LAZY void set_exception(std::exception_ptr error) noexcept {
    error_ = std::move(error);
    finish();
  }
  bool ready() const noexcept { return done_.load(std::memory_order_acquire); }

  // Blocks until the producer has set the result; returns the value or rethrows the error. Once (a second get()
  // returns a moved-from value).
  T get() {
    done_.wait(false, std::memory_order_acquire);
    if (error_) std::rethrow_exception(error_);
    if constexpr (!std::is_void_v<T>) return std::move(*value_);
  }

 private:
  struct nothing {};

  DMOE_LAZY void finish() noexcept {
    done_.store(true, std::memory_order_release);
    done_.notify_all();
  }

  std::optional<std::conditional_t<std::is_void_v<T>, nothing, T>> value_;
  std::exception_ptr error_;
  std::atomic<bool> done_{false};
};

template <class T>
std::shared_ptr<handoff<T>> make_handoff() {
  return std::make_shared<handoff<T>>();
}

// What get() throws when the producer's end was destroyed without setting a result.
class handoff_abandoned : public closed_error {
 public:
  handoff_abandoned() : closed_error("the thread that was to answer ended without answering") {}
};

// The producer's end of a handoff, owned by whatever will set it (a posted function, a coroutine, a thread's
// function): destroyed before it set the result (the function was dropped unrun, the thread ended), it sets
// handoff_abandoned instead, so the consumer never blocks for ever. Movable, not copyable.
template <class T>
class handoff_sender {
 public:
  explicit handoff_sender(std::shared_ptr<handoff<T>> target) noexcept : target_(std::move(target)) {}
  handoff_sender(handoff_sender&&) noexcept = default;
  handoff_sender& operator=(handoff_sender&&) = delete;
  ~handoff_sender() {
    if (target_ && !target_->ready()) target_->set_exception(std::make_exception_ptr(handoff_abandoned()));
  }

  handoff<T>& operator*() const noexcept { return *target_; }
  handoff<T>* operator->() const noexcept { return target_.get(); }

 private:
  std::shared_ptr<handoff<T>> target_;
};

}  // namespace detail
DMOE_END_NAMESPACE
