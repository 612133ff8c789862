// Tests of dmoe/net/fault.hpp: delay distributions, loss, partitions, stalls, seeded determinism.
#include <dmoe/net/fault.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>

using namespace dmoe;
using namespace dmoe::net;
using namespace std::chrono_literals;

namespace {

double in_ms(std::chrono::nanoseconds d) { return std::chrono::duration<double, std::milli>(d).count(); }

double mean_delay_ms(fault_policy& policy, int samples) {
  double total = 0;
  for (int i = 0; i < samples; ++i) total += in_ms(policy.sample_delay());
  return total / samples;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(net_fault)

BOOST_AUTO_TEST_CASE(no_faults_by_default) {
  fault_policy policy;
  for (int i = 0; i < 100; ++i) {
    auto d = policy.on_send("127.0.0.1:1", "127.0.0.2:2");
    BOOST_TEST(!d.drop);
    BOOST_TEST(d.delay.count() == 0);
  }
  BOOST_TEST(!policy.stalled());
}

BOOST_AUTO_TEST_CASE(fixed_latency) {
  fault_policy policy;
  policy.set_latency(latency_model::fixed(3ms));
  BOOST_TEST(policy.on_send("a", "b").delay.count() == std::chrono::nanoseconds(3ms).count());
  BOOST_TEST(policy.stats().total_delay.count() == std::chrono::nanoseconds(3ms).count());
}

BOOST_AUTO_TEST_CASE(exponential_and_weibull_delays_have_their_means) {
  fault_policy exponential(7);
  auto model = latency_model::exponential(1ms, 2ms);
  exponential.set_latency(model);
  BOOST_TEST(in_ms(model.mean()) == 3.0, boost::test_tools::tolerance(1e-9));
  BOOST_TEST(mean_delay_ms(exponential, 200000) == 3.0, boost::test_tools::tolerance(0.02));

  fault_policy weibull(8);
  auto heavy = latency_model::weibull(0ms, 2ms, 0.7);  // mean = 2 ms * Γ(1 + 1/0.7) ≈ 2.53 ms
  weibull.set_latency(heavy);
  const double expected = in_ms(heavy.mean());
  BOOST_TEST(expected == 2.0 * std::tgamma(1.0 + 1.0 / 0.7), boost::test_tools::tolerance(1e-6));
  BOOST_TEST(mean_delay_ms(weibull, 200000) == expected, boost::test_tools::tolerance(0.03));
}

BOOST_AUTO_TEST_CASE(seeded_policies_repeat_themselves) {
  fault_policy a(42), b(42), c(43);
  for (auto* p : {&a, &b, &c}) p->set_latency(latency_model::weibull(0ms, 1ms, 1.5)).set_loss(0.3);
  int differences = 0;
  for (int i = 0; i < 100; ++i) {
    auto da = a.on_send("x", "y"), db = b.on_send("x", "y"), dc = c.on_send("x", "y");
    BOOST_TEST(da.drop == db.drop);
    BOOST_TEST(da.delay.count() == db.delay.count());
    differences += da.delay != dc.delay;
  }
  BOOST_TEST(differences > 50);
}

BOOST_AUTO_TEST_CASE(loss_drops_about_the_configured_fraction) {
  fault_policy policy(3);
  policy.set_loss(0.2);
  int dropped = 0;
  for (int i = 0; i < 20000; ++i) dropped += policy.on_send("a:1", "b:2").drop;
  BOOST_TEST(dropped / 20000.0 == 0.2, boost::test_tools::tolerance(0.05));
  BOOST_TEST(policy.stats().dropped == static_cast<std::uint64_t>(dropped));
  BOOST_TEST(policy.stats().sent == 20000u);
}

BOOST_AUTO_TEST_CASE(partitions_cut_both_directions_between_groups_only) {
  fault_policy policy;
  policy.add_partition({"127.0.0.1", "127.0.0.2"}, {"127.0.0.3:4000"});
  BOOST_TEST(policy.on_send("127.0.0.1:5000", "127.0.0.3:4000").drop);
  BOOST_TEST(policy.on_send("127.0.0.3:4000", "127.0.0.2:1").drop);
  BOOST_TEST(!policy.on_send("127.0.0.3:4001", "127.0.0.2:1").drop);  // another port of .3 is not in the group
  BOOST_TEST(!policy.on_send("127.0.0.1:5000", "127.0.0.2:1").drop);  // same side
  BOOST_TEST(!policy.on_send("127.0.0.4:1", "127.0.0.3:4000").drop);  // outside both groups
  policy.heal();
  BOOST_TEST(!policy.on_send("127.0.0.1:5000", "127.0.0.3:4000").drop);
}

BOOST_AUTO_TEST_CASE(stall_is_a_switch) {
  fault_policy policy;
  policy.set_stall();
  BOOST_TEST(policy.stalled());
  policy.set_stall(false);
  BOOST_TEST(!policy.stalled());
}

BOOST_AUTO_TEST_CASE(bad_settings_are_refused) {
  fault_policy policy;
  BOOST_CHECK_THROW(policy.set_loss(1.5), invalid_argument_error);
  BOOST_CHECK_THROW(policy.set_latency(latency_model::weibull(0ms, 1ms, 0.0)), invalid_argument_error);
  BOOST_CHECK_THROW(policy.set_latency(latency_model::fixed(-1ms)), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
