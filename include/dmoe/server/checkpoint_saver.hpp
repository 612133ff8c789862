// server::checkpoint_saver: each expert's parameters and optimizer state under <dir>/<uid>/checkpoint-<n>.dmoe,
// written atomically (nn/checkpoint.hpp: temporary file, fsync, rename, directory fsync), the last `keep` kept.
// On start the newest checkpoint that loads is used; a corrupt or mismatched one is skipped with a warning.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/log.hpp>
#include <dmoe/server/expert_backend.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace server {

class checkpoint_saver {
 public:
  // Throws invalid_argument_error when keep is 0.
  checkpoint_saver(std::filesystem::path directory, std::size_t keep = 3) : directory_(std::move(directory)), keep_(keep) {
    if (keep_ == 0) throw invalid_argument_error("checkpoint_saver: keep must be at least 1");
  }

  const std::filesystem::path& directory() const noexcept { return directory_; }

  // The checkpoints of `uid`, oldest first, as (number, path).
  DMOE_DECL std::vector<std::pair<std::uint64_t, std::filesystem::path>> list(std::string_view uid) const;

  // Writes a new checkpoint of the expert and removes all but the newest `keep`. Returns its path. Throws
  // system_error when the directory or file cannot be written (e.g. a full disk; earlier checkpoints stay).
  DMOE_DECL std::filesystem::path save(const expert_backend& expert) const;

  // Loads the newest checkpoint of the expert that loads cleanly and returns its path; older ones are tried when
  // a newer one is corrupt or does not fit the expert (each skipped with a warning). Nothing when none loads.
  DMOE_DECL std::optional<std::filesystem::path> load_newest(expert_backend& expert) const;

 private:
  std::filesystem::path directory_;
  std::size_t keep_;
};

}  // namespace server
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace server {

DMOE_DEF auto checkpoint_saver::list(std::string_view uid) const -> std::vector<std::pair<std::uint64_t,
    std::filesystem::path>> {
  std::vector<std::pair<std::uint64_t, std::filesystem::path>> out;
  std::error_code ec;
  const auto dir = directory_ / std::string(uid);
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    constexpr std::string_view prefix = "checkpoint-", suffix = ".dmoe";
    if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) || !name.ends_with(suffix))
      continue;
    const std::string_view digits = std::string_view(name).substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    if (digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    out.emplace_back(std::stoull(std::string(digits)), it->path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

DMOE_DEF auto checkpoint_saver::save(const expert_backend& expert) const -> std::filesystem::path {
  const auto dir = directory_ / expert.uid();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw system_error(ec.value(), dmoe::format("cannot create checkpoint directory {}", dir.string()));
  auto existing = list(expert.uid());
  const std::uint64_t number = existing.empty() ? 1 : existing.back().first + 1;
  const auto path = dir / dmoe::format("checkpoint-{:06d}.dmoe", number);
  expert.save(path);
  existing.emplace_back(number, path);
  while (existing.size() > keep_) {
    std::filesystem::remove(existing.front().second, ec);
    existing.erase(existing.begin());
  }
  return path;
}

DMOE_DEF auto checkpoint_saver::load_newest(expert_backend& expert) const -> std::optional<std::filesystem::path> {
  auto found = list(expert.uid());
  for (auto it = found.rbegin(); it != found.rend(); ++it) {
    try {
      expert.load(it->second);
      return it->second;
    } catch (const error& e) {
      log_warn("expert {}: skipping checkpoint {}: {}", expert.uid(), it->second.string(), e.what());
    }
  }
  return std::nullopt;
}

}  // namespace server
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
