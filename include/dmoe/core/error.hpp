// Errors: one exception hierarchy rooted at dmoe::error, each with a code.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE

enum class errc {
  timeout,           // a deadline passed
  cancelled,         // a stop was requested
  protocol,          // bytes from a peer did not follow the protocol
  remote,            // the peer ran the request and reported an error
  limit,             // a configured limit was exceeded
  io,                // the operating system reported an error
  closed,            // the peer or the channel was closed
  invalid_argument,  // a caller passed something unusable
  shape,             // tensors of incompatible shapes
  corrupt,           // stored data failed a checksum or format check
  unavailable,       // no peer could serve the request
  device,            // an accelerator (CUDA) call failed, or no accelerator is there
};

constexpr std::string_view to_string(errc code) noexcept {
  switch (code) {
    case errc::timeout: return "timeout";
    case errc::cancelled: return "cancelled";
    case errc::protocol: return "protocol";
    case errc::remote: return "remote";
    case errc::limit: return "limit";
    case errc::io: return "io";
    case errc::closed: return "closed";
    case errc::invalid_argument: return "invalid_argument";
    case errc::shape: return "shape";
    case errc::corrupt: return "corrupt";
    case errc::unavailable: return "unavailable";
    case errc::device: return "device";
  }
  return "unknown";
}

class error : public std::runtime_error {
 public:
  error(errc code, const std::string& message) : std::runtime_error(message), code_(code) {}
  errc code() const noexcept { return code_; }

 private:
  errc code_;
};

#define DMOE_DEFINE_ERROR(name, code_value)                                       \
  class name : public error {                                                     \
   public:                                                                        \
    explicit name(const std::string& message) : error(errc::code_value, message) {} \
  };

DMOE_DEFINE_ERROR(timeout_error, timeout)
DMOE_DEFINE_ERROR(cancelled_error, cancelled)
DMOE_DEFINE_ERROR(protocol_error, protocol)
DMOE_DEFINE_ERROR(remote_error, remote)
DMOE_DEFINE_ERROR(limit_error, limit)
DMOE_DEFINE_ERROR(closed_error, closed)
DMOE_DEFINE_ERROR(invalid_argument_error, invalid_argument)
DMOE_DEFINE_ERROR(shape_error, shape)
DMOE_DEFINE_ERROR(corrupt_error, corrupt)
DMOE_DEFINE_ERROR(unavailable_error, unavailable)
DMOE_DEFINE_ERROR(device_error, device)
#undef DMOE_DEFINE_ERROR

// An error the operating system reported, with its errno.
class system_error : public error {
 public:
  DMOE_LAZY system_error(int errno_value, std::string_view what)
      : error(errc::io, dmoe::format("{}: {}", what, std::strerror(errno_value))), errno_(errno_value) {}
  int errno_value() const noexcept { return errno_; }

 private:
  int errno_;
};

// Throws system_error for a negative errno-style return value (`-errno`), else returns it.
DMOE_LAZY inline int check_errno_result(int result, std::string_view what) {
  if (result < 0) throw system_error(-result, what);
  return result;
}

DMOE_END_NAMESPACE
