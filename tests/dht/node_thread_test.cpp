// Tests of dmoe/dht/node_thread.hpp: nodes on their own threads, called from plain code.
#include <dmoe/dht/node_thread.hpp>

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "dht_test_support.hpp"

using namespace dmoe;
using namespace std::chrono_literals;

BOOST_AUTO_TEST_SUITE(dht_node_thread)

BOOST_AUTO_TEST_CASE(nodes_on_their_own_threads_store_and_get) {
  dht::node_thread a(dmoe_test::fast_options());
  dht::node_thread b(dmoe_test::fast_options());
  const auto joined = b.bootstrap(dmoe_test::list(a.local_endpoint()), 5s);
  BOOST_TEST(joined.joined);
  const auto key = dht::key_of("threaded");
  BOOST_TEST(b.store(key, to_buffer("t"), dmoe_test::now_wall() + 60).replicas == 2u);
  const auto found = a.get(key);
  BOOST_REQUIRE(found.has_value());
  BOOST_TEST(as_string_view(found->value.value) == "t");
  // Calls from several threads at once.
  std::vector<std::thread> readers;
  std::atomic<int> hits{0};
  for (int i = 0; i < 4; ++i)
    readers.emplace_back([&] {
      if (b.get(key, true)) ++hits;
    });
  for (auto& t : readers) t.join();
  BOOST_TEST(hits.load() == 4);
  BOOST_TEST(a.stats().peers == 1u);
  b.shutdown();
  BOOST_CHECK_THROW(b.get(key), closed_error);
}

BOOST_AUTO_TEST_CASE(a_node_that_cannot_start_reports_why) {
  dht::node_thread a(dmoe_test::fast_options());
  auto taken = dmoe_test::fast_options();
  taken.listen = a.local_endpoint();
  BOOST_CHECK_THROW(dht::node_thread{taken}, system_error);
  auto bad = dmoe_test::fast_options();
  bad.k = 0;
  BOOST_CHECK_THROW(dht::node_thread{bad}, invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
