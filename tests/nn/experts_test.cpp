// Tests of dmoe/nn/experts.hpp and expert.hpp: the registry, schemas, seeding and gradients of each expert.
#include <dmoe/nn/experts.hpp>

#include <ops/gradient_check.hpp>

#include <boost/test/unit_test.hpp>

#include <string>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(nn_experts)

BOOST_AUTO_TEST_CASE(registry_knows_the_builtin_kinds) {
  const auto kinds = nn::expert_kinds();
  BOOST_TEST((std::find(kinds.begin(), kinds.end(), "ffn") != kinds.end()));
  BOOST_TEST((std::find(kinds.begin(), kinds.end(), "transformer") != kinds.end()));
  BOOST_TEST((std::find(kinds.begin(), kinds.end(), "nop") != kinds.end()));
  try {
    nn::make_expert("moe", 8, 1);
    BOOST_FAIL("no error");
  } catch (const invalid_argument_error& e) {
    BOOST_TEST(std::string(e.what()).find("unknown expert kind 'moe'") != std::string::npos, e.what());
  }
  BOOST_CHECK_THROW(nn::make_expert("ffn", 0, 1), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(schemas) {
  const auto ffn = nn::make_expert("ffn", 16, 1);
  BOOST_TEST(ffn->kind() == "ffn");
  BOOST_TEST((ffn->schema().input.sample_shape == shape{16}));
  BOOST_TEST((ffn->schema().output == ffn->schema().input));
  BOOST_TEST(ffn->parameter_count() == 16 * 64 + 64 + 64 * 16 + 16 + 2 * 16);
  const auto block = nn::make_expert("transformer", 16, 1, {.seq_len = 5, .heads = 4});
  BOOST_TEST((block->schema().input.sample_shape == shape{5, 16}));
  BOOST_TEST((block->schema().input.batch_shape(3) == shape{3, 5, 16}));
  const auto nop = nn::make_expert("nop", 16, 1);
  BOOST_TEST(nop->parameters().empty());
  BOOST_CHECK_THROW(ffn->forward(tensor(shape{2, 15})), shape_error);
  BOOST_CHECK_THROW(block->forward(tensor(shape{2, 4, 16})), shape_error);
  BOOST_CHECK_THROW(nop->forward(tensor(shape{2, 16}, dtype::f16)), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(same_seed_same_parameters) {
  const auto a = nn::make_expert("ffn", 8, 42), b = nn::make_expert("ffn", 8, 42), c = nn::make_expert("ffn", 8, 43);
  const auto pa = a->parameters(), pb = b->parameters(), pc = c->parameters();
  BOOST_TEST(pa[0].name == "fc1.weight");
  const auto equal = [](const tensor& x, const tensor& y) {
    return std::equal(x.span<float>().begin(), x.span<float>().end(), y.span<float>().begin());
  };
  BOOST_TEST(equal(*pa[0].value, *pb[0].value));
  BOOST_TEST(!equal(*pa[0].value, *pc[0].value));
}

BOOST_AUTO_TEST_CASE(ffn_gradients) {
  auto ffn = nn::make_expert("ffn", 6, 3);
  random_engine gen(4);
  for (auto& p : ffn->parameters())
    if (p.name.ends_with("bias")) p.value->fill_normal(gen, 0.0f, 0.1f);
  test::check_module_gradients(*ffn, tensor::normal(shape{3, 6}, gen), 5, 2e-2);
}

// A dense block of the compute of k experts (the trainers' --dense baseline): inner width given, gradients right.
BOOST_AUTO_TEST_CASE(ffn_with_an_inner_width) {
  random_engine gen(5);
  nn::ffn_expert<> wide(6, gen, 40);
  for (const auto& p : wide.parameters())
    if (p.name == "fc1.weight") BOOST_TEST((p.value->shape() == shape{40, 6}));
    else if (p.name == "fc2.weight") BOOST_TEST((p.value->shape() == shape{6, 40}));
  nn::ffn_expert<> standard(6, gen);
  for (const auto& p : standard.parameters())
    if (p.name == "fc1.weight") BOOST_TEST((p.value->shape() == shape{24, 6}));
  test::check_module_gradients(wide, tensor::normal(shape{3, 6}, gen), 5, 2e-2);
  BOOST_CHECK_THROW(nn::ffn_expert<>(6, gen, -1), invalid_argument_error);
}

BOOST_AUTO_TEST_CASE(transformer_gradients) {
  auto block = nn::make_expert("transformer", 4, 3, {.seq_len = 3, .heads = 2});
  random_engine gen(5);
  test::check_module_gradients(*block, tensor::normal(shape{2, 3, 4}, gen), 6, 2e-2);
}

BOOST_AUTO_TEST_CASE(nop_is_identity_and_custom_kinds_register) {
  auto nop = nn::make_expert("nop", 4, 0);
  const tensor x = tensor::full(shape{2, 4}, 3.0f);
  BOOST_TEST(nop->forward(x).at(1, 3) == 3.0f);
  BOOST_TEST(nop->backward(x).at(0, 0) == 3.0f);
  nn::register_expert("wide_nop", [](std::int64_t hidden, std::uint64_t, const nn::expert_options&) {
    return std::unique_ptr<nn::expert>(std::make_unique<nn::nop_expert<>>(hidden * 2));
  });
  BOOST_TEST((nn::make_expert("wide_nop", 4, 0)->schema().input.sample_shape == shape{8}));
}

BOOST_AUTO_TEST_SUITE_END()
