// Writes the fuzzers' seed corpora: real frames, datagrams, tensors and DHT messages, one file each.
// Run once after a format change: dmoe_fuzz_make_corpus <tests/fuzz/corpus>
#include <dmoe/dht/messages.hpp>
#include <dmoe/net/datagram_message.hpp>
#include <dmoe/net/frame.hpp>
#include <dmoe/tensor/wire.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

using namespace dmoe;

namespace {

void write_file(const std::filesystem::path& path, const byte_buffer& bytes) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

byte_buffer frame_bytes(const net::frame_header& h, const byte_buffer& payload) {
  const auto head = net::encode_frame_header(h);
  byte_buffer out(head.begin(), head.end());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

byte_buffer pattern(std::size_t n) {
  byte_buffer out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>(i * 31 + 7);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus directory>\n", argv[0]);
    return 2;
  }
  const std::filesystem::path root = argv[1];

  // Frames: a stream of one or more frames, prefixed with the chunk-size byte the fuzzer reads first.
  using net::frame_header, net::frame_kind, net::frame_status;
  const auto forward = net::method_id("forward");
  const byte_buffer request = frame_bytes({frame_kind::request, frame_status::ok, forward, 0, 1, 40}, pattern(40));
  const byte_buffer response =
      frame_bytes({frame_kind::response, frame_status::ok, forward, 0, 1, 300}, pattern(300));
  const byte_buffer failure =
      frame_bytes({frame_kind::response, frame_status::handler_error, forward, 0, 2, 13}, to_buffer("bad batch dim"));
  const byte_buffer cancel = frame_bytes({frame_kind::cancel, frame_status::ok, forward, 0, 3, 0}, {});
  // Version 2: go_away (idle close: nothing above id 3 was read; refusal: nothing at all).
  const byte_buffer idle = frame_bytes({frame_kind::go_away, frame_status::ok, 0, 0, 3, 17}, to_buffer("idle for 60000 ms"));
  const byte_buffer refusal =
      frame_bytes({frame_kind::go_away, frame_status::limit_exceeded, 0, 0, 0, 18}, to_buffer("1024 connections open"));
  // A frame over the fuzzer's limit is refused and skipped; the stream goes on to the next one.
  byte_buffer oversized = frame_bytes({frame_kind::request, frame_status::ok, forward, 0, 4, 2 << 20}, {});
  const byte_buffer oversized_start = pattern(100);
  oversized.insert(oversized.end(), oversized_start.begin(), oversized_start.end());
  auto with_chunk = [](std::uint8_t chunk, std::initializer_list<byte_buffer> frames) {
    byte_buffer out{static_cast<std::byte>(chunk)};
    for (const auto& f : frames) out.insert(out.end(), f.begin(), f.end());
    return out;
  };
  write_file(root / "frame" / "request", with_chunk(96, {request}));
  write_file(root / "frame" / "response_large", with_chunk(5, {response}));
  write_file(root / "frame" / "handler_error", with_chunk(13, {failure}));
  write_file(root / "frame" / "pipelined", with_chunk(31, {request, cancel, response, failure}));
  write_file(root / "frame" / "truncated", with_chunk(7, {byte_buffer(request.begin(), request.begin() + 50)}));
  write_file(root / "frame" / "go_away", with_chunk(64, {response, idle}));
  write_file(root / "frame" / "refused_connection", with_chunk(9, {refusal}));
  write_file(root / "frame" / "skipped_oversized", with_chunk(200, {oversized, request}));

  // Datagrams: records of [u16 length][u8 source][datagram].
  net::datagram_header h;
  h.kind = net::datagram_kind::request;
  h.type = 1;
  h.transaction_id = 0x1234567890abcdefull;
  for (std::size_t i = 0; i < h.sender.size(); ++i) h.sender[i] = static_cast<std::byte>(i);
  auto records = [](const net::datagram_parts& parts, std::uint8_t source, bool reversed) {
    byte_buffer out, one;
    for (std::size_t k = 0; k < parts.count(); ++k) {
      parts.encode(reversed ? parts.count() - 1 - k : k, one);
      out.push_back(static_cast<std::byte>(one.size() & 0xff));
      out.push_back(static_cast<std::byte>(one.size() >> 8));
      out.push_back(static_cast<std::byte>(source));
      out.insert(out.end(), one.begin(), one.end());
    }
    return out;
  };
  net::datagram_limits limits;
  limits.max_datagram = 200;
  const byte_buffer ping_payload = pattern(20);
  write_file(root / "datagram" / "ping", records(net::datagram_parts(h, ping_payload, limits), 0, false));
  h.kind = net::datagram_kind::response;
  const byte_buffer big = pattern(700);
  write_file(root / "datagram" / "multipart", records(net::datagram_parts(h, big, limits), 1, false));
  write_file(root / "datagram" / "multipart_reversed", records(net::datagram_parts(h, big, limits), 2, true));
  h.kind = net::datagram_kind::error;
  write_file(root / "datagram" / "error", records(net::datagram_parts(h, to_buffer("unknown type 9"), limits), 0, false));

  // Tensors: one per codec and a few dtypes.
  random_engine gen(1);
  const tensor values = tensor::normal({3, 70}, gen);
  write_file(root / "tensor" / "f32_none", encode_tensor(values));
  write_file(root / "tensor" / "f16", encode_tensor(values, wire_codec::f16));
  write_file(root / "tensor" / "bf16", encode_tensor(values, wire_codec::bf16));
  write_file(root / "tensor" / "q8_blockwise", encode_tensor(values, wire_codec::q8_blockwise));
  write_file(root / "tensor" / "q8_block16", encode_tensor(values, wire_codec::q8_blockwise, 16));
  write_file(root / "tensor" / "scalar", encode_tensor(tensor::full({}, 1.5f)));
  write_file(root / "tensor" / "i64_labels", encode_tensor(tensor::zeros({2, 2, 2}, dtype::i64)));
  write_file(root / "tensor" / "empty", encode_tensor(tensor::zeros({0, 5})));
  // DHT messages: [u8 decoder][message], the decoder byte as dht_fuzz.cpp reads it.
  auto dht_seed = [](std::uint8_t decoder, const byte_buffer& message) {
    byte_buffer out{static_cast<std::byte>(decoder)};
    out.insert(out.end(), message.begin(), message.end());
    return out;
  };
  using dht::node_id;
  const dht::wire_peer near_v4{node_id{1, 2}, endpoint("127.0.0.5", 4100)};
  const dht::wire_peer near_v6{node_id{3, 4}, endpoint("::1", 4200)};
  write_file(root / "dht" / "ping_request", dht_seed(0, dht::encode(dht::ping_request{true})));
  write_file(root / "dht" / "ping_response", dht_seed(1, dht::encode(dht::ping_response{false, near_v6.address})));
  dht::store_request store;
  store.items.push_back({dht::key_of("ffn.3.17"), std::nullopt, {to_buffer("127.0.0.1:4000"), 1.0e9 + 60, {}}});
  store.items.push_back({dht::key_of("ffn.3."), to_buffer("17"), {to_buffer("127.0.0.1:4000"), 1.0e9 + 61, pattern(96)}});
  write_file(root / "dht" / "store_request", dht_seed(2, dht::encode(store)));
  write_file(root / "dht" / "store_response",
             dht_seed(3, dht::encode(dht::store_response{false, {dht::store_result::stored, dht::store_result::not_newer}})));
  write_file(root / "dht" / "find_request",
             dht_seed(4, dht::encode(dht::find_request{false, {dht::key_of("ffn.3."), dht::key_of("ffn.4.")}})));
  dht::find_response find;
  find.results.push_back({dht::key_of("missing"), std::nullopt, {near_v4, near_v6}});
  find.results.push_back({dht::key_of("plain"), dht::record::plain(to_buffer("value"), 1.0e9 + 0.5), {near_v4}});
  auto dictionary = dht::record::single_subkey(to_buffer("17"), to_buffer("127.0.0.1:4000"), 1.0e9 + 30);
  dictionary.subkeys[to_buffer("18")] = {to_buffer("127.0.0.2:4000"), 1.0e9 + 31, {}};
  find.results.push_back({dht::key_of("ffn.3."), dictionary, {near_v6}});
  write_file(root / "dht" / "find_response", dht_seed(5, dht::encode(find)));
  std::printf("corpora written under %s\n", root.c_str());
  return 0;
}
