// endpoint: an IPv4 or IPv6 address and port; parsing, printing and sockaddr conversion.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

#include <arpa/inet.h>
#include <fmt/core.h>
#include <netinet/in.h>
#include <sys/socket.h>

DMOE_BEGIN_NAMESPACE

// "127.0.0.1:4000" or "[::1]:4000". Default-constructed: unspecified (family AF_UNSPEC).
class endpoint {
 public:
  endpoint() noexcept { std::memset(&addr_, 0, sizeof addr_); }

  // An address literal ("10.0.0.1", "::1") and a port; throws invalid_argument_error.
  DMOE_LAZY endpoint(std::string_view address, std::uint16_t port) : endpoint() {
    if (!assign_address(address, port)) {
      throw invalid_argument_error(dmoe::format("not an IPv4 or IPv6 address: '{}'", address));
    }
  }

  // "host:port" with host an IPv4 literal, or "[v6]:port"; throws invalid_argument_error.
  DMOE_LAZY static endpoint parse(std::string_view text) {
    if (auto parsed = try_parse(text)) return *parsed;
    throw invalid_argument_error(
        dmoe::format("not an endpoint: '{}' (expected 1.2.3.4:port or [v6 address]:port)", text));
  }

  DMOE_DECL static std::optional<endpoint> try_parse(std::string_view text) noexcept;

  DMOE_DECL static endpoint from_sockaddr(const sockaddr* address, socklen_t length);

  DMOE_LAZY static endpoint loopback_v4(std::uint16_t port = 0) { return endpoint("127.0.0.1", port); }
  DMOE_LAZY static endpoint loopback_v6(std::uint16_t port = 0) { return endpoint("::1", port); }
  DMOE_LAZY static endpoint any_v4(std::uint16_t port = 0) { return endpoint("0.0.0.0", port); }
  DMOE_LAZY static endpoint any_v6(std::uint16_t port = 0) { return endpoint("::", port); }

  int family() const noexcept { return addr_.base.sa_family; }
  bool is_v4() const noexcept { return family() == AF_INET; }
  bool is_v6() const noexcept { return family() == AF_INET6; }
  bool is_specified() const noexcept { return is_v4() || is_v6(); }

  DMOE_LAZY std::uint16_t port() const noexcept {
    if (is_v4()) return ntohs(addr_.v4.sin_port);
    if (is_v6()) return ntohs(addr_.v6.sin6_port);
    return 0;
  }
  DMOE_DECL endpoint with_port(std::uint16_t port) const noexcept;

  // The address alone: "127.0.0.1", "::1".
  DMOE_DECL std::string address() const;
  DMOE_LAZY std::string to_string() const {
    if (is_v6()) return dmoe::format("[{}]:{}", address(), port());
    if (is_v4()) return dmoe::format("{}:{}", address(), port());
    return "unspecified";
  }

  const sockaddr* data() const noexcept { return &addr_.base; }
  socklen_t size() const noexcept {
    return is_v6() ? static_cast<socklen_t>(sizeof(sockaddr_in6)) : static_cast<socklen_t>(sizeof(sockaddr_in));
  }

  friend bool operator==(const endpoint& a, const endpoint& b) noexcept {
    if (a.family() != b.family() || a.port() != b.port()) return false;
    if (a.is_v4()) return a.addr_.v4.sin_addr.s_addr == b.addr_.v4.sin_addr.s_addr;
    if (a.is_v6()) {
      return std::memcmp(&a.addr_.v6.sin6_addr, &b.addr_.v6.sin6_addr, sizeof(in6_addr)) == 0 &&
             a.addr_.v6.sin6_scope_id == b.addr_.v6.sin6_scope_id;
    }
    return true;
  }

  DMOE_LAZY friend std::ostream& operator<<(std::ostream& out, const endpoint& e) { return out << e.to_string(); }

  DMOE_DECL std::size_t hash() const noexcept;

 private:
  DMOE_DECL bool assign_address(std::string_view address, std::uint16_t port) noexcept;

  union {
    sockaddr base;
    sockaddr_in v4;
    sockaddr_in6 v6;
  } addr_;
};

DMOE_END_NAMESPACE

template <>
struct std::hash<dmoe::endpoint> {
  std::size_t operator()(const dmoe::endpoint& e) const noexcept { return e.hash(); }
};

template <>
struct fmt::formatter<dmoe::endpoint> : dmoe::detail::text_formatter {
  template <class FormatContext>
  auto format(const dmoe::endpoint& e, FormatContext& ctx) const {
    return write(e.to_string(), ctx);
  }
};

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
DMOE_DEF auto endpoint::try_parse(std::string_view text) noexcept -> std::optional<endpoint> {
  std::string_view host;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') return std::nullopt;
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
    if (host.find(':') == std::string_view::npos) return std::nullopt;  // brackets are for IPv6
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos || text.find(':') != colon) return std::nullopt;
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
  }
  unsigned port = 0;
  const auto* end = port_text.data() + port_text.size();
  auto [ptr, ec] = std::from_chars(port_text.data(), end, port);
  if (port_text.empty() || ec != std::errc() || ptr != end || port > 65535) return std::nullopt;
  endpoint result;
  if (!result.assign_address(host, static_cast<std::uint16_t>(port))) return std::nullopt;
  return result;
}

DMOE_DEF auto endpoint::from_sockaddr(const sockaddr* address, socklen_t length) -> endpoint {
  endpoint result;
  if (address->sa_family == AF_INET && length >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    std::memcpy(&result.addr_.v4, address, sizeof(sockaddr_in));
  } else if (address->sa_family == AF_INET6 && length >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    std::memcpy(&result.addr_.v6, address, sizeof(sockaddr_in6));
  } else {
    throw invalid_argument_error(dmoe::format("unsupported socket address family {}", address->sa_family));
  }
  return result;
}

DMOE_DEF auto endpoint::with_port(std::uint16_t port) const noexcept -> endpoint {
  endpoint copy = *this;
  if (is_v4()) copy.addr_.v4.sin_port = htons(port);
  if (is_v6()) copy.addr_.v6.sin6_port = htons(port);
  return copy;
}

DMOE_DEF auto endpoint::address() const -> std::string {
  char text[INET6_ADDRSTRLEN] = {};
  if (is_v4()) return inet_ntop(AF_INET, &addr_.v4.sin_addr, text, sizeof text);
  if (is_v6()) return inet_ntop(AF_INET6, &addr_.v6.sin6_addr, text, sizeof text);
  return "unspecified";
}

DMOE_DEF auto endpoint::hash() const noexcept -> std::size_t {
  std::size_t h = std::hash<int>{}(family()) * 31 + port();
  const auto* bytes = reinterpret_cast<const unsigned char*>(is_v6() ? static_cast<const void*>(&addr_.v6.sin6_addr)
                                                                     : static_cast<const void*>(&addr_.v4.sin_addr));
  const std::size_t count = is_v6() ? sizeof(in6_addr) : sizeof(in_addr);
  for (std::size_t i = 0; i < count; ++i) h = h * 131 + bytes[i];
  return h;
}

DMOE_DEF auto endpoint::assign_address(std::string_view address, std::uint16_t port) noexcept -> bool {
  char text[INET6_ADDRSTRLEN] = {};
  if (address.empty() || address.size() >= sizeof text) return false;
  std::memcpy(text, address.data(), address.size());
  std::memset(&addr_, 0, sizeof addr_);
  if (inet_pton(AF_INET, text, &addr_.v4.sin_addr) == 1) {
    addr_.v4.sin_family = AF_INET;
    addr_.v4.sin_port = htons(port);
    return true;
  }
  if (inet_pton(AF_INET6, text, &addr_.v6.sin6_addr) == 1) {
    addr_.v6.sin6_family = AF_INET6;
    addr_.v6.sin6_port = htons(port);
    return true;
  }
  return false;
}

DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
