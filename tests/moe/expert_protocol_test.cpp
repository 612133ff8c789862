// Tests of moe/expert_uid.hpp, moe/expert_protocol.hpp and moe/expert_records.hpp: the uid grammar and patterns,
// message round trips and malformed messages, declaration entries.
#include <dmoe/moe/expert_protocol.hpp>
#include <dmoe/moe/expert_records.hpp>
#include <dmoe/moe/expert_uid.hpp>

#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

using namespace dmoe;
using namespace dmoe::moe;

BOOST_AUTO_TEST_SUITE(expert_protocol)

BOOST_AUTO_TEST_CASE(uid_grammar) {
  const auto c = parse_expert_uid("ffn_2.3.17");
  BOOST_TEST(c.name == "ffn_2");
  BOOST_TEST(c.coordinates == (std::vector<std::int64_t>{3, 17}), boost::test_tools::per_element());
  for (std::string bad : {"", "ffn", "ffn.", ".3", "3ffn.1", "ffn.-1", "ffn.01", "ffn.1.", "ffn..1", "f n.1",
                          "ffn.2147483648", "ffn.1e3"})
    BOOST_CHECK_THROW(parse_expert_uid(bad), invalid_argument_error);
  BOOST_TEST(is_valid_expert_uid("ffn.2147483647"));
  BOOST_TEST(!is_valid_expert_uid(std::string(300, 'a') + ".1"));
  const auto p = uid_prefixes("ffn.3.17");
  BOOST_REQUIRE_EQUAL(p.size(), 2u);
  BOOST_TEST(p[0].prefix == "ffn.");
  BOOST_TEST(p[0].next == "3");
  BOOST_TEST(p[1].prefix == "ffn.3.");
  BOOST_TEST(p[1].next == "17");
}

BOOST_AUTO_TEST_CASE(uid_grammar_of_the_issue_lists) {
  for (std::string good : {"ffn.3.17", "expert.0", "\u044d\u043a\u0441\u043f\u0435\u0440\u0442.3", "\u4e13\u5bb6.1.2"})
    BOOST_TEST(is_valid_expert_uid(good), good);
  BOOST_TEST(parse_expert_uid("\u044d\u043a\u0441\u043f\u0435\u0440\u0442.3").name == "\u044d\u043a\u0441\u043f\u0435\u0440\u0442");
  for (std::string bad : {"expert.01", "expert.-1", "a.b.2", "e..1", "ffn."}) {
    BOOST_TEST(!is_valid_expert_uid(bad), bad);
    BOOST_CHECK_THROW(parse_expert_uid(bad), invalid_argument_error);
  }
  // Names must be well-formed UTF-8: a lone continuation byte, a truncated sequence, an overlong form, a surrogate.
  for (std::string bad : {"\x80x.1", "\xd0.1", "\xc0\xaf.1", "\xed\xa0\x80.1"})
    BOOST_TEST(!is_valid_expert_uid(bad));
  BOOST_TEST(is_valid_uid_prefix("ffn."));
  BOOST_TEST(is_valid_uid_prefix("ffn.3."));
  for (std::string bad : {"ffn", "ffn.3", "ffn..", ".", ""}) BOOST_TEST(!is_valid_uid_prefix(bad), bad);
}

BOOST_AUTO_TEST_CASE(patterns_expand_row_major) {
  const auto uids = expand_expert_pattern("ffn.[0:2].[3:5]");
  BOOST_TEST(uids == (std::vector<std::string>{"ffn.0.3", "ffn.0.4", "ffn.1.3", "ffn.1.4"}),
             boost::test_tools::per_element());
  BOOST_TEST(expand_expert_pattern("ffn.[0:16].[0:16]").size() == 256u);
  BOOST_TEST(expand_expert_pattern("a.1, b.[0:2].7").size() == 3u);
  for (std::string bad : {"", "ffn.[3:3]", "ffn.[4:2]", "ffn.[0:x]", "ffn.[0:2", "ffn.[0:2].[0:2], ffn.1.1",
                          "ffn.[0:2000000]", "ffn.[0:2000].[0:2000]"})
    BOOST_CHECK_THROW(expand_expert_pattern(bad), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(requests_round_trip_and_malformed_ones_are_refused) {
  random_engine gen(1);
  const tensor x = tensor::normal(shape{3, 8}, gen);
  const tensor dy = tensor::normal(shape{3, 8}, gen);
  auto encoded = encode_expert_request("ffn.1.2", x, &dy, wire_codec::none, wire_codec::f16);
  byte_buffer bytes;
  for (auto piece : encoded.pieces) bytes.insert(bytes.end(), piece.begin(), piece.end());
  const auto req = decode_expert_request(bytes, expert_direction::backward);
  BOOST_TEST(req.uid == "ffn.1.2");
  BOOST_TEST((req.response_codec == wire_codec::f16));
  BOOST_TEST(std::memcmp(req.inputs.bytes_data(), x.bytes_data(), x.nbytes()) == 0);
  BOOST_TEST(std::memcmp(req.grad_outputs.bytes_data(), dy.bytes_data(), dy.nbytes()) == 0);
  // A backward request read as a forward one has trailing bytes; every truncation is refused.
  BOOST_CHECK_THROW(decode_expert_request(bytes, expert_direction::forward), protocol_error);
  for (std::size_t cut = 0; cut < bytes.size(); cut += 7)
    BOOST_CHECK_THROW(decode_expert_request(const_byte_span(bytes).first(cut), expert_direction::backward), error);
  // An element limit refuses a tensor before allocating it.
  BOOST_CHECK_THROW(decode_expert_request(bytes, expert_direction::backward, wire_limits{.max_elements = 10}),
                    protocol_error);
  // An unknown response codec.
  byte_buffer bad = bytes;
  bad[1 + 4 + 7] = std::byte{9};
  BOOST_CHECK_THROW(decode_expert_request(bad, expert_direction::backward), protocol_error);

  expert_info info{"ffn.1.2", "ffn", {{shape{8}}, {shape{8}}}, 64, 1234};
  const expert_info back = decode_info(encode_info(info));
  BOOST_TEST(back.uid == info.uid);
  BOOST_TEST(back.kind == "ffn");
  BOOST_TEST((back.schema.input == info.schema.input));
  BOOST_TEST(back.max_batch_size == 64);
  BOOST_TEST(back.parameter_count == 1234);
  BOOST_TEST(decode_info_request(encode_info_request("ffn.1.2")) == "ffn.1.2");
  BOOST_CHECK_THROW(decode_info_request(encode_info_request("ffn.x")), protocol_error);
}

BOOST_AUTO_TEST_CASE(declaration_entries_cover_uids_and_each_prefix_once) {
  const auto key = dht::ed25519_keypair::generate();
  const endpoint at("127.0.0.5", 4000);
  const auto entries = declaration_entries({"ffn.0.3", "ffn.0.4", "ffn.1.3"}, at, 1e9, key);
  BOOST_TEST(entries.size() == 6u);  // 3 uids + one successor set each under ffn., ffn.0., ffn.1.
  const dht::record_validator validator;
  std::size_t sets = 0;
  for (const auto& e : entries) {
    BOOST_TEST((validator.validate(e.key, e.subkey ? &*e.subkey : nullptr, {e.value, e.expiration, e.signature},
                                   std::nullopt) == dht::validation::ok));
    if (e.subkey) {
      BOOST_TEST(as_string_view(*e.subkey) == dht::owner_tag(key.public_key()));
      const auto set = decode_successor_set(e.value);
      BOOST_REQUIRE(set);
      BOOST_TEST(set->server == at);
      if (e.key == dht::key_of("ffn.0.")) {
        BOOST_TEST((set->leaves == std::vector<coordinate_range>{{3, 5}}));
        BOOST_TEST(set->inner.empty());
      }
      if (e.key == dht::key_of("ffn.")) {
        BOOST_TEST(set->leaves.empty());
        BOOST_TEST((set->inner == std::vector<coordinate_range>{{0, 2}}));
      }
      ++sets;
    } else {
      const auto d = decode_declaration(e.value, e.expiration);
      BOOST_REQUIRE(d);
      BOOST_TEST(d->server == at);
    }
  }
  BOOST_TEST(sets == 3u);
  BOOST_TEST(!decode_declaration(to_buffer("garbage"), 1.0));
  BOOST_TEST(!decode_declaration(encode_declaration("ffn.1", endpoint("127.0.0.1", 0)), 1.0));  // no port
  BOOST_TEST(!decode_successor_set(encode_successor_set({endpoint("127.0.0.1", 0), {{1, 2}}, {}})));  // no port
  BOOST_TEST(!decode_successor_set(to_buffer("garbage")));
  BOOST_TEST((ranges_of({0, 1, 2, 5, 7, 8}) == std::vector<coordinate_range>{{0, 3}, {5, 6}, {7, 9}}));
}

BOOST_AUTO_TEST_SUITE_END()
