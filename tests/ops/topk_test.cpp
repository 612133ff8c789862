// Tests of dmoe/ops/cpu/topk.hpp: largest values first, ties by index, NaN kept visible, k checked.
#include <dmoe/ops/cpu/topk.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(ops_topk)

BOOST_AUTO_TEST_CASE(largest_first_with_indices) {
  const tensor x = tensor::from(shape{2, 5}, {0.5f, 3.0f, -1.0f, 3.0f, 2.0f, 9.0f, 8.0f, 7.0f, 6.0f, 5.0f});
  tensor values, indices;
  ops::topk(ops::cpu, x, 3, values, indices);
  BOOST_TEST((values.shape() == shape{2, 3}));
  BOOST_TEST(indices.dtype() == dtype::i64);
  BOOST_TEST(values.at(0, 0) == 3.0f);
  BOOST_TEST(indices.at<std::int64_t>(0, 0) == 1);  // tie with column 3: the lower index first
  BOOST_TEST(indices.at<std::int64_t>(0, 1) == 3);
  BOOST_TEST(indices.at<std::int64_t>(0, 2) == 4);
  BOOST_TEST(values.at(1, 2) == 7.0f);
  BOOST_TEST(indices.at<std::int64_t>(1, 2) == 2);
}

BOOST_AUTO_TEST_CASE(nan_is_not_hidden) {
  const tensor x = tensor::from(shape{1, 3}, {1.0f, std::nanf(""), 2.0f});
  tensor values, indices;
  ops::topk(ops::cpu, x, 1, values, indices);
  BOOST_TEST(indices.at<std::int64_t>(0, 0) == 1);
}

BOOST_AUTO_TEST_CASE(k_is_checked) {
  const tensor x(shape{2, 3});
  tensor values, indices;
  BOOST_CHECK_THROW(ops::topk(ops::cpu, x, 4, values, indices), invalid_argument_error);
  ops::topk(ops::cpu, x, 0, values, indices);
  BOOST_TEST(values.numel() == 0);
}

BOOST_AUTO_TEST_SUITE_END()
