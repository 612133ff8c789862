// Tests of dmoe/dht/record_validator.hpp: forged, foreign and replayed signed records are refused.
#include <dmoe/dht/record_validator.hpp>
#include <dmoe/dht/storage.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;
using dht::validation;

namespace {

constexpr wall_seconds t0 = 1.0e9;

struct fixture {
  dht::record_validator validator;
  dht::ed25519_keypair alice = dht::ed25519_keypair::generate();
  dht::ed25519_keypair mallory = dht::ed25519_keypair::generate();
  const dht::key_id key = dht::key_of("ffn.3.");
  const byte_buffer alice_subkey = to_buffer("17" + dht::owner_tag(alice.public_key()));

  dht::timed_value signed_by(const dht::ed25519_keypair& who, const byte_buffer* subkey, std::string_view value,
                             wall_seconds expiration) const {
    return {to_buffer(value), expiration, dht::sign_record(who, key, subkey, as_bytes(value), expiration)};
  }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(dht_record_validator, fixture)

BOOST_AUTO_TEST_CASE(owner_tags_round_trip) {
  const auto owner = dht::owner_of(alice_subkey);
  BOOST_TEST_REQUIRE(owner.has_value());
  BOOST_TEST((*owner == alice.public_key()));
  BOOST_TEST(!dht::owner_of(to_buffer("17")).has_value());
  BOOST_TEST(!dht::owner_of(to_buffer("[owner:abc]")).has_value());
}

BOOST_AUTO_TEST_CASE(a_valid_signature_by_the_owner_is_accepted) {
  const auto v = signed_by(alice, &alice_subkey, "10.0.0.1:4000", t0 + 10);
  BOOST_TEST((validator.validate(key, &alice_subkey, v, std::nullopt) == validation::ok));
  // Unsigned records under subkeys nobody owns need no signature.
  const byte_buffer plain_subkey = to_buffer("18");
  BOOST_TEST((validator.validate(key, &plain_subkey, {to_buffer("x"), t0 + 10, {}}, std::nullopt) == validation::ok));
}

BOOST_AUTO_TEST_CASE(a_forged_signature_is_refused) {
  auto v = signed_by(alice, &alice_subkey, "10.0.0.1:4000", t0 + 10);
  v.signature.back() ^= std::byte{1};
  BOOST_TEST((validator.validate(key, &alice_subkey, v, std::nullopt) == validation::bad_signature));
  // The signature covers value, expiration, key and subkey: changing any of them breaks it.
  auto edited = signed_by(alice, &alice_subkey, "10.0.0.1:4000", t0 + 10);
  edited.value = to_buffer("10.6.6.6:4000");
  BOOST_TEST((validator.validate(key, &alice_subkey, edited, std::nullopt) == validation::bad_signature));
  edited = signed_by(alice, &alice_subkey, "10.0.0.1:4000", t0 + 10);
  edited.expiration = t0 + 1000;
  BOOST_TEST((validator.validate(key, &alice_subkey, edited, std::nullopt) == validation::bad_signature));
  edited = signed_by(alice, &alice_subkey, "10.0.0.1:4000", t0 + 10);
  BOOST_TEST((validator.validate(dht::key_of("ffn.4."), &alice_subkey, edited, std::nullopt) ==
              validation::bad_signature));
  auto short_blob = signed_by(alice, &alice_subkey, "10.0.0.1:4000", t0 + 10);
  short_blob.signature.pop_back();
  BOOST_TEST((validator.validate(key, &alice_subkey, short_blob, std::nullopt) == validation::malformed_signature));
  // An owner's subkey without a signature.
  BOOST_TEST((validator.validate(key, &alice_subkey, {to_buffer("x"), t0 + 10, {}}, std::nullopt) ==
              validation::missing_signature));
}

// The validator remembers records that verified: only a byte-for-byte copy skips the check, so a copy edited in
// any field after the original was remembered is still refused, also once the memory started over.
BOOST_AUTO_TEST_CASE(remembered_verifications_cover_exact_copies_only) {
  const auto v = signed_by(alice, &alice_subkey, "10.0.0.1:4000", t0 + 10);
  BOOST_TEST((validator.validate(key, &alice_subkey, v, std::nullopt) == validation::ok));
  for (int round = 0; round < 2; ++round) {
    BOOST_TEST((validator.validate(key, &alice_subkey, v, std::nullopt) == validation::ok));
    auto edited = v;
    edited.value = to_buffer("10.6.6.6:4000");
    BOOST_TEST((validator.validate(key, &alice_subkey, edited, std::nullopt) == validation::bad_signature));
    edited = v;
    edited.expiration = t0 + 1000;
    BOOST_TEST((validator.validate(key, &alice_subkey, edited, std::nullopt) == validation::bad_signature));
    edited = v;
    edited.signature[40] ^= std::byte{1};
    BOOST_TEST((validator.validate(key, &alice_subkey, edited, std::nullopt) == validation::bad_signature));
    BOOST_TEST((validator.validate(dht::key_of("ffn.4."), &alice_subkey, v, std::nullopt) == validation::bad_signature));
    const byte_buffer other_subkey = to_buffer("18" + dht::owner_tag(alice.public_key()));
    BOOST_TEST((validator.validate(key, &other_subkey, v, std::nullopt) == validation::bad_signature));
    // Fill the memory past its size so that it starts over, then check again.
    for (std::size_t i = 0; i * 200 < dht::record_validator::max_remembered_bytes; ++i)
      BOOST_TEST_REQUIRE((validator.validate(key, &alice_subkey, signed_by(alice, &alice_subkey, "x", t0 + 11 + i),
                                             std::nullopt) == validation::ok));
  }
}

BOOST_AUTO_TEST_CASE(a_record_signed_by_another_key_is_refused) {
  const auto v = signed_by(mallory, &alice_subkey, "10.6.6.6:4000", t0 + 10);
  BOOST_TEST((validator.validate(key, &alice_subkey, v, std::nullopt) == validation::wrong_owner));
}

BOOST_AUTO_TEST_CASE(a_signed_value_is_replaced_only_by_its_signer_and_only_when_newer) {
  manual_clock clock(t0);
  dht::storage store({}, clock);
  // A plain key becomes alice's with her first signed store.
  const auto v1 = signed_by(alice, nullptr, "v1", t0 + 10);
  const auto v2 = signed_by(alice, nullptr, "v2", t0 + 20);
  BOOST_TEST((validator.validate(key, nullptr, v2, store.get(key)) == validation::ok));
  BOOST_TEST((store.put(key, dht::record{false, v2, {}}) == dht::store_result::stored));

  // Replaying her older record is refused (by the validator, and by storage's newer-wins rule).
  BOOST_TEST((validator.validate(key, nullptr, v1, store.get(key)) == validation::replay));
  BOOST_TEST((store.put(key, dht::record{false, v1, {}}) == dht::store_result::not_newer));
  // Others cannot overwrite it, signed or not, however late their expiration.
  BOOST_TEST((validator.validate(key, nullptr, signed_by(mallory, nullptr, "m", t0 + 99), store.get(key)) ==
              validation::wrong_owner));
  BOOST_TEST((validator.validate(key, nullptr, {to_buffer("m"), t0 + 99, {}}, store.get(key)) ==
              validation::missing_signature));
  // Nor replace it by a dictionary.
  const byte_buffer other = to_buffer("x");
  BOOST_TEST((validator.validate(key, &other, {to_buffer("m"), t0 + 99, {}}, store.get(key)) ==
              validation::missing_signature));
  // Alice's newer record goes through.
  BOOST_TEST((validator.validate(key, nullptr, signed_by(alice, nullptr, "v3", t0 + 30), store.get(key)) ==
              validation::ok));
}

BOOST_AUTO_TEST_CASE(signed_subkeys_are_protected_within_a_dictionary) {
  manual_clock clock(t0);
  dht::storage store({}, clock);
  const auto mine = signed_by(alice, &alice_subkey, "a", t0 + 10);
  BOOST_TEST((store.put(key, dht::record::single_subkey(alice_subkey, mine.value, mine.expiration, mine.signature)) ==
              dht::store_result::stored));
  const byte_buffer open_subkey = to_buffer("18");
  // Other subkeys stay writable by anyone.
  BOOST_TEST((validator.validate(key, &open_subkey, {to_buffer("b"), t0 + 50, {}}, store.get(key)) == validation::ok));
  // A plain value would wipe alice's subkey: refused unless alice signs it.
  BOOST_TEST((validator.validate(key, nullptr, {to_buffer("p"), t0 + 50, {}}, store.get(key)) ==
              validation::missing_signature));
  BOOST_TEST((validator.validate(key, nullptr, signed_by(mallory, nullptr, "p", t0 + 50), store.get(key)) ==
              validation::wrong_owner));
  // A replay of an older signed subkey is refused.
  const auto older = signed_by(alice, &alice_subkey, "old", t0 + 5);
  BOOST_TEST((validator.validate(key, &alice_subkey, older, store.get(key)) == validation::replay));
}

BOOST_AUTO_TEST_SUITE_END()
