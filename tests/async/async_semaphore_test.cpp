// Tests for dmoe/async/async_semaphore.hpp: limits concurrency, FIFO hand-off, cancellable waits.
#include <dmoe/async/async_semaphore.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/when_any.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <vector>

#include "test_support.hpp"

using dmoe::async_semaphore;
using dmoe::io_context;
using dmoe::task;
using dmoe_test::counted;
using namespace std::chrono_literals;

namespace {

struct gauge {
  int now = 0;
  int peak = 0;
};

task<void> limited(counted, async_semaphore& sem, gauge& g, std::vector<int>& order, int id) {
  auto permit = co_await sem.acquire_permit();
  order.push_back(id);
  g.peak = std::max(g.peak, ++g.now);
  co_await dmoe::sleep_for(1ms);
  --g.now;
}

task<int> run_limited(counted) {
  async_semaphore sem(3);
  gauge g;
  std::vector<int> order;
  dmoe::task_group group;
  for (int i = 0; i < 20; ++i) group.spawn(limited(counted{}, sem, g, order, i));
  co_await group.join();
  for (int i = 0; i < 20; ++i) {
    if (order[static_cast<std::size_t>(i)] != i) co_return -1;  // FIFO
  }
  co_return sem.available() == 3 ? g.peak : -2;
}

task<void> acquire_forever(counted, async_semaphore& sem) { co_await sem.acquire(); }
task<void> nap(std::chrono::milliseconds delay) { co_await dmoe::sleep_for(delay); }

task<std::size_t> cancelled_waiter_leaves_the_queue(counted) {
  async_semaphore sem(0);
  const auto result = co_await dmoe::when_any(acquire_forever(counted{}, sem), nap(1ms));
  if (result.index() != 1) co_return 100;
  sem.release();  // nobody waits any more: the permit stays
  co_return sem.available();
}

task<int> release_many_wakes_many(counted) {
  async_semaphore sem(0);
  dmoe::task_group group;
  for (int i = 0; i < 5; ++i) group.spawn(acquire_forever(counted{}, sem));
  co_await nap(1ms);
  if (sem.try_acquire()) co_return -1;
  sem.release(5);
  co_await group.join();
  co_return static_cast<int>(sem.available());
}

}  // namespace

BOOST_AUTO_TEST_SUITE(async_semaphore_suite)

BOOST_AUTO_TEST_CASE(limits_concurrency_and_hands_permits_out_in_order) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(run_limited(counted{})) == 3);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(a_cancelled_waiter_leaves_the_queue) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(cancelled_waiter_leaves_the_queue(counted{})) == 1u);
  BOOST_TEST(ctx.run(release_many_wakes_many(counted{})) == 0);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(permits_release_themselves) {
  async_semaphore sem(1);
  {
    async_semaphore::permit p(sem);  // adopts a permit taken elsewhere
    BOOST_TEST(sem.try_acquire());
    BOOST_TEST(sem.available() == 0u);
  }
  BOOST_TEST(sem.available() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()
