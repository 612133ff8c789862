// dmoe_bench_server: the expert server's throughput against the same expert computation run in-process.
//
// hivemind's server throughput workload (its published figure: 28,581 samples/s forward+backward for 16 ffn experts
// at hidden 1024, batch 2048, on a GTX 1080 Ti): one server with E ffn experts, C client coroutines each sending
// batches of B samples to random experts (forward only, or forward then backward of the same batch, as a trainer
// does), over loopback RPC. The baseline, in the same invocation: the same batches through the same experts
// (server::expert_backend: forward; or forward + backward with the recomputed forward and the optimizer step)
// called directly in this process, one after another: no network, no batching, no server threads. The nop expert's
// samples/s at batch 1 and 256 measure the server's own cost per request and per sample.
//
// Last line: {"bench":"server","samples_per_s":S,"fraction_of_inprocess":F,...} for the default case (hidden 1024,
// 16 experts, 16 clients, batch 256, forward+backward, CPU). Goal: F >= 0.85.
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/moe/expert_protocol.hpp>
#include <dmoe/net/rpc_client.hpp>
#include <dmoe/server/background_server.hpp>

#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "bench_env.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

struct workload {
  std::string kind = "ffn";
  std::int64_t hidden = 1024;
  int experts = 16;
  int clients = 16;
  std::int64_t batch = 256;
  bool backward = true;
  double seconds = 10;
};

std::vector<std::string> uids_of(int experts) {
  std::vector<std::string> uids;
  for (int i = 0; i < experts; ++i) uids.push_back(fmt::format("bench.0.{}", i));
  return uids;
}

dmoe::server::expert_options expert_options_of(const workload& w) {
  dmoe::server::expert_options o;
  o.kind = w.kind;
  o.hidden = w.hidden;
  return o;
}

// Samples per second through a background server.
double served_samples_per_s(const workload& w, dmoe::server::expert_stats& stats_out) {
  dmoe::server::server_options o;
  o.experts = uids_of(w.experts);
  o.expert = expert_options_of(w);
  o.runtime.max_batch_size = std::max<std::int64_t>(4096, w.batch);
  dmoe::server::background_server server(o);
  dmoe::io_context ctx;
  dmoe::net::rpc_client client(ctx);
  dmoe::random_engine gen(1);
  const dmoe::tensor x = dmoe::tensor::normal(dmoe::shape{w.batch, w.hidden}, gen);
  const dmoe::tensor dy = dmoe::tensor::normal(dmoe::shape{w.batch, w.hidden}, gen, 0.0f, 1e-3f);
  const auto uids = uids_of(w.experts);
  std::int64_t samples = 0;
  bool measuring = false;
  clock_type::time_point end;
  auto one_client = [&](int index) -> dmoe::task<void> {
    std::mt19937 pick(static_cast<std::uint32_t>(index));
    while (clock_type::now() < end) {
      const std::string& uid = uids[pick() % uids.size()];
      auto forward = dmoe::moe::encode_expert_request(uid, x, nullptr);
      const auto y = co_await client.call(server.rpc_endpoint(), dmoe::moe::forward_method, forward.pieces);
      if (w.backward) {
        auto backward = dmoe::moe::encode_expert_request(uid, x, &dy);
        co_await client.call(server.rpc_endpoint(), dmoe::moe::backward_method, backward.pieces);
      }
      if (measuring) samples += w.batch;
    }
  };
  auto run_for = [&](double seconds) {
    end = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(seconds));
    ctx.run([&]() -> dmoe::task<void> {
      dmoe::task_group group;
      for (int c = 0; c < w.clients; ++c) group.spawn(one_client(c));
      co_await group.join();
    }());
  };
  run_for(std::min(2.0, w.seconds / 4));  // warm-up: connections, buffers, caches
  measuring = true;
  const auto start = clock_type::now();
  run_for(w.seconds);
  const double elapsed = std::chrono::duration<double>(clock_type::now() - start).count();
  ctx.run(client.close());
  stats_out = server.get().compute().total_stats();
  return static_cast<double>(samples) / elapsed;
}

// Samples per second of the same computation called directly.
double inprocess_samples_per_s(const workload& w) {
  std::vector<std::unique_ptr<dmoe::server::expert_backend>> experts;
  for (const auto& uid : uids_of(w.experts)) experts.push_back(dmoe::server::make_expert_backend(uid, expert_options_of(w), 0));
  dmoe::random_engine gen(1);
  const dmoe::tensor x = dmoe::tensor::normal(dmoe::shape{w.batch, w.hidden}, gen);
  const dmoe::tensor dy = dmoe::tensor::normal(dmoe::shape{w.batch, w.hidden}, gen, 0.0f, 1e-3f);
  std::mt19937 pick(0);
  auto run_for = [&](double seconds) {
    std::int64_t samples = 0;
    const auto start = clock_type::now();
    const auto end = start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(seconds));
    while (clock_type::now() < end) {
      auto& e = *experts[pick() % experts.size()];
      e.forward(x);
      if (w.backward) e.backward(x, dy);
      samples += w.batch;
    }
    return static_cast<double>(samples) / std::chrono::duration<double>(clock_type::now() - start).count();
  };
  run_for(std::min(2.0, w.seconds / 4));
  return run_for(w.seconds);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dmoe_bench_server: expert server throughput against in-process computation"};
  workload w;
  bool skip_nop = false, forward_only = false;
  app.add_option("--hidden", w.hidden, "hidden size")->capture_default_str();
  app.add_option("--experts", w.experts, "ffn experts on the server")->capture_default_str();
  app.add_option("--clients", w.clients, "client coroutines")->capture_default_str();
  app.add_option("--batch", w.batch, "samples per request")->capture_default_str();
  app.add_option("--seconds", w.seconds, "measured seconds per case")->capture_default_str();
  app.add_flag("--skip-nop", skip_nop, "skip the nop expert's overhead cases");
  app.add_flag("--forward-only", forward_only, "skip the forward+backward case");
  CLI11_PARSE(app, argc, argv);
  dmoe_bench::print_environment("server");

  if (!skip_nop) {
    for (std::int64_t batch : {std::int64_t{1}, std::int64_t{256}}) {
      workload nop = w;
      nop.kind = "nop";
      nop.batch = batch;
      nop.backward = false;
      nop.seconds = std::min(w.seconds, 3.0);
      dmoe::server::expert_stats stats;
      const double served = served_samples_per_s(nop, stats);
      fmt::print("{{\"bench\":\"server\",\"case\":\"nop\",\"batch\":{},\"clients\":{},\"samples_per_s\":{:.1f},"
                 "\"requests_per_s\":{:.1f},\"us_per_request\":{:.2f},\"mean_server_batch\":{:.1f}}}\n",
                 batch, w.clients, served, served / static_cast<double>(batch),
                 1e6 * static_cast<double>(batch) / served,
                 static_cast<double>(stats.forward_samples) / static_cast<double>(std::max<std::uint64_t>(1, stats.forward_batches)));
    }
  }
  double last_served = 0, last_fraction = 0;
  for (bool backward : {false, true}) {
    if (backward && forward_only) continue;
    workload c = w;
    c.backward = backward;
    dmoe::server::expert_stats stats;
    const double served = served_samples_per_s(c, stats);
    const double local = inprocess_samples_per_s(c);
    const std::uint64_t batches = stats.forward_batches + stats.backward_batches;
    const std::uint64_t requests = stats.forward_requests + stats.backward_requests;
    fmt::print("{{\"bench\":\"server\",\"case\":\"{}\",\"kind\":\"ffn\",\"hidden\":{},\"experts\":{},\"clients\":{},"
               "\"batch\":{},\"samples_per_s\":{:.1f},\"inprocess_samples_per_s\":{:.1f},\"fraction_of_inprocess\":{:.3f},"
               "\"mean_server_batch\":{:.1f},\"mean_queue_wait_ms\":{:.2f},\"updates\":{}}}\n",
               backward ? "forward+backward" : "forward", c.hidden, c.experts, c.clients, c.batch, served, local,
               served / local,
               static_cast<double>(stats.forward_samples + stats.backward_samples) /
                   static_cast<double>(std::max<std::uint64_t>(1, batches)),
               static_cast<double>(stats.queue_wait_ns) / 1e6 / static_cast<double>(std::max<std::uint64_t>(1, requests)),
               stats.updates);
    last_served = served;
    last_fraction = served / local;
  }
  fmt::print("{{\"bench\":\"server\",\"samples_per_s\":{:.1f},\"fraction_of_inprocess\":{:.3f},\"hidden\":{},"
             "\"experts\":{},\"clients\":{},\"batch\":{},\"case\":\"{}\",\"device\":\"cpu\"}}\n",
             last_served, last_fraction, w.hidden, w.experts, w.clients, w.batch,
             forward_only ? "forward" : "forward+backward");
  return 0;
}
