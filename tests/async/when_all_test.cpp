// Tests for dmoe/async/when_all.hpp: results, concurrency, failure cancels the rest, lifetimes.
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/when_all.hpp>
#include <dmoe/async/with_stop_token.hpp>

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
using dmoe_test::nothing;
using namespace std::chrono_literals;

namespace {

task<std::string> text(counted) { co_return "x"; }
task<int> fail_after(counted, std::chrono::milliseconds delay) {
  co_await dmoe::sleep_for(delay);
  throw std::runtime_error("child failed");
}
task<int> sleep_forever_counting_cancel(counted, int& cancellations) {
  try {
    co_await dmoe::sleep_for(1h);
  } catch (const dmoe::cancelled_error&) {
    ++cancellations;
    throw;
  }
  co_return 0;
}

task<int> sum_all(counted) {
  std::vector<task<int>> children;
  for (int i = 1; i <= 10; ++i) children.push_back(after(counted{}, std::chrono::milliseconds(i % 3), i));
  const std::vector<int> results = co_await dmoe::when_all(std::move(children));
  int total = 0;
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (results[i] != static_cast<int>(i) + 1) co_return -1;  // results come back in task order
    total += results[i];
  }
  co_return total;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(async_when_all)

BOOST_AUTO_TEST_CASE(variadic_results_in_order_with_void_as_monostate) {
  counted::reset();
  io_context ctx;
  auto [a, b, c] = ctx.run(dmoe::when_all(after(counted{}, 2ms, 1), text(counted{}), nothing(counted{})));
  BOOST_TEST(a == 1);
  BOOST_TEST(b == "x");
  BOOST_TEST(std::holds_alternative<std::monostate>(std::variant<std::monostate>(c)));
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(vector_results_in_order) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(sum_all(counted{})) == 55);
  ctx.run(dmoe::when_all(std::vector<task<void>>{}));
  BOOST_TEST(ctx.run(dmoe::when_all(std::vector<task<int>>{})).empty());
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(children_run_concurrently) {
  io_context ctx;
  std::vector<int> order;
  // If they ran one after the other, 1 (30 ms) would finish before 2 (1 ms).
  ctx.run(dmoe::when_all(after(counted{}, 30ms, 1, &order), after(counted{}, 1ms, 2, &order)));
  BOOST_TEST(order == (std::vector<int>{2, 1}));
}

BOOST_AUTO_TEST_CASE(a_failure_cancels_the_others_and_is_rethrown_after_all_finished) {
  counted::reset();
  io_context ctx;
  int cancellations = 0;
  std::vector<task<int>> children;
  children.push_back(sleep_forever_counting_cancel(counted{}, cancellations));
  children.push_back(fail_after(counted{}, 1ms));
  children.push_back(sleep_forever_counting_cancel(counted{}, cancellations));
  BOOST_CHECK_EXCEPTION(ctx.run(dmoe::when_all(std::move(children))), std::runtime_error,
                        [](const std::runtime_error& e) { return std::string(e.what()) == "child failed"; });
  BOOST_TEST(cancellations == 2);
  BOOST_TEST(counted::alive() == 0);
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

BOOST_AUTO_TEST_CASE(the_parent_stop_token_reaches_every_child) {
  counted::reset();
  io_context ctx;
  int cancellations = 0;
  std::stop_source source;
  source.request_stop();
  BOOST_CHECK_THROW(ctx.run(dmoe::with_stop_token(dmoe::when_all(sleep_forever_counting_cancel(counted{}, cancellations),
                                                                 sleep_forever_counting_cancel(counted{}, cancellations)),
                                                  source.get_token())),
                    dmoe::cancelled_error);
  BOOST_TEST(cancellations == 2);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_SUITE_END()
