// The tensor wire codec compiled twice into the compute tests: wire_codec_native.cpp for this CPU with FMA
// contraction allowed, wire_codec_generic.cpp for baseline x86-64 without it (flags in tests/CMakeLists.txt).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace wire_codec_native {
// The 8-bit blockwise wire form of a rank-1 f32 tensor holding `values`.
std::vector<std::byte> encode_q8(std::span<const float> values, std::uint32_t block_size);
// The values of one encoded tensor.
std::vector<float> decode(std::span<const std::byte> bytes);
}  // namespace wire_codec_native

namespace wire_codec_generic {
std::vector<std::byte> encode_q8(std::span<const float> values, std::uint32_t block_size);
std::vector<float> decode(std::span<const std::byte> bytes);
}  // namespace wire_codec_generic
