// Tests of dmoe/nn/schedule.hpp: constant and linear warmup/decay rates at chosen steps.
#include <dmoe/nn/schedule.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;
namespace tt = boost::test_tools;

BOOST_AUTO_TEST_SUITE(nn_schedule)

BOOST_AUTO_TEST_CASE(constant_with_and_without_warmup) {
  nn::constant_schedule flat{.learning_rate = 0.5f};
  BOOST_TEST(flat(1) == 0.5f);
  BOOST_TEST(flat(1000000) == 0.5f);
  nn::constant_schedule warm{.learning_rate = 0.5f, .warmup_steps = 4};
  BOOST_TEST(warm(1) == 0.125f);
  BOOST_TEST(warm(2) == 0.25f);
  BOOST_TEST(warm(4) == 0.5f);
  BOOST_TEST(warm(5) == 0.5f);
  BOOST_TEST(warm(0) == 0.125f);  // steps before the first count as the first
}

BOOST_AUTO_TEST_CASE(linear_warmup_then_linear_decay) {
  // Peak 1.0 after 10 warmup steps, down to 0.1 at step 100: slope 0.9/90 = 0.01 per step.
  nn::linear_warmup_decay s(1.0f, 10, 100, 0.1f);
  BOOST_TEST(s(1) == 0.1f, tt::tolerance(1e-6f));
  BOOST_TEST(s(5) == 0.5f, tt::tolerance(1e-6f));
  BOOST_TEST(s(10) == 1.0f);
  BOOST_TEST(s(11) == 0.99f, tt::tolerance(1e-6f));
  BOOST_TEST(s(55) == 0.55f, tt::tolerance(1e-6f));
  BOOST_TEST(s(99) == 0.11f, tt::tolerance(1e-6f));
  BOOST_TEST(s(100) == 0.1f);
  BOOST_TEST(s(5000) == 0.1f);
  for (std::int64_t step = 1; step < 10; ++step) BOOST_TEST(s(step) < s(step + 1));
  for (std::int64_t step = 10; step < 100; ++step) BOOST_TEST(s(step) > s(step + 1));
}

BOOST_AUTO_TEST_CASE(linear_decay_without_warmup_and_to_zero) {
  nn::linear_warmup_decay s(2.0f, 0, 4);
  BOOST_TEST(s(1) == 1.5f);
  BOOST_TEST(s(2) == 1.0f);
  BOOST_TEST(s(3) == 0.5f);
  BOOST_TEST(s(4) == 0.0f);
  nn::learning_rate_schedule erased = s;
  BOOST_TEST(erased(2) == 1.0f);
}

BOOST_AUTO_TEST_CASE(refuses_inconsistent_steps) {
  BOOST_CHECK_THROW(nn::linear_warmup_decay(1.0f, 10, 5), invalid_argument_error);
  BOOST_CHECK_THROW(nn::linear_warmup_decay(1.0f, -1, 5), invalid_argument_error);
  BOOST_CHECK_THROW(nn::linear_warmup_decay(1.0f, 0, 0), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
