// dmoe::format: fmt::format for dmoe's own messages, with format strings checked where dmoe is built.
#pragma once

#include <dmoe/core/config.hpp>

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>

#include <fmt/core.h>

// dmoe's messages use fmt 9's format syntax, `{:?}` (quoted and escaped strings) included.
static_assert(FMT_VERSION >= 90000, "dmoe needs fmt 9 or later");

DMOE_BEGIN_NAMESPACE

// fmt checks a format string against its arguments at compile time, in every translation unit that sees the call.
// For the messages in dmoe's headers that is a cost every user's file pays (about a second of <dmoe/dmoe.hpp>) to
// re-check strings that never change. So dmoe checks them where dmoe itself is built: its CMake project defines
// DMOE_CHECK_FORMAT_STRINGS for its tests, examples, benchmarks and dmoe::compiled, which between them compile every
// message of the non-template code (and of the templates they instantiate). Elsewhere the string is parsed when the
// message is made. Define it in all translation units of a program or in none.
#if defined(DMOE_CHECK_FORMAT_STRINGS)
template <class... Args>
using message_format = fmt::format_string<Args...>;
#else
template <class... Args>
using message_format = fmt::string_view;
#endif

namespace detail {
struct format_function {
  template <class... Args>
  std::string operator()(message_format<Args...> format, Args&&... args) const {
    return fmt::vformat(fmt::string_view(format), fmt::make_format_args(args...));
  }
};
}  // namespace detail

// dmoe::format(format, args...): the text of `format` with `args` substituted (fmt's format syntax). An object, not
// a function, so that argument-dependent lookup never finds it: a user's unqualified `format("{}", an_endpoint)`
// still means fmt::format (or std::format).
inline constexpr detail::format_function format{};

namespace detail {
// The elements of `values` as text, each formatted with `element_format` ("{}" or a format of one argument such as
// "{:02x}"; std::byte as its unsigned value), with `separator` between them: fmt::join's output, without
// <fmt/format.h> (which costs every file including a light header about 0.4 s more than <fmt/core.h>). Throws
// fmt::format_error for a format that does not fit the elements.
template <class Range>
std::string join_text(const Range& values, std::string_view separator, fmt::string_view element_format = "{}") {
  std::string out;
  bool first = true;
  for (const auto& value : values) {
    if (!first) out += separator;
    first = false;
    if constexpr (std::is_same_v<std::remove_cvref_t<decltype(value)>, std::byte>) {
      const auto number = std::to_integer<unsigned>(value);
      out += fmt::vformat(element_format, fmt::make_format_args(number));
    } else {
      out += fmt::vformat(element_format, fmt::make_format_args(value));
    }
  }
  return out;
}

// The base of dmoe's fmt::formatter specializations (shapes, dtypes, endpoints): "{}" writes the value's text, and
// format specifiers are refused (at compile time where the format string is checked). Not a formatter of
// std::string_view: fmt 9 defines that formatter's format() in <fmt/format.h>, which dmoe's headers do not include.
struct text_formatter {
  template <class ParseContext>
  constexpr auto parse(ParseContext& ctx) -> decltype(ctx.begin()) {
    auto it = ctx.begin();
    if (it != ctx.end() && *it != '}') ctx.on_error("dmoe's values take no format specifiers");
    return it;
  }
  template <class FormatContext>
  static auto write(std::string_view text, FormatContext& ctx) {
    return std::copy(text.begin(), text.end(), ctx.out());
  }
};
}  // namespace detail

DMOE_END_NAMESPACE
