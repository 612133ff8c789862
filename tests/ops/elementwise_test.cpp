// Tests of dmoe/ops/cpu/elementwise.hpp: add, axpy, multiply, scale, broadcast and column sums.
#include <dmoe/ops/cpu/elementwise.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(ops_elementwise)

BOOST_AUTO_TEST_CASE(arithmetic) {
  const tensor a = tensor::from(shape{2, 2}, {1, 2, 3, 4});
  const tensor b = tensor::from(shape{2, 2}, {10, 20, 30, 40});
  tensor y;
  ops::add(ops::cpu, a, b, y);
  test::check_close("add", y, {11, 22, 33, 44}, 0);
  ops::axpy(ops::cpu, 2.0f, a, y);
  test::check_close("axpy", y, {13, 26, 39, 52}, 0);
  ops::multiply(ops::cpu, a, b, y);
  test::check_close("multiply", y, {10, 40, 90, 160}, 0);
  ops::scale(ops::cpu, y, 0.5f);
  test::check_close("scale", y, {5, 20, 45, 80}, 0);
  BOOST_CHECK_THROW(ops::add(ops::cpu, a, tensor(shape{4}), y), shape_error);
}

BOOST_AUTO_TEST_CASE(rows_broadcast_and_sum) {
  tensor y(shape{5000, 3});
  ops::broadcast_rows(ops::cpu, tensor::from(shape{3}, {1, 2, 3}), y);
  BOOST_TEST(y.at(4999, 2) == 3.0f);
  tensor sum = tensor::full(shape{3}, 1.0f);
  ops::sum_rows(ops::cpu, y, sum);
  test::check_close("sum_rows", sum, {5001, 10001, 15001}, 0);
  tensor wrong(shape{2});
  BOOST_CHECK_THROW(ops::sum_rows(ops::cpu, y, wrong), shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
