// Where a tensor's storage lives: host memory, or a CUDA device (device storage arrives with the CUDA backend).
#pragma once

#include <dmoe/core/config.hpp>

#include <cstdint>
#include <ostream>
#include <string_view>

DMOE_BEGIN_NAMESPACE

enum class device : std::uint8_t { host = 0, cuda = 1 };

constexpr std::string_view to_string(device d) noexcept { return d == device::host ? "host" : "cuda"; }

inline std::ostream& operator<<(std::ostream& out, device d) { return out << to_string(d); }

DMOE_END_NAMESPACE
