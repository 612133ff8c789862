// Human-readable byte counts for error messages: "17 bytes", "1.5 KiB", "300 MiB".
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>

#include <cstdint>
#include <string>
#include <string_view>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace net {

DMOE_DECL std::string size_text(std::uint64_t bytes);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::string size_text(std::uint64_t bytes) {
  static constexpr const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return dmoe::format("{} bytes", bytes);
  double value = static_cast<double>(bytes);
  int unit = -1;
  while (value >= 1024.0 && unit < 3) {
    value /= 1024.0;
    ++unit;
  }
  // One decimal, dropped when it is zero, so limits read as they were configured: "256 MiB", "1.5 KiB".
  const std::string text = dmoe::format("{:.1f}", value);
  const std::string_view shown = std::string_view(text).ends_with(".0") ? std::string_view(text).substr(0, text.size() - 2)
                                                                          : std::string_view(text);
  return dmoe::format("{} {}", shown, units[unit]);
}
#endif  // DMOE_HEAVY_DEFINITIONS

}  // namespace net
DMOE_END_NAMESPACE
