// libFuzzer target: the tensor wire decoder; whatever decodes must re-encode and decode to the same tensor.
#include <dmoe/tensor/wire.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

using namespace dmoe;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const const_byte_span bytes(reinterpret_cast<const std::byte*>(data), size);
  wire_limits limits;
  limits.max_elements = 1 << 20;
  tensor decoded;
  try {
    decoded = decode_tensor(bytes, limits);
  } catch (const error& e) {
    if (e.code() != errc::protocol && e.code() != errc::limit) std::abort();
    return 0;
  }
  const tensor again = decode_tensor(encode_tensor(decoded), limits);
  if (again.shape() != decoded.shape() || again.dtype() != decoded.dtype() ||
      (decoded.nbytes() > 0 && std::memcmp(again.bytes_data(), decoded.bytes_data(), decoded.nbytes()) != 0))
    std::abort();
  return 0;
}
