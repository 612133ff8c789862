// Tests of dmoe/core/hash.hpp: stable values and the streaming checksum.
#include <dmoe/core/hash.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(core_hash)

BOOST_AUTO_TEST_CASE(streaming_equals_one_shot) {
  std::string text(10000, 'x');
  for (std::size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>(i * 31);
  xxh64_stream stream(5);
  stream.update(as_bytes(std::string_view(text).substr(0, 1234)));
  stream.update(as_bytes(std::string_view(text).substr(1234)));
  BOOST_TEST(stream.digest() == xxh64(as_bytes(text), 5));
}

BOOST_AUTO_TEST_CASE(known_values) {
  // Reference values of the xxHash specification for the empty input.
  BOOST_TEST(xxh64(as_bytes(""), 0) == 0xEF46DB3751D8E999ull);
  BOOST_TEST(xxh3_64(as_bytes("")) == 0x2D06800538D394C2ull);
}

BOOST_AUTO_TEST_CASE(ids_differ_and_order) {
  auto a = xxh3_128("ffn.3.17");
  auto b = xxh3_128("ffn.3.18");
  BOOST_TEST((a != b));
  BOOST_TEST(((a < b) != (b < a)));
  BOOST_TEST((xxh3_128("ffn.3.17") == a));
}

BOOST_AUTO_TEST_SUITE_END()
