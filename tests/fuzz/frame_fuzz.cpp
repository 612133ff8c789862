// libFuzzer target: the RPC frame reader on an arbitrary byte stream, cut into arbitrary chunks.
#include <dmoe/net/frame.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>

using namespace dmoe;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // The first byte picks the chunk size, so the fuzzer explores how frames straddle reads.
  if (size == 0) return 0;
  const std::size_t chunk = 1 + data[0] % 97;
  const const_byte_span stream(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
  net::frame_reader reader(net::frame_limits{1 << 20}, 256);
  std::size_t at = 0;
  try {
    while (true) {
      for (;;) {
        // A large payload is announced before it is allocated, with the header next() then decodes.
        const auto ahead = reader.large_frame_ahead("fuzzer");
        std::optional<net::frame> f;
        try {
          f = reader.next("fuzzer");
        } catch (const error& e) {
          // A frame refused for its size leaves its header for the answer to the sender, and is skipped: the
          // stream goes on.
          if (e.code() != errc::limit || !reader.refused_header()) throw;
          continue;
        }
        if (ahead && (f || !reader.mid_frame() || reader.pending_payload() > ahead->payload_size)) std::abort();
        if (!f) break;
        // A decoded frame re-encodes to a header the decoder accepts unchanged.
        const auto again = net::decode_frame_header(net::encode_frame_header(f->header), reader.limits(), "fuzzer");
        if (!(again == f->header) || f->payload.size() != f->header.payload_size) std::abort();
      }
      if (at == stream.size()) break;
      auto room = reader.prepare();
      if (room.empty()) std::abort();
      const std::size_t n = std::min({chunk, room.size(), stream.size() - at});
      std::memcpy(room.data(), stream.data() + at, n);
      reader.commit(n);
      at += n;
    }
  } catch (const error& e) {
    if (e.code() != errc::protocol) std::abort();
  }
  return 0;
}
