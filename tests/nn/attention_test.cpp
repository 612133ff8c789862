// Tests of dmoe/nn/attention.hpp: gradients of every parameter and the input, and causality through the module.
#include <dmoe/nn/attention.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(nn_attention)

BOOST_AUTO_TEST_CASE(gradients_match_finite_differences) {
  random_engine gen(1);
  nn::causal_self_attention<> attention(6, 2, gen);
  for (auto& p : attention.parameters())
    if (p.name.ends_with("bias")) p.value->fill_normal(gen, 0.0f, 0.1f);
  test::check_module_gradients(attention, tensor::normal(shape{2, 3, 6}, gen), 2);
  BOOST_TEST(attention.parameters().size() == 4u);
  BOOST_TEST(attention.parameters()[0].name == "qkv.weight");
}

BOOST_AUTO_TEST_CASE(causal_through_the_module) {
  random_engine gen(2);
  nn::causal_self_attention<> attention(8, 2, gen);
  const tensor x = tensor::normal(shape{1, 5, 8}, gen);
  const tensor y1 = attention.forward(x).clone();
  tensor x2 = x.clone();
  for (std::int64_t j = 0; j < 8; ++j) x2.at(0, 4, j) = -x2.at(0, 4, j);
  const tensor y2 = attention.forward(x2);
  for (std::int64_t t = 0; t < 4; ++t)
    for (std::int64_t j = 0; j < 8; ++j) BOOST_TEST(y1.at(0, t, j) == y2.at(0, t, j));
  BOOST_CHECK_THROW(attention.forward(tensor(shape{5, 8})), shape_error);
  BOOST_CHECK_THROW(nn::causal_self_attention<>(8, 3, gen), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
