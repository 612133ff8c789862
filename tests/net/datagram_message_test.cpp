// Tests of dmoe/net/datagram_message.hpp and datagram_reassembler.hpp: headers, splitting, reassembly limits.
#include <dmoe/net/datagram_message.hpp>
#include <dmoe/net/datagram_reassembler.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <random>
#include <string>
#include <vector>

using namespace dmoe;
using namespace dmoe::net;
using namespace std::chrono_literals;

namespace {

byte_buffer message_pattern(std::size_t size, unsigned seed) {
  byte_buffer out(size);
  std::mt19937 gen(seed);
  for (auto& b : out) b = static_cast<std::byte>(gen());
  return out;
}

datagram_header response_header(std::uint64_t transaction) {
  datagram_header h;
  h.kind = datagram_kind::response;
  h.type = 4;
  h.transaction_id = transaction;
  for (std::size_t i = 0; i < h.sender.size(); ++i) h.sender[i] = static_cast<std::byte>(i * 3);
  return h;
}

std::vector<byte_buffer> split(const datagram_header& h, const byte_buffer& message, const datagram_limits& limits = {}) {
  datagram_parts parts(h, message, limits);
  std::vector<byte_buffer> out(parts.count());
  for (std::size_t i = 0; i < parts.count(); ++i) parts.encode(i, out[i]);
  return out;
}

const steady_time t0{};

}  // namespace

BOOST_AUTO_TEST_SUITE(net_datagram)

BOOST_AUTO_TEST_CASE(single_datagram_round_trip) {
  auto message = message_pattern(300, 1);
  auto h = response_header(0xfeedface12345678ull);
  auto datagrams = split(h, message);
  BOOST_REQUIRE(datagrams.size() == 1u);
  BOOST_TEST(datagrams[0].size() == datagram_header_size + 300);
  auto d = decode_datagram(datagrams[0], {}, "peer");
  BOOST_TEST(d.header.transaction_id == h.transaction_id);
  BOOST_TEST((d.header.sender == h.sender));
  BOOST_TEST(d.header.type == 4);
  BOOST_TEST((d.header.kind == datagram_kind::response));
  BOOST_TEST(d.header.part_count == 1);
  BOOST_TEST((byte_buffer(d.payload.begin(), d.payload.end()) == message));
  datagram_reassembler r;
  auto whole = r.add(1, d, t0);
  BOOST_REQUIRE(whole.has_value());
  BOOST_TEST((*whole == message));
  BOOST_TEST(r.partial_messages() == 0u);
}

BOOST_AUTO_TEST_CASE(empty_message) {
  auto datagrams = split(response_header(1), {});
  BOOST_REQUIRE(datagrams.size() == 1u);
  auto d = decode_datagram(datagrams[0], {}, "peer");
  BOOST_TEST(d.payload.empty());
}

BOOST_AUTO_TEST_CASE(large_message_splits_into_datagrams_within_the_limit_and_reassembles_in_any_order) {
  auto message = message_pattern(10000, 2);
  auto datagrams = split(response_header(9), message);
  BOOST_TEST(datagrams.size() == (10000 + 1159) / 1160);
  for (auto& d : datagrams) BOOST_TEST(d.size() <= 1200u);
  std::mt19937 gen(5);
  std::shuffle(datagrams.begin(), datagrams.end(), gen);
  datagram_reassembler r;
  std::optional<byte_buffer> whole;
  for (std::size_t i = 0; i < datagrams.size(); ++i) {
    BOOST_TEST(!whole.has_value());
    whole = r.add(77, decode_datagram(datagrams[i], {}, "peer"), t0);
    // A duplicate of a part already held changes nothing.
    if (!whole) BOOST_TEST(!r.add(77, decode_datagram(datagrams[i], {}, "peer"), t0).has_value());
  }
  BOOST_REQUIRE(whole.has_value());
  BOOST_TEST((*whole == message));
  BOOST_TEST(r.partial_messages() == 0u);
  BOOST_TEST(r.buffered_bytes() == 0u);
  BOOST_TEST(r.duplicates() == datagrams.size() - 1);
}

BOOST_AUTO_TEST_CASE(configurable_datagram_size) {
  datagram_limits limits;
  limits.max_datagram = 540;
  auto message = message_pattern(5000, 3);
  auto datagrams = split(response_header(3), message, limits);
  BOOST_TEST(datagrams.size() == 10u);
  for (auto& d : datagrams) BOOST_TEST(d.size() <= 540u);
  datagram_reassembler r(limits);
  std::optional<byte_buffer> whole;
  for (auto& d : datagrams) whole = r.add(1, decode_datagram(d, limits, "peer"), t0);
  BOOST_REQUIRE(whole.has_value());
  BOOST_TEST((*whole == message));
}

BOOST_AUTO_TEST_CASE(same_transaction_from_different_sources_is_kept_apart) {
  auto a = message_pattern(3000, 4), b = message_pattern(3000, 5);
  auto da = split(response_header(1), a), db = split(response_header(1), b);
  datagram_reassembler r;
  std::optional<byte_buffer> wa, wb;
  for (std::size_t i = 0; i < da.size(); ++i) {
    wa = r.add(1, decode_datagram(da[i], {}, "a"), t0);
    wb = r.add(2, decode_datagram(db[i], {}, "b"), t0);
  }
  BOOST_REQUIRE((wa && wb));
  BOOST_TEST((*wa == a));
  BOOST_TEST((*wb == b));
}

BOOST_AUTO_TEST_CASE(partial_messages_are_bounded_and_a_full_source_waits_for_those_under_way) {
  datagram_limits limits;
  limits.max_partial_messages = 4;
  datagram_reassembler r(limits);
  std::vector<std::vector<byte_buffer>> messages;
  for (std::uint64_t t = 0; t < 6; ++t) {
    messages.push_back(split(response_header(t), message_pattern(3000, static_cast<unsigned>(t))));
    BOOST_TEST(!r.add(1, decode_datagram(messages.back()[0], {}, "p"), t0).has_value());
  }
  BOOST_TEST(r.partial_messages() == 4u);
  BOOST_TEST(r.refused() == 2u);
  BOOST_TEST(r.evicted() == 0u);
  // The oldest completes; the refused newest cannot complete from its later parts (its sender sends it again).
  std::optional<byte_buffer> whole;
  for (std::size_t i = 1; i < messages[0].size(); ++i) whole = r.add(1, decode_datagram(messages[0][i], {}, "p"), t0);
  BOOST_TEST(whole.has_value());
  BOOST_TEST(r.partial_messages() == 3u);
  whole.reset();
  for (std::size_t i = 1; i < messages[5].size(); ++i) whole = r.add(1, decode_datagram(messages[5][i], {}, "p"), t0);
  BOOST_TEST(!whole.has_value());
  for (const auto& d : messages[5])
    if (auto w = r.add(1, decode_datagram(d, {}, "p"), t0)) whole = std::move(w);
  BOOST_TEST(whole.has_value());  // sent again, whole
}

// Issue 8 review: a peer sending more multi-part messages at once than its share, their parts interleaved, gets
// its share through at once and the rest when it sends them again (evicting the oldest completed none of them).
BOOST_AUTO_TEST_CASE(more_interleaved_messages_than_a_sources_share_all_complete_when_sent_again) {
  datagram_reassembler r;  // 8 messages per source
  std::vector<std::vector<byte_buffer>> messages;
  for (std::uint64_t t = 0; t < 12; ++t) messages.push_back(split(response_header(100 + t), message_pattern(20000, 1)));
  std::vector<bool> done(messages.size(), false);
  auto send_round = [&] {
    std::size_t completed = 0;
    for (std::size_t part = 0; part < messages[0].size(); ++part) {
      for (std::size_t m = 0; m < messages.size(); ++m) {
        if (done[m]) continue;
        if (r.add(1, decode_datagram(messages[m][part], {}, "p"), t0)) {
          done[m] = true;
          ++completed;
        }
      }
    }
    return completed;
  };
  BOOST_TEST(send_round() == 8u);
  BOOST_TEST(send_round() == 4u);
  BOOST_TEST(r.partial_messages() == 0u);
  BOOST_TEST(r.buffered_bytes() == 0u);
}

// Issue 8 review: shares count per address, over all its ports; a flood from many ports of one host still cannot
// evict another host's message, and on a tie the newcomer gives way.
BOOST_AUTO_TEST_CASE(a_flood_from_many_ports_of_one_host_cannot_evict_another_hosts_message) {
  datagram_reassembler r;  // 4 MiB in all, 1 MiB and 8 messages per address
  const std::uint64_t flooder = 10, victim = 20;
  const auto legit = split(response_header(7), message_pattern(1000 << 10, 3));
  BOOST_REQUIRE(legit.size() > 2u);
  std::uint64_t flood_id = 1000;
  std::optional<byte_buffer> whole;
  for (std::size_t i = 0; i < legit.size(); ++i) {
    for (std::uint64_t port = 1; port <= 4; ++port) {
      const auto first = split(response_header(flood_id++), message_pattern(1000 << 10, 4));
      r.add(datagram_source{flooder * 100 + port, flooder}, decode_datagram(first[0], {}, "flooder"), t0);
      BOOST_TEST(r.buffered_bytes() <= r.limits().max_buffered_bytes);
    }
    whole = r.add(datagram_source{victim * 100 + 1, victim}, decode_datagram(legit[i], {}, "victim"), t0);
  }
  BOOST_TEST(whole.has_value());
  BOOST_TEST(r.evicted() == 0u);
  BOOST_TEST(r.refused() > 0u);
  // Parts of one message are matched by sender: the same transaction from another port of the host is another one.
  datagram_reassembler two;
  const auto parts = split(response_header(9), message_pattern(3000, 5));
  two.add(datagram_source{1, 7}, decode_datagram(parts[0], {}, "a"), t0);
  BOOST_TEST(two.partial_messages() == 1u);
  for (std::size_t i = 1; i < parts.size(); ++i) BOOST_TEST(!two.add(datagram_source{2, 7}, decode_datagram(parts[i], {}, "b"), t0));
  BOOST_TEST(two.partial_messages() == 2u);
}

BOOST_AUTO_TEST_CASE(reassembly_memory_is_bounded) {
  datagram_limits limits;
  limits.max_buffered_bytes = 10000;
  datagram_reassembler r(limits);
  for (std::uint64_t t = 0; t < 10; ++t) {
    auto parts = split(response_header(t), message_pattern(4000, 1));
    r.add(1, decode_datagram(parts[0], {}, "p"), t0);
    BOOST_TEST(r.buffered_bytes() <= 10000u);
  }
  BOOST_TEST(r.partial_messages() == 2u);
  // A message larger than the whole budget is refused outright.
  auto huge = split(response_header(99), message_pattern(20000, 1));
  BOOST_CHECK_THROW(r.add(1, decode_datagram(huge[0], {}, "p"), t0), limit_error);
}

BOOST_AUTO_TEST_CASE(stale_partials_expire) {
  datagram_reassembler r;
  auto parts = split(response_header(1), message_pattern(3000, 1));
  r.add(1, decode_datagram(parts[0], {}, "p"), t0);
  r.expire(t0 + 1s);
  BOOST_TEST(r.partial_messages() == 1u);
  r.expire(t0 + 6s);
  BOOST_TEST(r.partial_messages() == 0u);
  BOOST_TEST(r.buffered_bytes() == 0u);
  BOOST_TEST(r.expired() == 1u);
}

BOOST_AUTO_TEST_CASE(contradicting_parts_are_refused) {
  datagram_reassembler r;
  auto a = split(response_header(1), message_pattern(3000, 1));
  auto b = split(response_header(1), message_pattern(5000, 1));
  r.add(1, decode_datagram(a[0], {}, "p"), t0);
  BOOST_CHECK_THROW(r.add(1, decode_datagram(b[1], {}, "p"), t0), protocol_error);
  BOOST_TEST(r.partial_messages() == 1u);
}

BOOST_AUTO_TEST_CASE(malformed_datagrams_are_refused_with_clear_errors) {
  auto good = split(response_header(1), message_pattern(3000, 1));
  auto expect = [](const byte_buffer& bytes, std::string_view text, const datagram_limits& limits = {}) {
    try {
      decode_datagram(bytes, limits, "127.0.0.9:4000");
      BOOST_FAIL("malformed datagram accepted");
    } catch (const error& e) {
      BOOST_TEST_INFO(e.what());
      BOOST_TEST(std::string(e.what()).find(text) != std::string::npos);
      BOOST_TEST(std::string(e.what()).find("127.0.0.9:4000") != std::string::npos);
    }
  };
  expect(byte_buffer(good[0].begin(), good[0].begin() + 39), "shorter than its 40-byte header");
  auto bad = good[0];
  bad[0] = std::byte{2};
  expect(bad, "unsupported version 2");
  bad = good[0];
  bad[1] = std::byte{9};
  expect(bad, "unknown kind 9");
  bad = good[0];
  bad.pop_back();
  expect(bad, "carries 1159 bytes, expected 1160");
  bad = good[0];
  bad[6] = std::byte{5};  // part count 5 for a 3000-byte message in parts of 1160
  expect(bad, "says 5 parts");
  bad = good[0];
  bad[4] = std::byte{3};  // part index 3 of 3
  expect(bad, "part 3 of 3");
  datagram_limits small;
  small.max_message = 2048;
  expect(good[0], "exceeds limit 2 KiB", small);
}

BOOST_AUTO_TEST_CASE(random_bytes_never_crash_the_decoder_or_reassembler) {
  std::mt19937 gen(7);
  datagram_limits limits;
  limits.max_message = 1 << 16;
  datagram_reassembler r(limits);
  auto real = split(response_header(1), message_pattern(3000, 1));
  int accepted = 0;
  for (int round = 0; round < 2000; ++round) {
    byte_buffer bytes = real[gen() % real.size()];
    for (int flips = 1 + gen() % 4; flips > 0; --flips) bytes[gen() % bytes.size()] = static_cast<std::byte>(gen());
    try {
      r.add(gen() % 3, decode_datagram(bytes, limits, "p"), t0);
      ++accepted;
    } catch (const error& e) {
      BOOST_TEST((e.code() == errc::protocol || e.code() == errc::limit));
    }
    BOOST_TEST(r.buffered_bytes() <= limits.max_buffered_bytes);
  }
  BOOST_TEST(accepted > 0);
}

// Issue 8, fault 10: a source flooding first parts of large messages evicts its own, never another peer's.
BOOST_AUTO_TEST_CASE(one_source_flooding_first_parts_cannot_evict_another_sources_messages) {
  datagram_reassembler r;  // default limits: 4 MiB in all, 1 MiB and 8 messages per source
  const auto legit = split(response_header(7), message_pattern(40 << 10, 3));
  BOOST_REQUIRE(legit.size() > 2u);
  std::uint64_t flood_id = 1000;
  auto flood = [&] {
    for (int i = 0; i < 20; ++i) {
      const auto first = split(response_header(flood_id++), message_pattern(1 << 20, 4));
      r.add(1, decode_datagram(first[0], {}, "flooder"), t0);
      BOOST_TEST(r.buffered_bytes() <= r.limits().max_buffered_bytes);
    }
  };
  std::optional<byte_buffer> whole;
  for (std::size_t i = 0; i < legit.size(); ++i) {
    flood();
    whole = r.add(2, decode_datagram(legit[i], {}, "peer"), t0);
  }
  BOOST_TEST(whole.has_value());
  BOOST_TEST(r.refused() > 0u);  // the flooder's own messages gave way
}

// Issue 8 review: when the message count is what is short, the address holding the most messages gives way, not a
// newcomer that merely holds more bytes than many small messages do.
BOOST_AUTO_TEST_CASE(many_tiny_messages_cannot_starve_a_larger_one_of_the_message_count) {
  datagram_reassembler r;  // 64 messages in all, 8 per address
  datagram_limits tiny_parts;
  tiny_parts.max_datagram = 41;  // one payload byte per datagram: a 2-byte message in two parts
  for (std::uint64_t address = 1; address <= 8; ++address)
    for (std::uint64_t t = 0; t < 8; ++t) {
      const auto parts = split(response_header(address * 100 + t), message_pattern(2, 1), tiny_parts);
      BOOST_REQUIRE(parts.size() == 2u);
      r.add(address, decode_datagram(parts[0], tiny_parts, "attacker"), t0);
    }
  BOOST_REQUIRE(r.partial_messages() == 64u);
  const auto legit = split(response_header(7), message_pattern(2000, 3));
  std::optional<byte_buffer> whole;
  for (const auto& d : legit) whole = r.add(99, decode_datagram(d, {}, "victim"), t0);
  BOOST_TEST(whole.has_value());
  BOOST_TEST(r.evicted() == 1u);
}

// Issue 8, fault 12: limits that cannot work are refused with the reason.
BOOST_AUTO_TEST_CASE(unusable_datagram_limits_are_refused) {
  datagram_limits limits;
  limits.max_datagram = 70'000;  // over the largest UDP payload: every multi-part send would fail
  BOOST_CHECK_EXCEPTION(datagram_reassembler{limits}, invalid_argument_error, [](const invalid_argument_error& e) {
    return std::string(e.what()).find("max_datagram of 70000 bytes is outside 41 to 65507") != std::string::npos;
  });
  limits = {};
  limits.max_datagram = 40;
  BOOST_CHECK_THROW(datagram_reassembler{limits}, invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
