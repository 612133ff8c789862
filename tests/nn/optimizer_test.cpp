// Tests of dmoe/nn/optimizer.hpp, adam.hpp and sgd.hpp: updates over named parameters, schedules, state and zero_grad.
#include <dmoe/nn/adam.hpp>
#include <dmoe/nn/optimizer.hpp>
#include <dmoe/nn/schedule.hpp>
#include <dmoe/nn/sgd.hpp>

#include <boost/test/unit_test.hpp>

#include <vector>

using namespace dmoe;
namespace tt = boost::test_tools;

namespace {

// Two parameters with their gradients, as a module would expose them.
struct two_parameters {
  tensor weight = tensor::from(shape{3}, {1.0f, -2.0f, 0.5f});
  tensor weight_grad = tensor::from(shape{3}, {0.1f, -0.2f, 0.3f});
  tensor bias = tensor::from(shape{1}, {4.0f});
  tensor bias_grad = tensor::from(shape{1}, {-1.0f});
  nn::parameter_list parameters() { return {{"weight", &weight, &weight_grad}, {"bias", &bias, &bias_grad}}; }
};

std::vector<std::string> names(const nn::parameter_list& list) {
  std::vector<std::string> out;
  for (const auto& p : list) out.push_back(p.name);
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(nn_optimizer)

BOOST_FIXTURE_TEST_CASE(adam_updates_every_parameter_and_counts_steps, two_parameters) {
  nn::adam<> opt(parameters(), {.learning_rate = 0.1f});
  BOOST_TEST(opt.step_count() == 0);
  BOOST_TEST(opt.step() == 0.1f);
  BOOST_TEST(opt.step_count() == 1);
  // Adam's first step moves each weight by the learning rate against its gradient's sign.
  BOOST_TEST(weight.at(0) == 0.9f, tt::tolerance(1e-6f));
  BOOST_TEST(weight.at(1) == -1.9f, tt::tolerance(1e-6f));
  BOOST_TEST(bias.at(0) == 4.1f, tt::tolerance(1e-6f));
  const std::vector<std::string> expected{"step", "m.weight", "m.bias", "v.weight", "v.bias"};
  BOOST_TEST(names(opt.state()) == expected, tt::per_element());
  BOOST_TEST(opt.state()[0].value->at<std::int64_t>() == 1);
  BOOST_TEST(opt.state()[1].value->at(0) == 0.01f, tt::tolerance(1e-6f));
}

BOOST_FIXTURE_TEST_CASE(adamw_class_decouples_weight_decay, two_parameters) {
  nn::adamw<> opt(parameters(), {.learning_rate = 0.1f, .weight_decay = 0.1});
  BOOST_TEST(opt.hyper().decoupled_weight_decay);
  opt.step();
  // 0.99 * 1 - 0.1 = 0.89 (see the ops test for the arithmetic).
  BOOST_TEST(weight.at(0) == 0.89f, tt::tolerance(1e-6f));
  BOOST_TEST(bias.at(0) == 0.99f * 4.0f + 0.1f, tt::tolerance(1e-6f));
}

BOOST_FIXTURE_TEST_CASE(schedule_sets_each_steps_rate, two_parameters) {
  nn::sgd<> opt(parameters(), {.learning_rate = 123.0f});
  opt.set_schedule(nn::linear_warmup_decay(0.2f, 2, 4));
  // Rates 0.1, 0.2, 0.1, 0.0 for steps 1..4; plain SGD moves bias by rate * 1.
  std::vector<float> rates;
  for (int i = 0; i < 4; ++i) rates.push_back(opt.step());
  BOOST_TEST(rates[0] == 0.1f, tt::tolerance(1e-6f));
  BOOST_TEST(rates[1] == 0.2f, tt::tolerance(1e-6f));
  BOOST_TEST(rates[2] == 0.1f, tt::tolerance(1e-6f));
  BOOST_TEST(rates[3] == 0.0f);
  BOOST_TEST(bias.at(0) == 4.4f, tt::tolerance(1e-6f));
  // An explicit rate overrides the schedule for one step.
  BOOST_TEST(opt.step(1.0f) == 1.0f);
  BOOST_TEST(bias.at(0) == 5.4f, tt::tolerance(1e-6f));
  BOOST_TEST(opt.step_count() == 5);
}

BOOST_FIXTURE_TEST_CASE(sgd_state_only_with_momentum, two_parameters) {
  nn::sgd<> plain(parameters(), {.learning_rate = 0.1f});
  BOOST_TEST(names(plain.state()) == std::vector<std::string>{"step"}, tt::per_element());
  nn::sgd<> heavy(parameters(), {.learning_rate = 0.1f, .momentum = 0.9});
  const std::vector<std::string> expected{"step", "momentum.weight", "momentum.bias"};
  BOOST_TEST(names(heavy.state()) == expected, tt::per_element());
  BOOST_CHECK_THROW(nn::sgd<>(parameters(), {.nesterov = true}), invalid_argument_error);
}

BOOST_FIXTURE_TEST_CASE(zero_grad_clears_every_gradient, two_parameters) {
  nn::sgd<> opt(parameters());
  opt.zero_grad();
  BOOST_TEST(weight_grad.at(0) == 0.0f);
  BOOST_TEST(weight_grad.at(2) == 0.0f);
  BOOST_TEST(bias_grad.at(0) == 0.0f);
}

BOOST_FIXTURE_TEST_CASE(clipping_through_gradient_handles, two_parameters) {
  // Norm of [0.1, -0.2, 0.3] and [-1]: sqrt(0.14 + 1) = 1.0677078; clipped to 0.5 in place.
  std::vector<tensor> grads = nn::gradients_of(parameters());
  BOOST_TEST(ops::clip_grad_norm(ops::cpu, grads, 0.5f) == 1.0677078, tt::tolerance(1e-6));
  BOOST_TEST(bias_grad.at(0) == -0.5f / 1.0677078f, tt::tolerance(1e-5f));
  BOOST_TEST(ops::grad_norm(ops::cpu, nn::gradients_of(parameters())) == 0.5, tt::tolerance(1e-5));
}

BOOST_FIXTURE_TEST_CASE(refuses_duplicate_and_mismatched_parameters, two_parameters) {
  nn::parameter_list duplicate{{"w", &weight, &weight_grad}, {"w", &bias, &bias_grad}};
  BOOST_CHECK_THROW(nn::adam<>{duplicate}, invalid_argument_error);
  nn::parameter_list mismatched{{"w", &weight, &bias_grad}};
  BOOST_CHECK_THROW(nn::adam<>{mismatched}, shape_error);
  nn::parameter_list no_grad{{"w", &weight, nullptr}};
  BOOST_CHECK_THROW(nn::sgd<>{no_grad}, invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
