// Tests for dmoe/async/task.hpp: laziness, results, exceptions, symmetric transfer, frame lifetimes.
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/with_stop_token.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

using dmoe::io_context;
using dmoe::task;
using dmoe_test::counted;
using dmoe_test::nothing;

namespace {

task<int> value_of(counted, int v) { co_return v; }
task<int> failing(counted) {
  throw std::runtime_error("boom");
  co_return 0;
}

task<int> sum_of_two(counted c) {
  const int a = co_await value_of(c, 20);
  const int b = co_await value_of(c, 22);
  co_return a + b;
}

task<std::string> catches(counted c) {
  try {
    co_await failing(c);
  } catch (const std::runtime_error& e) {
    co_return std::string("caught ") + e.what();
  }
  co_return "not thrown";
}

task<std::unique_ptr<int>> move_only_result() { co_return std::make_unique<int>(7); }

task<int> sync_loop(int count) {
  int total = 0;
  for (int i = 0; i < count; ++i) total += co_await value_of(counted{}, 1);
  co_return total;
}

task<int> sync_recursion(int depth) {
  if (depth == 0) co_return 0;
  const int below = co_await sync_recursion(depth - 1);
  co_return below + 1;
}

task<bool> token_is_stoppable() {
  std::stop_token token = co_await dmoe::this_task::get_stop_token();
  co_return token.stop_possible();
}

task<bool> child_sees_stop() {
  std::stop_token token = co_await dmoe::this_task::get_stop_token();
  co_return token.stop_requested();
}

task<bool> parent_passes_token() { co_return co_await child_sees_stop(); }

}  // namespace

BOOST_AUTO_TEST_SUITE(async_task)

BOOST_AUTO_TEST_CASE(is_lazy_and_frees_its_frame_when_dropped) {
  counted::reset();
  {
    auto t = value_of(counted{}, 1);
    BOOST_TEST(counted::alive() == 1);  // the frame exists, the body has not run
    BOOST_TEST(!t.done());
  }
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(returns_values_and_frees_frames) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(sum_of_two(counted{})) == 42);
  ctx.run(nothing(counted{}));
  BOOST_TEST(*ctx.run(move_only_result()) == 7);
  BOOST_TEST(counted::created.load() > 3);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(exceptions_propagate_through_co_await) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(catches(counted{})) == "caught boom");
  BOOST_CHECK_THROW(ctx.run(failing(counted{})), std::runtime_error);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(a_million_synchronous_completions_do_not_grow_the_stack) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(sync_loop(1'000'000)) == 1'000'000);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(deep_recursion_of_synchronous_tasks) {
  io_context ctx;
  BOOST_TEST(ctx.run(sync_recursion(100'000)) == 100'000);
}

BOOST_AUTO_TEST_CASE(move_assignment_destroys_the_old_frame) {
  counted::reset();
  auto a = value_of(counted{}, 1);
  auto b = value_of(counted{}, 2);
  BOOST_TEST(counted::alive() == 2);
  a = std::move(b);
  BOOST_TEST(counted::alive() == 1);
  BOOST_TEST(!b.valid());
  io_context ctx;
  BOOST_TEST(ctx.run(std::move(a)) == 2);
}

BOOST_AUTO_TEST_CASE(awaiting_an_empty_task_throws) {
  io_context ctx;
  BOOST_CHECK_THROW(ctx.run(task<int>{}), dmoe::invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(stop_tokens_are_inherited) {
  io_context ctx;
  // run() gives the root task a token that stop() can trigger.
  BOOST_TEST(ctx.run(token_is_stoppable()));
  std::stop_source source;
  source.request_stop();
  BOOST_TEST(ctx.run(dmoe::with_stop_token(parent_passes_token(), source.get_token())));
  BOOST_TEST(!ctx.run(parent_passes_token()));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(async_task_transfer)

// Where a compiler does not make symmetric transfer a tail call, a deep stack hands the next
// coroutine to the loop instead of growing further.
BOOST_AUTO_TEST_CASE(a_deep_stack_defers_the_transfer_to_the_loop) {
  struct recorder {
    std::coroutine_handle<> deferred;
  } record;
  auto pending = value_of(counted{}, 1);
  const auto saved = dmoe::detail::current_transfer_guard;
  const char* here = static_cast<const char*>(__builtin_frame_address(0));
  auto defer = [](void* r, std::coroutine_handle<> next) { static_cast<recorder*>(r)->deferred = next; };

  dmoe::detail::current_transfer_guard = {here + 64, &record, defer};  // shallow: transfer directly
  BOOST_TEST((dmoe::detail::transfer_to(pending.handle()) == pending.handle()));
  BOOST_TEST(!record.deferred);

  dmoe::detail::current_transfer_guard = {here + 2 * dmoe::detail::max_transfer_stack_depth, &record, defer};
  BOOST_TEST((dmoe::detail::transfer_to(pending.handle()) == std::noop_coroutine()));
  BOOST_TEST((record.deferred == pending.handle()));
  dmoe::detail::current_transfer_guard = saved;
}

BOOST_AUTO_TEST_SUITE_END()

// Coroutine frames are recycled per thread (frame_allocator): a frame freed is the next one of its size class (when
// the cache is on), frames above max_size and beyond a thread's byte budget go to the heap, a frame freed by
// another thread is that thread's to reuse, and frames freed during thread exit after the cache is gone are safe.
BOOST_AUTO_TEST_SUITE(async_frame_allocator)

using dmoe::detail::frame_allocator;

// On a fresh thread, whose cache starts empty (this one's may be full from earlier tests).
BOOST_AUTO_TEST_CASE(frames_are_recycled_by_size_class) {
  BOOST_TEST(frame_allocator::rounded(1) == 64u);
  BOOST_TEST(frame_allocator::rounded(64) == 64u);
  BOOST_TEST(frame_allocator::rounded(65) == 128u);
  BOOST_TEST(frame_allocator::rounded(frame_allocator::max_size) == frame_allocator::max_size);
  std::thread([] {
    BOOST_TEST(frame_allocator::cached_bytes() == 0u);
    void* a = frame_allocator::allocate(200);
    std::memset(a, 1, frame_allocator::rounded(200));  // the whole class size is usable
    frame_allocator::deallocate(a, 200);
    void* b = frame_allocator::allocate(150);  // another class (129..192): a's frame stays cached
    void* c = frame_allocator::allocate(250);  // 200's class (193..256)
#if DMOE_FRAME_CACHE
    BOOST_TEST(b != a);
    BOOST_TEST(c == a);
#endif
    frame_allocator::deallocate(b, 150);
    frame_allocator::deallocate(c, 250);
#if DMOE_FRAME_CACHE
    BOOST_TEST(frame_allocator::cached_bytes() == 192u + 256u);
#else
    BOOST_TEST(frame_allocator::cached_bytes() == 0u);
#endif
    void* big = frame_allocator::allocate(frame_allocator::max_size + 1);
    std::memset(big, 1, frame_allocator::max_size + 1);
    const std::size_t with_big_out = frame_allocator::cached_bytes();
    frame_allocator::deallocate(big, frame_allocator::max_size + 1);
    BOOST_TEST(frame_allocator::cached_bytes() == with_big_out);  // never cached
  }).join();
}

BOOST_AUTO_TEST_CASE(a_thread_caches_at_most_its_byte_budget_and_never_hands_a_frame_out_twice) {
  std::vector<void*> live;
  const std::size_t count = 2 * frame_allocator::max_cached_bytes / 1024;
  for (std::size_t i = 0; i < count; ++i) {
    live.push_back(frame_allocator::allocate(1000));
    std::memset(live.back(), static_cast<int>(i), 1000);
  }
  std::vector<void*> sorted = live;
  std::sort(sorted.begin(), sorted.end());
  BOOST_TEST((std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end()));
  for (void* p : live) frame_allocator::deallocate(p, 1000);
  BOOST_TEST(frame_allocator::cached_bytes() <= frame_allocator::max_cached_bytes);
#if DMOE_FRAME_CACHE
  BOOST_TEST(frame_allocator::cached_bytes() + 1024 > frame_allocator::max_cached_bytes);  // filled to the budget
#endif
}

task<int> sized_frame(int v) {
  char local[600];  // kept across the suspension point: part of the frame
  std::memset(local, v, sizeof local);
  co_await std::suspend_never{};
  co_return local[v % 600] + v;
}

BOOST_AUTO_TEST_CASE(real_task_frames_are_reused_and_moved_between_threads) {
  io_context ctx;
  int total = 0;
  for (int i = 0; i < 100; ++i) total += ctx.run(sized_frame(i));
  BOOST_TEST(total == 2 * (99 * 100 / 2));
  // A task made here and destroyed on another thread: that thread caches its frame and frees it when it ends.
  std::optional<task<int>> made(sized_frame(3));
  std::thread([&made] {
    const std::size_t before = frame_allocator::cached_bytes();
    made.reset();
#if DMOE_FRAME_CACHE
    BOOST_TEST(frame_allocator::cached_bytes() > before);
#else
    BOOST_TEST(frame_allocator::cached_bytes() == before);
#endif
  }).join();
}

// A thread-local made before the thread's frame cache is destroyed after it: the frame it holds then goes to the
// heap, not to the destroyed cache (which also reports nothing cached any more).
std::size_t cached_when_holder_died = 1, cached_after_its_frame_freed = 1;

BOOST_AUTO_TEST_CASE(frames_freed_after_the_thread_cache_is_gone_go_to_the_heap) {
  struct holder {
    std::optional<task<int>> frame;
    ~holder() {
      cached_when_holder_died = frame_allocator::cached_bytes();
      frame.reset();
      cached_after_its_frame_freed = frame_allocator::cached_bytes();
    }
  };
  std::size_t cached_while_running = 0;
  std::thread([&cached_while_running] {
    static thread_local holder held;  // constructed before the cache: destroyed after it
    void* p = frame_allocator::allocate(100);
    frame_allocator::deallocate(p, 100);  // makes the cache, which then holds a frame to free at exit
    held.frame.emplace(sized_frame(5));
    cached_while_running = frame_allocator::cached_bytes();
  }).join();
  BOOST_TEST(cached_when_holder_died == 0u);
  BOOST_TEST(cached_after_its_frame_freed == 0u);
#if DMOE_FRAME_CACHE
  BOOST_TEST(cached_while_running == frame_allocator::rounded(100));  // the cache existed, sized_frame is larger
#else
  BOOST_TEST(cached_while_running == 0u);
#endif
}

BOOST_AUTO_TEST_SUITE_END()
