// Tests of dmoe/nn/loss.hpp: the loss modules return the op's loss and gradient.
#include <dmoe/nn/loss.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

#include <vector>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(nn_loss)

BOOST_AUTO_TEST_CASE(cross_entropy_and_mse) {
  random_engine gen(1);
  tensor logits = tensor::normal(shape{3, 4}, gen);
  const std::vector<std::int64_t> label_values{3, 0, 1};
  const tensor labels = tensor::from<std::int64_t>(shape{3}, label_values);
  nn::cross_entropy_loss<> ce;
  BOOST_CHECK_THROW(ce.backward(), invalid_argument_error);
  ce.forward(logits, labels);
  const tensor g = ce.backward().clone();
  test::check_gradient("cross entropy", g, test::numeric_gradient(logits, [&] {
                         nn::cross_entropy_loss<> other;
                         return double(other.forward(logits, labels));
                       }));
  nn::mse_loss<> mse;
  tensor p = tensor::normal(shape{2, 3}, gen);
  const tensor t = tensor::normal(shape{2, 3}, gen);
  mse.forward(p, t);
  const tensor gm = mse.backward().clone();
  test::check_gradient("mse", gm, test::numeric_gradient(p, [&] {
                         nn::mse_loss<> other;
                         return double(other.forward(p, t));
                       }));
}

BOOST_AUTO_TEST_SUITE_END()
