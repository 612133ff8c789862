// Tests of dmoe/dht/storage.hpp: one test per rule, with an injected clock.
#include <dmoe/dht/storage.hpp>

#include <boost/test/unit_test.hpp>

#include <string>

using namespace dmoe;
using dht::store_result;

namespace {

constexpr wall_seconds storage_t0 = 1.0e9;

struct storage_fixture {
  manual_clock clock{storage_t0};
  dht::storage store{dht::storage_options{}, clock};
  const dht::key_id key = dht::key_of("ffn.3.");

  std::string value_of(const dht::key_id& k) {
    auto r = store.get(k);
    BOOST_REQUIRE(r.has_value());
    BOOST_REQUIRE(!r->is_dictionary);
    return std::string(as_string_view(r->value.value));
  }
  std::string subkey_value(const dht::key_id& k, std::string_view subkey) {
    auto r = store.get(k);
    BOOST_REQUIRE(r.has_value());
    BOOST_REQUIRE(r->is_dictionary);
    auto it = r->subkeys.find(to_buffer(subkey));
    return it == r->subkeys.end() ? std::string("<missing>") : std::string(as_string_view(it->second.value));
  }
  static std::string value_of_in(dht::storage& s, const dht::key_id& k) {
    auto r = s.get(k);
    BOOST_REQUIRE(r.has_value());
    return std::string(as_string_view(r->value.value));
  }
  void advance(double seconds) { clock.set_wall(clock.wall_now() + seconds); }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(dht_storage, storage_fixture)

BOOST_AUTO_TEST_CASE(a_moved_from_storage_is_empty_and_usable) {
  BOOST_TEST((store.store(key, to_buffer("a"), storage_t0 + 10) == store_result::stored));
  dht::storage moved = std::move(store);
  BOOST_TEST(moved.size() == 1u);
  BOOST_TEST(value_of_in(moved, key) == "a");
  // The source reads as empty, copies as empty, and takes stores again.
  BOOST_TEST(store.size() == 0u);
  BOOST_TEST(store.entries().empty());
  BOOST_TEST(!store.get(key).has_value());
  dht::storage copy = store;
  BOOST_TEST(copy.size() == 0u);
  BOOST_TEST((store.store(key, to_buffer("b"), storage_t0 + 20) == store_result::stored));
  BOOST_TEST(value_of(key) == "b");
  BOOST_TEST(moved.size() == 1u);
  // Move-assigning drops the target's old entries and leaves the source empty again.
  moved = std::move(store);
  BOOST_TEST(value_of_in(moved, key) == "b");
  BOOST_TEST(store.size() == 0u);
}

BOOST_AUTO_TEST_CASE(newer_wins) {
  BOOST_TEST((store.store(key, to_buffer("a"), storage_t0 + 10) == store_result::stored));
  BOOST_TEST((store.store(key, to_buffer("b"), storage_t0 + 20) == store_result::stored));
  BOOST_TEST(value_of(key) == "b");
  BOOST_TEST(store.get(key)->value.expiration == storage_t0 + 20);
}

BOOST_AUTO_TEST_CASE(equal_and_older_expirations_are_refused) {
  BOOST_TEST((store.store(key, to_buffer("a"), storage_t0 + 20) == store_result::stored));
  BOOST_TEST((store.store(key, to_buffer("b"), storage_t0 + 20) == store_result::not_newer));
  BOOST_TEST((store.store(key, to_buffer("c"), storage_t0 + 10) == store_result::not_newer));
  BOOST_TEST(value_of(key) == "a");
}

BOOST_AUTO_TEST_CASE(expired_and_too_far_ahead_are_refused) {
  BOOST_TEST((store.store(key, to_buffer("a"), storage_t0 - 1) == store_result::expired));
  BOOST_TEST((store.store(key, to_buffer("a"), storage_t0) == store_result::expired));  // expiring now is expired
  const double horizon = store.options().max_expiration_horizon;
  BOOST_TEST((store.store(key, to_buffer("a"), storage_t0 + horizon + 1) == store_result::too_far_ahead));
  BOOST_TEST((store.store(key, to_buffer("a"), storage_t0 + horizon) == store_result::stored));
  BOOST_TEST((store.store(key, to_buffer("a"), std::numeric_limits<double>::quiet_NaN()) == store_result::invalid));
  BOOST_TEST((store.store(key, to_buffer("a"), std::numeric_limits<double>::infinity()) == store_result::invalid));
}

BOOST_AUTO_TEST_CASE(values_expire_with_the_clock) {
  store.store(key, to_buffer("a"), storage_t0 + 10);
  advance(9.5);
  BOOST_TEST(store.get(key).has_value());
  advance(0.5);
  BOOST_TEST(!store.get(key).has_value());
  BOOST_TEST(store.size() == 0u);
  BOOST_TEST(store.total_bytes() == 0u);
  // Once expired, any unexpired store is newer.
  BOOST_TEST((store.store(key, to_buffer("b"), storage_t0 + 11) == store_result::stored));
}

// hivemind's storage recorded the refused store's earlier expiration and dropped the value at that time.
BOOST_AUTO_TEST_CASE(a_refused_store_does_not_shorten_the_stored_value) {
  store.store(key, to_buffer("long"), storage_t0 + 100);
  BOOST_TEST((store.store(key, to_buffer("short"), storage_t0 + 10) == store_result::not_newer));
  store.store_subkey(key, to_buffer("s"), to_buffer("short"), storage_t0 + 10);
  advance(50);
  store.drop_expired();
  BOOST_TEST(value_of(key) == "long");
  BOOST_TEST(store.get(key)->value.expiration == storage_t0 + 100);
}

BOOST_AUTO_TEST_CASE(a_refused_store_evicts_nothing) {
  dht::storage small({.max_keys = 2}, clock);
  BOOST_TEST((small.store(dht::key_of("a"), to_buffer("a"), storage_t0 + 10) == store_result::stored));
  BOOST_TEST((small.store(dht::key_of("b"), to_buffer("b"), storage_t0 + 20) == store_result::stored));
  // Every refusal leaves both in place: expired, too far ahead, too large, and one expiring before all of them.
  BOOST_TEST((small.store(dht::key_of("c"), to_buffer("c"), storage_t0 - 1) == store_result::expired));
  BOOST_TEST((small.store(dht::key_of("c"), to_buffer("c"), storage_t0 + 1e9) == store_result::too_far_ahead));
  BOOST_TEST((small.store(dht::key_of("c"), byte_buffer(small.options().max_value_size + 1), storage_t0 + 30) ==
              store_result::too_large));
  BOOST_TEST((small.store(dht::key_of("c"), to_buffer("c"), storage_t0 + 5) == store_result::no_room));
  BOOST_TEST((small.store(dht::key_of("a"), to_buffer("a2"), storage_t0 + 5) == store_result::not_newer));
  BOOST_TEST(small.size() == 2u);
  BOOST_TEST(small.get(dht::key_of("a")).has_value());
  BOOST_TEST(small.get(dht::key_of("b")).has_value());
}

BOOST_AUTO_TEST_CASE(bounded_cache_evicts_the_earliest_expiring_first) {
  dht::storage small({.max_keys = 3}, clock);
  small.store(dht::key_of("b"), to_buffer("b"), storage_t0 + 20);
  small.store(dht::key_of("a"), to_buffer("a"), storage_t0 + 10);
  small.store(dht::key_of("c"), to_buffer("c"), storage_t0 + 30);
  BOOST_TEST((small.store(dht::key_of("d"), to_buffer("d"), storage_t0 + 40) == store_result::stored));
  BOOST_TEST(small.size() == 3u);
  BOOST_TEST(!small.get(dht::key_of("a")).has_value());
  BOOST_TEST((small.store(dht::key_of("e"), to_buffer("e"), storage_t0 + 25) == store_result::stored));
  BOOST_TEST(!small.get(dht::key_of("b")).has_value());
  BOOST_TEST(small.get(dht::key_of("c")).has_value());
  BOOST_TEST(small.get(dht::key_of("d")).has_value());
  BOOST_TEST(small.get(dht::key_of("e")).has_value());
  // Updating a held key needs no eviction.
  BOOST_TEST((small.store(dht::key_of("e"), to_buffer("e2"), storage_t0 + 26) == store_result::stored));
  BOOST_TEST(small.size() == 3u);
}

BOOST_AUTO_TEST_CASE(total_bytes_are_bounded) {
  // Each entry: 16 bytes of key + 100 of value.
  dht::storage small({.max_total_bytes = 3 * 116}, clock);
  for (int i = 0; i < 3; ++i)
    BOOST_TEST((small.store(dht::key_of(std::to_string(i)), byte_buffer(100), storage_t0 + 10 + i) == store_result::stored));
  BOOST_TEST(small.total_bytes() == 3u * 116);
  BOOST_TEST((small.store(dht::key_of("big"), byte_buffer(200), storage_t0 + 100) == store_result::stored));  // evicts 0 and 1
  BOOST_TEST(small.size() == 2u);
  BOOST_TEST(small.total_bytes() == 116u + 216u);
  BOOST_TEST(!small.get(dht::key_of("0")).has_value());
  BOOST_TEST(!small.get(dht::key_of("1")).has_value());
  BOOST_TEST((small.store(dht::key_of("huge"), byte_buffer(400), storage_t0 + 100) == store_result::too_large));
  BOOST_TEST(small.size() == 2u);
}

BOOST_AUTO_TEST_CASE(size_limits) {
  dht::storage small({.max_value_size = 8, .max_subkey_size = 4, .max_subkeys = 2}, clock);
  BOOST_TEST((small.store(key, byte_buffer(9), storage_t0 + 1) == store_result::too_large));
  BOOST_TEST((small.store(key, byte_buffer(8), storage_t0 + 1) == store_result::stored));
  BOOST_TEST((small.store_subkey(key, byte_buffer(5), byte_buffer(1), storage_t0 + 2) == store_result::too_large));
  BOOST_TEST((small.store_subkey(key, to_buffer("a"), byte_buffer(9), storage_t0 + 2) == store_result::too_large));
  BOOST_TEST((small.store_subkey(key, to_buffer("a"), byte_buffer(1), storage_t0 + 2) == store_result::stored));
  BOOST_TEST((small.store_subkey(key, to_buffer("b"), byte_buffer(1), storage_t0 + 2) == store_result::stored));
  BOOST_TEST((small.store_subkey(key, to_buffer("c"), byte_buffer(1), storage_t0 + 2) == store_result::too_large));
  BOOST_TEST(small.get(key)->subkeys.size() == 2u);
}

BOOST_AUTO_TEST_CASE(subkeys_merge_and_each_is_newer_wins) {
  BOOST_TEST((store.store_subkey(key, to_buffer("17"), to_buffer("a"), storage_t0 + 10) == store_result::stored));
  BOOST_TEST((store.store_subkey(key, to_buffer("18"), to_buffer("b"), storage_t0 + 5) == store_result::stored));
  BOOST_TEST((store.store_subkey(key, to_buffer("17"), to_buffer("c"), storage_t0 + 10) == store_result::not_newer));
  BOOST_TEST((store.store_subkey(key, to_buffer("17"), to_buffer("d"), storage_t0 + 8) == store_result::not_newer));
  BOOST_TEST((store.store_subkey(key, to_buffer("18"), to_buffer("e"), storage_t0 + 6) == store_result::stored));
  BOOST_TEST(subkey_value(key, "17") == "a");
  BOOST_TEST(subkey_value(key, "18") == "e");
  // The key lives as long as its latest subkey.
  BOOST_TEST(store.get(key)->expiration() == storage_t0 + 10);
}

BOOST_AUTO_TEST_CASE(expired_subkeys_drop_out_and_the_key_lives_until_the_latest) {
  store.store_subkey(key, to_buffer("17"), to_buffer("a"), storage_t0 + 10);
  store.store_subkey(key, to_buffer("18"), to_buffer("b"), storage_t0 + 5);
  advance(6);
  BOOST_TEST(store.get(key)->subkeys.size() == 1u);
  BOOST_TEST(subkey_value(key, "18") == "<missing>");
  // An expired subkey can be written again with any unexpired expiration.
  BOOST_TEST((store.store_subkey(key, to_buffer("18"), to_buffer("c"), storage_t0 + 7) == store_result::stored));
  BOOST_TEST(subkey_value(key, "18") == "c");
  advance(5);
  BOOST_TEST(!store.get(key).has_value());
}

BOOST_AUTO_TEST_CASE(a_plain_value_is_replaced_by_a_dictionary_only_when_newer) {
  store.store(key, to_buffer("plain"), storage_t0 + 10);
  BOOST_TEST((store.store_subkey(key, to_buffer("17"), to_buffer("a"), storage_t0 + 10) == store_result::not_newer));
  BOOST_TEST((store.store_subkey(key, to_buffer("17"), to_buffer("a"), storage_t0 + 9) == store_result::not_newer));
  BOOST_TEST(value_of(key) == "plain");
  BOOST_TEST((store.store_subkey(key, to_buffer("17"), to_buffer("a"), storage_t0 + 11) == store_result::stored));
  BOOST_TEST(subkey_value(key, "17") == "a");
  BOOST_TEST(store.get(key)->subkeys.size() == 1u);
}

BOOST_AUTO_TEST_CASE(a_dictionary_is_replaced_by_a_plain_value_only_when_newer_than_its_latest_subkey) {
  store.store_subkey(key, to_buffer("17"), to_buffer("a"), storage_t0 + 10);
  store.store_subkey(key, to_buffer("18"), to_buffer("b"), storage_t0 + 20);
  BOOST_TEST((store.store(key, to_buffer("plain"), storage_t0 + 15) == store_result::not_newer));
  BOOST_TEST((store.store(key, to_buffer("plain"), storage_t0 + 20) == store_result::not_newer));
  BOOST_TEST(subkey_value(key, "18") == "b");
  BOOST_TEST((store.store(key, to_buffer("plain"), storage_t0 + 21) == store_result::stored));
  BOOST_TEST(value_of(key) == "plain");
  // And back: a dictionary newer than the plain value replaces it whole.
  BOOST_TEST((store.store_subkey(key, to_buffer("19"), to_buffer("c"), storage_t0 + 22) == store_result::stored));
  BOOST_TEST(store.get(key)->subkeys.size() == 1u);
  BOOST_TEST(subkey_value(key, "19") == "c");
}

BOOST_AUTO_TEST_CASE(whole_dictionaries_merge_by_put) {
  store.store_subkey(key, to_buffer("17"), to_buffer("a"), storage_t0 + 10);
  dht::record incoming;
  incoming.is_dictionary = true;
  incoming.subkeys[to_buffer("17")] = {to_buffer("old"), storage_t0 + 9, {}};
  incoming.subkeys[to_buffer("18")] = {to_buffer("new"), storage_t0 + 9, {}};
  BOOST_TEST((store.put(key, incoming) == store_result::stored));
  BOOST_TEST(subkey_value(key, "17") == "a");
  BOOST_TEST(subkey_value(key, "18") == "new");
  BOOST_TEST((store.put(key, incoming) == store_result::not_newer));
  dht::record empty;
  empty.is_dictionary = true;
  BOOST_TEST((store.put(key, empty) == store_result::invalid));
}

BOOST_AUTO_TEST_CASE(byte_accounting_follows_every_change) {
  store.store(key, byte_buffer(10), storage_t0 + 10);
  BOOST_TEST(store.total_bytes() == 16u + 10);
  store.store_subkey(key, to_buffer("ab"), byte_buffer(5), storage_t0 + 11, byte_buffer(3));
  BOOST_TEST(store.total_bytes() == 16u + 2 + 5 + 3);
  store.store_subkey(key, to_buffer("c"), byte_buffer(1), storage_t0 + 12);
  BOOST_TEST(store.total_bytes() == 16u + 10 + 2);
  advance(20);
  store.drop_expired();
  BOOST_TEST(store.total_bytes() == 0u);
}

BOOST_AUTO_TEST_SUITE_END()
