// Tests for dmoe/async/timer.hpp: ordering of many timers, deadlines met, cancellation.
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/when_all.hpp>
#include <dmoe/async/with_stop_token.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <stop_token>
#include <thread>
#include <vector>

#include "test_support.hpp"

using dmoe::io_context;
using dmoe::steady_time;
using dmoe::task;
using dmoe_test::counted;
using namespace std::chrono_literals;

namespace {

task<void> sleep_and_record(counted, steady_time when, int index, std::vector<int>& order, int& early) {
  co_await dmoe::sleep_until(when);
  if (std::chrono::steady_clock::now() < when) ++early;
  order.push_back(index);
}

task<bool> sleep_is_cancelled(counted) {
  try {
    co_await dmoe::sleep_for(1h);
  } catch (const dmoe::cancelled_error&) {
    co_return true;
  }
  co_return false;
}

task<void> request_stop_from_thread(std::stop_source& source, std::thread& thread) {
  // Runs after the sleeper has suspended (when_all starts children in order), so the request
  // crosses threads while the timer is in flight.
  thread = std::thread([&source] { source.request_stop(); });
  co_return;
}

task<void> past_deadline() { co_await dmoe::sleep_until(std::chrono::steady_clock::now() - 1s); }

}  // namespace

BOOST_AUTO_TEST_SUITE(async_timer)

task<void> record_time(steady_time& at) {
  at = std::chrono::steady_clock::now();
  co_return;
}

// Timers whose deadline has passed when submitted fire at once, in submission order (and each costs an interrupt),
// so the large batch is submitted in deadline order with its deadlines ahead of the time it takes to submit; the
// small batch is submitted backwards. A marker started after every sleeper (when_all starts its children in order)
// records when submission ended: the timers whose deadline was still ahead then must fire in deadline order, and
// they must be most of the batch (a loaded machine, the sanitizers, may make the first few late).
void check_timers_fire_in_order(int count, std::chrono::microseconds spacing, std::chrono::milliseconds ahead,
                                bool backwards) {
  counted::reset();
  io_context ctx;
  std::vector<int> order;
  order.reserve(static_cast<std::size_t>(count));
  int early = 0;
  const steady_time base = std::chrono::steady_clock::now() + ahead;
  std::vector<task<void>> sleepers;
  sleepers.reserve(static_cast<std::size_t>(count) + 1);
  for (int k = 0; k < count; ++k) {
    const int i = backwards ? count - 1 - k : k;
    sleepers.push_back(sleep_and_record(counted{}, base + i * spacing, i, order, early));
  }
  steady_time submitted{};
  sleepers.push_back(record_time(submitted));
  ctx.run(dmoe::when_all(std::move(sleepers)));
  BOOST_REQUIRE(order.size() == static_cast<std::size_t>(count));
  int on_time = 0, out_of_order = 0, last = -1;
  for (int i : order) {
    if (base + i * spacing <= submitted) continue;  // late: fired at once, in submission order
    ++on_time;
    out_of_order += i < last;
    last = std::max(last, i);
  }
  BOOST_TEST(on_time >= count / 2, on_time << " of " << count << " timers were submitted before their deadline");
  BOOST_TEST(out_of_order == 0);
  BOOST_TEST(early == 0);
  BOOST_TEST(counted::alive() == 0);
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

// Two seconds ahead: submitting 100,000 timers must finish before the first deadline, also under the sanitizers on
// a loaded machine (300 ms was too little there: late submissions fire at once, out of deadline order).
BOOST_AUTO_TEST_CASE(a_hundred_thousand_timers_fire_in_order) {
  check_timers_fire_in_order(100'000, 1us, 2s, false);
}

BOOST_AUTO_TEST_CASE(timers_submitted_backwards_fire_in_deadline_order) {
  check_timers_fire_in_order(1'000, 20us, 100ms, true);
}

BOOST_AUTO_TEST_CASE(a_passed_deadline_fires_at_once) {
  io_context ctx;
  ctx.run(past_deadline());
}

BOOST_AUTO_TEST_CASE(a_stop_request_from_another_thread_cancels_a_sleep) {
  counted::reset();
  io_context ctx;
  std::stop_source source;
  std::thread requester;
  auto both = dmoe::when_all(dmoe::with_stop_token(sleep_is_cancelled(counted{}), source.get_token()),
                             request_stop_from_thread(source, requester));
  const auto [cancelled, ignored] = ctx.run(std::move(both));
  requester.join();
  BOOST_TEST(cancelled);
  BOOST_TEST(counted::alive() == 0);
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

BOOST_AUTO_TEST_CASE(an_already_stopped_token_cancels_without_waiting) {
  io_context ctx;
  std::stop_source source;
  source.request_stop();
  BOOST_TEST(ctx.run(dmoe::with_stop_token(sleep_is_cancelled(counted{}), source.get_token())));
}

BOOST_AUTO_TEST_SUITE_END()
