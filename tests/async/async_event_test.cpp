// Tests for dmoe/async/async_event.hpp: set releases all waiters, reset, cancellable waits.
#include <dmoe/async/async_event.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/with_timeout.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <thread>

#include "test_support.hpp"

using dmoe::async_event;
using dmoe::io_context;
using dmoe::task;
using dmoe_test::counted;
using namespace std::chrono_literals;

namespace {

task<void> wait_and_count(counted, async_event& event, int& woken) {
  co_await event.wait();
  ++woken;
}

task<int> set_releases_everyone(counted) {
  async_event event;
  int woken = 0;
  dmoe::task_group group;
  for (int i = 0; i < 10; ++i) group.spawn(wait_and_count(counted{}, event, woken));
  co_await dmoe::sleep_for(1ms);
  if (woken != 0) co_return -1;
  event.set();
  co_await group.join();
  co_await event.wait();  // already set: no wait
  event.reset();
  co_return event.is_set() ? -2 : woken;
}

task<void> wait_on(async_event& event) { co_await event.wait(); }

task<int> set_from_another_thread(counted) {
  async_event event;
  io_context& ctx = *io_context::current();
  std::thread setter([&] { ctx.post([&] { event.set(); }); });
  co_await event.wait();
  setter.join();
  co_return 1;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(async_event_suite)

BOOST_AUTO_TEST_CASE(set_releases_every_waiter) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(set_releases_everyone(counted{})) == 10);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(a_wait_times_out_and_leaves_no_waiter) {
  io_context ctx;
  async_event event;
  BOOST_CHECK_THROW(ctx.run(dmoe::with_timeout(wait_on(event), 2ms)), dmoe::timeout_error);
  event.set();  // would touch a dead frame if the cancelled waiter were still queued
  ctx.run(wait_on(event));
}

BOOST_AUTO_TEST_CASE(another_thread_sets_it_through_post) {
  io_context ctx;
  BOOST_TEST(ctx.run(set_from_another_thread(counted{})) == 1);
}

BOOST_AUTO_TEST_SUITE_END()
