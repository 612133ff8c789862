// Tests of moe/beam_search.hpp and the successors reader of moe/expert_records.hpp: the beam search over a list of
// experts (1-D, exact against the product-key top-k on sub-grids), and over a real DHT (declared records, k experts
// per query, negative caching seen from a fresh node).
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/dht/node.hpp>
#include <dmoe/moe/beam_search.hpp>
#include <dmoe/moe/expert_records.hpp>
#include <dmoe/moe/gating.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "dht/dht_test_support.hpp"
#include "remote_test_support.hpp"

using namespace dmoe;
using namespace dmoe::moe;
using namespace std::chrono_literals;

namespace {

endpoint fake_server(std::uint16_t port) { return endpoint("127.0.0.1", port); }

std::vector<std::vector<found_expert>> search(expert_directory& directory, const tensor& scores,
                                              const beam_search_options& options, std::int64_t k) {
  return sync_wait(beam_search(directory, scores, options, k));
}

// Every next coordinate of a prefix, leaf or inner.
std::set<std::uint32_t> coordinates_of(const prefix_successors& s) {
  std::set<std::uint32_t> out;
  for (const auto c : s.leaf_coordinates()) out.insert(c);
  for (const auto c : s.inner_coordinates()) out.insert(c);
  return out;
}

// "[a,b) [c,d)" for a list of ranges.
std::string successor_text(const std::vector<coordinate_range>& ranges) {
  std::string out;
  for (const auto& r : ranges) out += fmt::format("{}[{},{})", out.empty() ? "" : " ", r.begin, r.end);
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(moe_beam_search)

BOOST_AUTO_TEST_CASE(one_dimension_keeps_the_best_live_experts) {
  dmoe_test::list_directory directory;
  for (int c : {1, 2, 3, 5}) directory.add(fmt::format("expert.{}", c), fake_server(static_cast<std::uint16_t>(9000 + c)));
  std::vector<float> row(9);
  for (int i = 0; i < 9; ++i) row[static_cast<std::size_t>(i)] = static_cast<float>(i);
  const tensor scores = tensor::from(shape{1, 9}, std::span<const float>(row));
  const auto found = search(directory, scores, {"expert", {9}, 2}, 2);
  BOOST_REQUIRE_EQUAL(found.size(), 1u);
  BOOST_REQUIRE_EQUAL(found[0].size(), 2u);
  BOOST_TEST(found[0][0].uid == "expert.5");
  BOOST_TEST(found[0][1].uid == "expert.3");
  BOOST_TEST(found[0][0].score == 5.0f);
  BOOST_TEST(found[0][0].server == fake_server(9005));
  BOOST_TEST(directory.queries == 1u);  // one dimension: one query for the whole batch
}

BOOST_AUTO_TEST_CASE(equals_the_exhaustive_top_k_over_live_experts_on_a_sub_grid) {
  // 1,000 live experts: a 10 x 10 x 10 product sub-grid of a 32 x 32 x 32 grid.
  const std::vector<std::uint32_t> grid{32, 32, 32};
  std::mt19937_64 gen(17);
  std::vector<std::vector<std::uint32_t>> live(3);
  for (auto& dim : live) {
    std::vector<std::uint32_t> all(32);
    std::iota(all.begin(), all.end(), 0u);
    std::shuffle(all.begin(), all.end(), gen);
    dim.assign(all.begin(), all.begin() + 10);
  }
  dmoe_test::list_directory directory;
  for (auto a : live[0])
    for (auto b : live[1])
      for (auto c : live[2]) directory.add(fmt::format("ffn.{}.{}.{}", a, b, c), fake_server(9000));
  const std::int64_t batch = 25, k = 8;
  random_engine rng(5);
  const tensor scores = tensor::normal(shape{batch, 96}, rng);
  const auto found = search(directory, scores, {"ffn", grid, 0}, k);
  BOOST_TEST(directory.queries == 3u);  // one query per dimension for all 25 samples

  // Reference: the product-key top-k of scores where dead coordinates score -inf-like (far below any live sum).
  tensor masked = scores.clone();
  float* m = masked.data<float>();
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::size_t d = 0; d < 3; ++d)
      for (std::uint32_t c = 0; c < 32; ++c)
        if (std::find(live[d].begin(), live[d].end(), c) == live[d].end()) m[b * 96 + static_cast<std::int64_t>(d * 32 + c)] = -1e6f;
  const grid_selection exact = product_key_topk(masked, grid, k);
  for (std::int64_t b = 0; b < batch; ++b) {
    BOOST_REQUIRE_EQUAL(found[static_cast<std::size_t>(b)].size(), static_cast<std::size_t>(k));
    for (std::int64_t j = 0; j < k; ++j) {
      const auto want = exact.expert(b, j);
      const auto& got = found[static_cast<std::size_t>(b)][static_cast<std::size_t>(j)];
      BOOST_TEST(std::vector<std::uint32_t>(want.begin(), want.end()) == got.coordinates, "sample " << b << " rank " << j);
      BOOST_TEST(got.score == exact.score(b, j));
      BOOST_TEST(got.uid == fmt::format("ffn.{}.{}.{}", want[0], want[1], want[2]));
    }
  }
}

BOOST_AUTO_TEST_CASE(skips_excluded_experts_coordinates_outside_the_grid_and_lying_records) {
  dmoe_test::list_directory directory;
  directory.add("ffn.0.0", fake_server(9000));
  directory.add("ffn.0.1", fake_server(9001));
  directory.add("ffn.0.7", fake_server(9007));  // outside a 2 x 4 grid
  directory.add("ffn.1.2", fake_server(9012));
  const tensor scores = tensor::from(shape{1, 6}, {1.0f, 0.0f, 0.0f, 3.0f, 2.0f, 9.0f});
  auto found = sync_wait(beam_search(directory, scores, {"ffn", {2, 4}, 4}, 4, no_deadline,
                                     [](const std::string& uid) { return uid == "ffn.0.1"; }));
  BOOST_REQUIRE_EQUAL(found[0].size(), 2u);
  BOOST_TEST(found[0][0].uid == "ffn.1.2");
  BOOST_TEST(found[0][1].uid == "ffn.0.0");

  // Leaves and inner successors are told apart: under "ffn.", 0 and 1 lead further and no expert is named
  // "ffn.0", so a 1-D search over the same name finds nothing.
  const auto flat = search(directory, tensor::from(shape{1, 2}, {1.0f, 2.0f}), {"ffn", {2}, 2}, 2);
  BOOST_TEST(flat[0].empty());
  // An expert two servers claim is served where its own record says (the first declaration here), asked once.
  directory.add("ffn.1.3", fake_server(9013));
  directory.add("ffn.1.3", fake_server(9666));
  const auto claimed = search(directory, tensor::from(shape{1, 6}, {0.0f, 1.0f, 0.0f, 0.0f, 0.0f, 5.0f}), {"ffn", {2, 4}, 4}, 1);
  BOOST_REQUIRE_EQUAL(claimed[0].size(), 1u);
  BOOST_TEST(claimed[0][0].uid == "ffn.1.3");
  BOOST_TEST(claimed[0][0].server == fake_server(9013));
  BOOST_TEST(directory.owner_queries == 1u);
  BOOST_CHECK_THROW(search(directory, tensor::from(shape{1, 5}, {0.f, 0.f, 0.f, 0.f, 0.f}), {"ffn", {2, 4}, 4}, 1),
                    shape_error);
  BOOST_CHECK_THROW(search(directory, tensor::from(shape{1, 6}, {0.f, NAN, 0.f, 0.f, 0.f, 0.f}), {"ffn", {2, 4}, 4}, 1),
                    invalid_argument_error);
  BOOST_CHECK_THROW(search(directory, scores, {"ffn.", {2, 4}, 4}, 1), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(moe_beam_search_dht, *boost::unit_test::label("integration"))

BOOST_AUTO_TEST_CASE(declared_records_and_their_successors) {
  io_context ctx;
  dmoe_test::swarm nodes(ctx);
  sync_wait(ctx, nodes.run([&]() -> task<void> {
    nodes.add();
    BOOST_REQUIRE_EQUAL(co_await nodes.grow(7), 7u);
    const auto key = dht::ed25519_keypair::generate();
    const wall_seconds expiration = dmoe_test::now_wall() + 600;
    const endpoint server("127.0.0.1", 7000);
    const auto entries = declaration_entries({"e.1.2.3", "e.1.2.5", "e.2.0"}, server, expiration, key);
    // Exactly: three uid keys, and under each prefix one successor set under the server's owner subkey:
    // e. -> inner {1, 2}; e.1. -> inner {2}; e.1.2. -> leaves {3, 5}; e.2. -> leaves {0}.
    const std::string owner = dht::owner_tag(key.public_key());
    std::map<std::pair<dht::key_id, std::string>, std::string> got;
    for (const auto& e : entries) {
      std::string what = "<declaration>";
      if (e.subkey) {
        const auto set = decode_successor_set(e.value);
        BOOST_REQUIRE(set);
        BOOST_TEST(set->server == server);
        what = fmt::format("leaves {} inner {}", successor_text(set->leaves), successor_text(set->inner));
      } else {
        BOOST_TEST(decode_declaration(e.value, e.expiration)->server == server);
      }
      BOOST_TEST(got.emplace(std::pair{e.key, e.subkey ? std::string(as_string_view(*e.subkey)) : "<plain>"}, what).second);
    }
    const std::map<std::pair<dht::key_id, std::string>, std::string> want{
        {{dht::key_of("e.1.2.3"), "<plain>"}, "<declaration>"},
        {{dht::key_of("e.1.2.5"), "<plain>"}, "<declaration>"},
        {{dht::key_of("e.2.0"), "<plain>"}, "<declaration>"},
        {{dht::key_of("e."), owner}, "leaves  inner [1,3)"},
        {{dht::key_of("e.1."), owner}, "leaves  inner [2,3)"},
        {{dht::key_of("e.1.2."), owner}, "leaves [3,4) [5,6) inner "},
        {{dht::key_of("e.2."), owner}, "leaves [0,1) inner "}};
    BOOST_TEST((got == want));
    const auto stored = co_await nodes[3].store_many(entries);
    for (const auto& s : stored) BOOST_TEST(s.replicas > 0u);

    // Read from another node.
    const std::vector<std::string> prefixes{"e.1.2.", "e.2.", "e.4.5.", "e.", "e.1."};
    const std::vector<std::string> uids{"e.1.2.3", "e.2.0", "e.2.1"};
    const std::vector<std::string> not_prefix{"e"};
    const auto found = co_await successors(nodes[6], prefixes);
    BOOST_TEST(coordinates_of(found[0]) == (std::set<std::uint32_t>{3, 5}));
    BOOST_TEST(found[0].leaf_coordinates() == (std::vector<std::uint32_t>{3, 5}), boost::test_tools::per_element());
    BOOST_TEST(found[0].inner.empty());
    BOOST_REQUIRE(found[0].expert_server(5));
    BOOST_TEST(*found[0].expert_server(5) == server);
    BOOST_TEST(!found[0].expert_server(4));
    BOOST_TEST(coordinates_of(found[1]) == (std::set<std::uint32_t>{0}));
    BOOST_TEST(found[2].empty());
    BOOST_TEST(!found[2].found);
    BOOST_TEST(coordinates_of(found[3]) == (std::set<std::uint32_t>{1, 2}));
    BOOST_TEST(found[3].leaves.empty());
    BOOST_TEST(coordinates_of(found[4]) == (std::set<std::uint32_t>{2}));
    const auto experts = co_await get_experts(nodes[5], uids);
    BOOST_REQUIRE(experts[0].has_value());
    BOOST_TEST(experts[0]->server == server);
    BOOST_TEST(experts[1].has_value());
    BOOST_TEST(!experts[2].has_value());
    bool refused = false;
    try {
      co_await successors(nodes[6], not_prefix);
    } catch (const invalid_argument_error&) {
      refused = true;
    }
    BOOST_TEST(refused);
  }));
}

BOOST_AUTO_TEST_CASE(every_query_of_a_batch_gets_k_experts_on_a_20_node_dht) {
  io_context ctx;
  dmoe_test::swarm nodes(ctx);
  sync_wait(ctx, nodes.run([&]() -> task<void> {
    nodes.add();
    BOOST_REQUIRE_EQUAL(co_await nodes.grow(19), 19u);
    // 128 random experts of a 16 x 16 grid, declared by 4 "servers" (keys) through different nodes.
    std::mt19937_64 gen(3);
    std::set<std::pair<std::uint32_t, std::uint32_t>> cells;
    while (cells.size() < 128) cells.emplace(static_cast<std::uint32_t>(gen() % 16), static_cast<std::uint32_t>(gen() % 16));
    std::vector<std::vector<std::string>> per_server(4);
    std::size_t i = 0;
    for (const auto& [a, b] : cells) per_server[i++ % 4].push_back(fmt::format("ffn.{}.{}", a, b));
    const wall_seconds expiration = dmoe_test::now_wall() + 600;
    for (std::size_t s = 0; s < 4; ++s) {
      auto entries = declaration_entries(per_server[s], endpoint("127.0.0.1", static_cast<std::uint16_t>(7000 + s)),
                                         expiration, dht::ed25519_keypair::generate());
      const auto stored = co_await nodes[s * 4].store_many(entries);
      // Every server's entries are stored, prefixes shared with other servers included (each under its own
      // owner subkey).
      for (std::size_t e = 0; e < entries.size(); ++e) BOOST_REQUIRE(stored[e].replicas > 0u);
    }
    dht_expert_directory directory(nodes[19]);
    random_engine rng(11);
    const tensor scores = tensor::normal(shape{32, 32}, rng);
    const std::int64_t k = 4;
    const beam_search_options grid16{"ffn", {16, 16}, 4};
    const auto found = co_await beam_search(directory, scores, grid16, k, deadline_after(10s));
    BOOST_REQUIRE_EQUAL(found.size(), 32u);
    for (std::size_t b = 0; b < found.size(); ++b) {
      BOOST_TEST(found[b].size() == static_cast<std::size_t>(k), "sample " << b);
      std::set<std::string> distinct;
      for (const auto& e : found[b]) {
        distinct.insert(e.uid);
        BOOST_TEST(cells.contains({e.coordinates[0], e.coordinates[1]}));
        BOOST_TEST(e.uid == fmt::format("ffn.{}.{}", e.coordinates[0], e.coordinates[1]));
      }
      BOOST_TEST(distinct.size() == found[b].size());
      for (std::size_t j = 1; j < found[b].size(); ++j) BOOST_TEST(found[b][j - 1].score >= found[b][j].score);
    }
    BOOST_TEST(directory.stats().dht_gets == 2u);  // one crawl per dimension for the whole batch
    // The same batch again is answered from the cache (live prefixes are reused for live_for).
    co_await beam_search(directory, scores, grid16, k, deadline_after(10s));
    BOOST_TEST(directory.stats().dht_gets == 2u);
    BOOST_TEST(directory.stats().cache_hits > 0u);
  }));
}

// A server that claims another's expert in its successor set (anyone may sign one) does not get its calls: the
// expert's own uid record, owned by its first signer, settles the claim, and only contested experts are looked up.
BOOST_AUTO_TEST_CASE(a_claimed_expert_is_served_where_its_own_record_says) {
  io_context ctx;
  dmoe_test::swarm nodes(ctx);
  sync_wait(ctx, nodes.run([&]() -> task<void> {
    nodes.add();
    BOOST_REQUIRE_EQUAL(co_await nodes.grow(9), 9u);
    const wall_seconds expiration = dmoe_test::now_wall() + 600;
    const endpoint honest("127.0.0.1", 7000), attacker("127.0.0.1", 7666);
    const std::vector<std::string> hosted{"ffn.0.0", "ffn.0.1", "ffn.0.2", "ffn.0.3"}, claimed{"ffn.0.1", "ffn.0.3"};
    const auto declared = declaration_entries(hosted, honest, expiration, dht::ed25519_keypair::generate());
    const auto honest_stored = co_await nodes[0].store_many(declared);
    for (const auto& s : honest_stored) BOOST_REQUIRE(s.replicas > 0u);
    const auto claims = declaration_entries(claimed, attacker, expiration + 100, dht::ed25519_keypair::generate());
    const auto stored = co_await nodes[1].store_many(claims);
    for (std::size_t i = 0; i < claims.size(); ++i)  // its successor sets are stored, its uid records refused
      BOOST_TEST((stored[i].replicas > 0u) == claims[i].subkey.has_value());

    // Two more keys both claim ffn.0.4, which no record names: contested, nobody's, dropped for the next best.
    for (int i = 0; i < 2; ++i) {
      const std::vector<std::string> unowned{"ffn.0.4"};
      std::vector<dht::store_entry> sets;
      for (auto& e : declaration_entries(unowned, attacker, expiration + 100, dht::ed25519_keypair::generate()))
        if (e.subkey) sets.push_back(std::move(e));
      for (const auto& s : co_await nodes[2].store_many(sets)) BOOST_REQUIRE(s.replicas > 0u);
    }

    dht_expert_directory directory(nodes[5]);
    const tensor scores = tensor::from(shape{2, 6}, {0.f, 1.f, 4.f, 2.f, 3.f, 9.f,  //
                                                     0.f, 4.f, 3.f, 2.f, 1.f, 9.f});
    const beam_search_options row{"ffn", {1, 5}, 4};
    const auto found = co_await beam_search(directory, scores, row, 4, deadline_after(10s));
    for (const auto& sample : found) {
      BOOST_REQUIRE_EQUAL(sample.size(), 4u);
      for (const auto& e : sample) {
        BOOST_TEST(e.server == honest, e.uid);
        BOOST_TEST(e.uid != "ffn.0.4");
      }
    }
    BOOST_TEST(directory.stats().owner_gets == 1u);  // ffn.0.1, ffn.0.3 and ffn.0.4 of both samples in one crawl
    co_await beam_search(directory, scores, row, 4, deadline_after(10s));
    BOOST_TEST(directory.stats().owner_gets == 1u);  // remembered, the missing record too
  }));
}

BOOST_AUTO_TEST_CASE(empty_prefixes_are_cached_and_marked_for_a_fresh_node) {
  io_context ctx;
  dmoe_test::swarm nodes(ctx);
  sync_wait(ctx, nodes.run([&]() -> task<void> {
    nodes.add();
    BOOST_REQUIRE_EQUAL(co_await nodes.grow(9), 9u);
    const wall_seconds expiration = dmoe_test::now_wall() + 600;
    // "ffn." lists first coordinate 3, but nothing live under "ffn.3." (its entries were lost or expired).
    auto entries = declaration_entries({"ffn.1.1"}, endpoint("127.0.0.1", 7000), expiration,
                                       dht::ed25519_keypair::generate());
    for (auto& e : declaration_entries({"ffn.3.0"}, endpoint("127.0.0.1", 7001), expiration,
                                       dht::ed25519_keypair::generate()))
      if (e.key == dht::key_of("ffn.")) entries.push_back(std::move(e));
    co_await nodes[0].store_many(entries);

    dht_expert_directory directory(nodes[5]);
    const tensor scores = tensor::from(shape{1, 8}, {0.f, 1.f, 0.f, 5.f, 0.f, 2.f, 0.f, 0.f});
    const beam_search_options grid4{"ffn", {4, 4}, 2};
    auto found = co_await beam_search(directory, scores, grid4, 2, deadline_after(10s));
    BOOST_REQUIRE_EQUAL(found[0].size(), 1u);
    BOOST_TEST(found[0][0].uid == "ffn.1.1");
    BOOST_TEST(directory.stats().markers_stored == 1u);
    // Asked again: "ffn.3." comes from the negative cache, not the DHT.
    const auto gets = directory.stats().dht_gets;
    found = co_await beam_search(directory, scores, grid4, 2, deadline_after(10s));
    BOOST_TEST(found[0].size() == 1u);
    BOOST_TEST(directory.stats().dht_gets == gets);

    // A fresh node sees the marker: the prefix is known to be empty, the live one is not marked.
    dht::node& fresh = nodes.add();
    BOOST_REQUIRE((co_await fresh.bootstrap(dmoe_test::list(nodes[2].local_endpoint()))).joined);
    const std::vector<std::string> asked{"ffn.3.", "ffn.1."};
    const auto seen = co_await successors(fresh, asked);
    BOOST_TEST(seen[0].found);
    BOOST_TEST(seen[0].marked_empty);
    BOOST_TEST(seen[0].empty());
    BOOST_TEST(!seen[1].marked_empty);
    BOOST_TEST(coordinates_of(seen[1]) == (std::set<std::uint32_t>{1}));
  }));
}

BOOST_AUTO_TEST_SUITE_END()
