// when_any: run tasks concurrently; the first to finish wins, the others are cancelled and awaited.
#pragma once

#include <dmoe/async/detail/child_group.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/when_all.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <cstddef>
#include <exception>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

DMOE_BEGIN_NAMESPACE

namespace detail {

template <class Variant, class... Ts, std::size_t... I>
Variant take_winner(std::size_t winner, std::index_sequence<I...>, task<Ts>&... children) {
  std::optional<Variant> result;
  [[maybe_unused]] const bool found =
      ((I == winner ? (result.emplace(std::in_place_index<I>, take_result(children)), true) : false) || ...);
  return std::move(*result);
}

}  // namespace detail

// Runs the tasks concurrently. The first to finish (with a value or an exception) wins: the others
// are asked to stop, and when_any returns only after every one has finished (their results and
// errors are dropped). Returns the winner's result as the variant alternative of its position
// (result.index() says which); rethrows the winner's exception.
template <class... Ts>
  requires(sizeof...(Ts) > 0)
task<std::variant<detail::non_void_t<Ts>...>> when_any(task<Ts>... children) {
  if ((!children.valid() || ...)) throw invalid_argument_error("when_any given an empty task");
  detail::child_group group(detail::child_group::policy::any);
  const auto handles = detail::adopt_all(group, std::index_sequence_for<Ts...>{}, children...);
  co_await group.run(handles);
  if (group.first_error()) std::rethrow_exception(group.first_error());
  co_return detail::take_winner<std::variant<detail::non_void_t<Ts>...>>(group.first(), std::index_sequence_for<Ts...>{},
                                                                        children...);
}

// when_any over a vector: the winner's index and value.
template <class T>
  requires(!std::is_void_v<T>)
task<std::pair<std::size_t, T>> when_any(std::vector<task<T>> children) {
  if (children.empty()) throw invalid_argument_error("when_any given no tasks");
  detail::child_group group(detail::child_group::policy::any);
  const auto handles = detail::adopt_all(group, children);
  co_await group.run(handles);
  if (group.first_error()) std::rethrow_exception(group.first_error());
  const std::size_t winner = group.first();
  co_return std::pair<std::size_t, T>{winner, detail::take_result(children[winner])};
}

// when_any over void tasks: the winner's index.
DMOE_DECL task<std::size_t> when_any(std::vector<task<void>> children);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF task<std::size_t> when_any(std::vector<task<void>> children) {
  if (children.empty()) throw invalid_argument_error("when_any given no tasks");
  detail::child_group group(detail::child_group::policy::any);
  const auto handles = detail::adopt_all(group, children);
  co_await group.run(handles);
  if (group.first_error()) std::rethrow_exception(group.first_error());
  co_return group.first();
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_END_NAMESPACE
