// Tests of dmoe/tensor/half.hpp: f32 <-> f16/bf16 rounding, special values and bulk conversion.
#include <dmoe/tensor/half.hpp>

#include <boost/test/unit_test.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

using namespace dmoe;

namespace {
// The f16 nearest to v (ties to even), by exhaustive search over the finite halves: the reference.
std::uint16_t nearest_half(float v) {
  if (std::isnan(v)) return 0x7E00;
  const std::uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  const double a = std::abs(static_cast<double>(v));
  if (a >= 65520.0) return sign | 0x7C00;
  std::uint16_t best = 0;
  double best_error = std::numeric_limits<double>::infinity();
  for (std::uint16_t h = 0; h < 0x7C00; ++h) {
    const double e = std::abs(static_cast<double>(to_float(half{h})) - a);
    if (e < best_error || (e == best_error && (h & 1) == 0)) best = h, best_error = e;
  }
  return sign | best;
}
}  // namespace

BOOST_AUTO_TEST_SUITE(tensor_half)

BOOST_AUTO_TEST_CASE(every_half_round_trips) {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const half value{static_cast<std::uint16_t>(h)};
    const float f = to_float(value);
    if (std::isnan(f)) {
      BOOST_TEST((h & 0x7C00) == 0x7C00u);
      BOOST_TEST(std::isnan(to_float(to_half(f))));
    } else {
      BOOST_TEST(to_half(f).bits == h);
    }
  }
}

BOOST_AUTO_TEST_CASE(f16_rounds_to_nearest_even) {
  const float samples[] = {0.0f, -0.0f, 1.0f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, 65504.0f, 65519.0f, 65520.0f,
                           1e-8f, 3e-8f, 5.96e-8f, 6.1e-5f, 6.09e-5f, -2.5e-6f, 0.1f, -1234.567f, 3.14159f};
  for (float v : samples) BOOST_TEST(to_half(v).bits == nearest_half(v), "value " << v);
  BOOST_TEST(to_half(std::numeric_limits<float>::infinity()).bits == 0x7C00);
  BOOST_TEST(std::isnan(to_float(to_half(std::numeric_limits<float>::quiet_NaN()))));
}

BOOST_AUTO_TEST_CASE(bf16_rounds_to_nearest_even) {
  BOOST_TEST(to_bfloat16(1.0f).bits == 0x3F80);
  BOOST_TEST(to_float(to_bfloat16(3.140625f)) == 3.140625f);
  // 1 + 2^-8 is exactly half-way between 1 and 1 + 2^-7: ties go to the even mantissa (1).
  BOOST_TEST(to_float(to_bfloat16(1.0f + 1.0f / 256)) == 1.0f);
  BOOST_TEST(to_float(to_bfloat16(1.0f + 3.0f / 256)) == 1.0f + 4.0f / 256);
  BOOST_TEST(std::isnan(to_float(to_bfloat16(std::numeric_limits<float>::quiet_NaN()))));
  BOOST_TEST(std::isinf(to_float(to_bfloat16(std::numeric_limits<float>::infinity()))));
  BOOST_TEST(std::abs(to_float(to_bfloat16(-1234.567f)) + 1234.567f) < 4.0f);
}

BOOST_AUTO_TEST_CASE(signalling_nans_come_back_quiet_at_every_position) {
  // F16C quiets signalling NaNs (payload kept, quiet bit set); the scalar tail must agree, so 19 elements cover
  // two 8-wide vector blocks and a tail of 3.
  const std::uint16_t in[] = {0x7C01, 0xFC01, 0x7D55, 0x7E00};
  const std::uint32_t out[] = {0x7FC02000u, 0xFFC02000u, 0x7FEAA000u, 0x7FC00000u};
  std::vector<half> halves(19);
  std::vector<float> floats(19);
  for (std::size_t kind = 0; kind < 4; ++kind) {
    BOOST_TEST(std::bit_cast<std::uint32_t>(to_float(half{in[kind]})) == out[kind]);
    for (auto& h : halves) h = half{in[kind]};
    convert(std::span<const half>(halves), std::span<float>(floats));
    for (std::size_t i = 0; i < floats.size(); ++i) BOOST_TEST(std::bit_cast<std::uint32_t>(floats[i]) == out[kind]);
  }
}

BOOST_AUTO_TEST_CASE(bulk_conversion_matches_scalar) {
  random_engine gen(7);
  tensor t = tensor::normal(shape{5, 13}, gen, 0.0f, 100.0f);
  tensor h = to_dtype(t, dtype::f16);
  tensor b = to_dtype(t, dtype::bf16);
  BOOST_TEST(h.dtype() == dtype::f16);
  BOOST_TEST((h.shape() == t.shape()));
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    BOOST_TEST(h.span<half>()[i].bits == to_half(t.span<float>()[i]).bits);
    BOOST_TEST(b.span<bfloat16>()[i].bits == to_bfloat16(t.span<float>()[i]).bits);
  }
  tensor back = to_dtype(h, dtype::f32);
  for (std::int64_t i = 0; i < t.numel(); ++i)
    BOOST_TEST(std::abs(back.span<float>()[i] - t.span<float>()[i]) <= std::abs(t.span<float>()[i]) * 1e-3f + 1e-4f);
  BOOST_CHECK_THROW(to_dtype(h, dtype::bf16), invalid_argument_error);
  std::vector<half> too_small(3);
  BOOST_CHECK_THROW(convert(t.span<float>(), std::span<half>(too_small)), shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
