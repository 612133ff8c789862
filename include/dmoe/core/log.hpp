// Logging on fmt: leveled, thread-safe lines on stderr; the level comes from DMOE_LOG.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <string_view>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE

enum class log_level { trace = 0, debug, info, warn, error, off };

namespace detail {

DMOE_LAZY inline log_level parse_log_level(const char* text) noexcept {
  if (!text) return log_level::warn;
  std::string_view s(text);
  if (s == "trace") return log_level::trace;
  if (s == "debug") return log_level::debug;
  if (s == "info") return log_level::info;
  if (s == "warn") return log_level::warn;
  if (s == "error") return log_level::error;
  if (s == "off") return log_level::off;
  return log_level::warn;
}

DMOE_LAZY inline std::atomic<log_level>& log_threshold() noexcept {
  static std::atomic<log_level> level{parse_log_level(std::getenv("DMOE_LOG"))};
  return level;
}

DMOE_LAZY inline std::mutex& log_mutex() noexcept {
  static std::mutex m;
  return m;
}

DMOE_LAZY inline void write_log_line(log_level level, std::string_view message) {
  static constexpr std::string_view names[] = {"trace", "debug", "info", "warn", "error", "off"};
  // UTC wall time to the millisecond, formatted by hand: fmt/chrono.h would cost every includer a second to compile.
  const auto since_epoch = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::system_clock::now().time_since_epoch()).count();
  const std::time_t seconds = static_cast<std::time_t>(since_epoch / 1000);
  std::tm utc{};
  ::gmtime_r(&seconds, &utc);
  auto line = dmoe::format("[{:02}:{:02}:{:02}.{:03} dmoe {}] {}\n", utc.tm_hour, utc.tm_min, utc.tm_sec,
                           since_epoch % 1000, names[static_cast<int>(level)], message);
  std::lock_guard lock(log_mutex());
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace detail

inline void set_log_level(log_level level) noexcept { detail::log_threshold().store(level); }
inline bool log_enabled(log_level level) noexcept { return level >= detail::log_threshold().load(); }

template <class... Args>
void log(log_level level, fmt::format_string<Args...> format, Args&&... args) {
  if (!log_enabled(level)) return;
  detail::write_log_line(level, fmt::format(format, std::forward<Args>(args)...));
}

template <class... Args>
void log_debug(fmt::format_string<Args...> format, Args&&... args) {
  log(log_level::debug, format, std::forward<Args>(args)...);
}
template <class... Args>
void log_info(fmt::format_string<Args...> format, Args&&... args) {
  log(log_level::info, format, std::forward<Args>(args)...);
}
template <class... Args>
void log_warn(fmt::format_string<Args...> format, Args&&... args) {
  log(log_level::warn, format, std::forward<Args>(args)...);
}
template <class... Args>
void log_error(fmt::format_string<Args...> format, Args&&... args) {
  log(log_level::error, format, std::forward<Args>(args)...);
}

DMOE_END_NAMESPACE
