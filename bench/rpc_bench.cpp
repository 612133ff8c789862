// dmoe_bench_rpc: RPC calls per second and bulk tensor throughput over loopback, dmoe's rpc_server/rpc_client
// against a Boost.Asio coroutine RPC with the same framing (32-byte dmoe frame header), and bulk against memcpy.
//
// Small calls: 64-byte request, 64-byte echoed response; 1 caller on 1 connection, 64 callers on 64 connections,
// and 64 callers multiplexed on 1 connection. Bulk: a 16 MiB f32 tensor sent from its storage without a copy
// (wire header + data view), echoed back by the server (a round trip); GB/s counts request plus response payload.
// Server on one thread, clients on another. Every case runs twice (--placement both): with the two threads pinned
// to distinct CPUs for both implementations (see cpu_pin), as when the two sides are different machines, and
// unpinned, where the scheduler may run both on one CPU; the smaller ratio counts. Each case runs both
// implementations alternately and keeps each one's best run; each line also gives the CPU time (both threads)
// per call of that run. Prints one JSON line per case and the summary line
// {"bench":"rpc","calls_ratio_vs_asio":R1,"bulk_ratio_vs_asio":R2,"bulk_GBps":G,"memcpy_GBps":M}
// where R1 is the smallest dmoe/asio ratio over the small-call cases and placements, R2 the smaller bulk ratio. The lone-caller case also prints each side's
// lowest median round trip: on a shared machine preemption stalls a few calls for milliseconds, which moves calls
// per second by tens of percent but the median hardly at all.
#include "bench_env.hpp"
#include "rpc_asio.hpp"
#include "rpc_dmoe.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

namespace {

using namespace dmoe_bench;

// Best GB/s of copying `bytes` between two warm buffers for about `seconds`, `repeats` times.
double memcpy_gigabytes_per_second(std::size_t bytes, double seconds, int repeats) {
  std::vector<std::byte> from(bytes, std::byte{1}), to(bytes, std::byte{2});
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    std::uint64_t copies = 0;
    const auto start = rpc_clock::now();
    const auto end = start + std::chrono::duration_cast<rpc_clock::duration>(std::chrono::duration<double>(seconds));
    do {
      std::memcpy(to.data(), from.data(), bytes);
      from[copies % bytes] = to[(copies * 7) % bytes];  // keeps the copies from being folded away
      ++copies;
    } while (rpc_clock::now() < end);
    const double elapsed = std::chrono::duration<double>(rpc_clock::now() - start).count();
    best = std::max(best, static_cast<double>(copies * bytes) / elapsed / 1e9);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"RPC calls per second and bulk throughput over loopback: dmoe against Boost.Asio and memcpy"};
  double seconds = 1.0;
  int repeats = 2;
  std::string only;
  std::string impl = "both";
  std::string placement = "both";
  app.add_option("--seconds", seconds, "duration of each run")->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats, "runs of each implementation per case; the best counts")->check(CLI::PositiveNumber);
  app.add_option("--only", only, "run only the cases whose name contains this text (for profiling)");
  app.add_option("--impl", impl, "both, dmoe or asio (for profiling one side)")
      ->check(CLI::IsMember({"both", "dmoe", "asio"}));
  app.add_option("--placement", placement,
                 "split: server and client threads pinned to distinct CPUs (for both peers); free: wherever the "
                 "scheduler puts them; both (the default): every case under each, the smaller ratio counting")
      ->check(CLI::IsMember({"split", "free", "both"}));
  CLI11_PARSE(app, argc, argv);

  print_environment("rpc");
  const auto duration = std::chrono::duration_cast<rpc_clock::duration>(std::chrono::duration<double>(seconds));
  constexpr std::size_t bulk_bytes = std::size_t{16} << 20;
  std::vector<bool> placements;  // split_cpus of each
  if (placement != "free") placements.push_back(true);
  if (placement != "split") placements.push_back(false);
  std::vector<rpc_case> cases;
  for (const bool split : placements) {
    cases.push_back({"64B 1conn 1caller", 64, 1, 1, false, duration, split});
    cases.push_back({"64B 64conn 64callers", 64, 64, 64, false, duration, split});
    cases.push_back({"64B 1conn 64callers pipelined", 64, 1, 64, false, duration, split});
    cases.push_back({"16MiB tensor round trip 1conn", bulk_bytes, 1, 1, true, duration, split});
  }
  double calls_ratio = 1e300, bulk_ratio = 1e300, bulk_gbps = 0;
  for (const auto& c : cases) {
    if (!only.empty() && c.name.find(only) == std::string::npos) continue;
    rpc_result best_dmoe, best_asio;
    double dmoe_median_us = 0, asio_median_us = 0;  // the lowest median of the runs
    const auto keep = [](rpc_result& best, double& median, const rpc_result& r) {
      if (r.calls_per_second() > best.calls_per_second()) best = r;
      if (r.median_us > 0 && (median == 0 || r.median_us < median)) median = r.median_us;
    };
    for (int i = 0; i < repeats; ++i) {
      if (impl != "dmoe") keep(best_asio, asio_median_us, run_asio_rpc(c));
      if (impl != "asio") keep(best_dmoe, dmoe_median_us, run_dmoe_rpc(c));
    }
    const double asio_rate = best_asio.calls_per_second();
    const double ratio = asio_rate > 0 ? best_dmoe.calls_per_second() / asio_rate : 0;
    // CPU microseconds (both threads) per call of the best run: what each call costs, whatever the throughput.
    const auto cpu_us = [](const rpc_result& r) { return r.calls > 0 ? r.cpu_seconds * 1e6 / static_cast<double>(r.calls) : 0.0; };
    const std::string common = fmt::format(
        "\"placement\":\"{}\",\"payload_bytes\":{},\"connections\":{},\"callers\":{},\"dmoe_cpu_us_per_call\":{:.1f},"
        "\"asio_cpu_us_per_call\":{:.1f}",
        c.split_cpus ? "split" : "free", c.payload_bytes, c.connections, c.callers, cpu_us(best_dmoe), cpu_us(best_asio));
    if (c.tensor) {
      bulk_ratio = std::min(bulk_ratio, ratio);
      bulk_gbps = std::max(bulk_gbps, best_dmoe.gigabytes_per_second());
      fmt::print(
          "{{\"bench\":\"rpc\",\"case\":\"{}\",\"kind\":\"bulk\",{},"
          "\"dmoe_GBps\":{:.3f},\"asio_GBps\":{:.3f},\"dmoe_calls_per_s\":{:.1f},\"asio_calls_per_s\":{:.1f},"
          "\"ratio\":{:.3f},\"GBps_counts\":\"request+response payload\"}}\n",
          c.name, common, best_dmoe.gigabytes_per_second(), best_asio.gigabytes_per_second(),
          best_dmoe.calls_per_second(), asio_rate, ratio);
    } else {
      calls_ratio = std::min(calls_ratio, ratio);
      fmt::print(
          "{{\"bench\":\"rpc\",\"case\":\"{}\",\"kind\":\"calls\",{},"
          "\"dmoe_calls_per_s\":{:.0f},\"asio_calls_per_s\":{:.0f},\"ratio\":{:.3f}{}}}\n",
          c.name, common, best_dmoe.calls_per_second(), asio_rate, ratio,
          c.callers == 1 ? fmt::format(",\"dmoe_median_us\":{:.1f},\"asio_median_us\":{:.1f}", dmoe_median_us,
                                       asio_median_us)
                         : std::string());
    }
    std::fflush(stdout);
  }
  if (bulk_ratio > 1e299) bulk_ratio = 0;
  if (calls_ratio > 1e299) calls_ratio = 0;
  double memcpy_gbps = 0;
  if (only.empty() || std::string("memcpy").find(only) != std::string::npos)
    memcpy_gbps = memcpy_gigabytes_per_second(bulk_bytes, std::min(seconds, 0.5), repeats);
  fmt::print("{{\"bench\":\"rpc\",\"case\":\"memcpy 16MiB\",\"kind\":\"memcpy\",\"memcpy_GBps\":{:.3f}}}\n", memcpy_gbps);
  fmt::print("{{\"bench\":\"rpc\",\"calls_ratio_vs_asio\":{:.3f},\"bulk_ratio_vs_asio\":{:.3f},\"bulk_GBps\":{:.3f},"
             "\"memcpy_GBps\":{:.3f},\"placement\":\"{}\"}}\n",
             calls_ratio, bulk_ratio, bulk_gbps, memcpy_gbps, placement);
  return 0;
}
