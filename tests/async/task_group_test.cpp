// Tests for dmoe/async/task_group.hpp: spawned tasks are joined, errors reported, stop propagates.
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/with_stop_token.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <stdexcept>
#include <stop_token>
#include <string>

#include "test_support.hpp"

using dmoe::io_context;
using dmoe::task;
using dmoe::task_group;
using dmoe_test::counted;
using namespace std::chrono_literals;

namespace {

task<void> add_after(counted, std::chrono::milliseconds delay, int& total, int value) {
  co_await dmoe::sleep_for(delay);
  total += value;
}
task<int> fail_after(counted, std::chrono::milliseconds delay, std::string message) {
  co_await dmoe::sleep_for(delay);
  throw std::runtime_error(message);
}
task<void> sleep_counting_cancel(counted, int& cancellations) {
  try {
    co_await dmoe::sleep_for(1h);
  } catch (const dmoe::cancelled_error&) {
    ++cancellations;
    throw;
  }
}

task<int> spawn_and_join(counted) {
  task_group group;
  int total = 0;
  for (int i = 1; i <= 100; ++i) group.spawn(add_after(counted{}, std::chrono::milliseconds(i % 4), total, i));
  co_await group.join();
  co_return group.running() == 0 ? total : -1;
}

task<std::string> first_error_on_join(counted, std::size_t& failures, int& total) {
  task_group group;
  group.spawn(fail_after(counted{}, 1ms, "first"));
  group.spawn(add_after(counted{}, 3ms, total, 5));  // a failure does not disturb the others
  group.spawn(fail_after(counted{}, 6ms, "second"));
  std::string message;
  try {
    co_await group.join();
  } catch (const std::runtime_error& e) {
    message = e.what();
  }
  failures = group.failures();
  co_await group.join();  // the error was reported once
  co_return message;
}

task<int> request_stop_cancels_all(counted) {
  task_group group;
  int cancellations = 0;
  for (int i = 0; i < 10; ++i) group.spawn(sleep_counting_cancel(counted{}, cancellations));
  co_await dmoe::sleep_for(1ms);
  group.request_stop();
  try {
    co_await group.join();
  } catch (const dmoe::cancelled_error&) {
  }
  co_return cancellations;
}

task<int> joiner_stop_reaches_children(counted, int& cancellations) {
  task_group group;
  for (int i = 0; i < 3; ++i) group.spawn(sleep_counting_cancel(counted{}, cancellations));
  try {
    co_await group.join();
  } catch (const dmoe::cancelled_error&) {
    co_return static_cast<int>(group.failures());
  }
  co_return -1;
}

task<void> waits(std::stop_source& source) {
  co_await dmoe::sleep_for(2ms);
  source.request_stop();
}

// Runs `work` while another spawned task requests stop on `source` a little later.
task<int> alongside(task<int> work, std::stop_source& source) {
  task_group group;
  group.spawn(waits(source));
  const int failures = co_await std::move(work);
  co_await group.join();
  co_return failures;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(async_task_group)

BOOST_AUTO_TEST_CASE(join_waits_for_every_spawned_task_and_frees_them) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(spawn_and_join(counted{})) == 5050);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(join_rethrows_the_first_failure_and_counts_them_all) {
  counted::reset();
  io_context ctx;
  std::size_t failures = 0;
  int total = 0;
  BOOST_TEST(ctx.run(first_error_on_join(counted{}, failures, total)) == "first");
  BOOST_TEST(failures == 2u);
  BOOST_TEST(total == 5);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(request_stop_cancels_every_spawned_task) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(request_stop_cancels_all(counted{})) == 10);
  BOOST_TEST(counted::alive() == 0);
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

BOOST_AUTO_TEST_CASE(a_stop_request_on_the_joiner_reaches_the_spawned_tasks) {
  counted::reset();
  io_context ctx;
  std::stop_source source;
  int cancellations = 0;
  auto work = dmoe::with_stop_token(joiner_stop_reaches_children(counted{}, cancellations), source.get_token());
  BOOST_TEST(ctx.run(alongside(std::move(work), source)) == 3);
  BOOST_TEST(cancellations == 3);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(creating_a_group_outside_a_running_context_is_refused) {
  BOOST_CHECK_THROW(task_group{}, dmoe::invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
