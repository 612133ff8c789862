// task<T>: the lazy, move-only coroutine type of dmoe's async layer, with stop-token inheritance.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>
#include <variant>

DMOE_BEGIN_NAMESPACE

template <class T = void>
class task;

// DMOE_FRAME_CACHE 1 (the default) recycles coroutine frames per thread (detail::frame_allocator); 0 leaves every
// frame to the global heap. It is 0 by default under the address, hardware-address, memory and thread sanitizers,
// whose allocator hooks then still see every frame (a frame used after its coroutine ended, read uninitialised,
// or raced on); define DMOE_FRAME_CACHE=0 for Valgrind too. Translation units built either way may be mixed: a frame
// is always allocated at the full size of its class, so either kind of deallocation is right for it.
#ifndef DMOE_FRAME_CACHE
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || defined(__SANITIZE_HWADDRESS__)
#define DMOE_FRAME_CACHE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(hwaddress_sanitizer) || __has_feature(memory_sanitizer) || \
    __has_feature(thread_sanitizer)
#define DMOE_FRAME_CACHE 0
#endif
#endif
#endif
#ifndef DMOE_FRAME_CACHE
#define DMOE_FRAME_CACHE 1
#endif

namespace detail {

// The token of a coroutine that nobody can cancel; a static so promises can point at it.
inline const std::stop_token no_stop_token{};

// Set by the running io_context: where its loop's stack frame is, and how to defer a resumption.
struct transfer_guard {
  const char* stack_base = nullptr;
  void* context = nullptr;
  void (*defer)(void* context, std::coroutine_handle<> next) = nullptr;
};
inline thread_local transfer_guard current_transfer_guard;

// Deeper than this below the loop, a transfer goes through the loop instead.
inline constexpr std::ptrdiff_t max_transfer_stack_depth = 256 * 1024;

// Symmetric transfer to `next`. Optimising compilers make it a tail call and the stack stays flat;
// where they do not (GCC with AddressSanitizer, -O0) the stack grows with every transfer, so past
// a depth `next` is queued on the running loop and the stack unwinds to it.
DMOE_LAZY inline std::coroutine_handle<> transfer_to(std::coroutine_handle<> next) noexcept {
  const transfer_guard& guard = current_transfer_guard;
  if (guard.stack_base) {
    const char* here = static_cast<const char*>(__builtin_frame_address(0));
    if (guard.stack_base - here > max_transfer_stack_depth) {
      guard.defer(guard.context, next);
      return std::noop_coroutine();
    }
  }
  return next;
}

class task_promise_base;

// Learns when a child task started by a combinator (when_all, when_any, ...) has finished.
class child_observer {
 public:
  // Called from the child's final suspend; returns the coroutine to run next (symmetric transfer).
  virtual std::coroutine_handle<> child_done(std::size_t index, task_promise_base& child) noexcept = 0;

 protected:
  ~child_observer() = default;
};

// A promise that carries a stop token; every dmoe coroutine type has one.
template <class P>
concept stop_token_promise = requires(const P& p) {
  { p.stop_token_ptr() } noexcept -> std::same_as<const std::stop_token*>;
};

// The stop token of the coroutine behind `h`; foreign coroutine types cannot be cancelled.
template <class P>
const std::stop_token& stop_token_of(std::coroutine_handle<P> h) noexcept {
  if constexpr (stop_token_promise<P>) {
    return *h.promise().stop_token_ptr();
  } else {
    (void)h;
    return no_stop_token;
  }
}

// Recycles coroutine frames per thread. Every task call allocates a frame and frees it when the task ends; the RPC
// and DHT layers make several per call, many larger than glibc's per-thread cache serves (1,032 bytes), and those
// go through its arena, which consolidates its fast bins on every such request. Frames up to max_size bytes are
// allocated at the size of their 64-byte class; freed, they go to the freeing thread's list for that class while
// the thread holds at most max_cached_bytes, else to the heap, as do larger frames. A thread's cached frames go
// back to the heap when it exits; frames freed after that (by later thread-local destructors) go there directly.
class frame_allocator {
 public:
  static constexpr std::size_t granularity = 64;
  static constexpr std::size_t max_size = 4096;
  static constexpr std::size_t max_cached_bytes = 256 * 1024;  // per thread

  DMOE_LAZY static void* allocate(std::size_t size) {
    if (size > max_size) return ::operator new(size);
#if DMOE_FRAME_CACHE
    if (cache* c = local()) {
      free_frame*& head = c->heads[class_of(size)];
      if (free_frame* f = head) {
        head = f->next;
        c->bytes -= rounded(size);
        return f;
      }
    }
#endif
    return ::operator new(rounded(size));
  }

  DMOE_LAZY static void deallocate(void* p, std::size_t size) noexcept {
#if DMOE_FRAME_CACHE
    if (size <= max_size) {
      cache* c = local();
      if (c && c->bytes + rounded(size) <= max_cached_bytes) {
        free_frame*& head = c->heads[class_of(size)];
        head = ::new (p) free_frame{head};
        c->bytes += rounded(size);
        return;
      }
    }
#else
    (void)size;
#endif
    ::operator delete(p);  // unsized: clang without -fsized-deallocation has no sized one
  }

  // Bytes of frames the calling thread holds cached (0 with DMOE_FRAME_CACHE 0).
  DMOE_LAZY static std::size_t cached_bytes() noexcept {
#if DMOE_FRAME_CACHE
    const cache* c = local();
    return c ? c->bytes : 0;
#else
    return 0;
#endif
  }

  // The size a request of `size` bytes (at most max_size) is allocated at.
  static constexpr std::size_t rounded(std::size_t size) noexcept { return (class_of(size) + 1) * granularity; }

 private:
  struct free_frame {
    free_frame* next;
  };
  static constexpr std::size_t class_of(std::size_t size) noexcept { return size == 0 ? 0 : (size - 1) / granularity; }

  struct cache {
    free_frame* heads[max_size / granularity] = {};
    std::size_t bytes = 0;
    cache() = default;
    cache(const cache&) = delete;
    cache& operator=(const cache&) = delete;
    ~cache() {
      state() = gone;
      for (free_frame*& head : heads)
        while (free_frame* f = head) {
          head = f->next;
          ::operator delete(f);
        }
      bytes = 0;
    }
  };
  enum : unsigned char { not_made, alive, gone };
  // Trivially destructible, so still readable while the thread's other thread-locals are destroyed.
  DMOE_LAZY static unsigned char& state() noexcept {
    static thread_local unsigned char s = not_made;
    return s;
  }
  DMOE_LAZY static cache* local() noexcept {
    if (state() == gone) return nullptr;
    static thread_local cache c;
    state() = alive;
    return &c;
  }
};

class task_promise_base {
 public:
  static void* operator new(std::size_t size) { return frame_allocator::allocate(size); }
  static void operator delete(void* p, std::size_t size) noexcept { frame_allocator::deallocate(p, size); }

  struct final_awaiter {
    bool await_ready() const noexcept { return false; }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> self) noexcept {
      task_promise_base& p = self.promise();
      if (p.observer_) return transfer_to(p.observer_->child_done(p.index_, p));
      if (p.continuation_) return transfer_to(p.continuation_);
      return std::noop_coroutine();
    }
    void await_resume() const noexcept {}
  };

  std::suspend_always initial_suspend() const noexcept { return {}; }
  final_awaiter final_suspend() const noexcept { return {}; }

  const std::stop_token* stop_token_ptr() const noexcept { return stop_token_; }
  // The token must outlive the task's run (it is owned by the awaiting coroutine or a combinator).
  DMOE_LAZY void set_stop_token(const std::stop_token* token) noexcept { stop_token_ = token; }
  DMOE_LAZY void set_continuation(std::coroutine_handle<> continuation) noexcept { continuation_ = continuation; }
  DMOE_LAZY void set_observer(child_observer* observer, std::size_t index) noexcept {
    observer_ = observer;
    index_ = index;
  }

  void unhandled_exception() noexcept { exception_ = std::current_exception(); }
  const std::exception_ptr& exception() const noexcept { return exception_; }

 protected:
  std::exception_ptr exception_;

 private:
  std::coroutine_handle<> continuation_;
  child_observer* observer_ = nullptr;
  std::size_t index_ = 0;
  const std::stop_token* stop_token_ = &no_stop_token;
};

template <class T>
class task_promise final : public task_promise_base {
 public:
  task<T> get_return_object() noexcept;

  template <class U>
    requires std::is_convertible_v<U&&, T>
  void return_value(U&& value) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
    value_.emplace(std::forward<U>(value));
  }

  T take_result() {
    if (exception_) std::rethrow_exception(exception_);
    return std::move(*value_);
  }

 private:
  std::optional<T> value_;
};

template <>
class task_promise<void> final : public task_promise_base {
 public:
  task<void> get_return_object() noexcept;

  void return_void() const noexcept {}
  void take_result() const {
    if (exception_) std::rethrow_exception(exception_);
  }
};

// void becomes std::monostate where results are collected (tuples, variants).
template <class T>
struct non_void {
  using type = T;
};
template <>
struct non_void<void> {
  using type = std::monostate;
};
template <class T>
using non_void_t = typename non_void<T>::type;

}  // namespace detail

// A lazily started coroutine producing a T. It starts when awaited and resumes its awaiter when it
// finishes (symmetric transfer, so long chains of synchronous completions use no stack). The awaiting
// coroutine's stop token is inherited. Exceptions propagate through co_await.
template <class T>
class [[nodiscard]] task {
 public:
  using promise_type = detail::task_promise<T>;
  using handle_type = std::coroutine_handle<promise_type>;
  using value_type = T;

  task() noexcept = default;
  explicit task(handle_type handle) noexcept : handle_(handle) {}
  task(task&& other) noexcept : handle_(std::exchange(other.handle_, {})) {}
  task& operator=(task&& other) noexcept {
    if (this != &other) {
      destroy();
      handle_ = std::exchange(other.handle_, {});
    }
    return *this;
  }
  task(const task&) = delete;
  task& operator=(const task&) = delete;
  ~task() { destroy(); }

  bool valid() const noexcept { return static_cast<bool>(handle_); }
  bool done() const noexcept { return handle_ && handle_.done(); }
  handle_type handle() const noexcept { return handle_; }

  auto operator co_await() && noexcept { return awaiter{handle_}; }
  auto operator co_await() & noexcept { return awaiter{handle_}; }

 private:
  struct awaiter {
    handle_type handle;

    bool await_ready() const noexcept { return !handle || handle.done(); }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> parent) noexcept {
      handle.promise().set_continuation(parent);
      handle.promise().set_stop_token(&detail::stop_token_of(parent));
      return detail::transfer_to(handle);
    }
    T await_resume() {
      if (!handle) throw invalid_argument_error("co_await on an empty dmoe::task");
      return handle.promise().take_result();
    }
  };

  void destroy() noexcept {
    if (handle_) handle_.destroy();
  }

  handle_type handle_;
};

namespace detail {

template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
  return task<T>(std::coroutine_handle<task_promise<T>>::from_promise(*this));
}
inline task<void> task_promise<void>::get_return_object() noexcept {
  return task<void>(std::coroutine_handle<task_promise<void>>::from_promise(*this));
}

// co_await this_task::get_stop_token(): completes at once with the current coroutine's token.
class stop_token_awaiter {
 public:
  bool await_ready() const noexcept { return false; }
  template <class P>
  bool await_suspend(std::coroutine_handle<P> self) noexcept {
    token_ = stop_token_of(self);
    return false;
  }
  std::stop_token await_resume() noexcept { return std::move(token_); }

 private:
  std::stop_token token_;
};

}  // namespace detail

namespace this_task {

// `std::stop_token token = co_await this_task::get_stop_token();`
inline detail::stop_token_awaiter get_stop_token() noexcept { return {}; }

}  // namespace this_task

DMOE_END_NAMESPACE
