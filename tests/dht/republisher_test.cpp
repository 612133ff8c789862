// Tests of dmoe/dht/republisher.hpp: values kept alive by their owner's rounds, signed anew each round, and gone
// once the rounds stop and the ttl passes. The nodes run on a manual clock: expirations pass without sleeping.
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/async/with_stop_token.hpp>
#include <dmoe/dht/republisher.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <stop_token>
#include <string>

#include "dht_test_support.hpp"

using namespace dmoe;
using namespace std::chrono_literals;
using dmoe_test::swarm;

BOOST_AUTO_TEST_SUITE(dht_republisher)

BOOST_AUTO_TEST_CASE(rounds_keep_values_alive_and_they_lapse_once_the_rounds_stop) {
  manual_clock clock(1.5e9);
  io_context ctx;
  swarm s(ctx);
  auto options = dmoe_test::fast_options();
  options.clock = &clock;
  const auto owner = dht::ed25519_keypair::generate();
  sync_wait(ctx, s.run([&]() -> task<void> {
    co_await s.grow(6, options);
    dht::republisher r(s[0], {.period = 10s, .ttl = 25s});
    r.set(dht::key_of("plain"), std::nullopt, to_buffer("v1"));
    r.set(dht::key_of("dict"), to_buffer("[sub]"), to_buffer("signed"), &owner);
    r.set(dht::key_of("plain"), std::nullopt, to_buffer("v2"));  // replaces
    BOOST_TEST(r.size() == 2u);
    BOOST_TEST(co_await r.publish_once() == 2u);
    const double first = clock.wall_now() + 25.0;
    auto found = co_await s[5].get(dht::key_of("plain"), true);
    BOOST_REQUIRE(found);
    BOOST_TEST(as_string_view(found->value.value) == "v2");
    BOOST_TEST(found->value.expiration == first);
    // Each round stores again with a later expiration (a signed one signed anew, so it is accepted as newer).
    for (int round = 0; round < 3; ++round) {
      clock.advance(10s);
      BOOST_TEST(co_await r.publish_once() == 2u);
    }
    found = co_await s[5].get(dht::key_of("dict"), true);
    BOOST_REQUIRE(found && found->is_dictionary);
    BOOST_TEST(found->subkeys.begin()->second.expiration == clock.wall_now() + 25.0);
    BOOST_TEST(found->subkeys.begin()->second.signature.size() == dht::signature_blob_size);
    BOOST_TEST(r.rounds() == 4u);
    // Erased entries and stopped rounds: the values lapse at their last expiration.
    BOOST_TEST(r.erase(dht::key_of("plain")));
    BOOST_TEST(!r.erase(dht::key_of("plain")));
    clock.advance(1s);  // (a round at the same instant would carry the same expiration: not newer, refused)
    BOOST_TEST(co_await r.publish_once() == 1u);
    clock.advance(26s);
    BOOST_TEST(!(co_await s[5].get(dht::key_of("plain"), true)).has_value());
    BOOST_TEST(!(co_await s[5].get(dht::key_of("dict"), true)).has_value());
  }));
}

BOOST_AUTO_TEST_CASE(run_publishes_at_once_and_ends_on_stop_or_shutdown) {
  io_context ctx;
  swarm s(ctx);
  sync_wait(ctx, s.run([&]() -> task<void> {
    co_await s.grow(3);
    dht::republisher r(s[0], {.period = 1h, .ttl = 2h});
    r.set(dht::key_of("k"), std::nullopt, to_buffer("v"));
    std::stop_source stop;
    r.on_round([&](std::size_t stored, std::size_t total) {
      BOOST_TEST(stored == total);
      stop.request_stop();  // the first round is done: end the (hour-long) wait for the next
    });
    bool cancelled = false;
    try {
      co_await with_stop_token(r.run(), stop.get_token());
    } catch (const cancelled_error&) {
      cancelled = true;
    }
    BOOST_TEST(cancelled);
    BOOST_TEST(r.rounds() == 1u);
    BOOST_TEST((co_await s[2].get(dht::key_of("k"))).has_value());
    // After the node shuts down, run() returns.
    co_await s[0].shutdown();
    co_await r.run();
  }));
  BOOST_CHECK_THROW(dht::republisher(s[1], {.period = 10s, .ttl = 5s}), invalid_argument_error);
  BOOST_CHECK_THROW(dht::republisher(s[1], {.period = 0s}), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
