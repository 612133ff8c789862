// Tests of dmoe/dht/node_id.hpp: XOR metric, ordering, prefixes, key hashing, hex and byte forms, random ids.
#include <dmoe/dht/node_id.hpp>

#include <boost/test/unit_test.hpp>

#include <random>
#include <set>

using namespace dmoe;
using dht::node_id;

BOOST_AUTO_TEST_SUITE(dht_node_id)

BOOST_AUTO_TEST_CASE(xor_metric_properties) {
  std::mt19937_64 gen(1);
  for (int i = 0; i < 1000; ++i) {
    const node_id a = dht::random_node_id(gen), b = dht::random_node_id(gen), c = dht::random_node_id(gen);
    BOOST_TEST((dht::distance(a, a) == node_id{}));
    BOOST_TEST((dht::distance(a, b) == dht::distance(b, a)));
    // Unidirectionality: for a given distance there is one point.
    BOOST_TEST(((a ^ dht::distance(a, b)) == b));
    // Triangle inequality holds for XOR as unsigned numbers: d(a,c) <= d(a,b) + d(b,c) (checked on the high word).
    const auto ac = dht::distance(a, c).high, ab = dht::distance(a, b).high, bc = dht::distance(b, c).high;
    BOOST_TEST((ac <= ab + bc || ab + bc < ab));  // skip when the sum overflows
  }
}

BOOST_AUTO_TEST_CASE(ordering_is_numeric_and_bits_count_from_the_top) {
  const node_id small{0, ~0ull}, large{1, 0};
  BOOST_TEST((small < large));
  const node_id top{1ull << 63, 0};
  BOOST_TEST(top.bit(0));
  BOOST_TEST(!top.bit(1));
  BOOST_TEST((node_id{0, 1}.bit(127)));
  BOOST_TEST((node_id{0, 1ull << 63}.bit(64)));
  BOOST_TEST((node_id{}.with_bit(0, true) == top));
  BOOST_TEST((node_id{}.with_bit(127, true) == node_id{0, 1}));
  BOOST_TEST((top.with_bit(0, false) == node_id{}));
}

BOOST_AUTO_TEST_CASE(prefix_and_common_prefix_length) {
  const node_id all{~0ull, ~0ull};
  BOOST_TEST((all.prefix(0) == node_id{}));
  BOOST_TEST((all.prefix(1) == node_id{1ull << 63, 0}));
  BOOST_TEST((all.prefix(64) == node_id{~0ull, 0}));
  BOOST_TEST((all.prefix(65) == node_id{~0ull, 1ull << 63}));
  BOOST_TEST((all.prefix(128) == all));
  BOOST_TEST(dht::common_prefix_length(all, all) == 128u);
  BOOST_TEST(dht::common_prefix_length(all, node_id{}) == 0u);
  BOOST_TEST(dht::common_prefix_length(node_id{0, 1}, node_id{0, 0}) == 127u);
  BOOST_TEST(dht::common_prefix_length(node_id{1, 0}, node_id{0, 0}) == 63u);
}

BOOST_AUTO_TEST_CASE(key_is_xxh3_128) {
  const auto h = xxh3_128("ffn.3.17");
  const auto key = dht::key_of("ffn.3.17");
  BOOST_TEST(key.high == h.high);
  BOOST_TEST(key.low == h.low);
  BOOST_TEST((dht::key_of("ffn.3.17") != dht::key_of("ffn.3.18")));
}

BOOST_AUTO_TEST_CASE(hex_and_bytes_round_trip) {
  const node_id id{0x0123456789abcdefull, 0xfedcba9876543210ull};
  BOOST_TEST(id.to_hex() == "0123456789abcdeffedcba9876543210");
  BOOST_TEST((node_id::from_hex("0123456789ABCDEFfedcba9876543210") == id));
  const auto bytes = id.to_bytes();
  BOOST_TEST(static_cast<int>(bytes[0]) == 0x01);
  BOOST_TEST(static_cast<int>(bytes[15]) == 0x10);
  BOOST_TEST((node_id::from_bytes(bytes) == id));
  BOOST_CHECK_THROW(node_id::from_hex("0123"), invalid_argument_error);
  BOOST_CHECK_THROW(node_id::from_hex("0123456789abcdeffedcba987654321g"), invalid_argument_error);
  BOOST_CHECK_THROW(node_id::from_bytes(const_byte_span(bytes.data(), 15)), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(random_ids_differ) {
  std::set<node_id> seen;
  for (int i = 0; i < 1000; ++i) seen.insert(dht::random_node_id());
  BOOST_TEST(seen.size() == 1000u);
  std::mt19937_64 a(7), b(7);
  BOOST_TEST((dht::random_node_id(a) == dht::random_node_id(b)));
}

BOOST_AUTO_TEST_SUITE_END()
