// dmoe_bench_dht's workload, drawn once from the seed so that both DHTs face the same joins, rounds and kills, and
// what each side measures of it.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace dmoe_bench {

// The loopback address of node `index` (127.a.b.c, never 127.0.0.0/16): every node has its own IP address, as
// per-source rate limits see peers on the internet.
inline std::string dht_node_address(std::size_t index) {
  return fmt::format("127.{}.{}.{}", 10 + index / 62500 % 240, index / 250 % 250, index % 250 + 1);
}

struct dht_round {
  std::size_t phase = 0;              // index into dht_plan::phases
  std::string key;                    // the key's text (each DHT hashes it its own way)
  std::vector<std::uint32_t> kill_before;  // nodes killed just before this round
  std::vector<std::uint32_t> storers;      // each stores one subkey: storers[j] stores subkey j
  std::vector<std::uint32_t> getters;      // alive nodes other than the storers, each gets the key (latest)
};

struct dht_plan {
  std::size_t nodes = 0;
  std::size_t join_concurrency = 1;
  double settle_s = 0;  // a pause between the last join and the first round
  std::vector<std::vector<std::uint32_t>> initial_peers;  // per node: up to 3 distinct earlier nodes
  std::vector<std::string> phases;                        // "no_kill", "killed"
  std::vector<dht_round> rounds;
};

struct dht_plan_options {
  std::size_t nodes = 1024;
  std::size_t initial_peers = 3;
  std::size_t join_concurrency = 1;
  std::size_t rounds = 32;  // per phase
  std::size_t storers = 8;
  std::size_t getters = 8;
  double kill_fraction = 0.1;
  std::uint64_t seed = 1;
  double settle_s = 0;
};

// The value stored as subkey `j` of round `r` (the same bytes on both sides).
inline std::string dht_value_text(std::size_t round, std::size_t j) {
  return fmt::format("round-{:05}-subkey-{:02}-value-of-32-bytes", round, j);
}
inline std::string dht_subkey_text(std::size_t j) { return fmt::format("s{:02}", j); }

// Phase 0 ("no_kill"): `rounds` rounds. Phase 1 ("killed"): round(kill_fraction * nodes) nodes killed, spread over
// its rounds (a share before each, so every round meets fresh deaths), then each round as before on the survivors.
inline dht_plan make_dht_plan(const dht_plan_options& o) {
  dht_plan plan;
  plan.nodes = o.nodes;
  plan.join_concurrency = std::max<std::size_t>(1, o.join_concurrency);
  plan.settle_s = o.settle_s;
  std::mt19937_64 random(o.seed);
  plan.initial_peers.resize(o.nodes);
  for (std::size_t i = 1; i < o.nodes; ++i) {
    std::vector<std::uint32_t> earlier;
    const std::size_t want = std::min(o.initial_peers, i);
    while (earlier.size() < want) {
      const auto pick = static_cast<std::uint32_t>(std::uniform_int_distribution<std::size_t>(0, i - 1)(random));
      if (std::find(earlier.begin(), earlier.end(), pick) == earlier.end()) earlier.push_back(pick);
    }
    plan.initial_peers[i] = std::move(earlier);
  }
  plan.phases = {"no_kill", "killed"};
  std::vector<std::uint32_t> alive(o.nodes);
  for (std::size_t i = 0; i < o.nodes; ++i) alive[i] = static_cast<std::uint32_t>(i);
  const auto to_kill = static_cast<std::size_t>(std::llround(o.kill_fraction * static_cast<double>(o.nodes)));
  std::size_t killed = 0;
  for (std::size_t phase = 0; phase < plan.phases.size(); ++phase) {
    for (std::size_t r = 0; r < o.rounds; ++r) {
      dht_round round;
      round.phase = phase;
      round.key = fmt::format("dht-bench-{}-{}-{}", o.seed, phase, r);
      if (phase == 1) {
        const std::size_t target = to_kill * (r + 1) / o.rounds;
        while (killed < target && alive.size() > o.storers + o.getters + 1) {
          const std::size_t at = std::uniform_int_distribution<std::size_t>(0, alive.size() - 1)(random);
          round.kill_before.push_back(alive[at]);
          alive[at] = alive.back();
          alive.pop_back();
          ++killed;
        }
      }
      std::vector<std::uint32_t> chosen = alive;
      std::shuffle(chosen.begin(), chosen.end(), random);
      const std::size_t storers = std::min(o.storers, chosen.size());
      const std::size_t getters = std::min(o.getters, chosen.size() - storers);
      round.storers.assign(chosen.begin(), chosen.begin() + static_cast<std::ptrdiff_t>(storers));
      round.getters.assign(chosen.begin() + static_cast<std::ptrdiff_t>(storers),
                           chosen.begin() + static_cast<std::ptrdiff_t>(storers + getters));
      plan.rounds.push_back(std::move(round));
    }
  }
  return plan;
}

// One store or get: how long it took and whether it succeeded (a get: every subkey stored in its round came back).
struct dht_op {
  double ms = 0;
  bool ok = false;
  double rpcs = 0;  // gets: requests the getting node sent while its get ran
  // Gets: when every expected subkey had arrived (OpenDHT hands values over as they come, before its get is done;
  // dmoe's get returns them at once, so there it equals `ms`). Negative when they never all arrived.
  double complete_ms = -1;
};

struct dht_latency {
  double mean = 0, p50 = 0, p99 = 0, max = 0;
};

inline dht_latency latency_of(std::vector<double> ms) {
  dht_latency out;
  if (ms.empty()) return out;
  std::sort(ms.begin(), ms.end());
  double sum = 0;
  for (double v : ms) sum += v;
  out.mean = sum / static_cast<double>(ms.size());
  const auto at = [&](double q) {
    const auto i = static_cast<std::size_t>(std::ceil(q * static_cast<double>(ms.size()))) - 1;
    return ms[std::min(ms.size() - 1, i)];
  };
  out.p50 = at(0.50);
  out.p99 = at(0.99);
  out.max = ms.back();
  return out;
}

// Threads of this process now.
inline std::size_t thread_count() {
  std::size_t n = 0;
  std::error_code ignored;
  for (auto it = std::filesystem::directory_iterator("/proc/self/task", ignored);
       it != std::filesystem::directory_iterator(); it.increment(ignored))
    ++n;
  return n;
}

// This process's peak resident set (VmHWM), MiB.
inline double peak_rss_mib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

// What one phase measured on one side.
struct dht_phase_summary {
  std::size_t alive = 0, killed = 0;
  std::size_t stores = 0, stores_ok = 0, gets = 0, gets_ok = 0;
  dht_latency store{}, get{}, complete{};  // complete: when every expected subkey had arrived (see dht_op)
  double rpcs_per_get = 0;
  std::size_t threads = 0;
  double peak_rss_mib = 0;
  double success() const { return gets ? static_cast<double>(gets_ok) / static_cast<double>(gets) : 0; }
  double store_success() const { return stores ? static_cast<double>(stores_ok) / static_cast<double>(stores) : 0; }
};

// What one side sends back to the parent process (plain data: it crosses a pipe).
struct dht_side_summary {
  int completed = 0;
  double start_s = 0;
  std::size_t joined = 0;
  std::size_t start_threads = 0;
  double start_rss_mib = 0;
  std::array<dht_phase_summary, 2> phases{};
  std::size_t threads = 0;
  double peak_rss_mib = 0;
};

// Gathers one phase's operations, then prints its line.
class dht_phase_recorder {
 public:
  void add_store(const dht_op& op) { stores_.push_back(op); }
  void add_get(const dht_op& op) { gets_.push_back(op); }

  dht_phase_summary finish(const char* peer, const std::string& phase, std::size_t rounds, std::size_t alive,
                           std::size_t killed) {
    dht_phase_summary s;
    s.alive = alive;
    s.killed = killed;
    std::vector<double> store_ms, get_ms, complete_ms;
    double rpcs = 0;
    for (const auto& op : stores_) {
      ++s.stores;
      s.stores_ok += op.ok;
      store_ms.push_back(op.ms);
    }
    for (const auto& op : gets_) {
      ++s.gets;
      s.gets_ok += op.ok;
      get_ms.push_back(op.ms);
      if (op.complete_ms >= 0) complete_ms.push_back(op.complete_ms);
      rpcs += op.rpcs;
    }
    s.store = latency_of(store_ms);
    s.get = latency_of(get_ms);
    s.rpcs_per_get = s.gets ? rpcs / static_cast<double>(s.gets) : 0;
    s.complete = latency_of(complete_ms);
    s.threads = thread_count();
    s.peak_rss_mib = peak_rss_mib();
    fmt::print(
        "{{\"bench\":\"dht\",\"peer\":\"{}\",\"phase\":\"{}\",\"rounds\":{},\"alive\":{},\"killed\":{},"
        "\"stores\":{},\"store_success\":{:.4f},\"store_mean_ms\":{:.3f},\"store_p50_ms\":{:.3f},"
        "\"store_p99_ms\":{:.3f},\"gets\":{},\"get_success\":{:.4f},\"get_mean_ms\":{:.3f},\"get_p50_ms\":{:.3f},"
        "\"get_p99_ms\":{:.3f},\"get_max_ms\":{:.3f},\"get_complete_p50_ms\":{:.3f},\"get_complete_p99_ms\":{:.3f},"
        "\"rpcs_per_get\":{:.2f},\"threads\":{},\"peak_rss_mib\":{:.1f}}}\n",
        peer, phase, rounds, alive, killed, s.stores, s.store_success(), s.store.mean, s.store.p50, s.store.p99,
        s.gets, s.success(), s.get.mean, s.get.p50, s.get.p99, s.get.max, s.complete.p50, s.complete.p99, s.rpcs_per_get,
        s.threads,
        s.peak_rss_mib);
    std::fflush(stdout);
    stores_.clear();
    gets_.clear();
    return s;
  }

 private:
  std::vector<dht_op> stores_, gets_;
};

// `requests`: requests every node sent from its creation to the last join, `detail` more JSON fields (",..." or "").
inline void print_dht_start(const char* peer, std::size_t nodes, std::size_t joined, double seconds,
                            std::size_t join_concurrency, double requests, const std::string& detail,
                            dht_side_summary& out) {
  out.start_s = seconds;
  out.joined = joined;
  out.start_threads = thread_count();
  out.start_rss_mib = peak_rss_mib();
  fmt::print("{{\"bench\":\"dht\",\"peer\":\"{}\",\"phase\":\"start\",\"nodes\":{},\"joined\":{},"
             "\"join_concurrency\":{},\"start_s\":{:.3f},\"ms_per_join\":{:.3f},\"rpcs_per_join\":{:.1f}{},"
             "\"threads\":{},\"peak_rss_mib\":{:.1f}}}\n",
             peer, nodes, joined, join_concurrency, seconds, 1e3 * seconds / static_cast<double>(nodes),
             requests / static_cast<double>(nodes), detail, out.start_threads, out.start_rss_mib);
  std::fflush(stdout);
}

}  // namespace dmoe_bench
