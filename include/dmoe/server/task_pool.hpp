// server::task_pool: the requests waiting for one expert in one direction (forward or backward), batched together.
// A pure class: the runtime (server/runtime.hpp) owns the pools and guards them with its lock.
#pragma once

#include <dmoe/async/channel.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/boxed.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/moe/expert_protocol.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <span>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace server {

using moe::expert_direction;

// What became of a request: its output (outputs, or grad_inputs) or the error of its batch.
struct task_outcome {
  tensor result;
  std::exception_ptr error;
};

// Where the compute thread hands a request's outcome to the coroutine waiting for it (on any io_context). Shared
// by both sides, so either may go first: a waiter that gives up marks it abandoned, and the runtime then skips the
// request if it has not been batched yet.
struct task_completion {
  channel<task_outcome> done{1};
  std::atomic<bool> abandoned{false};

  DMOE_LAZY void complete(task_outcome outcome) { done.try_send(std::move(outcome)); }
};

// One queued request.
struct pending_task {
  tensor inputs;
  tensor grad_outputs;  // backward only
  std::int64_t samples = 0;
  steady_time arrived{};
  std::uint64_t sequence = 0;  // arrival order across every pool of a runtime
  std::shared_ptr<task_completion> completion;
};

// The rows of `parts` one after another (all have the same dtype and trailing dimensions).
DMOE_DECL tensor concat_rows(std::span<const tensor* const> parts);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF tensor concat_rows(std::span<const tensor* const> parts) {
  if (parts.size() == 1) return *parts[0];
  std::int64_t rows = 0;
  for (const tensor* t : parts) rows += t->dim(0);
  tensor out = tensor::uninitialized(parts[0]->shape().without_first().with_leading(rows), parts[0]->dtype());
  std::byte* at = out.bytes_data();
  for (const tensor* t : parts) {
    if (t->nbytes() > 0) std::memcpy(at, t->bytes_data(), t->nbytes());
    at += t->nbytes();
  }
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

class task_pool {
 public:
  // Batches of at most max_batch_size samples; a batch starts once min_batch_size samples wait, or once the oldest
  // request has waited `window`.
  DMOE_LAZY task_pool(std::string uid, expert_direction direction, std::int64_t max_batch_size,
                      std::int64_t min_batch_size, std::chrono::nanoseconds window)
      : uid_(std::move(uid)), direction_(direction), max_batch_size_(max_batch_size),
        min_batch_size_(min_batch_size), window_(window) {}

  const std::string& uid() const noexcept { return uid_; }
  expert_direction direction() const noexcept { return direction_; }
  DMOE_DECL bool empty() const noexcept;
  DMOE_DECL std::size_t size() const noexcept;
  std::int64_t queued_samples() const noexcept { return samples_; }
  // The oldest waiting request's arrival order (the pool is not empty).
  DMOE_DECL std::uint64_t oldest_sequence() const noexcept;

  // Queues a request; throws limit_error when it has more samples than one batch may hold.
  DMOE_DECL void push(pending_task task);

  // When the next batch may start (the pool is not empty): now when min_batch_size samples wait, else when the
  // oldest request will have waited the batching window.
  DMOE_DECL steady_time ready_at() const noexcept;

  // Removes the request that reports to `completion`, if it still waits here; returns whether it did.
  DMOE_DECL bool remove(const task_completion& completion);

  // The oldest requests, in arrival order, while they fit in max_batch_size samples (at least one). Requests whose
  // waiter gave up are dropped on the way.
  DMOE_DECL std::vector<pending_task> take_batch();

 private:
  std::string uid_;
  expert_direction direction_;
  std::int64_t max_batch_size_, min_batch_size_;
  std::chrono::nanoseconds window_;
  dmoe::detail::boxed<std::deque<pending_task>> queue_;
  std::int64_t samples_ = 0;
};

}  // namespace server
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace server {

DMOE_DEF auto task_pool::push(pending_task task) -> void {
  if (task.samples > max_batch_size_)
    throw limit_error(dmoe::format("expert {} {}: a request of {} samples exceeds max_batch_size {}", uid_,
                                  moe::to_string(direction_), task.samples, max_batch_size_));
  samples_ += task.samples;
  queue_->push_back(std::move(task));
}

DMOE_DEF auto task_pool::remove(const task_completion& completion) -> bool {
  for (auto it = queue_->begin(); it != queue_->end(); ++it) {
    if (it->completion.get() != &completion) continue;
    samples_ -= it->samples;
    queue_->erase(it);
    return true;
  }
  return false;
}

DMOE_DEF auto task_pool::take_batch() -> std::vector<pending_task> {
  std::vector<pending_task> batch;
  std::int64_t total = 0;
  while (!queue_->empty()) {
    pending_task& next = queue_->front();
    if (next.completion && next.completion->abandoned.load(std::memory_order_acquire)) {
      samples_ -= next.samples;
      queue_->pop_front();
      continue;
    }
    if (total + next.samples > max_batch_size_) break;
    total += next.samples;
    samples_ -= next.samples;
    batch.push_back(std::move(next));
    queue_->pop_front();
  }
  return batch;
}

DMOE_DEF bool task_pool::empty() const noexcept { return queue_->empty(); }
DMOE_DEF std::size_t task_pool::size() const noexcept { return queue_->size(); }

DMOE_DEF std::uint64_t task_pool::oldest_sequence() const noexcept { return queue_->front().sequence; }

DMOE_DEF steady_time task_pool::ready_at() const noexcept {
  if (samples_ >= min_batch_size_) return steady_time::min();
  return deadline_from(queue_->front().arrived, window_);
}

}  // namespace server
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
