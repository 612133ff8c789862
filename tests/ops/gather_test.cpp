// Tests of dmoe/ops/cpu/gather.hpp: gathering rows by index and scatter-adding them back with weights.
#include <dmoe/ops/cpu/gather.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

#include <vector>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(ops_gather)

BOOST_AUTO_TEST_CASE(gather_then_scatter_add) {
  const tensor x = tensor::from(shape{3, 2}, {0, 1, 10, 11, 20, 21});
  const std::vector<std::int64_t> picks{2, 0, 2};
  const tensor indices = tensor::from<std::int64_t>(shape{3}, picks);
  tensor y;
  ops::gather_rows(ops::cpu, x, indices, y);
  test::check_close("gather", y, {20, 21, 0, 1, 20, 21}, 0);
  tensor back(shape{3, 2});
  ops::scatter_add_rows(ops::cpu, y, indices, tensor::from(shape{3}, {0.5f, 2.0f, 0.5f}), back);
  test::check_close("scatter_add", back, {0, 2, 0, 0, 20, 21}, 0);
  ops::scatter_add_rows(ops::cpu, y, indices, tensor(), back);
  test::check_close("scatter_add unscaled", back, {0, 3, 0, 0, 60, 63}, 0);
}

BOOST_AUTO_TEST_CASE(errors) {
  const tensor x(shape{3, 2});
  const std::vector<std::int64_t> bad{3};
  tensor y;
  BOOST_CHECK_THROW(ops::gather_rows(ops::cpu, x, tensor::from<std::int64_t>(shape{1}, bad), y), invalid_argument_error);
  tensor out(shape{4, 3});
  const std::vector<std::int64_t> three{0, 1, 2};
  BOOST_CHECK_THROW(ops::scatter_add_rows(ops::cpu, x, tensor::from<std::int64_t>(shape{3}, three), tensor(), out),
                    shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
