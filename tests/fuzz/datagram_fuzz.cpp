// libFuzzer target: DHT datagram decoding and multi-part reassembly over a sequence of datagrams.
#include <dmoe/net/datagram_message.hpp>
#include <dmoe/net/datagram_reassembler.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

using namespace dmoe;

// Input: records of [u16 length][u8 source][length bytes of datagram]; each record is one received datagram.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  net::datagram_limits limits;
  limits.max_message = 1 << 16;
  limits.max_partial_messages = 8;
  limits.max_buffered_bytes = 1 << 17;
  net::datagram_reassembler reassembler(limits);
  steady_time now{};
  std::size_t at = 0;
  while (size - at >= 3) {
    const std::size_t length = std::min<std::size_t>(data[at] | (data[at + 1] << 8), size - at - 3);
    const std::uint64_t source = data[at + 2] % 4;
    const const_byte_span bytes(reinterpret_cast<const std::byte*>(data) + at + 3, length);
    at += 3 + length;
    now += std::chrono::milliseconds(700);
    try {
      const auto d = net::decode_datagram(bytes, limits, "fuzzer");
      if (d.payload.size() > d.header.total_size) std::abort();
      if (auto whole = reassembler.add(source, d, now, "fuzzer"); whole && whole->size() != d.header.total_size)
        std::abort();
    } catch (const error& e) {
      if (e.code() != errc::protocol && e.code() != errc::limit) std::abort();
    }
    reassembler.expire(now);
    if (reassembler.buffered_bytes() > limits.max_buffered_bytes) std::abort();
    if (reassembler.partial_messages() > limits.max_partial_messages) std::abort();
  }
  return 0;
}
