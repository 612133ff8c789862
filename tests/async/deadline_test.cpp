// Tests for deadline arithmetic (dmoe/core/clock.hpp's deadline_from, deadline_after): sums past the clock's range
// saturate at no_deadline, so `max()` durations mean "no deadline" in timers, with_timeout and everything built on them.
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/io_operation.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/with_timeout.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstdint>

#include "test_support.hpp"

using dmoe::io_context;
using dmoe::task;
using dmoe_test::counted;
using dmoe_test::after;
using namespace std::chrono_literals;

namespace {


template <class Duration>
task<int> sleeps_for(counted, Duration duration) {
  co_await dmoe::sleep_for(duration);
  co_return 1;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(async_deadline)

BOOST_AUTO_TEST_CASE(sums_past_the_clock_range_saturate) {
  const dmoe::steady_time now = std::chrono::steady_clock::now();
  BOOST_TEST((dmoe::deadline_from(now, std::chrono::milliseconds::max()) == dmoe::no_deadline));
  BOOST_TEST((dmoe::deadline_from(now, std::chrono::hours::max()) == dmoe::no_deadline));
  BOOST_TEST((dmoe::deadline_from(now, std::chrono::nanoseconds::max()) == dmoe::no_deadline));
  BOOST_TEST((dmoe::deadline_from(now, std::chrono::duration<std::uint64_t>::max()) == dmoe::no_deadline));
  BOOST_TEST((dmoe::deadline_from(dmoe::no_deadline, 1ms) == dmoe::no_deadline));
  BOOST_TEST((dmoe::deadline_from(now, -5s) == now));
  BOOST_TEST((dmoe::deadline_from(now, 250ms) == now + 250ms));
  BOOST_TEST((dmoe::deadline_after(std::chrono::milliseconds::max()) == dmoe::no_deadline));
  // Just under the range still adds exactly.
  const auto room = dmoe::no_deadline - now;
  BOOST_TEST((dmoe::deadline_from(now, room - 1s) == dmoe::no_deadline - 1s));
}

BOOST_AUTO_TEST_CASE(with_timeout_of_max_means_no_limit) {
  counted::reset();
  io_context ctx;
  const auto started = std::chrono::steady_clock::now();
  BOOST_TEST(ctx.run(dmoe::with_timeout(after(counted{}, 30ms, 7), std::chrono::milliseconds::max())) == 7);
  BOOST_TEST(ctx.run(dmoe::with_timeout(after(counted{}, 1ms, 8), std::chrono::hours::max())) == 8);
  BOOST_TEST(ctx.run(dmoe::with_deadline(after(counted{}, 1ms, 9), dmoe::no_deadline)) == 9);
  BOOST_TEST((std::chrono::steady_clock::now() - started >= 30ms));
  BOOST_TEST(ctx.operations_in_flight() == 0u);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(sleep_for_max_sleeps_until_stopped) {
  counted::reset();
  io_context ctx;
  // Still asleep when the 30 ms timer stops it (it used to return at once).
  BOOST_CHECK_THROW(ctx.run(dmoe::with_timeout(sleeps_for(counted{}, std::chrono::hours::max()), 30ms)),
                    dmoe::timeout_error);
  BOOST_CHECK_THROW(ctx.run(dmoe::with_timeout(sleeps_for(counted{}, std::chrono::milliseconds::max()), 30ms)),
                    dmoe::timeout_error);
  BOOST_TEST(ctx.operations_in_flight() == 0u);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_SUITE_END()
