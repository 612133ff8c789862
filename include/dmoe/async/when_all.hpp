// when_all: run tasks concurrently and wait for all of them; the first failure cancels the rest.
#pragma once

#include <dmoe/async/detail/child_group.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/core/config.hpp>

#include <array>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

DMOE_BEGIN_NAMESPACE

namespace detail {

template <class... Ts, std::size_t... I>
std::array<std::coroutine_handle<>, sizeof...(Ts)> adopt_all(child_group& group, std::index_sequence<I...>,
                                                            task<Ts>&... children) {
  return {group.adopt(children, I)...};
}

template <class T>
std::vector<std::coroutine_handle<>> adopt_all(child_group& group, std::vector<task<T>>& children) {
  std::vector<std::coroutine_handle<>> handles;
  handles.reserve(children.size());
  for (std::size_t i = 0; i < children.size(); ++i) {
    if (!children[i].valid()) throw invalid_argument_error("when_all/when_any given an empty task");
    handles.push_back(group.adopt(children[i], i));
  }
  return handles;
}

}  // namespace detail

// Runs every task concurrently on the current context and returns their results in order (void
// becomes std::monostate). If one fails, the others are asked to stop; when all have finished the
// first failure is rethrown. The awaiting coroutine's stop token reaches every child.
template <class... Ts>
task<std::tuple<detail::non_void_t<Ts>...>> when_all(task<Ts>... children) {
  if ((!children.valid() || ...)) throw invalid_argument_error("when_all given an empty task");
  detail::child_group group(detail::child_group::policy::all);
  const auto handles = detail::adopt_all(group, std::index_sequence_for<Ts...>{}, children...);
  co_await group.run(handles);
  if (group.first_error()) std::rethrow_exception(group.first_error());
  co_return std::tuple<detail::non_void_t<Ts>...>{detail::take_result(children)...};
}

// when_all over a vector: the results in the tasks' order.
template <class T>
  requires(!std::is_void_v<T>)
task<std::vector<T>> when_all(std::vector<task<T>> children) {
  detail::child_group group(detail::child_group::policy::all);
  const auto handles = detail::adopt_all(group, children);
  co_await group.run(handles);
  if (group.first_error()) std::rethrow_exception(group.first_error());
  std::vector<T> results;
  results.reserve(children.size());
  for (auto& child : children) results.push_back(detail::take_result(child));
  co_return results;
}

DMOE_DECL task<void> when_all(std::vector<task<void>> children);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF task<void> when_all(std::vector<task<void>> children) {
  detail::child_group group(detail::child_group::policy::all);
  const auto handles = detail::adopt_all(group, children);
  co_await group.run(handles);
  if (group.first_error()) std::rethrow_exception(group.first_error());
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_END_NAMESPACE
