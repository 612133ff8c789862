// io_context: the event loop of one thread, one io_uring, on which dmoe's coroutines run.
#pragma once

#include <dmoe/async/task.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <liburing.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

DMOE_BEGIN_NAMESPACE

class io_context;

namespace detail {

// The io_context running on this thread, if any.
inline thread_local io_context* current_context = nullptr;

// What a CQE's user_data points at: every in-flight operation's state derives from this.
struct io_completion {
  void (*complete)(io_completion* self, int result, unsigned flags) noexcept = nullptr;
};

// user_data of SQEs whose completions nobody waits for (cancel requests, linked timeouts).
inline constexpr std::uint64_t ignored_user_data = 0;
// user_data of the read on the wake-up eventfd.
inline constexpr std::uint64_t wake_user_data = 1;

// Something a stop request can cancel. `cancel` runs on the owning context's thread and never
// resumes a coroutine inline (it submits an ASYNC_CANCEL or schedules the waiter).
struct cancel_target {
  void (*cancel)(cancel_target* self) noexcept = nullptr;
  io_context* ctx = nullptr;
  // Set while a stop request from another thread waits in ctx's queue for this target.
  std::atomic<bool> remote_queued{false};
};

// The callable of the std::stop_callback an awaiting operation registers.
struct stop_forwarder {
  cancel_target* target;
  void operator()() const noexcept;
};
using stop_link = std::optional<std::stop_callback<stop_forwarder>>;

// A unit of work handed to a context from any thread.
struct posted_node {
  posted_node* next = nullptr;
  // Runs the work (run == true) or just releases it (the context is destroyed first).
  void (*invoke)(posted_node* self, bool run) noexcept = nullptr;
};

template <class F>
struct posted_function final : posted_node {
  explicit posted_function(F&& f) : fn(std::move(f)) { invoke = &posted_function::call; }
  explicit posted_function(const F& f) : fn(f) { invoke = &posted_function::call; }
  DMOE_LAZY static void call(posted_node* self, bool run) noexcept {
    std::unique_ptr<posted_function> owned(static_cast<posted_function*>(self));
    if (run) owned->fn();  // a posted function that throws ends the process (it is noexcept here)
  }
  F fn;
};

// A coroutine to resume on its context, posted from another thread; lives in the waiting frame.
struct posted_resume final : posted_node {
  posted_resume() noexcept { invoke = &posted_resume::call; }
  static void call(posted_node* self, bool run) noexcept {
    if (run) static_cast<posted_resume*>(self)->handle.resume();
  }
  std::coroutine_handle<> handle;
};

// The error for a failed io_uring_setup, e.g. "io_uring_setup: Operation not permitted".
DMOE_LAZY inline system_error io_uring_setup_error(int errno_value) {
  return system_error(errno_value, "io_uring_setup");
}

class root_observer final : public child_observer {
 public:
  std::coroutine_handle<> child_done(std::size_t, task_promise_base&) noexcept override {
    done = true;
    return std::noop_coroutine();
  }
  bool done = false;
};

}  // namespace detail

// One io_uring and the loop that drives it. Create one per thread; every coroutine, socket and
// timer belongs to the context it was started on and is touched only from that thread. Only
// post(), stop() and the thread-safe channel operations may be called from other threads.
class io_context {
 public:
  static constexpr unsigned default_entries = 1024;

  // Throws dmoe::system_error ("io_uring_setup: ...") when the kernel refuses a ring, and
  // dmoe::unavailable_error when it lacks an operation dmoe needs.
  DMOE_DECL explicit io_context(unsigned entries = default_entries);

  io_context(const io_context&) = delete;
  io_context& operator=(const io_context&) = delete;

  ~io_context();

  // Runs until stop() is called (a stop() before run() makes the next run() return at once).
  DMOE_LAZY void run() { run_loop(nullptr); }

  // Runs until `work` finishes and returns its result (or rethrows). stop() cancels `work`
  // through its stop token and keeps running until it has finished.
  template <class T>
  T run(task<T> work) {
    if (!work.valid()) throw invalid_argument_error("io_context::run given an empty task");
    detail::root_observer observer;
    std::stop_source source;
    const std::stop_token token = source.get_token();
    auto& promise = work.handle().promise();
    promise.set_observer(&observer, 0);
    promise.set_stop_token(&token);
    std::stop_source* previous_root = std::exchange(root_stop_, &source);
    schedule(work.handle());
    try {
      run_loop(&observer.done);
    } catch (...) {
      root_stop_ = previous_root;
      throw;
    }
    root_stop_ = previous_root;
    return promise.take_result();
  }

  // Thread-safe. Makes run() return; makes run(task) cancel its task.
  DMOE_LAZY void stop() noexcept {
    stop_requested_.store(true, std::memory_order_release);
    if (!in_this_thread()) wake();
  }

  // Thread-safe: runs `fn` on this context's thread, exactly once, in posting order per thread.
  // A posted function must not throw.
  template <class F>
  void post(F&& fn) {
    auto* node = new detail::posted_function<std::decay_t<F>>(std::forward<F>(fn));
    if (in_this_thread()) {
      append(local_head_, local_tail_, node);
      return;
    }
    {
      std::lock_guard lock(remote_mutex_);
      append(remote_head_, remote_tail_, node);
    }
    wake();
  }

  // The context running on the calling thread (nullptr outside run()).
  static io_context* current() noexcept { return detail::current_context; }
  bool in_this_thread() const noexcept { return detail::current_context == this; }

  // Whether the kernel supports an io_uring opcode (IORING_OP_...).
  bool supports(unsigned opcode) const noexcept { return opcode < supported_.size() && supported_[opcode]; }
  // The IORING_SETUP_* flags the ring was created with.
  unsigned setup_flags() const noexcept { return setup_flags_; }
  // Operations submitted whose completion has not arrived yet (not counting internal ones).
  std::size_t operations_in_flight() const noexcept { return ops_in_flight_; }

  // ---- building blocks for awaitables (dmoe's own operations use these) ----

  // A free SQE whose completion is delivered to `op`. Submitted at the next loop iteration.
  DMOE_DECL io_uring_sqe* get_sqe(detail::io_completion* op);
  // A free SQE whose completion is ignored (cancel requests, linked timeouts).
  DMOE_LAZY io_uring_sqe* get_ignored_sqe() {
    io_uring_sqe* sqe = next_sqe();
    io_uring_sqe_set_data64(sqe, detail::ignored_user_data);
    return sqe;
  }
  // Makes sure the next `count` SQEs come from one submission (linked chains must not be split).
  DMOE_LAZY void reserve_sqes(unsigned count) {
    if (io_uring_sq_space_left(&ring_) < count) flush_submissions();
  }
  // Asks the kernel to cancel the operation whose user_data is `op`; its own CQE still arrives.
  DMOE_LAZY void submit_cancel(detail::io_completion* op) {
    io_uring_sqe* sqe = get_ignored_sqe();
    io_uring_prep_cancel64(sqe, reinterpret_cast<std::uint64_t>(op), 0);
  }
  // Resumes `handle` on the next loop iteration. Only from this context's thread.
  void schedule(std::coroutine_handle<> handle) { ready_.push_back(handle); }
  // Resumes node->handle on this context from any thread (the node lives in the waiting frame).
  DMOE_DECL void resume_from_any_thread(detail::posted_resume* node);
  // From a stop callback, on any thread: runs target->cancel on this context's thread.
  DMOE_DECL void request_cancel(detail::cancel_target* target) noexcept;
  // After its stop callback is gone: drops a queued cross-thread cancel of a finished target.
  DMOE_DECL void forget_cancel(detail::cancel_target* target) noexcept;

  // Whether an operation may finish at once, without the ring, and resume its coroutine without suspending (see
  // io_operation's try_now). Each loop iteration allows a bounded number, so a coroutine whose operations keep
  // finishing at once still lets the others run.
  DMOE_LAZY bool take_inline_turn() noexcept {
    if (inline_turns_ == 0) return false;
    --inline_turns_;
    return true;
  }

  // Before it sleeps for completions, the loop polls for them for a while, as a guest kernel's haltpoll does
  // before it halts a CPU: waking a sleeping thread costs tens of microseconds on a virtual machine (more than a
  // loopback round trip's work), and a poll that sees the completion come costs only the time it waited. The poll
  // yields the CPU every few looks (sched_yield), so a thread it waits for on the same CPU runs meanwhile. The
  // window adapts as haltpoll's does: it doubles (from 10 µs, up to `max`) after a wait that ended within `max`
  // (within twice `max` for a wait that slept at once, which includes the wake-up), and halves after one that did
  // not, so a loop whose completions come seldom soon stops polling. A loop with more than 16 operations in flight
  // sleeps at once: its completions come in streams, and a sleep lets them gather into one batch. `max` 0 turns
  // polling off. Default: 50 µs. Only on kernels that flag pending completion work (IORING_SETUP_TASKRUN_FLAG,
  // Linux 5.19); elsewhere the loop sleeps at once.
  void set_max_poll_before_sleep(std::chrono::nanoseconds max) noexcept {
    max_poll_ns_ = max.count() > 0 ? max.count() : 0;
    poll_ns_ = std::min(poll_ns_, max_poll_ns_);
  }

  // The polling window the next wait for completions starts with (0: it sleeps at once).
  std::chrono::nanoseconds poll_window() const noexcept { return std::chrono::nanoseconds(poll_ns_); }

  io_uring* native_handle() noexcept { return &ring_; }

 private:
  DMOE_DECL static void append(detail::posted_node*& head, detail::posted_node*& tail, detail::posted_node* node) noexcept;

  DMOE_DECL static void release_nodes(detail::posted_node* node) noexcept;

  DMOE_DECL void probe();

  DMOE_DECL io_uring_sqe* next_sqe();

  // Submits what is queued so SQ slots free up; completions stay for the loop to reap.
  DMOE_DECL void flush_submissions();

  // Moves completions out of a full CQ ring so submission can go on; the loop dispatches them.
  DMOE_DECL void stash_completions();

  DMOE_LAZY void arm_wake() {
    io_uring_sqe* sqe = next_sqe();
    io_uring_prep_read(sqe, wake_fd_, &wake_buffer_, sizeof wake_buffer_, 0);
    io_uring_sqe_set_data64(sqe, detail::wake_user_data);
  }

  DMOE_LAZY void wake() noexcept {
    if (wake_pending_.exchange(true, std::memory_order_acq_rel)) return;
    std::uint64_t one = 1;
    [[maybe_unused]] auto written = ::write(wake_fd_, &one, sizeof one);
  }

  DMOE_DECL void bind_to_this_thread();

  DMOE_DECL void run_loop(const bool* done);

  static void defer_transfer(void* self, std::coroutine_handle<> next) { static_cast<io_context*>(self)->schedule(next); }

  // Runs what was ready when it started; what that makes ready waits until I/O was polled.
  DMOE_DECL void run_ready();

  DMOE_DECL void submit_and_wait(unsigned wait_count);

  // With nothing ready to run: polls for completions (see set_max_poll_before_sleep), then sleeps until one comes.
  DMOE_DECL void wait_for_completions();

  // Whether completions are ready to reap or waiting to be posted (IORING_SQ_TASKRUN).
  bool completions_pending() noexcept {
    return io_uring_cq_ready(&ring_) > 0 || (IO_URING_READ_ONCE(*ring_.sq.kflags) & IORING_SQ_TASKRUN);
  }

  // completions_pending(), polled until `until`.
  DMOE_DECL bool poll_completions(std::chrono::steady_clock::time_point until) noexcept;

  DMOE_DECL void reap();

  DMOE_DECL void dispatch(std::uint64_t user_data, int result, unsigned flags);

  DMOE_DECL void on_wake();

  struct stashed_cqe {
    std::uint64_t user_data;
    int result;
    unsigned flags;
  };

  io_uring ring_{};
  unsigned setup_flags_ = 0;
  std::vector<bool> supported_;
  int wake_fd_ = -1;
  std::uint64_t wake_buffer_ = 0;
  std::atomic<bool> wake_pending_{false};
  std::atomic<bool> stop_requested_{false};
  bool running_ = false;
  bool enabled_ = false;
  std::thread::id owner_;
  std::stop_source* root_stop_ = nullptr;
  std::size_t ops_in_flight_ = 0;
  static constexpr std::int64_t min_poll_ns = 10'000;
  static constexpr std::size_t max_ops_to_poll = 16;
  std::int64_t max_poll_ns_ = 50'000;
  std::int64_t poll_ns_ = 0;  // the current polling window
  static constexpr unsigned inline_turns_per_iteration = 64;
  unsigned inline_turns_ = inline_turns_per_iteration;

  std::vector<std::coroutine_handle<>> ready_;
  std::vector<std::coroutine_handle<>> resuming_;
  std::vector<stashed_cqe> stashed_;
  detail::posted_node* local_head_ = nullptr;
  detail::posted_node* local_tail_ = nullptr;

  std::mutex remote_mutex_;
  detail::posted_node* remote_head_ = nullptr;
  detail::posted_node* remote_tail_ = nullptr;
  std::vector<detail::cancel_target*> remote_cancels_;
  std::vector<detail::cancel_target*> cancels_in_progress_;
};

inline void detail::stop_forwarder::operator()() const noexcept { target->ctx->request_cancel(target); }

DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
DMOE_DEF io_context::io_context(unsigned entries) {
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (wake_fd_ < 0) throw system_error(errno, "eventfd");
  // Fastest first; older kernels refuse newer flags with EINVAL.
  const unsigned attempts[] = {
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
          IORING_SETUP_R_DISABLED | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE,
      IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE,
      IORING_SETUP_CQSIZE,
      0u,
  };
  int result = -EINVAL;
  for (unsigned flags : attempts) {
    io_uring_params params{};
    params.flags = flags;
    params.cq_entries = entries * 4;
    result = io_uring_queue_init_params(entries, &ring_, &params);
    if (result == 0) {
      setup_flags_ = flags;
      break;
    }
    if (result != -EINVAL) break;
  }
  if (result < 0) {
    ::close(wake_fd_);
    throw detail::io_uring_setup_error(-result);
  }
  try {
    probe();
  } catch (...) {
    io_uring_queue_exit(&ring_);
    ::close(wake_fd_);
    throw;
  }
  if (!(setup_flags_ & IORING_SETUP_R_DISABLED)) arm_wake();
}

DMOE_INLINE io_context::~io_context() {
  io_uring_queue_exit(&ring_);
  ::close(wake_fd_);
  release_nodes(local_head_);
  release_nodes(remote_head_);
}

DMOE_DEF auto io_context::get_sqe(detail::io_completion* op) -> io_uring_sqe* {
  io_uring_sqe* sqe = next_sqe();
  io_uring_sqe_set_data(sqe, op);
  ++ops_in_flight_;
  return sqe;
}

DMOE_DEF auto io_context::resume_from_any_thread(detail::posted_resume* node) -> void {
  if (in_this_thread()) {
    schedule(node->handle);
    return;
  }
  {
    std::lock_guard lock(remote_mutex_);
    append(remote_head_, remote_tail_, node);
  }
  wake();
}

DMOE_DEF auto io_context::request_cancel(detail::cancel_target* target) noexcept -> void {
  if (in_this_thread()) {
    target->cancel(target);
    return;
  }
  {
    std::lock_guard lock(remote_mutex_);
    remote_cancels_.push_back(target);
    target->remote_queued.store(true, std::memory_order_release);
  }
  wake();
}

DMOE_DEF auto io_context::forget_cancel(detail::cancel_target* target) noexcept -> void {
  if (!target->remote_queued.load(std::memory_order_acquire)) return;
  std::lock_guard lock(remote_mutex_);
  for (auto& queued : remote_cancels_) {
    if (queued == target) queued = nullptr;
  }
  target->remote_queued.store(false, std::memory_order_relaxed);
}

DMOE_DEF auto io_context::append(detail::posted_node*& head, detail::posted_node*& tail,
    detail::posted_node* node) noexcept -> void {
  node->next = nullptr;
  if (tail) {
    tail->next = node;
  } else {
    head = node;
  }
  tail = node;
}

DMOE_DEF auto io_context::release_nodes(detail::posted_node* node) noexcept -> void {
  while (node) {
    detail::posted_node* next = node->next;
    node->invoke(node, false);
    node = next;
  }
}

DMOE_DEF auto io_context::probe() -> void {
  io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
  if (!probe) throw unavailable_error("io_uring cannot report its supported operations (kernel older than 5.6?)");
  supported_.assign(IORING_OP_LAST, false);
  for (unsigned op = 0; op < IORING_OP_LAST; ++op) supported_[op] = io_uring_opcode_supported(probe, static_cast<int>(op));
  io_uring_free_probe(probe);
  struct needed {
    unsigned op;
    const char* name;
  };
  static constexpr needed required[] = {
      {IORING_OP_READ, "READ"},          {IORING_OP_TIMEOUT, "TIMEOUT"},
      {IORING_OP_LINK_TIMEOUT, "LINK_TIMEOUT"}, {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
      {IORING_OP_ACCEPT, "ACCEPT"},      {IORING_OP_CONNECT, "CONNECT"},
      {IORING_OP_SEND, "SEND"},          {IORING_OP_RECV, "RECV"},
      {IORING_OP_SENDMSG, "SENDMSG"},    {IORING_OP_RECVMSG, "RECVMSG"},
  };
  for (const auto& n : required) {
    if (!supports(n.op)) throw unavailable_error(std::string("io_uring lacks IORING_OP_") + n.name + " (kernel too old)");
  }
}

DMOE_DEF auto io_context::next_sqe() -> io_uring_sqe* {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe) [[likely]]
    return sqe;
  flush_submissions();
  sqe = io_uring_get_sqe(&ring_);
  if (!sqe) throw system_error(EBUSY, "io_uring submission queue full");
  return sqe;
}

DMOE_DEF auto io_context::flush_submissions() -> void {
  for (int attempt = 0; attempt < 1000; ++attempt) {
    int result = io_uring_submit(&ring_);
    // Completions arriving during a long submission burst are moved out before the CQ overflows.
    if (io_uring_cq_ready(&ring_) > *ring_.cq.kring_entries / 2) stash_completions();
    if (result >= 0 || result == -EINTR) {
      if (io_uring_sq_space_left(&ring_) > 0) return;
      continue;
    }
    if (result == -EBUSY || result == -EAGAIN) {
      stash_completions();
      continue;
    }
    throw system_error(-result, "io_uring_submit");
  }
  throw system_error(EBUSY, "io_uring_submit");
}

DMOE_DEF auto io_context::stash_completions() -> void {
  io_uring_cqe* cqe = nullptr;
  unsigned head = 0;
  unsigned count = 0;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    stashed_.push_back({cqe->user_data, cqe->res, cqe->flags});
    ++count;
  }
  io_uring_cq_advance(&ring_, count);
}

DMOE_DEF auto io_context::bind_to_this_thread() -> void {
  if (enabled_) {
    if ((setup_flags_ & IORING_SETUP_SINGLE_ISSUER) && owner_ != std::this_thread::get_id()) {
      throw invalid_argument_error("io_context is bound to the thread that first ran it (IORING_SETUP_SINGLE_ISSUER)");
    }
    return;
  }
  if (setup_flags_ & IORING_SETUP_R_DISABLED) {
    int result = io_uring_register(static_cast<unsigned>(ring_.ring_fd), IORING_REGISTER_ENABLE_RINGS, nullptr, 0);
    if (result < 0) throw system_error(-result, "io_uring_register(IORING_REGISTER_ENABLE_RINGS)");
    arm_wake();
  }
  owner_ = std::this_thread::get_id();
  enabled_ = true;
}

DMOE_DEF auto io_context::run_loop(const bool* done) -> void {
  if (running_) throw invalid_argument_error("io_context::run called while the context is already running");
  bind_to_this_thread();
  struct scope {
    io_context* self;
    io_context* previous;
    detail::transfer_guard previous_guard;
    ~scope() {
      self->running_ = false;
      detail::current_context = previous;
      detail::current_transfer_guard = previous_guard;
      io_uring_submit(&self->ring_);  // leftover cancel requests go out now
    }
  } guard{this, std::exchange(detail::current_context, this),
          std::exchange(detail::current_transfer_guard,
                        detail::transfer_guard{static_cast<const char*>(__builtin_frame_address(0)), this,
                                               &io_context::defer_transfer})};
  running_ = true;
  for (;;) {
    inline_turns_ = inline_turns_per_iteration;
    run_ready();
    if (done && *done) break;
    if (stop_requested_.load(std::memory_order_acquire)) {
      stop_requested_.store(false, std::memory_order_relaxed);
      if (!done) break;
      root_stop_->request_stop();
      continue;
    }
    if (ready_.empty() && !local_head_ && stashed_.empty()) {
      wait_for_completions();
    } else {
      submit_and_wait(0);
    }
    reap();
  }
}

DMOE_DEF auto io_context::run_ready() -> void {
  if (!stashed_.empty()) {
    std::vector<stashed_cqe> batch;
    batch.swap(stashed_);
    for (const auto& c : batch) dispatch(c.user_data, c.result, c.flags);
  }
  if (!ready_.empty()) {
    ready_.swap(resuming_);
    for (std::size_t i = 0; i < resuming_.size(); ++i) resuming_[i].resume();
    resuming_.clear();
  }
  if (local_head_) {
    detail::posted_node* node = std::exchange(local_head_, nullptr);
    local_tail_ = nullptr;
    while (node) {
      detail::posted_node* next = node->next;
      node->invoke(node, true);
      node = next;
    }
  }
}

DMOE_DEF auto io_context::submit_and_wait(unsigned wait_count) -> void {
  int result = io_uring_submit_and_wait(&ring_, wait_count);
  if (result >= 0 || result == -EINTR || result == -ETIME) return;
  if (result == -EBUSY || result == -EAGAIN) {
    stash_completions();
    return;
  }
  throw system_error(-result, "io_uring_enter");
}

DMOE_DEF auto io_context::wait_for_completions() -> void {
  // Completions already waiting (the usual case under load) need no poll, and tell nothing about the window; nor
  // does a loop with many operations in flight poll: its completions come in streams, and sleeping lets them
  // gather into one batch.
  if (max_poll_ns_ == 0 || !(setup_flags_ & IORING_SETUP_TASKRUN_FLAG) || ops_in_flight_ > max_ops_to_poll ||
      completions_pending()) {
    submit_and_wait(1);
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  if (poll_ns_ > 0) {
    flush_submissions();  // the peer may be waiting for what this side queued
    if (!stashed_.empty() || poll_completions(start + std::chrono::nanoseconds(poll_ns_))) {
      submit_and_wait(0);  // posts the completions the kernel flagged
      return;
    }
  }
  submit_and_wait(1);
  const std::int64_t waited = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
  // A wait that only slept includes the wake-up itself (tens of microseconds here): up to twice the maximum, a
  // poll might have caught it. Without this, a loop that stopped polling could never learn that it should again.
  if (waited <= (poll_ns_ > 0 ? max_poll_ns_ : 2 * max_poll_ns_)) {
    poll_ns_ = std::min(max_poll_ns_, std::max(min_poll_ns, poll_ns_ * 2));
  } else {
    poll_ns_ /= 2;
    if (poll_ns_ < min_poll_ns) poll_ns_ = 0;
  }
}

DMOE_DEF auto io_context::poll_completions(std::chrono::steady_clock::time_point until) noexcept -> bool {
  for (unsigned i = 1;; ++i) {
    if (completions_pending()) return true;
    if (i % 16 == 0) {
      if (std::chrono::steady_clock::now() >= until) return false;
      // Gives the CPU to any other thread waiting for it (often the very peer this loop waits for, when both
      // share a CPU); on a CPU of its own, a yield returns at once.
      ::sched_yield();
    } else {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#elif defined(__aarch64__)
      asm volatile("yield");
#endif
    }
  }
}

DMOE_DEF auto io_context::reap() -> void {
  constexpr unsigned batch_size = 128;
  for (;;) {
    if (!stashed_.empty()) {
      // Completions moved out of a full CQ ring (while submitting) are older than what the ring holds now.
      std::vector<stashed_cqe> older;
      older.swap(stashed_);
      for (const auto& c : older) dispatch(c.user_data, c.result, c.flags);
      continue;
    }
    io_uring_cqe* cqes[batch_size];
    unsigned count = io_uring_peek_batch_cqe(&ring_, cqes, batch_size);
    if (count == 0) return;
    stashed_cqe batch[batch_size];
    for (unsigned i = 0; i < count; ++i) batch[i] = {cqes[i]->user_data, cqes[i]->res, cqes[i]->flags};
    io_uring_cq_advance(&ring_, count);
    for (unsigned i = 0; i < count; ++i) dispatch(batch[i].user_data, batch[i].result, batch[i].flags);
    if (count < batch_size && stashed_.empty()) return;
  }
}

DMOE_DEF auto io_context::dispatch(std::uint64_t user_data, int result, unsigned flags) -> void {
  if (user_data == detail::ignored_user_data) return;
  if (user_data == detail::wake_user_data) {
    on_wake();
    return;
  }
  auto* op = reinterpret_cast<detail::io_completion*>(user_data);
  --ops_in_flight_;
  op->complete(op, result, flags);
}

DMOE_DEF auto io_context::on_wake() -> void {
  wake_pending_.store(false, std::memory_order_seq_cst);
  arm_wake();
  detail::posted_node* nodes = nullptr;
  {
    std::lock_guard lock(remote_mutex_);
    nodes = std::exchange(remote_head_, nullptr);
    remote_tail_ = nullptr;
    cancels_in_progress_.swap(remote_cancels_);
    for (auto* target : cancels_in_progress_) {
      if (target) target->remote_queued.store(false, std::memory_order_relaxed);
    }
  }
  for (auto* target : cancels_in_progress_) {
    if (target) target->cancel(target);
  }
  cancels_in_progress_.clear();
  while (nodes) {
    detail::posted_node* next = nodes->next;
    nodes->invoke(nodes, true);
    nodes = next;
  }
}

DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
