// server::declarer: declares a server's experts in the DHT every update_period (moe/expert_records.hpp: the uid
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
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

DMOE_BEGIN_NAMESPACE
namespace server {

// Loads the ed25519 key pair whose seed `path` holds (64 hex digits and a newline), or makes a new one and writes
// it there (mode 0600, written to a temporary file and renamed, so a crash never leaves half a key). Throws
// corrupt_error for a file that is not such a seed, system_error when it cannot be read or written.
inline dht::ed25519_keypair load_or_create_key(const std::filesystem::path& path) {
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
        throw system_error(why, fmt::format("cannot read key file {}", path.string()));
      }
      if (n == 0) break;
      size += static_cast<std::size_t>(n);
    }
    ::close(fd);
    std::string_view hex(text, size);
    while (!hex.empty() && (hex.back() == '\n' || hex.back() == '\r')) hex.remove_suffix(1);
    std::array<std::byte, crypto_sign_SEEDBYTES> seed{};
    if (hex.size() != 2 * seed.size())
      throw corrupt_error(fmt::format("key file {}: expected 64 hex digits (an ed25519 seed)", path.string()));
    for (std::size_t i = 0; i < seed.size(); ++i) {
      unsigned value = 0;
      for (std::size_t j = 0; j < 2; ++j) {
        const char c = hex[2 * i + j];
        unsigned digit;
        if (c >= '0' && c <= '9') digit = static_cast<unsigned>(c - '0');
        else if (c >= 'a' && c <= 'f') digit = static_cast<unsigned>(c - 'a' + 10);
        else throw corrupt_error(fmt::format("key file {}: '{}' is not a lowercase hex digit", path.string(), c));
        value = value * 16 + digit;
      }
      seed[i] = static_cast<std::byte>(value);
    }
    return dht::ed25519_keypair::from_seed(seed);
  }
  if (errno != ENOENT) throw system_error(errno, fmt::format("cannot read key file {}", path.string()));
  auto key = dht::ed25519_keypair::generate();
  std::string text;
  for (std::byte b : key.seed()) text += fmt::format("{:02x}", static_cast<unsigned>(b));
  text += '\n';
  const std::filesystem::path temp = path.string() + fmt::format(".tmp{}", ::getpid());
  const int out = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out < 0) throw system_error(errno, fmt::format("cannot create key file {}", temp.string()));
  const bool written = ::write(out, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(out) == 0;
  const int saved = errno;
  ::close(out);
  if (!written || ::rename(temp.c_str(), path.c_str()) != 0) {
    const int why = written ? errno : saved;
    ::unlink(temp.c_str());
    throw system_error(why, fmt::format("cannot write key file {}", path.string()));
  }
  return key;
}

struct declarer_options {
  std::chrono::milliseconds update_period{30'000};  // between declarations
  std::chrono::milliseconds expiration{0};          // how long a declaration lives; 0: 2 x update_period
};

// Declares `uids` at `server_endpoint` now and then every update_period, until stopped.
class declarer {
 public:
  declarer(dht::node& node, std::vector<std::string> uids, endpoint server_endpoint, const dht::ed25519_keypair& key,
           declarer_options options = {})
      : node_(node), uids_(std::move(uids)), endpoint_(server_endpoint), key_(key), options_(options) {
    if (options_.update_period.count() <= 0) throw invalid_argument_error("update_period must be positive");
    if (options_.expiration.count() == 0) options_.expiration = 2 * options_.update_period;
    if (options_.expiration.count() < 0) throw invalid_argument_error("expiration must be positive");
  }

  // Stores every declaration once (one crawl for all keys); returns how many entries some node took.
  task<std::size_t> declare_once() {
    const wall_seconds now = node_.options().clock->wall_now();
    const wall_seconds expiration =
        now + std::chrono::duration<double>(options_.expiration).count();
    auto entries = moe::declaration_entries(uids_, endpoint_, expiration, key_);
    const std::size_t total = entries.size();
    const auto outcomes = co_await node_.store_many(std::move(entries), deadline_after(options_.update_period));
    std::size_t stored = 0;
    for (const auto& o : outcomes) stored += o ? 1 : 0;
    rounds_.fetch_add(1);
    if (on_round_) on_round_(stored);
    if (stored < total)
      log_warn("declared {} of {} DHT entries for {} experts at {} (the rest: no node took them)", stored, total,
               uids_.size(), endpoint_);
    else
      log_debug("declared {} experts at {} ({} DHT entries)", uids_.size(), endpoint_, total);
    co_return stored;
  }

  // Declares every update_period until the awaiting coroutine is stopped (then cancelled_error).
  task<void> run() {
    while (true) {
      const steady_time next = deadline_after(options_.update_period);
      try {
        co_await declare_once();
      } catch (const cancelled_error&) {
        throw;
      } catch (const closed_error&) {
        co_return;  // the node shut down
      } catch (const error& e) {
        log_warn("declaring experts failed: {}", e.what());
      }
      co_await sleep_until(next);
    }
  }

  // Declaration rounds done (thread-safe).
  std::uint64_t rounds() const noexcept { return rounds_.load(); }
  // Called after each round with the number of entries stored.
  void on_round(std::function<void(std::size_t)> fn) { on_round_ = std::move(fn); }

 private:
  dht::node& node_;
  std::vector<std::string> uids_;
  endpoint endpoint_;
  const dht::ed25519_keypair& key_;
  declarer_options options_;
  std::atomic<std::uint64_t> rounds_{0};
  std::function<void(std::size_t)> on_round_;
};

}  // namespace server
DMOE_END_NAMESPACE
