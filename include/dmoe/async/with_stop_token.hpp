// with_stop_token: run a task that also stops when a given std::stop_token does.
#pragma once

#include <dmoe/async/detail/child_group.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <array>
#include <coroutine>
#include <stop_token>
#include <utility>

DMOE_BEGIN_NAMESPACE

// Runs `work` with a token that stops when either the awaiting coroutine's token or `token` does,
// e.g. a server's shutdown token (requested from any thread).
template <class T>
task<T> with_stop_token(task<T> work, std::stop_token token) {
  if (!work.valid()) throw invalid_argument_error("with_stop_token given an empty task");
  detail::child_group group(detail::child_group::policy::all);
  group.also_stop_on(token);
  const std::array<std::coroutine_handle<>, 1> handles{group.adopt(work, 0)};
  co_await group.run(handles);
  co_return work.handle().promise().take_result();
}

DMOE_END_NAMESPACE
