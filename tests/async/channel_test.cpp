// Tests for dmoe/async/channel.hpp: bounded FIFO, cross-thread push, close, cancellation.
#include <dmoe/async/channel.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/when_all.hpp>
#include <dmoe/async/with_timeout.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "test_support.hpp"

using dmoe::channel;
using dmoe::io_context;
using dmoe::task;
using dmoe_test::counted;
using namespace std::chrono_literals;

namespace {

task<void> produce(counted, channel<int>& ch, int count, std::size_t& max_size) {
  for (int i = 0; i < count; ++i) {
    co_await ch.send(i);
    if (ch.size() > max_size) max_size = ch.size();
  }
  ch.close();
}

task<int> consume(counted, channel<int>& ch) {
  int expected = 0;
  for (;;) {
    std::optional<int> value = co_await ch.receive();
    if (!value) break;
    if (*value != expected) co_return -1;
    ++expected;
  }
  co_return expected;
}

task<std::vector<int>> receive_all(channel<std::unique_ptr<int>>& ch, int count) {
  std::vector<int> values;
  for (int i = 0; i < count; ++i) {
    auto value = co_await ch.receive();
    if (!value) break;
    values.push_back(**value);
  }
  co_return values;
}

task<std::optional<int>> receive_one(channel<int>& ch) { co_return co_await ch.receive(); }

task<int> a_timed_out_receive_loses_nothing(counted) {
  channel<int> ch(4);
  bool timed_out = false;
  try {
    co_await dmoe::with_timeout(receive_one(ch), 2ms);
  } catch (const dmoe::timeout_error&) {
    timed_out = true;
  }
  if (!timed_out) co_return -1;
  co_await ch.send(42);  // must go to the buffer, not to the cancelled receiver
  std::optional<int> value = co_await ch.receive();
  co_return value.value_or(-2);
}

task<int> close_wakes_everyone(counted) {
  channel<int> full(1);
  channel<int> empty(1);
  co_await full.send(1);
  dmoe::task_group group;
  int closed_senders = 0;
  int empty_receives = 0;
  auto sender = [](channel<int>& ch, int& closed) -> task<void> {
    try {
      co_await ch.send(2);
    } catch (const dmoe::closed_error&) {
      ++closed;
    }
  };
  auto receiver = [](channel<int>& ch, int& empties) -> task<void> {
    std::optional<int> v = co_await ch.receive();
    if (!v) ++empties;
  };
  group.spawn(sender(full, closed_senders));
  group.spawn(receiver(empty, empty_receives));
  co_await dmoe::sleep_for(1ms);
  full.close();
  empty.close();
  co_await group.join();
  // The value queued before close is still delivered, then nullopt.
  std::optional<int> first = co_await full.receive();
  std::optional<int> second = co_await full.receive();
  bool send_refused = false;
  try {
    co_await full.send(3);
  } catch (const dmoe::closed_error&) {
    send_refused = true;
  }
  co_return closed_senders == 1 && empty_receives == 1 && first == 1 && !second && send_refused ? 1 : 0;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(async_channel)

BOOST_AUTO_TEST_CASE(bounded_fifo_between_coroutines) {
  counted::reset();
  io_context ctx;
  channel<int> ch(2);
  std::size_t max_size = 0;
  auto [ignored, received] = ctx.run(dmoe::when_all(produce(counted{}, ch, 1000, max_size), consume(counted{}, ch)));
  BOOST_TEST(received == 1000);
  BOOST_TEST(max_size <= 2u);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(four_threads_push_into_a_coroutine) {
  constexpr int threads = 4;
  constexpr int per_thread = 5'000;
  io_context ctx;
  channel<std::unique_ptr<int>> ch(16);
  std::vector<std::thread> producers;
  for (int t = 0; t < threads; ++t) {
    producers.emplace_back([&ch, t] {
      for (int i = 0; i < per_thread; ++i) ch.send_blocking(std::make_unique<int>(t * per_thread + i));
    });
  }
  const std::vector<int> values = ctx.run(receive_all(ch, threads * per_thread));
  for (auto& p : producers) p.join();
  BOOST_REQUIRE(values.size() == static_cast<std::size_t>(threads * per_thread));
  std::vector<int> seen(values.size(), 0);
  std::vector<int> last(threads, -1);
  bool in_order = true;
  for (int v : values) {
    ++seen[static_cast<std::size_t>(v)];
    const int t = v / per_thread;
    if (v <= last[static_cast<std::size_t>(t)]) in_order = false;
    last[static_cast<std::size_t>(t)] = v;
  }
  BOOST_TEST(in_order);
  BOOST_TEST(std::count(seen.begin(), seen.end(), 1) == threads * per_thread);
}

BOOST_AUTO_TEST_CASE(a_worker_thread_serves_requests_from_a_coroutine) {
  io_context ctx;
  channel<int> requests(4);
  channel<int> replies(4);
  std::thread worker([&] {
    while (std::optional<int> request = requests.receive_blocking()) replies.send_blocking(*request * 2);
    replies.close();
  });
  auto client = [](channel<int>& out, channel<int>& in) -> task<int> {
    int sum = 0;
    for (int i = 1; i <= 100; ++i) {
      co_await out.send(i);
      std::optional<int> reply = co_await in.receive();
      sum += reply.value_or(-100000);
    }
    out.close();
    std::optional<int> end = co_await in.receive();
    co_return end ? -1 : sum;
  };
  BOOST_TEST(ctx.run(client(requests, replies)) == 10100);
  worker.join();
}

BOOST_AUTO_TEST_CASE(try_send_and_try_receive) {
  channel<int> ch(1);
  BOOST_TEST(ch.try_send(1));
  int two = 2;
  BOOST_TEST(!ch.try_send(two));
  BOOST_TEST((ch.try_receive() == std::optional<int>(1)));
  BOOST_TEST(!ch.try_receive());
  ch.close();
  BOOST_TEST(!ch.try_send(3));
  BOOST_CHECK_THROW(ch.send_blocking(4), dmoe::closed_error);
  BOOST_CHECK_THROW(channel<int>(0), dmoe::invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(close_and_cancellation) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(close_wakes_everyone(counted{})) == 1);
  BOOST_TEST(ctx.run(a_timed_out_receive_loses_nothing(counted{})) == 42);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_SUITE_END()
