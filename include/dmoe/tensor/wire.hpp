// The tensor wire codec: a versioned header (dtype, codec, rank, dims, data size) then the data, raw (none) or
// compressed (f16, bf16, 8-bit blockwise); decoding validates every field before it allocates or copies.
//
// Layout, little-endian: u8 version, u8 dtype, u8 codec, u8 rank, u32 block size (8-bit blockwise; else 0),
// rank x i64 dims, u64 data size, data. Compressed codecs take f32 tensors and decode to f32. The 8-bit blockwise
// data is one (f32 offset, f32 scale) pair per block of `block size` elements, then one u8 code per element:
// value = offset + code * scale, evaluated in double and rounded once to f32.
//
// The 8-bit codec is a pure function of its input on every build and CPU: every step is one correctly rounded
// IEEE operation with no product that a compiler could fuse into an FMA with a different result (code * scale is
// exact in double; the encoder divides instead of multiplying), so -march, -ffp-contract and the CPU do not matter.
#pragma once

#include <dmoe/core/binary_reader.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/tensor/dtype.hpp>
#include <dmoe/tensor/half.hpp>
#include <dmoe/tensor/shape.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string_view>
#include <type_traits>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE

enum class wire_codec : std::uint8_t {
  none = 0,          // the tensor's own bytes, any dtype
  f16 = 1,           // IEEE half; values beyond ±65504 saturate
  bf16 = 2,          // bfloat16 (f32's range, 8 bits of mantissa)
  q8_blockwise = 3,  // 8-bit codes with an f32 offset and scale per block
};

constexpr std::string_view to_string(wire_codec codec) noexcept {
  switch (codec) {
    case wire_codec::none: return "none";
    case wire_codec::f16: return "f16";
    case wire_codec::bf16: return "bf16";
    case wire_codec::q8_blockwise: return "q8_blockwise";
  }
  return "unknown";
}

inline constexpr std::uint8_t tensor_wire_version = 1;
inline constexpr std::uint32_t q8_default_block_size = 64;
inline constexpr std::uint32_t q8_max_block_size = 1u << 16;
inline constexpr std::size_t tensor_wire_max_header_size = 8 + shape::max_rank * 8 + 8;

struct wire_limits {
  std::int64_t max_elements = std::int64_t{1} << 28;  // per tensor
  bool require_finite = true;                         // refuse inf and NaN in floating tensors
};

// A tensor's header, small enough for the stack; sent in front of its data.
struct tensor_wire_header {
  std::array<std::byte, tensor_wire_max_header_size> bytes{};
  std::size_t size = 0;
  const_byte_span span() const noexcept { return {bytes.data(), size}; }
};

// What a tensor sent without copying is made of: write header.span() then data (e.g. with one writev).
// `data` points into the tensor's storage, which must stay alive and unchanged until it is sent.
struct tensor_wire_view {
  tensor_wire_header header;
  const_byte_span data;
};

namespace detail {

inline constexpr std::uint32_t f32_exponent_mask = 0x7f800000u;

inline constexpr float f16_max = 65504.0f;
inline constexpr float bf16_max = std::bit_cast<float>(0x7f7f0000u);
inline constexpr std::size_t convert_chunk = 256;  // elements converted through aligned stack buffers at a time

// f32 -> 16-bit floats into unaligned wire bytes, saturating finite values beyond the type's range.
template <class Half>
void encode_halves(const float* values, std::size_t count, std::byte* out) {
  constexpr float limit = std::is_same_v<Half, half> ? f16_max : bf16_max;
  alignas(64) float clamped[convert_chunk];
  alignas(64) Half converted[convert_chunk];
  for (std::size_t begin = 0; begin < count; begin += convert_chunk) {
    const std::size_t n = std::min(convert_chunk, count - begin);
    for (std::size_t i = 0; i < n; ++i) clamped[i] = std::clamp(values[begin + i], -limit, limit);
    convert(std::span<const float>(clamped, n), std::span<Half>(converted, n));
    std::memcpy(out + 2 * begin, converted, 2 * n);
  }
}

template <class Half>
void decode_halves(const std::byte* in, std::size_t count, float* values) {
  alignas(64) Half staged[convert_chunk];
  for (std::size_t begin = 0; begin < count; begin += convert_chunk) {
    const std::size_t n = std::min(convert_chunk, count - begin);
    std::memcpy(staged, in + 2 * begin, 2 * n);
    convert(std::span<const Half>(staged, n), std::span<float>(values + begin, n));
  }
}

// Index of the first inf or NaN among f32 values, or npos; one branch-free pass when all are finite.
DMOE_LAZY inline std::size_t first_non_finite_f32(const std::byte* data, std::size_t count) noexcept {
  std::uint32_t any = 0;
  for (std::size_t i = 0; i < count; ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, data + 4 * i, 4);
    any |= static_cast<std::uint32_t>((bits & f32_exponent_mask) == f32_exponent_mask);
  }
  if (!any) return std::string_view::npos;
  for (std::size_t i = 0; i < count; ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, data + 4 * i, 4);
    if ((bits & f32_exponent_mask) == f32_exponent_mask) return i;
  }
  return std::string_view::npos;
}

// The same for 16-bit floats whose exponent field is `exponent_mask` (f16: 0x7c00, bf16: 0x7f80).
DMOE_LAZY inline std::size_t first_non_finite_16(const std::byte* data, std::size_t count, std::uint16_t exponent_mask) noexcept {
  std::uint32_t any = 0;
  for (std::size_t i = 0; i < count; ++i) {
    std::uint16_t bits;
    std::memcpy(&bits, data + 2 * i, 2);
    any |= static_cast<std::uint32_t>((bits & exponent_mask) == exponent_mask);
  }
  if (!any) return std::string_view::npos;
  for (std::size_t i = 0; i < count; ++i) {
    std::uint16_t bits;
    std::memcpy(&bits, data + 2 * i, 2);
    if ((bits & exponent_mask) == exponent_mask) return i;
  }
  return std::string_view::npos;
}

// Index of the first non-finite element of a host tensor of any dtype, or npos.
DMOE_LAZY inline std::size_t first_non_finite(const tensor& t) noexcept {
  const auto n = static_cast<std::size_t>(t.numel());
  switch (t.dtype()) {
    case dtype::f32: return first_non_finite_f32(t.bytes_data(), n);
    case dtype::f16: return first_non_finite_16(t.bytes_data(), n, 0x7c00);
    case dtype::bf16: return first_non_finite_16(t.bytes_data(), n, 0x7f80);
    default: return std::string_view::npos;
  }
}

DMOE_LAZY inline float load_f32(const std::byte* at) noexcept {
  float v;
  std::memcpy(&v, at, 4);
  return v;
}

inline std::uint64_t q8_blocks(std::uint64_t elements, std::uint64_t block_size) noexcept {
  return (elements + block_size - 1) / block_size;
}

DMOE_LAZY inline std::uint64_t wire_data_size(dtype type, wire_codec codec, std::uint64_t elements, std::uint32_t block_size) {
  switch (codec) {
    case wire_codec::none: return elements * size_of(type);
    case wire_codec::f16:
    case wire_codec::bf16: return elements * 2;
    case wire_codec::q8_blockwise: return q8_blocks(elements, block_size) * 8 + elements;
  }
  return 0;
}

DMOE_LAZY inline void check_encodable(const tensor& t, wire_codec codec, std::uint32_t block_size) {
  if (t.empty()) throw invalid_argument_error("tensor wire encode: the tensor has no storage");
  if (!t.is_host())
    throw invalid_argument_error(
        dmoe::format("tensor wire encode: {} tensor must be copied to the host first", t.description()));
  if (codec != wire_codec::none && t.dtype() != dtype::f32)
    throw invalid_argument_error(dmoe::format("tensor wire encode: codec {} compresses f32 tensors, not {}",
                                             to_string(codec), t.description()));
  if (codec == wire_codec::q8_blockwise && (block_size == 0 || block_size > q8_max_block_size))
    throw invalid_argument_error(
        dmoe::format("tensor wire encode: 8-bit block size {} is outside [1, {}]", block_size, q8_max_block_size));
  if (static_cast<std::uint8_t>(codec) > static_cast<std::uint8_t>(wire_codec::q8_blockwise))
    throw invalid_argument_error(dmoe::format("tensor wire encode: unknown codec {}", static_cast<int>(codec)));
  const std::size_t bad = first_non_finite(t);
  if (bad != std::string_view::npos) {
    std::uint16_t bits16 = 0;
    if (t.dtype() != dtype::f32) std::memcpy(&bits16, t.bytes_data() + 2 * bad, 2);
    const float value = t.dtype() == dtype::f32   ? load_f32(t.bytes_data() + 4 * bad)
                        : t.dtype() == dtype::f16 ? to_float(half{bits16})
                                                  : to_float(bfloat16{bits16});
    throw invalid_argument_error(dmoe::format("tensor wire encode: element {} of {} is {}; only finite values may be sent",
                                             bad, t.description(), value));
  }
}

DMOE_LAZY inline tensor_wire_header make_wire_header(const tensor& t, wire_codec codec, std::uint32_t block_size) {
  tensor_wire_header h;
  std::byte* at = h.bytes.data();
  auto put = [&](auto value) {
    std::memcpy(at, &value, sizeof(value));
    at += sizeof(value);
  };
  put(tensor_wire_version);
  put(static_cast<std::uint8_t>(codec == wire_codec::none ? t.dtype() : dtype::f32));
  put(static_cast<std::uint8_t>(codec));
  put(static_cast<std::uint8_t>(t.rank()));
  put(static_cast<std::uint32_t>(codec == wire_codec::q8_blockwise ? block_size : 0));
  for (std::int64_t d : t.shape().dims()) put(d);
  put(wire_data_size(t.dtype(), codec, static_cast<std::uint64_t>(t.numel()), block_size));
  h.size = static_cast<std::size_t>(at - h.bytes.data());
  return h;
}

// The f32 scale of a block [lo, hi]: (hi - lo) / 255 in double, rounded to f32, and one step toward zero when
// rounding up would put offset + 255 * scale past hi (and so maybe past f32's range). Closed form: no search.
// Below f32's normal range the scale rounds up instead (to at least the smallest subnormal): a subnormal step has few
// bits, so rounding down could leave most of the range unreachable (or give scale 0 and decode a whole block to
// its minimum), and such a block is far from f32's limit.
DMOE_LAZY inline float q8_scale(float lo, float hi) noexcept {
  const double range = static_cast<double>(hi) - static_cast<double>(lo);
  const double ideal = range / 255.0;
  auto scale = static_cast<float>(ideal);
  if (ideal < static_cast<double>(std::numeric_limits<float>::min())) {
    if (range > 0.0 && static_cast<double>(scale) < ideal)
      scale = std::nextafter(scale, std::numeric_limits<float>::infinity());
    return scale;
  }
  if (static_cast<double>(lo) + 255.0 * static_cast<double>(scale) > static_cast<double>(hi))
    scale = std::nextafter(scale, 0.0f);
  return scale;
}

// The decoded value of a code: exact product in double, one rounding to f32.
inline float q8_value(float offset, float scale, std::uint8_t code) noexcept {
  return static_cast<float>(static_cast<double>(offset) + static_cast<double>(code) * static_cast<double>(scale));
}

DMOE_LAZY inline void encode_q8_blockwise(const float* values, std::size_t count, std::uint32_t block_size, std::byte* out) {
  const std::size_t blocks = static_cast<std::size_t>(q8_blocks(count, block_size));
  std::byte* params = out;
  auto* codes = reinterpret_cast<std::uint8_t*>(out + blocks * 8);
  for (std::size_t b = 0; b < blocks; ++b) {
    const std::size_t begin = b * block_size;
    const std::size_t end = std::min<std::size_t>(begin + block_size, count);
    float lo = values[begin], hi = values[begin];
    for (std::size_t i = begin + 1; i < end; ++i) {
      lo = std::min(lo, values[i]);
      hi = std::max(hi, values[i]);
    }
    const float scale = q8_scale(lo, hi);
    std::memcpy(params + 8 * b, &lo, 4);
    std::memcpy(params + 8 * b + 4, &scale, 4);
    if (!(scale > 0.0f)) {
      std::fill(codes + begin, codes + end, std::uint8_t{0});
      continue;
    }
    const auto step = static_cast<double>(scale);
    for (std::size_t i = begin; i < end; ++i) {
      // A quotient (never fused) rounded half to even by its integer part and remainder: no libm call, no FMA.
      const double q = (static_cast<double>(values[i]) - static_cast<double>(lo)) / step;
      auto code = static_cast<std::uint32_t>(q);
      const double rest = q - static_cast<double>(code);
      code += static_cast<std::uint32_t>(rest > 0.5 || (rest == 0.5 && (code & 1u) != 0));
      codes[i] = static_cast<std::uint8_t>(std::min<std::uint32_t>(code, 255u));
    }
  }
}

}  // namespace detail

// Bytes encode_tensor appends for this tensor and codec.
DMOE_LAZY inline std::size_t encoded_tensor_size(const tensor& t, wire_codec codec,
                                       std::uint32_t block_size = q8_default_block_size) {
  return detail::make_wire_header(t, codec, block_size).size +
         static_cast<std::size_t>(
             detail::wire_data_size(t.dtype(), codec, static_cast<std::uint64_t>(t.numel()), block_size));
}

// Appends the tensor's wire form to `out`. Throws invalid_argument_error for inf or NaN elements, a device
// tensor, or a compressed codec on a tensor that is not f32.
DMOE_LAZY inline void encode_tensor(const tensor& t, wire_codec codec, byte_buffer& out,
                          std::uint32_t block_size = q8_default_block_size) {
  detail::check_encodable(t, codec, block_size);
  const tensor_wire_header header = detail::make_wire_header(t, codec, block_size);
  const auto n = static_cast<std::size_t>(t.numel());
  const auto data_size = static_cast<std::size_t>(
      detail::wire_data_size(t.dtype(), codec, static_cast<std::uint64_t>(n), block_size));
  const std::size_t start = out.size();
  out.resize(start + header.size + data_size);
  std::memcpy(out.data() + start, header.bytes.data(), header.size);
  std::byte* data = out.data() + start + header.size;
  switch (codec) {
    case wire_codec::none:
      if (data_size > 0) std::memcpy(data, t.bytes_data(), data_size);
      break;
    case wire_codec::f16: detail::encode_halves<half>(t.data<float>(), n, data); break;
    case wire_codec::bf16: detail::encode_halves<bfloat16>(t.data<float>(), n, data); break;
    case wire_codec::q8_blockwise: detail::encode_q8_blockwise(t.data<float>(), n, block_size, data); break;
  }
}

DMOE_LAZY inline byte_buffer encode_tensor(const tensor& t, wire_codec codec = wire_codec::none,
                                 std::uint32_t block_size = q8_default_block_size) {
  byte_buffer out;
  out.reserve(encoded_tensor_size(t, codec, block_size));
  encode_tensor(t, codec, out, block_size);
  return out;
}

// The uncompressed wire form as a header plus a view of the tensor's own storage, for sending without a copy.
DMOE_LAZY inline tensor_wire_view wire_view(const tensor& t) {
  detail::check_encodable(t, wire_codec::none, 0);
  return {detail::make_wire_header(t, wire_codec::none, 0), t.bytes()};
}

// Decodes one tensor from the reader, checking every field against the limits before allocating.
DMOE_LAZY inline tensor decode_tensor(binary_reader& reader, const wire_limits& limits = {}) {
  const auto version = reader.read<std::uint8_t>();
  if (version != tensor_wire_version)
    throw protocol_error(
        dmoe::format("tensor of unsupported wire version {} (expected {})", version, tensor_wire_version));
  const auto type_code = reader.read<std::uint8_t>();
  if (type_code > static_cast<std::uint8_t>(dtype::u8))
    throw protocol_error(dmoe::format("tensor of unknown dtype code {}", type_code));
  const auto type = static_cast<dtype>(type_code);
  const auto codec_code = reader.read<std::uint8_t>();
  if (codec_code > static_cast<std::uint8_t>(wire_codec::q8_blockwise))
    throw protocol_error(dmoe::format("tensor of unknown codec {}", codec_code));
  const auto codec = static_cast<wire_codec>(codec_code);
  if (codec != wire_codec::none && type != dtype::f32)
    throw protocol_error(dmoe::format("tensor of dtype {} with codec {} (compressed tensors decode to f32)", type,
                                     to_string(codec)));
  const auto rank = reader.read<std::uint8_t>();
  if (rank > shape::max_rank)
    throw protocol_error(dmoe::format("tensor of rank {} exceeds the maximum rank {}", rank, shape::max_rank));
  const auto block_size = reader.read<std::uint32_t>();
  if (codec == wire_codec::q8_blockwise ? (block_size == 0 || block_size > q8_max_block_size) : block_size != 0)
    throw protocol_error(dmoe::format("tensor with codec {} has block size {}", to_string(codec), block_size));

  std::array<std::int64_t, shape::max_rank> dims{};
  // The product of the non-zero dimensions is bounded, so no product of dimensions can overflow.
  std::int64_t nonzero_product = 1;
  bool has_zero = false;
  for (std::size_t i = 0; i < rank; ++i) {
    dims[i] = reader.read<std::int64_t>();
    if (dims[i] < 0) throw protocol_error(dmoe::format("tensor dimension {} is negative ({})", i, dims[i]));
    if (dims[i] == 0) {
      has_zero = true;
      continue;
    }
    if (nonzero_product > limits.max_elements / dims[i])
      throw limit_error(dmoe::format("tensor of shape [{}] exceeds the limit of {} elements",
                                    dmoe::detail::join_text(std::span<const std::int64_t>(dims.data(), i + 1), ", "),
                                    limits.max_elements));
    nonzero_product *= dims[i];
  }
  const dmoe::shape shape_read(std::span<const std::int64_t>(dims.data(), rank));
  const std::int64_t elements = has_zero ? 0 : nonzero_product;

  const auto n = static_cast<std::uint64_t>(elements);
  const std::uint64_t expected = detail::wire_data_size(type, codec, n, block_size);
  const auto data_size = reader.read<std::uint64_t>();
  if (data_size != expected)
    throw protocol_error(dmoe::format("tensor {} {} with codec {} needs {} data bytes but says {}", type, shape_read,
                                     to_string(codec), expected, data_size));
  if (data_size > reader.remaining())
    throw protocol_error(dmoe::format("tensor {} {} truncated: {} data bytes, only {} left", type, shape_read,
                                     data_size, reader.remaining()));
  const const_byte_span data = reader.read_bytes(static_cast<std::size_t>(data_size));

  const auto count = static_cast<std::size_t>(n);
  auto refuse_non_finite = [&](std::size_t index) {
    throw protocol_error(
        dmoe::format("tensor {} {} with codec {}: element {} is not finite", type, shape_read, to_string(codec), index));
  };
  tensor out = tensor::uninitialized(shape_read, type);
  switch (codec) {
    case wire_codec::none:
      if (count > 0) std::memcpy(out.bytes_data(), data.data(), data.size());
      if (limits.require_finite) {
        const std::size_t bad = detail::first_non_finite(out);
        if (bad != std::string_view::npos) refuse_non_finite(bad);
      }
      break;
    case wire_codec::f16:
    case wire_codec::bf16: {
      const bool is_f16 = codec == wire_codec::f16;
      if (limits.require_finite) {
        const std::size_t bad = detail::first_non_finite_16(data.data(), count, is_f16 ? 0x7c00 : 0x7f80);
        if (bad != std::string_view::npos) refuse_non_finite(bad);
      }
      if (is_f16)
        detail::decode_halves<half>(data.data(), count, out.data<float>());
      else
        detail::decode_halves<bfloat16>(data.data(), count, out.data<float>());
      break;
    }
    case wire_codec::q8_blockwise: {
      const std::size_t blocks = static_cast<std::size_t>(detail::q8_blocks(n, block_size));
      const auto* codes = reinterpret_cast<const std::uint8_t*>(data.data() + blocks * 8);
      float* values = out.data<float>();
      for (std::size_t b = 0; b < blocks; ++b) {
        const float offset = detail::load_f32(data.data() + 8 * b);
        const float scale = detail::load_f32(data.data() + 8 * b + 4);
        // Decoded values lie between offset and offset + 255 * scale (in double): both ends within f32's range
        // makes all finite.
        if (limits.require_finite &&
            !(std::isfinite(offset) && std::isfinite(scale) && scale >= 0.0f &&
              static_cast<double>(offset) + 255.0 * static_cast<double>(scale) <=
                  static_cast<double>(std::numeric_limits<float>::max())))
          throw protocol_error(dmoe::format("tensor {} with codec {}: block {} has offset {} and scale {}", shape_read,
                                           to_string(codec), b, offset, scale));
        const std::size_t begin = b * block_size;
        const std::size_t end = std::min<std::size_t>(begin + block_size, count);
        for (std::size_t i = begin; i < end; ++i) values[i] = detail::q8_value(offset, scale, codes[i]);
      }
      break;
    }
  }
  return out;
}

// Decodes exactly one tensor: trailing bytes are a protocol error.
DMOE_LAZY inline tensor decode_tensor(const_byte_span bytes, const wire_limits& limits = {}) {
  binary_reader reader(bytes, "tensor");
  tensor out = decode_tensor(reader, limits);
  reader.expect_end();
  return out;
}

DMOE_END_NAMESPACE
