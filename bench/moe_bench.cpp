// dmoe_bench_moe: the DMoE layer's costs. (1) The beam search over the DHT as the grid and the swarm grow: DHT
// requests and milliseconds per batch of 256, p50 and p99, with the directory as the layer runs it (its cache on,
// default live_for: a run of batches, the first of which crawls) and with the cache off (every batch crawls).
// (2) The layer's forward+backward over expert servers on loopback, found through the DHT, against
// local_mixture_of_experts on the same experts in the same run (the same computation in one process).
//
// Last line: {"bench":"moe","overhead_vs_local":O,"beam_search_ms_p50":B,"beam_search_ms_p50_65536":B2,...}: O for
// batch 256, hidden 512, grid 16x16, k = 4, 4 servers; B for grid 16x16 over 64 DHT nodes; B2 for 65,536 experts
// on a 256x256 grid over 1,024 nodes (both as the layer runs; the *_uncached keys give every batch crawling).
// Goals: O <= 1.5, B2 <= 10 ms.
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/dht/node.hpp>
#include <dmoe/dht/node_thread.hpp>
#include <dmoe/moe/beam_search.hpp>
#include <dmoe/moe/expert_records.hpp>
#include <dmoe/moe/local_mixture_of_experts.hpp>
#include <dmoe/moe/network_thread.hpp>
#include <dmoe/moe/remote_mixture_of_experts.hpp>
#include <dmoe/server/background_server.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "bench_env.hpp"

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

double ms_since(clock_type::time_point t) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t).count();
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
}

// A fresh 127.a.b.c per node: per-source limits see distinct peers.
dmoe::endpoint loopback(unsigned n) {
  return dmoe::endpoint(fmt::format("127.{}.{}.{}", 60 + n / 62500 % 100, n / 250 % 250, n % 250 + 1), 0);
}

dmoe::dht::node_options dht_options(unsigned n) {
  dmoe::dht::node_options o;
  o.listen = loopback(n);
  o.datagram.attempt_timeout = 200ms;
  o.rpc_timeout = 1000ms;
  o.max_requests_per_second = 0;
  return o;
}

struct search_result {
  std::uint32_t side = 0;
  std::size_t nodes = 0;
  double p50_cold = 0, p99_cold = 0, requests_cold = 0, p50_warm = 0, p99_warm = 0, requests_warm = 0;
  double found_fraction = 0;
};

// A swarm of `nodes` on one io_context, every expert of a side x side grid declared (prefix entries: the ones a
// beam search reads), and a client-mode trainer node searching batches of `batch` random gating vectors.
search_result beam_search_case(std::uint32_t side, std::size_t nodes, std::int64_t batch, int rounds) {
  dmoe::io_context ctx;
  std::vector<std::unique_ptr<dmoe::dht::node>> swarm;
  static unsigned next_address = 0;
  search_result out{side, nodes};
  const auto body = [&]() -> dmoe::task<void> {
    std::mt19937_64 rng(side * 7919 + nodes);
    for (std::size_t i = 0; i < nodes; ++i) {
      swarm.push_back(std::make_unique<dmoe::dht::node>(ctx, dht_options(next_address++)));
      std::vector<dmoe::endpoint> peers;
      for (int j = 0; j < 3 && i > 0; ++j) peers.push_back(swarm[rng() % i]->local_endpoint());
      co_await swarm.back()->bootstrap(std::move(peers));
    }
    auto trainer_options = dht_options(next_address++);
    trainer_options.client_mode = true;
    dmoe::dht::node trainer(ctx, trainer_options);
    std::vector<dmoe::endpoint> peers{swarm[0]->local_endpoint(), swarm[nodes / 2]->local_endpoint()};
    co_await trainer.bootstrap(std::move(peers));

    // Declarations as 16 servers would make them (server s hosts the rows a = s mod 16): the successor sets under
    // each prefix, the records a beam search reads.
    const dmoe::wall_seconds expiration = dmoe::default_clock().wall_now() + 3600;
    std::vector<dmoe::dht::store_entry> entries;
    for (std::uint32_t s = 0; s < 16 && s < side; ++s) {
      const auto key = dmoe::dht::ed25519_keypair::generate();
      const dmoe::byte_buffer owner = dmoe::to_buffer(dmoe::dht::owner_tag(key.public_key()));
      const dmoe::endpoint server("127.0.0.1", static_cast<std::uint16_t>(7000 + s));
      std::vector<std::uint32_t> rows;
      for (std::uint32_t a = s; a < side; a += 16) rows.push_back(a);
      entries.push_back(dmoe::dht::store_entry{dmoe::dht::key_of("ffn."), owner,
                                               dmoe::moe::encode_successor_set({server, {}, dmoe::moe::ranges_of(rows)}),
                                               expiration, {}}.signed_by(key));
      for (const std::uint32_t a : rows)
        entries.push_back(dmoe::dht::store_entry{dmoe::dht::key_of(fmt::format("ffn.{}.", a)), owner,
                                                 dmoe::moe::encode_successor_set({server, {{0, side}}, {}}), expiration,
                                                 {}}.signed_by(key));
    }
    for (std::size_t begin = 0; begin < entries.size(); begin += 4096) {
      std::vector<dmoe::dht::store_entry> chunk(entries.begin() + static_cast<std::ptrdiff_t>(begin),
                                                entries.begin() + static_cast<std::ptrdiff_t>(std::min(entries.size(), begin + 4096)));
      co_await swarm[(begin / 4096) % nodes]->store_many(std::move(chunk));
    }

    const std::vector<std::uint32_t> grid{side, side};
    const dmoe::moe::beam_search_options search{"ffn", grid, 4};
    dmoe::random_engine gen(side);
    std::vector<double> cold, warm, requests, requests_warm;
    std::size_t found = 0, wanted = 0;
    for (int cached = 0; cached < 2; ++cached) {
      dmoe::moe::dht_directory_options o;
      if (!cached) o.live_for = o.empty_for = 0ms;
      o.store_empty_markers = false;
      dmoe::moe::dht_expert_directory directory(trainer, o);
      for (int r = 0; r < rounds; ++r) {
        const dmoe::tensor scores = dmoe::tensor::normal(dmoe::shape{batch, 2 * static_cast<std::int64_t>(side)}, gen);
        const auto sent = trainer.stats().lookup_requests;
        const auto t = clock_type::now();
        const auto result = co_await dmoe::moe::beam_search(directory, scores, search, 4, dmoe::deadline_after(10s));
        (cached ? warm : cold).push_back(ms_since(t));
        (cached ? requests_warm : requests).push_back(static_cast<double>(trainer.stats().lookup_requests - sent));
        for (const auto& s : result) found += s.size();
        wanted += static_cast<std::size_t>(batch) * 4;
      }
    }
    out.p50_cold = percentile(cold, 0.5);
    out.p99_cold = percentile(cold, 0.99);
    out.requests_cold = percentile(requests, 0.5);
    out.p50_warm = percentile(warm, 0.5);
    out.p99_warm = percentile(warm, 0.99);
    out.requests_warm = percentile(requests_warm, 0.5);
    out.found_fraction = wanted ? static_cast<double>(found) / static_cast<double>(wanted) : 0;
    co_await trainer.shutdown();
    for (auto& n : swarm) co_await n->shutdown();
  };
  dmoe::sync_wait(ctx, body());
  return out;
}

struct layer_result {
  double local_ms = 0, remote_ms = 0, search_ms = 0;
  double answered_fraction = 0;
};

// Forward+backward of batch x hidden through grid 16x16, k = 4: over `servers` servers on loopback (their experts
// found through a DHT) and through local_mixture_of_experts on the same experts.
layer_result layer_case(std::int64_t hidden, std::int64_t batch, int servers, int rounds) {
  const std::vector<std::uint32_t> grid{16, 16};
  const std::uint64_t seed = 5;
  layer_result out;
  dmoe::random_engine data(1);
  const dmoe::tensor x = dmoe::tensor::normal(dmoe::shape{batch, hidden}, data);
  const dmoe::tensor dy = dmoe::tensor::normal(dmoe::shape{batch, hidden}, data);
  {
    dmoe::random_engine gen(9);
    dmoe::moe::local_mixture_of_experts<> local({.grid = grid, .k = 4, .k_min = 4, .uid_prefix = "ffn"}, "ffn", hidden,
                                                seed, gen);
    std::vector<double> times;
    for (int r = 0; r < rounds + 1; ++r) {
      const auto t = clock_type::now();
      local.forward(x);
      local.backward(dy);
      if (r > 0) times.push_back(ms_since(t));  // the first round warms caches and the pool
    }
    out.local_ms = percentile(times, 0.5);
  }
  dmoe::dht::node_thread bootstrap(dht_options(90000));
  std::vector<std::unique_ptr<dmoe::server::background_server>> hosts;
  const int rows = 16 / servers;
  for (int s = 0; s < servers; ++s) {
    dmoe::server::server_options o;
    o.experts = dmoe::moe::expand_expert_pattern(fmt::format("ffn.[{}:{}].[0:16]", s * rows, (s + 1) * rows));
    o.expert.hidden = hidden;
    o.seed = seed;
    o.runtime.max_batch_size = 4096;
    o.dht = dht_options(90001 + static_cast<unsigned>(s));
    o.initial_peers = {bootstrap.local_endpoint()};
    hosts.push_back(std::make_unique<dmoe::server::background_server>(o));
  }
  for (auto& h : hosts) h->get().wait_for_declarations(1, 60s);
  dmoe::moe::network_thread_options net_options;
  net_options.dht = dht_options(90100);
  net_options.dht.client_mode = true;
  net_options.initial_peers = {bootstrap.local_endpoint()};
  dmoe::moe::network_thread net(net_options);
  dmoe::random_engine gen(9);
  dmoe::moe::remote_mixture_of_experts_options o;
  o.grid = grid;
  o.schema = dmoe::moe::ffn_schema(hidden);
  o.k = 4;
  o.k_min = 4;
  o.forward_timeout = o.backward_timeout = 60s;
  dmoe::moe::remote_mixture_of_experts<> layer(net.directory(), net.client(), o, gen);
  std::vector<double> times, searches;
  for (int r = 0; r < rounds + 1; ++r) {
    const auto t = clock_type::now();
    net.run([&]() -> dmoe::task<void> {
      co_await layer.forward_async(x);
      co_await layer.backward_async(dy);
    });
    if (r > 0) {
      times.push_back(ms_since(t));
      searches.push_back(layer.stats().last_search_ms);
    }
  }
  out.remote_ms = percentile(times, 0.5);
  out.search_ms = percentile(searches, 0.5);
  out.answered_fraction = static_cast<double>(layer.stats().experts_answered) /
                          std::max<double>(1.0, static_cast<double>(layer.stats().experts_chosen));
  net.shutdown();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dmoe_bench_moe: the DMoE layer's beam search over the DHT and its overhead against the local layer"};
  std::int64_t hidden = 512, batch = 256;
  int servers = 4, rounds = 10, search_rounds = 30;
  bool quick = false;
  app.add_option("--hidden", hidden, "expert width of the layer case");
  app.add_option("--batch", batch, "samples per batch");
  app.add_option("--servers", servers, "servers hosting the 256 experts (a divisor of 16)");
  app.add_option("--rounds", rounds, "forward+backward rounds measured per side");
  app.add_option("--search-rounds", search_rounds, "beam searches measured per case");
  app.add_flag("--quick", quick, "small cases only (a smoke run)");
  CLI11_PARSE(app, argc, argv);
  if (servers < 1 || 16 % servers != 0) {
    fmt::print(stderr, "--servers must divide 16\n");
    return 2;
  }
  dmoe_bench::print_environment("moe");

  struct search_case {
    std::uint32_t side;
    std::size_t nodes;
  };
  std::vector<search_case> cases{{16, 16}, {16, 64}, {64, 256}, {256, 1024}};
  if (quick) cases = {{16, 16}, {16, 64}};
  search_result b16, b65536;
  for (const auto& c : cases) {
    const auto r = beam_search_case(c.side, c.nodes, batch, quick ? 5 : search_rounds);
    fmt::print("{{\"bench\":\"moe\",\"case\":\"beam_search\",\"grid\":\"{}x{}\",\"experts\":{},\"dht_nodes\":{},\"batch\":{},"
               "\"ms_p50\":{:.3f},\"ms_p99\":{:.3f},\"dht_requests_p50\":{},\"ms_p50_uncached\":{:.3f},"
               "\"ms_p99_uncached\":{:.3f},\"dht_requests_p50_uncached\":{},\"found_fraction\":{:.4f}}}\n",
               c.side, c.side, c.side * c.side, c.nodes, batch, r.p50_warm, r.p99_warm, r.requests_warm, r.p50_cold,
               r.p99_cold, r.requests_cold, r.found_fraction);
    std::fflush(stdout);
    if (c.side == 16 && c.nodes == 64) b16 = r;
    if (c.side == 256) b65536 = r;
  }
  const auto l = layer_case(quick ? 64 : hidden, batch, servers, quick ? 2 : rounds);
  const double overhead = l.remote_ms / l.local_ms;
  fmt::print("{{\"bench\":\"moe\",\"case\":\"layer\",\"hidden\":{},\"batch\":{},\"grid\":\"16x16\",\"k\":4,\"servers\":{},"
             "\"local_ms_p50\":{:.2f},\"remote_ms_p50\":{:.2f},\"beam_search_ms_p50\":{:.3f},\"answered_fraction\":{:.4f}}}\n",
             quick ? 64 : hidden, batch, servers, l.local_ms, l.remote_ms, l.search_ms, l.answered_fraction);
  const auto or_null = [quick](double v) { return quick ? std::string("null") : fmt::format("{:.3f}", v); };
  fmt::print("{{\"bench\":\"moe\",\"overhead_vs_local\":{:.3f},\"beam_search_ms_p50\":{:.3f},"
             "\"beam_search_ms_p50_65536\":{},\"beam_search_ms_p99_65536\":{},\"beam_search_ms_p50_uncached\":{:.3f},"
             "\"beam_search_ms_p50_65536_uncached\":{},\"local_ms\":{:.2f},\"remote_ms\":{:.2f}}}\n",
             overhead, b16.p50_warm, or_null(b65536.p50_warm), or_null(b65536.p99_warm), b16.p50_cold,
             or_null(b65536.p50_cold), l.local_ms, l.remote_ms);
  return 0;
}
