// One case of the RPC benchmark and its result, shared by the dmoe and Boost.Asio sides.
#pragma once

#include "bench_env.hpp"

#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/net/frame.hpp>
#include <dmoe/tensor/tensor.hpp>
#include <dmoe/tensor/wire.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace dmoe_bench {

using rpc_clock = std::chrono::steady_clock;

// The method both servers answer: it echoes the request payload.
inline constexpr std::uint32_t rpc_echo_method = dmoe::net::method_id("echo");

struct rpc_case {
  std::string name;
  std::size_t payload_bytes = 64;  // request and response payload (the response echoes the request)
  int connections = 1;
  int callers = 1;  // callers share the connections evenly; each makes one call at a time
  bool tensor = false;  // the payload is an f32 tensor's wire form, sent from its storage without a copy
  rpc_clock::duration duration = std::chrono::seconds(1);
  bool split_cpus = true;  // server and client threads pinned to distinct CPUs (see cpu_pin)
};

// The CPU a run's server (nth 0) or client (nth 1) thread is pinned to for the run, or none.
inline std::optional<cpu_pin> rpc_pin(const rpc_case& c, int nth) {
  if (!c.split_cpus) return std::nullopt;
  return std::optional<cpu_pin>(std::in_place, nth);
}

struct rpc_result {
  std::uint64_t calls = 0;
  std::uint64_t payload_bytes = 0;  // request plus response payload bytes moved
  double seconds = 0;
  double median_us = 0;  // the median call's round trip, for a lone caller (0 otherwise)
  double cpu_seconds = 0;  // CPU time of the whole process (server and client threads) during the run
  double calls_per_second() const { return seconds > 0 ? calls / seconds : 0; }
  double gigabytes_per_second() const { return seconds > 0 ? payload_bytes / seconds / 1e9 : 0; }
};

// What one caller counted. A lone caller also times each call: on a shared machine, preemption stalls add
// milliseconds to a few calls and move calls per second a lot, but barely move the median.
struct rpc_counts {
  std::uint64_t calls = 0;
  std::uint64_t bytes = 0;
  bool timed = false;
  std::vector<float> latencies_us;

  void add(std::uint64_t payload, rpc_clock::time_point started) {
    ++calls;
    bytes += payload;
    if (timed) latencies_us.push_back(std::chrono::duration<float, std::micro>(rpc_clock::now() - started).count());
  }
};

inline std::vector<rpc_counts> make_rpc_counts(const rpc_case& c) {
  std::vector<rpc_counts> counts(static_cast<std::size_t>(c.callers));
  if (c.callers == 1) {
    counts[0].timed = true;
    counts[0].latencies_us.reserve(1 << 20);
  }
  return counts;
}

// CPU time (user + system) the process has used so far, in seconds.
inline double process_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

inline rpc_result make_rpc_result(std::vector<rpc_counts>& counts, double seconds, double cpu_seconds) {
  rpc_result r;
  r.cpu_seconds = cpu_seconds;
  for (const auto& n : counts) {
    r.calls += n.calls;
    r.payload_bytes += n.bytes;
  }
  r.seconds = seconds;
  if (counts.size() == 1 && !counts[0].latencies_us.empty()) {
    auto& l = counts[0].latencies_us;
    std::nth_element(l.begin(), l.begin() + static_cast<std::ptrdiff_t>(l.size() / 2), l.end());
    r.median_us = l[l.size() / 2];
  }
  return r;
}

// What a caller sends: a small byte payload, or a tensor's wire header and a view of its storage.
class rpc_request_payload {
 public:
  explicit rpc_request_payload(const rpc_case& c) {
    if (c.tensor) {
      tensor_ = dmoe::tensor::full(dmoe::shape{static_cast<std::int64_t>(c.payload_bytes / sizeof(float))}, 1.5f);
      view_ = dmoe::wire_view(tensor_);
      pieces_ = {view_.header.span(), view_.data};
    } else {
      bytes_.assign(c.payload_bytes, std::byte{'x'});
      pieces_ = {dmoe::const_byte_span(bytes_), dmoe::const_byte_span()};
    }
    for (const auto& piece : pieces_) size_ += piece.size();
  }
  std::span<const dmoe::const_byte_span> pieces() const noexcept { return pieces_; }
  std::size_t size() const noexcept { return size_; }

 private:
  dmoe::tensor tensor_;
  dmoe::tensor_wire_view view_;
  dmoe::byte_buffer bytes_;
  std::array<dmoe::const_byte_span, 2> pieces_{};
  std::size_t size_ = 0;
};

}  // namespace dmoe_bench
