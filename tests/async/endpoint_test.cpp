// Tests for dmoe/async/endpoint.hpp: parsing, printing, sockaddr round trips, equality.
#include <dmoe/async/endpoint.hpp>

#include <boost/test/unit_test.hpp>

#include <string>
#include <unordered_set>

#include <fmt/format.h>

using dmoe::endpoint;

BOOST_AUTO_TEST_SUITE(async_endpoint)

BOOST_AUTO_TEST_CASE(parses_and_prints_ipv4_and_ipv6) {
  const endpoint v4 = endpoint::parse("127.0.0.1:4000");
  BOOST_TEST(v4.is_v4());
  BOOST_TEST(v4.port() == 4000);
  BOOST_TEST(v4.address() == "127.0.0.1");
  BOOST_TEST(v4.to_string() == "127.0.0.1:4000");

  const endpoint v6 = endpoint::parse("[::1]:4000");
  BOOST_TEST(v6.is_v6());
  BOOST_TEST(v6.port() == 4000);
  BOOST_TEST(v6.address() == "::1");
  BOOST_TEST(v6.to_string() == "[::1]:4000");
  BOOST_TEST(endpoint::parse("[2001:db8::7]:65535").to_string() == "[2001:db8::7]:65535");
  BOOST_TEST(fmt::format("{}", endpoint("10.1.2.3", 0)) == "10.1.2.3:0");
}

BOOST_AUTO_TEST_CASE(rejects_malformed_text) {
  for (const char* bad : {"", "127.0.0.1", "127.0.0.1:", ":80", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:8a",
                          "::1:80", "[::1]", "[::1]80", "[127.0.0.1]:80", "256.0.0.1:80", "localhost:80", "[::1]:"}) {
    BOOST_TEST_CONTEXT(bad) {
      BOOST_TEST(!endpoint::try_parse(bad).has_value());
      BOOST_CHECK_THROW(endpoint::parse(bad), dmoe::invalid_argument_error);
    }
  }
  BOOST_CHECK_THROW(endpoint("not an address", 1), dmoe::invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(round_trips_through_sockaddr) {
  for (const char* text : {"192.168.7.9:1234", "[fe80::1:2]:99"}) {
    const endpoint original = endpoint::parse(text);
    const endpoint copy = endpoint::from_sockaddr(original.data(), original.size());
    BOOST_TEST(copy == original);
    BOOST_TEST(copy.to_string() == text);
  }
  BOOST_TEST(endpoint::parse("1.2.3.4:5").size() == sizeof(sockaddr_in));
  BOOST_TEST(endpoint::parse("[::1]:5").size() == sizeof(sockaddr_in6));
  sockaddr unsupported{};
  unsupported.sa_family = AF_UNIX;
  BOOST_CHECK_THROW(endpoint::from_sockaddr(&unsupported, sizeof unsupported), dmoe::invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(equality_hash_and_port_changes) {
  const endpoint a = endpoint::parse("127.0.0.1:1");
  BOOST_TEST((a == endpoint::loopback_v4(1)));
  BOOST_TEST(!(a == endpoint::loopback_v4(2)));
  BOOST_TEST(!(a == endpoint::loopback_v6(1)));
  BOOST_TEST((a.with_port(2) == endpoint::loopback_v4(2)));
  std::unordered_set<endpoint> set{a, endpoint::loopback_v4(1), endpoint::loopback_v6(1)};
  BOOST_TEST(set.size() == 2u);
  BOOST_TEST(!endpoint().is_specified());
  BOOST_TEST(endpoint().to_string() == "unspecified");
}

// dmoe::format (core/format.hpp) is an object, so a user's unqualified format() on a dmoe type still finds only
// fmt::format through argument-dependent lookup (as a function template it made this call ambiguous: no compile).
BOOST_AUTO_TEST_CASE(unqualified_format_of_a_dmoe_type_means_fmt_format) {
  using fmt::format;
  BOOST_TEST(format("at {}", endpoint::loopback_v4(4000)) == "at 127.0.0.1:4000");
  BOOST_TEST(dmoe::format("{} of {}", 3, endpoint::loopback_v6(1)) == "3 of [::1]:1");
}

BOOST_AUTO_TEST_SUITE_END()
