// dmoe-server: hosts experts for trainers until SIGINT or SIGTERM.
//
//   dmoe-server --experts 'ffn.[0:16].[0:16]' --hidden-dim 1024                       # the first server of a swarm
//   dmoe-server --experts 'ffn.[16:32].[0:16]' --initial-peers 1.2.3.4:31337           # joining its DHT
//
// It prints the RPC address it declares and the DHT address others join with, declares its experts in the DHT
// every --update-period, logs one statistics line every --stats-period, and checkpoints every expert to
// --checkpoint-dir every --checkpoint-period. SIGINT or SIGTERM: requests in flight are finished, a final
// checkpoint is written, and it exits 0. Exit status 1: the server failed; 2: bad arguments (also an address that
// cannot be bound, a device that is not there, an unreadable key file).
#include <dmoe/server/background_server.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>

#include "cli_support.hpp"

namespace {

std::chrono::milliseconds seconds(double s) {
  return std::chrono::milliseconds(static_cast<std::int64_t>(s * 1000.0));
}

}  // namespace

int main(int argc, char** argv) {
  // SIGINT and SIGTERM are taken by sigwait below: blocked before any thread starts, so every thread inherits it.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  CLI::App app{"dmoe-server: hosts Decentralized Mixture-of-Experts experts for trainers"};
  std::string experts, expert_cls = "ffn", listen = "0.0.0.0:0", dht_listen, announce, device = "cpu";
  std::string optimizer = "adam", compression = "none", checkpoint_dir, key_file, log_level = "info";
  std::vector<std::string> initial_peers;
  std::int64_t hidden = 1024, seq_len = 16, max_batch = 4096, min_batch = 1, warmup = 0, total_steps = 0;
  double lr = 1e-3, clip = 0, window_ms = 2, update_period = 30, expiration = 0, checkpoint_period = 600;
  double stats_period = 30;
  std::size_t keep = 3;
  std::uint64_t seed = 0;
  bool no_dht = false;
  app.add_option("--experts", experts, "expert uids or patterns, e.g. 'ffn.[0:16].[0:16]' or 'ffn.0.1,ffn.0.2'")
      ->required();
  app.add_option("--expert-cls", expert_cls, "expert kind: ffn, transformer or nop")->capture_default_str();
  app.add_option("--hidden-dim", hidden, "hidden size of every expert")->capture_default_str()->check(dmoe_cli::range(1, 1 << 16));
  app.add_option("--seq-len", seq_len, "transformer experts: sequence length")->capture_default_str()->check(dmoe_cli::range(1, 1 << 16));
  app.add_option("--listen", listen, "RPC address to listen on (IP:PORT; port 0: any)")
      ->capture_default_str()->check(dmoe_cli::endpoint_text);
  app.add_option("--announce", announce, "RPC address declared in the DHT (default: --listen, or this host's first "
                                         "address when listening on all)")->check(dmoe_cli::peer_text);
  app.add_option("--dht-listen", dht_listen, "UDP address of the DHT node (default: --listen's address, any port)")
      ->check(dmoe_cli::endpoint_text);
  app.add_option("--initial-peers", initial_peers, "DHT addresses to join through (none: start a new swarm)")
      ->check(dmoe_cli::peer_text);
  app.add_flag("--no-dht", no_dht, "run no DHT node: trainers must be told the RPC address");
  app.add_option("--device", device, "where experts compute: cpu, cuda or cuda:N (a build with the CUDA backend)")->capture_default_str();
  app.add_option("--max-batch-size", max_batch, "samples in one batch; larger requests are refused")
      ->capture_default_str()->check(dmoe_cli::range(std::int64_t{1}, std::int64_t{1} << 24));
  app.add_option("--min-batch-size", min_batch, "samples that start a batch before the window ends")
      ->capture_default_str()->check(dmoe_cli::range(std::int64_t{1}, std::int64_t{1} << 24));
  app.add_option("--batch-window-ms", window_ms, "longest wait for a batch to fill")->capture_default_str()->check(dmoe_cli::range(0.0, 10000.0));
  app.add_option("--optimizer", optimizer, "adam, adamw or sgd")->capture_default_str();
  app.add_option("--lr", lr, "learning rate")->capture_default_str()->check(dmoe_cli::range(1e-12, 1e3));
  app.add_option("--clip-grad-norm", clip, "clip each batch's gradients to this L2 norm (0: off)")->capture_default_str()->check(dmoe_cli::range(0.0, 1e12));
  app.add_option("--warmup-steps", warmup, "linear learning-rate warmup")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--total-steps", total_steps, "> 0: linear decay to 0 at this step")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--compression", compression, "codec of answers to callers that ask for none: none, f16, bf16, q8")
      ->capture_default_str()->check(CLI::IsMember({"none", "f16", "bf16", "q8"}));
  app.add_option("--checkpoint-dir", checkpoint_dir, "where checkpoints go (and are loaded from at start)");
  app.add_option("--checkpoint-period", checkpoint_period, "seconds between checkpoints")->capture_default_str()->check(dmoe_cli::range(1.0, 1e7));
  app.add_option("--keep-checkpoints", keep, "checkpoints kept per expert")->capture_default_str()->check(dmoe_cli::range(1, 1000));
  app.add_option("--key-file", key_file, "the server's ed25519 identity (default: <checkpoint-dir>/server.key, or a "
                                         "new key per run without a checkpoint dir)");
  app.add_option("--update-period", update_period, "seconds between DHT declarations")->capture_default_str()->check(dmoe_cli::range(0.1, 1e6));
  app.add_option("--expiration", expiration, "seconds a declaration lives (0: 2 x update period)")->capture_default_str()->check(dmoe_cli::range(0.0, 1e7));
  app.add_option("--stats-period", stats_period, "seconds between statistics lines (0: none)")->capture_default_str()->check(dmoe_cli::range(0.0, 1e6));
  app.add_option("--seed", seed, "initial parameters derive from (seed, uid)")->capture_default_str();
  app.add_option("--log-level", log_level, "debug, info, warn or error")->capture_default_str()
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  dmoe::server::server_options o;
  try {
    dmoe::set_log_level(dmoe::detail::parse_log_level(log_level.c_str()));
    o.experts = dmoe::moe::expand_expert_pattern(experts);
    o.expert.kind = expert_cls;
    o.expert.hidden = hidden;
    o.expert.module.seq_len = seq_len;
    o.expert.optimizer.name = optimizer;
    o.expert.optimizer.learning_rate = static_cast<float>(lr);
    o.expert.optimizer.clip_grad_norm = static_cast<float>(clip);
    o.expert.optimizer.warmup_steps = warmup;
    o.expert.optimizer.total_steps = total_steps;
    o.seed = seed;
    o.device = device;
    dmoe::check_device(dmoe::parse_device(device));  // a device this program or machine lacks: bad arguments
    o.runtime.max_batch_size = max_batch;
    o.runtime.min_batch_size = min_batch;
    o.runtime.batching_window = std::chrono::microseconds(static_cast<std::int64_t>(window_ms * 1000));
    o.listen = dmoe::endpoint::parse(listen);
    o.response_codec = dmoe_cli::parse_codec(compression);
    if (!announce.empty()) {
      o.announce = dmoe::endpoint::parse(announce);
    }
    if (!no_dht) {
      dmoe::dht::node_options d;
      d.listen = dht_listen.empty() ? o.listen.with_port(0) : dmoe::endpoint::parse(dht_listen);
      o.dht = d;
      o.initial_peers = dmoe_cli::parse_peers(initial_peers);
      o.declarations.update_period = seconds(update_period);
      o.declarations.expiration = seconds(expiration);
    }
    if (!checkpoint_dir.empty()) {
      o.checkpoint_dir = checkpoint_dir;
      o.checkpoint_period = seconds(checkpoint_period);
      o.keep_checkpoints = keep;
      std::filesystem::create_directories(o.checkpoint_dir);
      if (key_file.empty()) key_file = (o.checkpoint_dir / "server.key").string();
    }
    o.key_file = key_file;
    o.stats_period = seconds(stats_period);
  } catch (const std::exception& e) {
    fmt::print(stderr, "dmoe-server: {}\n", e.what());
    return 2;
  }

  std::optional<dmoe::server::background_server> server;
  try {
    if (!o.announce && !no_dht) {
      // Listening on every address: declare this host's first address (port 0: the port the server binds).
      const std::string host = o.listen.address();
      if (host == "0.0.0.0" || host == "::") o.announce = dmoe::endpoint::parse(dmoe_cli::joinable(o.listen));
    }
    server.emplace(o);
  } catch (const dmoe::device_error& e) {  // (the device itself was checked above: a CUDA failure)
    fmt::print(stderr, "dmoe-server: {}\n", e.what());
    return 1;
  } catch (const dmoe::error& e) {
    // Options, addresses, key files and checkpoint directories the server cannot use.
    fmt::print(stderr, "dmoe-server: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "dmoe-server: {}\n", e.what());
    return 1;
  }
  fmt::print("serving {} {} experts ({} ... {}) at {}\n", o.experts.size(), expert_cls, o.experts.front(),
             o.experts.back(), server->get().announce_endpoint());
  if (server->dht_endpoint())
    fmt::print("join with: --initial-peers {}\n", dmoe_cli::joinable(*server->dht_endpoint()));
  std::fflush(stdout);

  int signal = 0;
  while (sigwait(&signals, &signal) != 0) {
  }
  fmt::print(stderr, "dmoe-server: {} received, finishing requests in flight\n", signal == SIGINT ? "SIGINT" : "SIGTERM");
  try {
    server->stop();
  } catch (const std::exception& e) {
    fmt::print(stderr, "dmoe-server: {}\n", e.what());
    return 1;
  }
  return 0;
}
