// Tensor shapes: up to six int64 dimensions, row-major, printed as "[3, 4]".
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <span>
#include <string>
#include <string_view>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE

namespace detail {
// The shape_error of shape's constructor, made out of line: the checks stay inline where shapes are built, and only
// the translation units that see dmoe's heavy definitions compile the messages.
DMOE_DECL [[noreturn]] void throw_shape_rank_error(std::size_t rank);
DMOE_DECL [[noreturn]] void throw_negative_dimension(std::size_t index, std::int64_t value);
}  // namespace detail

class shape {
 public:
  static constexpr std::size_t max_rank = 6;

  // Rank 0: a scalar with one element.
  constexpr shape() noexcept = default;
  shape(std::initializer_list<std::int64_t> dims) : shape(std::span<const std::int64_t>(dims.begin(), dims.size())) {}
  explicit shape(std::span<const std::int64_t> dims) {
    if (dims.size() > max_rank) detail::throw_shape_rank_error(dims.size());
    for (std::size_t i = 0; i < dims.size(); ++i) {
      if (dims[i] < 0) detail::throw_negative_dimension(i, dims[i]);
      dims_[i] = dims[i];
    }
    rank_ = static_cast<std::uint8_t>(dims.size());
  }

  constexpr std::size_t rank() const noexcept { return rank_; }
  constexpr std::int64_t operator[](std::size_t i) const noexcept { return dims_[i]; }
  // Dimension i, counted from the back when negative (-1 is the last); checked.
  DMOE_LAZY std::int64_t dim(std::ptrdiff_t i) const {
    const auto r = static_cast<std::ptrdiff_t>(rank_);
    const auto j = i < 0 ? i + r : i;
    if (j < 0 || j >= r) throw shape_error(dmoe::format("dimension {} of a shape of rank {} ({})", i, rank_, to_string()));
    return dims_[static_cast<std::size_t>(j)];
  }
  std::span<const std::int64_t> dims() const noexcept { return {dims_.data(), rank_}; }
  const std::int64_t* begin() const noexcept { return dims_.data(); }
  const std::int64_t* end() const noexcept { return dims_.data() + rank_; }

  constexpr std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (std::size_t i = 0; i < rank_; ++i) n *= dims_[i];
    return n;
  }
  // Product of all dimensions but the last: the number of rows of the matrix view.
  constexpr std::int64_t outer() const noexcept { return rank_ == 0 ? 1 : numel_without_last(); }
  // The last dimension (1 for a scalar).
  constexpr std::int64_t inner() const noexcept { return rank_ == 0 ? 1 : dims_[rank_ - 1]; }

  // The same shape with dimension i replaced.
  DMOE_LAZY shape with(std::size_t i, std::int64_t value) const {
    if (i >= rank_) throw shape_error(dmoe::format("dimension {} of a shape of rank {} ({})", i, rank_, to_string()));
    shape s = *this;
    s.dims_[i] = value;
    return s;
  }
  // The dimensions after the first (a row's shape).
  DMOE_LAZY shape without_first() const {
    if (rank_ == 0) throw shape_error("a scalar shape has no first dimension");
    return shape(dims().subspan(1));
  }
  // This shape with one more leading dimension.
  DMOE_LAZY shape with_leading(std::int64_t first) const {
    std::array<std::int64_t, max_rank + 1> d{};
    d[0] = first;
    for (std::size_t i = 0; i < rank_; ++i) d[i + 1] = dims_[i];
    return shape(std::span<const std::int64_t>(d.data(), rank_ + 1));
  }

  DMOE_LAZY std::string to_string() const { return dmoe::format("[{}]", dmoe::detail::join_text(dims(), ", ")); }

  friend constexpr bool operator==(const shape& a, const shape& b) noexcept {
    if (a.rank_ != b.rank_) return false;
    for (std::size_t i = 0; i < a.rank_; ++i)
      if (a.dims_[i] != b.dims_[i]) return false;
    return true;
  }

 private:
  constexpr std::int64_t numel_without_last() const noexcept {
    std::int64_t n = 1;
    for (std::size_t i = 0; i + 1 < rank_; ++i) n *= dims_[i];
    return n;
  }

  std::array<std::int64_t, max_rank> dims_{};
  std::uint8_t rank_ = 0;
};

inline std::ostream& operator<<(std::ostream& out, const shape& s) { return out << s.to_string(); }

DMOE_END_NAMESPACE

template <>
struct fmt::formatter<dmoe::shape> : dmoe::detail::text_formatter {
  template <class Context>
  auto format(const dmoe::shape& s, Context& ctx) const {
    return write(s.to_string(), ctx);
  }
};

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace detail {

DMOE_DEF void throw_shape_rank_error(std::size_t rank) {
  throw shape_error(dmoe::format("shape of rank {} exceeds the maximum rank {}", rank, shape::max_rank));
}

DMOE_DEF void throw_negative_dimension(std::size_t index, std::int64_t value) {
  throw shape_error(dmoe::format("shape dimension {} is negative ({})", index, value));
}

}  // namespace detail
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
