// libFuzzer target: every DHT message decoder (dht/messages.hpp); what decodes must survive a re-encode.
#include <dmoe/dht/messages.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

using namespace dmoe;

namespace {

template <class Decode>
void check(const_byte_span bytes, const dht::message_limits& limits, Decode decode) {
  try {
    const auto message = decode(bytes, limits);
    if (!(decode(dht::encode(message), limits) == message)) std::abort();
  } catch (const error& e) {
    if (e.code() != errc::protocol) std::abort();
  }
}

}  // namespace

// Input: [u8 decoder][message bytes]; the decoder byte picks one of the six messages.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const const_byte_span bytes(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
  dht::message_limits limits;
  limits.max_keys = 16;
  limits.max_value_size = 256;
  limits.max_subkey_size = 32;
  limits.max_subkeys = 16;
  limits.max_signature_size = 96;
  limits.max_peers = 8;
  switch (data[0] % 6) {
    case 0: check(bytes, limits, [](auto b, auto& l) { return dht::decode_ping_request(b, l); }); break;
    case 1: check(bytes, limits, [](auto b, auto& l) { return dht::decode_ping_response(b, l); }); break;
    case 2: check(bytes, limits, [](auto b, auto& l) { return dht::decode_store_request(b, l); }); break;
    case 3: check(bytes, limits, [](auto b, auto& l) { return dht::decode_store_response(b, l); }); break;
    case 4: check(bytes, limits, [](auto b, auto& l) { return dht::decode_find_request(b, l); }); break;
    case 5: check(bytes, limits, [](auto b, auto& l) { return dht::decode_find_response(b, l); }); break;
  }
  return 0;
}
