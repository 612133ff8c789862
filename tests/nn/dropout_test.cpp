// Tests of dmoe/nn/dropout.hpp: training applies a seeded mask forward and backward; evaluation is the identity.
#include <dmoe/nn/dropout.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(nn_dropout)

BOOST_AUTO_TEST_CASE(train_and_eval) {
  nn::dropout<> drop(0.5f, 9);
  const tensor x = tensor::full(shape{20, 10}, 3.0f);
  const tensor y = drop.forward(x);
  const tensor dy = tensor::full(shape{20, 10}, 1.0f);
  const tensor dx = drop.backward(dy);
  int zeros = 0;
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const float m = drop.mask().span<float>()[i];
    BOOST_TEST(y.span<float>()[i] == 3.0f * m);
    BOOST_TEST(dx.span<float>()[i] == m);
    zeros += m == 0.0f;
  }
  BOOST_TEST((zeros > 50 && zeros < 150));
  drop.set_training(false);
  const tensor e = drop.forward(x);
  BOOST_TEST(e.shares_storage_with(x));
  BOOST_TEST(drop.backward(dy).shares_storage_with(dy));
  // The same seed draws the same masks.
  nn::dropout<> again(0.5f, 9);
  const tensor y2 = again.forward(x);
  for (std::int64_t i = 0; i < x.numel(); ++i) BOOST_TEST(y2.span<float>()[i] == y.span<float>()[i]);
  BOOST_CHECK_THROW(nn::dropout<>(1.0f, 1), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
