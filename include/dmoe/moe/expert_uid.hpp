// Expert uids on a grid ("ffn.3.17"), the patterns servers are started with ("ffn.[0:16].[0:16]"), and the
// prefixes under which experts are declared in the DHT ("ffn.", "ffn.3.").
//
// Grammar (as Learning@home's hivemind): uid = name ("." coordinate)+, name = (letter | "_") (letter | digit | "_" |
// "-")*, where a letter is an ASCII letter or any non-ASCII character in well-formed UTF-8 ("эксперт.3"), coordinate =
// a decimal integer in [0, 2^31) written without leading zeros (so each expert has exactly one uid). At most
// max_uid_length bytes in all.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace moe {

inline constexpr char uid_delimiter = '.';
inline constexpr std::size_t max_uid_length = 256;
inline constexpr std::int64_t max_uid_coordinate = (std::int64_t{1} << 31) - 1;
// The most uids one pattern may expand to (a typo like [0:1000000] fails instead of filling memory).
inline constexpr std::size_t max_pattern_experts = std::size_t{1} << 20;

// A uid split into its name and grid coordinates.
struct expert_coordinates {
  std::string name;
  std::vector<std::int64_t> coordinates;
};

namespace detail {

inline bool is_name_start(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || static_cast<unsigned char>(c) >= 0x80;
}
inline bool is_name_char(char c) noexcept { return is_name_start(c) || (c >= '0' && c <= '9') || c == '-'; }

// Whether text is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, at most U+10FFFF).
DMOE_DECL bool is_utf8(std::string_view text) noexcept;
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF bool is_utf8(std::string_view text) noexcept {
  for (std::size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    std::size_t n = 0;
    std::uint32_t code = 0, least = 0;
    if (c < 0x80) n = 0, code = c;
    else if ((c & 0xE0) == 0xC0) n = 1, code = c & 0x1Fu, least = 0x80;
    else if ((c & 0xF0) == 0xE0) n = 2, code = c & 0x0Fu, least = 0x800;
    else if ((c & 0xF8) == 0xF0) n = 3, code = c & 0x07u, least = 0x10000;
    else return false;
    if (i + n + 1 > text.size()) return false;
    for (std::size_t j = 1; j <= n; ++j) {
      const auto cc = static_cast<unsigned char>(text[i + j]);
      if ((cc & 0xC0) != 0x80) return false;
      code = code << 6 | (cc & 0x3Fu);
    }
    if (code < least || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// A canonical decimal coordinate, or -1.
DMOE_DECL std::int64_t parse_coordinate(std::string_view text) noexcept;
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::int64_t parse_coordinate(std::string_view text) noexcept {
  if (text.empty() || text.size() > 10 || (text.size() > 1 && text[0] == '0')) return -1;
  std::int64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return -1;
    value = value * 10 + (c - '0');
  }
  return value <= max_uid_coordinate ? value : -1;
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_DECL std::vector<std::string_view> split_uid(std::string_view text);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::vector<std::string_view> split_uid(std::string_view text) {
  std::vector<std::string_view> parts;
  std::size_t begin = 0;
  while (true) {
    const std::size_t dot = text.find(uid_delimiter, begin);
    parts.push_back(text.substr(begin, dot == std::string_view::npos ? std::string_view::npos : dot - begin));
    if (dot == std::string_view::npos) break;
    begin = dot + 1;
  }
  return parts;
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_DECL void check_name(std::string_view name, std::string_view text);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void check_name(std::string_view name, std::string_view text) {
  if (name.empty() || !is_name_start(name[0]))
    throw invalid_argument_error(
        dmoe::format("expert uid '{}': the name must start with a letter or '_' (uid grammar: name.i.j...)", text));
  for (char c : name)
    if (!is_name_char(c))
      throw invalid_argument_error(dmoe::format("expert uid '{}': '{}' is not allowed in the name", text, c));
  if (!is_utf8(name)) throw invalid_argument_error(dmoe::format("expert uid: the name is not well-formed UTF-8"));
}
#endif  // DMOE_HEAVY_DEFINITIONS

}  // namespace detail

// Splits a uid; throws invalid_argument_error naming what is wrong (empty, too long, a bad name, no coordinate, a
// coordinate that is not a canonical decimal in [0, 2^31)).
DMOE_DECL expert_coordinates parse_expert_uid(std::string_view uid);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF expert_coordinates parse_expert_uid(std::string_view uid) {
  if (uid.size() > max_uid_length)
    throw invalid_argument_error(dmoe::format("expert uid of {} bytes exceeds {}", uid.size(), max_uid_length));
  const auto parts = detail::split_uid(uid);
  detail::check_name(parts[0], uid);
  if (parts.size() < 2)
    throw invalid_argument_error(dmoe::format("expert uid '{}' has no grid coordinate (expected name.i.j...)", uid));
  expert_coordinates out{std::string(parts[0]), {}};
  for (std::size_t i = 1; i < parts.size(); ++i) {
    const std::int64_t value = detail::parse_coordinate(parts[i]);
    if (value < 0)
      throw invalid_argument_error(dmoe::format(
          "expert uid '{}': coordinate '{}' is not a decimal in [0, 2^31) without leading zeros", uid, parts[i]));
    out.coordinates.push_back(value);
  }
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_DECL bool is_valid_expert_uid(std::string_view uid) noexcept;
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF bool is_valid_expert_uid(std::string_view uid) noexcept {
  try {
    parse_expert_uid(uid);
    return true;
  } catch (const error&) {
    return false;
  }
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_DECL std::string make_expert_uid(std::string_view name, const std::vector<std::int64_t>& coordinates);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::string make_expert_uid(std::string_view name, const std::vector<std::int64_t>& coordinates) {
  std::string uid(name);
  for (std::int64_t c : coordinates) uid += dmoe::format("{}{}", uid_delimiter, c);
  parse_expert_uid(uid);  // validates
  return uid;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// A proper prefix of a uid and the coordinate that follows it: the DHT holds, under key `prefix` ("ffn.3."), a
// dictionary whose subkey `next` ("17") names a live expert that starts with it.
struct uid_prefix {
  std::string prefix;
  std::string next;
};

// Every proper prefix of a valid uid, shortest first: "ffn.3.17" -> {"ffn.", "3"}, {"ffn.3.", "17"}.
DMOE_DECL std::vector<uid_prefix> uid_prefixes(std::string_view uid);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::vector<uid_prefix> uid_prefixes(std::string_view uid) {
  parse_expert_uid(uid);
  std::vector<uid_prefix> out;
  std::size_t dot = uid.find(uid_delimiter);
  while (dot != std::string_view::npos) {
    const std::size_t next_dot = uid.find(uid_delimiter, dot + 1);
    const std::size_t end = next_dot == std::string_view::npos ? uid.size() : next_dot;
    out.push_back({std::string(uid.substr(0, dot + 1)), std::string(uid.substr(dot + 1, end - dot - 1))});
    dot = next_dot;
  }
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// Expands a pattern to uids, in row-major order: each coordinate is a number or a half-open range [a:b], e.g.
// "ffn.[0:16].[0:16]" (256 uids) or "ffn.[0:4].7". Several patterns or uids may be given separated by commas or
// spaces. Repeated uids are an error, as are empty ranges and more than max_pattern_experts uids.
DMOE_DECL std::vector<std::string> expand_expert_pattern(std::string_view pattern);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::vector<std::string> expand_expert_pattern(std::string_view pattern) {
  std::vector<std::string> out;
  std::size_t begin = 0;
  while (begin < pattern.size()) {
    const std::size_t end = pattern.find_first_of(", ", begin);
    const std::string_view one = pattern.substr(begin, end == std::string_view::npos ? end : end - begin);
    begin = end == std::string_view::npos ? pattern.size() : end + 1;
    if (one.empty()) continue;
    const auto parts = detail::split_uid(one);
    detail::check_name(parts[0], one);
    if (parts.size() < 2)
      throw invalid_argument_error(dmoe::format("expert pattern '{}' has no grid coordinate", one));
    std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
    std::size_t count = 1;
    for (std::size_t i = 1; i < parts.size(); ++i) {
      const std::string_view part = parts[i];
      std::int64_t lo = -1, hi = -1;
      if (part.size() >= 2 && part.front() == '[' && part.back() == ']') {
        const std::string_view inner = part.substr(1, part.size() - 2);
        const std::size_t colon = inner.find(':');
        if (colon != std::string_view::npos) {
          lo = detail::parse_coordinate(inner.substr(0, colon));
          hi = detail::parse_coordinate(inner.substr(colon + 1));
        }
        if (lo < 0 || hi < 0)
          throw invalid_argument_error(
              dmoe::format("expert pattern '{}': '{}' is not a range [a:b] of coordinates", one, part));
        if (hi <= lo)
          throw invalid_argument_error(dmoe::format("expert pattern '{}': the range '{}' is empty", one, part));
      } else {
        lo = detail::parse_coordinate(part);
        if (lo < 0)
          throw invalid_argument_error(
              dmoe::format("expert pattern '{}': '{}' is neither a coordinate nor a range [a:b]", one, part));
        hi = lo + 1;
      }
      ranges.emplace_back(lo, hi);
      const auto span = static_cast<std::size_t>(hi - lo);
      if (span > max_pattern_experts || count * span > max_pattern_experts)
        throw invalid_argument_error(
            dmoe::format("expert pattern '{}' names more than {} experts", one, max_pattern_experts));
      count *= span;
    }
    if (out.size() + count > max_pattern_experts)
      throw invalid_argument_error(dmoe::format("expert patterns name more than {} experts", max_pattern_experts));
    std::vector<std::int64_t> at(ranges.size());
    for (std::size_t i = 0; i < ranges.size(); ++i) at[i] = ranges[i].first;
    for (std::size_t n = 0; n < count; ++n) {
      out.push_back(make_expert_uid(parts[0], at));
      for (std::size_t i = ranges.size(); i-- > 0;) {
        if (++at[i] < ranges[i].second) break;
        at[i] = ranges[i].first;
      }
    }
  }
  if (out.empty()) throw invalid_argument_error(dmoe::format("expert pattern '{}' names no expert", pattern));
  std::vector<std::string> sorted = out;
  std::sort(sorted.begin(), sorted.end());
  if (auto dup = std::adjacent_find(sorted.begin(), sorted.end()); dup != sorted.end())
    throw invalid_argument_error(dmoe::format("expert patterns name '{}' twice", *dup));
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

}  // namespace moe
DMOE_END_NAMESPACE
