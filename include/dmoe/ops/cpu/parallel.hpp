// The CPU backend's worker threads: a small persistent pool that splits one loop across the cores.
//
// Eigen's GEMM uses several threads only under OpenMP, which a header-only library cannot impose on its users;
// so the CPU ops split their own work (GEMM by output blocks, elementwise ops by rows) over this pool.
// One parallel loop runs at a time; a thread that finds the pool busy runs its loop alone.
#pragma once

#include <dmoe/core/config.hpp>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace detail {

class cpu_pool {
 public:
  static cpu_pool& instance() {
    static cpu_pool pool;
    return pool;
  }

  // Threads a parallel loop uses, the caller included.
  int threads() const noexcept { return threads_; }

  // Sets how many threads loops use (the caller included; 1 turns parallelism off).
  DMOE_LAZY void set_threads(int n) {
    std::lock_guard run(run_mutex_);
    stop_workers();
    threads_ = std::max(1, n);
    start_workers();
  }

  // Runs task(i) for i in [0, tasks) over the pool; returns when all are done. Exceptions from tasks propagate
  // (the first one).
  DMOE_LAZY void run(int tasks, const std::function<void(int)>& task) {
    std::unique_lock run_lock(run_mutex_, std::try_to_lock);
    if (!run_lock.owns_lock() || workers_.empty() || tasks <= 1 || on_worker_) {
      for (int i = 0; i < tasks; ++i) task(i);
      return;
    }
    {
      std::lock_guard lock(mutex_);
      task_ = &task;
      tasks_ = tasks;
      next_ = 0;
      pending_ = tasks;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    work_until_done();
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    task_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  cpu_pool(const cpu_pool&) = delete;
  cpu_pool& operator=(const cpu_pool&) = delete;
  DMOE_INLINE ~cpu_pool();

 private:
  DMOE_INLINE cpu_pool();

  DMOE_LAZY void start_workers() {
    stopping_ = false;
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
  }
  DMOE_LAZY void stop_workers() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  // Claims and runs tasks until none are left.
  DMOE_LAZY void work_until_done() {
    for (;;) {
      int i;
      const std::function<void(int)>* task;
      {
        std::lock_guard lock(mutex_);
        if (!task_ || next_ >= tasks_) return;
        i = next_++;
        task = task_;
      }
      std::exception_ptr failure;
      try {
        (*task)(i);
      } catch (...) {
        failure = std::current_exception();
      }
      std::lock_guard lock(mutex_);
      if (failure && !error_) error_ = failure;
      if (--pending_ == 0) done_.notify_all();
    }
  }

  DMOE_LAZY void worker_loop() {
    on_worker_ = true;
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      work_until_done();
    }
  }

  static inline thread_local bool on_worker_ = false;

  std::mutex run_mutex_;  // one loop at a time
  std::mutex mutex_;      // guards the fields below
  std::condition_variable wake_, done_;
  const std::function<void(int)>* task_ = nullptr;
  int tasks_ = 0, next_ = 0, pending_ = 0;
  std::uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
  int threads_ = 1;
  std::vector<std::thread> workers_;
};

// Splits [0, n) into at most threads() contiguous chunks of at least `grain` items and runs body(begin, end) on
// each, in parallel when there is more than one.
template <class Body>
void parallel_for(std::int64_t n, std::int64_t grain, Body&& body) {
  if (n <= 0) return;
  auto& pool = cpu_pool::instance();
  const std::int64_t max_chunks = grain > 0 ? std::max<std::int64_t>(1, n / grain) : n;
  const int chunks = static_cast<int>(std::min<std::int64_t>(pool.threads(), max_chunks));
  if (chunks <= 1) {
    body(std::int64_t{0}, n);
    return;
  }
  pool.run(chunks, [&](int c) {
    const std::int64_t begin = n * c / chunks, end = n * (c + 1) / chunks;
    if (begin < end) body(begin, end);
  });
}

}  // namespace detail

// How many threads the CPU ops use (the calling thread included); DMOE_CPU_THREADS sets the default.
inline int cpu_threads() { return detail::cpu_pool::instance().threads(); }
DMOE_LAZY inline void set_cpu_threads(int n) { detail::cpu_pool::instance().set_threads(n); }

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace ops::detail {

DMOE_INLINE cpu_pool::cpu_pool() {
  int n = static_cast<int>(std::thread::hardware_concurrency());
  if (const char* env = std::getenv("DMOE_CPU_THREADS")) n = std::atoi(env);
  threads_ = std::max(1, n);
  start_workers();
}

DMOE_INLINE cpu_pool::~cpu_pool() { stop_workers(); }

}  // namespace ops::detail
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
