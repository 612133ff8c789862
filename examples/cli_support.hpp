// Helpers shared by the command-line programs (dmoe_dht_node, dmoe-server, the trainers): address and codec
// arguments and the address others join with.
#pragma once

#include <dmoe/async/endpoint.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/tensor/wire.hpp>

#include <cmath>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <ifaddrs.h>
#include <net/if.h>

namespace dmoe_cli {

// An IP literal with a port; hostnames are refused (the node resolves nothing).
inline const CLI::Validator endpoint_text(
    [](std::string& text) -> std::string {
      if (dmoe::endpoint::try_parse(text)) return {};
      return fmt::format("not an address: '{}' (expected an IP literal and a port, 1.2.3.4:5000 or [::1]:5000; "
                         "hostnames are not accepted)",
                         text);
    },
    "IP:PORT", "endpoint");

// An IP literal with a port others can be reached at: as endpoint_text, but not port 0 and not the unspecified
// address (0.0.0.0, ::), which name no peer.
inline const CLI::Validator peer_text(
    [](std::string& text) -> std::string {
      const std::optional<dmoe::endpoint> peer = dmoe::endpoint::try_parse(text);
      if (!peer) return endpoint_text(text);
      if (peer->port() == 0) return fmt::format("not a peer's address: '{}' (port 0 names no listening node)", text);
      const std::string host = peer->address();
      if (host == "0.0.0.0" || host == "::")
        return fmt::format("not a peer's address: '{}' ({} is no host's address)", text, host);
      return {};
    },
    "IP:PORT", "peer");

// A number in [lo, hi], like CLI::Range, which lets NaN through (every comparison with it is false): floating-point
// values must also be finite.
template <class T>
CLI::Validator range(T lo, T hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        T value{};
        if (!CLI::detail::lexical_cast(text, value)) return fmt::format("'{}' is not a number", text);
        if constexpr (std::is_floating_point_v<T>) {
          if (!std::isfinite(value)) return fmt::format("'{}' is not a finite number", text);
        }
        if (!(value >= lo && value <= hi)) return fmt::format("{} is not in [{}, {}]", text, lo, hi);
        return {};
      },
      fmt::format("[{} - {}]", lo, hi), "range");
}

// A codec's command-line name: none, f16, bf16, q8.
inline dmoe::wire_codec parse_codec(const std::string& text) {
  if (text == "none") return dmoe::wire_codec::none;
  if (text == "f16") return dmoe::wire_codec::f16;
  if (text == "bf16") return dmoe::wire_codec::bf16;
  if (text == "q8") return dmoe::wire_codec::q8_blockwise;
  throw dmoe::invalid_argument_error("compression '" + text + "': expected none, f16, bf16 or q8");
}

inline std::vector<dmoe::endpoint> parse_peers(const std::vector<std::string>& texts) {
  std::vector<dmoe::endpoint> peers;
  for (const auto& text : texts)
    if (!text.empty()) peers.push_back(dmoe::endpoint::parse(text));
  return peers;
}

// The address others can join with: a listening address of every interface (0.0.0.0, ::) is not one; this host's
// first non-loopback address of that family is (loopback when there is none).
inline std::string joinable(const dmoe::endpoint& bound) {
  const std::string host = bound.address();
  if (host != "0.0.0.0" && host != "::") return bound.to_string();
  const int family = bound.is_v4() ? AF_INET : AF_INET6;
  std::optional<dmoe::endpoint> found;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) == 0) {
    for (const ifaddrs* i = list; i && !found; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != family || (i->ifa_flags & IFF_LOOPBACK) || !(i->ifa_flags & IFF_UP))
        continue;
      const socklen_t length = family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
      dmoe::endpoint e = dmoe::endpoint::from_sockaddr(i->ifa_addr, length);
      if (family == AF_INET6 && e.address().starts_with("fe80")) continue;  // link-local needs a scope id
      found = e.with_port(bound.port());
    }
    freeifaddrs(list);
  }
  if (!found) found = (bound.is_v4() ? dmoe::endpoint::loopback_v4() : dmoe::endpoint::loopback_v6()).with_port(bound.port());
  return found->to_string();
}

}  // namespace dmoe_cli
