// Human-readable byte counts for error messages: "17 bytes", "1.5 KiB", "300 MiB".
#pragma once

#include <dmoe/core/config.hpp>

#include <cstdint>
#include <string>

#include <fmt/format.h>

DMOE_BEGIN_NAMESPACE
namespace net {

inline std::string size_text(std::uint64_t bytes) {
  static constexpr const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return fmt::format("{} bytes", bytes);
  double value = static_cast<double>(bytes);
  int unit = -1;
  while (value >= 1024.0 && unit < 3) {
    value /= 1024.0;
    ++unit;
  }
  // Whole multiples print without decimals so limits read as they were configured.
  if (bytes % (std::uint64_t{1} << (10 * (unit + 1))) == 0) return fmt::format("{:.0f} {}", value, units[unit]);
  return fmt::format("{:.1f} {}", value, units[unit]);
}

}  // namespace net
DMOE_END_NAMESPACE
