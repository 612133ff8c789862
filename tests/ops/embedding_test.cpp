// Tests of dmoe/ops/cpu/embedding.hpp: gathering rows by id and scatter-adding their gradient.
#include <dmoe/ops/cpu/embedding.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

#include <vector>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(ops_embedding)

BOOST_AUTO_TEST_CASE(lookup_and_scatter_add) {
  const tensor table = tensor::from(shape{3, 2}, {0.0f, 1.0f, 10.0f, 11.0f, 20.0f, 21.0f});
  const std::vector<std::int64_t> id_values{2, 0, 2, 1};
  const tensor ids = tensor::from<std::int64_t>(shape{2, 2}, id_values);
  tensor y;
  ops::embedding_forward(ops::cpu, table, ids, y);
  BOOST_TEST((y.shape() == shape{2, 2, 2}));
  test::check_close("y", y, {20, 21, 0, 1, 20, 21, 10, 11}, 0);
  const tensor dy = tensor::from(shape{2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  tensor dtable = tensor::full(shape{3, 2}, 1.0f);
  ops::embedding_backward(ops::cpu, ids, dy, dtable);
  test::check_close("dtable", dtable, {1 + 3, 1 + 4, 1 + 7, 1 + 8, 1 + 1 + 5, 1 + 2 + 6}, 0);
}

BOOST_AUTO_TEST_CASE(ids_are_checked) {
  const tensor table(shape{3, 2});
  const std::vector<std::int64_t> bad{0, 3};
  tensor y;
  BOOST_CHECK_THROW(ops::embedding_forward(ops::cpu, table, tensor::from<std::int64_t>(shape{2}, bad), y),
                    invalid_argument_error);
  BOOST_CHECK_THROW(ops::embedding_forward(ops::cpu, table, tensor(shape{2}), y), invalid_argument_error);
  tensor dtable(shape{3, 2});
  const std::vector<std::int64_t> good{0, 1};
  BOOST_CHECK_THROW(ops::embedding_backward(ops::cpu, tensor::from<std::int64_t>(shape{2}, good), tensor(shape{2, 3}),
                                            dtable),
                    shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
