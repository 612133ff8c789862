// Hostile numerics: hard rows (huge magnitudes, subnormals, values near FLT_MAX, NaN and inf) through the CPU
// reductions, losses, activations, 16-bit conversions, the 8-bit wire codec and product-key top-k, each against a
// long double reference or an exact right value with a stated tolerance.
#include <dmoe/moe/gating.hpp>
#include <dmoe/ops/cpu/activation.hpp>
#include <dmoe/ops/cpu/cross_entropy.hpp>
#include <dmoe/ops/cpu/embedding.hpp>
#include <dmoe/ops/cpu/gather.hpp>
#include <dmoe/ops/cpu/layer_norm.hpp>
#include <dmoe/ops/cpu/mse.hpp>
#include <dmoe/ops/cpu/softmax.hpp>
#include <dmoe/tensor/half.hpp>
#include <dmoe/tensor/wire.hpp>

#include <tensor/wire_codec_builds.hpp>

#include <boost/test/unit_test.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

using namespace dmoe;

namespace {

constexpr float flt_max = std::numeric_limits<float>::max();
constexpr float denorm = std::numeric_limits<float>::denorm_min();

tensor row_of(const std::vector<float>& values) {
  return tensor::from(shape{1, static_cast<std::int64_t>(values.size())}, std::span<const float>(values));
}

// Layer norm of one row with gamma and dy given, in long double: y (beta = 0) and dx.
struct ln_reference {
  long double rstd = 0;
  std::vector<long double> y, dx;
};

ln_reference ln_ref(const std::vector<float>& x, const std::vector<float>& g, const std::vector<float>& dy, float eps) {
  const auto d = static_cast<long double>(x.size());
  long double mean = 0, var = 0;
  for (float v : x) mean += v;
  mean /= d;
  for (float v : x) var += (v - mean) * (v - mean);
  var /= d;
  ln_reference r;
  r.rstd = 1 / std::sqrt(var + eps);
  long double mg = 0, mgx = 0;
  std::vector<long double> xhat;
  for (std::size_t i = 0; i < x.size(); ++i) {
    xhat.push_back((x[i] - mean) * r.rstd);
    r.y.push_back(xhat[i] * g[i]);
    mg += static_cast<long double>(dy[i]) * g[i] / d;
    mgx += static_cast<long double>(dy[i]) * g[i] * xhat[i] / d;
  }
  for (std::size_t i = 0; i < x.size(); ++i)
    r.dx.push_back((static_cast<long double>(dy[i]) * g[i] - mg - xhat[i] * mgx) * r.rstd);
  return r;
}

// Largest errors of layer norm's y (absolute) and dx (relative to its largest magnitude) against ln_ref.
std::pair<double, double> ln_errors(const std::vector<float>& x, const std::vector<float>& g,
                                    const std::vector<float>& dy, float eps) {
  const auto d = static_cast<std::int64_t>(x.size());
  const tensor xt = row_of(x), dyt = row_of(dy);
  const tensor gt = tensor::from(shape{d}, std::span<const float>(g)), beta(shape{d});
  tensor y, mean, rstd, dx, dgamma(shape{d}), dbeta(shape{d});
  ops::layer_norm_forward(ops::cpu, xt, gt, beta, eps, y, mean, rstd);
  ops::layer_norm_backward(ops::cpu, xt, gt, mean, rstd, dyt, dx, dgamma, dbeta);
  const ln_reference r = ln_ref(x, g, dy, eps);
  long double scale = 0;
  for (long double v : r.dx) scale = std::max(scale, std::abs(v));
  double ey = 0, edx = 0;
  for (std::int64_t i = 0; i < d; ++i) {
    const auto k = static_cast<std::size_t>(i);
    ey = std::max(ey, static_cast<double>(std::abs(y.data<float>()[i] - r.y[k])));
    edx = std::max(edx, static_cast<double>(std::abs(dx.data<float>()[i] - r.dx[k]) / scale));
  }
  return {ey, edx};
}

std::vector<float> normal_values(std::size_t n, std::uint32_t seed, float mean, float sd) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(mean, sd);
  std::vector<float> out(n);
  for (float& v : out) v = dist(gen);
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(numerics_hostile)

// Layer norm backward on rows that the forward fix covers: constant large rows, huge magnitudes, rows whose
// spread is near FLT_MAX, subnormal rows. Tolerance: y within 1e-5 absolute, dx within 1e-5 of its largest value.
BOOST_AUTO_TEST_CASE(layer_norm_backward_on_hard_rows) {
  const std::vector<float> dy = normal_values(1000, 7, 0.0f, 1.0f), g = normal_values(1000, 8, 1.0f, 0.5f);
  std::vector<std::vector<float>> rows;
  rows.emplace_back(1000, 10000.5f);                       // constant, large
  rows.push_back(normal_values(1000, 9, 1e30f, 1e24f));    // huge mean, relatively tiny spread
  rows.push_back(normal_values(1000, 10, 0.0f, 1e37f));    // spread near f32's limit
  rows.push_back(normal_values(1000, 11, -3e7f, 1.0f));    // mean not representable to the spread's precision
  std::vector<float> wide(1000);
  for (std::size_t i = 0; i < wide.size(); ++i) wide[i] = (i % 2 ? 1.0f : -1.0f) * flt_max * (0.5f + 0.0005f * i);
  rows.push_back(wide);  // (x - mean)^2 overflows f32
  for (const auto& x : rows) {
    const auto [ey, edx] = ln_errors(x, g, dy, 1e-5f);
    BOOST_TEST(ey < 1e-5, "y error " << ey << " on a row starting " << x[0]);
    BOOST_TEST(edx < 1e-5, "dx error " << edx << " on a row starting " << x[0]);
  }
}

// eps = 0 (or negative, or NaN) lets 1/std overflow f32 on rows of tiny spread (a subnormal row: right xhat = +-1):
// it must be refused with a clear error rather than return inf and NaN.
BOOST_AUTO_TEST_CASE(layer_norm_eps_must_be_positive) {
  const tensor x = row_of({0.0f, 1e-42f}), gamma = tensor::full(shape{2}, 1.0f), beta(shape{2});
  tensor y, mean, rstd;
  for (float eps : {0.0f, -1e-5f, std::numeric_limits<float>::quiet_NaN()})
    BOOST_CHECK_THROW(ops::layer_norm_forward(ops::cpu, x, gamma, beta, eps, y, mean, rstd), invalid_argument_error);
  // The smallest positive eps keeps rstd finite: xhat = +-1 scaled by sqrt(var / (var + eps)).
  ops::layer_norm_forward(ops::cpu, x, gamma, beta, denorm, y, mean, rstd);
  BOOST_TEST(std::isfinite(rstd.data<float>()[0]));
  BOOST_TEST(std::isfinite(y.data<float>()[0]));
}

// Every log-sum-exp: cross-entropy at the ends of f32's range. Right values: ln 2 for equal logits of any
// magnitude (tolerance 1e-7 relative), +inf when the true loss 2 * FLT_MAX exceeds f32, and NaN for a NaN logit.
BOOST_AUTO_TEST_CASE(cross_entropy_at_the_ends_of_f32) {
  const tensor label0 = tensor::from(shape{1}, std::span<const std::int64_t>(std::vector<std::int64_t>{0}));
  const tensor label1 = tensor::from(shape{1}, std::span<const std::int64_t>(std::vector<std::int64_t>{1}));
  tensor d;
  BOOST_TEST(ops::cross_entropy(ops::cpu, row_of({flt_max, flt_max}), label1, &d) == std::log(2.0f),
             boost::test_tools::tolerance(1e-7f));
  BOOST_TEST(d.data<float>()[0] == 0.5f);
  BOOST_TEST(d.data<float>()[1] == -0.5f);
  BOOST_TEST(std::isinf(ops::cross_entropy(ops::cpu, row_of({flt_max, -flt_max}), label1)));
  BOOST_TEST(ops::cross_entropy(ops::cpu, row_of({-flt_max, flt_max}), label1) == 0.0f);
  BOOST_TEST(std::isnan(ops::cross_entropy(ops::cpu, row_of({1.0f, std::nanf("")}), label0)));
  // A long row of equal large logits: ln(131072) = 11.783502.
  BOOST_TEST(ops::cross_entropy(ops::cpu, row_of(std::vector<float>(131072, 1e8f)), label0) == 11.783502f,
             boost::test_tools::tolerance(1e-6f));
  // Subnormal logits: the loss is ln 2 to f32 precision.
  BOOST_TEST(ops::cross_entropy(ops::cpu, row_of({denorm, 0.0f}), label1) == std::log(2.0f),
             boost::test_tools::tolerance(1e-7f));
}

// Softmax of a long row of equal huge values: 1/n each (tolerance 1e-6 relative); the backward of constant dy is 0.
BOOST_AUTO_TEST_CASE(softmax_long_constant_rows) {
  const tensor x = row_of(std::vector<float>(100000, -flt_max));
  tensor y, dx;
  ops::softmax(ops::cpu, x, y);
  for (float v : y.span<float>()) BOOST_REQUIRE(std::abs(v - 1e-5f) <= 1e-11f);
  ops::softmax_backward(ops::cpu, y, row_of(std::vector<float>(100000, 3.0f)), dx);
  for (float v : dx.span<float>()) BOOST_REQUIRE(std::abs(v) <= 1e-10f);
}

// MSE: the gradient 2 (p - t) / n is finite where p - t overflows f32 (p = FLT_MAX, t = -FLT_MAX, n = 4: the
// right value is FLT_MAX exactly), and the loss's differences are exact (p = 1 + 2^-23, t = -2^30: tolerance 1e-7).
BOOST_AUTO_TEST_CASE(mse_gradient_does_not_overflow_in_the_difference) {
  const tensor p = row_of({flt_max, 0.0f, 0.0f, 0.0f}), t = row_of({-flt_max, 0.0f, 0.0f, 0.0f});
  tensor d;
  BOOST_TEST(std::isinf(ops::mse(ops::cpu, p, t, &d)));  // 4 FLT_MAX^2 / 4 exceeds f32: inf is right
  BOOST_TEST(d.data<float>()[0] == flt_max);
  const float a = 1.0f + 0x1p-23f, b = -0x1p30f;
  const double right = (static_cast<double>(a) - b) * (static_cast<double>(a) - b);
  BOOST_TEST(ops::mse(ops::cpu, row_of({a}), row_of({b})) == static_cast<float>(right),
             boost::test_tools::tolerance(1e-7f));
}

// GELU (tanh form) and ReLU at the ends: gelu(-inf) = 0 (the limit; the formula gives -inf * 0), gelu(+inf) = inf,
// gelu'(+-inf) = 1 / 0, NaN propagates through forward and backward of both. Exact values.
BOOST_AUTO_TEST_CASE(activations_at_extreme_inputs) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  // 17 values so both the vector body and the tail see them.
  std::vector<float> z = {-inf, inf, -flt_max, flt_max, nan, -1e20f, 1e20f, -10.0f, 10.0f};
  while (z.size() < 17) z.push_back(z[z.size() - 9]);
  const tensor zt = row_of(z), ones = row_of(std::vector<float>(z.size(), 1.0f));
  tensor y, dz;
  ops::activation_forward(ops::cpu, zt, y, ops::activation::gelu);
  tensor zcopy = zt.clone();
  ops::bias_activation_backward(ops::cpu, zcopy, ones, dz, nullptr, ops::activation::gelu);
  for (std::size_t i = 0; i < z.size(); ++i) {
    const float v = z[i], out = y.data<float>()[i], slope = dz.data<float>()[i];
    if (std::isnan(v)) {
      BOOST_TEST(std::isnan(out));
      BOOST_TEST(std::isnan(slope));
    } else if (v <= -10.0f) {
      BOOST_TEST(out == 0.0f, "gelu(" << v << ") = " << out);
      BOOST_TEST(std::abs(slope) <= 1e-30f, "gelu'(" << v << ") = " << slope);
    } else {
      BOOST_TEST(out == v, "gelu(" << v << ") = " << out);
      BOOST_TEST(slope == 1.0f, "gelu'(" << v << ") = " << slope);
    }
  }
  ops::activation_forward(ops::cpu, zt, y, ops::activation::relu);
  for (std::size_t i = 0; i < z.size(); ++i)
    if (std::isnan(z[i])) BOOST_TEST(std::isnan(y.data<float>()[i]), "relu(NaN) at " << i);
}

// f32 -> f16 and bf16 NaNs whose payload lies only in the bits the conversion drops stay NaN, quiet, and the
// same at every position (vector body and scalar tail).
BOOST_AUTO_TEST_CASE(nan_payloads_survive_narrowing_at_every_position) {
  for (std::uint32_t bits : {0x7F800001u, 0xFF800001u, 0x7F801000u, 0x7FC00000u, 0x7FBFFFFFu}) {
    const float nan = std::bit_cast<float>(bits);
    for (std::size_t at = 0; at < 17; ++at) {
      std::vector<float> v(17, 1.0f);
      v[at] = nan;
      std::vector<half> h(17);
      std::vector<bfloat16> b(17);
      convert(std::span<const float>(v), std::span<half>(h));
      convert(std::span<const float>(v), std::span<bfloat16>(b));
      BOOST_TEST(h[at].bits == to_half(nan).bits, "f16 of " << std::hex << bits << " at " << at);
      BOOST_TEST((h[at].bits & 0x7E00u) == 0x7E00u, "f16 quiet NaN of " << std::hex << bits << " at " << at);
      BOOST_TEST((b[at].bits & 0x7FC0u) == 0x7FC0u, "bf16 quiet NaN of " << std::hex << bits << " at " << at);
      BOOST_TEST((h[at].bits >> 15) == (bits >> 31));
    }
  }
}

// 8-bit blocks whose range is subnormal: values k * 2^-149 (k <= 255) are exactly representable with scale 2^-149,
// so they must decode exactly (a scale rounded to 0 decodes the whole block to its minimum).
BOOST_AUTO_TEST_CASE(q8_subnormal_blocks_keep_their_values) {
  for (std::uint32_t block : {1u, 3u, 4u, 7u, 64u}) {
    std::vector<float> values;
    for (int i = 0; i < 70; ++i) values.push_back(static_cast<float>(i % 4) * denorm);
    for (auto [encode, decode] : {std::pair{&wire_codec_native::encode_q8, &wire_codec_native::decode},
                                  std::pair{&wire_codec_generic::encode_q8, &wire_codec_generic::decode}}) {
      const std::vector<float> out = decode(encode(values, block));
      BOOST_REQUIRE_EQUAL(out.size(), values.size());
      for (std::size_t i = 0; i < values.size(); ++i)
        BOOST_TEST(out[i] == values[i], "block " << block << " element " << i << ": " << out[i] << " for " << values[i]);
    }
  }
}

// Both builds agree byte for byte on hard blocks (odd sizes, constants, +-FLT_MAX, subnormals, mixed scales), each
// decodes the other's bytes bit-identically, and every value is within half a step of its input: |decoded - x| <=
// (range / 255) / 2 * (1 + 1e-4) + |x| 2^-24 (the final rounding to f32) + 2^-149.
BOOST_AUTO_TEST_CASE(q8_hard_blocks_agree_across_builds_and_stay_within_half_a_step) {
  std::vector<float> values;
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int i = 0; i < 200; ++i) values.push_back(u(gen) * flt_max);
  for (int i = 0; i < 64; ++i) values.push_back(i % 2 ? flt_max : -flt_max);
  for (int i = 0; i < 64; ++i) values.push_back(3.25f);
  for (int i = 0; i < 200; ++i) values.push_back(u(gen) * 1e-40f);
  for (int i = 0; i < 200; ++i) values.push_back(std::ldexp(u(gen), (i % 60) - 30));
  for (int i = 0; i < 64; ++i) values.push_back(1e30f + static_cast<float>(i) * 1e24f);
  for (std::uint32_t block : {1u, 2u, 3u, 5u, 63u, 64u, 65u, 65536u}) {
    const std::vector<std::byte> native = wire_codec_native::encode_q8(values, block);
    const std::vector<std::byte> generic = wire_codec_generic::encode_q8(values, block);
    BOOST_REQUIRE(native == generic);
    const std::vector<float> a = wire_codec_generic::decode(native), b = wire_codec_native::decode(generic);
    for (std::size_t i = 0; i < values.size(); ++i) {
      BOOST_REQUIRE(std::bit_cast<std::uint32_t>(a[i]) == std::bit_cast<std::uint32_t>(b[i]));
      const std::size_t begin = i / block * block, end = std::min<std::size_t>(begin + block, values.size());
      double lo = values[begin], hi = values[begin];
      for (std::size_t j = begin; j < end; ++j) lo = std::min<double>(lo, values[j]), hi = std::max<double>(hi, values[j]);
      const double bound = (hi - lo) / 255.0 / 2.0 * (1 + 1e-4) + std::abs(values[i]) * 0x1p-24 + denorm;
      BOOST_TEST(std::abs(static_cast<double>(a[i]) - values[i]) <= bound,
                 "block " << block << " element " << i << ": " << a[i] << " for " << values[i] << " (bound " << bound
                          << ")");
    }
  }
}

// Every proper prefix of a valid 8-bit encoding is refused with a protocol error, and so is a header whose block
// size does not match its data.
BOOST_AUTO_TEST_CASE(q8_truncated_and_lying_headers_are_refused) {
  const std::vector<float> values = normal_values(37, 3, 0.0f, 1.0f);
  const std::vector<std::byte> bytes = wire_codec_native::encode_q8(values, 5);
  for (std::size_t n = 0; n < bytes.size(); ++n)
    BOOST_CHECK_THROW(decode_tensor(const_byte_span(bytes.data(), n)), protocol_error);
  for (std::uint32_t lie : {0u, 4u, 6u, 37u, q8_max_block_size + 1}) {
    std::vector<std::byte> bad = bytes;
    std::memcpy(bad.data() + 4, &lie, 4);  // u32 block size after version, dtype, codec, rank
    BOOST_CHECK_THROW(decode_tensor(const_byte_span(bad.data(), bad.size())), protocol_error);
  }
}

// Product-key top-k on a grid of exactly 2^64 experts: the best coordinate in every dimension comes back exactly;
// one expert more is refused.
BOOST_AUTO_TEST_CASE(product_key_topk_on_exactly_two_to_the_64_experts) {
  const std::vector<std::uint32_t> grid(4, 65536);
  tensor scores(shape{1, 4 * 65536});
  for (int d = 0; d < 4; ++d) {
    scores.data<float>()[d * 65536 + 65535] = 2.0f;
    scores.data<float>()[d * 65536 + 65534] = 1.0f;
  }
  const moe::grid_selection sel = moe::product_key_topk(scores, grid, 2);
  for (int d = 0; d < 4; ++d) BOOST_TEST(sel.coordinates[static_cast<std::size_t>(d)] == 65535u);
  BOOST_TEST(sel.scores[0] == 8.0f);
  BOOST_TEST(sel.scores[1] == 7.0f);
  // Four experts score 7; the lexicographically smallest is (65534, 65535, 65535, 65535).
  BOOST_TEST(sel.coordinates[4] == 65534u);
  for (int d = 1; d < 4; ++d) BOOST_TEST(sel.coordinates[static_cast<std::size_t>(4 + d)] == 65535u);
  const std::vector<std::uint32_t> over = {65536, 65536, 65536, 65536, 2};
  BOOST_CHECK_THROW(moe::product_key_topk(tensor(shape{1, 4 * 65536 + 2}), over, 1), invalid_argument_error);
  const std::vector<std::uint32_t> just_over = {65536, 65536, 65536, 65537};
  BOOST_CHECK_THROW(moe::product_key_topk(tensor(shape{1, 4 * 65536 + 1}), just_over, 1), invalid_argument_error);
}

// Sums into repeated rows: 2^24 then 1000 ones into one row is 16778216 exactly (f32 steps of 1 from 2^24 would stay
// at 16777216), for embedding backward (a repeated id) and scatter-add (an expert's outputs into one sample).
BOOST_AUTO_TEST_CASE(repeated_rows_sum_without_drift) {
  std::vector<float> rows(1001 * 2, 1.0f);
  rows[0] = 0x1p24f;
  rows[1] = -0x1p24f;
  const tensor x = tensor::from(shape{1001, 2}, std::span<const float>(rows));
  const tensor ids = tensor::from(shape{1001}, std::span<const std::int64_t>(std::vector<std::int64_t>(1001, 1)));
  tensor table(shape{3, 2});
  ops::embedding_backward(ops::cpu, ids, x, table);
  BOOST_TEST(table.data<float>()[2] == 16778216.0f);
  BOOST_TEST(table.data<float>()[3] == -16776216.0f);
  BOOST_TEST(table.data<float>()[0] == 0.0f);
  tensor y(shape{3, 2});
  ops::scatter_add_rows(ops::cpu, x, ids, tensor{}, y);
  BOOST_TEST(y.data<float>()[2] == 16778216.0f);
  const tensor half_weights = tensor::full(shape{1001}, 0.5f);
  tensor z(shape{3, 2});
  ops::scatter_add_rows(ops::cpu, x, ids, half_weights, z);
  BOOST_TEST(z.data<float>()[2] == 8389108.0f);
}

BOOST_AUTO_TEST_SUITE_END()
