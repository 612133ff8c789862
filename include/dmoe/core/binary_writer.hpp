// Appends little-endian integers, floats and length-prefixed blobs to a byte buffer.
#pragma once

#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>

#include <bit>
#include <concepts>
#include <cstdint>
#include <string_view>
#include <type_traits>

DMOE_BEGIN_NAMESPACE

static_assert(std::endian::native == std::endian::little, "dmoe's wire formats assume a little-endian host");

class binary_writer {
 public:
  explicit binary_writer(byte_buffer& out) : out_(&out) {}

  template <class T>
    requires(std::is_arithmetic_v<T> || std::is_enum_v<T>)
  void write(T value) {
    auto offset = out_->size();
    out_->resize(offset + sizeof(T));
    std::memcpy(out_->data() + offset, &value, sizeof(T));
  }

  DMOE_LAZY void write_bytes(const_byte_span bytes) { out_->insert(out_->end(), bytes.begin(), bytes.end()); }

  // A u32 length, then the bytes.
  DMOE_LAZY void write_blob(const_byte_span bytes) {
    write(static_cast<std::uint32_t>(bytes.size()));
    write_bytes(bytes);
  }
  DMOE_LAZY void write_string(std::string_view text) { write_blob(as_bytes(text)); }

  // Reserves room for a value written later with `patch` (for lengths known only at the end).
  template <class T>
  std::size_t reserve() {
    auto offset = out_->size();
    out_->resize(offset + sizeof(T));
    return offset;
  }
  template <class T>
  void patch(std::size_t offset, T value) {
    std::memcpy(out_->data() + offset, &value, sizeof(T));
  }

  std::size_t size() const noexcept { return out_->size(); }
  byte_buffer& buffer() noexcept { return *out_; }

 private:
  byte_buffer* out_;
};

DMOE_END_NAMESPACE
