// One case of the echo benchmark and its result, shared by the dmoe and Boost.Asio sides.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace dmoe_bench {

using echo_clock = std::chrono::steady_clock;

struct echo_case {
  std::size_t message_size = 64;
  int connections = 1;
  echo_clock::duration duration = std::chrono::seconds(1);
};

struct echo_result {
  std::uint64_t round_trips = 0;
  double seconds = 0;
  double per_second() const { return seconds > 0 ? round_trips / seconds : 0; }
};

}  // namespace dmoe_bench
