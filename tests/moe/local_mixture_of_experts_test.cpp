// Tests of dmoe/moe/local_mixture_of_experts.hpp: routing against brute force, failed experts, per-sample k_min, gradients by finite differences, naming, and a training run.
#include <dmoe/moe/local_mixture_of_experts.hpp>
#include <dmoe/nn/adam.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/loss.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <string>
#include <vector>

using namespace dmoe;
namespace tt = boost::test_tools;

namespace {

using layer = moe::local_mixture_of_experts<>;

// Every expert's score for sample b, from the gating's weights in double: [experts].
std::vector<double> all_scores(layer& moe_layer, const tensor& x, std::int64_t b) {
  const tensor& w = moe_layer.gating().projection().weight();
  const tensor& bias = moe_layer.gating().projection().bias();
  const std::int64_t in = w.dim(1);
  // The gating sees the mean over the dimensions between batch and last.
  const std::int64_t steps = x.numel() / (x.dim(0) * in);
  std::vector<double> xin(static_cast<std::size_t>(in), 0.0);
  for (std::int64_t t = 0; t < steps; ++t)
    for (std::int64_t i = 0; i < in; ++i) xin[static_cast<std::size_t>(i)] += x.data<float>()[(b * steps + t) * in + i];
  for (double& v : xin) v /= static_cast<double>(steps);
  std::vector<double> g(static_cast<std::size_t>(w.dim(0)));
  for (std::int64_t o = 0; o < w.dim(0); ++o) {
    double s = bias.data<float>()[o];
    for (std::int64_t i = 0; i < in; ++i) s += static_cast<double>(w.at(o, i)) * xin[static_cast<std::size_t>(i)];
    g[static_cast<std::size_t>(o)] = s;
  }
  const auto offsets = moe::grid_offsets(moe_layer.config().grid);
  std::vector<double> scores(static_cast<std::size_t>(moe_layer.num_experts()));
  for (std::int64_t e = 0; e < moe_layer.num_experts(); ++e) {
    const auto c = moe_layer.coordinates_of(e);
    double s = 0.0;
    for (std::size_t d = 0; d < c.size(); ++d) s += g[static_cast<std::size_t>(offsets[d] + c[d])];
    scores[static_cast<std::size_t>(e)] = s;
  }
  return scores;
}

// Experts of sample b best first (flat indices).
std::vector<std::int64_t> ranked(const std::vector<double>& scores) {
  std::vector<std::int64_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    return scores[static_cast<std::size_t>(a)] > scores[static_cast<std::size_t>(b)];
  });
  return order;
}

// The layer's output computed directly: score all experts, take the k best, drop the failed ones,
// softmax over the rest, and run each chosen expert alone on the sample.
struct reference {
  std::vector<double> y;
  std::vector<std::vector<std::int64_t>> chosen;  // per sample, best first
  std::vector<std::vector<double>> weights;       // per sample, 0 for failed experts
};

reference brute_force(layer& moe_layer, const tensor& x, std::int64_t k, const std::set<std::int64_t>& failed = {}) {
  reference ref;
  const std::int64_t batch = x.dim(0);
  const std::int64_t row = moe_layer.schema().output.sample_shape.numel();
  ref.y.assign(static_cast<std::size_t>(batch * row), 0.0);
  for (std::int64_t b = 0; b < batch; ++b) {
    const auto scores = all_scores(moe_layer, x, b);
    const auto order = ranked(scores);
    std::vector<std::int64_t> chosen(order.begin(), order.begin() + k);
    std::vector<double> w(static_cast<std::size_t>(k), 0.0);
    double total = 0.0;
    for (std::size_t j = 0; j < chosen.size(); ++j)
      if (!failed.contains(chosen[j])) total += w[j] = std::exp(scores[static_cast<std::size_t>(chosen[j])]);
    for (std::size_t j = 0; j < chosen.size(); ++j) {
      if (w[j] == 0.0) continue;
      w[j] /= total;
      const tensor one = x.rows(b, b + 1).clone();
      const tensor y = moe_layer.expert(chosen[j]).forward(one);
      for (std::int64_t i = 0; i < row; ++i)
        ref.y[static_cast<std::size_t>(b * row + i)] += w[j] * y.data<float>()[i];
    }
    ref.chosen.push_back(chosen);
    ref.weights.push_back(w);
  }
  return ref;
}

// The smallest gap, over the samples, between the k-th best expert score and the next.
double top_k_margin(layer& moe_layer, const tensor& x, std::int64_t k) {
  double margin = HUGE_VAL;
  for (std::int64_t b = 0; b < x.dim(0); ++b) {
    auto scores = all_scores(moe_layer, x, b);
    std::sort(scores.begin(), scores.end(), std::greater<>());
    margin = std::min(margin, scores[static_cast<std::size_t>(k - 1)] - scores[static_cast<std::size_t>(k)]);
  }
  return margin;
}

// Rows drawn until each one's k best experts beat the rest by at least `margin`: finite differences
// then never change the (piecewise constant) choice of experts.
tensor inputs_with_margin(layer& moe_layer, shape s, std::int64_t k, double margin, random_engine& gen) {
  tensor x = tensor::normal(s, gen);
  for (std::int64_t b = 0; b < s[0]; ++b)
    for (int attempt = 0;; ++attempt) {
      BOOST_REQUIRE(attempt < 1000);
      if (top_k_margin(moe_layer, x.rows(b, b + 1), k) >= margin) break;
      x.rows(b, b + 1).fill_normal(gen);
    }
  return x;
}

bool all_finite(const tensor& t) {
  return std::all_of(t.span<float>().begin(), t.span<float>().end(), [](float v) { return std::isfinite(v); });
}
bool all_zero(const tensor& t) {
  return std::all_of(t.span<float>().begin(), t.span<float>().end(), [](float v) { return v == 0.0f; });
}
bool any_nonzero(const tensor& t) {
  return std::any_of(t.span<float>().begin(), t.span<float>().end(), [](float v) { return std::abs(v) > 1e-4f; });
}

const nn::parameter& find_parameter(const nn::parameter_list& params, const std::string& name) {
  const auto it = std::find_if(params.begin(), params.end(), [&](const nn::parameter& p) { return p.name == name; });
  BOOST_REQUIRE_MESSAGE(it != params.end(), "no parameter " << name);
  return *it;
}

// Checks dx, the gating's gradients and the gradients of the named experts against central
// differences of sum(forward(x, call) * w); checks that unrouted experts get no gradient.
void check_layer_gradients(layer& moe_layer, tensor x, const moe::call_conditions& call,
                           const std::vector<std::string>& experts_to_check, std::uint64_t seed) {
  random_engine gen(seed);
  const tensor y0 = moe_layer.forward(x, call).clone();
  const tensor w = tensor::normal(y0.shape(), gen);
  moe_layer.zero_grad();
  moe_layer.forward(x, call);
  const tensor dx = moe_layer.backward(w).clone();
  const nn::parameter_list params = moe_layer.parameters();
  const auto loss = [&] { return test::weighted_sum(moe_layer.forward(x, call), w); };
  test::check_gradient("dx", dx, test::numeric_gradient(x, loss), 2e-2);
  BOOST_TEST(any_nonzero(dx));
  for (const nn::parameter& p : params) {
    const bool gating = p.name.starts_with("gating.");
    const bool checked = std::any_of(experts_to_check.begin(), experts_to_check.end(),
                                     [&](const std::string& uid) { return p.name.starts_with("experts." + uid + "."); });
    if (!gating && !checked) continue;
    const tensor analytic = p.grad->clone();
    BOOST_TEST_CONTEXT(p.name) {
      test::check_gradient("d" + p.name, analytic, test::numeric_gradient(*p.value, loss), 2e-2);
      BOOST_TEST(any_nonzero(analytic));
    }
  }
  // Experts no sample reached have no gradient.
  std::set<std::string> routed;
  for (std::int64_t b = 0; b < moe_layer.routing().selection.batch_size; ++b)
    for (std::int64_t j = 0; j < moe_layer.routing().selection.k; ++j)
      if (moe_layer.routing().answered(b, j))
        routed.insert(moe_layer.uid(moe_layer.index_of(moe_layer.routing().selection.expert(b, j))));
  for (const std::string& uid : moe_layer.uids())
    if (!routed.contains(uid))
      for (const nn::parameter& p : moe_layer.expert(uid).parameters()) BOOST_TEST(all_zero(*p.grad), uid << " " << p.name);
}

// The experts reached by most samples in the last forward (uids), most used first.
std::vector<std::string> busiest_experts(layer& moe_layer, std::size_t count) {
  std::vector<std::int64_t> uses(static_cast<std::size_t>(moe_layer.num_experts()), 0);
  const auto& r = moe_layer.routing();
  for (std::int64_t b = 0; b < r.selection.batch_size; ++b)
    for (std::int64_t j = 0; j < r.selection.k; ++j)
      if (r.answered(b, j)) ++uses[static_cast<std::size_t>(moe_layer.index_of(r.selection.expert(b, j)))];
  std::vector<std::string> out;
  for (std::int64_t e : ranked(std::vector<double>(uses.begin(), uses.end())))
    if (out.size() < count && uses[static_cast<std::size_t>(e)] > 0) out.push_back(moe_layer.uid(e));
  return out;
}

// Gives every bias and layer-norm scale random values so no gradient is trivially symmetric.
void randomize_biases(layer& moe_layer, random_engine& gen) {
  for (const nn::parameter& p : moe_layer.parameters())
    if (p.name.ends_with("bias") || p.name.ends_with("norm.weight"))
      p.value->fill_normal(gen, p.name.ends_with("norm.weight") ? 1.0f : 0.0f, 0.3f);
}

// An expert that records the rows it is given (each row's first value) and is otherwise a linear map.
class recording_expert : public nn::module {
 public:
  recording_expert(std::int64_t hidden, random_engine& gen) : inner_(hidden, hidden, gen) {}
  tensor forward(const tensor& x) override {
    ++forwards;
    seen.assign(x.span<float>().begin(), x.span<float>().end());
    rows = x.dim(0);
    return inner_.forward(x);
  }
  tensor backward(const tensor& dy) override {
    ++backwards;
    backward_rows = dy.dim(0);
    return inner_.backward(dy);
  }
  nn::parameter_list parameters() override { return inner_.parameters(); }

  int forwards = 0, backwards = 0;
  std::int64_t rows = 0, backward_rows = 0;
  std::vector<float> seen;

 private:
  nn::linear<> inner_;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(moe_local_mixture_of_experts)

BOOST_AUTO_TEST_CASE(output_equals_brute_force_routing) {
  random_engine gen(1);
  layer moe_layer({.grid = {4, 4}, .k = 3}, "ffn", 8, 77, gen);
  moe_layer.gating().projection().bias().fill_normal(gen, 0.0f, 0.5f);
  const tensor x = tensor::normal(shape{16, 8}, gen);
  const tensor y = moe_layer.forward(x).clone();
  BOOST_TEST((y.shape() == shape{16, 8}));
  const moe::moe_routing routing = moe_layer.routing();
  const reference ref = brute_force(moe_layer, x, 3);
  test::check_close("y", y, ref.y, 1e-4);
  for (std::int64_t b = 0; b < 16; ++b) {
    BOOST_TEST(routing.responders[static_cast<std::size_t>(b)] == 3);
    for (std::int64_t j = 0; j < 3; ++j) {
      BOOST_TEST(moe_layer.index_of(routing.selection.expert(b, j)) == ref.chosen[static_cast<std::size_t>(b)][static_cast<std::size_t>(j)]);
      BOOST_TEST(routing.weight(b, j) == ref.weights[static_cast<std::size_t>(b)][static_cast<std::size_t>(j)], tt::tolerance(1e-5));
    }
  }
  BOOST_TEST(routing.short_samples.empty());
}

BOOST_AUTO_TEST_CASE(each_expert_runs_once_on_its_samples_in_order) {
  random_engine gen(2);
  std::vector<recording_expert*> experts;
  layer moe_layer({.grid = {3, 2}, .k = 2, .uid_prefix = "rec"}, nn::expert_schema{{shape{4}}, {shape{4}}},
                  [&](const std::string&, std::span<const std::uint32_t>) {
                    auto e = std::make_unique<recording_expert>(4, gen);
                    experts.push_back(e.get());
                    return std::unique_ptr<nn::module>(std::move(e));
                  },
                  gen);
  BOOST_TEST_REQUIRE(experts.size() == 6u);
  BOOST_TEST(moe_layer.uids().front() == "rec.0.0");
  tensor x = tensor::normal(shape{10, 4}, gen);
  for (std::int64_t b = 0; b < 10; ++b) x.at(b, 0) = static_cast<float>(b);  // tags each row with its sample
  const tensor y = moe_layer.forward(x);
  std::int64_t total_rows = 0;
  for (std::int64_t e = 0; e < 6; ++e) {
    std::vector<float> expected;
    for (std::int64_t b = 0; b < 10; ++b)
      for (std::int64_t j = 0; j < 2; ++j)
        if (moe_layer.index_of(moe_layer.routing().selection.expert(b, j)) == e)
          expected.insert(expected.end(), x.data<float>() + b * 4, x.data<float>() + b * 4 + 4);
    const auto& rec = *experts[static_cast<std::size_t>(e)];
    BOOST_TEST(rec.forwards == (expected.empty() ? 0 : 1));
    if (!expected.empty()) BOOST_TEST(rec.seen == expected, tt::per_element());
    total_rows += rec.forwards ? rec.rows : 0;
  }
  BOOST_TEST(total_rows == 10 * 2);
  moe_layer.backward(tensor::normal(y.shape(), gen));
  for (const recording_expert* rec : experts) {
    BOOST_TEST(rec->backwards == rec->forwards);
    if (rec->backwards) BOOST_TEST(rec->backward_rows == rec->rows);
  }
  BOOST_CHECK_THROW(moe_layer.backward(tensor::normal(y.shape(), gen)), invalid_argument_error);  // one per forward
}

BOOST_AUTO_TEST_CASE(failed_experts_are_dropped_and_the_softmax_is_over_responders) {
  random_engine gen(3);
  layer moe_layer({.grid = {4, 4}, .k = 3, .k_min = 0}, "ffn", 6, 5, gen);
  const tensor x = tensor::normal(shape{12, 6}, gen);
  moe_layer.forward(x);
  // Fail sample 0's best expert and sample 1's second best.
  const std::vector<std::int64_t> failed{moe_layer.index_of(moe_layer.routing().selection.expert(0, 0)),
                                         moe_layer.index_of(moe_layer.routing().selection.expert(1, 1))};
  const tensor y = moe_layer.forward(x, {.failed = failed}).clone();
  const reference ref = brute_force(moe_layer, x, 3, {failed.begin(), failed.end()});
  test::check_close("y", y, ref.y, 1e-4);
  const auto& r = moe_layer.routing();
  std::int64_t dropped = 0;
  for (std::int64_t b = 0; b < 12; ++b) {
    double sum = 0.0;
    std::int64_t answered = 0;
    for (std::int64_t j = 0; j < 3; ++j) {
      const bool gone = std::find(failed.begin(), failed.end(), moe_layer.index_of(r.selection.expert(b, j))) != failed.end();
      BOOST_TEST(r.answered(b, j) == !gone);
      if (gone) BOOST_TEST(r.weight(b, j) == 0.0f);
      sum += r.weight(b, j);
      answered += !gone;
      dropped += gone;
    }
    BOOST_TEST(r.responders[static_cast<std::size_t>(b)] == answered);
    BOOST_TEST(sum == 1.0, tt::tolerance(1e-5));
  }
  BOOST_TEST(dropped >= 2);
  BOOST_TEST(!r.answered(0, 0));
  BOOST_TEST(!r.answered(1, 1));
}

BOOST_AUTO_TEST_CASE(a_sample_with_no_responders_gets_zeros_and_no_nan) {
  random_engine gen(4);
  for (const auto policy : {moe::shortfall_policy::raise, moe::shortfall_policy::flag}) {
    // k_min 0 with raise, k_min 1 with flag: both let a sample lose all its experts.
    layer moe_layer({.grid = {4, 4}, .k = 2, .k_min = policy == moe::shortfall_policy::raise ? 0 : 1,
                     .on_shortfall = policy},
                    "ffn", 6, 9, gen);
    const tensor x = tensor::normal(shape{8, 6}, gen);
    moe_layer.forward(x);
    const std::vector<std::int64_t> failed{moe_layer.index_of(moe_layer.routing().selection.expert(0, 0)),
                                           moe_layer.index_of(moe_layer.routing().selection.expert(0, 1))};
    moe_layer.zero_grad();
    const tensor y = moe_layer.forward(x, {.failed = failed}).clone();
    BOOST_TEST(moe_layer.routing().responders[0] == 0);
    BOOST_TEST(moe_layer.routing().weight(0, 0) == 0.0f);
    BOOST_TEST(all_finite(y));
    BOOST_TEST(all_zero(y.row(0)));
    BOOST_TEST(any_nonzero(y));
    const tensor dx = moe_layer.backward(tensor::normal(y.shape(), gen));
    BOOST_TEST(all_finite(dx));
    BOOST_TEST(all_zero(dx.row(0)));
    BOOST_TEST(any_nonzero(dx));
    for (const nn::parameter& p : moe_layer.parameters()) BOOST_TEST(all_finite(*p.grad), p.name);
    if (policy == moe::shortfall_policy::flag) {
      BOOST_TEST_REQUIRE(!moe_layer.routing().short_samples.empty());
      BOOST_TEST(moe_layer.routing().short_samples.front() == 0);
    }
  }
  // Everything failed: all zeros, still finite.
  layer moe_layer({.grid = {2, 2}, .k = 2, .k_min = 0}, "ffn", 4, 1, gen);
  const std::vector<std::int64_t> every{0, 1, 2, 3};
  const tensor x = tensor::normal(shape{3, 4}, gen);
  const tensor y = moe_layer.forward(x, {.failed = every});
  BOOST_TEST(all_zero(y));
  const tensor dx = moe_layer.backward(tensor::normal(y.shape(), gen));
  BOOST_TEST(all_zero(dx));
}

BOOST_AUTO_TEST_CASE(k_min_is_per_sample) {
  random_engine gen(6);
  layer strict({.grid = {4, 4}, .k = 2, .k_min = 2}, "nop", 6, 0, gen);
  const tensor x = tensor::normal(shape{16, 6}, gen);
  strict.forward(x);
  // Fail one expert of sample 3: most experts of the batch still answer (a check over the whole
  // batch would pass), but sample 3 has 1 responder of the 2 it needs.
  const std::int64_t gone = strict.index_of(strict.routing().selection.expert(3, 1));
  const std::vector<std::int64_t> failed{gone};
  std::set<std::int64_t> short_expected;
  for (std::int64_t b = 0; b < 16; ++b)
    for (std::int64_t j = 0; j < 2; ++j)
      if (strict.index_of(strict.routing().selection.expert(b, j)) == gone) short_expected.insert(b);
  try {
    strict.forward(x, {.failed = failed});
    BOOST_FAIL("no error for a sample below k_min");
  } catch (const unavailable_error& e) {
    const std::string first = fmt::format("sample {} has 1 of its 2 chosen experts answering but k_min is 2",
                                          *short_expected.begin());
    BOOST_TEST(std::string(e.what()).find(first) != std::string::npos, e.what());
  }
  BOOST_CHECK_THROW(strict.backward(tensor(shape{16, 6})), invalid_argument_error);  // the failed forward left nothing

  layer flagging({.grid = {4, 4}, .k = 2, .k_min = 2, .on_shortfall = moe::shortfall_policy::flag}, "nop", 6, 0, gen);
  flagging.gating().projection().weight().copy_from(strict.gating().projection().weight());
  const tensor y = flagging.forward(x, {.failed = failed});
  const auto& r = flagging.routing();
  BOOST_TEST((std::set<std::int64_t>(r.short_samples.begin(), r.short_samples.end()) == short_expected));
  BOOST_TEST(r.short_samples.size() < 16u);
  for (std::int64_t b : short_expected) {
    BOOST_TEST(r.responders[static_cast<std::size_t>(b)] == 1);
    // The responder gets all the weight: a nop expert's output is the sample itself.
    for (std::int64_t i = 0; i < 6; ++i) BOOST_TEST(y.at(b, i) == x.at(b, i), tt::tolerance(1e-5f));
  }

  // k_min 1 (the default): one failure per sample is fine.
  layer lenient({.grid = {4, 4}, .k = 2}, "nop", 6, 0, gen);
  lenient.forward(x);
  BOOST_CHECK_NO_THROW(lenient.forward(x, {.failed = failed}));
  BOOST_TEST(lenient.routing().short_samples.empty());
}

BOOST_AUTO_TEST_CASE(gradients_match_finite_differences) {
  // The choice of experts is piecewise constant in x and the gating weights; the inputs are drawn
  // so that every sample's k best experts beat the next by a margin far above what a step of
  // 1e-2 can change, so the differences never cross a selection boundary.
  random_engine gen(7);
  layer moe_layer({.grid = {3, 3}, .k = 2}, "ffn", 4, 11, gen);
  randomize_biases(moe_layer, gen);
  const tensor x = inputs_with_margin(moe_layer, shape{6, 4}, 2, 0.3, gen);
  BOOST_TEST_REQUIRE(top_k_margin(moe_layer, x, 2) >= 0.3);
  moe_layer.forward(x);
  check_layer_gradients(moe_layer, x, {}, busiest_experts(moe_layer, 2), 8);
}

BOOST_AUTO_TEST_CASE(gradients_with_failed_experts_match_finite_differences) {
  random_engine gen(9);
  layer moe_layer({.grid = {3, 3}, .k = 3, .k_min = 0}, "ffn", 4, 12, gen);
  randomize_biases(moe_layer, gen);
  const tensor x = inputs_with_margin(moe_layer, shape{6, 4}, 3, 0.3, gen);
  moe_layer.forward(x);
  // Sample 0 loses all its experts, sample 1 its best one.
  std::vector<std::int64_t> failed;
  for (std::int64_t j = 0; j < 3; ++j) failed.push_back(moe_layer.index_of(moe_layer.routing().selection.expert(0, j)));
  failed.push_back(moe_layer.index_of(moe_layer.routing().selection.expert(1, 0)));
  moe_layer.forward(x, {.failed = failed});
  check_layer_gradients(moe_layer, x, {.failed = failed}, busiest_experts(moe_layer, 1), 10);
  BOOST_TEST(moe_layer.routing().responders[0] == 0);
}

BOOST_AUTO_TEST_CASE(gradients_through_a_sequence_input_match_finite_differences) {
  // Custom experts on [3, 4] samples (a linear map per position); the gating sees the mean over positions.
  random_engine gen(13);
  layer moe_layer({.grid = {2, 3}, .k = 2, .uid_prefix = "seq"}, nn::expert_schema{{shape{3, 4}}, {shape{3, 4}}},
                  [&](const std::string&, std::span<const std::uint32_t>) {
                    auto e = std::make_unique<nn::linear<>>(4, 4, gen, ops::activation::gelu);
                    e->bias().fill_normal(gen, 0.0f, 0.3f);
                    return std::unique_ptr<nn::module>(std::move(e));
                  },
                  gen);
  const tensor x = inputs_with_margin(moe_layer, shape{5, 3, 4}, 2, 0.2, gen);
  moe_layer.forward(x);
  check_layer_gradients(moe_layer, x, {}, busiest_experts(moe_layer, 2), 14);
}

BOOST_AUTO_TEST_CASE(backward_failures_drop_only_that_experts_gradients) {
  random_engine gen(15);
  layer moe_layer({.grid = {4, 4}, .k = 2}, "ffn", 6, 3, gen);
  const tensor x = tensor::normal(shape{12, 6}, gen);
  const tensor dy = tensor::normal(shape{12, 6}, gen);
  moe_layer.zero_grad();
  moe_layer.forward(x);
  const tensor dx_all = moe_layer.backward(dy).clone();
  const std::string lost = busiest_experts(moe_layer, 1).front();
  std::vector<tensor> grads_all;
  for (const nn::parameter& p : moe_layer.parameters()) grads_all.push_back(p.grad->clone());

  moe_layer.zero_grad();
  moe_layer.forward(x);
  const std::vector<std::int64_t> failed{moe_layer.index_of(lost)};
  const tensor dx_part = moe_layer.backward(dy, failed);
  const nn::parameter_list params = moe_layer.parameters();
  for (std::size_t i = 0; i < params.size(); ++i) {
    const tensor& g = *params[i].grad;
    if (params[i].name.starts_with("experts." + lost + "."))
      BOOST_TEST(all_zero(g), params[i].name);
    else  // the gating and the other experts get what they got before
      BOOST_TEST(std::equal(g.span<float>().begin(), g.span<float>().end(), grads_all[i].span<float>().begin()),
                 params[i].name);
  }
  // dx differs exactly in the rows routed to the lost expert.
  for (std::int64_t b = 0; b < 12; ++b) {
    bool routed = false;
    for (std::int64_t j = 0; j < 2; ++j) routed |= moe_layer.uid(moe_layer.index_of(moe_layer.routing().selection.expert(b, j))) == lost;
    const bool same = std::equal(dx_part.row(b).span<float>().begin(), dx_part.row(b).span<float>().end(),
                                 dx_all.row(b).span<float>().begin());
    BOOST_TEST(same == !routed, "sample " << b);
  }
}

BOOST_AUTO_TEST_CASE(a_given_selection_is_used_and_rescored) {
  random_engine gen(17);
  layer moe_layer({.grid = {4, 4}, .k = 2, .k_min = 0}, "ffn", 6, 4, gen);
  const tensor x = tensor::normal(shape{5, 6}, gen);
  // Each sample's 3rd and 5th best experts, as a beam search that missed the best ones might return.
  moe::grid_selection chosen{.grid = {4, 4}, .batch_size = 5, .k = 2, .coordinates = {}, .scores = {}};
  std::vector<std::vector<double>> scores;
  for (std::int64_t b = 0; b < 5; ++b) {
    scores.push_back(all_scores(moe_layer, x, b));
    const auto order = ranked(scores.back());
    for (const std::int64_t e : {order[2], order[4]}) {
      const auto c = moe_layer.coordinates_of(e);
      chosen.coordinates.insert(chosen.coordinates.end(), c.begin(), c.end());
    }
    chosen.scores.push_back(1e6f);  // ignored: the layer scores the experts itself
    chosen.scores.push_back(-1e6f);
  }
  const tensor y = moe_layer.forward(x, {.selection = &chosen}).clone();
  const auto& r = moe_layer.routing();
  std::vector<double> expected(static_cast<std::size_t>(5 * 6), 0.0);
  for (std::int64_t b = 0; b < 5; ++b) {
    const auto order = ranked(scores[static_cast<std::size_t>(b)]);
    const double s2 = scores[static_cast<std::size_t>(b)][static_cast<std::size_t>(order[2])];
    const double s4 = scores[static_cast<std::size_t>(b)][static_cast<std::size_t>(order[4])];
    BOOST_TEST(r.selection.score(b, 0) == s2, tt::tolerance(1e-4));
    BOOST_TEST(r.weight(b, 0) == 1.0 / (1.0 + std::exp(s4 - s2)), tt::tolerance(1e-4));
    const tensor one = x.rows(b, b + 1).clone();
    const double w[2] = {r.weight(b, 0), r.weight(b, 1)};
    const std::int64_t e[2] = {order[2], order[4]};
    for (int j = 0; j < 2; ++j) {
      const tensor out = moe_layer.expert(e[j]).forward(one);
      for (std::int64_t i = 0; i < 6; ++i) expected[static_cast<std::size_t>(b * 6 + i)] += w[j] * out.data<float>()[i];
    }
  }
  test::check_close("y", y, expected, 1e-4);

  moe::grid_selection twice = chosen;
  std::copy(twice.coordinates.begin(), twice.coordinates.begin() + 2, twice.coordinates.begin() + 2);
  BOOST_CHECK_THROW(moe_layer.forward(x, {.selection = &twice}), invalid_argument_error);
  moe::grid_selection other_grid = chosen;
  other_grid.grid = {2, 8};
  BOOST_CHECK_THROW(moe_layer.forward(x, {.selection = &other_grid}), invalid_argument_error);
  moe::grid_selection outside = chosen;
  outside.coordinates[1] = 4;
  BOOST_CHECK_THROW(moe_layer.forward(x, {.selection = &outside}), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(uids_and_parameter_names) {
  random_engine gen(19);
  layer moe_layer({.grid = {4, 4}, .k = 2}, "ffn", 8, 123, gen);
  BOOST_TEST(moe_layer.num_experts() == 16);
  BOOST_TEST_REQUIRE(moe_layer.uids().size() == 16u);
  BOOST_TEST(moe_layer.uids()[0] == "ffn.0.0");
  BOOST_TEST(moe_layer.uids()[9] == "ffn.2.1");
  BOOST_TEST(moe_layer.uids()[15] == "ffn.3.3");
  BOOST_TEST(moe_layer.index_of("ffn.2.1") == 9);
  BOOST_TEST(moe_layer.index_of(std::vector<std::uint32_t>{2, 1}) == 9);
  BOOST_TEST(moe_layer.coordinates_of(9) == (std::vector<std::uint32_t>{2, 1}), tt::per_element());
  BOOST_TEST(&moe_layer.expert("ffn.2.1") == &moe_layer.expert(9));
  BOOST_CHECK_THROW(moe_layer.index_of("ffn.4.0"), invalid_argument_error);
  BOOST_CHECK_THROW(moe_layer.index_of(std::vector<std::uint32_t>{0, 4}), invalid_argument_error);
  BOOST_CHECK_THROW(moe_layer.expert(16), invalid_argument_error);

  const nn::parameter_list params = moe_layer.parameters();
  BOOST_TEST(params[0].name == "gating.projection.weight");
  BOOST_TEST(params[1].name == "gating.projection.bias");
  BOOST_TEST((params[0].value->shape() == shape{8, 8}));  // 4 + 4 grid scores from 8 features
  const nn::parameter& fc1 = find_parameter(params, "experts.ffn.2.1.fc1.weight");
  BOOST_TEST(fc1.value == moe_layer.expert(9).parameters()[0].value);
  find_parameter(params, "experts.ffn.3.3.norm.weight");
  std::set<std::string> names;
  for (const nn::parameter& p : params) names.insert(p.name);
  BOOST_TEST(names.size() == params.size());
  BOOST_TEST(moe_layer.parameter_count() == 8 * 8 + 8 + 16 * nn::make_expert("ffn", 8, 0)->parameter_count());
  BOOST_CHECK_NO_THROW(nn::adam<>(moe_layer.parameters()));  // names an optimizer and a checkpoint accept

  // A server making "ffn.2.1" with the same base seed starts from the same parameters.
  const auto same = nn::make_expert("ffn", 8, moe::expert_seed("ffn.2.1", 123));
  const tensor& a = *same->parameters()[0].value;
  BOOST_TEST(std::equal(a.span<float>().begin(), a.span<float>().end(), fc1.value->span<float>().begin()));
  const tensor& other = *moe_layer.expert("ffn.2.2").parameters()[0].value;
  BOOST_TEST(!std::equal(a.span<float>().begin(), a.span<float>().end(), other.span<float>().begin()));

  layer renamed({.grid = {2, 3, 2}, .k = 1, .uid_prefix = "block"}, "nop", 4, 0, gen);
  BOOST_TEST(renamed.uids()[renamed.num_experts() - 1] == "block.1.2.1");
  BOOST_TEST(renamed.parameters().size() == 2u);
}

BOOST_AUTO_TEST_CASE(refuses_bad_arguments) {
  random_engine gen(23);
  BOOST_CHECK_THROW(layer({.grid = {2, 2}, .k = 5}, "nop", 4, 0, gen), invalid_argument_error);
  BOOST_CHECK_THROW(layer({.grid = {2, 2}, .k = 0}, "nop", 4, 0, gen), invalid_argument_error);
  BOOST_CHECK_THROW(layer({.grid = {2, 2}, .k = 2, .k_min = 3}, "nop", 4, 0, gen), invalid_argument_error);
  BOOST_CHECK_THROW(layer({.grid = {2, 0}, .k = 1}, "nop", 4, 0, gen), invalid_argument_error);
  BOOST_CHECK_THROW(layer({.grid = {2, 2}, .k = 1}, "no-such-kind", 4, 0, gen), invalid_argument_error);
  // A custom module whose schema disagrees with the layer's.
  BOOST_CHECK_THROW(layer({.grid = {2, 2}, .k = 1}, nn::expert_schema{{shape{4}}, {shape{4}}},
                          [](const std::string&, std::span<const std::uint32_t>) {
                            return std::unique_ptr<nn::module>(nn::make_expert("nop", 5, 0));
                          },
                          gen),
                    invalid_argument_error);
  layer moe_layer({.grid = {2, 2}, .k = 2}, "nop", 4, 0, gen);
  BOOST_CHECK_THROW(moe_layer.forward(tensor(shape{3, 5})), shape_error);
  BOOST_CHECK_THROW(moe_layer.backward(tensor(shape{3, 4})), invalid_argument_error);
  const std::vector<std::int64_t> bad{4};
  BOOST_CHECK_THROW(moe_layer.forward(tensor(shape{3, 4}), {.failed = bad}), invalid_argument_error);
  moe_layer.forward(tensor::normal(shape{3, 4}, gen));
  BOOST_CHECK_THROW(moe_layer.backward(tensor(shape{2, 4})), shape_error);
}

BOOST_AUTO_TEST_CASE(learns_a_classification_problem, *boost::unit_test::label("train")) {
  // Each class is two blobs at +c and -c: every class has mean zero, so no linear model of the raw
  // input beats chance (checked below); the experts have to learn it.
  const std::int64_t features = 8, classes = 4, batch = 64;
  random_engine gen(2024);
  const tensor centres = tensor::normal(shape{classes, features}, gen, 0.0f, 2.0f);
  const auto make = [&](std::int64_t n) {
    std::pair<tensor, tensor> d{tensor::normal(shape{n, features}, gen), tensor(shape{n}, dtype::i64)};
    std::uniform_int_distribution<std::int64_t> pick(0, 2 * classes - 1);
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t blob = pick(gen), c = blob / 2;
      const float sign = blob % 2 ? 1.0f : -1.0f;
      d.second.at<std::int64_t>(i) = c;
      for (std::int64_t j = 0; j < features; ++j) d.first.at(i, j) += sign * centres.at(c, j);
    }
    return d;
  };
  const auto test_set = make(512);
  const tensor& test_x = test_set.first;
  const tensor& test_y = test_set.second;
  const auto accuracy = [&](const tensor& logits) {
    std::int64_t right = 0;
    for (std::int64_t i = 0; i < logits.dim(0); ++i) {
      std::int64_t best = 0;
      for (std::int64_t c = 1; c < classes; ++c)
        if (logits.at(i, c) > logits.at(i, best)) best = c;
      right += best == test_y.at<std::int64_t>(i);
    }
    return static_cast<double>(right) / static_cast<double>(logits.dim(0));
  };
  // Trains `forward`/`backward` (a model ending in logits) for 200 steps of fresh samples.
  const auto train = [&](nn::parameter_list params, const auto& forward, const auto& backward) {
    nn::adam<> optimizer(std::move(params), {.learning_rate = 1e-2f});
    nn::cross_entropy_loss<> loss;
    std::pair<float, float> first_last{0.0f, 0.0f};
    for (int step = 0; step < 200; ++step) {
      const auto [x, labels] = make(batch);  // fresh samples each step: nothing to memorise
      optimizer.zero_grad();
      first_last.second = loss.forward(forward(x), labels);
      if (step == 0) first_last.first = first_last.second;
      backward(loss.backward());
      optimizer.step();
    }
    return first_last;
  };

  nn::linear<> linear_only(features, classes, gen);
  train(linear_only.parameters(), [&](const tensor& x) { return linear_only.forward(x); },
        [&](const tensor& d) { linear_only.backward(d); });
  const double linear_accuracy = accuracy(linear_only.forward(test_x));

  layer moe_layer({.grid = {4, 4}, .k = 2}, "ffn", features, 31, gen);
  nn::linear<> head(features, classes, gen);
  nn::parameter_list params;
  nn::append_parameters(params, "moe", moe_layer.parameters());
  nn::append_parameters(params, "head", head.parameters());
  const tensor gating_before = moe_layer.gating().projection().weight().clone();
  std::set<std::int64_t> used;
  const auto [first, last] = train(
      params,
      [&](const tensor& x) {
        const tensor logits = head.forward(moe_layer.forward(x));
        for (std::int64_t b = 0; b < x.dim(0); ++b)
          used.insert(moe_layer.index_of(moe_layer.routing().selection.expert(b, 0)));
        return logits;
      },
      [&](const tensor& d) { moe_layer.backward(head.backward(d)); });
  const double moe_accuracy = accuracy(head.forward(moe_layer.forward(test_x)));
  BOOST_TEST_MESSAGE("local moe: loss " << first << " -> " << last << ", test accuracy " << moe_accuracy
                                        << " (linear alone " << linear_accuracy << "), " << used.size()
                                        << " experts ranked first");
  BOOST_TEST(moe_accuracy >= 0.9);
  BOOST_TEST(linear_accuracy < 0.5);
  BOOST_TEST(last < first);
  const std::span<const float> before = gating_before.span<float>();
  const std::span<const float> after = moe_layer.gating().projection().weight().span<float>();
  BOOST_TEST(!std::equal(before.begin(), before.end(), after.begin()));  // the gating learns too
  BOOST_TEST(used.size() > 1u);
}

BOOST_AUTO_TEST_SUITE_END()
