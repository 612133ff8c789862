// Tests of dmoe/nn/embedding.hpp: lookup and the table gradient against finite differences.
#include <dmoe/nn/embedding.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

#include <vector>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(nn_embedding)

BOOST_AUTO_TEST_CASE(table_gradient) {
  random_engine gen(1);
  nn::embedding<> emb(5, 3, gen);
  const std::vector<std::int64_t> ids{4, 1, 1, 0};
  test::check_module_gradients(emb, tensor::from<std::int64_t>(shape{2, 2}, ids), 2);
  const tensor y = emb.forward(tensor::from<std::int64_t>(shape{4}, ids));
  BOOST_TEST(y.at(0, 2) == emb.table().at(4, 2));
  BOOST_TEST(emb.backward(tensor(shape{4, 3})).empty());
}

BOOST_AUTO_TEST_SUITE_END()
