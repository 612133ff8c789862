// Tests of dmoe/net/frame.hpp: header round trips, limits with clear errors, and the stream reader.
#include <dmoe/net/frame.hpp>

#include <boost/test/unit_test.hpp>

#include <random>
#include <string>
#include <vector>

using namespace dmoe;
using namespace dmoe::net;

namespace {

byte_buffer make_frame(const frame_header& header, const byte_buffer& payload) {
  auto head = encode_frame_header(header);
  byte_buffer out(head.size() + payload.size());
  std::memcpy(out.data(), head.data(), head.size());
  if (!payload.empty()) std::memcpy(out.data() + head.size(), payload.data(), payload.size());
  return out;
}

byte_buffer frame_pattern(std::size_t size, unsigned seed) {
  byte_buffer out(size);
  std::mt19937 gen(seed);
  for (auto& b : out) b = static_cast<std::byte>(gen());
  return out;
}

// Feeds `stream` to the reader in chunks of at most `chunk` bytes and collects every frame.
std::vector<frame> read_all(frame_reader& reader, const byte_buffer& stream, std::size_t chunk) {
  std::vector<frame> frames;
  std::size_t at = 0;
  while (true) {
    while (auto f = reader.next("test peer")) frames.push_back(std::move(*f));
    if (at == stream.size()) break;
    auto room = reader.prepare();
    BOOST_REQUIRE(!room.empty());
    const std::size_t n = std::min({chunk, room.size(), stream.size() - at});
    std::memcpy(room.data(), stream.data() + at, n);
    reader.commit(n);
    at += n;
  }
  return frames;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(net_frame)

BOOST_AUTO_TEST_CASE(header_round_trip) {
  frame_header h{frame_kind::response, frame_status::handler_error, method_id("forward"), 7, 0x0123456789abcdefull, 4096};
  auto bytes = encode_frame_header(h);
  BOOST_TEST(bytes.size() == frame_header_size);
  BOOST_TEST((decode_frame_header(bytes, {}, "peer") == h));
  // Little-endian layout: the magic spells DMRP.
  BOOST_TEST(std::string(reinterpret_cast<const char*>(bytes.data()), 4) == "DMRP");
  BOOST_TEST(static_cast<int>(bytes[24]) == 0x00);
  BOOST_TEST(static_cast<int>(bytes[25]) == 0x10);
}

BOOST_AUTO_TEST_CASE(method_ids_are_compile_time_constants) {
  constexpr auto forward = method_id("forward");
  static_assert(forward != method_id("backward"));
  BOOST_TEST(forward == method_id(std::string("forward")));
}

BOOST_AUTO_TEST_CASE(oversized_frame_error_names_sizes_and_peer) {
  frame_header h;
  h.payload_size = std::uint64_t{300} << 20;
  auto bytes = encode_frame_header(h);
  try {
    decode_frame_header(bytes, {}, "127.0.0.5:4100");
    BOOST_FAIL("a 300 MiB frame passed the 256 MiB limit");
  } catch (const limit_error& e) {
    BOOST_TEST(std::string(e.what()) == "rpc frame of 300 MiB exceeds limit 256 MiB from 127.0.0.5:4100");
  }
  frame_limits raised{std::uint64_t{512} << 20};
  BOOST_TEST(decode_frame_header(bytes, raised, "peer").payload_size == std::uint64_t{300} << 20);
}

BOOST_AUTO_TEST_CASE(malformed_headers_are_protocol_errors) {
  auto good = encode_frame_header(frame_header{});
  auto check = [](frame_header_bytes bytes, std::string_view expected) {
    try {
      decode_frame_header(bytes, {}, "10.0.0.1:9");
      BOOST_FAIL("malformed header accepted");
    } catch (const protocol_error& e) {
      BOOST_TEST_INFO(e.what());
      BOOST_TEST(std::string(e.what()).find(expected) != std::string::npos);
      BOOST_TEST(std::string(e.what()).find("10.0.0.1:9") != std::string::npos);
    }
  };
  auto bad = good;
  bad[0] = std::byte{'X'};
  check(bad, "bad magic");
  bad = good;
  bad[4] = std::byte{9};
  check(bad, "unsupported version 9");
  bad = good;
  bad[5] = std::byte{0};
  check(bad, "unknown kind 0");
  bad = good;
  bad[6] = std::byte{77};
  check(bad, "unknown status 77");
  frame_header cancel{frame_kind::cancel};
  cancel.payload_size = 5;
  check(encode_frame_header(cancel), "cancel frame carries 5 bytes");
  BOOST_CHECK_THROW(decode_frame_header(const_byte_span(good).first(31), {}, "p"), protocol_error);
}

BOOST_AUTO_TEST_CASE(reader_cuts_a_stream_into_frames_whatever_the_chunking) {
  // Small frames, one that just fits the buffer, and large ones received in place.
  const std::size_t buffer = 1024;
  std::vector<std::size_t> sizes = {0, 1, 100, buffer - frame_header_size, buffer - frame_header_size + 1, 5000, 3, 70000, 0};
  byte_buffer stream;
  std::vector<byte_buffer> payloads;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    payloads.push_back(frame_pattern(sizes[i], static_cast<unsigned>(i)));
    frame_header h{frame_kind::request, frame_status::ok, static_cast<std::uint32_t>(i), 0, 100 + i, sizes[i]};
    auto f = make_frame(h, payloads.back());
    stream.insert(stream.end(), f.begin(), f.end());
  }
  for (std::size_t chunk : {std::size_t{1}, std::size_t{7}, std::size_t{31}, std::size_t{1000}, std::size_t{1} << 20}) {
    frame_reader reader(frame_limits{}, buffer);
    auto frames = read_all(reader, stream, chunk);
    BOOST_TEST_INFO("chunk " << chunk);
    BOOST_REQUIRE(frames.size() == sizes.size());
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      BOOST_TEST(frames[i].header.request_id == 100 + i);
      BOOST_TEST(frames[i].header.method == i);
      BOOST_TEST((frames[i].payload == payloads[i]));
    }
    BOOST_TEST(!reader.mid_frame());
  }
}

BOOST_AUTO_TEST_CASE(large_payload_is_received_in_place) {
  frame_reader reader(frame_limits{}, 256);
  auto payload = frame_pattern(10000, 3);
  auto stream = make_frame(frame_header{frame_kind::request, frame_status::ok, 1, 0, 1, payload.size()}, payload);
  auto room = reader.prepare();
  std::memcpy(room.data(), stream.data(), 100);
  reader.commit(100);
  BOOST_REQUIRE(reader.large_frame_ahead("p").has_value());
  BOOST_TEST(reader.large_frame_ahead("p")->payload_size == payload.size());
  BOOST_TEST(!reader.next("p").has_value());
  BOOST_TEST(!reader.large_frame_ahead("p").has_value());  // allocated now
  BOOST_TEST(reader.mid_frame());
  BOOST_TEST(reader.pending_payload() == payload.size() - (100 - frame_header_size));
  // The rest goes straight into the payload: one prepare() covers all of it.
  room = reader.prepare();
  BOOST_TEST(room.size() == reader.pending_payload());
  std::memcpy(room.data(), stream.data() + 100, room.size());
  reader.commit(room.size());
  auto f = reader.next("p");
  BOOST_REQUIRE(f.has_value());
  BOOST_TEST((f->payload == payload));
  BOOST_TEST(!reader.mid_frame());
}

BOOST_AUTO_TEST_CASE(half_a_frame_is_visible_as_mid_frame) {
  frame_reader reader;
  auto stream = make_frame(frame_header{frame_kind::request, frame_status::ok, 1, 0, 1, 10}, frame_pattern(10, 1));
  auto room = reader.prepare();
  std::memcpy(room.data(), stream.data(), 20);
  reader.commit(20);
  BOOST_TEST(!reader.next("p").has_value());
  BOOST_TEST(reader.mid_frame());
  BOOST_TEST(!reader.large_frame_ahead("p").has_value());
}

BOOST_AUTO_TEST_CASE(oversized_frame_in_a_stream_is_refused_before_allocation) {
  frame_reader reader(frame_limits{1000});
  frame_header h;
  h.payload_size = 1001;
  auto head = encode_frame_header(h);
  auto room = reader.prepare();
  std::memcpy(room.data(), head.data(), head.size());
  reader.commit(head.size());
  BOOST_TEST(!reader.refused_header().has_value());
  BOOST_CHECK_THROW(reader.next("p"), limit_error);
  BOOST_TEST(reader.buffered_bytes() == std::size_t{64} * 1024);
  BOOST_REQUIRE(reader.refused_header().has_value());
  BOOST_TEST((*reader.refused_header() == h));
}

// Issue 8 review: a header alone commits no memory for its payload; room is made as the bytes arrive.
BOOST_AUTO_TEST_CASE(a_large_payloads_memory_is_committed_as_it_arrives) {
  constexpr std::size_t buffer = 64 * 1024;
  frame_reader reader(frame_limits{}, buffer);  // max_payload 256 MiB
  const auto head = encode_frame_header(frame_header{frame_kind::response, frame_status::ok, 1, 0, 1, 256u << 20});
  auto room = reader.prepare();
  std::memcpy(room.data(), head.data(), head.size());
  room[head.size()] = std::byte{7};
  reader.commit(head.size() + 1);
  BOOST_TEST(!reader.next("p").has_value());
  BOOST_REQUIRE(reader.large_frame() != nullptr);
  BOOST_TEST(reader.pending_payload() == (std::uint64_t{256} << 20) - 1);
  // Received: 1 byte. Committed: the receive buffer and 64 KiB of room, not 256 MiB.
  room = reader.prepare();
  BOOST_TEST_INFO("committed " << reader.buffered_bytes());
  BOOST_TEST(reader.buffered_bytes() <= buffer + 64 * 1024 + 1);
  // As bytes arrive, the room ahead of them stays at most as large as what has arrived (at least 64 KiB).
  std::uint64_t received = 1;
  while (received < (std::uint64_t{8} << 20)) {
    room = reader.prepare();
    BOOST_REQUIRE(!room.empty());
    BOOST_TEST(room.size() <= std::max<std::uint64_t>(64 * 1024, received));
    std::memset(room.data(), 1, room.size());
    reader.commit(room.size());
    received += room.size();
    BOOST_TEST(reader.buffered_bytes() <= buffer + 2 * received + 64 * 1024);
  }
}

BOOST_AUTO_TEST_CASE(a_payload_received_in_growing_room_arrives_intact) {
  frame_reader reader(frame_limits{}, 4096);
  const auto payload = frame_pattern((3u << 20) + 17, 5);
  const auto stream = make_frame(frame_header{frame_kind::request, frame_status::ok, 1, 0, 9, payload.size()}, payload);
  for (std::size_t chunk : {std::size_t{1000}, std::size_t{100'000}, std::size_t{4u << 20}}) {
    frame_reader fresh(frame_limits{}, 4096);
    const auto frames = read_all(fresh, stream, chunk);
    BOOST_REQUIRE(frames.size() == 1u);
    BOOST_TEST((frames[0].payload == payload));
    BOOST_TEST(frames[0].payload.size() == payload.size());
  }
}

// Issue 8 review: a frame's deadline follows the bytes received, not the size its header claims; a refused
// frame that claims 2^62 bytes and trickles is due as soon as one that claims 1 KiB.
BOOST_AUTO_TEST_CASE(a_frames_deadline_follows_the_bytes_received_not_the_size_claimed) {
  using namespace std::chrono_literals;
  frame_reader reader(frame_limits{1000});
  frame_deadline progress;
  const steady_time t0{std::chrono::seconds(100)};
  const auto head = encode_frame_header(frame_header{frame_kind::request, frame_status::ok, 1, 0, 1, std::uint64_t{1} << 62});
  auto room = reader.prepare();
  std::memcpy(room.data(), head.data(), head.size());
  reader.commit(head.size());
  BOOST_CHECK_THROW(reader.next("p"), limit_error);  // refused: its payload is skipped as it arrives
  progress.update(reader, t0);
  BOOST_REQUIRE(progress.active());
  constexpr std::uint64_t rate = 1 << 20;
  const auto due = [&] { return progress.deadline(reader, 300ms, rate); };
  BOOST_TEST((due() - t0 < 301ms));  // 32 bytes at 1 MiB/s: nothing beyond the read timeout
  // A MiB of it arrives: one more second.
  std::uint64_t skipped = 0;
  while (skipped < rate) {
    room = reader.prepare();
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(room.size(), rate - skipped));
    reader.commit(n);
    skipped += n;
    BOOST_TEST(!reader.next("p").has_value());
  }
  progress.update(reader, t0 + 500ms);
  BOOST_TEST((due() - t0 > 1299ms));
  BOOST_TEST((due() - t0 < 1301ms));
}

BOOST_AUTO_TEST_CASE(random_bytes_never_crash_the_reader) {
  std::mt19937 gen(42);
  int errors = 0;
  for (int round = 0; round < 200; ++round) {
    frame_reader reader(frame_limits{1 << 16}, 512);
    auto junk = frame_pattern(2000, static_cast<unsigned>(round));
    if (round % 2 == 0) {  // a valid magic and version make the decoder look further
      auto head = encode_frame_header(frame_header{});
      std::memcpy(junk.data(), head.data(), 5);
    }
    try {
      read_all(reader, junk, 1 + gen() % 300);
    } catch (const error& e) {
      BOOST_TEST((e.code() == errc::protocol || e.code() == errc::limit));
      ++errors;
    }
  }
  BOOST_TEST(errors > 100);
}

BOOST_AUTO_TEST_SUITE_END()
