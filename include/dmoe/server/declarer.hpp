// server::declarer: declares a server's experts in the DHT every update_period (a dht::republisher) (moe/expert_records.hpp: the uid
// and every prefix entry, signed by the server's ed25519 key), and the key file that keeps a server's identity
// across restarts.
#pragma once

#include <dmoe/async/task.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/log.hpp>
#include <dmoe/dht/node.hpp>
#include <dmoe/dht/record_validator.hpp>
#include <dmoe/dht/republisher.hpp>
#include <dmoe/moe/expert_records.hpp>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <fcntl.h>
#include <fmt/core.h>
#include <sys/stat.h>
#include <unistd.h>

DMOE_BEGIN_NAMESPACE
namespace server {

// Loads the ed25519 key pair whose seed `path` holds (64 hex digits and a newline), or makes a new one and writes
// it there (mode 0600, written to a temporary file and renamed, so a crash never leaves half a key). Throws
// corrupt_error for a file that is not such a seed, system_error when it cannot be read or written.
DMOE_DECL dht::ed25519_keypair load_or_create_key(const std::filesystem::path& path);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF dht::ed25519_keypair load_or_create_key(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char text[130];
    std::size_t size = 0;
    while (size < sizeof text) {
      const ssize_t n = ::read(fd, text + size, sizeof text - size);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {  // e.g. a directory: say so, rather than that it holds no seed
        const int why = errno;
        ::close(fd);
        throw system_error(why, dmoe::format("cannot read key file {}", path.string()));
      }
      if (n == 0) break;
      size += static_cast<std::size_t>(n);
    }
    ::close(fd);
    std::string_view hex(text, size);
    while (!hex.empty() && (hex.back() == '\n' || hex.back() == '\r')) hex.remove_suffix(1);
    std::array<std::byte, dht::ed25519_seed_size> seed{};
    if (hex.size() != 2 * seed.size())
      throw corrupt_error(dmoe::format("key file {}: expected 64 hex digits (an ed25519 seed)", path.string()));
    for (std::size_t i = 0; i < seed.size(); ++i) {
      unsigned value = 0;
      for (std::size_t j = 0; j < 2; ++j) {
        const char c = hex[2 * i + j];
        unsigned digit;
        if (c >= '0' && c <= '9') digit = static_cast<unsigned>(c - '0');
        else if (c >= 'a' && c <= 'f') digit = static_cast<unsigned>(c - 'a' + 10);
        else throw corrupt_error(dmoe::format("key file {}: '{}' is not a lowercase hex digit", path.string(), c));
        value = value * 16 + digit;
      }
      seed[i] = static_cast<std::byte>(value);
    }
    return dht::ed25519_keypair::from_seed(seed);
  }
  if (errno != ENOENT) throw system_error(errno, dmoe::format("cannot read key file {}", path.string()));
  auto key = dht::ed25519_keypair::generate();
  std::string text;
  for (std::byte b : key.seed()) text += dmoe::format("{:02x}", static_cast<unsigned>(b));
  text += '\n';
  const std::filesystem::path temp = path.string() + dmoe::format(".tmp{}", ::getpid());
  const int out = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out < 0) throw system_error(errno, dmoe::format("cannot create key file {}", temp.string()));
  const bool written = ::write(out, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(out) == 0;
  const int saved = errno;
  ::close(out);
  if (!written || ::rename(temp.c_str(), path.c_str()) != 0) {
    const int why = written ? errno : saved;
    ::unlink(temp.c_str());
    throw system_error(why, dmoe::format("cannot write key file {}", path.string()));
  }
  return key;
}
#endif  // DMOE_HEAVY_DEFINITIONS

struct declarer_options {
  std::chrono::milliseconds update_period{30'000};  // between declarations
  std::chrono::milliseconds expiration{0};          // how long a declaration lives; 0: 2 x update_period
};

// Declares `uids` at `server_endpoint` now and then every update_period, until stopped: a dht::republisher of the
// declaration entries (moe/expert_records.hpp), signed by the server's key.
class declarer {
 public:
  // Throws invalid_argument_error for an update_period that is not positive or an expiration not longer than it.
  DMOE_LAZY declarer(dht::node& node, const std::vector<std::string>& uids, const endpoint& server_endpoint,
           const dht::ed25519_keypair& key, declarer_options options = {})
      : republisher_(node, {options.update_period, options.expiration}), uids_(uids.size()), endpoint_(server_endpoint) {
    for (auto& e : moe::declaration_entries(uids, server_endpoint, 0, key))
      republisher_.set(e.key, std::move(e.subkey), std::move(e.value), &key);
  }

  // Stores every declaration once (one crawl for all keys); returns how many entries some node took.
  DMOE_LAZY task<std::size_t> declare_once() { return republisher_.publish_once(); }
  // Declares every update_period until the awaiting coroutine is stopped (then cancelled_error) or the node shuts
  // down.
  DMOE_LAZY task<void> run() { return republisher_.run(); }

  // Declaration rounds done (thread-safe).
  std::uint64_t rounds() const noexcept { return republisher_.rounds(); }
  // Called after each round with the number of entries stored.
  DMOE_DECL void on_round(std::function<void(std::size_t)> fn);

 private:
  dht::republisher republisher_;
  std::size_t uids_;
  endpoint endpoint_;
};

}  // namespace server
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace server {

DMOE_DEF auto declarer::on_round(std::function<void(std::size_t)> fn) -> void {
  republisher_.on_round([this, fn = std::move(fn)](std::size_t stored, std::size_t total) {
    if (stored == total) log_debug("declared {} experts at {} ({} DHT entries)", uids_, endpoint_, total);
    if (fn) fn(stored);
  });
}

}  // namespace server
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
