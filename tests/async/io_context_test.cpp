// Tests for dmoe/async/io_context.hpp: run/stop, post across threads, setup errors, thread binding.
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/task_group.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <liburing.h>

using dmoe::io_context;
using dmoe::task;
using namespace std::chrono_literals;

namespace {

task<bool> current_is(io_context* expected) { co_return io_context::current() == expected; }

task<void> sleep_long() { co_await dmoe::sleep_for(1h); }

task<void> run_nested(io_context& ctx) { ctx.run(sleep_long()); co_return; }

task<void> sleeps(int count, std::chrono::microseconds each) {
  for (int i = 0; i < count; ++i) co_await dmoe::sleep_for(each);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(async_io_context)

BOOST_AUTO_TEST_CASE(setup_failure_names_the_cause) {
  const auto error = dmoe::detail::io_uring_setup_error(EPERM);
  BOOST_TEST(std::string(error.what()) == "io_uring_setup: Operation not permitted");
  BOOST_TEST(error.errno_value() == EPERM);
  BOOST_TEST((error.code() == dmoe::errc::io));
}

BOOST_AUTO_TEST_CASE(probes_the_kernel_and_reports_its_flags) {
  io_context ctx;
  BOOST_TEST(ctx.supports(IORING_OP_ASYNC_CANCEL));
  BOOST_TEST(ctx.supports(IORING_OP_LINK_TIMEOUT));
  BOOST_TEST(!ctx.supports(100000));
  BOOST_TEST_MESSAGE("io_uring setup flags: 0x" << std::hex << ctx.setup_flags());
}

BOOST_AUTO_TEST_CASE(current_is_set_only_while_running) {
  io_context ctx;
  BOOST_TEST(io_context::current() == nullptr);
  BOOST_TEST(ctx.run(current_is(&ctx)));
  BOOST_TEST(io_context::current() == nullptr);
}

BOOST_AUTO_TEST_CASE(post_from_four_threads_delivers_every_item_exactly_once) {
  constexpr int threads = 4;
  constexpr int per_thread = 20'000;
  io_context ctx;
  std::vector<int> seen(threads * per_thread, 0);
  std::vector<int> last_of_thread(threads, -1);
  bool in_order = true;
  int delivered = 0;
  std::vector<std::thread> posters;
  for (int t = 0; t < threads; ++t) {
    posters.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        ctx.post([&, t, i] {
          BOOST_REQUIRE(io_context::current() == &ctx);  // runs on the context's thread
          ++seen[static_cast<std::size_t>(t * per_thread + i)];
          if (last_of_thread[static_cast<std::size_t>(t)] >= i) in_order = false;
          last_of_thread[static_cast<std::size_t>(t)] = i;
          if (++delivered == threads * per_thread) ctx.stop();
        });
      }
    });
  }
  ctx.run();
  for (auto& poster : posters) poster.join();
  BOOST_TEST(delivered == threads * per_thread);
  BOOST_TEST(in_order);
  int wrong = 0;
  for (int count : seen) wrong += count != 1;
  BOOST_TEST(wrong == 0);
}

BOOST_AUTO_TEST_CASE(post_on_its_own_thread_runs_in_order) {
  io_context ctx;
  std::vector<int> order;
  ctx.post([&] {
    order.push_back(1);
    ctx.post([&] {
      order.push_back(3);
      ctx.stop();
    });
  });
  ctx.post([&] { order.push_back(2); });
  ctx.run();
  BOOST_TEST(order == (std::vector<int>{1, 2, 3}));
}

// The loop polls for completions before it sleeps only while its waits end soon: the window grows after waits
// shorter than the maximum and falls to nothing after longer ones, so an idle loop does not spin.
BOOST_AUTO_TEST_CASE(polling_before_sleep_follows_how_long_the_waits_are) {
  io_context ctx;
  if (!(ctx.setup_flags() & IORING_SETUP_TASKRUN_FLAG)) {
    BOOST_TEST_MESSAGE("skipped: the kernel does not flag pending completions (IORING_SETUP_TASKRUN_FLAG)");
    return;
  }
  BOOST_TEST(ctx.poll_window().count() == 0);
  ctx.set_max_poll_before_sleep(std::chrono::seconds(1));  // every wait below counts as short
  ctx.run(sleeps(3, 100us));
  BOOST_TEST(ctx.poll_window() >= 10us);
  const auto grown = ctx.poll_window();
  ctx.set_max_poll_before_sleep(1ms);
  BOOST_TEST(ctx.poll_window() == std::min<std::chrono::nanoseconds>(grown, 1ms));
  ctx.run(sleeps(12, 5ms));  // each wait is longer than the maximum
  BOOST_TEST(ctx.poll_window().count() == 0);
  ctx.set_max_poll_before_sleep(0ns);  // off: waits sleep at once, and still end
  ctx.run(sleeps(3, 100us));
  BOOST_TEST(ctx.poll_window().count() == 0);
}

// Keeps `others` hour-long timers in flight while it waits on short ones.
task<void> short_waits_among_many_operations(int others) {
  dmoe::task_group group(*io_context::current());
  for (int i = 0; i < others; ++i) group.spawn(sleep_long());
  co_await sleeps(5, 100us);
  group.request_stop();
  try {
    co_await group.join();
  } catch (const dmoe::cancelled_error&) {
  }
}

// A post from another thread reaches a loop that is polling (the wake-up's completion is flagged like any other).
// A loop with many operations in flight sleeps at once: its completions come in streams, which a sleep batches.
BOOST_AUTO_TEST_CASE(a_loop_with_many_operations_in_flight_does_not_poll) {
  io_context ctx;
  ctx.set_max_poll_before_sleep(std::chrono::seconds(1));
  ctx.run(short_waits_among_many_operations(32));
  BOOST_TEST(ctx.poll_window().count() == 0);
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

BOOST_AUTO_TEST_CASE(a_post_reaches_a_polling_loop) {
  io_context ctx;
  ctx.set_max_poll_before_sleep(std::chrono::seconds(1));
  ctx.run(sleeps(3, 100us));  // the window is open now (where the kernel supports polling)
  std::atomic<int> posted{0};
  std::thread poster([&] {
    for (int i = 0; i < 1000; ++i) ctx.post([&] { ++posted; });
    ctx.post([&] { ctx.stop(); });
  });
  ctx.run();
  poster.join();
  BOOST_TEST(posted.load() == 1000);
}

BOOST_AUTO_TEST_CASE(stop_from_another_thread_cancels_the_running_task) {
  io_context ctx;
  std::atomic<bool> started{false};
  ctx.post([&] { started = true; });
  std::thread stopper([&] {
    while (!started) std::this_thread::yield();
    ctx.stop();
  });
  BOOST_CHECK_THROW(ctx.run(sleep_long()), dmoe::cancelled_error);
  stopper.join();
  BOOST_TEST(ctx.operations_in_flight() == 0u);
}

BOOST_AUTO_TEST_CASE(stop_before_run_is_seen_by_the_next_run) {
  io_context ctx;
  ctx.stop();
  ctx.run();  // returns at once
  ctx.stop();
  BOOST_CHECK_THROW(ctx.run(sleep_long()), dmoe::cancelled_error);
}

BOOST_AUTO_TEST_CASE(run_inside_run_is_refused) {
  io_context ctx;
  BOOST_CHECK_THROW(ctx.run(run_nested(ctx)), dmoe::invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(runs_on_a_worker_thread_and_is_destroyed_on_another) {
  auto ctx = std::make_unique<io_context>();
  bool result = false;
  std::thread worker([&] { result = ctx->run(current_is(ctx.get())); });
  worker.join();
  BOOST_TEST(result);
  if (ctx->setup_flags() & IORING_SETUP_SINGLE_ISSUER) {
    // The ring now belongs to the worker thread; another thread gets a clear error.
    BOOST_CHECK_THROW(ctx->run(current_is(ctx.get())), dmoe::invalid_argument_error);
  }
  ctx.reset();
}

BOOST_AUTO_TEST_SUITE_END()
