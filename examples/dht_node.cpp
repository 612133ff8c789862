// dmoe_dht_node: runs a DHT node until SIGINT/SIGTERM, or puts/gets one value and exits.
//
//   dmoe_dht_node --listen 127.0.0.1:5000                         # a first node: prints the address to join with
//   dmoe_dht_node --initial-peers 127.0.0.1:5000                  # another node joining it
//   dmoe_dht_node --initial-peers 127.0.0.1:5000 put KEY VALUE [--subkey S] [--ttl 600]
//   dmoe_dht_node --initial-peers 127.0.0.1:5000 get KEY [--latest]
// Addresses are IP literals (1.2.3.4:port or [v6]:port); hostnames are not accepted.
// put and get run a client-mode node (never added to others' tables) that leaves once done.
// Exit status: 0 done (a serving node stopped by SIGINT or SIGTERM included), 1 the swarm could not be joined /
// nothing stored / not found / the node failed, 2 bad arguments (also a --listen address that cannot be bound),
// 130 (SIGINT) or 143 (SIGTERM) when the signal ends a bootstrap, put or get in progress.
#include <dmoe/dht/node_thread.hpp>

#include "cli_support.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>

namespace {

constexpr double max_timeout_s = 24 * 3600;  // also keeps the conversion to milliseconds defined

void print_record(const std::string& key, const dmoe::dht::record& r, double now) {
  if (!r.is_dictionary) {
    fmt::print("{}\t{}\t(expires in {:.0f} s)\n", key, dmoe::as_string_view(r.value.value), r.value.expiration - now);
    return;
  }
  for (const auto& [subkey, v] : r.subkeys)
    fmt::print("{}[{}]\t{}\t(expires in {:.0f} s)\n", key, dmoe::as_string_view(subkey), dmoe::as_string_view(v.value),
               v.expiration - now);
}

const char* signal_name(int signal) { return signal == SIGINT ? "SIGINT" : "SIGTERM"; }

// SIGINT and SIGTERM, taken by a thread of their own (started before any other, so every thread inherits the
// blocked mask): a signal stops the node at once (ending a bootstrap, put or get in progress), except while the
// node serves, where main() stops it after reading its statistics.
class signal_watch {
 public:
  signal_watch() {
    sigemptyset(&signals_);
    sigaddset(&signals_, SIGINT);
    sigaddset(&signals_, SIGTERM);
    sigaddset(&signals_, SIGUSR1);  // from ~signal_watch: time to end
    pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
    thread_ = std::thread([this] { watch(); });
  }
  ~signal_watch() {
    done_ = true;
    pthread_kill(thread_.native_handle(), SIGUSR1);
    thread_.join();
  }

  // The node a signal stops (null: none now). Clearing it waits for a shutdown in progress. A signal that came
  // before (while the node was being made) stops it at once.
  void attach(dmoe::dht::node_thread* node) {
    std::lock_guard lock(mutex_);
    node_ = node;
    if (node_ && received_ != 0 && !serving_) node_->shutdown();
  }
  // Serving: a signal only wakes wait() (main() stops the node).
  void serving() {
    std::lock_guard lock(mutex_);
    serving_ = true;
  }
  int wait() {
    std::unique_lock lock(mutex_);
    received_cv_.wait(lock, [&] { return received_ != 0; });
    return received_;
  }
  int received() {
    std::lock_guard lock(mutex_);
    return received_;
  }

 private:
  void watch() {
    for (;;) {
      int signal = 0;
      if (sigwait(&signals_, &signal) != 0) continue;
      if (signal == SIGUSR1) {
        if (done_) return;
        continue;
      }
      std::lock_guard lock(mutex_);
      if (received_ != 0) continue;
      received_ = signal;
      received_cv_.notify_all();
      if (node_ && !serving_) node_->shutdown();  // under the lock: attach(nullptr) waits for it
    }
  }

  sigset_t signals_{};
  std::thread thread_;
  std::atomic<bool> done_{false};
  std::mutex mutex_;
  std::condition_variable received_cv_;
  dmoe::dht::node_thread* node_ = nullptr;
  bool serving_ = false;
  int received_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dmoe DHT node: join a Kademlia swarm, serve it, put and get values"};
  std::string listen = "0.0.0.0:0";
  std::vector<std::string> initial_peers;
  bool client_mode = false;
  double timeout_s = 10;
  app.add_option("--listen", listen,
                 "UDP address to listen on (IP:PORT, an IP literal, no hostname; port 0 picks a free one)")
      ->check(dmoe_cli::endpoint_text);
  app.add_option("--initial-peers", initial_peers,
                 "peers to join through (IP:PORT, IP literals, no hostnames; comma-separated or repeated)")
      ->delimiter(',')
      ->check(dmoe_cli::peer_text);
  app.add_flag("--client-mode", client_mode, "ask the swarm but never be added to others' routing tables");
  app.add_option("--timeout", timeout_s, "seconds to join, and for a put or get (at most 86400)")
      ->check(dmoe_cli::range(0.001, max_timeout_s));
  std::size_t max_peers_per_ip = dmoe::dht::routing_table_options{}.max_peers_per_ip;
  bool limit_loopback = false;
  app.add_option("--max-peers-per-ip", max_peers_per_ip,
                 "routing-table entries and lookup candidates sharing one IP address (0: no limit)")
      ->capture_default_str()
      ->check(dmoe_cli::range(std::size_t{0}, std::size_t{1} << 20));
  app.add_flag("--limit-loopback", limit_loopback,
               "apply --max-peers-per-ip to loopback addresses too (off: a swarm on one machine is not limited)");

  auto* put = app.add_subcommand("put", "store KEY = VALUE (or KEY[SUBKEY] = VALUE) and exit");
  std::string put_key, put_value, put_subkey;
  double ttl_s = 600;
  put->add_option("key", put_key, "the key (hashed with XXH3-128)")->required();
  put->add_option("value", put_value, "the value")->required();
  put->add_option("--subkey", put_subkey, "store one subkey of a dictionary value");
  put->add_option("--ttl", ttl_s, "seconds until the value expires (at most 86400, the nodes' horizon)")
      ->check(dmoe_cli::range(0.001, max_timeout_s));

  auto* get = app.add_subcommand("get", "print the value under KEY and exit");
  std::string get_key;
  bool latest = false;
  get->add_option("key", get_key, "the key")->required();
  get->add_flag("--latest", latest, "ask the k nearest nodes for the newest value (dictionaries merged)");
  app.require_subcommand(0, 1);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  signal_watch signals;  // first: every thread started later inherits the blocked mask
  auto interrupted = [&]() -> std::optional<int> {
    const int signal = signals.received();
    if (signal == 0) return std::nullopt;
    fmt::print(stderr, "interrupted by {}\n", signal_name(signal));
    return 128 + signal;
  };

  dmoe::dht::node_options options;
  options.listen = dmoe::endpoint::parse(listen);
  options.client_mode = client_mode || put->parsed() || get->parsed();
  options.table.max_peers_per_ip = max_peers_per_ip;
  options.table.limit_loopback = limit_loopback;
  const std::vector<dmoe::endpoint> peers = dmoe_cli::parse_peers(initial_peers);
  if (peers.empty() && (put->parsed() || get->parsed())) {
    fmt::print(stderr, "dmoe_dht_node: {} needs --initial-peers (a node of the swarm to ask)\n",
               put->parsed() ? "put" : "get");
    return 2;
  }
  const auto timeout = std::chrono::milliseconds(static_cast<long long>(timeout_s * 1000));
  std::optional<dmoe::dht::node_thread> node;
  try {
    node.emplace(options);
  } catch (const std::exception& e) {
    fmt::print(stderr, "dmoe_dht_node: cannot listen on {}: {}\n", listen, e.what());
    return 2;
  }
  struct detach {
    signal_watch& signals;
    ~detach() { signals.attach(nullptr); }
  } detached{signals};
  signals.attach(&*node);

  try {
    const auto joined = node->bootstrap(peers, timeout);
    if (auto code = interrupted()) return *code;
    if (!joined.joined) {
      std::string missing;
      for (const auto& p : joined.not_answered) missing += (missing.empty() ? "" : ", ") + p.to_string();
      fmt::print(stderr, "could not join the swarm: no initial peer answered within {} s ({})\n", timeout_s, missing);
      return 1;
    }
    const double now = dmoe::default_clock().wall_now();
    if (put->parsed()) {
      const auto key = dmoe::dht::key_of(put_key);
      const auto outcome = put_subkey.empty()
                               ? node->store(key, dmoe::to_buffer(put_value), now + ttl_s, timeout)
                               : node->store(key, dmoe::to_buffer(put_subkey), dmoe::to_buffer(put_value),
                                             now + ttl_s, timeout);
      if (auto code = interrupted()) return *code;
      if (!outcome) {
        fmt::print(stderr, "{} not stored: {} node(s) asked{}\n", put_key, outcome.asked,
                   outcome.refusal ? fmt::format(", refused ({}{})", dmoe::dht::to_string(*outcome.refusal),
                                                 *outcome.refusal == dmoe::dht::store_result::not_newer
                                                     ? ": a stored value expires as late or later; newer means a "
                                                       "later expiration"
                                                     : "")
                                   : "");
        return 1;
      }
      fmt::print("stored {} on {} of {} node(s)\n", put_key, outcome.replicas, outcome.asked);
      return 0;
    }
    if (get->parsed()) {
      const auto found = node->get(dmoe::dht::key_of(get_key), latest, timeout);
      if (auto code = interrupted()) return *code;
      if (!found) {
        fmt::print(stderr, "{} not found\n", get_key);
        return 1;
      }
      print_record(get_key, *found, now);
      return 0;
    }
    signals.serving();
    if (const int signal = signals.received()) {  // came during the bootstrap's last moments: the node is stopped
      fmt::print("stopped by {}\n", signal_name(signal));
      return 0;
    }
    fmt::print("dht node {} listening on {} ({} peer(s) known{})\n", node->id().to_hex(), node->local_endpoint(),
               joined.peers, options.client_mode ? ", client mode" : "");
    fmt::print("join with: --initial-peers {}\n", dmoe_cli::joinable(node->local_endpoint()));
    if (dmoe_cli::joinable(node->local_endpoint()) != node->local_endpoint().to_string())
      fmt::print("(listening on every interface: from another host use an address of this one that it can reach, "
                 "port {}, or pass --listen ADDRESS:PORT)\n",
                 node->local_endpoint().port());
    std::fflush(stdout);
    const int received = signals.wait();
    const auto stats = node->stats();
    node->shutdown();
    fmt::print("stopped by {}: {} peer(s), {} key(s) stored, {} request(s) answered\n", signal_name(received),
               stats.peers, stats.stored_keys, stats.datagram.responses_sent);
    return 0;
  } catch (const std::exception& e) {
    if (auto code = interrupted()) return *code;
    fmt::print(stderr, "dmoe_dht_node: {}\n", e.what());
    return 1;
  }
}
