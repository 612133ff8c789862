// child_group: starts a combinator's child tasks, links their stop tokens, resumes the parent when all finished.
#pragma once

#include <dmoe/async/task.hpp>
#include <dmoe/core/config.hpp>

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <span>
#include <stop_token>

DMOE_BEGIN_NAMESPACE

namespace detail {

// Requests stop on a source; the callable of a stop_callback linking a parent token to it.
struct stop_requester {
  std::stop_source* source;
  void operator()() const noexcept { source->request_stop(); }
};

// A stop source that also stops when a parent token stops (while linked).
class linked_stop_source {
 public:
  linked_stop_source() : token_(source_.get_token()) {}
  linked_stop_source(const linked_stop_source&) = delete;
  linked_stop_source& operator=(const linked_stop_source&) = delete;

  void link(const std::stop_token& parent) {
    if (parent.stop_possible()) link_.emplace(parent, stop_requester{&source_});
  }
  // A second token that also stops this source (with_stop_token).
  void also_link(const std::stop_token& other) {
    if (other.stop_possible()) extra_link_.emplace(other, stop_requester{&source_});
  }
  DMOE_LAZY void unlink() noexcept {
    link_.reset();
    extra_link_.reset();
  }
  void request_stop() noexcept { source_.request_stop(); }
  bool stop_requested() const noexcept { return source_.stop_requested(); }
  // Children point at this token; it lives as long as this object.
  const std::stop_token& token() const noexcept { return token_; }

 private:
  std::stop_source source_;
  std::stop_token token_;
  std::optional<std::stop_callback<stop_requester>> link_;
  std::optional<std::stop_callback<stop_requester>> extra_link_;
};

// The children of when_all (stop the others on the first failure) or when_any (stop the others
// on the first completion). Every child finishes before the parent resumes.
class child_group final : public child_observer {
 public:
  static constexpr std::size_t none = SIZE_MAX;
  enum class policy { all, any };

  explicit child_group(policy p) noexcept : policy_(p) {}

  // Makes `child` report to this group as child `index`, with the group's stop token.
  template <class T>
  std::coroutine_handle<> adopt(task<T>& child, std::size_t index) noexcept {
    child.handle().promise().set_observer(this, index);
    child.handle().promise().set_stop_token(&stop_.token());
    return child.handle();
  }

  // co_await group.run(children): starts them all, resumes when every one has finished.
  auto run(std::span<const std::coroutine_handle<>> children) noexcept { return run_awaiter{*this, children}; }

  // Children also stop when `token` does.
  void also_stop_on(const std::stop_token& token) { stop_.also_link(token); }

  // The first child to finish (any) or to fail (all); none if there was none.
  std::size_t first() const noexcept { return first_; }
  const std::exception_ptr& first_error() const noexcept { return first_error_; }

  std::coroutine_handle<> child_done(std::size_t index, task_promise_base& child) noexcept override {
    if (first_ == none && (policy_ == policy::any || child.exception())) {
      first_ = index;
      first_error_ = child.exception();
      stop_.request_stop();
    }
    if (--remaining_ == 0) {
      stop_.unlink();
      return parent_;
    }
    return std::noop_coroutine();
  }

 private:
  struct run_awaiter {
    child_group& group;
    std::span<const std::coroutine_handle<>> children;

    bool await_ready() const noexcept { return children.empty(); }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> parent) {
      group.stop_.link(stop_token_of(parent));
      group.parent_ = parent;
      group.remaining_ = children.size() + 1;  // +1 so no child resumes the parent while starting
      for (auto child : children) child.resume();
      if (--group.remaining_ == 0) {
        group.stop_.unlink();
        return false;
      }
      return true;
    }
    void await_resume() const noexcept {}
  };

  policy policy_;
  std::size_t remaining_ = 0;
  std::size_t first_ = none;
  std::exception_ptr first_error_;
  std::coroutine_handle<> parent_;
  linked_stop_source stop_;
};

// The result of a finished child, with void as std::monostate.
template <class T>
non_void_t<T> take_result(task<T>& child) {
  if constexpr (std::is_void_v<T>) {
    child.handle().promise().take_result();
    return {};
  } else {
    return child.handle().promise().take_result();
  }
}

}  // namespace detail

DMOE_END_NAMESPACE
