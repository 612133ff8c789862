// Tests of dmoe/dht/lookup.hpp: the iterative search over a simulated in-process routing_swarm of pure routing tables.
#include <dmoe/dht/lookup.hpp>
#include <dmoe/dht/routing_table.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <deque>
#include <map>
#include <random>
#include <unordered_map>

using namespace dmoe;
using dht::key_id;
using dht::node_id;

namespace {

constexpr wall_seconds now = 1.0e9;

// N nodes, each of whose routing tables heard from every other node (so each keeps what Kademlia keeps).
struct routing_swarm {
  std::vector<node_id> ids;
  std::vector<dht::routing_table> tables;
  std::vector<bool> alive;
  std::vector<std::unordered_map<key_id, dht::record>> held;
  std::unordered_map<node_id, std::size_t> index;
  std::size_t k;
  std::size_t answer_count;  // peers a node returns per key

  routing_swarm(std::size_t n, std::size_t k_, std::size_t b, std::uint64_t seed, std::size_t answer = 0)
      : k(k_), answer_count(answer ? answer : k_) {
    std::mt19937_64 gen(seed);
    dht::routing_table_options options;
    options.k = k;
    options.b = b;
    for (std::size_t i = 0; i < n; ++i) {
      ids.push_back(dht::random_node_id(gen));
      index[ids.back()] = i;
      tables.emplace_back(ids.back(), options);
    }
    alive.assign(n, true);
    held.resize(n);
    std::vector<std::size_t> order(n);
    for (std::size_t i = 0; i < n; ++i) order[i] = i;
    for (std::size_t i = 0; i < n; ++i) {
      std::shuffle(order.begin(), order.end(), gen);
      for (std::size_t j : order) tables[i].heard_from(ids[j], address(j), steady_time{});
    }
  }

  static endpoint address(std::size_t i) {
    return endpoint(fmt::format("127.0.{}.{}", i / 250, 1 + i % 250), static_cast<std::uint16_t>(4000 + i));
  }
  dht::wire_peer peer(std::size_t i) const { return {ids[i], address(i)}; }

  std::vector<dht::wire_peer> nearest_of(std::size_t at, const key_id& key) const {
    std::vector<dht::wire_peer> out;
    for (const auto& p : tables[at].nearest(key, answer_count)) out.push_back({p.id, p.address});
    return out;
  }

  // The true `count` nearest live nodes to `key` other than `origin`.
  std::vector<node_id> true_nearest(const key_id& key, std::size_t count, std::size_t origin) const {
    std::vector<node_id> out;
    for (std::size_t i = 0; i < ids.size(); ++i)
      if (alive[i] && i != origin) out.push_back(ids[i]);
    std::sort(out.begin(), out.end(), [&](const auto& a, const auto& b) { return dht::nearer(key, a, b); });
    out.resize(std::min(count, out.size()));
    return out;
  }

  struct outcome {
    std::vector<dht::lookup_result> results;
    std::size_t requests = 0;
    std::size_t most_in_flight = 0;  // slow ones not counted
    std::size_t most_in_flight_per_key = 0;  // requests pending that carry one key, most ever
    std::vector<std::size_t> asked;  // nodes asked, in order
    std::vector<dht::lookup_result> results_when_keys_done;  // when every key was first done
    std::size_t slow_when_keys_done = 0;                    // requests still stalled then
  };

  // How the driver reports slow requests.
  enum class slow_reports {
    none,
    dead_are_slow,  // a dead node's request is reported slow at its turn and fails only once nothing else is left
    late_timers,    // every answered peer is reported slow just after its answer (a timer that lost the race)
  };

  // Runs a lookup from `origin`, answering requests one at a time in the order they were sent (dead nodes time
  // out), so several are in flight while others return.
  outcome run(std::size_t origin, const std::vector<key_id>& keys, dht::lookup_options options,
              slow_reports reports = slow_reports::none) {
    options.self = ids[origin];
    dht::lookup search(keys, options);
    for (const auto& key : keys) search.add_candidates(key, nearest_of(origin, key));
    std::deque<dht::lookup_request> pending;
    std::deque<node_id> stalled;
    outcome out;
    bool keys_were_done = false;
    for (std::size_t step = 0; !search.done(); ++step) {
      BOOST_REQUIRE(step < 100000);
      for (auto& r : search.next()) pending.push_back(std::move(r));
      out.most_in_flight = std::max(out.most_in_flight, search.in_flight() - search.slow());
      std::map<key_id, std::size_t> per_key;  // pending requests are the ones in flight and not slow
      for (const auto& r : pending)
        for (const auto& key : r.keys) out.most_in_flight_per_key = std::max(out.most_in_flight_per_key, ++per_key[key]);
      if (!keys_were_done && std::all_of(keys.begin(), keys.end(), [&](const key_id& k) { return search.done(k); })) {
        keys_were_done = true;
        out.results_when_keys_done = search.results();
        out.slow_when_keys_done = stalled.size();
      }
      if (pending.empty()) {
        BOOST_REQUIRE(!stalled.empty());
        BOOST_REQUIRE(search.on_failure(stalled.front()));
        stalled.pop_front();
        continue;
      }
      const auto request = pending.front();
      pending.pop_front();
      const std::size_t at = index.at(request.peer.id);
      out.asked.push_back(at);
      BOOST_REQUIRE(at != origin);
      if (!alive[at] && reports == slow_reports::dead_are_slow) {
        BOOST_REQUIRE(search.on_slow(request.peer.id));
        stalled.push_back(request.peer.id);
        continue;
      }
      if (!alive[at]) {
        BOOST_REQUIRE(search.on_failure(request.peer.id));
        continue;
      }
      std::vector<dht::find_result> answer;
      for (const auto& key : request.keys) {
        dht::find_result r{key, std::nullopt, nearest_of(at, key)};
        if (auto it = held[at].find(key); it != held[at].end()) r.found = it->second;
        answer.push_back(std::move(r));
      }
      BOOST_REQUIRE(search.on_response(request.peer.id, answer, now));
      if (reports == slow_reports::late_timers) BOOST_REQUIRE(!search.on_slow(request.peer.id));
    }
    BOOST_TEST(pending.empty());
    out.requests = search.requests_sent();
    out.results = search.results();
    return out;
  }
};

std::vector<node_id> ids_of(const std::vector<dht::wire_peer>& peers) {
  std::vector<node_id> out;
  for (const auto& p : peers) out.push_back(p.id);
  return out;
}

std::vector<key_id> random_keys(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<key_id> out;
  for (std::size_t i = 0; i < n; ++i) out.push_back(dht::random_node_id(gen));
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(dht_lookup)

BOOST_AUTO_TEST_CASE(finds_the_true_k_nearest_in_simulated_swarms) {
  struct shape {
    std::size_t nodes, k, b;
  };
  for (const shape s : {shape{20, 20, 5}, shape{200, 20, 5}, shape{200, 8, 1}, shape{200, 4, 2}}) {
    routing_swarm net(s.nodes, s.k, s.b, s.nodes + s.k);
    const auto keys = random_keys(40, 9);
    dht::lookup_options options;
    options.k = s.k;
    for (std::size_t batch = 0; batch < 8; ++batch) {
      const std::size_t origin = batch * 7 % s.nodes;
      const std::vector<key_id> some(keys.begin() + batch * 5, keys.begin() + batch * 5 + 5);
      const auto out = net.run(origin, some, options);
      BOOST_TEST(out.most_in_flight_per_key <= options.alpha);
      BOOST_TEST(out.most_in_flight <= options.max_in_flight);
      BOOST_TEST_REQUIRE(out.results.size() == some.size());
      for (const auto& r : out.results) {
        BOOST_TEST_CONTEXT("nodes=" << s.nodes << " k=" << s.k << " b=" << s.b << " key=" << r.key) {
          BOOST_TEST((ids_of(r.nearest) == net.true_nearest(r.key, s.k, origin)));
          BOOST_TEST(!r.found.has_value());
        }
      }
      // One crawl serves all five keys: no node is asked more often than once per key.
      std::unordered_map<std::size_t, std::size_t> times;
      for (std::size_t at : out.asked) BOOST_TEST(++times[at] <= some.size());
    }
  }
}

// Tables still list the dead nodes (they died after the tables were built), so responders return 16 peers per
// key: enough live ones among them for the 8 nearest.
BOOST_AUTO_TEST_CASE(dead_nodes_time_out_and_the_live_k_nearest_are_found) {
  routing_swarm net(200, 16, 1, 5);
  std::mt19937_64 gen(6);
  for (std::size_t i = 1; i < net.ids.size(); ++i) net.alive[i] = std::bernoulli_distribution(0.2)(gen) ? false : true;
  dht::lookup_options options;
  options.k = 8;
  const auto keys = random_keys(10, 7);
  const auto out = net.run(0, keys, options);
  std::size_t dead_asked = 0;
  for (std::size_t at : out.asked) dead_asked += net.alive[at] ? 0 : 1;
  BOOST_TEST(dead_asked > 0u);
  for (const auto& r : out.results) {
    BOOST_TEST_CONTEXT("key=" << r.key) { BOOST_TEST((ids_of(r.nearest) == net.true_nearest(r.key, 8, 0))); }
  }
}

// The same routing_swarm, but a dead node is only reported slow when its turn comes: every key is done with the live k
// nearest while the dead nodes' requests are still outstanding.
BOOST_AUTO_TEST_CASE(dead_nodes_reported_slow_are_not_waited_for) {
  routing_swarm net(200, 16, 1, 5);
  std::mt19937_64 gen(6);
  for (std::size_t i = 1; i < net.ids.size(); ++i) net.alive[i] = std::bernoulli_distribution(0.2)(gen) ? false : true;
  dht::lookup_options options;
  options.k = 8;
  const auto keys = random_keys(10, 7);
  const auto out = net.run(0, keys, options, routing_swarm::slow_reports::dead_are_slow);
  BOOST_TEST(out.most_in_flight_per_key <= options.alpha);
  BOOST_TEST(out.slow_when_keys_done > 0u);
  BOOST_TEST_REQUIRE(out.results_when_keys_done.size() == keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) {
    BOOST_TEST_CONTEXT("key=" << keys[i]) {
      BOOST_TEST((ids_of(out.results_when_keys_done[i].nearest) == net.true_nearest(keys[i], 8, 0)));
      BOOST_TEST((ids_of(out.results[i].nearest) == net.true_nearest(keys[i], 8, 0)));
    }
  }
}

// Slow timers that fire after their request was answered (the driver's race) change nothing: the same peers are
// asked in the same order and the same nearest found as with no reports at all.
BOOST_AUTO_TEST_CASE(a_healthy_lookup_is_unchanged_by_late_slow_timers) {
  routing_swarm net(200, 8, 1, 21);
  const auto keys = random_keys(5, 22);
  dht::lookup_options options;
  options.k = 8;
  const auto plain = net.run(3, keys, options);
  const auto timed = net.run(3, keys, options, routing_swarm::slow_reports::late_timers);
  BOOST_TEST(plain.asked == timed.asked, boost::test_tools::per_element());
  BOOST_TEST(plain.requests == timed.requests);
  BOOST_TEST_REQUIRE(plain.results.size() == timed.results.size());
  for (std::size_t i = 0; i < plain.results.size(); ++i)
    BOOST_TEST((ids_of(plain.results[i].nearest) == ids_of(timed.results[i].nearest)));
}

BOOST_AUTO_TEST_CASE(a_get_stops_at_the_first_value_unless_latest) {
  routing_swarm net(200, 8, 1, 11);
  const key_id key = dht::key_of("ffn.3.17");
  const auto holders = net.true_nearest(key, 8, 0);
  // Every one of the 8 nearest holds a version; the newest sits on the farthest of them.
  for (std::size_t i = 0; i < holders.size(); ++i)
    net.held[net.index.at(holders[i])][key] = dht::record::plain(to_buffer(std::to_string(i)), now + 10 + i);

  dht::lookup_options get;
  get.k = 8;
  get.want_values = true;
  const auto first = net.run(0, {key}, get);
  BOOST_TEST_REQUIRE(first.results[0].found.has_value());
  const auto& found = first.results[0].found->value;
  BOOST_TEST(found.expiration == now + 10 + std::stod(std::string(as_string_view(found.value))));

  get.latest = true;
  const auto latest = net.run(0, {key}, get);
  BOOST_TEST_REQUIRE(latest.results[0].found.has_value());
  BOOST_TEST(std::string(as_string_view(latest.results[0].found->value.value)) == "7");
  BOOST_TEST((ids_of(latest.results[0].nearest) == holders));
  BOOST_TEST(latest.requests >= first.requests);
  BOOST_TEST(!latest.results[0].nearest_without_value.has_value());  // all of the nearest had it
}

// One machine (one IP address) answers with 30 invented ids nearer the key than any real node, each claiming not to
// hold it: with the per-IP limit, at most max_peers_per_ip of them are candidates and the real holder is reached;
// without it, the k nearest are all invented and the get ends empty.
BOOST_AUTO_TEST_CASE(invented_ids_from_one_ip_address_cannot_hide_a_value) {
  const key_id key = dht::key_of("ffn.0.1");
  std::vector<dht::wire_peer> sybils, real;
  for (std::uint64_t i = 1; i <= 30; ++i)
    sybils.push_back({dht::distance(key, node_id{0, i}), endpoint("203.0.113.66", static_cast<std::uint16_t>(7000 + i))});
  for (std::uint64_t i = 1; i <= 10; ++i)
    real.push_back({dht::distance(key, node_id{i, 0}), endpoint(fmt::format("198.51.100.{}", i), 4000)});
  const auto get_through_sybils = [&](std::size_t max_peers_per_ip, std::size_t& sybils_asked) {
    dht::lookup_options get;
    get.want_values = true;
    get.max_peers_per_ip = max_peers_per_ip;
    dht::lookup search({key}, get);
    std::vector<dht::wire_peer> first = sybils;
    first.insert(first.end(), real.begin(), real.end());
    search.add_candidates(key, first);
    sybils_asked = 0;
    for (std::size_t step = 0; !search.done(); ++step) {
      BOOST_REQUIRE(step < 1000);
      const auto requests = search.next();
      BOOST_REQUIRE(!requests.empty());
      for (const auto& r : requests) {
        const bool sybil = r.peer.address.address() == "203.0.113.66";
        sybils_asked += sybil;
        dht::find_result answer{key, std::nullopt, sybil ? sybils : real};
        // The farthest real node holds the value.
        if (r.peer.id == real.back().id) answer.found = dht::record::plain(to_buffer("127.0.0.1:5000"), now + 60);
        BOOST_REQUIRE(search.on_response(r.peer.id, {answer}, now));
      }
    }
    return search.results().at(0).found.has_value();
  };
  std::size_t asked = 0;
  BOOST_TEST(get_through_sybils(4, asked));
  BOOST_TEST(asked <= 4u);
  BOOST_TEST(!get_through_sybils(0, asked));  // the attack works without the limit
  BOOST_TEST(asked == 20u);
}

// The limit turned against honest peers: an attacker answers with 4 invented ids at each real holder's IP address
// (other ports), to fill those addresses' slots before the real ids are heard of. The invented ids fail and free
// their slots; the real holders, waiting, take them, and the value is found.
BOOST_AUTO_TEST_CASE(invented_ids_at_honest_addresses_do_not_lock_the_real_holders_out) {
  const key_id key = dht::key_of("ffn.0.2");
  std::vector<dht::wire_peer> real, fakes;
  for (std::uint64_t i = 1; i <= 10; ++i) {
    const std::string ip = fmt::format("198.51.100.{}", i);
    real.push_back({dht::distance(key, node_id{i, 0}), endpoint(ip, 4000)});
    for (std::uint64_t j = 1; j <= 4; ++j)
      fakes.push_back({dht::distance(key, node_id{i, j}), endpoint(ip, static_cast<std::uint16_t>(5000 + j))});
  }
  const dht::wire_peer attacker{dht::distance(key, node_id{0, 1}), endpoint("203.0.113.66", 7000)};
  dht::lookup_options get;
  get.want_values = true;
  dht::lookup search({key}, get);
  search.add_candidates(key, {attacker, real[0], real[1], real[2]});
  std::size_t real_asked = 0;
  for (std::size_t step = 0; !search.done(); ++step) {
    BOOST_REQUIRE(step < 1000);
    const auto requests = search.next();
    BOOST_REQUIRE(!requests.empty());
    for (const auto& r : requests) {
      if (r.peer.id == attacker.id) {
        BOOST_REQUIRE(search.on_response(r.peer.id, {dht::find_result{key, std::nullopt, fakes}}, now));
        continue;
      }
      const bool is_real = std::any_of(real.begin(), real.end(), [&](const dht::wire_peer& p) { return p.id == r.peer.id; });
      if (!is_real) {
        search.on_failure(r.peer.id);  // an invented id: nobody answers
        continue;
      }
      ++real_asked;
      dht::find_result answer{key, std::nullopt, real};
      if (r.peer.id == real.back().id) answer.found = dht::record::plain(to_buffer("127.0.0.1:5000"), now + 60);
      BOOST_REQUIRE(search.on_response(r.peer.id, {answer}, now));
    }
  }
  BOOST_TEST(search.results().at(0).found.has_value());
  BOOST_TEST(real_asked >= 4u);
}

// Ids that failed for one key of a crawl and are then listed for another key hold none of their address's slots
// there: the real holder at that address is still asked.
BOOST_AUTO_TEST_CASE(candidates_failed_earlier_in_the_crawl_hold_no_address_slot) {
  const key_id first = dht::key_of("ffn.0.3"), second = dht::key_of("ffn.0.4");
  std::vector<dht::wire_peer> fakes;
  for (std::uint64_t j = 1; j <= 4; ++j)
    fakes.push_back({dht::distance(second, node_id{0, j}), endpoint("198.51.100.1", static_cast<std::uint16_t>(5000 + j))});
  const dht::wire_peer holder{dht::distance(second, node_id{1, 0}), endpoint("198.51.100.1", 4000)};
  dht::lookup_options get;
  get.want_values = true;
  dht::lookup search({first, second}, get);
  search.add_candidates(first, fakes);
  for (std::size_t step = 0; !search.done(first); ++step) {
    BOOST_REQUIRE(step < 100);
    for (const auto& r : search.next()) search.on_failure(r.peer.id);  // nobody answers at the invented ids
  }
  std::vector<dht::wire_peer> listed = fakes;
  listed.push_back(holder);
  search.add_candidates(second, listed);
  bool holder_asked = false;
  for (std::size_t step = 0; !search.done(); ++step) {
    BOOST_REQUIRE(step < 100);
    const auto requests = search.next();
    BOOST_REQUIRE(!requests.empty());
    for (const auto& r : requests) {
      BOOST_REQUIRE(r.peer.id == holder.id);  // the failed ones are not asked again
      holder_asked = true;
      dht::find_result answer{second, dht::record::plain(to_buffer("127.0.0.1:5000"), now + 60), {}};
      BOOST_REQUIRE(search.on_response(r.peer.id, {answer}, now));
    }
  }
  BOOST_TEST(holder_asked);
  BOOST_TEST(search.results().at(1).found.has_value());
}

BOOST_AUTO_TEST_CASE(latest_merges_dictionaries_per_subkey_and_ignores_expired_values) {
  routing_swarm net(100, 8, 1, 12);
  const key_id key = dht::key_of("ffn.3.");
  const auto holders = net.true_nearest(key, 8, 0);
  auto& a = net.held[net.index.at(holders[0])][key];
  a = dht::record::single_subkey(to_buffer("17"), to_buffer("old"), now + 10);
  a.subkeys[to_buffer("18")] = {to_buffer("only-a"), now + 10, {}};
  auto& b = net.held[net.index.at(holders[3])][key];
  b = dht::record::single_subkey(to_buffer("17"), to_buffer("new"), now + 20);
  b.subkeys[to_buffer("19")] = {to_buffer("expired"), now - 1, {}};
  // An expired plain value on another holder must not win or stop the search.
  net.held[net.index.at(holders[1])][key] = dht::record::plain(to_buffer("dead"), now - 5);

  dht::lookup_options get;
  get.k = 8;
  get.want_values = true;
  get.latest = true;
  const auto out = net.run(0, {key}, get);
  const auto& r = out.results[0];
  BOOST_TEST_REQUIRE(r.found.has_value());
  BOOST_TEST_REQUIRE(r.found->is_dictionary);
  BOOST_TEST(r.found->subkeys.size() == 2u);
  BOOST_TEST(std::string(as_string_view(r.found->subkeys.at(to_buffer("17")).value)) == "new");
  BOOST_TEST(std::string(as_string_view(r.found->subkeys.at(to_buffer("18")).value)) == "only-a");
  // The nearest node that answered without a live value is where the value would be cached.
  BOOST_TEST_REQUIRE(r.nearest_without_value.has_value());
  BOOST_TEST((r.nearest_without_value->id == holders[1]));
}

// A crawl of many keys keeps α requests in flight for each key, not α in all (it would take as many round trips
// as the keys together need), and never more than max_in_flight; the k nearest are still the true ones.
BOOST_AUTO_TEST_CASE(many_keys_keep_alpha_each_in_flight_up_to_max_in_flight) {
  routing_swarm net(300, 20, 5, 320);
  const auto keys = random_keys(40, 21);
  dht::lookup_options options;
  options.max_in_flight = 24;
  const auto out = net.run(3, keys, options);
  BOOST_TEST(out.most_in_flight == options.max_in_flight);
  BOOST_TEST(out.most_in_flight_per_key <= options.alpha);
  for (const auto& r : out.results)
    BOOST_TEST_CONTEXT("key=" << r.key) { BOOST_TEST((ids_of(r.nearest) == net.true_nearest(r.key, 20, 3))); }
  options.max_in_flight = 0;
  BOOST_CHECK_THROW(dht::lookup(keys, options), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(alpha_bounds_the_requests_in_flight) {
  dht::lookup_options options;
  options.k = 5;
  options.alpha = 2;
  const key_id key{0, 0};
  dht::lookup search({key}, options);
  std::vector<dht::wire_peer> peers;
  for (std::uint64_t i = 1; i <= 6; ++i) peers.push_back({node_id{0, i}, endpoint("127.0.0.1", 1)});
  search.add_candidates(peers);
  auto first = search.next();
  BOOST_TEST_REQUIRE(first.size() == 2u);
  BOOST_TEST((first[0].peer.id == node_id{0, 1}));  // nearest first
  BOOST_TEST((first[1].peer.id == node_id{0, 2}));
  BOOST_TEST(search.next().empty());
  BOOST_TEST(!search.done());
  BOOST_TEST(search.on_failure(node_id{0, 1}));
  auto second = search.next();
  BOOST_TEST_REQUIRE(second.size() == 1u);
  BOOST_TEST((second[0].peer.id == node_id{0, 3}));
  // Unknown or repeated answers change nothing.
  BOOST_TEST(!search.on_response(node_id{0, 9}, {}, now));
  BOOST_TEST(search.on_response(node_id{0, 2}, {}, now));
  BOOST_TEST(!search.on_response(node_id{0, 2}, {}, now));
  // Answer everyone: the 5 nearest that did not fail are 2..6.
  for (int guard = 0; !search.done(); ++guard) {
    BOOST_REQUIRE(guard < 20);
    for (auto& r : search.next()) (void)r;
    for (std::uint64_t i = 3; i <= 6; ++i) search.on_response(node_id{0, i}, {}, now);
  }
  const auto results = search.results();
  BOOST_TEST(results[0].nearest.size() == 5u);
  BOOST_TEST((results[0].nearest.front().id == node_id{0, 2}));
}

namespace {

std::vector<dht::wire_peer> peers_at(std::initializer_list<std::uint64_t> distances) {
  std::vector<dht::wire_peer> out;
  for (std::uint64_t d : distances) out.push_back({node_id{0, d}, endpoint("127.0.0.1", 1)});
  return out;
}

std::vector<std::uint64_t> distances_of(const std::vector<dht::wire_peer>& peers) {
  std::vector<std::uint64_t> out;
  for (const auto& p : peers) out.push_back(p.id.low);
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_slow_request_frees_its_alpha_slot) {
  dht::lookup_options options;
  options.k = 5;
  options.alpha = 2;
  const key_id key{0, 0};
  dht::lookup search({key}, options);
  search.add_candidates(peers_at({1, 2, 3, 4, 5, 6}));
  const auto first = search.next();
  BOOST_TEST_REQUIRE(first.size() == 2u);
  BOOST_TEST(search.next().empty());
  BOOST_TEST(!search.on_slow(node_id{0, 9}));  // never asked
  BOOST_TEST(search.on_slow(node_id{0, 1}));
  BOOST_TEST(!search.on_slow(node_id{0, 1}));  // slow already
  BOOST_TEST(search.in_flight() == 2u);
  BOOST_TEST(search.slow() == 1u);
  const auto second = search.next();
  BOOST_TEST_REQUIRE(second.size() == 1u);
  BOOST_TEST((second[0].peer.id == node_id{0, 3}));
  BOOST_TEST(search.next().empty());  // 2 and 3 hold the two slots
  // The slow request still fails like any other.
  BOOST_TEST(search.on_failure(node_id{0, 1}));
  BOOST_TEST(search.in_flight() == 2u);
  BOOST_TEST(search.slow() == 0u);
  BOOST_TEST(search.next().empty());
}

BOOST_AUTO_TEST_CASE(a_key_is_done_without_its_slow_peer_once_k_others_answered) {
  dht::lookup_options options;
  options.k = 3;
  options.alpha = 3;
  const key_id key{0, 0};
  dht::lookup search({key}, options);
  search.add_candidates(peers_at({1, 2, 3, 4, 5}));
  BOOST_TEST_REQUIRE(search.next().size() == 3u);  // 1, 2, 3
  BOOST_TEST(search.on_slow(node_id{0, 1}));
  const auto replacement = search.next();
  BOOST_TEST_REQUIRE(replacement.size() == 1u);
  BOOST_TEST((replacement[0].peer.id == node_id{0, 4}));
  BOOST_TEST(search.on_response(node_id{0, 2}, {}, now));
  BOOST_TEST(search.on_response(node_id{0, 3}, {}, now));
  BOOST_TEST(!search.done(key));
  BOOST_TEST(search.on_response(node_id{0, 4}, {}, now));
  BOOST_TEST(search.done(key));
  BOOST_TEST(!search.done());  // the slow request is still outstanding
  BOOST_TEST(search.next().empty());
  BOOST_TEST(distances_of(search.results()[0].nearest) == (std::vector<std::uint64_t>{2, 3, 4}),
             boost::test_tools::per_element());
  // Its answer, when it comes, is used.
  BOOST_TEST(search.on_response(node_id{0, 1}, {}, now));
  BOOST_TEST(search.done());
  BOOST_TEST(distances_of(search.results()[0].nearest) == (std::vector<std::uint64_t>{1, 2, 3}),
             boost::test_tools::per_element());
}

// A lookup of one key with k = α = 3 whose first requests went to `peers` (distances from the key), for the cases
// of slow and stale peers in a routing_swarm hardly larger than k.
struct three_nearest {
  explicit three_nearest(std::initializer_list<std::uint64_t> peers) : search({key}, options_of()) {
    search.add_candidates(peers_at(peers));
    BOOST_TEST_REQUIRE(search.next().size() == peers.size());
  }
  static dht::lookup_options options_of() {
    dht::lookup_options options;
    options.k = 3;
    options.alpha = 3;
    return options;
  }
  const key_id key{0, 0};
  dht::lookup search;
};

// Every candidate asked (a routing_swarm hardly larger than k): the key waits for its slow peer until it is stale, then is
// done with the answers it has.
BOOST_AUTO_TEST_CASE(a_key_with_fewer_than_k_other_candidates_waits_for_its_slow_peer_until_it_is_stale) {
  three_nearest lookup({1, 2, 3});
  auto& search = lookup.search;
  const key_id key = lookup.key;
  BOOST_TEST(!search.on_stale(node_id{0, 1}));  // not slow yet
  BOOST_TEST(search.on_slow(node_id{0, 1}));
  BOOST_TEST(search.next().empty());  // no one left to ask
  BOOST_TEST(search.on_response(node_id{0, 2}, {}, now));
  BOOST_TEST(search.on_response(node_id{0, 3}, {}, now));
  BOOST_TEST(!search.done(key));  // 1 is slow, not stale: it may still answer
  BOOST_TEST(search.on_stale(node_id{0, 1}));
  BOOST_TEST(!search.on_stale(node_id{0, 1}));  // stale already
  BOOST_TEST(!search.on_stale(node_id{0, 9}));  // never asked
  BOOST_TEST(search.done(key));
  BOOST_TEST(!search.done());  // the stale request is still outstanding
  BOOST_TEST(distances_of(search.results()[0].nearest) == (std::vector<std::uint64_t>{2, 3}),
             boost::test_tools::per_element());
  BOOST_TEST(search.on_failure(node_id{0, 1}));
  BOOST_TEST(search.done());
  BOOST_TEST(distances_of(search.results()[0].nearest) == (std::vector<std::uint64_t>{2, 3}),
             boost::test_tools::per_element());
}

// A slow peer that answers before it turns stale is waited for, and its answer counts.
BOOST_AUTO_TEST_CASE(a_slow_peer_answering_before_it_is_stale_is_among_the_nearest) {
  three_nearest lookup({1, 2, 3});
  auto& search = lookup.search;
  const key_id key = lookup.key;
  BOOST_TEST(search.on_slow(node_id{0, 1}));
  BOOST_TEST(search.on_response(node_id{0, 2}, {}, now));
  BOOST_TEST(search.on_response(node_id{0, 3}, {}, now));
  BOOST_TEST(!search.done(key));
  BOOST_TEST(search.on_response(node_id{0, 1}, {}, now));
  BOOST_TEST(search.done());
  BOOST_TEST(distances_of(search.results()[0].nearest) == (std::vector<std::uint64_t>{1, 2, 3}),
             boost::test_tools::per_element());
}

// With no answer at all, a key waits for its slow peers, stale or not: a routing_swarm whose every peer is slow still gets
// answers.
BOOST_AUTO_TEST_CASE(a_key_with_no_answer_waits_for_its_slow_and_stale_peers) {
  three_nearest lookup({1, 2});
  auto& search = lookup.search;
  const key_id key = lookup.key;
  BOOST_TEST(search.on_slow(node_id{0, 1}));
  BOOST_TEST(search.on_slow(node_id{0, 2}));
  BOOST_TEST(search.on_stale(node_id{0, 1}));
  BOOST_TEST(search.on_stale(node_id{0, 2}));
  BOOST_TEST(search.next().empty());
  BOOST_TEST(!search.done(key));
  BOOST_TEST(search.on_failure(node_id{0, 1}));
  BOOST_TEST(!search.done(key));
  BOOST_TEST(search.on_response(node_id{0, 2}, {}, now));
  BOOST_TEST(search.done());
  BOOST_TEST(distances_of(search.results()[0].nearest) == (std::vector<std::uint64_t>{2}),
             boost::test_tools::per_element());
}

// A slow peer's late answer is merged: its newer value wins and the nearer peer it names is asked.
BOOST_AUTO_TEST_CASE(a_late_answer_from_a_slow_peer_is_merged) {
  dht::lookup_options options;
  options.k = 3;
  options.alpha = 3;
  options.want_values = true;
  options.latest = true;
  const key_id key{0, 0};
  dht::lookup search({key}, options);
  search.add_candidates(peers_at({2, 3, 4, 5}));
  BOOST_TEST_REQUIRE(search.next().size() == 3u);  // 2, 3, 4
  BOOST_TEST(search.on_slow(node_id{0, 2}));
  BOOST_TEST_REQUIRE(search.next().size() == 1u);  // 5
  const std::vector<dht::find_result> old_value{
      dht::find_result{key, dht::record::plain(to_buffer("old"), now + 10), {}}};
  for (std::uint64_t d : {3, 4, 5}) BOOST_TEST(search.on_response(node_id{0, d}, old_value, now));
  BOOST_TEST(search.done(key));
  BOOST_TEST_REQUIRE(search.results()[0].found.has_value());
  BOOST_TEST(std::string(as_string_view(search.results()[0].found->value.value)) == "old");

  const std::vector<dht::find_result> new_value{
      dht::find_result{key, dht::record::plain(to_buffer("new"), now + 20), peers_at({1})}};
  BOOST_TEST(search.on_response(node_id{0, 2}, new_value, now));
  BOOST_TEST(!search.done(key));  // peer 1, nearer than all, is to be asked
  const auto again = search.next();
  BOOST_TEST_REQUIRE(again.size() == 1u);
  BOOST_TEST((again[0].peer.id == node_id{0, 1}));
  BOOST_TEST(search.on_response(node_id{0, 1}, {}, now));
  BOOST_TEST(search.done());
  const auto result = search.results()[0];
  BOOST_TEST_REQUIRE(result.found.has_value());
  BOOST_TEST(std::string(as_string_view(result.found->value.value)) == "new");
  BOOST_TEST(distances_of(result.nearest) == (std::vector<std::uint64_t>{1, 2, 3}), boost::test_tools::per_element());
  BOOST_TEST_REQUIRE(result.nearest_without_value.has_value());
  BOOST_TEST((result.nearest_without_value->id == node_id{0, 1}));
}

BOOST_AUTO_TEST_CASE(without_candidates_it_is_done_at_once) {
  dht::lookup search({node_id{1, 1}, node_id{1, 1}}, {});
  BOOST_TEST(search.done());
  BOOST_TEST(search.next().empty());
  BOOST_TEST(search.results().size() == 1u);  // repeats removed
  dht::lookup_options zero_k;
  zero_k.k = 0;
  BOOST_CHECK_THROW(dht::lookup({}, zero_k), invalid_argument_error);
}

// RFC 6298, section 2: the first sample sets SRTT = R and RTTVAR = R/2; later ones move RTTVAR by 1/4 of the error
// and SRTT by 1/8 of the sample (values worked by hand).
BOOST_AUTO_TEST_CASE(rtt_estimator_follows_rfc_6298) {
  using namespace std::chrono_literals;
  dht::rtt_estimator rtt;
  BOOST_TEST(rtt.samples() == 0u);
  BOOST_TEST(rtt.timeout(300ms).count() == std::chrono::nanoseconds(300ms).count());  // no sample: the fallback
  rtt.add(100ms);
  BOOST_TEST(rtt.srtt().count() == std::chrono::nanoseconds(100ms).count());
  BOOST_TEST(rtt.rttvar().count() == std::chrono::nanoseconds(50ms).count());
  BOOST_TEST(rtt.timeout(1s).count() == std::chrono::nanoseconds(300ms).count());
  rtt.add(120ms);  // error 20: RTTVAR (3*50 + 20)/4 = 42.5, SRTT (7*100 + 120)/8 = 102.5
  BOOST_TEST(rtt.rttvar().count() == 42'500'000);
  BOOST_TEST(rtt.srtt().count() == 102'500'000);
  rtt.add(80ms);  // error 22.5: RTTVAR 37.5, SRTT 99.6875, timeout 99.6875 + 150
  BOOST_TEST(rtt.rttvar().count() == 37'500'000);
  BOOST_TEST(rtt.srtt().count() == 99'687'500);
  BOOST_TEST(rtt.timeout(1s).count() == 249'687'500);
  BOOST_TEST(rtt.samples() == 3u);
  rtt.add(-5ms);  // a clock that went backwards counts as 0
  BOOST_TEST(rtt.srtt().count() == 99'687'500 * 7 / 8);
  dht::rtt_estimator huge;
  huge.add(std::chrono::nanoseconds::max() / 2);  // saturates at an hour: no overflow
  BOOST_TEST(huge.timeout(1s).count() == std::chrono::nanoseconds(3h).count());
}

BOOST_AUTO_TEST_SUITE_END()
