// Hostile-peer review of the DHT node: each test names a fault found by review and shows it over loopback UDP.
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/udp_socket.hpp>
#include <dmoe/dht/node.hpp>
#include <dmoe/net/datagram_endpoint.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "dht_test_support.hpp"

using namespace dmoe;
using namespace std::chrono_literals;
using dmoe_test::fast_options;
using dmoe_test::list;
using dmoe_test::now_wall;
using dmoe_test::swarm;

namespace {

double ms_since(steady_time since) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since).count();
}

// Sends one DHT request from `raw` as `sender` and waits (bounded) for its answer; returns whether one came.
task<bool> raw_request(udp_socket& raw, const endpoint& to, dht::message_type type, const byte_buffer& message,
                       const dht::node_id& sender, std::uint64_t transaction) {
  net::datagram_header h;
  h.kind = net::datagram_kind::request;
  h.type = static_cast<std::uint16_t>(type);
  h.transaction_id = transaction;
  h.sender = dht::to_sender_id(sender);
  byte_buffer bytes;
  net::datagram_parts(h, message, {}).encode(0, bytes);
  co_await raw.send_to(bytes, to);
  byte_buffer buffer(65536);
  for (;;) {
    try {
      const dmoe::datagram got = co_await raw.receive_from(buffer, deadline_after(2s));
      const auto answer = net::decode_datagram(const_byte_span(buffer).first(got.size), {}, "review");
      if (answer.header.transaction_id == transaction) co_return true;
    } catch (const timeout_error&) {
      co_return false;
    }
  }
}

// A hostile peer: a datagram endpoint that answers pings honestly and every find with `forge(key)`.
struct hostile_peer {
  net::datagram_endpoint endpoint;
  dht::node_id id;

  template <class Forge>
  hostile_peer(io_context& ctx, dht::node_id self, Forge forge, std::chrono::milliseconds delay = 0ms)
      : endpoint(ctx, dmoe_test::next_loopback(), dht::to_sender_id(self)), id(self) {
    endpoint.add_handler(static_cast<std::uint16_t>(dht::message_type::ping),
                         [](net::datagram_request& r) -> task<byte_buffer> {
                           co_return dht::encode(dht::ping_response{false, r.peer});
                         });
    endpoint.add_handler(static_cast<std::uint16_t>(dht::message_type::find),
                         [forge, delay](net::datagram_request& r) -> task<byte_buffer> {
                           if (delay.count() > 0) co_await sleep_for(delay);
                           const auto request = dht::decode_find_request(r.message);
                           dht::find_response out;
                           for (const auto& key : request.keys) out.results.push_back({key, forge(key), {}});
                           co_return dht::encode(out);
                         });
    endpoint.add_handler(static_cast<std::uint16_t>(dht::message_type::store),
                         [](net::datagram_request& r) -> task<byte_buffer> {
                           const auto request = dht::decode_store_request(r.message);
                           dht::store_response out;
                           out.results.assign(request.items.size(), dht::store_result::stored);
                           co_return dht::encode(out);
                         });
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(dht_review)

// Fault: protocol::heard_from -> routing_table::heard_from moves a known id to the request's source address.
// The sender id is not authenticated, so anyone who read an id in a find answer can redirect it.
BOOST_AUTO_TEST_CASE(a_request_claiming_a_known_id_from_another_address_does_not_redirect_it) {
  io_context ctx;
  swarm s(ctx);
  auto& a = s.add();
  auto& b = s.add();
  udp_socket mallory(ctx, dmoe_test::next_loopback());
  sync_wait(ctx, s.run([&]() -> task<void> {
    BOOST_REQUIRE((co_await b.bootstrap(list(a.local_endpoint()))).joined);
    BOOST_REQUIRE(a.rpc().table().contains(b.id()));
    const auto key = dht::key_of("held by b only");
    BOOST_REQUIRE((b.rpc().store_locally({key, std::nullopt, {to_buffer("b's"), now_wall() + 60, {}}}) ==
                   dht::store_result::stored));

    // mallory pings a, claiming to be b; a answers, so it has handled the ping.
    BOOST_REQUIRE(co_await raw_request(mallory, a.local_endpoint(), dht::message_type::ping,
                                       dht::encode(dht::ping_request{}), b.id(), 42));
    const auto entry = a.rpc().table().find(b.id());
    BOOST_REQUIRE(entry.has_value());
    BOOST_TEST((entry->address == b.local_endpoint()), "a now sends b's traffic to " << entry->address.to_string());
    // The consequence: a's lookups ask mallory (who stays silent) instead of b, and b gets banned.
    const auto found = co_await a.get(key, false, deadline_after(2s));
    BOOST_TEST(found.has_value());
    BOOST_TEST(a.rpc().table().bans().failures(b.id()) == 0u);
  }));
}

// Fault: node::get_many / lookup::on_response return and merge whatever peers answer: a forged signature on an
// owner subkey, and an expiration far beyond any storage horizon (it wins every newer-wins merge), reach the caller.
BOOST_AUTO_TEST_CASE(get_latest_does_not_return_forged_or_beyond_horizon_records_from_a_hostile_peer) {
  io_context ctx;
  swarm s(ctx);
  auto& a = s.add();
  auto& c = s.add();
  const auto alice = dht::ed25519_keypair::generate();
  const auto mallory = dht::ed25519_keypair::generate();
  const auto owned_key = dht::key_of("ffn.7.");
  const byte_buffer subkey = to_buffer("3" + dht::owner_tag(alice.public_key()));
  const auto plain_key = dht::key_of("plain");
  const double t = now_wall();
  hostile_peer h(ctx, dht::random_node_id(), [&](const dht::key_id& key) -> std::optional<dht::record> {
    if (key == owned_key) {
      // Signed, but by mallory, not by the owner the subkey names.
      const byte_buffer sig = dht::sign_record(mallory, key, &subkey, to_buffer("mallory"), t + 600);
      return dht::record::single_subkey(subkey, to_buffer("mallory"), t + 600, sig);
    }
    return dht::record::plain(to_buffer("mallory"), t + 1e9);  // 31 years ahead: no storage would take it
  });
  sync_wait(ctx, s.run([&]() -> task<void> {
    task_group hostile(ctx);
    hostile.spawn(h.endpoint.serve());
    std::exception_ptr failure;
    try {
    std::vector<endpoint> peers{a.local_endpoint(), h.endpoint.local_endpoint()};
    BOOST_REQUIRE((co_await c.bootstrap(peers)).answered.size() == 2u);
    BOOST_REQUIRE(c.rpc().table().contains(h.id));

    const auto signed_item = dht::store_entry{owned_key, subkey, to_buffer("alice"), t + 60, {}}.signed_by(alice);
    BOOST_REQUIRE((a.rpc().store_locally({owned_key, subkey, {signed_item.value, t + 60, signed_item.signature}}) ==
                   dht::store_result::stored));
    BOOST_REQUIRE((a.rpc().store_locally({plain_key, std::nullopt, {to_buffer("honest"), t + 60, {}}}) ==
                   dht::store_result::stored));

    const auto owned = co_await c.get(owned_key, true, deadline_after(3s));
    BOOST_REQUIRE(owned.has_value());
    BOOST_REQUIRE(owned->subkeys.contains(subkey));
    BOOST_TEST(as_string_view(owned->subkeys.at(subkey).value) == "alice");

    const auto plain = co_await c.get(plain_key, true, deadline_after(3s));
    BOOST_REQUIRE(plain.has_value());
    BOOST_TEST(as_string_view(plain->value.value) == "honest");
    BOOST_TEST(plain->value.expiration < t + 2 * 24 * 3600);
    } catch (...) {
      failure = std::current_exception();
    }
    h.endpoint.close();
    co_await hostile.join();
    if (failure) std::rethrow_exception(failure);
  }));
}

// Fault: protocol::on_find answers every key of a request, repeats included, each with the value, so a 4 KiB
// request gets ~512 KiB back (a reflection amplifier: the answer goes to the source address, unverified).
BOOST_AUTO_TEST_CASE(a_find_repeating_one_key_is_not_answered_with_the_value_many_times) {
  io_context ctx;
  swarm s(ctx);
  auto& a = s.add();
  net::datagram_endpoint asker(ctx, dmoe_test::next_loopback(), dht::to_sender_id(dht::random_node_id()));
  sync_wait(ctx, s.run([&]() -> task<void> {
    task_group serving(ctx);
    serving.spawn(asker.serve());
    std::exception_ptr failure;
    try {
    const auto key = dht::key_of("big");
    BOOST_REQUIRE((a.rpc().store_locally({key, std::nullopt, {byte_buffer(60'000, std::byte{7}), now_wall() + 60, {}}}) ==
                   dht::store_result::stored));
    dht::find_request request;
    request.keys.assign(256, key);
    const byte_buffer bytes = dht::encode(request);
    const auto answer = co_await asker.request(a.local_endpoint(), static_cast<std::uint16_t>(dht::message_type::find),
                                               bytes, deadline_after(2s));
    BOOST_TEST_MESSAGE("find of " << bytes.size() << " bytes answered with " << answer.message.size() << " bytes");
    BOOST_TEST(answer.message.size() < 2 * 60'000u + 64'000u);
    } catch (...) {
      failure = std::current_exception();
    }
    asker.close();
    co_await serving.join();
    if (failure) std::rethrow_exception(failure);
  }));
}

// Fault: protocol::heard_from computes keys_for_newcomer (a scan of all stored keys, each with a routing-table
// nearest()) for every request from an unknown id, before knowing whether it will be added: a peer inventing a
// fresh id per request (allowed 500/s) makes the node scan its whole storage each time.
BOOST_AUTO_TEST_CASE(requests_with_fresh_ids_do_not_each_scan_the_whole_storage) {
  io_context ctx;
  swarm s(ctx);
  auto& a = s.add();
  udp_socket flooder(ctx, dmoe_test::next_loopback());
  sync_wait(ctx, s.run([&]() -> task<void> {
    // Enough peers that a is the nearest holder of few keys (as in a real swarm).
    for (int i = 0; i < 12; ++i) {
      auto& n = s.add();
      co_await n.bootstrap(list(a.local_endpoint()));
    }
    const double t = now_wall();
    for (int i = 0; i < 50'000; ++i)
      a.rpc().store_locally({dht::key_of("key " + std::to_string(i)), std::nullopt, {to_buffer("v"), t + 600, {}}});
    const dht::node_id same = dht::random_node_id();
    auto timed = [&](bool fresh, std::uint64_t base) -> task<double> {
      const auto started = std::chrono::steady_clock::now();
      for (std::uint64_t i = 0; i < 40; ++i) {
        const dht::node_id id = fresh ? dht::random_node_id() : same;
        BOOST_REQUIRE(co_await raw_request(flooder, a.local_endpoint(), dht::message_type::ping,
                                           dht::encode(dht::ping_request{}), id, base + i));
      }
      co_return ms_since(started);
    };
    const double known = co_await timed(false, 1000);
    const double fresh = co_await timed(true, 2000);
    BOOST_TEST_MESSAGE("40 pings: one id " << known << " ms, fresh ids " << fresh << " ms");
    BOOST_TEST(fresh < 5 * known + 100.0);
  }));
}

// Fault: bootstrap counts an answer from our own address as a peer answering: joined with no peer at all.
BOOST_AUTO_TEST_CASE(bootstrapping_through_our_own_address_does_not_join) {
  io_context ctx;
  swarm s(ctx);
  auto& a = s.add();
  sync_wait(ctx, s.run([&]() -> task<void> {
    const auto result = co_await a.bootstrap(list(a.local_endpoint()), deadline_after(1s));
    BOOST_TEST(result.peers == 0u);
    BOOST_TEST(!result.joined, "joined a swarm of nobody");
  }));
}

// Fault: node::shutdown does not end a bootstrap sleeping between ping rounds (ping_until_answered's
// sleep_until is not tied to the node): it runs on for up to bootstrap_retry_pause after shutdown returned, and a
// caller who destroys the node after shutdown() (as documented) leaves it to resume on a destroyed node.
BOOST_AUTO_TEST_CASE(shutdown_ends_a_bootstrap_waiting_between_ping_rounds_at_once) {
  io_context ctx;
  swarm s(ctx);
  auto options = fast_options();
  options.bootstrap_retry_pause = 3s;
  auto& a = s.add(options);
  udp_socket silent(ctx, dmoe_test::next_loopback());  // bound, never answers
  sync_wait(ctx, s.run([&]() -> task<void> {
    task_group joining(ctx);
    bool ended = false;
    steady_time ended_at{};
    auto join = [&]() -> task<void> {
      try {
        co_await a.bootstrap(list(silent.local_endpoint()), deadline_after(8s));
      } catch (const std::exception&) {
      }
      ended = true;
      ended_at = std::chrono::steady_clock::now();
    };
    joining.spawn(join());
    // The first ping round failed: the bootstrap is in its pause.
    BOOST_TEST(co_await dmoe_test::eventually([&] { return a.stats().rpc.calls_failed >= 1; }, 3s));
    const auto stopped = std::chrono::steady_clock::now();
    co_await a.shutdown();
    BOOST_TEST(ended, "bootstrap still running after shutdown() returned");
    co_await joining.join();
    const double after = std::chrono::duration<double, std::milli>(ended_at - stopped).count();
    BOOST_TEST(after < 500.0, "bootstrap ended " << after << " ms after shutdown");
  }));
}

// Passes: a bootstrap to peers that never answer ends by its deadline and names them.
BOOST_AUTO_TEST_CASE(a_bootstrap_to_silent_and_live_peers_reports_each_by_its_deadline) {
  io_context ctx;
  swarm s(ctx);
  auto& a = s.add();
  auto& b = s.add();
  udp_socket silent(ctx, dmoe_test::next_loopback());
  sync_wait(ctx, s.run([&]() -> task<void> {
    const auto started = std::chrono::steady_clock::now();
    const auto none = co_await b.bootstrap(list(silent.local_endpoint()), deadline_after(700ms));
    BOOST_TEST(ms_since(started) < 700.0 + 200.0);
    BOOST_TEST(!none.joined);
    BOOST_TEST(none.not_answered.size() == 1u);
    std::vector<endpoint> peers{silent.local_endpoint(), a.local_endpoint()};
    const auto some = co_await b.bootstrap(peers, deadline_after(1s));
    BOOST_TEST(some.joined);
    BOOST_TEST(some.answered.size() == 1u);
    BOOST_TEST(some.not_answered.size() == 1u);
  }));
}

// Fault: node::get_many joins a running traversal of the same key whatever its deadline: a get with 2 s to spare
// that joins one started with a 50 ms deadline ends with that traversal, with nothing, after 50 ms.
BOOST_AUTO_TEST_CASE(a_get_joining_a_shorter_get_of_the_same_key_keeps_its_own_deadline) {
  io_context ctx;
  swarm s(ctx);
  auto& c = s.add();
  const double t = now_wall();
  hostile_peer slow(ctx, dht::random_node_id(),
                    [&](const dht::key_id&) -> std::optional<dht::record> {
                      return dht::record::plain(to_buffer("slow but there"), t + 60);
                    },
                    150ms);
  sync_wait(ctx, s.run([&]() -> task<void> {
    task_group serving(ctx);
    serving.spawn(slow.endpoint.serve());
    std::exception_ptr failure;
    try {
      BOOST_REQUIRE((co_await c.bootstrap(list(slow.endpoint.local_endpoint()))).joined);
      const auto key = dht::key_of("slow key");
      std::optional<dht::record> hasty, patient;
      auto get_hasty = [&]() -> task<void> { hasty = co_await c.get(key, false, deadline_after(50ms)); };
      auto get_patient = [&]() -> task<void> { patient = co_await c.get(key, false, deadline_after(2s)); };
      task_group gets(ctx);
      gets.spawn(get_hasty());
      gets.spawn(get_patient());
      co_await gets.join();
      BOOST_TEST(!hasty.has_value());
      BOOST_TEST(c.stats().shared_gets == 1u);
      BOOST_TEST(patient.has_value(), "the 2 s get ended with the 50 ms one, empty");
    } catch (...) {
      failure = std::current_exception();
    }
    slow.endpoint.close();
    co_await serving.join();
    if (failure) std::rethrow_exception(failure);
  }));
}

BOOST_AUTO_TEST_SUITE_END()
