// Tests of dmoe/nn/transformer_block.hpp: gradients of the whole pre-LN block.
#include <dmoe/nn/transformer_block.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(nn_transformer_block)

BOOST_AUTO_TEST_CASE(gradients_match_finite_differences) {
  random_engine gen(1);
  nn::transformer_block<> block(4, 2, gen);
  for (auto& p : block.parameters()) {
    if (p.name.ends_with("bias")) p.value->fill_normal(gen, 0.0f, 0.1f);
    if (p.name.starts_with("ln") && p.name.ends_with("weight")) p.value->fill_normal(gen, 1.0f, 0.2f);
  }
  test::check_module_gradients(block, tensor::normal(shape{2, 3, 4}, gen), 2, 2e-2);
  BOOST_TEST(block.parameters().size() == 12u);
}

BOOST_AUTO_TEST_SUITE_END()
