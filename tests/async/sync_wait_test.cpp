// Tests for dmoe/async/sync_wait.hpp: running tasks from plain code.
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/timer.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <stdexcept>

using dmoe::task;
using namespace std::chrono_literals;

namespace {

task<int> slept(int v) {
  co_await dmoe::sleep_for(1ms);
  co_return v;
}
task<void> fails() {
  co_await dmoe::sleep_for(1ms);
  throw std::runtime_error("x");
}

}  // namespace

BOOST_AUTO_TEST_SUITE(async_sync_wait)

BOOST_AUTO_TEST_CASE(returns_values_and_rethrows) {
  BOOST_TEST(dmoe::sync_wait(slept(4)) == 4);
  BOOST_CHECK_THROW(dmoe::sync_wait(fails()), std::runtime_error);
  dmoe::io_context ctx;
  BOOST_TEST(dmoe::sync_wait(ctx, slept(5)) == 5);
  BOOST_TEST(dmoe::sync_wait(ctx, slept(6)) == 6);
}

BOOST_AUTO_TEST_SUITE_END()
