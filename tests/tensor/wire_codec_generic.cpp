// The tensor wire codec built for baseline x86-64 without contraction (-march=x86-64 -ffp-contract=off); flags in tests/CMakeLists.txt.
#include <dmoe/core/config.hpp>

// This build's own inline namespace, so the linker keeps its inline functions apart from the other builds'.
#undef DMOE_BEGIN_NAMESPACE
#define DMOE_BEGIN_NAMESPACE \
  namespace dmoe {           \
  inline namespace wire_generic {

#include <dmoe/tensor/wire.hpp>

#include <tensor/wire_codec_builds.hpp>

namespace wire_codec_generic {

std::vector<std::byte> encode_q8(std::span<const float> values, std::uint32_t block_size) {
  const dmoe::tensor t = dmoe::tensor::from(dmoe::shape{static_cast<std::int64_t>(values.size())}, values);
  const dmoe::byte_buffer bytes = dmoe::encode_tensor(t, dmoe::wire_codec::q8_blockwise, block_size);
  return {bytes.data(), bytes.data() + bytes.size()};
}

std::vector<float> decode(std::span<const std::byte> bytes) {
  const dmoe::tensor t = dmoe::decode_tensor(dmoe::const_byte_span(bytes.data(), bytes.size()));
  const auto values = t.span<float>();
  return {values.begin(), values.end()};
}

}  // namespace wire_codec_generic
