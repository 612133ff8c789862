// dmoe_bench_dht: hivemind's DHT benchmark workload on dmoe's DHT and on OpenDHT, side by side in one invocation.
//
// N nodes in one process on loopback, each joining through 3 random earlier nodes (dmoe's on their own 127.x.y.z
// each; OpenDHT's on 127.0.0.1, one port each, since it rewrites loopback addresses it learns: dht_opendht.hpp);
// then rounds in which 8 nodes store one subkey each under a fresh key and 8 other nodes get(latest) it. A get
// succeeds when it returns every subkey stored (successfully) in its round. Phase "no_kill" runs --rounds rounds;
// phase "killed" kills --kill-fraction of the nodes, a share before each of its --rounds rounds, so that every round
// meets fresh deaths (a killed node stops answering: no goodbye). Both sides get the same plan, drawn from --seed.
// Each side runs in its own child process (its own threads, peak RSS, descriptors). Prints the environment, one line
// per side and phase, a ratio line per comparison (for bench/plot.py) and last the summary line
// {"bench":"dht","nodes":N,"start_s":T,"start_ratio_vs_opendht":RS,"get_success":S,"get_success_opendht":S2,
//  "get_p50_ms":P,"get_p50_ratio_vs_opendht":R,...}
// where success and latency are the no-kill phase's, and the "_killed" fields the killed phase's. A get's latency is
// until it returned (OpenDHT: its done callback); OpenDHT also hands values over before that, so its lines add
// "get_complete_*": until every expected value had arrived, and the summary the ratio against that too.
#include "bench_env.hpp"
#include "dht_dmoe.hpp"
#include "dht_opendht.hpp"
#include "dht_plan.hpp"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

namespace {

using namespace dmoe_bench;

// Raises the descriptor limit to the hard limit; returns the limit in force.
rlim_t raise_descriptor_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
    ::getrlimit(RLIMIT_NOFILE, &limit);
  }
  return limit.rlim_cur;
}

// Runs `side` in a child process; its summary comes back through a pipe (nothing when it failed).
std::optional<dht_side_summary> run_in_child(const char* name, const std::function<dht_side_summary()>& side) {
  int fds[2];
  if (::pipe(fds) != 0) {
    fmt::print(stderr, "pipe: {}\n", std::strerror(errno));
    return std::nullopt;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(fds[0]);
    int status = 0;
    try {
      const dht_side_summary out = side();
      std::fflush(stdout);
      if (::write(fds[1], &out, sizeof out) != static_cast<ssize_t>(sizeof out)) status = 1;
    } catch (const std::exception& e) {
      fmt::print(stderr, "{}: {}\n", name, e.what());
      status = 1;
    }
    std::fflush(stdout);
    std::fflush(stderr);
    ::_exit(status);
  }
  ::close(fds[1]);
  dht_side_summary out{};
  std::size_t got = 0;
  while (got < sizeof out) {
    const ssize_t n = ::read(fds[0], reinterpret_cast<char*>(&out) + got, sizeof out - got);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  if (got != sizeof out || !out.completed) {
    fmt::print(stderr, "{} side failed (exit status {})\n", name,
               WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    return std::nullopt;
  }
  return out;
}

double ratio(double a, double b) { return b > 0 ? a / b : 0; }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"DHT swarm: dmoe's DHT against OpenDHT, same workload, same process layout"};
  dht_plan_options plan_options;
  std::string peers = "both";
  bool skip_opendht = false;
  app.add_option("--nodes", plan_options.nodes, "nodes in the swarm (in one process)")->check(CLI::Range(2, 60000));
  app.add_option("--rounds", plan_options.rounds, "rounds per phase (no-kill, then killed)")->check(CLI::PositiveNumber);
  app.add_option("--kill-fraction", plan_options.kill_fraction, "nodes killed over the killed phase")
      ->check(CLI::Range(0.0, 0.9));
  app.add_option("--seed", plan_options.seed, "draws the joins, keys, storers, getters and victims");
  app.add_option("--storers", plan_options.storers, "nodes storing one subkey each per round")->check(CLI::PositiveNumber);
  app.add_option("--getters", plan_options.getters, "other nodes getting the key per round")->check(CLI::PositiveNumber);
  app.add_option("--join-concurrency", plan_options.join_concurrency,
                 "nodes joining at once (each through 3 random earlier nodes)")
      ->check(CLI::PositiveNumber);
  app.add_option("--settle-s", plan_options.settle_s,
                 "seconds both swarms run idle between the last join and the first round (default 0: rounds start "
                 "at once)")
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--peer", peers, "both, dmoe or opendht (for profiling one side)")
      ->check(CLI::IsMember({"both", "dmoe", "opendht"}));
  app.add_flag("--skip-opendht", skip_opendht, "run dmoe's side only");
  int dmoe_rpc_timeout_ms = 0, dmoe_attempt_timeout_ms = 0, dmoe_slow_after_ms = 0, dmoe_min_slow_after_ms = 0;
  std::size_t dmoe_k = 0;
  app.add_option("--dmoe-rpc-timeout-ms", dmoe_rpc_timeout_ms, "dmoe's rpc_timeout (default: the library's)")
      ->check(CLI::Range(1, 60'000));
  app.add_option("--dmoe-attempt-timeout-ms", dmoe_attempt_timeout_ms,
                 "dmoe's datagram attempt_timeout (default: the library's)")
      ->check(CLI::Range(1, 60'000));
  app.add_option("--dmoe-k", dmoe_k, "dmoe's k (default: the library's)")->check(CLI::Range(1, 64));
  app.add_option("--dmoe-slow-after-ms", dmoe_slow_after_ms,
                 "dmoe's slow_request_after (default: the library's; at or above rpc_timeout: never slow)")
      ->check(CLI::Range(1, 60'000));
  app.add_option("--dmoe-min-slow-after-ms", dmoe_min_slow_after_ms,
                 "dmoe's min_slow_request_after, the floor of the measured threshold (default: the library's; "
                 "equal to --dmoe-slow-after-ms: a fixed threshold)")
      ->check(CLI::Range(1, 60'000));
  CLI11_PARSE(app, argc, argv);
  if (skip_opendht) peers = "dmoe";
  if (plan_options.storers + plan_options.getters + 1 > plan_options.nodes) {
    fmt::print(stderr, "--nodes {} is too few for {} storers and {} getters\n", plan_options.nodes,
               plan_options.storers, plan_options.getters);
    return 2;
  }

  print_environment("dht");
  const rlim_t descriptors = raise_descriptor_limit();
  const std::size_t needed = plan_options.nodes + 64;  // one socket per node, plus rings, epoll, stdio
  if (descriptors < needed) {
    fmt::print(stderr,
               "dmoe_bench_dht: {} nodes need about {} file descriptors but the limit is {} (hard limit; raise it "
               "with `ulimit -Hn` as root or in /etc/security/limits.conf)\n",
               plan_options.nodes, needed, descriptors);
    return 2;
  }

  // dmoe's node options: the defaults (k=20, alpha=3, 5 replicas, 1.5 s per call, 500 ms per attempt, 3 attempts,
  // slow after SRTT + 4 RTTVAR of answered finds within [10 ms, 300 ms], stale after 300 ms) unless a --dmoe-* flag
  // changes one (for exploring; the config line prints what ran).
  dmoe::dht::node_options dmoe_options;
  if (dmoe_rpc_timeout_ms) dmoe_options.rpc_timeout = std::chrono::milliseconds(dmoe_rpc_timeout_ms);
  if (dmoe_attempt_timeout_ms) dmoe_options.datagram.attempt_timeout = std::chrono::milliseconds(dmoe_attempt_timeout_ms);
  if (dmoe_k) dmoe_options.k = dmoe_k;
  if (dmoe_slow_after_ms) dmoe_options.slow_request_after = std::chrono::milliseconds(dmoe_slow_after_ms);
  if (dmoe_min_slow_after_ms) dmoe_options.min_slow_request_after = std::chrono::milliseconds(dmoe_min_slow_after_ms);
  dmoe_options.min_slow_request_after = std::min(dmoe_options.min_slow_request_after, dmoe_options.slow_request_after);
  const dht_plan plan = make_dht_plan(plan_options);
  fmt::print(
      "{{\"bench\":\"dht\",\"config\":true,\"nodes\":{},\"rounds_per_phase\":{},\"storers\":{},\"getters\":{},"
      "\"kill_fraction\":{},\"seed\":{},\"join_concurrency\":{},\"settle_s\":{},\"fd_limit\":{},"
      "\"dmoe\":\"one io_context thread; node_options: k={} alpha={} replicas={} rpc_timeout_ms={} "
      "attempt_timeout_ms={} attempts={} slow_request_after_ms={} min_slow_request_after_ms={}; get(latest) of a "
      "dictionary\","
      "\"opendht\":\"{} DhtRunners unthreaded, own UDP socket each (Context::sock) on 127.0.0.1 (it rewrites "
      "loopback addresses in find answers to the sender's), per-IP limit off (max_peer_req_per_sec=-1), one epoll "
      "thread calling loop(); runners created on the main thread; no subkeys: values with distinct ids under one "
      "key\"}}\n",
      plan_options.nodes, plan_options.rounds, plan_options.storers, plan_options.getters, plan_options.kill_fraction,
      plan_options.seed, plan.join_concurrency, plan.settle_s, descriptors, dmoe_options.k, dmoe_options.alpha,
      dmoe_options.num_replicas, dmoe_options.rpc_timeout.count(), dmoe_options.datagram.attempt_timeout.count(),
      dmoe_options.datagram.max_attempts, dmoe_options.slow_request_after.count(),
      dmoe_options.min_slow_request_after.count(), plan_options.nodes);
  std::fflush(stdout);

  std::optional<dht_side_summary> dmoe_side, opendht_side;
  if (peers != "opendht") dmoe_side = run_in_child("dmoe", [&] { return run_dmoe_dht(plan, dmoe_options); });
  if (peers != "dmoe") opendht_side = run_in_child("opendht", [&] { return run_opendht_dht(plan); });

  const dht_side_summary d = dmoe_side.value_or(dht_side_summary{});
  const dht_side_summary o = opendht_side.value_or(dht_side_summary{});
  const double start_ratio = ratio(d.start_s, o.start_s);
  const double p50_ratio = ratio(d.phases[0].get.p50, o.phases[0].get.p50);
  const double p50_ratio_killed = ratio(d.phases[1].get.p50, o.phases[1].get.p50);
  if (dmoe_side && opendht_side) {
    const auto ratio_line = [&](const char* name, double value) {
      fmt::print("{{\"bench\":\"dht\",\"case\":\"{} {} nodes\",\"ratio\":{:.3f},\"better\":\"lower\"}}\n", name,
                 plan_options.nodes, value);
    };
    ratio_line("start time", start_ratio);
    ratio_line("get p50 no kill", p50_ratio);
    ratio_line("get p50 10% killed", p50_ratio_killed);
  }
  fmt::print(
      "{{\"bench\":\"dht\",\"nodes\":{},\"joined\":{},\"joined_opendht\":{},\"start_s\":{:.3f},"
      "\"start_s_opendht\":{:.3f},\"start_ratio_vs_opendht\":{:.3f},"
      "\"get_success\":{:.4f},\"get_success_opendht\":{:.4f},\"get_p50_ms\":{:.3f},\"get_p50_ms_opendht\":{:.3f},"
      "\"get_p50_ratio_vs_opendht\":{:.3f},\"get_complete_p50_ms_opendht\":{:.3f},"
      "\"get_p50_ratio_vs_opendht_complete\":{:.3f},\"get_mean_ms\":{:.3f},\"get_mean_ms_opendht\":{:.3f},"
      "\"get_p99_ms\":{:.3f},\"get_p99_ms_opendht\":{:.3f},\"store_success\":{:.4f},\"store_success_opendht\":{:.4f},"
      "\"get_success_killed\":{:.4f},\"get_success_killed_opendht\":{:.4f},\"get_p50_ms_killed\":{:.3f},"
      "\"get_p50_ms_killed_opendht\":{:.3f},\"get_p99_ms_killed\":{:.3f},\"get_p99_ms_killed_opendht\":{:.3f},"
      "\"rpcs_per_get\":{:.2f},\"rpcs_per_get_opendht\":{:.2f},\"threads\":{},\"threads_opendht\":{},"
      "\"peak_rss_mib\":{:.1f},\"peak_rss_mib_opendht\":{:.1f}}}\n",
      plan_options.nodes, d.joined, o.joined, d.start_s, o.start_s, start_ratio, d.phases[0].success(),
      o.phases[0].success(),
      d.phases[0].get.p50, o.phases[0].get.p50, p50_ratio, o.phases[0].complete.p50,
      ratio(d.phases[0].get.p50, o.phases[0].complete.p50), d.phases[0].get.mean, o.phases[0].get.mean,
      d.phases[0].get.p99, o.phases[0].get.p99, d.phases[0].store_success(), o.phases[0].store_success(),
      d.phases[1].success(), o.phases[1].success(), d.phases[1].get.p50, o.phases[1].get.p50, d.phases[1].get.p99,
      o.phases[1].get.p99, d.phases[0].rpcs_per_get, o.phases[0].rpcs_per_get, d.threads, o.threads,
      d.peak_rss_mib, o.peak_rss_mib);
  return (peers != "opendht" && !dmoe_side) || (peers != "dmoe" && !opendht_side) ? 1 : 0;
}
