// Where a tensor's storage lives: host memory or a CUDA device, how a program names one ("cpu", "cuda:0"), and
// the hook through which the tensor layer reaches device memory without depending on a device runtime.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <atomic>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>

DMOE_BEGIN_NAMESPACE

enum class device : std::uint8_t { host = 0, cuda = 1 };

constexpr std::string_view to_string(device d) noexcept { return d == device::host ? "host" : "cuda"; }

inline std::ostream& operator<<(std::ostream& out, device d) { return out << to_string(d); }

// A device as a program's users name it: `cpu` (or `host`), `cuda` (device 0) or `cuda:N`.
struct device_choice {
  dmoe::device kind = device::host;
  int index = 0;  // the CUDA device ordinal; 0 for the host

  friend bool operator==(const device_choice&, const device_choice&) = default;
  std::string text() const { return kind == device::host ? std::string("cpu") : "cuda:" + std::to_string(index); }
};

// Parses "cpu", "host", "cuda" or "cuda:N" (N a decimal ordinal below 1024); throws invalid_argument_error
// naming the accepted forms otherwise. Says nothing about whether such a device exists: see use_device.
DMOE_LAZY inline device_choice parse_device(std::string_view text) {
  if (text == "cpu" || text == "host") return {device::host, 0};
  if (text == "cuda") return {device::cuda, 0};
  if (text.starts_with("cuda:")) {
    const std::string_view digits = text.substr(5);
    int index = -1;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (!digits.empty() && ec == std::errc() && end == digits.data() + digits.size() && index >= 0 && index < 1024)
      return {device::cuda, index};
  }
  throw invalid_argument_error("device '" + std::string(text) + "': expected cpu, cuda or cuda:N");
}

namespace detail {

// Device memory as the tensor layer needs it. The CUDA backend (dmoe::cuda, or <dmoe/impl/cuda_src.cuh> compiled
// into the program) installs one when the program starts; without it, device tensors are refused with a clear error.
// Every function throws device_error (or std::bad_alloc) on failure, except deallocate.
struct device_memory {
  void* (*allocate)(std::size_t bytes);
  void (*deallocate)(void* pointer, std::size_t bytes) noexcept;
  // Copies bytes between any two of host and device memory; the copy is complete when it returns.
  void (*copy)(void* dst, device dst_device, const void* src, device src_device, std::size_t bytes);
  // Zero-fills; ordered on the calling thread's current stream, and complete on return when `wait` is set.
  void (*zero)(void* pointer, std::size_t bytes, bool wait);
  int (*device_count)();
  // The calling thread's current device ordinal (the device new storage lands on).
  int (*current)();
  // Makes the ordinal this thread's current device (throws device_error when there is no such device).
  void (*select)(int index);
};

DMOE_LAZY inline std::atomic<const device_memory*>& device_memory_hook() noexcept {
  static std::atomic<const device_memory*> hook{nullptr};
  return hook;
}

// The installed device memory; throws device_error when the program has no CUDA backend.
DMOE_LAZY inline const device_memory& require_device_memory(std::string_view what) {
  const device_memory* memory = device_memory_hook().load(std::memory_order_acquire);
  if (!memory)
    throw device_error(std::string(what) +
                       ": this program has no CUDA backend (dmoe was built without nvcc, or the program does not link "
                       "dmoe::cuda)");
  return *memory;
}

}  // namespace detail

// Whether this program can use CUDA devices: its CUDA backend is linked and at least one GPU is visible.
DMOE_LAZY inline bool cuda_available() {
  const detail::device_memory* memory = detail::device_memory_hook().load(std::memory_order_acquire);
  return memory && memory->device_count() > 0;
}

// Checks that `choice` can be used without making it current: nothing to check for the host; for a CUDA device
// throws device_error when the program has no CUDA backend, when no GPU is present or when the ordinal is out of
// range (the messages name the device).
DMOE_LAZY inline void check_device(const device_choice& choice) {
  if (choice.kind == device::host) return;
  const detail::device_memory& memory = detail::require_device_memory("device " + choice.text());
  const int count = memory.device_count();
  if (count == 0) throw device_error("device " + choice.text() + ": no CUDA GPU is present");
  if (choice.index >= count)
    throw device_error("device " + choice.text() + ": only " + std::to_string(count) + " CUDA GPU(s) are present");
}

// Makes `choice` the device this thread computes on (the CUDA ordinal new device storage lands on and ops run on)
// until another use_device. The host always works (and leaves the thread's CUDA device as it was); a CUDA device
// throws device_error as check_device does. (No scope restores the previous device: selecting a GPU starts its
// CUDA context, so going back to the default device 0 would start one there too.)
DMOE_LAZY inline void use_device(const device_choice& choice) {
  check_device(choice);
  if (choice.kind == device::host) return;
  detail::require_device_memory("device " + choice.text()).select(choice.index);
}

DMOE_END_NAMESPACE
