// Tests of dmoe/dht/lookup.hpp: the iterative search over a simulated in-process swarm of pure routing tables.
#include <dmoe/dht/lookup.hpp>
#include <dmoe/dht/routing_table.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <deque>
#include <random>
#include <unordered_map>

using namespace dmoe;
using dht::key_id;
using dht::node_id;

namespace {

constexpr wall_seconds now = 1.0e9;

// N nodes, each of whose routing tables heard from every other node (so each keeps what Kademlia keeps).
struct swarm {
  std::vector<node_id> ids;
  std::vector<dht::routing_table> tables;
  std::vector<bool> alive;
  std::vector<std::unordered_map<key_id, dht::record>> held;
  std::unordered_map<node_id, std::size_t> index;
  std::size_t k;
  std::size_t answer_count;  // peers a node returns per key

  swarm(std::size_t n, std::size_t k_, std::size_t b, std::uint64_t seed, std::size_t answer = 0)
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
    std::size_t most_in_flight = 0;
    std::vector<std::size_t> asked;  // nodes asked, in order
  };

  // Runs a lookup from `origin`, answering requests one at a time in the order they were sent (dead nodes time
  // out), so several are in flight while others return.
  outcome run(std::size_t origin, const std::vector<key_id>& keys, dht::lookup_options options) {
    options.self = ids[origin];
    dht::lookup search(keys, options);
    for (const auto& key : keys) search.add_candidates(key, nearest_of(origin, key));
    std::deque<dht::lookup_request> pending;
    outcome out;
    for (std::size_t step = 0; !search.done(); ++step) {
      BOOST_REQUIRE(step < 100000);
      for (auto& r : search.next()) pending.push_back(std::move(r));
      out.most_in_flight = std::max(out.most_in_flight, search.in_flight());
      BOOST_REQUIRE(!pending.empty());
      const auto request = pending.front();
      pending.pop_front();
      const std::size_t at = index.at(request.peer.id);
      out.asked.push_back(at);
      BOOST_REQUIRE(at != origin);
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
    swarm net(s.nodes, s.k, s.b, s.nodes + s.k);
    const auto keys = random_keys(40, 9);
    dht::lookup_options options;
    options.k = s.k;
    for (std::size_t batch = 0; batch < 8; ++batch) {
      const std::size_t origin = batch * 7 % s.nodes;
      const std::vector<key_id> some(keys.begin() + batch * 5, keys.begin() + batch * 5 + 5);
      const auto out = net.run(origin, some, options);
      BOOST_TEST(out.most_in_flight <= options.alpha);
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
  swarm net(200, 16, 1, 5);
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

BOOST_AUTO_TEST_CASE(a_get_stops_at_the_first_value_unless_latest) {
  swarm net(200, 8, 1, 11);
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

BOOST_AUTO_TEST_CASE(latest_merges_dictionaries_per_subkey_and_ignores_expired_values) {
  swarm net(100, 8, 1, 12);
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

BOOST_AUTO_TEST_CASE(without_candidates_it_is_done_at_once) {
  dht::lookup search({node_id{1, 1}, node_id{1, 1}}, {});
  BOOST_TEST(search.done());
  BOOST_TEST(search.next().empty());
  BOOST_TEST(search.results().size() == 1u);  // repeats removed
  dht::lookup_options zero_k;
  zero_k.k = 0;
  BOOST_CHECK_THROW(dht::lookup({}, zero_k), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
