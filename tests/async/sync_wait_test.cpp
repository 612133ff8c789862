// Tests for dmoe/async/sync_wait.hpp (running tasks from plain code) and detail/handoff.hpp (a result passed to a
// blocked thread).
#include <dmoe/async/detail/handoff.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/timer.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

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

BOOST_AUTO_TEST_SUITE(handoff)

BOOST_AUTO_TEST_CASE(a_value_set_on_another_thread_reaches_the_blocked_one) {
  auto h = dmoe::detail::make_handoff<std::unique_ptr<std::string>>();
  std::thread producer([h] { h->set_value(std::make_unique<std::string>("forty-two")); });
  const std::unique_ptr<std::string> got = h->get();
  producer.join();
  BOOST_REQUIRE(got);
  BOOST_TEST(*got == "forty-two");
}

BOOST_AUTO_TEST_CASE(an_error_is_rethrown_and_void_works) {
  auto h = dmoe::detail::make_handoff<void>();
  std::thread producer([h] { h->set_exception(std::make_exception_ptr(std::runtime_error("failed there"))); });
  BOOST_CHECK_EXCEPTION(h->get(), std::runtime_error,
                        [](const std::runtime_error& e) { return std::string(e.what()) == "failed there"; });
  producer.join();
  auto ok = dmoe::detail::make_handoff<void>();
  ok->set_value();
  BOOST_CHECK_NO_THROW(ok->get());
}

BOOST_AUTO_TEST_CASE(a_sender_dropped_unset_answers_abandoned) {
  auto h = dmoe::detail::make_handoff<int>();
  {
    dmoe::detail::handoff_sender<int> sender(h);
    dmoe::detail::handoff_sender<int> moved(std::move(sender));  // the moved-from sender must not answer
    BOOST_TEST(!h->ready());
  }
  BOOST_TEST(h->ready());
  BOOST_CHECK_THROW(h->get(), dmoe::detail::handoff_abandoned);

  // A thread whose function ends without answering (its sender goes with it) does not leave the waiter blocked.
  auto unanswered = dmoe::detail::make_handoff<void>();
  std::thread quitter([sender = dmoe::detail::handoff_sender<void>(unanswered)] {});
  BOOST_CHECK_THROW(unanswered->get(), dmoe::closed_error);
  quitter.join();

  auto answered = dmoe::detail::make_handoff<int>();
  {
    dmoe::detail::handoff_sender<int> sender(answered);
    sender->set_value(7);
  }
  BOOST_TEST(answered->get() == 7);
}

BOOST_AUTO_TEST_SUITE_END()
