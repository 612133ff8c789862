// A temporary directory for a test: made fresh, removed with all it holds when the object ends (also when the test
// fails). Usable as a Boost.Test fixture.
#pragma once

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <unistd.h>

namespace dmoe_test {

struct temp_dir {
  std::filesystem::path path;

  explicit temp_dir(std::string_view prefix = "dmoe-test") {
    static std::atomic<unsigned> counter{0};
    static const unsigned salt = std::random_device{}();
    path = std::filesystem::temp_directory_path() /
           (std::string(prefix) + "." + std::to_string(::getpid()) + "." + std::to_string(salt) + "." +
            std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }

  // The names in the directory, sorted.
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

}  // namespace dmoe_test
