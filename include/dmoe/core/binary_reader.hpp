// Reads little-endian values from untrusted bytes; every read is bounds-checked.
#pragma once

#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>

DMOE_BEGIN_NAMESPACE

class binary_reader {
 public:
  // `what` names the message being decoded, for error messages.
  explicit binary_reader(const_byte_span bytes, std::string_view what = "message")
      : bytes_(bytes), what_(what) {}

  template <class T>
    requires(std::is_arithmetic_v<T> || std::is_enum_v<T>)
  T read() {
    require(sizeof(T));
    T value;
    std::memcpy(&value, bytes_.data() + offset_, sizeof(T));
    offset_ += sizeof(T);
    return value;
  }

  DMOE_LAZY const_byte_span read_bytes(std::size_t count) {
    require(count);
    auto out = bytes_.subspan(offset_, count);
    offset_ += count;
    return out;
  }

  // A u32 length, then that many bytes; the length is checked against `max_size` and what is left.
  DMOE_LAZY const_byte_span read_blob(std::size_t max_size) {
    auto size = read<std::uint32_t>();
    if (size > max_size)
      throw limit_error(dmoe::format("{}: field of {} bytes exceeds limit {}", what_, size, max_size));
    return read_bytes(size);
  }
  DMOE_LAZY std::string read_string(std::size_t max_size) { return std::string(as_string_view(read_blob(max_size))); }

  std::size_t remaining() const noexcept { return bytes_.size() - offset_; }
  std::size_t offset() const noexcept { return offset_; }
  bool empty() const noexcept { return remaining() == 0; }

  // Throws unless every byte was consumed (trailing garbage is a protocol error).
  DMOE_LAZY void expect_end() const {
    if (!empty())
      throw protocol_error(dmoe::format("{}: {} unexpected trailing bytes", what_, remaining()));
  }

 private:
  DMOE_LAZY void require(std::size_t count) const {
    if (count > remaining())
      throw protocol_error(dmoe::format("{}: truncated: needs {} bytes at offset {}, only {} left", what_, count,
                                       offset_, remaining()));
  }

  const_byte_span bytes_;
  std::size_t offset_ = 0;
  std::string_view what_;
};

DMOE_END_NAMESPACE
