// handoff: one result (a value or an error) passed from one thread to a thread that blocks for it.
#pragma once

#include <dmoe/core/config.hpp>

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
 public:
  // The producer sets one of these, once.
  template <class... V>
  void set_value(V&&... v) {
    value_.emplace(std::forward<V>(v)...);
    finish();
  }
  void set_exception(std::exception_ptr error) noexcept {
    error_ = std::move(error);
    finish();
  }
  bool ready() const noexcept { return done_.load(std::memory_order_acquire); }

  // Blocks until the producer has set the result; returns the value or rethrows the error. Once.
  T get() {
    done_.wait(false, std::memory_order_acquire);
    if (error_) std::rethrow_exception(error_);
    if constexpr (!std::is_void_v<T>) return std::move(*value_);
  }

 private:
  struct nothing {};

  void finish() noexcept {
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

// The producer's end of a handoff, owned by whatever will set it (a posted function, a coroutine): destroyed before
// it set the result (the function was dropped unrun), it sets `abandoned` instead, so the consumer never blocks for
// ever. Movable, not copyable.
template <class T>
class handoff_sender {
 public:
  handoff_sender(std::shared_ptr<handoff<T>> target, std::exception_ptr abandoned)
      : target_(std::move(target)), abandoned_(std::move(abandoned)) {}
  handoff_sender(handoff_sender&&) noexcept = default;
  handoff_sender& operator=(handoff_sender&&) = delete;
  ~handoff_sender() {
    if (target_ && !target_->ready()) target_->set_exception(std::move(abandoned_));
  }

  handoff<T>& operator*() const noexcept { return *target_; }
  handoff<T>* operator->() const noexcept { return target_.get(); }

 private:
  std::shared_ptr<handoff<T>> target_;
  std::exception_ptr abandoned_;
};

}  // namespace detail
DMOE_END_NAMESPACE
