// Tests of dmoe/nn/sequential.hpp: order, names, training mode and gradients through a stack.
#include <dmoe/nn/activation.hpp>
#include <dmoe/nn/dropout.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/sequential.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(nn_sequential)

BOOST_AUTO_TEST_CASE(stack_names_and_gradients) {
  random_engine gen(1);
  nn::sequential net;
  net.emplace<nn::linear<>>(4, 6, gen);
  net.emplace<nn::gelu<>>();
  net.emplace<nn::dropout<>>(0.5f, 3);
  net.emplace<nn::linear<>>(6, 2, gen);
  net.set_training(false);  // dropout off, so the finite differences see one function
  const auto params = net.parameters();
  BOOST_TEST(params.size() == 4u);
  BOOST_TEST(params[0].name == "0.weight");
  BOOST_TEST(params[3].name == "3.bias");
  BOOST_TEST(net.size() == 4u);
  test::check_module_gradients(net, tensor::normal(shape{3, 4}, gen), 2);
  BOOST_TEST(!net[2].training());
  net.set_training(true);
  BOOST_TEST(net[2].training());
}

BOOST_AUTO_TEST_SUITE_END()
