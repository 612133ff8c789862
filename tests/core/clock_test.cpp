// Tests of dmoe/core/clock.hpp and error.hpp.
#include <dmoe/core/clock.hpp>
#include <dmoe/core/error.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;
using namespace std::chrono_literals;

BOOST_AUTO_TEST_SUITE(core_clock)

BOOST_AUTO_TEST_CASE(manual_clock_moves_only_when_told) {
  manual_clock c(1000.0);
  auto s0 = c.steady_now();
  BOOST_TEST(c.wall_now() == 1000.0);
  c.advance(1500ms);
  BOOST_TEST((c.steady_now() - s0 == 1500ms));
  BOOST_TEST(c.wall_now() == 1001.5);
  c.set_wall(5.0);
  BOOST_TEST(c.wall_now() == 5.0);
}

BOOST_AUTO_TEST_CASE(system_clock_is_plausible) {
  const clock_source& c = default_clock();
  BOOST_TEST(c.wall_now() > 1.7e9);
  auto a = c.steady_now();
  BOOST_TEST((c.steady_now() >= a));
}

BOOST_AUTO_TEST_CASE(errors_carry_codes_and_errno_text) {
  try {
    check_errno_result(-ECONNREFUSED, "connect to 127.0.0.1:9");
    BOOST_FAIL("no throw");
  } catch (const error& e) {
    BOOST_TEST((e.code() == errc::io));
    BOOST_TEST(std::string(e.what()) == "connect to 127.0.0.1:9: Connection refused");
  }
  BOOST_TEST(check_errno_result(5, "read") == 5);
  timeout_error t("late");
  BOOST_TEST((t.code() == errc::timeout));
  BOOST_TEST(to_string(errc::limit) == "limit");
}

BOOST_AUTO_TEST_SUITE_END()
