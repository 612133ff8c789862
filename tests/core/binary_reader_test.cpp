// Tests of dmoe/core/binary_reader.hpp and binary_writer.hpp: round trips and untrusted input.
#include <dmoe/core/binary_reader.hpp>
#include <dmoe/core/binary_writer.hpp>

#include <boost/test/unit_test.hpp>

#include <limits>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(core_binary_io)

BOOST_AUTO_TEST_CASE(round_trip_of_every_kind) {
  byte_buffer buffer;
  binary_writer writer(buffer);
  writer.write<std::uint8_t>(7);
  writer.write<std::int64_t>(std::numeric_limits<std::int64_t>::min());
  writer.write<float>(-1.5f);
  writer.write_string("ffn.3.17");
  auto at = writer.reserve<std::uint32_t>();
  writer.write<double>(2.25);
  writer.patch<std::uint32_t>(at, 0xdeadbeef);

  binary_reader reader(buffer, "test message");
  BOOST_TEST(reader.read<std::uint8_t>() == 7);
  BOOST_TEST(reader.read<std::int64_t>() == std::numeric_limits<std::int64_t>::min());
  BOOST_TEST(reader.read<float>() == -1.5f);
  BOOST_TEST(reader.read_string(64) == "ffn.3.17");
  BOOST_TEST(reader.read<std::uint32_t>() == 0xdeadbeefu);
  BOOST_TEST(reader.read<double>() == 2.25);
  BOOST_TEST(reader.empty());
  reader.expect_end();
}

BOOST_AUTO_TEST_CASE(little_endian_layout) {
  byte_buffer buffer;
  binary_writer(buffer).write<std::uint32_t>(0x01020304);
  BOOST_TEST(static_cast<int>(buffer[0]) == 4);
  BOOST_TEST(static_cast<int>(buffer[3]) == 1);
}

BOOST_AUTO_TEST_CASE(truncated_input_is_a_protocol_error_naming_the_message) {
  byte_buffer buffer(3);
  binary_reader reader(buffer, "dht ping");
  try {
    reader.read<std::uint32_t>();
    BOOST_FAIL("read past the end");
  } catch (const protocol_error& e) {
    BOOST_TEST(std::string(e.what()).find("dht ping") != std::string::npos);
    BOOST_TEST(std::string(e.what()).find("truncated") != std::string::npos);
  }
  BOOST_TEST(reader.offset() == 0u);
}

BOOST_AUTO_TEST_CASE(lengths_are_never_trusted) {
  byte_buffer buffer;
  binary_writer writer(buffer);
  writer.write<std::uint32_t>(0xffffffff);  // claims 4 GiB, carries nothing
  binary_reader reader(buffer);
  BOOST_CHECK_THROW(reader.read_blob(1024), limit_error);

  binary_reader within_limit(buffer);
  BOOST_CHECK_THROW(within_limit.read_blob(0xffffffff), protocol_error);
}

BOOST_AUTO_TEST_CASE(trailing_bytes_are_refused) {
  byte_buffer buffer(5);
  binary_reader reader(buffer);
  reader.read<std::uint32_t>();
  BOOST_CHECK_THROW(reader.expect_end(), protocol_error);
}

BOOST_AUTO_TEST_SUITE_END()
