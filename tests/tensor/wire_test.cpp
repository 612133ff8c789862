// Tests of dmoe/tensor/wire.hpp: round trips per codec with error bounds, refusal of non-finite values, and a
// decoder that checks every field of untrusted bytes.
#include <dmoe/tensor/wire.hpp>

#include <tensor/wire_codec_builds.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>
#include <algorithm>
#include <bit>
#include <chrono>
#include <random>
#include <string>
#include <utility>
#include <vector>


using namespace dmoe;

namespace {

std::string message_of(auto&& action) {
  try {
    action();
  } catch (const error& e) {
    return e.what();
  }
  return "no error";
}

bool contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

byte_buffer concat(const tensor_wire_view& view) {
  byte_buffer out(view.header.span().begin(), view.header.span().end());
  out.insert(out.end(), view.data.begin(), view.data.end());
  return out;
}

bool bit_equal(const tensor& a, const tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.bytes_data(), b.bytes_data(), a.nbytes()) == 0);
}

// Header offsets: version 0, dtype 1, codec 2, rank 3, block size 4, dims from 8.
void poke_u64(byte_buffer& bytes, std::size_t at, std::uint64_t value) { std::memcpy(bytes.data() + at, &value, 8); }

}  // namespace

BOOST_AUTO_TEST_SUITE(tensor_wire)

BOOST_AUTO_TEST_CASE(uncompressed_round_trip_is_bit_exact_for_every_dtype) {
  random_engine gen(1);
  tensor f32 = tensor::normal({3, 5, 7}, gen);
  BOOST_TEST(bit_equal(decode_tensor(encode_tensor(f32)), f32));

  std::uniform_int_distribution<int> byte(0, 255);
  for (dtype type : {dtype::f16, dtype::bf16, dtype::i32, dtype::i64, dtype::u8}) {
    tensor t = tensor::uninitialized({4, 9}, type);
    for (auto& b : t.bytes()) b = static_cast<std::byte>(byte(gen));
    if (type == dtype::f16 || type == dtype::bf16) {  // keep the exponents finite
      auto* bits = reinterpret_cast<std::uint16_t*>(t.bytes_data());
      for (std::int64_t i = 0; i < t.numel(); ++i) bits[i] &= 0xbfff;
    }
    BOOST_TEST_INFO(to_string(type));
    BOOST_TEST(bit_equal(decode_tensor(encode_tensor(t)), t));
  }
  tensor scalar = tensor::full({}, 2.5f);
  BOOST_TEST(bit_equal(decode_tensor(encode_tensor(scalar)), scalar));
  tensor empty = tensor::zeros({0, 17});
  BOOST_TEST(bit_equal(decode_tensor(encode_tensor(empty, wire_codec::q8_blockwise)), empty));
}

BOOST_AUTO_TEST_CASE(zero_copy_view_matches_the_encoded_bytes) {
  random_engine gen(2);
  tensor t = tensor::normal({64, 33}, gen);
  auto view = wire_view(t);
  BOOST_TEST(view.data.data() == t.bytes_data());
  BOOST_TEST(view.data.size() == t.nbytes());
  BOOST_TEST(view.header.size == 8u + 2 * 8 + 8);
  BOOST_TEST((concat(view) == encode_tensor(t)));
  BOOST_TEST(encoded_tensor_size(t, wire_codec::none) == view.header.size + t.nbytes());
}

BOOST_AUTO_TEST_CASE(sixteen_mib_round_trip_is_bit_exact) {
  random_engine gen(3);
  tensor t = tensor::normal({1024, 4096}, gen);
  BOOST_TEST(t.nbytes() == std::size_t{16} << 20);
  BOOST_TEST(bit_equal(decode_tensor(concat(wire_view(t))), t));
}

BOOST_AUTO_TEST_CASE(f16_on_standard_normal_data_is_within_relative_1e_3) {
  random_engine gen(4);
  tensor t = tensor::normal({1 << 18}, gen);
  auto bytes = encode_tensor(t, wire_codec::f16);
  BOOST_TEST(bytes.size() == 24u + t.numel() * 2u);
  tensor back = decode_tensor(bytes);
  BOOST_TEST((back.dtype() == dtype::f32));
  BOOST_TEST((back.shape() == t.shape()));
  double worst = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    const double x = t.data<float>()[i], y = back.data<float>()[i];
    // Below f16's smallest normal (6.1e-5) the step is absolute, so measure against that floor.
    worst = std::max(worst, std::abs(x - y) / std::max(std::abs(x), 6.104e-5));
  }
  BOOST_TEST(worst <= 1e-3);
  BOOST_TEST(worst > 0.0);  // it is lossy: the test would notice a codec that sent f32
}

BOOST_AUTO_TEST_CASE(bf16_on_standard_normal_data_is_within_its_8_bit_mantissa) {
  random_engine gen(5);
  tensor t = tensor::normal({1 << 16}, gen);
  tensor back = decode_tensor(encode_tensor(t, wire_codec::bf16));
  double worst = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    const double x = t.data<float>()[i], y = back.data<float>()[i];
    worst = std::max(worst, std::abs(x - y) / std::abs(x));
  }
  BOOST_TEST(worst <= 1.0 / 256);
}

BOOST_AUTO_TEST_CASE(q8_blockwise_on_standard_normal_data_has_mse_below_1e_3) {
  random_engine gen(6);
  tensor t = tensor::normal({1000, 77}, gen);  // the last block is partial
  auto bytes = encode_tensor(t, wire_codec::q8_blockwise);
  const std::size_t blocks = (77000 + 63) / 64;
  BOOST_TEST(bytes.size() == 8u + 16 + 8 + blocks * 8 + 77000);
  tensor back = decode_tensor(bytes);
  double squared = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    const double d = double(t.data<float>()[i]) - back.data<float>()[i];
    squared += d * d;
  }
  const double mse = squared / static_cast<double>(t.numel());
  BOOST_TEST(mse <= 1e-3);
  BOOST_TEST(mse > 0.0);
}

BOOST_AUTO_TEST_CASE(q8_keeps_constant_blocks_and_extreme_ranges_finite) {
  tensor constant = tensor::full({130}, -3.25f);
  tensor back = decode_tensor(encode_tensor(constant, wire_codec::q8_blockwise));
  for (float v : back.span<float>()) BOOST_TEST(v == -3.25f);
  const float big = std::numeric_limits<float>::max();
  tensor extreme = tensor::from({4}, {-big, big, 0.0f, big / 2});
  tensor decoded = decode_tensor(encode_tensor(extreme, wire_codec::q8_blockwise));
  for (float v : decoded.span<float>()) BOOST_TEST(std::isfinite(v));
  BOOST_TEST(decoded.data<float>()[0] == -big);
}

BOOST_AUTO_TEST_CASE(q8_bytes_and_values_are_the_same_on_every_build) {
  // Normal data, wide and narrow ranges, [-2e38, 2e38], f32's limits, constant blocks: the native (FMA) and the
  // generic build encode the same bytes and each decodes the other's bytes bit-identically (62 % of elements
  // differed when offset + code * scale was left to the compiler).
  std::mt19937 gen(21);
  std::normal_distribution<float> normal;
  std::vector<float> values;
  for (int i = 0; i < 64 * 40; ++i) values.push_back(normal(gen) * (i < 64 * 20 ? 1.0f : 1e30f));
  const float big = std::numeric_limits<float>::max();
  for (float v : {-2e38f, 2e38f, 1e38f, -1.5e38f, -big, big, big, -big, 1e-40f, 3e-45f, 7.0f, 7.0f})
    for (int i = 0; i < 16; ++i) values.push_back(v * (1.0f - static_cast<float>(i) / 64.0f));
  for (int i = 0; i < 300; ++i) values.push_back(1.0f + static_cast<float>(i) * 1e-7f);
  for (std::uint32_t block : {64u, 7u, 1u}) {
    const std::vector<std::byte> native = wire_codec_native::encode_q8(values, block);
    const std::vector<std::byte> generic = wire_codec_generic::encode_q8(values, block);
    BOOST_TEST_REQUIRE(native.size() == generic.size());
    BOOST_TEST((native == generic));  // the same bytes
    const std::vector<float> from_generic = wire_codec_native::decode(generic);
    const std::vector<float> from_native = wire_codec_generic::decode(native);
    BOOST_TEST_REQUIRE(from_generic.size() == values.size());
    BOOST_TEST_REQUIRE(from_native.size() == values.size());
    std::size_t differing = 0;
    for (std::size_t i = 0; i < values.size(); ++i)
      differing += std::bit_cast<std::uint32_t>(from_generic[i]) != std::bit_cast<std::uint32_t>(from_native[i]);
    BOOST_TEST(differing == 0u);  // bit-identical
    BOOST_TEST(bit_equal(decode_tensor(const_byte_span(native)), decode_tensor(const_byte_span(generic))));
  }
}

BOOST_AUTO_TEST_CASE(q8_blocks_beyond_f32_range_encode_fast_and_decode_right) {
  // A block spanning [-2e38, 2e38] (its range 4e38 exceeds f32's): both builds decode 2e38 within half a code
  // step (7.8e35; a generic build gave 1.4e38), and encoding 256 such blocks takes well under a second (a scale
  // search took seconds per block).
  std::vector<float> values;
  for (int b = 0; b < 256; ++b)
    for (int i = 0; i < 64; ++i) values.push_back(static_cast<float>(-2e38 + 4e38 * i / 63.0));
  const double half_step = 4e38 / 255 / 2 * 1.0001;
  for (auto [encode, decode] : {std::pair{&wire_codec_native::encode_q8, &wire_codec_native::decode},
                                std::pair{&wire_codec_generic::encode_q8, &wire_codec_generic::decode}}) {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<std::byte> bytes = encode(values, 64);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    BOOST_TEST(seconds < 0.5);
    const std::vector<float> back = decode(bytes);
    double worst = 0;
    for (std::size_t i = 0; i < values.size(); ++i)
      worst = std::max(worst, std::abs(static_cast<double>(back[i]) - static_cast<double>(values[i])));
    BOOST_TEST(worst <= half_step);
    BOOST_TEST(back[63] >= 2e38f * 0.999f);
  }
}

BOOST_AUTO_TEST_CASE(zeros_survive_every_codec_exactly) {
  tensor zeros = tensor::zeros({7, 70});
  for (auto codec : {wire_codec::none, wire_codec::f16, wire_codec::bf16, wire_codec::q8_blockwise}) {
    BOOST_TEST_INFO(to_string(codec));
    BOOST_TEST(bit_equal(decode_tensor(encode_tensor(zeros, codec)), zeros));
  }
}

BOOST_AUTO_TEST_CASE(non_finite_values_are_refused_by_the_encoder) {
  for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    tensor t = tensor::zeros({2, 3});
    t.at<float>(1, 1) = bad;
    for (auto codec : {wire_codec::none, wire_codec::f16, wire_codec::bf16, wire_codec::q8_blockwise}) {
      auto text = message_of([&] { encode_tensor(t, codec); });
      BOOST_TEST_INFO(text);
      BOOST_TEST(contains(text, "element 4 of f32 [2, 3] host is " + fmt::format("{}", bad)));
      BOOST_TEST(contains(text, "only finite values"));
    }
    BOOST_CHECK_THROW(wire_view(t), invalid_argument_error);
  }
  tensor h = tensor::zeros({3}, dtype::f16);
  reinterpret_cast<std::uint16_t*>(h.bytes_data())[2] = 0x7c00;
  BOOST_TEST(contains(message_of([&] { encode_tensor(h); }), "element 2 of f16 [3] host is inf"));
}

BOOST_AUTO_TEST_CASE(f16_saturates_beyond_its_range) {
  tensor t = tensor::from({3}, {1.0e6f, -70000.0f, 65504.0f});
  tensor back = decode_tensor(encode_tensor(t, wire_codec::f16));
  BOOST_TEST(back.data<float>()[0] == 65504.0f);
  BOOST_TEST(back.data<float>()[1] == -65504.0f);
  BOOST_TEST(back.data<float>()[2] == 65504.0f);
  tensor huge = tensor::from({1}, {std::numeric_limits<float>::max()});
  BOOST_TEST(std::isfinite(decode_tensor(encode_tensor(huge, wire_codec::bf16)).item()));
}

BOOST_AUTO_TEST_CASE(compressed_codecs_need_f32) {
  tensor t = tensor::zeros({3}, dtype::i32);
  BOOST_TEST(contains(message_of([&] { encode_tensor(t, wire_codec::f16); }), "codec f16 compresses f32 tensors"));
}

BOOST_AUTO_TEST_CASE(half_codecs_round_to_nearest_even_at_unaligned_offsets) {
  const float step11 = std::ldexp(1.0f, -11);
  tensor t = tensor::from({5}, {1.0f + step11, 1.0f + 3 * step11, std::ldexp(1.0f, -24), std::ldexp(1.0f, -26),
                                std::bit_cast<float>(0x3f808000u)});
  byte_buffer bytes(3);  // an odd offset: the codec must not assume aligned 16-bit values
  encode_tensor(t, wire_codec::f16, bytes);
  binary_reader reader(bytes);
  reader.read_bytes(3);
  tensor back = decode_tensor(reader);
  BOOST_TEST(back.data<float>()[0] == 1.0f);                      // tie, to even
  BOOST_TEST(back.data<float>()[1] == 1.0f + 4 * step11);         // tie, to even (up)
  BOOST_TEST(back.data<float>()[2] == std::ldexp(1.0f, -24));     // smallest subnormal, exact
  BOOST_TEST(back.data<float>()[3] == 0.0f);                      // below half the smallest step
  tensor b = decode_tensor(encode_tensor(t, wire_codec::bf16));
  BOOST_TEST(b.data<float>()[4] == 1.0f);                          // tie, to even
  // Many elements exercise the vectorised chunks and the remainder.
  random_engine gen(11);
  tensor many = tensor::normal({1000 + 3}, gen);
  byte_buffer shifted(1);
  encode_tensor(many, wire_codec::f16, shifted);
  binary_reader many_reader(shifted);
  many_reader.read_bytes(1);
  tensor many_back = decode_tensor(many_reader);
  for (std::int64_t i = 0; i < many.numel(); ++i)
    BOOST_TEST_REQUIRE(many_back.data<float>()[i] == to_float(to_half(many.data<float>()[i])));
}

BOOST_AUTO_TEST_CASE(several_tensors_in_one_buffer) {
  random_engine gen(7);
  tensor a = tensor::normal({5, 6}, gen), b = tensor::normal({3}, gen);
  byte_buffer bytes;
  encode_tensor(a, wire_codec::none, bytes);
  encode_tensor(b, wire_codec::bf16, bytes);
  binary_reader reader(bytes, "forward request");
  BOOST_TEST(bit_equal(decode_tensor(reader), a));
  BOOST_TEST((decode_tensor(reader).shape() == b.shape()));
  BOOST_TEST(reader.empty());
}

BOOST_AUTO_TEST_CASE(decoder_checks_every_field) {
  random_engine gen(8);
  tensor t = tensor::normal({2, 3}, gen);
  const byte_buffer good = encode_tensor(t);  // header: 8 + 2 dims * 8 + 8 = 32 bytes, then 24 bytes
  auto decode_message = [](const byte_buffer& bytes, const wire_limits& limits = {}) {
    return message_of([&] { decode_tensor(bytes, limits); });
  };
  auto bad = good;
  bad[0] = std::byte{2};
  BOOST_TEST(contains(decode_message(bad), "unsupported wire version 2"));
  bad = good;
  bad[1] = std::byte{17};
  BOOST_TEST(contains(decode_message(bad), "unknown dtype code 17"));
  bad = good;
  bad[2] = std::byte{9};
  BOOST_TEST(contains(decode_message(bad), "unknown codec 9"));
  bad = good;
  bad[3] = std::byte{7};
  BOOST_TEST(contains(decode_message(bad), "rank 7 exceeds the maximum rank 6"));
  bad = good;
  bad[4] = std::byte{64};
  BOOST_TEST(contains(decode_message(bad), "codec none has block size 64"));
  bad = good;
  poke_u64(bad, 8, static_cast<std::uint64_t>(-2));
  BOOST_TEST(contains(decode_message(bad), "dimension 0 is negative (-2)"));
  bad = good;
  poke_u64(bad, 16, 4);
  BOOST_TEST(contains(decode_message(bad), "f32 [2, 4] with codec none needs 32 data bytes but says 24"));
  bad = good;
  poke_u64(bad, 24, 1000);
  BOOST_TEST(contains(decode_message(bad), "needs 24 data bytes but says 1000"));
  bad = good;
  poke_u64(bad, 8, std::uint64_t{1} << 40);
  poke_u64(bad, 16, std::uint64_t{1} << 40);
  BOOST_TEST(contains(decode_message(bad), "exceeds the limit of 268435456 elements"));
  BOOST_TEST(contains(decode_message(good, wire_limits{5}), "tensor of shape [2, 3] exceeds the limit of 5 elements"));
  bad = good;
  bad.resize(good.size() - 1);
  BOOST_TEST(contains(decode_message(bad), "truncated: 24 data bytes, only 23 left"));
  bad = good;
  bad.push_back(std::byte{0});
  BOOST_TEST(contains(decode_message(bad), "1 unexpected trailing bytes"));
  bad = good;
  const float inf = std::numeric_limits<float>::infinity();
  std::memcpy(bad.data() + 32 + 8, &inf, 4);
  BOOST_TEST(contains(decode_message(bad), "element 2 is not finite"));
  wire_limits lenient;
  lenient.require_finite = false;
  BOOST_TEST(std::isinf(decode_tensor(bad, lenient).data<float>()[2]));
  bad = good;
  bad[1] = std::byte{3};  // i32 with codec f16
  bad[2] = std::byte{1};
  BOOST_TEST(contains(decode_message(bad), "dtype i32 with codec f16"));
  // Zero-element shapes with huge dimensions are refused rather than overflowing.
  bad = good;
  poke_u64(bad, 8, 0);
  poke_u64(bad, 16, std::uint64_t{1} << 62);
  BOOST_TEST(contains(decode_message(bad), "exceeds the limit"));
  for (std::size_t cut = 0; cut < good.size(); ++cut)
    BOOST_CHECK_THROW(decode_tensor(const_byte_span(good).first(cut)), protocol_error);
}

BOOST_AUTO_TEST_CASE(decoder_checks_q8_and_half_payloads) {
  tensor t = tensor::full({70}, 1.0f);
  auto q8 = encode_tensor(t, wire_codec::q8_blockwise);  // header 24 bytes, two blocks
  auto bad = q8;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(bad.data() + 24 + 8 + 4, &nan, 4);
  BOOST_TEST(contains(message_of([&] { decode_tensor(bad); }), "block 1 has offset 1 and scale nan"));
  bad = q8;
  const float negative = -1.0f;
  std::memcpy(bad.data() + 24 + 4, &negative, 4);
  BOOST_TEST(contains(message_of([&] { decode_tensor(bad); }), "block 0 has offset 1 and scale -1"));
  bad = q8;
  bad[4] = std::byte{0};
  bad[5] = std::byte{0};
  BOOST_TEST(contains(message_of([&] { decode_tensor(bad); }), "q8_blockwise has block size 0"));
  auto half = encode_tensor(t, wire_codec::f16);
  half[24 + 2 * 5 + 1] = std::byte{0x7c};
  half[24 + 2 * 5] = std::byte{0x00};
  BOOST_TEST(contains(message_of([&] { decode_tensor(half); }), "element 5 is not finite"));
}

BOOST_AUTO_TEST_CASE(random_bytes_never_crash_the_decoder) {
  random_engine gen(10);
  tensor t = tensor::normal({4, 20}, gen);
  std::vector<byte_buffer> seeds;
  for (auto codec : {wire_codec::none, wire_codec::f16, wire_codec::bf16, wire_codec::q8_blockwise})
    seeds.push_back(encode_tensor(t, codec));
  int decoded = 0;
  for (int round = 0; round < 4000; ++round) {
    byte_buffer bytes = seeds[gen() % seeds.size()];
    for (int flips = 1 + gen() % 3; flips > 0; --flips) bytes[gen() % bytes.size()] = static_cast<std::byte>(gen());
    try {
      decode_tensor(bytes, wire_limits{1 << 20});
      ++decoded;
    } catch (const error& e) {
      BOOST_TEST((e.code() == errc::protocol || e.code() == errc::limit));
    }
  }
  BOOST_TEST(decoded > 0);
}

BOOST_AUTO_TEST_SUITE_END()
