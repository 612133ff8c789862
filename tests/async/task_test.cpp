// Tests for dmoe/async/task.hpp: laziness, results, exceptions, symmetric transfer, frame lifetimes.
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/with_stop_token.hpp>

#include <boost/test/unit_test.hpp>

#include <memory>
#include <stdexcept>
#include <stop_token>
#include <string>

#include "test_support.hpp"

using dmoe::io_context;
using dmoe::task;
using dmoe_test::counted;

namespace {

task<int> value_of(counted, int v) { co_return v; }
task<void> nothing(counted) { co_return; }
task<int> failing(counted) {
  throw std::runtime_error("boom");
  co_return 0;
}

task<int> sum_of_two(counted c) {
  const int a = co_await value_of(c, 20);
  const int b = co_await value_of(c, 22);
  co_return a + b;
}

task<std::string> catches(counted c) {
  try {
    co_await failing(c);
  } catch (const std::runtime_error& e) {
    co_return std::string("caught ") + e.what();
  }
  co_return "not thrown";
}

task<std::unique_ptr<int>> move_only_result() { co_return std::make_unique<int>(7); }

task<int> sync_loop(int count) {
  int total = 0;
  for (int i = 0; i < count; ++i) total += co_await value_of(counted{}, 1);
  co_return total;
}

task<int> sync_recursion(int depth) {
  if (depth == 0) co_return 0;
  const int below = co_await sync_recursion(depth - 1);
  co_return below + 1;
}

task<bool> token_is_stoppable() {
  std::stop_token token = co_await dmoe::this_task::get_stop_token();
  co_return token.stop_possible();
}

task<bool> child_sees_stop() {
  std::stop_token token = co_await dmoe::this_task::get_stop_token();
  co_return token.stop_requested();
}

task<bool> parent_passes_token() { co_return co_await child_sees_stop(); }

}  // namespace

BOOST_AUTO_TEST_SUITE(async_task)

BOOST_AUTO_TEST_CASE(is_lazy_and_frees_its_frame_when_dropped) {
  counted::reset();
  {
    auto t = value_of(counted{}, 1);
    BOOST_TEST(counted::alive() == 1);  // the frame exists, the body has not run
    BOOST_TEST(!t.done());
  }
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(returns_values_and_frees_frames) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(sum_of_two(counted{})) == 42);
  ctx.run(nothing(counted{}));
  BOOST_TEST(*ctx.run(move_only_result()) == 7);
  BOOST_TEST(counted::created.load() > 3);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(exceptions_propagate_through_co_await) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(catches(counted{})) == "caught boom");
  BOOST_CHECK_THROW(ctx.run(failing(counted{})), std::runtime_error);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(a_million_synchronous_completions_do_not_grow_the_stack) {
  counted::reset();
  io_context ctx;
  BOOST_TEST(ctx.run(sync_loop(1'000'000)) == 1'000'000);
  BOOST_TEST(counted::alive() == 0);
}

BOOST_AUTO_TEST_CASE(deep_recursion_of_synchronous_tasks) {
  io_context ctx;
  BOOST_TEST(ctx.run(sync_recursion(100'000)) == 100'000);
}

BOOST_AUTO_TEST_CASE(move_assignment_destroys_the_old_frame) {
  counted::reset();
  auto a = value_of(counted{}, 1);
  auto b = value_of(counted{}, 2);
  BOOST_TEST(counted::alive() == 2);
  a = std::move(b);
  BOOST_TEST(counted::alive() == 1);
  BOOST_TEST(!b.valid());
  io_context ctx;
  BOOST_TEST(ctx.run(std::move(a)) == 2);
}

BOOST_AUTO_TEST_CASE(awaiting_an_empty_task_throws) {
  io_context ctx;
  BOOST_CHECK_THROW(ctx.run(task<int>{}), dmoe::invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(stop_tokens_are_inherited) {
  io_context ctx;
  // run() gives the root task a token that stop() can trigger.
  BOOST_TEST(ctx.run(token_is_stoppable()));
  std::stop_source source;
  source.request_stop();
  BOOST_TEST(ctx.run(dmoe::with_stop_token(parent_passes_token(), source.get_token())));
  BOOST_TEST(!ctx.run(parent_passes_token()));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(async_task_transfer)

// Where a compiler does not make symmetric transfer a tail call, a deep stack hands the next
// coroutine to the loop instead of growing further.
BOOST_AUTO_TEST_CASE(a_deep_stack_defers_the_transfer_to_the_loop) {
  struct recorder {
    std::coroutine_handle<> deferred;
  } record;
  auto pending = value_of(counted{}, 1);
  const auto saved = dmoe::detail::current_transfer_guard;
  const char* here = static_cast<const char*>(__builtin_frame_address(0));
  auto defer = [](void* r, std::coroutine_handle<> next) { static_cast<recorder*>(r)->deferred = next; };

  dmoe::detail::current_transfer_guard = {here + 64, &record, defer};  // shallow: transfer directly
  BOOST_TEST((dmoe::detail::transfer_to(pending.handle()) == pending.handle()));
  BOOST_TEST(!record.deferred);

  dmoe::detail::current_transfer_guard = {here + 2 * dmoe::detail::max_transfer_stack_depth, &record, defer};
  BOOST_TEST((dmoe::detail::transfer_to(pending.handle()) == std::noop_coroutine()));
  BOOST_TEST((record.deferred == pending.handle()));
  dmoe::detail::current_transfer_guard = saved;
}

BOOST_AUTO_TEST_SUITE_END()
