// The Fashion-MNIST trainer shared by examples/demo.cpp and examples/train_fashion_mnist.cpp:
// Linear(784 -> h) -> ReLU -> DMoE(grid, k, k_min) -> Linear(h -> 10), trained with Adam over a swarm of expert
// servers found through the DHT (threads of this process, separate dmoe-server / dmoe_dht_node processes, or an
// existing swarm), or the same model with one dense ffn block of equal compute per sample.
#pragma once

#include "child_process.hpp"
#include "cli_support.hpp"

#include <dmoe/async/timer.hpp>
#include <dmoe/data.hpp>
#include <dmoe/dht/node_thread.hpp>
#include <dmoe/moe.hpp>
#include <dmoe/net/fault.hpp>
#include <dmoe/nn/activation.hpp>
#include <dmoe/nn/adam.hpp>
#include <dmoe/nn/checkpoint.hpp>
#include <dmoe/nn/experts.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/loss.hpp>
#include <dmoe/nn/schedule.hpp>
#include <dmoe/server/background_server.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <unistd.h>

namespace fashion {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

struct config {
  std::string program = "train_fashion_mnist";  // the name in the JSON line
  int servers = 4;
  std::vector<std::uint32_t> grid{4, 4};
  int k = 4, k_min = 2;
  double epochs = 5.0;
  int batch_size = 128;
  double lr = 2e-3;  // the peak of Adam's learning rate, the trainer's and the experts' (on servers this program
                     // starts); it decays linearly to lr / 20 over the training
  std::int64_t total_steps = 0;  // set by train(): the schedule's length, also the experts' (one update per step)
  int hidden = 256;
  std::string compression = "none";  // codec of the tensors sent to and from experts: none, f16, bf16, q8
  double latency_ms = 0, jitter_ms = 0, failure_rate = 0;
  double timeout_after_k_min_ms = 300;
  double timeout_ms = 10'000;  // the layer's forward and backward timeouts (a lost call is waited for this long)
  bool processes = false;
  std::vector<std::string> initial_peers;
  bool dense = false;
  std::uint64_t seed = 1;
  fs::path out = "fashion-mnist-out";
  fs::path data = std::string(dmoe::data::fashion_mnist_dir);
  fs::path checkpoint, resume;
  int checkpoint_every = 200;       // steps between trainer checkpoints (with --checkpoint)
  double stop_server_at = -1;       // fraction of the training at which server 1 is stopped (< 0: never)
  double restart_server_at = -1;    // ... and started again from its checkpoint
  double progress_interval_s = 1.0;
  std::string log_level = "warn";
  std::string device = "cpu";  // where the model and the experts of the servers this program starts compute
};

// Every flag of the trainer (the demo sets other defaults before calling it).
inline void add_flags(CLI::App& app, config& c) {
  app.add_option("--servers", c.servers, "expert servers to start (threads, or processes with --processes)")
      ->capture_default_str()->check(dmoe_cli::range(1, 256));
  app.add_option("--grid", c.grid, "the experts' grid, e.g. --grid 4 4 (16 experts ffn.0.0 ... ffn.3.3)")
      ->capture_default_str()->expected(1, 4)->check(dmoe_cli::range(1u, 4096u));
  app.add_option("--k", c.k, "experts per sample")->capture_default_str()->check(dmoe_cli::range(1, 64));
  app.add_option("--k-min", c.k_min, "answers a sample needs in forward")->capture_default_str()->check(dmoe_cli::range(0, 64));
  app.add_option("--epochs", c.epochs, "passes over the 60,000 training images (fractions allowed)")
      ->capture_default_str()->check(dmoe_cli::range(1e-6, 1e4));
  app.add_option("--batch-size", c.batch_size, "samples per step")->capture_default_str()->check(dmoe_cli::range(1, 4096));
  app.add_option("--lr", c.lr, "Adam's learning rate (the trainer's, and the experts' on servers it starts)")
      ->capture_default_str()->check(dmoe_cli::range(1e-9, 10.0));
  app.add_option("--hidden", c.hidden, "width of the DMoE layer (experts are ffn blocks of this width)")
      ->capture_default_str()->check(dmoe_cli::range(1, 16384));
  app.add_option("--compression", c.compression, "codec of tensors to and from experts")
      ->capture_default_str()->check(CLI::IsMember({"none", "f16", "bf16", "q8"}));
  app.add_option("--latency-ms", c.latency_ms, "fault injection: delay added to every expert call")
      ->capture_default_str()->check(dmoe_cli::range(0.0, 1e5));
  app.add_option("--jitter", c.jitter_ms, "fault injection: mean of an exponential delay added on top (ms)")
      ->capture_default_str()->check(dmoe_cli::range(0.0, 1e5));
  app.add_option("--failure-rate", c.failure_rate, "fault injection: fraction of expert calls lost")
      ->capture_default_str()->check(dmoe_cli::range(0.0, 1.0));
  app.add_option("--timeout-after-k-min-ms", c.timeout_after_k_min_ms,
                 "how long the layer waits for more answers once every sample has k-min")
      ->capture_default_str()->check(dmoe_cli::range(0.0, 1e6));
  app.add_option("--timeout-ms", c.timeout_ms, "the most a forward or a backward of the DMoE layer waits (a lost "
                                              "expert call is waited for this long)")
      ->capture_default_str()->check(dmoe_cli::range(1.0, 1e7));
  app.add_flag("--processes", c.processes, "run servers as dmoe-server processes and the DHT as dmoe_dht_node processes");
  app.add_option("--initial-peers", c.initial_peers, "join this swarm (DHT addresses) instead of starting one")
      ->check(dmoe_cli::peer_text);
  app.add_flag("--dense", c.dense, "one dense ffn block of equal compute per sample instead of the DMoE layer");
  app.add_option("--seed", c.seed, "seed of the model, the shuffling and the experts")->capture_default_str();
  app.add_option("--out", c.out, "folder of the metrics CSV, the plot and the servers' checkpoints")->capture_default_str();
  app.add_option("--data", c.data, "folder of the Fashion-MNIST IDX files")->capture_default_str();
  app.add_option("--checkpoint", c.checkpoint, "save the trainer's model and optimizer here (every --checkpoint-every "
                                               "steps and at the end)");
  app.add_option("--checkpoint-every", c.checkpoint_every, "steps between checkpoints")->capture_default_str()
      ->check(dmoe_cli::range(1, 1 << 30));
  app.add_option("--resume", c.resume, "continue from a checkpoint written by --checkpoint")->check(CLI::ExistingFile);
  app.add_option("--stop-server-at", c.stop_server_at, "stop server 1 at this fraction of the training (< 0: never)")
      ->capture_default_str()->check(dmoe_cli::range(-1.0, 1.0));
  app.add_option("--restart-server-at", c.restart_server_at, "start it again from its checkpoint at this fraction")
      ->capture_default_str()->check(dmoe_cli::range(-1.0, 1.0));
  app.add_option("--progress-interval", c.progress_interval_s, "seconds between progress lines and metrics rows")
      ->capture_default_str()->check(dmoe_cli::range(0.01, 3600.0));
  app.add_option("--device", c.device, "where the trainer's model and the experts of the servers it starts compute: "
                                       "cpu, cuda or cuda:N (a build with the CUDA backend)")->capture_default_str();
  app.add_option("--log-level", c.log_level, "dmoe's log level")->capture_default_str()
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
}

// The uids of the grid in row-major order, dealt to `servers` servers in contiguous shares.
inline std::vector<std::vector<std::string>> expert_shares(const std::vector<std::uint32_t>& grid, int servers) {
  std::string pattern = "ffn";
  for (const auto g : grid) pattern += fmt::format(".[0:{}]", g);
  const auto uids = dmoe::moe::expand_expert_pattern(pattern);
  std::vector<std::vector<std::string>> shares(static_cast<std::size_t>(servers));
  for (std::size_t i = 0; i < uids.size(); ++i) shares[i * shares.size() / uids.size()].push_back(uids[i]);
  return shares;
}

// Where the experts live; stop_server/start_server are the demo's failure and recovery.
class swarm {
 public:
  virtual ~swarm() = default;
  virtual std::vector<dmoe::endpoint> peers() const = 0;
  virtual void stop_server(std::size_t i) = 0;
  // Returns what the server said about its start (e.g. how many experts loaded a checkpoint).
  virtual std::string start_server(std::size_t i) = 0;
  virtual std::string describe() const = 0;
};

inline std::string join_uids(const std::vector<std::string>& uids) {
  std::string out;
  for (const auto& u : uids) out += (out.empty() ? "" : ",") + u;
  return out;
}

// A bootstrap DHT node and servers (each with a DHT node of its own) on threads of this process, on 127.0.0.1.
class thread_swarm final : public swarm {
 public:
  explicit thread_swarm(const config& c)
      : config_(c), shares_(expert_shares(c.grid, c.servers)), bootstrap_(bootstrap_options()) {
    servers_.resize(shares_.size());
    for (std::size_t i = 0; i < shares_.size(); ++i) start_server(i);
  }
  ~thread_swarm() override {
    for (auto& s : servers_) s.reset();  // each writes its final checkpoint
  }
  std::vector<dmoe::endpoint> peers() const override { return {bootstrap_.local_endpoint()}; }
  void stop_server(std::size_t i) override { servers_.at(i).reset(); }
  std::string start_server(std::size_t i) override {
    dmoe::server::server_options o;
    o.experts = shares_.at(i);
    o.expert.hidden = config_.hidden;
    o.expert.optimizer.learning_rate = static_cast<float>(config_.lr);
    o.expert.optimizer.total_steps = config_.total_steps;
    o.seed = config_.seed;
    o.device = config_.device;
    // Declarations that outlive a dead server by seconds, not a minute: the layer stops choosing its experts soon.
    o.declarations.update_period = 5s;
    o.declarations.expiration = 15s;
    o.dht = dmoe::dht::node_options{};
    o.initial_peers = peers();
    o.checkpoint_dir = config_.out / "checkpoints" / fmt::format("server-{}", i);
    fs::create_directories(o.checkpoint_dir);
    o.key_file = o.checkpoint_dir / "server.key";  // the same identity after a restart: its declarations replace
    servers_.at(i) = std::make_unique<dmoe::server::background_server>(std::move(o));
    return fmt::format("{} of its {} experts loaded a checkpoint", servers_[i]->get().loaded_checkpoints().size(),
                       shares_[i].size());
  }
  std::string describe() const override {
    return fmt::format("{} expert servers on threads, DHT at {}", servers_.size(), bootstrap_.local_endpoint());
  }

 private:
  static dmoe::dht::node_options bootstrap_options() {
    dmoe::dht::node_options o;
    o.listen = dmoe::endpoint::loopback_v4(0);
    return o;
  }

  config config_;
  std::vector<std::vector<std::string>> shares_;
  dmoe::dht::node_thread bootstrap_;
  std::vector<std::unique_ptr<dmoe::server::background_server>> servers_;
};

// dmoe_dht_node and dmoe-server processes (found next to this program), on 127.0.0.1; each one's stderr goes to
// <out>/logs. Every process is stopped by the destructor, and killed by the kernel if this one dies first.
class process_swarm final : public swarm {
 public:
  explicit process_swarm(const config& c) : config_(c), shares_(expert_shares(c.grid, c.servers)) {
    if (fs::exists(c.out / "logs") && !fs::is_directory(c.out / "logs"))
      throw dmoe::invalid_argument_error(fmt::format("{} is not a directory", (c.out / "logs").string()));
    fs::remove_all(c.out / "logs");  // this run's logs only (a restarted server appends to its own)
    fs::create_directories(c.out / "logs");
    const auto dht_program = dmoe_cli::sibling_program("dmoe_dht_node");
    for (int i = 0; i < 2; ++i) {
      std::vector<std::string> args{"--listen", "127.0.0.1:0"};
      if (!dht_addresses_.empty()) args.insert(args.end(), {"--initial-peers", dht_addresses_.front()});
      dht_.push_back(std::make_unique<dmoe_cli::child_process>(dht_program, args,
                                                               c.out / "logs" / fmt::format("dht-{}.log", i)));
      const std::string line = dht_.back()->wait_for_line(" listening on ", 30s);
      dht_addresses_.push_back(word_after(line, " listening on "));
    }
    servers_.resize(shares_.size());
    for (std::size_t i = 0; i < shares_.size(); ++i) start_server(i);
  }
  ~process_swarm() override {
    for (auto& s : servers_) s.reset();
    for (auto& d : dht_) d.reset();
  }
  std::vector<dmoe::endpoint> peers() const override {
    std::vector<dmoe::endpoint> out;
    for (const auto& a : dht_addresses_) out.push_back(dmoe::endpoint::parse(a));
    return out;
  }
  void stop_server(std::size_t i) override {
    if (servers_.at(i)) servers_[i]->stop(15s);
    servers_[i].reset();
  }
  std::string start_server(std::size_t i) override {
    const fs::path dir = config_.out / "checkpoints" / fmt::format("server-{}", i);
    fs::create_directories(dir);
    std::vector<std::string> args{"--experts", join_uids(shares_.at(i)), "--hidden-dim", std::to_string(config_.hidden),
                                  "--listen", "127.0.0.1:0", "--lr", fmt::format("{}", config_.lr),
                                  "--total-steps", std::to_string(config_.total_steps), "--update-period", "5",
                                  "--expiration", "15",
                                  "--seed", std::to_string(config_.seed), "--checkpoint-dir", dir.string(),
                                  "--log-level", "info", "--device", config_.device, "--initial-peers"};
    args.insert(args.end(), dht_addresses_.begin(), dht_addresses_.end());
    const fs::path log = config_.out / "logs" / fmt::format("server-{}.log", i);
    std::error_code ec;
    const auto log_start = fs::exists(log) ? fs::file_size(log, ec) : 0;
    servers_.at(i) = std::make_unique<dmoe_cli::child_process>(dmoe_cli::sibling_program("dmoe-server"), args, log);
    servers_[i]->wait_for_line("serving ", 60s);
    // It logs each checkpoint it loaded before it serves.
    std::ifstream in(log);
    in.seekg(static_cast<std::streamoff>(ec ? 0 : log_start));
    std::size_t loaded = 0;
    for (std::string line; std::getline(in, line);) loaded += line.find(": loaded checkpoint ") != std::string::npos;
    return fmt::format("{} of its {} experts loaded a checkpoint (pid {}, log: {})", loaded, shares_[i].size(),
                       servers_[i]->pid(), log.string());
  }
  std::string describe() const override {
    std::string pids;
    for (const auto& d : dht_) pids += fmt::format(" {}", d->pid());
    for (const auto& s : servers_)
      if (s) pids += fmt::format(" {}", s->pid());
    return fmt::format("{} dmoe-server and {} dmoe_dht_node processes (pids{}), DHT at {}", servers_.size(), dht_.size(),
                       pids, dht_addresses_.front());
  }

 private:
  static std::string word_after(const std::string& line, std::string_view marker) {
    const auto at = line.find(marker) + marker.size();
    return line.substr(at, line.find(' ', at) - at);
  }

  config config_;
  std::vector<std::vector<std::string>> shares_;
  std::vector<std::unique_ptr<dmoe_cli::child_process>> dht_;
  std::vector<std::string> dht_addresses_;
  std::vector<std::unique_ptr<dmoe_cli::child_process>> servers_;
};

// A swarm someone else runs: joined through its DHT addresses; its servers are not ours to stop.
class remote_swarm final : public swarm {
 public:
  explicit remote_swarm(std::vector<dmoe::endpoint> peers) : peers_(std::move(peers)) {}
  std::vector<dmoe::endpoint> peers() const override { return peers_; }
  void stop_server(std::size_t) override {}
  std::string start_server(std::size_t) override { return {}; }
  std::string describe() const override { return fmt::format("the swarm at {}", fmt::join(peers_, ", ")); }

 private:
  std::vector<dmoe::endpoint> peers_;
};

// Ctrl-C / SIGTERM end the training after the current step (then the evaluation is skipped, the metrics CSV and the
// checkpoint are written and every process this program started is stopped).
inline std::atomic<int> interrupted{0};
extern "C" inline void on_interrupt(int signal) { interrupted.store(signal); }

// The terminal's width (80 when unknown): a redrawn line must not wrap.
inline std::size_t terminal_columns() {
  winsize size{};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
  return 80;
}

struct window {
  double loss_sum = 0;
  std::int64_t samples = 0, correct = 0, steps = 0;
  std::uint64_t answered = 0, chosen = 0;
  steady::time_point start = steady::now();
};

inline std::int64_t count_correct(const dmoe::tensor& logits, const dmoe::tensor& labels) {
  const std::int64_t n = logits.shape()[0], classes = logits.shape()[1];
  std::int64_t correct = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float* row = logits.data<float>() + i * classes;
    const auto best = std::max_element(row, row + classes) - row;
    correct += best == labels.at<std::int64_t>(i) ? 1 : 0;
  }
  return correct;
}

// A string in a gnuplot script, single-quoted ('' stands for a quote).
inline std::string gnuplot_quoted(const std::string& text) {
  std::string out = "'";
  for (const char ch : text) out += ch == '\'' ? std::string("''") : std::string(1, ch);
  return out + "'";
}

// Writes the plot with gnuplot (pngcairo); returns false (and says why) when gnuplot fails or is missing.
inline bool plot(const fs::path& csv, const fs::path& png, const std::string& title,
                 const std::vector<std::pair<double, std::string>>& events) {
  const fs::path script = png.parent_path() / "plot.gp";
  {
    std::ofstream s(script);
    s << "set terminal pngcairo size 960,420 font ',10' noenhanced\n"
      << "set output " << gnuplot_quoted(png.string()) << "\n"
      << "set datafile separator ','\n"
      << "set multiplot layout 1,2 title " << gnuplot_quoted(title) << "\n"
      << "set xlabel 'wall time (s)'\nset grid\nset key bottom right\n";
    for (const auto& [t, label] : events)
      s << fmt::format("set arrow from {0},graph 0 to {0},graph 1 nohead dt 2 lc rgb 'gray40'\n"
                       "set label '{1}' at {0},graph 0.95 offset 0.5,0 font ',8'\n",
                       t, label);
    s << "set ylabel 'training loss'\nset key center right\nplot " << gnuplot_quoted(csv.string()) << " using 2:3 skip 1 with lines lw 2 title 'loss'\n"
      << "set ylabel 'fraction'\nset yrange [*:1]\nset key bottom right\n"
      << "plot " << gnuplot_quoted(csv.string()) << " using 2:4 skip 1 with lines lw 2 lc rgb 'dark-green' title 'running accuracy', "
      << "'' using 2:($7 > 0 ? $6 / $7 : 1/0) skip 1 with lines lw 1 lc rgb 'orange' title 'experts answering / chosen'\n"
      << "unset multiplot\n";
  }
  const fs::path log = png.parent_path() / "gnuplot.log";
  const int rc = dmoe_cli::run_program("gnuplot", {script.string()}, log);
  if (rc == 127) fmt::print(stderr, "no plot: gnuplot is missing (Debian package gnuplot-nox)\n");
  else if (rc != 0) fmt::print(stderr, "no plot: gnuplot failed (exit {}); see {}\n", rc, log.string());
  return rc == 0;
}

// Trains and evaluates with the model on Backend (`device`, already checked); returns the process exit code
// (0: trained and evaluated; 1: failed; 2: bad flags; 130/143: interrupted).
template <class Backend>
int train_and_evaluate_on(config c, const dmoe::device_choice& device) {
  dmoe::set_log_level(dmoe::detail::parse_log_level(c.log_level.c_str()));
  std::uint64_t experts_total = 1;
  for (const auto g : c.grid) experts_total *= g;
  const auto bad = [&](const std::string& text) {
    fmt::print(stderr, "{}: {}\n", c.program, text);
    return 2;
  };
  if (c.k_min > c.k) return bad(fmt::format("--k-min {} is larger than --k {}", c.k_min, c.k));
  // Paths go into files other programs read (the plot's script): no control characters.
  for (const auto* path : {&c.out, &c.checkpoint, &c.resume, &c.data})
    if (std::any_of(path->native().begin(), path->native().end(), [](char ch) { return ch >= 0 && ch < 0x20; }))
      return bad(fmt::format("the path {:?} holds a control character", path->string()));
  if (!c.checkpoint.empty() && fs::is_directory(c.checkpoint))
    return bad(fmt::format("--checkpoint {} is a directory (name a file)", c.checkpoint.string()));
  if (c.stop_server_at >= 1.0 || c.restart_server_at >= 1.0)
    return bad("--stop-server-at and --restart-server-at are fractions of the training below 1");
  if (!c.dense && static_cast<std::uint64_t>(c.k) > experts_total)
    return bad(fmt::format("--k {} is more than the grid's {} experts", c.k, experts_total));
  if (!c.dense && c.initial_peers.empty() && static_cast<std::uint64_t>(c.servers) > experts_total)
    return bad(fmt::format("--servers {} is more than the grid's {} experts", c.servers, experts_total));
  const bool own_swarm = !c.dense && c.initial_peers.empty();
  if (c.stop_server_at >= 0 && !own_swarm) {
    fmt::print(stderr, "{}: no server of ours to stop (--dense or --initial-peers): --stop-server-at ignored\n",
               c.program);
    c.stop_server_at = c.restart_server_at = -1;
  }
  if (c.stop_server_at >= 0 && c.servers < 2)
    return bad("--stop-server-at needs at least 2 servers (the others keep the training going)");
  if (c.restart_server_at >= 0 && !(c.stop_server_at >= 0 && c.restart_server_at > c.stop_server_at))
    return bad("--restart-server-at needs a --stop-server-at before it");
  if (c.dense && static_cast<double>(c.hidden) * 4.0 * c.k * c.hidden > 5e8)
    return bad(fmt::format("--dense with --hidden {} and --k {}: {:.0f} M parameters is more than this trainer takes "
                           "(500 M)", c.hidden, c.k, 8.0 * c.hidden * c.hidden * c.k / 1e6));
  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);

  dmoe::data::fashion_mnist data;
  try {
    data = dmoe::data::load_fashion_mnist(c.data);
  } catch (const dmoe::error& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 1;
  }
  fs::create_directories(c.out);
  // One trainer per --out: its metrics, logs, and its servers' checkpoints and keys live there.
  const int lock = ::open((c.out / ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock < 0 || ::flock(lock, LOCK_EX | LOCK_NB) != 0)
    return bad(fmt::format("another trainer is using --out {} (or it cannot be locked)", c.out.string()));
  const struct close_on_exit {
    int fd;
    ~close_on_exit() { ::close(fd); }
  } lock_holder{lock};
  if (!c.checkpoint.empty() && c.checkpoint.has_parent_path()) fs::create_directories(c.checkpoint.parent_path());
  {
    const dmoe::data::shuffled_batches counting(data.train, c.batch_size, c.seed);
    c.total_steps = std::max<std::int64_t>(
        1, static_cast<std::int64_t>(std::ceil(c.epochs * static_cast<double>(counting.batches_per_epoch()))));
  }
  const auto started = steady::now();
  const auto seconds_since_start = [&] { return std::chrono::duration<double>(steady::now() - started).count(); };

  // The swarm and the trainer's network.
  std::unique_ptr<swarm> experts;
  try {
    if (!c.dense) {
      if (!c.initial_peers.empty()) experts = std::make_unique<remote_swarm>(dmoe_cli::parse_peers(c.initial_peers));
      else if (c.processes) experts = std::make_unique<process_swarm>(c);
      else experts = std::make_unique<thread_swarm>(c);
      fmt::print("swarm: {}\n", experts->describe());
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "could not start the swarm: {}\n", e.what());
    return 1;
  }
  dmoe::moe::network_thread_options net_options;
  net_options.dht.client_mode = true;
  // On loopback for a swarm of this machine; on every interface to reach someone else's (IPv6 peers: an IPv6 one).
  const auto joined = dmoe_cli::parse_peers(c.initial_peers);
  net_options.dht.listen = joined.empty()                ? dmoe::endpoint::loopback_v4(0)
                           : joined.front().is_v4()      ? dmoe::endpoint::any_v4(0)
                                                         : dmoe::endpoint::any_v6(0);
  if (experts) net_options.initial_peers = experts->peers();
  if (c.latency_ms > 0 || c.jitter_ms > 0 || c.failure_rate > 0) {
    auto faults = std::make_shared<dmoe::net::fault_policy>(c.seed);
    faults->set_latency(dmoe::net::latency_model::exponential(
        std::chrono::microseconds(static_cast<std::int64_t>(c.latency_ms * 1000)),
        std::chrono::microseconds(static_cast<std::int64_t>(c.jitter_ms * 1000))));
    faults->set_loss(c.failure_rate);
    net_options.faults = std::move(faults);
  }
  std::optional<dmoe::moe::network_thread> net;
  try {
    net.emplace(net_options);
  } catch (const std::exception& e) {
    fmt::print(stderr, "could not join the swarm: {}\n", e.what());
    return 1;
  }

  // The model, on the device: new parameters land on this thread's current device. Every step then runs on the
  // network thread, which uses the same device, so that all the model's device work is on that thread's stream
  // (the two threads' CUDA streams are not ordered with each other).
  dmoe::use_device(device);
  net->run([&]() -> dmoe::task<void> {
    dmoe::use_device(device);
    co_return;
  });
  dmoe::random_engine gen(c.seed);
  dmoe::moe::remote_mixture_of_experts_options o;
  o.grid = c.grid;
  o.schema = dmoe::moe::ffn_schema(c.hidden);
  o.k = c.k;
  o.k_min = c.k_min;
  o.timeout_after_k_min = std::chrono::milliseconds(static_cast<std::int64_t>(c.timeout_after_k_min_ms));
  o.forward_timeout = o.backward_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(c.timeout_ms));
  o.avoid_failed_for = 20s;  // longer than a dead server's declarations live (15 s) plus the directory's cache (5 s)
  o.call.codec = dmoe_cli::parse_codec(c.compression);
  o.call.response_codec = o.call.codec;
  dmoe::moe::model model;
  model.emplace<dmoe::nn::linear<Backend>>(784, c.hidden, gen, dmoe::ops::activation::relu);  // Linear -> ReLU
  dmoe::moe::remote_mixture_of_experts<Backend>* layer = nullptr;
  if (c.dense) model.emplace<dmoe::nn::ffn_expert<Backend>>(c.hidden, gen, 4 * c.hidden * c.k);
  else layer = &model.emplace<dmoe::moe::remote_mixture_of_experts<Backend>>(net->directory(), net->client(), o, gen);
  model.emplace<dmoe::nn::linear<Backend>>(c.hidden, 10, gen);
  dmoe::nn::adam<Backend> optimizer(model.parameters(), {.learning_rate = static_cast<float>(c.lr)});
  optimizer.set_schedule(dmoe::nn::linear_warmup_decay(static_cast<float>(c.lr), 0, c.total_steps,
                                                       static_cast<float>(c.lr / 20)));
  dmoe::nn::cross_entropy_loss<Backend> loss;

  // The trainer's checkpoint: the model, the optimizer and where the data order was.
  dmoe::data::shuffled_batches batches(data.train, c.batch_size, c.seed);
  dmoe::tensor progress(dmoe::shape{3}, dmoe::dtype::i64);  // step, epoch, position
  // What the step and the data position mean, and what the gating's weights stand for: checked on resume.
  const std::vector<std::int64_t> wanted_settings{c.batch_size, static_cast<std::int64_t>(c.seed), c.hidden, c.k,
                                                  c.dense ? 1 : 0,
                                                  c.grid.size() > 0 ? c.grid[0] : 0, c.grid.size() > 1 ? c.grid[1] : 0,
                                                  c.grid.size() > 2 ? c.grid[2] : 0, c.grid.size() > 3 ? c.grid[3] : 0};
  const char* const setting_names[] = {"--batch-size", "--seed", "--hidden", "--k", "--dense",
                                       "--grid (1st)", "--grid (2nd)", "--grid (3rd)", "--grid (4th)"};
  dmoe::tensor settings(dmoe::shape{static_cast<std::int64_t>(wanted_settings.size())}, dmoe::dtype::i64);
  for (std::size_t i = 0; i < wanted_settings.size(); ++i)
    settings.at<std::int64_t>(static_cast<std::int64_t>(i)) = wanted_settings[i];
  const auto checkpoint_parameters = [&] {
    auto p = model.parameters();
    p.push_back({"trainer.progress", &progress, nullptr});
    p.push_back({"trainer.settings", &settings, nullptr});
    return p;
  };
  std::int64_t step = 0;
  if (!c.resume.empty()) {
    try {
      dmoe::nn::load_checkpoint(c.resume, checkpoint_parameters(), &optimizer);
      for (std::size_t i = 0; i < wanted_settings.size(); ++i)
        if (settings.at<std::int64_t>(static_cast<std::int64_t>(i)) != wanted_settings[i])
          return bad(fmt::format("{} was written with {} {}, not {}", c.resume.string(), setting_names[i],
                                 settings.at<std::int64_t>(static_cast<std::int64_t>(i)), wanted_settings[i]));
      step = progress.at<std::int64_t>(0);
      batches.restore(progress.at<std::int64_t>(1), progress.at<std::int64_t>(2));
      if (step >= c.total_steps)
        return bad(fmt::format("{} is at step {}, and --epochs {:g} ends at step {}: nothing left to train",
                               c.resume.string(), step, c.epochs, c.total_steps));
      fmt::print("resumed from {} at step {}\n", c.resume.string(), step);
    } catch (const std::exception& e) {
      fmt::print(stderr, "cannot resume from {}: {}\n", c.resume.string(), e.what());
      return 1;
    }
  }
  // What this thread queued on its stream (parameters, the optimizer's state, a resumed checkpoint) is done before
  // the network thread computes with it.
  if constexpr (Backend::device == dmoe::device::cuda) dmoe::cuda::synchronize();
  const auto save = [&] {
    progress.at<std::int64_t>(0) = step;
    progress.at<std::int64_t>(1) = batches.epoch();
    progress.at<std::int64_t>(2) = batches.position();
    net->run([&]() -> dmoe::task<void> {  // (on the thread whose stream updated the parameters)
      dmoe::nn::save_checkpoint(c.checkpoint, checkpoint_parameters(), &optimizer);
      co_return;
    });
  };

  // Waits until the swarm's experts are declared (all of ours; some of someone else's).
  if (!c.dense) {
    const auto uids = expert_shares(c.grid, 1).front();
    const auto deadline = steady::now() + 60s;
    fmt::print("waiting up to 60 s for the grid's experts to be declared in the DHT\n");
    std::fflush(stdout);
    std::size_t found = 0;
    while (steady::now() < deadline && interrupted.load() == 0) {
      found = net->run([&]() -> dmoe::task<std::size_t> {
        auto declared = co_await dmoe::moe::get_experts(net->node(), uids);
        const auto count = static_cast<std::size_t>(
            std::count_if(declared.begin(), declared.end(), [](const auto& d) { return d.has_value(); }));
        if (count < uids.size()) co_await dmoe::sleep_for(200ms);  // the next round of lookups, paced
        co_return count;
      });
      if (found == uids.size() || (!c.initial_peers.empty() && found > 0)) break;
    }
    if (interrupted.load() != 0) return 128 + interrupted.load();
    fmt::print("{} of {} experts declared in the DHT\n", found, uids.size());
    if (found == 0) {
      fmt::print(stderr, "no expert of the grid is declared in the swarm\n");
      return 1;
    }
  }

  const std::int64_t steps_per_epoch = batches.batches_per_epoch();
  const std::int64_t total_steps = c.total_steps;
  const std::int64_t stop_step = c.stop_server_at >= 0 ? static_cast<std::int64_t>(c.stop_server_at * total_steps) : -1;
  const std::int64_t restart_step =
      c.restart_server_at >= 0 ? static_cast<std::int64_t>(c.restart_server_at * total_steps) : -1;
  const fs::path csv_path = c.out / "metrics.csv";
  std::ofstream csv(csv_path);
  csv << "step,wall_s,loss,accuracy,samples_per_s,experts_answered,experts_chosen\n";
  std::vector<std::pair<double, std::string>> events;
  std::int64_t failed_steps = 0, retried_steps = 0, trained_samples = 0;
  bool server_stopped = false;
  double first_loss = -1, last_loss = -1;
  window w;
  const auto train_start = steady::now();
  fmt::print("training {} for {:g} epoch(s): {} steps of {} samples\n",
             c.dense ? fmt::format("a dense model (ffn block, inner width {})", 4 * c.hidden * c.k)
                     : fmt::format("a DMoE model (grid {}, k = {}, k_min = {})", fmt::join(c.grid, "x"), c.k, c.k_min),
             c.epochs, total_steps, c.batch_size);
  std::fflush(stdout);

  const auto report = [&](bool final_line) {
    const double seconds = std::chrono::duration<double>(steady::now() - w.start).count();
    if (w.steps == 0) {  // nothing new since the last line (or every step of the interval failed)
      if (final_line && tty) fmt::print("\n");
      if (final_line || w.samples == 0) return;
    }
    const double mean_loss = w.steps > 0 ? w.loss_sum / static_cast<double>(w.steps) : 0.0;
    const double accuracy = w.samples > 0 ? static_cast<double>(w.correct) / static_cast<double>(w.samples) : 0.0;
    const double rate = seconds > 0 ? static_cast<double>(w.samples) / seconds : 0.0;
    if (w.steps > 0) {
      if (first_loss < 0) first_loss = mean_loss;
      last_loss = mean_loss;
      csv << fmt::format("{},{:.3f},{:.5f},{:.5f},{:.1f},{},{}\n", step, seconds_since_start(), mean_loss, accuracy,
                         rate, w.answered, w.chosen);
      csv.flush();
    }
    const std::string line = fmt::format(
        "epoch {:.2f}/{:g}  step {}/{}  loss {:.4f}  accuracy {:.3f}  {:.0f} samples/s{}{}",
        static_cast<double>(step) / static_cast<double>(steps_per_epoch), c.epochs, step, total_steps, mean_loss, accuracy,
        rate, layer ? fmt::format("  experts answering {}/{}", w.answered, w.chosen) : std::string(),
        failed_steps > 0 ? fmt::format("  failed steps {}", failed_steps) : std::string());
    if (tty) fmt::print("\r{}\x1b[K{}", line.substr(0, std::max<std::size_t>(terminal_columns() - 1, 20)),
                        final_line ? "\n" : "");
    else fmt::print("{}\n", line);
    std::fflush(stdout);
    w = window{};
  };
  const auto say = [&](const std::string& text) {  // a line of its own, also on a terminal
    if (tty) fmt::print("\r\x1b[K");
    fmt::print("{}\n", text);
    std::fflush(stdout);
  };

  while (step < total_steps && interrupted.load() == 0) {
    if (step == stop_step && experts && own_swarm) {
      const auto t = steady::now();
      experts->stop_server(1 % static_cast<std::size_t>(c.servers));
      server_stopped = true;
      events.emplace_back(seconds_since_start(), "server stopped");
      say(fmt::format("[{:.1f} s] stopped server 1 (its experts are gone; the layer routes around them) in {:.0f} ms",
                      seconds_since_start(), std::chrono::duration<double, std::milli>(steady::now() - t).count()));
    }
    if (step == restart_step && experts && own_swarm && server_stopped) {  // (a resumed run may not have stopped it)
      server_stopped = false;
      const std::string note = experts->start_server(1 % static_cast<std::size_t>(c.servers));
      events.emplace_back(seconds_since_start(), "server restarted");
      say(fmt::format("[{:.1f} s] started server 1 again from its checkpoint: {}", seconds_since_start(), note));
    }
    const auto b = batches.next();
    const dmoe::moe::dispatch_stats before = layer ? layer->stats() : dmoe::moe::dispatch_stats{};
    // Too few experts answered (a server just died, the swarm is thin): the step is tried once more (the layer now
    // avoids the experts that failed), then given up; the training goes on either way.
    for (int attempt = 1;; ++attempt) {
      try {
        const auto [value, correct] = net->run([&]() -> dmoe::task<std::pair<float, std::int64_t>> {
          optimizer.zero_grad();
          const dmoe::tensor logits = co_await model.forward(b.x.to(Backend::device));
          const float l = loss.forward(logits, b.labels.to(Backend::device));
          co_await model.backward(loss.backward());
          optimizer.step();
          co_return std::pair<float, std::int64_t>(l, count_correct(logits.to(dmoe::device::host), b.labels));
        });
        w.loss_sum += value;
        w.correct += correct;
        w.samples += b.labels.shape()[0];
        ++w.steps;
        trained_samples += b.labels.shape()[0];
        break;
      } catch (const dmoe::error& e) {
        if (attempt == 1 && interrupted.load() == 0) {
          if (++retried_steps <= 3) say(fmt::format("step {} tried again: {}", step, e.what()));
          continue;
        }
        ++failed_steps;
        if (failed_steps <= 3 || failed_steps % 100 == 0) say(fmt::format("step {} failed: {}", step, e.what()));
        break;
      }
    }
    if (trained_samples == 0 && failed_steps >= 10) {  // nothing works (a schema that is not the servers'...)
      if (tty) fmt::print("\n");
      fmt::print(stderr, "{}: the first {} steps all failed; giving up\n", c.program, failed_steps);
      return 1;
    }
    if (layer) {
      w.answered += layer->stats().experts_answered - before.experts_answered;
      w.chosen += layer->stats().experts_chosen - before.experts_chosen;
    }
    ++step;
    if (!c.checkpoint.empty() && step % c.checkpoint_every == 0) save();
    if (std::chrono::duration<double>(steady::now() - w.start).count() >= c.progress_interval_s) report(false);
  }
  report(true);
  const double train_seconds = std::chrono::duration<double>(steady::now() - train_start).count();
  if (!c.checkpoint.empty()) {
    save();
    fmt::print("checkpoint: {}\n", c.checkpoint.string());
  }
  if (interrupted.load() != 0) {
    fmt::print(stderr, "interrupted at step {}\n", step);
    return 128 + interrupted.load();
  }

  // The test set, in order.
  std::int64_t correct = 0, evaluated = 0;
  model.set_training(false);
  for (std::int64_t begin = 0; begin < data.test.size() && interrupted.load() == 0; begin += 500) {
    const auto b = dmoe::data::slice(data.test, begin, std::min<std::int64_t>(begin + 500, data.test.size()));
    for (int attempt = 1; attempt <= 2; ++attempt) {  // once more after a failure, as in training
      try {
        correct += net->run(
            [&]() -> dmoe::task<std::int64_t> {
              const dmoe::tensor logits = co_await model.forward(b.x.to(Backend::device));
              co_return count_correct(logits.to(dmoe::device::host), b.labels);
            });
        evaluated += b.labels.shape()[0];
        break;
      } catch (const dmoe::error& e) {
        if (attempt == 2)
          say(fmt::format("test images {}..{} not evaluated: {}", begin, begin + b.labels.shape()[0], e.what()));
      }
    }
  }
  if (interrupted.load() != 0) {
    fmt::print(stderr, "interrupted while evaluating\n");
    return 128 + interrupted.load();
  }
  const double test_accuracy = evaluated > 0 ? static_cast<double>(correct) / static_cast<double>(evaluated) : 0.0;
  csv.close();
  const fs::path png = c.out / "metrics.png";
  const bool plotted = plot(csv_path, png,
                            fmt::format("Fashion-MNIST, {}: test accuracy {:.4f}",
                                        c.dense ? "dense model" : "DMoE model over the swarm", test_accuracy), events);
  net.reset();
  experts.reset();  // servers write their final checkpoints; processes are stopped
  const double seconds = seconds_since_start();
  const double samples_per_s = train_seconds > 0 ? static_cast<double>(trained_samples) / train_seconds : 0.0;
  fmt::print("test accuracy {:.4f} over {} test images; loss {:.4f} -> {:.4f}; {} step(s) tried again, {} failed\n",
             test_accuracy, evaluated, first_loss, last_loss, retried_steps, failed_steps);
  fmt::print("metrics: {}\n", fs::absolute(csv_path).string());
  if (plotted) fmt::print("plot: {}\n", fs::absolute(png).string());
  if (trained_samples == 0 || evaluated == 0) {
    fmt::print(stderr, "{}: {} (see the errors above)\n", c.program,
               trained_samples == 0 ? "no step trained" : "no test image was evaluated");
    return 1;
  }
  fmt::print("{{\"demo\":\"{}\",\"test_accuracy\":{:.4f},\"seconds\":{:.1f},\"samples_per_s\":{:.1f}}}\n", c.program,
             test_accuracy, seconds, samples_per_s);
  std::fflush(stdout);
  return 0;
}

}  // namespace fashion

namespace fashion {

// train_and_evaluate_on the backend of --device (exit status 2 for a device this program cannot use).
inline int train_and_evaluate(const config& c) {
  dmoe::device_choice device;
  try {
    device = dmoe::parse_device(c.device);
    dmoe::check_device(device);
  } catch (const dmoe::error& e) {
    fmt::print(stderr, "{}: --device: {}\n", c.program, e.what());
    return 2;
  }
#if DMOE_WITH_CUDA
  if (device.kind == dmoe::device::cuda) return train_and_evaluate_on<dmoe::ops::cuda_t>(c, device);
#endif
  return train_and_evaluate_on<dmoe::ops::cpu_t>(c, device);  // (check_device refused CUDA in a build without it)
}

// train_and_evaluate, with every error reported (the swarm is stopped on the way out).
inline int train(const config& c) {
  try {
    return train_and_evaluate(c);
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", c.program, e.what());
    return 1;
  }
}

// Parses the flags (exit status 2 for bad ones, as dmoe-server) and trains.
inline int main_with(CLI::App& app, config& c, int argc, char** argv) {
  add_flags(app, c);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return train(c);
}

}  // namespace fashion
