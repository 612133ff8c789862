// dmoe's side of dmoe_bench_dht: every node a dht::node on one io_context (one thread), each on its own 127.x.y.z.
#pragma once

#include "dht_plan.hpp"

#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/dht/node.hpp>

#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace dmoe_bench {

struct dmoe_dht_run {
  const dht_plan& plan;
  dmoe::dht::node_options options;
  dmoe::io_context& ctx;
  std::vector<std::unique_ptr<dmoe::dht::node>> nodes;
  std::size_t next = 0;  // the next node to create and join
  std::size_t joined = 0;
  double creation_s = 0;  // spent constructing nodes (socket bound, serving armed)

  dmoe_dht_run(const dht_plan& p, dmoe::dht::node_options o, dmoe::io_context& c)
      : plan(p), options(std::move(o)), ctx(c), nodes(p.nodes) {}

  // Takes the next node, creates it (its initial peers were all created before it) and joins it; repeats.
  dmoe::task<void> joiner() {
    while (next < plan.nodes) {
      const std::size_t i = next++;
      dmoe::dht::node_options o = options;
      o.listen = dmoe::endpoint(dht_node_address(i), 0);
      const auto creating = std::chrono::steady_clock::now();
      nodes[i] = std::make_unique<dmoe::dht::node>(ctx, o);
      creation_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - creating).count();
      std::vector<dmoe::endpoint> peers;
      for (std::uint32_t j : plan.initial_peers[i]) peers.push_back(nodes[j]->local_endpoint());
      const dmoe::dht::bootstrap_result result = co_await nodes[i]->bootstrap(std::move(peers));
      if (result.joined) ++joined;
    }
  }

  static std::uint64_t requests_sent(const dmoe::dht::node& n) {
    const auto s = n.stats().rpc;
    return s.pings_sent + s.finds_sent + s.stores_sent;
  }

  dmoe::task<void> store_one(std::size_t round, std::size_t j, dht_op& op) {
    const dht_round& r = plan.rounds[round];
    dmoe::dht::node& n = *nodes[r.storers[j]];
    const auto started = std::chrono::steady_clock::now();
    try {
      const dmoe::dht::store_outcome outcome =
          co_await n.store(dmoe::dht::key_of(r.key), dmoe::to_buffer(dht_subkey_text(j)),
                           dmoe::to_buffer(dht_value_text(round, j)), dmoe::default_clock().wall_now() + 600);
      op.ok = outcome.replicas > 0;
    } catch (const std::exception& e) {
      fmt::print(stderr, "dmoe store failed: {}\n", e.what());
    }
    op.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  }

  dmoe::task<void> get_one(std::size_t round, std::size_t g, const std::vector<dht_op>& stores, dht_op& op) {
    const dht_round& r = plan.rounds[round];
    dmoe::dht::node& n = *nodes[r.getters[g]];
    const std::uint64_t before = requests_sent(n);
    const auto started = std::chrono::steady_clock::now();
    std::optional<dmoe::dht::record> found;
    try {
      found = co_await n.get(dmoe::dht::key_of(r.key), true);
    } catch (const std::exception& e) {
      fmt::print(stderr, "dmoe get failed: {}\n", e.what());
    }
    op.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
    op.rpcs = static_cast<double>(requests_sent(n) - before);
    op.ok = found && found->is_dictionary;
    for (std::size_t j = 0; op.ok && j < stores.size(); ++j) {
      if (!stores[j].ok) continue;  // judged on the subkeys whose store succeeded
      const auto it = found->subkeys.find(dmoe::to_buffer(dht_subkey_text(j)));
      op.ok = it != found->subkeys.end() && dmoe::as_string_view(it->second.value) == dht_value_text(round, j);
    }
    if (op.ok) op.complete_ms = op.ms;
  }

  dmoe::task<dht_side_summary> run() {
    dht_side_summary out;
    const auto started = std::chrono::steady_clock::now();
    {
      dmoe::task_group joins(ctx);
      for (std::size_t w = 0; w < plan.join_concurrency; ++w) joins.spawn(joiner());
      co_await joins.join();
    }
    const double start_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    dmoe::dht::protocol_stats sum;
    for (const auto& n : nodes) {
      const auto s = n->stats().rpc;
      sum.pings_sent += s.pings_sent;
      sum.finds_sent += s.finds_sent;
      sum.stores_sent += s.stores_sent;
      sum.evictions_checked += s.evictions_checked;
    }
    const double per_node = static_cast<double>(plan.nodes);
    print_dht_start("dmoe", plan.nodes, joined, start_s, plan.join_concurrency,
                    static_cast<double>(sum.pings_sent + sum.finds_sent + sum.stores_sent),
                    fmt::format(",\"pings_per_join\":{:.1f},\"finds_per_join\":{:.1f},\"eviction_pings_per_join\":{:.1f},"
                                "\"create_ms_per_node\":{:.3f}",
                                static_cast<double>(sum.pings_sent) / per_node,
                                static_cast<double>(sum.finds_sent) / per_node,
                                static_cast<double>(sum.evictions_checked) / per_node, 1e3 * creation_s / per_node),
                    out);

    if (plan.settle_s > 0) co_await dmoe::sleep_for(std::chrono::duration<double>(plan.settle_s));
    dht_phase_recorder recorder;
    std::size_t killed = 0;
    for (std::size_t round = 0; round < plan.rounds.size(); ++round) {
      const dht_round& r = plan.rounds[round];
      for (std::uint32_t victim : r.kill_before) {
        co_await nodes[victim]->shutdown();
        ++killed;
      }
      std::vector<dht_op> stores(r.storers.size()), gets(r.getters.size());
      {
        dmoe::task_group calls(ctx);
        for (std::size_t j = 0; j < r.storers.size(); ++j) calls.spawn(store_one(round, j, stores[j]));
        co_await calls.join();
      }
      {
        dmoe::task_group calls(ctx);
        for (std::size_t g = 0; g < r.getters.size(); ++g) calls.spawn(get_one(round, g, stores, gets[g]));
        co_await calls.join();
      }
      for (const auto& op : stores) recorder.add_store(op);
      for (const auto& op : gets) recorder.add_get(op);
      const bool last_of_phase = round + 1 == plan.rounds.size() || plan.rounds[round + 1].phase != r.phase;
      if (last_of_phase) {
        std::size_t rounds = 0;
        for (const auto& x : plan.rounds) rounds += x.phase == r.phase;
        out.phases[r.phase] =
            recorder.finish("dmoe", plan.phases[r.phase], rounds, plan.nodes - killed, killed);
      }
    }
    out.threads = thread_count();
    out.peak_rss_mib = peak_rss_mib();
    for (auto& n : nodes)
      if (n && !n->is_shut_down()) co_await n->shutdown();
    out.completed = 1;
    co_return out;
  }
};

inline dht_side_summary run_dmoe_dht(const dht_plan& plan, dmoe::dht::node_options options) {
  dmoe::io_context ctx;
  dmoe_dht_run run(plan, std::move(options), ctx);
  return ctx.run(run.run());
}

}  // namespace dmoe_bench
