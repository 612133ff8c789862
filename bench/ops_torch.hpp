// The PyTorch peer of dmoe_bench_ops: bench/torch_ffn.py on dmoe's ffn weights and inputs, checked against dmoe's
// outputs and gradients, then timed on request between dmoe's own runs.
#pragma once

#include "ops_ffn.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

extern char** environ;

namespace dmoe_bench {

struct torch_peer_options {
  std::string python = "/usr/bin/python3";
  std::string script;
  std::int64_t hidden = 1024;
  std::int64_t check_batch = 256;
  int threads = 2;
  int min_runs = 3;  // per "time" request: at least this many timed passes and min_seconds in all
  double min_seconds = 1.0;
  double tolerance = 1e-4;  // max |dmoe - torch| / max |torch|, per tensor
  std::vector<std::string> extra_env;  // NAME=VALUE added to the script's environment
};

struct torch_peer_result {
  bool available = false;
  std::string reason;  // why not, when not available
  std::string version;
  int threads = 0;
  bool checked = false;
  bool pass = false;
  std::vector<std::pair<std::string, double>> relative_errors;  // per compared tensor
  std::map<std::int64_t, double> seconds;                         // batch -> best forward+backward seconds so far
};

namespace detail {

// A temporary directory removed with everything in it when this goes out of scope.
class temp_dir {
 public:
  temp_dir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "dmoe_bench_ops.XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("dmoe_bench_ops: mkdtemp failed");
    path_ = pattern;
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline void write_f32(const std::filesystem::path& file, const dmoe::tensor& t) {
  std::ofstream out(file, std::ios::binary);
  out.write(reinterpret_cast<const char*>(t.bytes_data()), static_cast<std::streamsize>(t.nbytes()));
  if (!out) throw std::runtime_error(fmt::format("dmoe_bench_ops: cannot write {}", file.string()));
}

inline std::vector<float> read_f32(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error(fmt::format("dmoe_bench_ops: PyTorch wrote no {}", file.string()));
  const auto bytes = static_cast<std::size_t>(in.tellg());
  std::vector<float> values(bytes / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(float)));
  return values;
}

// max |ours - theirs| / max |theirs|; infinity when the sizes differ.
inline double relative_error(const dmoe::tensor& ours, const std::vector<float>& theirs) {
  if (static_cast<std::size_t>(ours.numel()) != theirs.size()) return std::numeric_limits<double>::infinity();
  const float* a = ours.data<float>();
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < theirs.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - theirs[i]));
    scale = std::max(scale, std::abs(static_cast<double>(theirs[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

inline std::string read_text(const std::filesystem::path& file, std::size_t max_chars = 400) {
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  std::string s = text.str();
  return s.size() > max_chars ? s.substr(s.size() - max_chars) : s;
}

}  // namespace detail

// bench/torch_ffn.py as a child process: it checks itself against dmoe's expert first (files in a temporary
// directory), then answers "time BATCH" lines on its stdin with "seconds BATCH S" lines on its stdout, so that its
// timings can alternate with dmoe's in the same minutes of a shared machine.
class torch_peer {
 public:
  torch_peer(dmoe::nn::expert& expert, const torch_peer_options& options) : options_(options) {
    if (access(options.python.c_str(), X_OK) != 0) {
      result_.reason = fmt::format("{} is not an executable", options.python);
      return;
    }
    if (access(options.script.c_str(), R_OK) != 0) {
      result_.reason = fmt::format("script {} is not readable", options.script);
      return;
    }
    const ffn_inputs in = make_ffn_inputs(options.check_batch, options.hidden, 7);
    {
      std::ofstream meta(dir_.path() / "meta.txt");
      meta << "hidden " << options.hidden << "\nbatch " << options.check_batch << "\neps 1e-05\nthreads "
           << options.threads << "\nmin_runs " << options.min_runs << "\nmin_seconds " << options.min_seconds << "\n";
    }
    detail::write_f32(dir_.path() / "x.f32", in.x);
    detail::write_f32(dir_.path() / "dy.f32", in.dy);
    for (auto& p : expert.parameters()) detail::write_f32(dir_.path() / (p.name + ".f32"), *p.value);
    expert.zero_grad();
    const dmoe::tensor y = expert.forward(in.x).clone();
    const dmoe::tensor dx = expert.backward(in.dy).clone();

    if (!spawn()) return;
    // The script writes results.txt and says "ready" once its own forward+backward is on disk.
    std::string line;
    while (read_line(line) && line != "ready") {
    }
    read_results();
    if (line != "ready") {
      if (result_.reason.empty())
        result_.reason = fmt::format("{} {} stopped before its check: {}", options.python, options.script,
                                     detail::read_text(dir_.path() / "log.txt"));
      stop();
      return;
    }
    result_.available = true;
    result_.checked = true;
    result_.relative_errors.emplace_back("y", detail::relative_error(y, detail::read_f32(dir_.path() / "y.f32")));
    result_.relative_errors.emplace_back("dx", detail::relative_error(dx, detail::read_f32(dir_.path() / "dx.f32")));
    for (auto& p : expert.parameters())
      result_.relative_errors.emplace_back(
          "grad." + p.name,
          detail::relative_error(*p.grad, detail::read_f32(dir_.path() / ("grad." + p.name + ".f32"))));
    result_.pass = std::all_of(result_.relative_errors.begin(), result_.relative_errors.end(),
                               [&](const auto& e) { return e.second <= options.tolerance; });
  }
  torch_peer(const torch_peer&) = delete;
  torch_peer& operator=(const torch_peer&) = delete;
  ~torch_peer() { stop(); }

  const torch_peer_result& result() const noexcept { return result_; }
  bool available() const noexcept { return result_.available; }

  // PyTorch's best forward+backward seconds at the batch over one timing budget (NaN when it is gone).
  double time(std::int64_t batch) {
    if (!result_.available) return std::numeric_limits<double>::quiet_NaN();
    const std::string command = fmt::format("time {}\n", batch);
    if (::write(to_child_, command.data(), command.size()) != static_cast<ssize_t>(command.size())) return lost();
    std::string line;
    if (!read_line(line)) return lost();
    std::istringstream fields(line);
    std::string key;
    std::int64_t b = 0;
    double seconds = 0;
    fields >> key >> b >> seconds;
    if (key != "seconds" || b != batch) return lost();
    auto& best = result_.seconds[batch];
    best = best > 0 ? std::min(best, seconds) : seconds;
    return seconds;
  }

 private:
  bool spawn() {
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0) return false;
    if (pipe2(out, O_CLOEXEC) != 0) {
      close(in[0]);
      close(in[1]);
      return false;
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string log = (dir_.path() / "log.txt").string();
    posix_spawn_file_actions_adddup2(&actions, in[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::string dir_text = dir_.path().string();
    std::vector<char*> args = {const_cast<char*>(options_.python.c_str()), const_cast<char*>(options_.script.c_str()),
                               dir_text.data(), nullptr};
    std::vector<char*> env;
    for (char** e = environ; *e; ++e) env.push_back(*e);
    for (auto& e : options_.extra_env) env.push_back(e.data());
    env.push_back(nullptr);
    const int rc = posix_spawn(&pid_, options_.python.c_str(), &actions, nullptr, args.data(), env.data());
    posix_spawn_file_actions_destroy(&actions);
    close(in[0]);
    close(out[1]);
    to_child_ = in[1];
    from_child_ = out[0];
    if (rc != 0) {
      pid_ = 0;
      result_.reason = fmt::format("cannot start {}: {}", options_.python, std::strerror(rc));
      return false;
    }
    return true;
  }

  bool read_line(std::string& line) {
    line.clear();
    for (;;) {
      const auto eol = buffer_.find('\n');
      if (eol != std::string::npos) {
        line = buffer_.substr(0, eol);
        buffer_.erase(0, eol + 1);
        return true;
      }
      char chunk[256];
      const ssize_t n = ::read(from_child_, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }

  void read_results() {
    std::ifstream results(dir_.path() / "results.txt");
    std::string line;
    while (std::getline(results, line)) {
      std::istringstream fields(line);
      std::string key;
      fields >> key;
      if (key == "torch_version") fields >> result_.version;
      if (key == "threads") fields >> result_.threads;
      if (key == "error") std::getline(fields >> std::ws, result_.reason);
    }
  }

  double lost() {
    result_.available = false;
    result_.reason = fmt::format("{} stopped answering: {}", options_.script, detail::read_text(dir_.path() / "log.txt"));
    stop();
    return std::numeric_limits<double>::quiet_NaN();
  }

  // Closing its stdin tells the script to exit; then it is reaped.
  void stop() {
    if (to_child_ >= 0) close(to_child_);
    to_child_ = -1;
    if (pid_ > 0) {
      int status = 0;
      while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      pid_ = 0;
    }
    if (from_child_ >= 0) close(from_child_);
    from_child_ = -1;
  }

  torch_peer_options options_;
  torch_peer_result result_;
  detail::temp_dir dir_;
  pid_t pid_ = 0;
  int to_child_ = -1, from_child_ = -1;
  std::string buffer_;
};

}  // namespace dmoe_bench
