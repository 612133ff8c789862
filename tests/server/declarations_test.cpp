// Tests of the server's DHT declarations (server/declarer.hpp, moe/expert_records.hpp): uid and prefix entries,
// signed by the server's key, gone after their expiration once the server stops, not overwritable by another key.
// The DHT runs on a manual clock, so expirations pass without sleeping.
#include <dmoe/dht/node_thread.hpp>
#include <dmoe/moe/expert_records.hpp>
#include <dmoe/server/background_server.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "server_test_support.hpp"

using namespace dmoe;
using namespace dmoe::server;
using namespace std::chrono_literals;

namespace {

dht::node_options dht_options(const clock_source& clock) {
  dht::node_options o;
  o.listen = endpoint::loopback_v4(0);
  o.clock = &clock;
  o.rpc_timeout = std::chrono::milliseconds(500);
  return o;
}

server_options dht_server_options(const dht::node_thread& bootstrap, const clock_source& clock,
                                  std::vector<std::string> uids) {
  auto o = dmoe_test::small_options(std::move(uids), 8);
  o.dht = dht_options(clock);
  o.initial_peers = {bootstrap.local_endpoint()};
  o.declarations.update_period = std::chrono::milliseconds(60'000);  // one declaration at start in these tests
  return o;
}

// The record under `key` once the server's first declaration round is done.
std::optional<dht::record> wait_for(dht::node_thread& peer, const std::string& key, background_server& s) {
  BOOST_REQUIRE(s.get().wait_for_declarations(1, std::chrono::seconds(20)));
  return peer.get(dht::key_of(key), true);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(server_declarations, *boost::unit_test::label("integration"))

BOOST_AUTO_TEST_CASE(uids_and_prefixes_are_declared_signed_and_expire_after_the_server_stops) {
  manual_clock clock(2.0e9);
  dht::node_thread bootstrap(dht_options(clock));
  dht::node_thread peer(dht_options(clock));
  BOOST_REQUIRE(peer.bootstrap({bootstrap.local_endpoint()}).joined);
  auto o = dht_server_options(bootstrap, clock, {"ffn.0.3", "ffn.0.4", "ffn.1.3"});
  o.declarations.expiration = std::chrono::milliseconds(90'000);
  std::optional<background_server> s(std::in_place, o);
  const auto key = *s->get().public_key();
  const endpoint at = s->rpc_endpoint();

  const auto uid = wait_for(peer, "ffn.1.3", *s);
  BOOST_REQUIRE(uid);
  BOOST_REQUIRE(!uid->is_dictionary);
  const auto declared = moe::decode_declaration(uid->value.value, uid->value.expiration);
  BOOST_REQUIRE(declared);
  BOOST_TEST(declared->uid == "ffn.1.3");
  BOOST_TEST(declared->server == at);
  BOOST_TEST(declared->expiration == clock.wall_now() + 90.0);
  BOOST_TEST((moe::declaration_signer(uid->value) == key));

  // Prefix entries: one successor set of the server's under each prefix, under its owner subkey and signed by it:
  // "ffn." leads on to 0 and 1; "ffn.0." holds experts 3 and 4 at the server's endpoint.
  const auto top = peer.get(dht::key_of("ffn."), true);
  BOOST_REQUIRE(top && top->is_dictionary);
  BOOST_REQUIRE_EQUAL(top->subkeys.size(), 1u);
  BOOST_TEST(as_string_view(top->subkeys.begin()->first) == dht::owner_tag(key));
  BOOST_TEST((moe::declaration_signer(top->subkeys.begin()->second) == key));
  const auto top_set = moe::decode_successor_set(top->subkeys.begin()->second.value);
  BOOST_REQUIRE(top_set);
  BOOST_TEST((top_set->inner == std::vector<moe::coordinate_range>{{0, 2}}));
  BOOST_TEST(top_set->leaves.empty());
  const auto row = peer.get(dht::key_of("ffn.0."), true);
  BOOST_REQUIRE(row && row->is_dictionary);
  const moe::prefix_successors successors = moe::read_successors(row);
  BOOST_TEST(successors.leaf_coordinates() == (std::vector<std::uint32_t>{3, 4}), boost::test_tools::per_element());
  BOOST_REQUIRE(successors.expert_server(4));
  BOOST_TEST(*successors.expert_server(4) == at);

  s.reset();  // stops the server: no more declarations
  BOOST_TEST(peer.get(dht::key_of("ffn.1.3"), true).has_value());  // still alive until its expiration
  clock.advance(std::chrono::seconds(91));
  BOOST_TEST(!peer.get(dht::key_of("ffn.1.3"), true).has_value());
  BOOST_TEST(!peer.get(dht::key_of("ffn.0."), true).has_value());
}

BOOST_AUTO_TEST_CASE(a_declaration_signed_by_another_key_is_refused) {
  manual_clock clock(2.0e9);
  dht::node_thread bootstrap(dht_options(clock));
  dht::node_thread peer(dht_options(clock));
  BOOST_REQUIRE(peer.bootstrap({bootstrap.local_endpoint()}).joined);
  background_server s(dht_server_options(bootstrap, clock, {"ffn.0.0"}));
  BOOST_REQUIRE(wait_for(peer, "ffn.0.0", s));

  // An attacker redirects ffn.0.0 to itself, signing with its own key and a later expiration: its uid record is
  // refused (the server's key owns it); its successor sets are stored under its own owner subkey, which makes
  // ffn.0.0 contested, settled by the uid record (moe::beam_search).
  const auto attacker = dht::ed25519_keypair::generate();
  const endpoint fake("127.0.0.1", 1);
  const auto entries = moe::declaration_entries({"ffn.0.0"}, fake, clock.wall_now() + 1000, attacker);
  const auto outcomes = peer.store_many(entries);
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].subkey) {
      BOOST_TEST(outcomes[i].replicas > 0u);
    } else {
      BOOST_TEST(outcomes[i].replicas == 0u);
      BOOST_TEST((outcomes[i].refusal == dht::store_result::refused));
    }
  }
  // Unsigned, it is refused as well.
  const auto unsigned_outcome =
      peer.store(dht::key_of("ffn.0.0"), moe::encode_declaration("ffn.0.0", fake), clock.wall_now() + 1000);
  BOOST_TEST(unsigned_outcome.replicas == 0u);
  const auto found = peer.get(dht::key_of("ffn.0.0"), true);
  BOOST_REQUIRE(found);
  BOOST_TEST(moe::decode_declaration(found->value.value, found->value.expiration)->server == s.rpc_endpoint());
  const auto row = moe::read_successors(peer.get(dht::key_of("ffn.0."), true));
  BOOST_TEST(row.is_contested(0));
  // Nor can it replace the server's own successor set: that subkey is owned by the server's key.
  auto forged = entries.back();
  BOOST_REQUIRE(forged.subkey);
  forged.subkey = to_buffer(dht::owner_tag(*s.get().public_key()));
  forged = dht::store_entry{forged.key, forged.subkey, forged.value, forged.expiration, {}}.signed_by(attacker);
  BOOST_TEST(peer.store_many({forged})[0].replicas == 0u);
}

BOOST_AUTO_TEST_CASE(start_and_stop_three_times_on_one_dht_keeping_the_identity_in_the_key_file) {
  manual_clock clock(2.0e9);
  dmoe_test::temp_dir dir;
  dht::node_thread bootstrap(dht_options(clock));
  dht::node_thread peer(dht_options(clock));
  BOOST_REQUIRE(peer.bootstrap({bootstrap.local_endpoint()}).joined);
  auto o = dht_server_options(bootstrap, clock, {"ffn.5.5"});
  o.key_file = dir.path / "server.key";
  std::optional<dht::ed25519_public_key> first_key;
  for (int round = 0; round < 3; ++round) {
    background_server s(o);
    if (!first_key) first_key = s.get().public_key();
    BOOST_TEST((s.get().public_key() == first_key));  // the same identity after a restart
    // Each round's server is found at its own new address (a newer declaration by the same key wins).
    const auto found = wait_for(peer, "ffn.5.5", s);
    BOOST_REQUIRE(found);
    const auto declared = moe::decode_declaration(found->value.value, found->value.expiration);
    BOOST_REQUIRE(declared);
    BOOST_TEST(declared->server == s.rpc_endpoint());
    dmoe_test::expert_client client;
    BOOST_TEST(client.forward(declared->server, "ffn.5.5", dmoe_test::random_batch(2, 8, 1)).dim(0) == 2);
    s.stop();
    clock.advance(std::chrono::seconds(1));  // the next round's declaration is strictly newer
  }
  // A corrupt key file is refused with a clear error.
  std::ofstream(o.key_file) << "xyz\n";
  BOOST_CHECK_THROW(background_server{o}, corrupt_error);
}

BOOST_AUTO_TEST_SUITE_END()
