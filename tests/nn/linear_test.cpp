// Tests of dmoe/nn/linear.hpp: values, gradients with each activation, accumulation, ranks above 2, errors.
#include <dmoe/nn/linear.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(nn_linear)

BOOST_AUTO_TEST_CASE(forward_is_x_w_transposed_plus_b) {
  random_engine gen(1);
  nn::linear<> layer(2, 3, gen);
  layer.weight().copy_from(tensor::from(shape{3, 2}, {1, 2, 3, 4, 5, 6}));
  layer.bias().copy_from(tensor::from(shape{3}, {0.5f, 0.0f, -1.0f}));
  const tensor y = layer.forward(tensor::from(shape{1, 2}, {1.0f, -1.0f}));
  test::check_close("y", y, {-0.5, -1.0, -2.0}, 0);
  BOOST_TEST(layer.parameters().size() == 2u);
  BOOST_TEST(layer.parameters()[0].name == "weight");
  BOOST_TEST(layer.parameter_count() == 9);
}

BOOST_AUTO_TEST_CASE(gradients_match_finite_differences) {
  for (auto act : {ops::activation::identity, ops::activation::relu, ops::activation::gelu}) {
    random_engine gen(2);
    nn::linear<> layer(5, 4, gen, act);
    layer.bias().fill_normal(gen);
    BOOST_TEST_CONTEXT(ops::to_string(act)) {
      test::check_module_gradients(layer, tensor::normal(shape{3, 5}, gen), 3, 1e-2,
                                   act == ops::activation::relu ? 1e-3f : 1e-2f);
    }
  }
}

BOOST_AUTO_TEST_CASE(rank_three_input_and_no_bias) {
  random_engine gen(3);
  nn::linear<> layer(4, 2, gen, ops::activation::identity, false);
  BOOST_TEST(layer.parameters().size() == 1u);
  const tensor y = layer.forward(tensor::normal(shape{2, 3, 4}, gen));
  BOOST_TEST((y.shape() == shape{2, 3, 2}));
  test::check_module_gradients(layer, tensor::normal(shape{2, 3, 4}, gen), 4);
}

BOOST_AUTO_TEST_CASE(gradients_accumulate_until_zero_grad) {
  random_engine gen(4);
  nn::linear<> layer(3, 2, gen);
  const tensor x = tensor::normal(shape{4, 3}, gen);
  const tensor dy = tensor::normal(shape{4, 2}, gen);
  layer.forward(x);
  layer.backward(dy);
  const tensor once = layer.weight_grad().clone();
  layer.forward(x);
  layer.backward(dy);
  for (std::int64_t i = 0; i < once.numel(); ++i)
    BOOST_TEST(std::abs(layer.weight_grad().span<float>()[i] - 2 * once.span<float>()[i]) < 1e-5);
  layer.zero_grad();
  for (float v : layer.weight_grad().span<float>()) BOOST_TEST(v == 0.0f);
}

BOOST_AUTO_TEST_CASE(outputs_held_by_the_caller_are_not_overwritten) {
  random_engine gen(5);
  nn::linear<> layer(3, 2, gen);
  const tensor y1 = layer.forward(tensor::full(shape{1, 3}, 1.0f)).clone();
  const tensor held = layer.forward(tensor::full(shape{1, 3}, 1.0f));
  layer.forward(tensor::full(shape{1, 3}, -1.0f));
  test::check_close("held", held, {y1.at(0, 0), y1.at(0, 1)}, 0);
}

BOOST_AUTO_TEST_CASE(errors) {
  random_engine gen(6);
  nn::linear<> layer(3, 2, gen);
  BOOST_CHECK_THROW(layer.backward(tensor(shape{1, 2})), invalid_argument_error);
  BOOST_CHECK_THROW(layer.forward(tensor(shape{1, 4})), shape_error);
  layer.forward(tensor(shape{5, 3}));
  BOOST_CHECK_THROW(layer.backward(tensor(shape{4, 2})), shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
