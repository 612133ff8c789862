// Integration tests of dmoe/dht/node.hpp: swarms of many nodes in one process, with churn and dead peers.
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/dht/node.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <random>
#include <string>
#include <vector>

#include "dht_test_support.hpp"

using namespace dmoe;
using namespace std::chrono_literals;
using dmoe_test::fast_options;
using dmoe_test::now_wall;

BOOST_AUTO_TEST_SUITE(dht_swarm)

BOOST_AUTO_TEST_CASE(gets_succeed_in_a_200_node_swarm_after_20_percent_die_and_new_nodes_join,
                     *boost::unit_test::label("integration")) {
  io_context ctx;
  dmoe_test::swarm s(ctx);
  sync_wait(ctx, s.run([&]() -> task<void> {
    const auto started = std::chrono::steady_clock::now();
    BOOST_TEST(co_await s.grow(200) == 200u);
    const double start_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    BOOST_TEST_MESSAGE("200 nodes joined in " << start_s << " s");

    constexpr std::size_t keys = 50;
    std::uniform_int_distribution<std::size_t> pick(0, 199);
    for (std::size_t i = 0; i < keys; ++i) {
      const auto key = dht::key_of(fmt::format("churn-{}", i));
      const auto stored = co_await s[pick(s.random())].store(key, to_buffer(fmt::format("value-{}", i)), now_wall() + 300);
      BOOST_TEST(stored.replicas == 5u);
    }

    // 20 % die at once (40 nodes), then 20 new ones join through survivors.
    std::vector<std::size_t> order(200);
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), s.random());
    const auto stored_at = std::chrono::steady_clock::now();
    BOOST_TEST_MESSAGE("stored " << keys << " keys in "
                                 << std::chrono::duration<double>(stored_at - started).count() - start_s << " s");
    for (std::size_t i = 0; i < 40; ++i) co_await s[order[i]].shutdown();
    BOOST_TEST(co_await s.grow(20) == 20u);
    BOOST_TEST_MESSAGE("20 nodes joined after the churn in "
                       << std::chrono::duration<double>(std::chrono::steady_clock::now() - stored_at).count() << " s");

    std::size_t found = 0;
    std::uint64_t requests = 0, lookups = 0;
    const auto reading = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < keys; ++i) {
      std::size_t reader = pick(s.random());
      while (s[reader].is_shut_down()) reader = pick(s.random());
      const auto before = s[reader].stats();
      const auto value = co_await s[reader].get(dht::key_of(fmt::format("churn-{}", i)), false, deadline_after(5s));
      const auto after = s[reader].stats();
      requests += after.lookup_requests - before.lookup_requests;
      lookups += after.lookups - before.lookups;
      if (value && as_string_view(value->value.value) == fmt::format("value-{}", i)) ++found;
    }
    const double read_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - reading).count();
    BOOST_TEST_MESSAGE("found " << found << " of " << keys << " keys after churn in " << read_s << " s, "
                                << (lookups ? static_cast<double>(requests) / static_cast<double>(lookups) : 0.0)
                                << " find calls per lookup");
    BOOST_TEST(found == keys);
  }));
}

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

// 64 nodes with the default rpc_timeout (1.5 s), then 10 % die. `latest` gets and stores from live nodes meet the
// dead among their keys' nearest: those calls turn slow and are given up, and no find call of those lookups fails
// (one would only fail after the dead peer's whole rpc_timeout), while every result is complete.
BOOST_AUTO_TEST_CASE(latest_gets_and_stores_do_not_wait_for_dead_peers, *boost::unit_test::label("integration")) {
  io_context ctx;
  dmoe_test::swarm s(ctx);
  dht::node_options options = fast_options();
  options.rpc_timeout = 1500ms;
  options.datagram.attempt_timeout = 500ms;
  options.datagram.max_attempts = 3;
  options.slow_request_after = 300ms;
  sync_wait(ctx, s.run([&]() -> task<void> {
    constexpr std::size_t nodes = 64, dead = 6, keys = 12;
    BOOST_TEST_REQUIRE(co_await s.grow(nodes, options) == nodes);
    for (std::size_t i = 0; i < keys; ++i) {
      const auto stored = co_await s[i * 5 % nodes].store(dht::key_of(fmt::format("slow-{}", i)),
                                                          to_buffer(fmt::format("value-{}", i)), now_wall() + 300);
      BOOST_TEST(stored.replicas == 5u);
    }
    std::vector<std::size_t> order(nodes);
    for (std::size_t i = 0; i < nodes; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), s.random());
    for (std::size_t i = 0; i < dead; ++i) co_await s[order[i]].shutdown();

    std::uint64_t slow = 0, given_up = 0;
    std::vector<double> get_s, store_s;
    for (std::size_t i = 0; i < keys; ++i) {
      dht::node& reader = s[order[dead + i]];
      dht::node& writer = s[order[dead + keys + i]];
      const auto key = dht::key_of(fmt::format("slow-{}", i));

      auto before = reader.stats();
      auto started = std::chrono::steady_clock::now();
      const auto value = co_await reader.get(key, true);
      get_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
      auto after = reader.stats();
      BOOST_TEST_CONTEXT("get " << i) {
        BOOST_TEST((value && as_string_view(value->value.value) == fmt::format("value-{}", i)));
        BOOST_TEST(after.lookup_failures == before.lookup_failures);
      }
      slow += after.slow_requests - before.slow_requests;
      given_up += after.slow_given_up - before.slow_given_up;

      before = writer.stats();
      started = std::chrono::steady_clock::now();
      const auto stored = co_await writer.store(dht::key_of(fmt::format("slow-new-{}", i)), to_buffer("fresh"),
                                                now_wall() + 300);
      store_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
      after = writer.stats();
      BOOST_TEST_CONTEXT("store " << i) {
        BOOST_TEST(stored.replicas == 5u);
        BOOST_TEST(after.lookup_failures == before.lookup_failures);
      }
      slow += after.slow_requests - before.slow_requests;
      given_up += after.slow_given_up - before.slow_given_up;
    }
    BOOST_TEST_MESSAGE("with " << dead << " of " << nodes << " nodes dead: latest gets p50 " << median(get_s)
                               << " s (max " << *std::max_element(get_s.begin(), get_s.end()) << "), stores p50 "
                               << median(store_s) << " s (max " << *std::max_element(store_s.begin(), store_s.end())
                               << "), " << slow << " slow find calls, " << given_up << " given up");
    BOOST_TEST(slow > 0u);  // the dead were among the nearest: the test saw what it is about
    BOOST_TEST(given_up > 0u);
  }));
}

BOOST_AUTO_TEST_SUITE_END()
