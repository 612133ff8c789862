// Tests for dmoe/async/when_any.hpp: the first finisher wins, losers are cancelled and awaited.
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/when_any.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "test_support.hpp"

using dmoe::io_context;
using dmoe::task;
using dmoe_test::counted;
using dmoe_test::after;
using namespace std::chrono_literals;

namespace {

struct loser_log {
  int cancelled = 0;
  int finished = 0;
};

task<std::string> slow_text(counted, loser_log& log) {
  try {
    co_await dmoe::sleep_for(1h);
  } catch (const dmoe::cancelled_error&) {
    ++log.cancelled;
    throw;
  }
  co_return "never";
}
task<void> slow_void(counted, loser_log& log) {
  try {
    co_await dmoe::sleep_for(1h);
  } catch (const dmoe::cancelled_error&) {
    ++log.cancelled;
    throw;
  }
}
task<void> quick_void(counted) { co_await dmoe::sleep_for(1ms); }
task<int> fail_now(counted) {
  throw std::runtime_error("first failed");
  co_return 0;
}

// The losers must be gone (frames destroyed) by the time when_any returns to its caller.
task<long> alive_after_when_any(counted, loser_log& log) {
  const long before = counted::alive();
  auto result = co_await dmoe::when_any(after(counted{}, 1ms, 5), slow_text(counted{}, log), slow_void(counted{}, log));
  if (result.index() != 0 || std::get<0>(result) != 5) co_return -100;
  co_return counted::alive() - before;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(async_when_any)

BOOST_AUTO_TEST_CASE(the_first_to_finish_wins_and_the_losers_are_cancelled_before_it_returns) {
  counted::reset();
  io_context ctx;
  loser_log log;
  BOOST_TEST(ctx.run(alive_after_when_any(counted{}, log)) == 0);
  BOOST_TEST(log.cancelled == 2);
  BOOST_TEST(counted::alive() == 0);
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

BOOST_AUTO_TEST_CASE(a_failing_winner_is_rethrown) {
  counted::reset();
  io_context ctx;
  loser_log log;
  BOOST_CHECK_THROW(ctx.run(dmoe::when_any(slow_text(counted{}, log), fail_now(counted{}))), std::runtime_error);
  BOOST_TEST(log.cancelled == 1);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(over_a_vector) {
  counted::reset();
  io_context ctx;
  std::vector<task<int>> children;
  children.push_back(after(counted{}, 40ms, 1));
  children.push_back(after(counted{}, 1ms, 2));
  children.push_back(after(counted{}, 40ms, 3));
  const auto [index, value] = ctx.run(dmoe::when_any(std::move(children)));
  BOOST_TEST(index == 1u);
  BOOST_TEST(value == 2);

  loser_log log;
  std::vector<task<void>> voids;
  voids.push_back(slow_void(counted{}, log));
  voids.push_back(quick_void(counted{}));
  BOOST_TEST(ctx.run(dmoe::when_any(std::move(voids))) == 1u);
  BOOST_TEST(log.cancelled == 1);
  BOOST_TEST(counted::alive() == 0);
  BOOST_CHECK_THROW(ctx.run(dmoe::when_any(std::vector<task<int>>{})), dmoe::invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
