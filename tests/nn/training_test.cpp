// Bounded training runs (label train): an MLP learns a generated classification problem; a tiny transformer's
// loss falls on a repeated sequence.
#include <dmoe/nn/activation.hpp>
#include <dmoe/nn/adam.hpp>
#include <dmoe/nn/embedding.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/loss.hpp>
#include <dmoe/nn/sequential.hpp>
#include <dmoe/nn/transformer_block.hpp>
#include <dmoe/ops/cpu/topk.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <vector>

using namespace dmoe;

namespace {

// Points around one of the centres (rows of `centres`), with the centre's index as label.
struct dataset {
  tensor x, labels;
};

dataset make_blobs(std::int64_t n, const tensor& centres, random_engine& gen) {
  const std::int64_t classes = centres.dim(0), dims = centres.dim(1);
  dataset d{tensor::normal(shape{n, dims}, gen), tensor(shape{n}, dtype::i64)};
  std::uniform_int_distribution<std::int64_t> pick(0, classes - 1);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t c = pick(gen);
    d.labels.at<std::int64_t>(i) = c;
    for (std::int64_t j = 0; j < dims; ++j) d.x.at(i, j) += centres.at(c, j);
  }
  return d;
}

double accuracy(const tensor& logits, const tensor& labels) {
  tensor values, indices;
  ops::topk(ops::cpu, logits, 1, values, indices);
  std::int64_t right = 0;
  for (std::int64_t i = 0; i < labels.numel(); ++i) right += indices.at<std::int64_t>(i, 0) == labels.at<std::int64_t>(i);
  return double(right) / double(labels.numel());
}

}  // namespace

BOOST_AUTO_TEST_SUITE(nn_training)

BOOST_AUTO_TEST_CASE(mlp_learns_blobs, *boost::unit_test::label("train")) {
  random_engine gen(2024);
  const tensor centres = tensor::normal(shape{4, 10}, gen, 0.0f, 2.0f);
  const dataset train = make_blobs(512, centres, gen);
  const dataset test = make_blobs(256, centres, gen);
  nn::sequential mlp;
  mlp.emplace<nn::linear<>>(10, 32, gen, ops::activation::relu);
  mlp.emplace<nn::linear<>>(32, 4, gen);
  nn::adam<> optimizer(mlp.parameters(), {.learning_rate = 1e-2f});
  nn::cross_entropy_loss<> loss;
  float first = 0, last = 0;
  for (int step = 0; step < 200; ++step) {
    const std::int64_t begin = (step * 64) % 512;
    optimizer.zero_grad();
    const tensor logits = mlp.forward(train.x.rows(begin, begin + 64));
    last = loss.forward(logits, train.labels.rows(begin, begin + 64));
    if (step == 0) first = last;
    mlp.backward(loss.backward());
    optimizer.step();
  }
  mlp.set_training(false);
  const double acc = accuracy(mlp.forward(test.x), test.labels);
  BOOST_TEST_MESSAGE("mlp: loss " << first << " -> " << last << ", test accuracy " << acc);
  BOOST_TEST(acc >= 0.9);
  BOOST_TEST(last < first);
}

BOOST_AUTO_TEST_CASE(tiny_transformer_loss_falls_on_a_repeated_sequence, *boost::unit_test::label("train")) {
  // Next-token prediction on a fixed sequence: embedding -> block -> linear to the vocabulary.
  const std::int64_t vocabulary = 11, width = 16, seq = 12, batch = 4;
  random_engine gen(7);
  nn::embedding<> embed(vocabulary, width, gen);
  nn::transformer_block<> block(width, 2, gen);
  nn::linear<> head(width, vocabulary, gen);
  nn::parameter_list params;
  nn::append_parameters(params, "embed", embed.parameters());
  nn::append_parameters(params, "block", block.parameters());
  nn::append_parameters(params, "head", head.parameters());
  nn::adam<> optimizer(params, {.learning_rate = 1e-2f});
  nn::cross_entropy_loss<> loss;
  const std::vector<std::int64_t> pattern{3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9};
  tensor inputs(shape{batch, seq}, dtype::i64), targets(shape{batch * seq}, dtype::i64);
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t t = 0; t < seq; ++t) {
      inputs.at<std::int64_t>(b, t) = pattern[static_cast<std::size_t>((b + t) % 15)] % vocabulary;
      targets.at<std::int64_t>(b * seq + t) = pattern[static_cast<std::size_t>((b + t + 1) % 15)] % vocabulary;
    }
  float first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    optimizer.zero_grad();
    const tensor logits = head.forward(block.forward(embed.forward(inputs)));
    last = loss.forward(logits.reshape(shape{batch * seq, vocabulary}), targets);
    if (step == 0) first = last;
    const tensor dlogits = loss.backward().reshape(shape{batch, seq, vocabulary});
    embed.backward(block.backward(head.backward(dlogits)));
    optimizer.step();
  }
  BOOST_TEST_MESSAGE("transformer: loss " << first << " -> " << last);
  BOOST_TEST(std::isfinite(last));
  BOOST_TEST(last < 0.25f * first);
}

BOOST_AUTO_TEST_SUITE_END()
