// Helpers for the async tests: lifetime counting (cppcoro's `counted`) and small utilities.
#pragma once

#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/core/byte_buffer.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <vector>

#include <sys/resource.h>

namespace dmoe_test {

// Counts live instances; put one in a coroutine's parameters to count its frames (parameter
// copies live exactly as long as the frame).
struct counted {
  static inline std::atomic<long> created{0};
  static inline std::atomic<long> destroyed{0};
  static long alive() { return created.load() - destroyed.load(); }
  static void reset() {
    created = 0;
    destroyed = 0;
  }

  counted() { ++created; }
  counted(const counted&) { ++created; }
  counted(counted&&) noexcept { ++created; }
  counted& operator=(const counted&) = default;
  counted& operator=(counted&&) = default;
  ~counted() { ++destroyed; }
};

// A task that waits `delay`, appends `value` to `order` when given, and gives `value`.
inline dmoe::task<int> after(counted, std::chrono::milliseconds delay, int value, std::vector<int>* order = nullptr) {
  co_await dmoe::sleep_for(delay);
  if (order) order->push_back(value);
  co_return value;
}

// A task that finishes at once with nothing.
inline dmoe::task<void> nothing(counted) { co_return; }

// A byte buffer that counts how many exist (to see that cancelled operations release theirs).
struct counted_buffer {
  static inline std::atomic<long> alive{0};

  explicit counted_buffer(std::size_t size) : bytes(size) { ++alive; }
  counted_buffer(const counted_buffer&) = delete;
  counted_buffer& operator=(const counted_buffer&) = delete;
  ~counted_buffer() { --alive; }

  dmoe::byte_span span() noexcept { return bytes; }
  dmoe::byte_buffer bytes;
};

// Raises the soft limit on open files to the hard limit; returns the resulting soft limit.
inline rlim_t raise_open_file_limit() {
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    getrlimit(RLIMIT_NOFILE, &limit);
  }
  return limit.rlim_cur;
}

}  // namespace dmoe_test
