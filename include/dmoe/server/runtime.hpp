// server::runtime: the compute thread of a server. It owns one task pool per expert and direction, always runs the
// ready pool whose oldest request is oldest (fair across experts and directions), splits each batch's output back to
// its requests, and fails only that batch's requests when the batch throws. Threads that submit never wait for
// compute: they get a task_completion to await.
#pragma once

#include <dmoe/async/detail/handoff.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/boxed.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/log.hpp>
#include <dmoe/server/expert_backend.hpp>
#include <dmoe/server/task_pool.hpp>
#include <dmoe/tensor/device.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace server {

struct runtime_options {
  std::int64_t max_batch_size = 4096;  // samples in one batch; a larger request fails at once (limit_error)
  std::int64_t min_batch_size = 1;     // a pool with this many samples waiting starts a batch at once...
  std::chrono::microseconds batching_window{2000};  // ...else once its oldest request has waited this long
  // The device the compute thread makes current (use_device) before its first batch: where the experts' modules
  // compute when they were made for a CUDA backend (make_expert_backend with this device).
  device_choice device{};
};

DMOE_DECL void validate(const runtime_options& o);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void validate(const runtime_options& o) {
  if (o.max_batch_size < 1) throw invalid_argument_error(dmoe::format("max_batch_size {} must be at least 1", o.max_batch_size));
  if (o.min_batch_size < 1 || o.min_batch_size > o.max_batch_size)
    throw invalid_argument_error(dmoe::format("min_batch_size {} must be in [1, max_batch_size = {}]", o.min_batch_size,
                                             o.max_batch_size));
  if (o.batching_window.count() < 0 || o.batching_window > std::chrono::seconds(10))
    throw invalid_argument_error("batching_window must be in [0, 10 s]");
  check_device(o.device);
}
#endif  // DMOE_HEAVY_DEFINITIONS

// One computed batch, as a test or a log sees it.
struct batch_record {
  std::string uid;
  expert_direction direction;
  std::int64_t samples = 0;
  std::vector<std::uint64_t> sequences;  // the requests' arrival order numbers, in batch order
  bool failed = false;
};

class runtime {
 public:
  // The backends must outlive the runtime. Throws invalid_argument_error for bad options or repeated uids.
  DMOE_DECL runtime(std::vector<expert_backend*> backends, runtime_options options = {});
  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;
  DMOE_INLINE ~runtime();

  DMOE_LAZY void start() {
    std::lock_guard lock(mutex_);
    if (thread_.joinable() || stopping_) return;
    thread_ = std::thread([this] { loop(); });
  }

  // Computes every request already queued, then ends the thread. Later submissions fail with closed_error.
  // Idempotent; callable from any thread but the compute thread.
  DMOE_DECL void stop();

  // Queues a request (thread-safe) and returns where its outcome will arrive. Throws at once, queueing nothing:
  // invalid_argument_error for an unknown uid or an empty batch, shape_error or invalid_argument_error for tensors
  // that do not fit the expert's schema, limit_error for more samples than max_batch_size, closed_error once
  // stopped.
  DMOE_DECL std::shared_ptr<task_completion> submit(std::string_view uid, expert_direction direction, tensor inputs,
                                          tensor grad_outputs = {});

  // The waiter of a request submitted for (uid, direction) gives up (thread-safe): a request still queued leaves
  // its pool now, with its tensors, instead of when its pool's turn comes; one already in a batch is computed and
  // its outcome dropped. Idempotent.
  DMOE_DECL void withdraw(std::string_view uid, expert_direction direction, task_completion& completion);

  // Samples waiting in every pool (thread-safe).
  DMOE_DECL std::int64_t queued_samples() const;

  // Runs fn() on the compute thread between batches (e.g. a checkpoint) and returns its result, rethrowing its
  // exception. Throws closed_error when the runtime is stopped or not started.
  template <class F>
  auto run_exclusive(F fn) -> std::invoke_result_t<F&> {
    using result = std::invoke_result_t<F&>;
    auto done = dmoe::detail::make_handoff<result>();
    {
      std::lock_guard lock(mutex_);
      if (stopping_ || !thread_.joinable()) throw closed_error("the server's runtime is not running");
      if (std::this_thread::get_id() == thread_.get_id())
        throw invalid_argument_error("run_exclusive called from the compute thread");
      exclusive_->push_back([&fn, done] {
        try {
          if constexpr (std::is_void_v<result>) {
            fn();
            done->set_value();
          } else {
            done->set_value(fn());
          }
        } catch (...) {
          done->set_exception(std::current_exception());
        }
      });
    }
    wake_.notify_one();
    return done->get();
  }

  // Queues fn() to run on the compute thread between batches, without waiting; fn must not throw. Dropped (false)
  // when the runtime is stopped or not started.
  DMOE_DECL bool post_exclusive(std::function<void()> fn);

  // Counters per expert (a snapshot).
  DMOE_DECL std::map<std::string, expert_stats> stats() const;
  DMOE_LAZY expert_stats total_stats() const {
    expert_stats total;
    for (const auto& [uid, s] : stats()) total += s;
    return total;
  }

  // Called on the compute thread after every batch (for tests and logs); set before start().
  void set_batch_observer(std::function<void(const batch_record&)> observer) { observer_ = std::move(observer); }

  const runtime_options& options() const noexcept { return options_; }

 private:
  struct expert_entry {
    expert_backend* backend = nullptr;
    std::unique_ptr<task_pool> pools[2];
    expert_stats stats;
  };

  static steady_time steady_clock_now() { return std::chrono::steady_clock::now(); }

  // The ready pool whose oldest request is oldest, or null (then `wake` is when the next one becomes ready).
  DMOE_DECL task_pool* choose(steady_time now, steady_time& wake) const;

  DMOE_DECL void loop();

  // Runs the oldest exclusive job, if any, with the lock released; returns whether there was one.
  DMOE_DECL bool run_exclusive_job(std::unique_lock<std::mutex>& lock);

  DMOE_DECL void run_batch(expert_entry& entry, expert_direction direction, std::vector<pending_task>& batch);

  runtime_options options_;
  dmoe::detail::boxed<std::unordered_map<std::string, expert_entry>> experts_;
  std::vector<task_pool*> pools_;
  mutable std::mutex mutex_;
  std::mutex join_mutex_;
  std::condition_variable wake_;
  dmoe::detail::boxed<std::deque<std::function<void()>>> exclusive_;
  std::function<void(const batch_record&)> observer_;
  std::uint64_t next_sequence_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace server
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace server {

DMOE_DEF runtime::runtime(std::vector<expert_backend*> backends, runtime_options options) : options_(options) {
  validate(options_);
  for (expert_backend* b : backends) {
    if (experts_->count(b->uid()))
      throw invalid_argument_error(dmoe::format("runtime: expert '{}' is given twice", b->uid()));
    auto& e = (*experts_)[b->uid()];
    e.backend = b;
    e.pools[0] = std::make_unique<task_pool>(b->uid(), expert_direction::forward, options_.max_batch_size,
                                             options_.min_batch_size, options_.batching_window);
    e.pools[1] = std::make_unique<task_pool>(b->uid(), expert_direction::backward, options_.max_batch_size,
                                             options_.min_batch_size, options_.batching_window);
    pools_.push_back(e.pools[0].get());
    pools_.push_back(e.pools[1].get());
  }
}

DMOE_DEF auto runtime::stop() -> void {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  {
    std::lock_guard joining(join_mutex_);  // two threads stopping at once: one joins, the other waits for it
    if (thread_.joinable()) thread_.join();
  }
  // Never started: nothing will compute what is queued (every batch of it).
  std::lock_guard lock(mutex_);
  for (task_pool* pool : pools_)
    while (!pool->empty())
      for (pending_task& t : pool->take_batch())
        t.completion->complete({{}, std::make_exception_ptr(closed_error("the server's runtime has stopped"))});
}

DMOE_DEF auto runtime::submit(std::string_view uid, expert_direction direction, tensor inputs,
                                        tensor grad_outputs) -> std::shared_ptr<task_completion> {
  const auto found = experts_->find(std::string(uid));
  if (found == experts_->end()) throw invalid_argument_error(dmoe::format("this server has no expert '{}'", uid));
  expert_backend& backend = *found->second.backend;
  const auto& schema = backend.schema();
  const std::string what = dmoe::format("expert {} {}", uid, moe::to_string(direction));
  schema.input.check(what + " inputs", inputs);
  const std::int64_t samples = inputs.dim(0);
  if (samples == 0) throw invalid_argument_error(what + ": the request holds no samples");
  if (direction == expert_direction::backward) {
    schema.output.check(what + " grad_outputs", grad_outputs);
    if (grad_outputs.dim(0) != samples)
      throw shape_error(dmoe::format("{}: {} inputs but {} output gradients", what, samples, grad_outputs.dim(0)));
  }
  if (samples > options_.max_batch_size)
    throw limit_error(dmoe::format("{}: a request of {} samples exceeds max_batch_size {}", what, samples,
                                  options_.max_batch_size));
  auto completion = std::make_shared<task_completion>();
  {
    std::lock_guard lock(mutex_);
    if (stopping_) throw closed_error("the server is shutting down");
    pending_task t{std::move(inputs), std::move(grad_outputs), samples, steady_clock_now(), next_sequence_++,
                   completion};
    found->second.pools[direction == expert_direction::forward ? 0 : 1]->push(std::move(t));
    auto& s = found->second.stats;
    (direction == expert_direction::forward ? s.forward_requests : s.backward_requests) += 1;
  }
  wake_.notify_one();
  return completion;
}

DMOE_DEF auto runtime::withdraw(std::string_view uid, expert_direction direction, task_completion& completion)
    -> void {
  completion.abandoned.store(true, std::memory_order_release);
  const auto found = experts_->find(std::string(uid));
  if (found == experts_->end()) return;
  std::lock_guard lock(mutex_);
  found->second.pools[direction == expert_direction::forward ? 0 : 1]->remove(completion);
}

DMOE_DEF auto runtime::queued_samples() const -> std::int64_t {
  std::lock_guard lock(mutex_);
  std::int64_t total = 0;
  for (const task_pool* pool : pools_) total += pool->queued_samples();
  return total;
}

DMOE_DEF auto runtime::post_exclusive(std::function<void()> fn) -> bool {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || !thread_.joinable()) return false;
    exclusive_->push_back(std::move(fn));
  }
  wake_.notify_one();
  return true;
}

DMOE_DEF auto runtime::stats() const -> std::map<std::string, expert_stats> {
  std::lock_guard lock(mutex_);
  std::map<std::string, expert_stats> out;
  for (const auto& [uid, e] : *experts_) out[uid] = e.stats;
  return out;
}

DMOE_DEF auto runtime::choose(steady_time now, steady_time& wake) const -> task_pool* {
  task_pool* best = nullptr;
  wake = steady_time::max();
  for (task_pool* pool : pools_) {
    if (pool->empty()) continue;
    const steady_time ready = stopping_ ? steady_time::min() : pool->ready_at();
    if (ready > now) {
      wake = std::min(wake, ready);
      continue;
    }
    if (!best || pool->oldest_sequence() < best->oldest_sequence()) best = pool;
  }
  return best;
}

DMOE_DEF auto runtime::loop() -> void {
  try {
    use_device(options_.device);  // (checked by the constructor; a device lost since then fails each batch instead)
  } catch (const std::exception& e) {
    log_error("server runtime: cannot make {} the compute thread's device: {}", options_.device.text(), e.what());
  }
  std::unique_lock lock(mutex_);
  while (true) {
    if (run_exclusive_job(lock)) continue;
    steady_time wake;
    task_pool* pool = choose(steady_clock_now(), wake);
    if (!pool) {
      if (stopping_) break;
      if (wake == steady_time::max()) wake_.wait(lock);
      else wake_.wait_until(lock, wake);
      continue;
    }
    std::vector<pending_task> batch = pool->take_batch();
    if (batch.empty()) continue;  // only abandoned requests were left
    expert_entry& entry = experts_->at(pool->uid());
    lock.unlock();
    run_batch(entry, pool->direction(), batch);
    lock.lock();
  }
  // Stopped: exclusive jobs posted meanwhile still run (their callers wait).
  while (run_exclusive_job(lock)) {
  }
}

DMOE_DEF auto runtime::run_exclusive_job(std::unique_lock<std::mutex>& lock) -> bool {
  if (exclusive_->empty()) return false;
  auto job = std::move(exclusive_->front());
  exclusive_->pop_front();
  lock.unlock();
  job();
  lock.lock();
  return true;
}

DMOE_DEF auto runtime::run_batch(expert_entry& entry, expert_direction direction,
    std::vector<pending_task>& batch) -> void {
  const steady_time start = steady_clock_now();
  batch_record record{entry.backend->uid(), direction, 0, {}, false};
  std::uint64_t wait_ns = 0;
  std::vector<const tensor*> inputs, grads;
  for (const pending_task& t : batch) {
    record.samples += t.samples;
    record.sequences.push_back(t.sequence);
    wait_ns += static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(start - t.arrived).count());
    inputs.push_back(&t.inputs);
    grads.push_back(&t.grad_outputs);
  }
  tensor out;
  std::exception_ptr failure;
  try {
    const tensor x = concat_rows(inputs);
    out = direction == expert_direction::forward ? entry.backend->forward(x)
                                                 : entry.backend->backward(x, concat_rows(grads));
  } catch (...) {
    failure = std::current_exception();
  }
  const auto compute_ns =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(steady_clock_now() - start).count());
  record.failed = failure != nullptr;
  // Counted before the outcomes go out: a caller that has its answer sees its batch in the statistics.
  {
    std::lock_guard lock(mutex_);
    auto& s = entry.stats;
    const bool fwd = direction == expert_direction::forward;
    (fwd ? s.forward_samples : s.backward_samples) += static_cast<std::uint64_t>(record.samples);
    (fwd ? s.forward_batches : s.backward_batches) += 1;
    if (failure) ++s.failed_batches;
    s.updates = entry.backend->updates();
    s.largest_batch = std::max<std::uint64_t>(s.largest_batch, static_cast<std::uint64_t>(record.samples));
    s.queue_wait_ns += wait_ns;
    s.compute_ns += compute_ns;
  }
  std::int64_t row = 0;
  for (pending_task& t : batch) {
    if (failure) t.completion->complete({{}, failure});
    else t.completion->complete({out.rows(row, row + t.samples), nullptr});
    row += t.samples;
  }
  if (failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& e) {
      log_warn("expert {} {} batch of {} samples failed: {}", record.uid, moe::to_string(direction), record.samples,
               e.what());
    } catch (...) {
    }
  }
  if (observer_) observer_(record);
}

DMOE_INLINE runtime::~runtime() { stop(); }

}  // namespace server
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
