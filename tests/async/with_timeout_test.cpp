// Tests for dmoe/async/with_timeout.hpp: timer races the task, the loser is cancelled, both awaited.
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/with_stop_token.hpp>
#include <dmoe/async/with_timeout.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <stdexcept>
#include <stop_token>
#include <string>

#include "test_support.hpp"

using dmoe::io_context;
using dmoe::task;
using dmoe_test::counted;
using dmoe_test::after;
using namespace std::chrono_literals;

namespace {

task<int> immediate(counted) { co_return 3; }
task<int> ignores_cancellation(counted) {
  try {
    co_await dmoe::sleep_for(1h);
  } catch (const dmoe::cancelled_error&) {
    co_return 9;  // finishes with a value anyway
  }
  co_return 0;
}
task<int> throws_own(counted) {
  co_await dmoe::sleep_for(1ms);
  throw std::logic_error("own error");
}
task<int> nested(counted) {
  co_return co_await dmoe::with_timeout(after(counted{}, 1h, 1), 1h);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(async_with_timeout)

BOOST_AUTO_TEST_CASE(a_task_that_finishes_in_time_returns_and_the_timer_is_cancelled) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(dmoe::with_timeout(after(counted{}, 1ms, 7), 10s)) == 7);
  BOOST_TEST(ctx.run(dmoe::with_timeout(immediate(counted{}), 10s)) == 3);
  BOOST_TEST(ctx.operations_in_flight() == 0u);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(a_late_task_is_cancelled_and_gives_timeout_error) {
  counted::reset();
  io_context ctx;
  BOOST_CHECK_EXCEPTION(ctx.run(dmoe::with_timeout(after(counted{}, 1h, 7), 5ms)), dmoe::timeout_error,
                        [](const dmoe::timeout_error& e) {
                          return std::string(e.what()).find("timed out after 5 ms") != std::string::npos;
                        });
  BOOST_TEST(ctx.operations_in_flight() == 0u);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(deadline_form_and_nesting) {
  counted::reset();
  io_context ctx;
  BOOST_CHECK_THROW(ctx.run(dmoe::with_deadline(nested(counted{}), dmoe::deadline_after(5ms))), dmoe::timeout_error);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(a_value_that_arrives_despite_the_deadline_is_kept) {
  io_context ctx;
  BOOST_TEST(ctx.run(dmoe::with_timeout(ignores_cancellation(counted{}), 2ms)) == 9);
}

BOOST_AUTO_TEST_CASE(other_errors_pass_through) {
  io_context ctx;
  BOOST_CHECK_THROW(ctx.run(dmoe::with_timeout(throws_own(counted{}), 10s)), std::logic_error);
}

BOOST_AUTO_TEST_CASE(a_stop_request_is_cancellation_not_timeout) {
  counted::reset();
  io_context ctx;
  std::stop_source source;
  source.request_stop();
  BOOST_CHECK_THROW(ctx.run(dmoe::with_stop_token(dmoe::with_timeout(after(counted{}, 1h, 1), 1h), source.get_token())),
                    dmoe::cancelled_error);
  BOOST_TEST(counted::alive() == 0);
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

BOOST_AUTO_TEST_SUITE_END()
