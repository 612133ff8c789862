// dmoe_dht_node: runs a DHT node until SIGINT/SIGTERM, or puts/gets one value and exits.
//
//   dmoe_dht_node --listen 127.0.0.1:5000                         # a first node: prints the address to join with
//   dmoe_dht_node --initial-peers 127.0.0.1:5000                  # another node joining it
//   dmoe_dht_node --initial-peers 127.0.0.1:5000 put KEY VALUE [--subkey S] [--ttl 600]
//   dmoe_dht_node --initial-peers 127.0.0.1:5000 get KEY [--latest]
// put and get run a client-mode node (never added to others' tables) that leaves once done.
// Exit status: 0 done, 1 the swarm could not be joined / nothing stored / not found, 2 bad arguments.
#include <dmoe/dht/node_thread.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>

namespace {

std::vector<dmoe::endpoint> parse_peers(const std::vector<std::string>& texts) {
  std::vector<dmoe::endpoint> peers;
  for (const auto& text : texts) {
    std::size_t begin = 0;
    while (begin <= text.size()) {
      const std::size_t comma = text.find(',', begin);
      const std::string one = text.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin);
      if (!one.empty()) peers.push_back(dmoe::endpoint::parse(one));
      if (comma == std::string::npos) break;
      begin = comma + 1;
    }
  }
  return peers;
}

void print_record(const std::string& key, const dmoe::dht::record& r, double now) {
  if (!r.is_dictionary) {
    fmt::print("{}\t{}\t(expires in {:.0f} s)\n", key, dmoe::as_string_view(r.value.value), r.value.expiration - now);
    return;
  }
  for (const auto& [subkey, v] : r.subkeys)
    fmt::print("{}[{}]\t{}\t(expires in {:.0f} s)\n", key, dmoe::as_string_view(subkey), dmoe::as_string_view(v.value),
               v.expiration - now);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dmoe DHT node: join a Kademlia swarm, serve it, put and get values"};
  std::string listen = "0.0.0.0:0";
  std::vector<std::string> initial_peers;
  bool client_mode = false;
  double timeout_s = 10;
  app.add_option("--listen", listen, "UDP address to listen on (host:port; port 0 picks a free one)");
  app.add_option("--initial-peers", initial_peers, "peers to join through (host:port, comma-separated or repeated)");
  app.add_flag("--client-mode", client_mode, "ask the swarm but never be added to others' routing tables");
  app.add_option("--timeout", timeout_s, "seconds to join, and for a put or get")->check(CLI::PositiveNumber);

  auto* put = app.add_subcommand("put", "store KEY = VALUE (or KEY[SUBKEY] = VALUE) and exit");
  std::string put_key, put_value, put_subkey;
  double ttl_s = 600;
  put->add_option("key", put_key, "the key (hashed with XXH3-128)")->required();
  put->add_option("value", put_value, "the value")->required();
  put->add_option("--subkey", put_subkey, "store one subkey of a dictionary value");
  put->add_option("--ttl", ttl_s, "seconds until the value expires")->check(CLI::PositiveNumber);

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

  // SIGINT and SIGTERM go to sigwait below, not to the node's thread (which inherits this mask).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  try {
    const auto timeout = std::chrono::milliseconds(static_cast<long long>(timeout_s * 1000));
    dmoe::dht::node_options options;
    options.listen = dmoe::endpoint::parse(listen);
    options.client_mode = client_mode || put->parsed() || get->parsed();
    const std::vector<dmoe::endpoint> peers = parse_peers(initial_peers);
    dmoe::dht::node_thread node(options);
    const auto joined = node.bootstrap(peers, timeout);
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
                               ? node.store(key, dmoe::to_buffer(put_value), now + ttl_s, timeout)
                               : node.store(key, dmoe::to_buffer(put_subkey), dmoe::to_buffer(put_value), now + ttl_s,
                                            timeout);
      if (!outcome) {
        fmt::print(stderr, "{} not stored: {} node(s) asked{}\n", put_key, outcome.asked,
                   outcome.refusal ? fmt::format(", refused ({})", dmoe::dht::to_string(*outcome.refusal)) : "");
        return 1;
      }
      fmt::print("stored {} on {} of {} node(s)\n", put_key, outcome.replicas, outcome.asked);
      return 0;
    }
    if (get->parsed()) {
      const auto found = node.get(dmoe::dht::key_of(get_key), latest, timeout);
      if (!found) {
        fmt::print(stderr, "{} not found\n", get_key);
        return 1;
      }
      print_record(get_key, *found, now);
      return 0;
    }
    fmt::print("dht node {} listening on {} ({} peer(s) known{})\n", node.id().to_hex(), node.local_endpoint(), joined.peers,
               options.client_mode ? ", client mode" : "");
    fmt::print("join with: --initial-peers {}\n", node.local_endpoint());
    std::fflush(stdout);
    int received = 0;
    sigwait(&signals, &received);
    const auto stats = node.stats();
    node.shutdown();
    fmt::print("stopped by {}: {} peer(s), {} key(s) stored, {} request(s) answered\n",
               received == SIGINT ? "SIGINT" : "SIGTERM", stats.peers, stats.stored_keys,
               stats.datagram.responses_sent);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "dmoe_dht_node: {}\n", e.what());
    return 1;
  }
}
