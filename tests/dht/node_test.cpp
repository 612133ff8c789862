// Tests of dmoe/dht/node.hpp and protocol.hpp: nodes on one io_context over loopback UDP.
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/udp_socket.hpp>
#include <dmoe/async/when_all.hpp>
#include <dmoe/dht/node.hpp>
#include <dmoe/net/datagram_endpoint.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "dht_test_support.hpp"

using namespace dmoe;
using namespace std::chrono_literals;
using dmoe_test::fast_options;
using dmoe_test::now_wall;
using dmoe_test::swarm;

namespace {

double elapsed_ms(steady_time since) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since).count();
}

std::string text_of(const std::optional<dht::record>& r) {
  if (!r || r->is_dictionary) return "<none>";
  return std::string(as_string_view(r->value.value));
}

// How many nodes of the swarm hold `key` in their storage (as replicas, not caches).
std::size_t holders(swarm& s, const dht::key_id& key) {
  std::size_t count = 0;
  for (auto& n : s.nodes())
    if (!n->is_shut_down() && n->rpc().stored().get(key)) ++count;
  return count;
}

// Options for the slow-call cases: calls of one attempt lasting `call_timeout`, slow by measured round trips
// within [min_slow, slow_after], stale after slow_after.
dht::node_options one_attempt_calls(std::chrono::milliseconds call_timeout, std::chrono::milliseconds slow_after,
                                    std::chrono::milliseconds min_slow) {
  auto options = fast_options();
  options.rpc_timeout = call_timeout;
  options.datagram.attempt_timeout = call_timeout;
  options.datagram.max_attempts = 1;
  options.slow_request_after = slow_after;
  options.min_slow_request_after = min_slow;
  return options;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(dht_node)

BOOST_AUTO_TEST_CASE(two_nodes_ping_store_and_get) {
  io_context ctx;
  swarm s(ctx);
  auto& a = s.add();
  auto& b = s.add();
  sync_wait(ctx, s.run([&]() -> task<void> {
    const auto joined = co_await b.bootstrap(dmoe_test::list(a.local_endpoint()));
    BOOST_TEST(joined.joined);
    BOOST_TEST(joined.not_answered.empty());
    BOOST_TEST(a.peer_count() == 1u);  // learned from b's requests
    BOOST_TEST(b.peer_count() == 1u);
    BOOST_TEST((co_await b.ping(a.local_endpoint()) == a.id()));

    const auto key = dht::key_of("two-nodes");
    const auto stored = co_await b.store(key, to_buffer("hello"), now_wall() + 60);
    BOOST_TEST(stored.replicas == 2u);  // both nodes: fewer than num_replicas exist
    BOOST_TEST(text_of(co_await a.get(key)) == "hello");
    BOOST_TEST(text_of(co_await b.get(key)) == "hello");
    std::vector<dht::store_entry> entries(2);
    entries[0] = {dht::key_of("k1"), std::nullopt, to_buffer("1"), now_wall() + 60, {}};
    entries[1] = {dht::key_of("k2"), std::nullopt, to_buffer("2"), now_wall() - 1, {}};
    const auto outcomes = co_await a.store_many(std::move(entries));
    BOOST_TEST(outcomes[0].replicas == 2u);
    BOOST_TEST(outcomes[1].replicas == 0u);
    BOOST_TEST((outcomes[1].refusal == dht::store_result::expired));
  }));
}

BOOST_AUTO_TEST_CASE(find_returns_the_value_and_the_nearest_neighbours_or_not_found) {
  io_context ctx;
  swarm s(ctx);
  auto& a = s.add();
  auto& b = s.add();
  auto& c = s.add();
  sync_wait(ctx, s.run([&]() -> task<void> {
    co_await b.bootstrap(dmoe_test::list(a.local_endpoint()));
    co_await c.bootstrap(dmoe_test::list(a.local_endpoint()));
    const auto key = dht::key_of("found");
    co_await a.store(key, to_buffer("v"), now_wall() + 60);
    const auto unknown = dht::key_of("never stored");
    const dht::wire_peer to_a{a.id(), a.local_endpoint()};
    std::vector<dht::key_id> asked{key, unknown};
    const dht::find_response r = co_await b.rpc().find(to_a, std::move(asked), deadline_after(2s));
    BOOST_REQUIRE(r.results.size() == 2u);
    BOOST_TEST(text_of(r.results[0].found) == "v");
    BOOST_TEST(!r.results[1].found.has_value());  // NOT_FOUND
    // a's neighbours, the requester left out: c.
    for (const auto& result : r.results) {
      BOOST_REQUIRE(result.nearest.size() == 1u);
      BOOST_TEST((result.nearest[0].id == c.id()));
      BOOST_TEST((result.nearest[0].address == c.local_endpoint()));
    }
    BOOST_TEST(!(co_await c.get(unknown)).has_value());
  }));
}

BOOST_AUTO_TEST_CASE(a_dead_peer_is_answered_by_a_timeout_within_the_deadline) {
  io_context ctx;
  swarm s(ctx);
  auto& a = s.add();
  auto& b = s.add();
  sync_wait(ctx, s.run([&]() -> task<void> {
    co_await b.bootstrap(dmoe_test::list(a.local_endpoint()));
    co_await b.shutdown();
    const auto started = std::chrono::steady_clock::now();
    const auto found = co_await a.get(dht::key_of("anything"), true, deadline_after(2s));
    BOOST_TEST(!found.has_value());
    BOOST_TEST(elapsed_ms(started) < 2000.0 + 200.0);
    BOOST_TEST(a.rpc().table().bans().failures(b.id()) == 1u);
    BOOST_TEST(a.peer_count() == 0u);
    // A deadline shorter than one call's timeout still holds.
    const auto quick = std::chrono::steady_clock::now();
    bool timed_out = false;
    try {
      co_await a.ping(b.local_endpoint(), deadline_after(50ms));
    } catch (const timeout_error&) {
      timed_out = true;
    }
    BOOST_TEST(timed_out);
    BOOST_TEST(elapsed_ms(quick) < 50.0 + 150.0);
  }));
}

BOOST_AUTO_TEST_CASE(shutdown_ends_a_lookup_waiting_on_a_dead_peer_at_once) {
  io_context ctx;
  swarm s(ctx);
  auto slow = fast_options();
  slow.rpc_timeout = 5s;
  slow.datagram.attempt_timeout = 2s;
  auto& a = s.add(slow);
  auto& b = s.add();
  sync_wait(ctx, s.run([&]() -> task<void> {
    co_await b.bootstrap(dmoe_test::list(a.local_endpoint()));
    co_await b.shutdown();
    const auto started = std::chrono::steady_clock::now();
    auto stop_soon = [&]() -> task<void> { co_await a.shutdown(); };
    auto [nearest, stopped] = co_await when_all(a.find_nearest(dht::key_of("x"), 5, deadline_after(10s)), stop_soon());
    BOOST_TEST(nearest.size() == 1u);  // only itself: b never answered
    BOOST_TEST(elapsed_ms(started) < 1000.0);
  }));
}

// A dead peer among a key's nearest costs a lookup slow_request_after, not rpc_timeout: the lookup goes on without
// it once k others answered, and the liveness ping that follows still drops it from the routing table.
BOOST_AUTO_TEST_CASE(a_lookup_goes_on_without_a_slow_dead_peer_and_a_liveness_ping_drops_it) {
  io_context ctx;
  swarm s(ctx);
  auto options = fast_options();
  options.k = 4;
  options.rpc_timeout = 1s;
  options.datagram.attempt_timeout = 400ms;
  options.datagram.max_attempts = 3;
  options.slow_request_after = 100ms;
  sync_wait(ctx, s.run([&]() -> task<void> {
    BOOST_TEST_REQUIRE(co_await s.grow(12, options) == 12u);
    const auto key = dht::key_of("slow-peer");
    dht::node& reader = s[0];
    const auto stored = co_await s[1].store(key, to_buffer("value"), now_wall() + 300);
    BOOST_TEST_REQUIRE(stored.replicas >= 1u);
    // The peer nearest to the key in the reader's table dies: the reader asks it first.
    const auto nearest = reader.rpc().table().nearest(key, 1);
    BOOST_TEST_REQUIRE(nearest.size() == 1u);
    const dht::node_id dead_id = nearest.front().id;
    for (std::size_t i = 1; i < s.size(); ++i)
      if (s[i].id() == dead_id) co_await s[i].shutdown();

    const auto before = reader.stats();
    const auto found = co_await reader.get(key, true);
    const auto after = reader.stats();
    BOOST_TEST(text_of(found) == "value");
    BOOST_TEST(after.slow_requests - before.slow_requests >= 1u);
    BOOST_TEST(after.slow_given_up - before.slow_given_up >= 1u);
    BOOST_TEST(after.lookup_failures == before.lookup_failures);  // nothing waited for its timeout
    BOOST_TEST(after.rpc.liveness_checks - before.rpc.liveness_checks >= 1u);
    BOOST_TEST(co_await dmoe_test::eventually([&] { return !reader.rpc().table().contains(dead_id); }, 3000ms));
    BOOST_TEST(reader.rpc().table().bans().failures(dead_id) == 1u);
  }));
}

// With slow_request_after far above this network's round trips, the threshold comes from measured answers: a dead
// peer among a key's nearest is passed over (slow, then given up) well before the get's 600 ms deadline, where a
// fixed 1.5 s threshold would have had the get end at its deadline still waiting for it.
BOOST_AUTO_TEST_CASE(a_dead_peer_is_passed_over_after_a_few_measured_round_trips) {
  io_context ctx;
  swarm s(ctx);
  auto options = one_attempt_calls(2s, 1500ms, 20ms);
  options.k = 4;
  sync_wait(ctx, s.run([&]() -> task<void> {
    BOOST_TEST_REQUIRE(co_await s.grow(12, options) == 12u);
    dht::node& reader = s[0];
    const auto key = dht::key_of("measured");
    const auto stored = co_await s[1].store(key, to_buffer("value"), now_wall() + 300);
    BOOST_TEST_REQUIRE(stored.replicas >= 1u);
    // The reader's own lookups time their answers.
    for (int i = 0; i < 4; ++i) co_await reader.get(dht::key_of(fmt::format("warm-{}", i)), true);
    const auto warm = reader.stats();
    BOOST_TEST(warm.find_srtt.count() > 0);
    BOOST_TEST(warm.slow_after >= std::chrono::microseconds(20ms));
    BOOST_TEST(warm.slow_after < std::chrono::microseconds(1500ms));

    const auto nearest = reader.rpc().table().nearest(key, 1);
    BOOST_TEST_REQUIRE(nearest.size() == 1u);
    for (std::size_t i = 1; i < s.size(); ++i)
      if (s[i].id() == nearest.front().id) co_await s[i].shutdown();
    const auto found = co_await reader.get(key, true, deadline_after(600ms));
    const auto after = reader.stats();
    BOOST_TEST(text_of(found) == "value");
    BOOST_TEST(after.slow_requests - warm.slow_requests >= 1u);
    BOOST_TEST(after.slow_given_up - warm.slow_given_up >= 1u);
    BOOST_TEST(after.lookup_failures == warm.lookup_failures);
  }));
}

// In a swarm smaller than k every node is a candidate of every key: a dead one is waited for until it is stale
// (slow_request_after), then given up, and the get ends then, neither at its own deadline nor after rpc_timeout.
BOOST_AUTO_TEST_CASE(a_dead_peer_in_a_swarm_smaller_than_k_is_given_up_once_stale) {
  io_context ctx;
  swarm s(ctx);
  const auto options = one_attempt_calls(10s, 300ms, 10ms);  // k = 20
  sync_wait(ctx, s.run([&]() -> task<void> {
    BOOST_TEST_REQUIRE(co_await s.grow(6, options) == 6u);
    dht::node& reader = s[0];
    const auto key = dht::key_of("small-swarm");
    const auto stored = co_await s[1].store(key, to_buffer("value"), now_wall() + 300);
    BOOST_TEST_REQUIRE(stored.replicas >= 2u);
    BOOST_TEST_REQUIRE(reader.rpc().table().contains(s[5].id()));
    co_await s[5].shutdown();
    const auto before = reader.stats();
    const auto found = co_await reader.get(key, true, deadline_after(3s));
    const auto after = reader.stats();
    BOOST_TEST(text_of(found) == "value");
    // The dead peer was asked and given up when the crawl ended, before the get returned: a crawl still waiting for
    // it at the get's deadline would count it only later. Neither cut by a deadline nor failed after rpc_timeout.
    BOOST_TEST(after.slow_given_up - before.slow_given_up >= 1u);
    BOOST_TEST(after.lookups_cut == before.lookups_cut);
    BOOST_TEST(after.lookup_failures == before.lookup_failures);
  }));
}

BOOST_AUTO_TEST_CASE(min_slow_request_after_is_validated_and_lowered_to_slow_request_after) {
  io_context ctx;
  auto options = fast_options();
  options.rpc_timeout = 1s;
  options.slow_request_after = 5ms;  // below the default floor of 10 ms: the floor follows it down
  dht::node lowered(ctx, options);
  BOOST_TEST(lowered.stats().slow_after.count() == 5000);  // no answer timed yet: slow_request_after
  sync_wait(ctx, lowered.shutdown());
  options.min_slow_request_after = 0ms;
  BOOST_CHECK_THROW(dht::node(ctx, options), invalid_argument_error);
}

// A live replica that answers its finds only after `delay` (busy, or far away); it holds `value` for every key.
struct delayed_replica {
  net::datagram_endpoint endpoint;
  std::chrono::milliseconds delay{0};
  std::string value;
  double expiration = 0;
  std::uint64_t finds = 0;

  delayed_replica(io_context& ctx, dht::node_id id)
      : endpoint(ctx, dmoe_test::next_loopback(), dht::to_sender_id(id)) {
    endpoint.add_handler(static_cast<std::uint16_t>(dht::message_type::ping),
                         [](net::datagram_request& r) -> task<byte_buffer> {
                           co_return dht::encode(dht::ping_response{false, r.peer});
                         });
    endpoint.add_handler(static_cast<std::uint16_t>(dht::message_type::find),
                         [this](net::datagram_request& r) -> task<byte_buffer> {
                           ++finds;
                           const auto request = dht::decode_find_request(r.message);
                           if (delay.count() > 0) co_await sleep_for(delay);
                           dht::find_response out;
                           for (const auto& key : request.keys)
                             out.results.push_back({key, dht::record::plain(to_buffer(value), expiration), {}});
                           co_return dht::encode(out);
                         });
  }
};

// In a swarm smaller than k every candidate gets asked: a live replica answering in 40 ms (slow by the measured
// threshold of a few loopback round trips, but far from stale at 300 ms) is waited for, so a latest get returns
// its newer value, and its answers are timed.
BOOST_AUTO_TEST_CASE(a_small_swarm_waits_for_a_slow_live_replica_until_it_is_stale) {
  io_context ctx;
  swarm s(ctx);
  auto options = fast_options();
  options.rpc_timeout = 1500ms;
  options.datagram.attempt_timeout = 500ms;
  options.datagram.max_attempts = 3;
  options.slow_request_after = 300ms;
  options.min_slow_request_after = 10ms;
  delayed_replica busy(ctx, dht::random_node_id());
  busy.value = "new";
  busy.expiration = now_wall() + 600;
  sync_wait(ctx, s.run([&]() -> task<void> {
    task_group serving(ctx);
    serving.spawn(busy.endpoint.serve());
    std::exception_ptr failure;
    try {
      auto& a = s.add(options);
      auto& b = s.add(options);
      co_await b.bootstrap(dmoe_test::list(a.local_endpoint()));
      auto& reader = s.add(options);
      std::vector<endpoint> peers{a.local_endpoint(), busy.endpoint.local_endpoint()};
      BOOST_TEST_REQUIRE((co_await reader.bootstrap(peers)).answered.size() == 2u);
      const auto key = dht::key_of("newest-on-the-busy-replica");
      for (auto* n : {&a, &b}) n->rpc().store_locally({key, std::nullopt, {to_buffer("old"), now_wall() + 300, {}}});
      for (int i = 0; i < 4; ++i) co_await reader.get(dht::key_of(fmt::format("warm-{}", i)), true);
      const auto warm = reader.stats();
      BOOST_TEST_REQUIRE(warm.slow_after < std::chrono::microseconds(40ms));  // 40 ms answers will be slow

      busy.delay = 40ms;
      const std::uint64_t finds_before = busy.finds;
      BOOST_TEST(text_of(co_await reader.get(key, true)) == "new");
      BOOST_TEST(text_of(co_await reader.get(dht::key_of("only-on-the-busy-replica"), false)) == "new");
      const auto after = reader.stats();
      BOOST_TEST(busy.finds - finds_before >= 2u);
      BOOST_TEST(after.slow_requests - warm.slow_requests >= 1u);  // it was slow, and waited for
      BOOST_TEST(after.slow_given_up == warm.slow_given_up);
      BOOST_TEST(after.find_srtt > warm.find_srtt);  // its 40 ms answers were timed
    } catch (...) {
      failure = std::current_exception();
    }
    busy.endpoint.close();
    co_await serving.join();
    if (failure) std::rethrow_exception(failure);
  }));
}

BOOST_AUTO_TEST_CASE(a_failing_peer_is_banned_for_doubling_times_and_a_success_resets_it) {
  io_context ctx;
  swarm s(ctx);
  auto options = fast_options();
  options.table.bans.first_ban = 300ms;
  auto& a = s.add(options);
  auto b_options = fast_options();
  auto& b = s.add(b_options);
  const dht::node_id b_id = b.id();
  sync_wait(ctx, s.run([&]() -> task<void> {
    co_await b.bootstrap(dmoe_test::list(a.local_endpoint()));
    BOOST_TEST(a.rpc().table().contains(b_id));
    const endpoint b_address = b.local_endpoint();
    co_await b.shutdown();
    for (int failure = 1; failure <= 3; ++failure) {
      try {
        co_await a.rpc().ping(b_address, deadline_after(1s), b_id);
      } catch (const timeout_error&) {
      }
      BOOST_TEST(a.rpc().table().bans().failures(b_id) == static_cast<std::size_t>(failure));
      BOOST_TEST(a.rpc().table().is_banned(b_id, std::chrono::steady_clock::now()));
    }
    BOOST_TEST(!a.rpc().table().contains(b_id));
    // Banned after its third failure for 4 x 300 ms: still banned 900 ms on, free after 1.2 s.
    const auto t = std::chrono::steady_clock::now();
    BOOST_TEST(a.rpc().table().is_banned(b_id, t + 900ms));
    BOOST_TEST(!a.rpc().table().is_banned(b_id, t + 1300ms));
    // While banned, a request from it does not put it back in the table.
    auto again = b_options;
    again.listen = b_address;
    again.id = b_id;
    auto& b2 = s.add(again);
    co_await b2.ping(a.local_endpoint());
    BOOST_TEST(!a.rpc().table().contains(b_id));
    // An answer to our own call is a success: the ban is lifted and the peer is back.
    co_await a.rpc().ping(b_address, deadline_after(1s), b_id);
    BOOST_TEST(a.rpc().table().bans().failures(b_id) == 0u);
    BOOST_TEST(a.rpc().table().contains(b_id));
  }));
}

BOOST_AUTO_TEST_CASE(an_isolated_node_answers_with_only_itself) {
  io_context ctx;
  swarm s(ctx);
  auto& a = s.add();
  // A port nobody listens on.
  const endpoint nobody = [] {
    io_context probe;
    udp_socket socket(probe, dmoe_test::next_loopback());
    return socket.local_endpoint();
  }();
  sync_wait(ctx, s.run([&]() -> task<void> {
    const auto alone = co_await a.bootstrap(std::vector<endpoint>());
    BOOST_TEST(alone.joined);
    const auto nearest = co_await a.find_nearest(dht::key_of("x"), 5);
    BOOST_REQUIRE(nearest.size() == 1u);
    BOOST_TEST((nearest[0].id == a.id()));
    const auto stored = co_await a.store(dht::key_of("x"), to_buffer("mine"), now_wall() + 60);
    BOOST_TEST(stored.replicas == 1u);
    BOOST_TEST(text_of(co_await a.get(dht::key_of("x"), true)) == "mine");
    const auto started = std::chrono::steady_clock::now();
    const auto failed = co_await a.bootstrap(dmoe_test::list(nobody), deadline_after(500ms));
    BOOST_TEST(!failed.joined);
    BOOST_REQUIRE(failed.not_answered.size() == 1u);
    BOOST_TEST((failed.not_answered[0] == nobody));
    BOOST_TEST(elapsed_ms(started) < 500.0 + 200.0);
  }));
}

BOOST_AUTO_TEST_CASE(subkeys_stored_from_two_nodes_merge_on_get_latest) {
  io_context ctx;
  swarm s(ctx);
  sync_wait(ctx, s.run([&]() -> task<void> {
    co_await s.grow(8);
    const auto key = dht::key_of("ffn.3.");
    const double t = now_wall();
    BOOST_TEST((co_await s[1].store(key, to_buffer("17"), to_buffer("server-a"), t + 60)).replicas >= 1u);
    BOOST_TEST((co_await s[5].store(key, to_buffer("18"), to_buffer("server-b"), t + 70)).replicas >= 1u);
    // A newer value of subkey 17 from a third node wins; an older one of 18 does not.
    BOOST_TEST((co_await s[6].store(key, to_buffer("17"), to_buffer("server-a2"), t + 80)).replicas >= 1u);
    const auto older = co_await s[6].store(key, to_buffer("18"), to_buffer("stale"), t + 10);
    BOOST_TEST(older.replicas == 0u);
    BOOST_TEST((older.refusal == dht::store_result::not_newer));
    const auto found = co_await s[3].get(key, true);
    BOOST_REQUIRE(found.has_value());
    BOOST_REQUIRE(found->is_dictionary);
    BOOST_REQUIRE(found->subkeys.size() == 2u);
    BOOST_TEST(as_string_view(found->subkeys.at(to_buffer("17")).value) == "server-a2");
    BOOST_TEST(as_string_view(found->subkeys.at(to_buffer("18")).value) == "server-b");
    BOOST_TEST(found->expiration() == t + 80);
  }));
}

BOOST_AUTO_TEST_CASE(a_store_reaches_exactly_num_replicas_nodes_and_a_newer_overwrite_keeps_the_count) {
  io_context ctx;
  swarm s(ctx);
  sync_wait(ctx, s.run([&]() -> task<void> {
    BOOST_TEST(co_await s.grow(20) == 20u);  // the first node starts the swarm (joined, alone)
    for (int i = 0; i < 5; ++i) {
      const auto key = dht::key_of(fmt::format("replicated-{}", i));
      auto& writer = s[static_cast<std::size_t>(i) * 3];
      const auto first = co_await writer.store(key, to_buffer("old"), now_wall() + 60);
      BOOST_TEST(first.replicas == 5u);
      BOOST_TEST(holders(s, key) == 5u);
      const auto second = co_await s[19 - static_cast<std::size_t>(i)].store(key, to_buffer("new"), now_wall() + 120);
      BOOST_TEST(second.replicas == 5u);
      BOOST_TEST(holders(s, key) == 5u);
      for (auto& n : s.nodes())
        if (auto r = n->rpc().stored().get(key)) BOOST_TEST(text_of(r) == "new");
    }
  }));
}

BOOST_AUTO_TEST_CASE(lookups_on_20_nodes_find_the_true_nearest) {
  io_context ctx;
  swarm s(ctx);
  sync_wait(ctx, s.run([&]() -> task<void> {
    co_await s.grow(20);
    std::size_t exact = 0;
    for (int i = 0; i < 20; ++i) {
      const auto key = dht::key_of(fmt::format("quality-{}", i));
      std::vector<dht::node_id> truth;
      for (auto& n : s.nodes()) truth.push_back(n->id());
      std::sort(truth.begin(), truth.end(), [&](auto& x, auto& y) { return dht::nearer(key, x, y); });
      truth.resize(5);
      const auto found = co_await s[static_cast<std::size_t>(i)].find_nearest(key, 5);
      std::vector<dht::node_id> ids;
      for (auto& p : found) ids.push_back(p.id);
      if (ids == truth) ++exact;
    }
    BOOST_TEST(exact == 20u);
  }));
}

BOOST_AUTO_TEST_CASE(concurrent_gets_of_one_key_share_one_traversal) {
  io_context ctx;
  swarm s(ctx);
  sync_wait(ctx, s.run([&]() -> task<void> {
    co_await s.grow(12);
    const auto key = dht::key_of("popular");
    co_await s[0].store(key, to_buffer("v"), now_wall() + 60);
    // A reader that holds no copy, so every get crawls.
    std::size_t r = 0;
    while (s[r].rpc().local(key)) ++r;
    auto& reader = s[r];
    // Asked three times at once: the plain get joins the `latest` traversal.
    const auto lookups_before = reader.stats().lookups;
    auto [x, y, z] = co_await when_all(reader.get(key, true), reader.get(key, true), reader.get(key, false));
    BOOST_TEST(text_of(x) == "v");
    BOOST_TEST(text_of(y) == "v");
    BOOST_TEST(text_of(z) == "v");
    BOOST_TEST(reader.stats().lookups - lookups_before == 1u);
    BOOST_TEST(reader.stats().shared_gets == 2u);
  }));
}

BOOST_AUTO_TEST_CASE(a_client_mode_node_asks_but_is_never_added) {
  io_context ctx;
  swarm s(ctx);
  auto client_options = fast_options();
  client_options.client_mode = true;
  sync_wait(ctx, s.run([&]() -> task<void> {
    co_await s.grow(5);
    auto& client = s.add(client_options);
    const auto joined = co_await client.bootstrap(dmoe_test::list(s[0].local_endpoint()));
    BOOST_TEST(joined.joined);
    BOOST_TEST(client.peer_count() >= 4u);
    const auto key = dht::key_of("from a client");
    const auto stored = co_await client.store(key, to_buffer("c"), now_wall() + 60);
    BOOST_TEST(stored.replicas == 5u);
    BOOST_TEST(!client.rpc().stored().get(key).has_value());  // never a replica
    BOOST_TEST(text_of(co_await s[2].get(key)) == "c");
    for (std::size_t i = 0; i < 5; ++i) BOOST_TEST(!s[i].rpc().table().contains(client.id()));
  }));
}

BOOST_AUTO_TEST_CASE(keys_are_handed_to_a_new_node_nearer_to_them) {
  io_context ctx;
  swarm s(ctx);
  sync_wait(ctx, s.run([&]() -> task<void> {
    co_await s.grow(10);
    const auto key = dht::key_of("handed over");
    co_await s[3].store(key, to_buffer("h"), now_wall() + 60);
    BOOST_TEST(holders(s, key) == 5u);
    auto options = fast_options();
    options.id = key ^ dht::node_id{0, 1};  // nearer to the key than anyone
    auto& newcomer = s.add(options);
    co_await newcomer.bootstrap(dmoe_test::list(s[0].local_endpoint()));
    const bool handed = co_await dmoe_test::eventually([&] { return newcomer.rpc().stored().get(key).has_value(); }, 2s);
    BOOST_TEST(handed);
    BOOST_TEST(newcomer.stats().rpc.stores_received >= 1u);
  }));
}

BOOST_AUTO_TEST_CASE(signed_records_refuse_forgeries_other_keys_and_replays_end_to_end) {
  io_context ctx;
  swarm s(ctx);
  sync_wait(ctx, s.run([&]() -> task<void> {
    co_await s.grow(6);
    const auto alice = dht::ed25519_keypair::generate();
    const auto mallory = dht::ed25519_keypair::generate();
    const auto key = dht::key_of("ffn.0.");
    const byte_buffer subkey = to_buffer("5" + dht::owner_tag(alice.public_key()));
    const double t = now_wall();
    const dht::store_entry first{key, subkey, to_buffer("alice-1"), t + 60, {}};
    const dht::store_entry second{key, subkey, to_buffer("alice-2"), t + 90, {}};
    BOOST_TEST((co_await s[1].store_many(dmoe_test::list(first.signed_by(alice))))[0].replicas == 5u);
    BOOST_TEST((co_await s[1].store_many(dmoe_test::list(second.signed_by(alice))))[0].replicas == 5u);

    dht::store_entry forged = dht::store_entry{key, subkey, to_buffer("mallory"), t + 120, {}}.signed_by(alice);
    forged.value = to_buffer("mallorz");  // the signature no longer matches
    const dht::store_entry foreign = dht::store_entry{key, subkey, to_buffer("mallory"), t + 120, {}}.signed_by(mallory);
    const dht::store_entry unsigned_entry{key, subkey, to_buffer("mallory"), t + 120, {}};
    const dht::store_entry replay = first.signed_by(alice);
    std::vector<dht::store_entry> attacks;
    attacks.push_back(forged);
    attacks.push_back(foreign);
    attacks.push_back(unsigned_entry);
    attacks.push_back(replay);
    for (const auto& attack : attacks) {
      const auto outcome = (co_await s[4].store_many(dmoe_test::list(attack)))[0];
      BOOST_TEST(outcome.replicas == 0u);
      BOOST_TEST(outcome.asked == 5u);
      BOOST_TEST((outcome.refusal == dht::store_result::refused || outcome.refusal == dht::store_result::not_newer));
    }
    const auto found = co_await s[5].get(key, true);
    BOOST_REQUIRE(found.has_value());
    BOOST_TEST(as_string_view(found->subkeys.at(subkey).value) == "alice-2");
    std::uint64_t refused = 0;
    for (auto& n : s.nodes()) refused += n->stats().rpc.signatures_refused;
    BOOST_TEST(refused >= 15u);  // forged, foreign and unsigned at each of 5 replicas
  }));
}

BOOST_AUTO_TEST_CASE(malformed_and_oversized_datagrams_get_no_answer_and_the_node_keeps_serving) {
  io_context ctx;
  swarm s(ctx);
  auto& a = s.add();
  udp_socket raw(ctx, dmoe_test::next_loopback());
  sync_wait(ctx, s.run([&]() -> task<void> {
    auto send_message = [&](dht::message_type type, const byte_buffer& message,
                            std::uint64_t transaction) -> task<void> {
      net::datagram_header h;
      h.kind = net::datagram_kind::request;
      h.type = static_cast<std::uint16_t>(type);
      h.transaction_id = transaction;
      h.sender = dht::to_sender_id(dht::node_id{7, 7});
      net::datagram_limits limits;
      limits.max_datagram = 65'000;
      byte_buffer bytes;
      net::datagram_parts(h, message, limits).encode(0, bytes);
      co_await raw.send_to(bytes, a.local_endpoint());
    };
    co_await raw.send_to(to_buffer("not a datagram at all"), a.local_endpoint());
    co_await send_message(dht::message_type::find, to_buffer("\x01\x00garbage"), 1);
    dht::find_request too_many;
    too_many.keys.assign(300, dht::key_of("k"));  // over the 256 keys a request may carry
    co_await send_message(dht::message_type::find, dht::encode(too_many), 2);
    co_await raw.send_to(byte_buffer(20'000, std::byte{1}), a.local_endpoint());  // over the receive buffer
    co_await send_message(dht::message_type::ping, dht::encode(dht::ping_request{}), 3);
    // The first answer to arrive is the ping's: nothing before it was answered.
    byte_buffer buffer(4096);
    const dmoe::datagram got = co_await raw.receive_from(buffer, deadline_after(2s));
    const auto answer = net::decode_datagram(const_byte_span(buffer).first(got.size), {}, "test");
    BOOST_TEST(answer.header.transaction_id == 3u);
    BOOST_TEST((answer.header.kind == net::datagram_kind::response));
    BOOST_TEST(a.stats().rpc.malformed == 2u);
    BOOST_TEST(a.stats().datagram.malformed == 2u);
    BOOST_TEST(a.stats().datagram.unanswered == 2u);
    // And it serves a real node.
    auto& b = s.add();
    BOOST_TEST((co_await b.bootstrap(dmoe_test::list(a.local_endpoint()))).joined);
  }));
}

BOOST_AUTO_TEST_CASE(a_flood_from_one_address_is_rate_limited_while_another_is_served) {
  io_context ctx;
  swarm s(ctx);
  auto options = fast_options();
  options.max_requests_per_second = 20;
  options.request_burst = 20;
  auto& a = s.add(options);
  udp_socket flooder(ctx, dmoe_test::next_loopback());
  auto& good = s.add();
  sync_wait(ctx, s.run([&]() -> task<void> {
    const auto started = std::chrono::steady_clock::now();
    for (std::uint64_t i = 0; i < 300; ++i) {
      net::datagram_header h;
      h.kind = net::datagram_kind::request;
      h.type = static_cast<std::uint16_t>(dht::message_type::ping);
      h.transaction_id = 1000 + i;
      h.sender = dht::to_sender_id(dht::node_id{9, i});
      byte_buffer bytes;
      net::datagram_parts(h, dht::encode(dht::ping_request{}), {}).encode(0, bytes);
      co_await flooder.send_to(bytes, a.local_endpoint());
    }
    BOOST_TEST((co_await good.ping(a.local_endpoint()) == a.id()));
    const double seconds = elapsed_ms(started) / 1000.0;
    const auto stats = a.stats();
    BOOST_TEST_MESSAGE("flood: " << stats.rpc.rate_limited << " of 300 dropped in " << seconds << " s");
    BOOST_TEST(static_cast<double>(stats.rpc.rate_limited) >= 300.0 - 20.0 - 20.0 * seconds - 1.0);
    BOOST_TEST(stats.rpc.pings_received <= 20u + static_cast<std::uint64_t>(20.0 * seconds) + 2u);
    // The flood did not fill a's table with the forged ids beyond what its buckets hold.
    BOOST_TEST(a.peer_count() <= 1u + 20u + 20u);
  }));
}

BOOST_AUTO_TEST_CASE(bad_input_gets_a_clear_error_and_a_shut_down_node_refuses_calls) {
  io_context ctx;
  swarm s(ctx);
  auto& a = s.add();
  sync_wait(ctx, s.run([&]() -> task<void> {
    std::string message;
    try {
      co_await a.store(dht::key_of("big"), byte_buffer(100'000), now_wall() + 60);
    } catch (const invalid_argument_error& e) {
      message = e.what();
    }
    BOOST_TEST_INFO(message);
    BOOST_TEST(message.find("value of 100000 bytes, over the limit of 65536") != std::string::npos);
    message.clear();
    try {
      co_await a.store(dht::key_of("nan"), to_buffer("x"), std::numeric_limits<double>::quiet_NaN());
    } catch (const invalid_argument_error& e) {
      message = e.what();
    }
    BOOST_TEST(message.find("non-finite expiration") != std::string::npos);
    co_await a.shutdown();
    bool closed = false;
    try {
      co_await a.get(dht::key_of("x"));
    } catch (const closed_error&) {
      closed = true;
    }
    BOOST_TEST(closed);
  }));
  auto bad = fast_options();
  bad.alpha = 0;
  BOOST_CHECK_THROW(dht::node(ctx, bad), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
