// Tests of dmoe/dht/messages.hpp: round trips of every message, and malformed or oversized inputs refused.
#include <dmoe/dht/messages.hpp>

#include <boost/test/unit_test.hpp>

#include <cstring>
#include <limits>
#include <string>

using namespace dmoe;
using dht::node_id;

namespace {

dht::find_response sample_find_response() {
  dht::find_response m;
  m.client_mode = false;
  dht::find_result missing{dht::key_of("missing"), std::nullopt,
                           {{node_id{1, 2}, endpoint("127.0.0.5", 4100)}, {node_id{3, 4}, endpoint("::1", 4200)}}};
  dht::find_result plain{dht::key_of("plain"), dht::record::plain(to_buffer("value"), 1.0e9 + 0.25), {}};
  dht::record dict = dht::record::single_subkey(to_buffer("17"), to_buffer("10.0.0.1:80"), 1.0e9 + 30);
  dict.subkeys[to_buffer("18")] = {to_buffer("x"), 1.0e9 + 31, byte_buffer(96, std::byte{7})};
  dht::find_result dictionary{dht::key_of("ffn.3."), dict, {{node_id{5, 6}, endpoint("10.1.2.3", 65535)}}};
  m.results = {missing, plain, dictionary};
  return m;
}

dht::store_request sample_store_request() {
  dht::store_request m;
  m.client_mode = true;
  m.items.push_back({dht::key_of("ffn.3.17"), std::nullopt, {to_buffer("127.0.0.1:4000"), 1.0e9 + 60, {}}});
  m.items.push_back({dht::key_of("ffn.3."), to_buffer("17"), {to_buffer("x"), 1.0e9 + 61, byte_buffer(96)}});
  return m;
}

template <class Decode>
void expect_protocol_error(const byte_buffer& bytes, Decode decode, std::string_view expected_text) {
  try {
    decode(bytes);
    BOOST_ERROR("decoded malformed bytes; expected an error containing: " << expected_text);
  } catch (const protocol_error& e) {
    BOOST_TEST_CONTEXT(e.what()) { BOOST_TEST(std::string(e.what()).find(expected_text) != std::string::npos); }
  }
}

void patch_u32(byte_buffer& bytes, std::size_t offset, std::uint32_t value) {
  std::memcpy(bytes.data() + offset, &value, 4);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(dht_messages)

BOOST_AUTO_TEST_CASE(ping_round_trips) {
  const dht::ping_request req{true};
  BOOST_TEST((dht::decode_ping_request(dht::encode(req)) == req));
  for (const auto& address : {endpoint("127.0.0.5", 4100), endpoint("fe80::1", 1), endpoint("::", 0)}) {
    const dht::ping_response resp{false, address};
    BOOST_TEST((dht::decode_ping_response(dht::encode(resp)) == resp));
  }
  BOOST_TEST(dht::encode(req).size() == 2u);  // version and flags
}

BOOST_AUTO_TEST_CASE(store_round_trips) {
  const auto req = sample_store_request();
  BOOST_TEST((dht::decode_store_request(dht::encode(req)) == req));
  dht::store_response resp{false, {dht::store_result::stored, dht::store_result::not_newer, dht::store_result::no_room}};
  BOOST_TEST((dht::decode_store_response(dht::encode(resp)) == resp));
}

BOOST_AUTO_TEST_CASE(find_round_trips) {
  dht::find_request req{false, {dht::key_of("a"), dht::key_of("b"), dht::key_of("c")}};
  BOOST_TEST((dht::decode_find_request(dht::encode(req)) == req));
  const auto resp = sample_find_response();
  BOOST_TEST((dht::decode_find_response(dht::encode(resp)) == resp));
  // Empty messages are fine too.
  BOOST_TEST((dht::decode_find_response(dht::encode(dht::find_response{})) == dht::find_response{}));
}

BOOST_AUTO_TEST_CASE(layout_is_little_endian_with_big_endian_ids) {
  dht::find_request req{false, {node_id{0x0102030405060708ull, 0x090a0b0c0d0e0f10ull}}};
  const auto bytes = dht::encode(req);
  BOOST_TEST_REQUIRE(bytes.size() == 2u + 4 + 16);
  BOOST_TEST(static_cast<int>(bytes[0]) == dht::dht_wire_version);
  BOOST_TEST(static_cast<int>(bytes[2]) == 1);  // u32 count, little-endian
  BOOST_TEST(static_cast<int>(bytes[5]) == 0);
  BOOST_TEST(static_cast<int>(bytes[6]) == 1);  // id, most significant byte first
  BOOST_TEST(static_cast<int>(bytes[21]) == 0x10);
}

BOOST_AUTO_TEST_CASE(every_truncation_is_refused) {
  const auto full = dht::encode(sample_find_response());
  for (std::size_t n = 0; n < full.size(); ++n) {
    const byte_buffer cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    BOOST_CHECK_THROW(dht::decode_find_response(cut), protocol_error);
  }
  const auto store = dht::encode(sample_store_request());
  for (std::size_t n = 0; n < store.size(); ++n) {
    const byte_buffer cut(store.begin(), store.begin() + static_cast<std::ptrdiff_t>(n));
    BOOST_CHECK_THROW(dht::decode_store_request(cut), protocol_error);
  }
}

BOOST_AUTO_TEST_CASE(header_and_trailing_bytes_are_checked) {
  auto bytes = dht::encode(dht::ping_request{});
  bytes[0] = std::byte{9};
  expect_protocol_error(bytes, [](auto& b) { return dht::decode_ping_request(b); }, "unsupported DHT wire version 9");
  bytes = dht::encode(dht::ping_request{});
  bytes[1] = std::byte{2};
  expect_protocol_error(bytes, [](auto& b) { return dht::decode_ping_request(b); }, "unknown flags");
  bytes = dht::encode(dht::ping_request{});
  bytes.push_back(std::byte{0});
  expect_protocol_error(bytes, [](auto& b) { return dht::decode_ping_request(b); }, "1 unexpected trailing bytes");
}

BOOST_AUTO_TEST_CASE(counts_and_lengths_are_checked_against_limits) {
  dht::message_limits limits;
  limits.max_keys = 2;
  limits.max_value_size = 4;
  limits.max_peers = 1;
  limits.max_subkeys = 1;
  limits.max_signature_size = 8;

  dht::find_request three{false, {node_id{1, 0}, node_id{2, 0}, node_id{3, 0}}};
  expect_protocol_error(dht::encode(three), [&](auto& b) { return dht::decode_find_request(b, limits); },
                        "3 keys exceed limit 2");
  // A huge count with no bytes behind it is refused before anything is allocated.
  auto bytes = dht::encode(dht::find_request{false, {}});
  patch_u32(bytes, 2, 0xffffffffu);
  expect_protocol_error(bytes, [](auto& b) { return dht::decode_find_request(b); }, "4294967295 keys exceed limit");

  auto store = sample_store_request();
  store.items.resize(1);
  store.items[0].value.value = to_buffer("12345");
  expect_protocol_error(dht::encode(store), [&](auto& b) { return dht::decode_store_request(b, limits); },
                        "value of 5 bytes exceeds limit 4");
  store.items[0].value.value = to_buffer("1234");
  store.items[0].value.signature = byte_buffer(9);
  expect_protocol_error(dht::encode(store), [&](auto& b) { return dht::decode_store_request(b, limits); },
                        "signature of 9 bytes exceeds limit 8");

  auto find = sample_find_response();
  find.results.resize(1);  // the one with two peers
  expect_protocol_error(dht::encode(find), [&](auto& b) { return dht::decode_find_response(b, limits); },
                        "2 peers exceed limit 1");
  find = sample_find_response();
  find.results.erase(find.results.begin(), find.results.begin() + 2);  // the dictionary of two subkeys
  find.results[0].found->subkeys.begin()->second.signature.clear();
  find.results[0].found->subkeys.rbegin()->second.signature.clear();
  find.results[0].found->subkeys.begin()->second.value = to_buffer("1");
  expect_protocol_error(dht::encode(find), [&](auto& b) { return dht::decode_find_response(b, limits); },
                        "2 subkeys exceed limit 1");
}

BOOST_AUTO_TEST_CASE(bad_codes_and_values_are_refused) {
  auto store = sample_store_request();
  store.items.resize(1);
  store.items[0].value.expiration = std::numeric_limits<double>::quiet_NaN();
  expect_protocol_error(dht::encode(store), [](auto& b) { return dht::decode_store_request(b); }, "is not finite");

  store = sample_store_request();
  store.items.resize(1);
  auto bytes = dht::encode(store);
  bytes[2 + 4 + 16] = std::byte{2};  // the has_subkey flag
  expect_protocol_error(bytes, [](auto& b) { return dht::decode_store_request(b); }, "subkey flag 2");

  bytes = dht::encode(dht::store_response{false, {dht::store_result::stored}});
  bytes.back() = std::byte{200};
  expect_protocol_error(bytes, [](auto& b) { return dht::decode_store_response(b); }, "unknown store result 200");

  dht::find_response find;
  find.results.push_back({node_id{1, 1}, std::nullopt, {{node_id{2, 2}, endpoint("127.0.0.1", 1)}}});
  bytes = dht::encode(find);
  bytes[2 + 4 + 16] = std::byte{3};  // status
  expect_protocol_error(bytes, [](auto& b) { return dht::decode_find_response(b); }, "unknown status 3");
  bytes = dht::encode(find);
  bytes[2 + 4 + 16 + 1 + 4 + 16] = std::byte{5};  // the peer's address family
  expect_protocol_error(bytes, [](auto& b) { return dht::decode_find_response(b); }, "unknown address family 5");

  // A dictionary without subkeys, and one that repeats a subkey.
  dht::find_response dict;
  dict.results.push_back({node_id{1, 1}, dht::record::single_subkey(to_buffer("a"), to_buffer("v"), 10), {}});
  bytes = dht::encode(dict);
  auto empty = bytes;
  empty.resize(2 + 4 + 16 + 1);
  for (int i = 0; i < 8; ++i) empty.push_back(std::byte{0});  // zero subkeys, zero peers
  expect_protocol_error(empty, [](auto& b) { return dht::decode_find_response(b); }, "dictionary without subkeys");
  // Duplicate: count 2, then the same subkey entry twice.
  const std::size_t entries_at = 2 + 4 + 16 + 1 + 4;
  byte_buffer entry(bytes.begin() + entries_at, bytes.end() - 4);
  byte_buffer repeated(bytes.begin(), bytes.begin() + entries_at);
  patch_u32(repeated, entries_at - 4, 2);
  repeated.insert(repeated.end(), entry.begin(), entry.end());
  repeated.insert(repeated.end(), entry.begin(), entry.end());
  for (int i = 0; i < 4; ++i) repeated.push_back(std::byte{0});
  expect_protocol_error(repeated, [](auto& b) { return dht::decode_find_response(b); }, "repeats a subkey");
}

BOOST_AUTO_TEST_CASE(unspecified_endpoint_cannot_be_encoded) {
  dht::ping_response resp{false, endpoint{}};
  BOOST_CHECK_THROW(dht::encode(resp), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
