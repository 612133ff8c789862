// rpc_method: an RPC method's wire id (FNV-1a of its name, so both sides derive it) and its name for messages.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/net/frame.hpp>

#include <cstdint>
#include <string>
#include <string_view>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace net {

// Converts from a name, so calls read `client.call(server, "forward", ...)`; the name must outlive the method
// (string literals do).
struct rpc_method {
  std::uint32_t id = 0;
  std::string_view name;

  constexpr rpc_method() noexcept = default;
  constexpr rpc_method(std::string_view method_name) noexcept : id(method_id(method_name)), name(method_name) {}
  constexpr rpc_method(const char* method_name) noexcept : rpc_method(std::string_view(method_name)) {}
  // A method known only by its id (its name reads as the id in messages).
  static constexpr rpc_method from_id(std::uint32_t method) noexcept {
    rpc_method m;
    m.id = method;
    return m;
  }

  DMOE_LAZY std::string description() const {
    return name.empty() ? dmoe::format("method {:#010x}", id) : dmoe::format("'{}'", name);
  }
};

}  // namespace net
DMOE_END_NAMESPACE
