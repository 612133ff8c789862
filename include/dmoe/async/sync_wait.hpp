// sync_wait: run a task to completion from ordinary (non-coroutine) code.
#pragma once

#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/core/config.hpp>

#include <utility>

DMOE_BEGIN_NAMESPACE

// Runs `work` on a fresh io_context on this thread and returns its result (or rethrows).
template <class T>
T sync_wait(task<T> work) {
  io_context ctx;
  return ctx.run(std::move(work));
}

// Runs `work` on `ctx`, which must not be running already.
template <class T>
T sync_wait(io_context& ctx, task<T> work) {
  return ctx.run(std::move(work));
}

DMOE_END_NAMESPACE
