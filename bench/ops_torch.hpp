// The PyTorch peer of dmoe_bench_ops: runs bench/torch_ffn.py on dmoe's ffn weights and inputs, checks dmoe's
// outputs and gradients against it, and collects its forward+backward times.
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
  std::vector<std::int64_t> batches;
  int threads = 2;
  int min_runs = 3;
  double min_seconds = 1.0;
  int rounds = 2;
  double tolerance = 1e-4;  // max |dmoe - torch| / max |torch|, per tensor
};

struct torch_peer_result {
  bool available = false;
  std::string reason;  // why not, when not available
  std::string version;
  int threads = 0;
  bool checked = false;
  bool pass = false;
  std::vector<std::pair<std::string, double>> relative_errors;  // per compared tensor
  std::map<std::int64_t, double> seconds;                         // batch -> best forward+backward seconds
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

// Runs `python script dir` with stdout and stderr into dir/log.txt; returns its exit status (-1 if not started).
inline int run_script(const std::string& python, const std::string& script, const std::filesystem::path& dir) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  const std::string log = (dir / "log.txt").string();
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::string dir_text = dir.string();
  std::vector<char*> args = {const_cast<char*>(python.c_str()), const_cast<char*>(script.c_str()), dir_text.data(),
                             nullptr};
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, python.c_str(), &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return -1;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace detail

// Writes the expert's parameters and a batch to a temporary directory, runs the script, compares dmoe's output,
// input gradient and every parameter gradient with PyTorch's, and reads PyTorch's timings.
inline torch_peer_result run_torch_peer(dmoe::nn::expert& expert, const torch_peer_options& options) {
  torch_peer_result result;
  if (access(options.python.c_str(), X_OK) != 0) {
    result.reason = fmt::format("{} is not an executable", options.python);
    return result;
  }
  if (access(options.script.c_str(), R_OK) != 0) {
    result.reason = fmt::format("script {} is not readable", options.script);
    return result;
  }
  detail::temp_dir dir;
  const ffn_inputs in = make_ffn_inputs(options.check_batch, options.hidden, 7);
  {
    std::ofstream meta(dir.path() / "meta.txt");
    meta << "hidden " << options.hidden << "\nbatch " << options.check_batch << "\neps 1e-05\nthreads "
         << options.threads << "\nmin_runs " << options.min_runs << "\nmin_seconds " << options.min_seconds
         << "\nrounds " << options.rounds << "\nbatches";
    for (auto b : options.batches) meta << ' ' << b;
    meta << "\n";
  }
  detail::write_f32(dir.path() / "x.f32", in.x);
  detail::write_f32(dir.path() / "dy.f32", in.dy);
  for (auto& p : expert.parameters()) detail::write_f32(dir.path() / (p.name + ".f32"), *p.value);

  expert.zero_grad();
  const dmoe::tensor y = expert.forward(in.x).clone();
  const dmoe::tensor dx = expert.backward(in.dy).clone();

  const int status = detail::run_script(options.python, options.script, dir.path());
  std::ifstream results(dir.path() / "results.txt");
  std::string line;
  while (std::getline(results, line)) {
    std::istringstream fields(line);
    std::string key;
    fields >> key;
    if (key == "torch_version") fields >> result.version;
    if (key == "threads") fields >> result.threads;
    if (key == "error") std::getline(fields, result.reason);
    if (key == "seconds") {
      std::int64_t batch = 0;
      double seconds = 0;
      fields >> batch >> seconds;
      result.seconds[batch] = seconds;
    }
  }
  if (status != 0) {
    if (result.reason.empty())
      result.reason = fmt::format("{} {} exited with {}: {}", options.python, options.script, status,
                                  detail::read_text(dir.path() / "log.txt"));
    return result;
  }
  result.available = true;
  result.checked = true;
  result.relative_errors.emplace_back("y", detail::relative_error(y, detail::read_f32(dir.path() / "y.f32")));
  result.relative_errors.emplace_back("dx", detail::relative_error(dx, detail::read_f32(dir.path() / "dx.f32")));
  for (auto& p : expert.parameters())
    result.relative_errors.emplace_back(
        "grad." + p.name, detail::relative_error(*p.grad, detail::read_f32(dir.path() / ("grad." + p.name + ".f32"))));
  result.pass = std::all_of(result.relative_errors.begin(), result.relative_errors.end(),
                            [&](const auto& e) { return e.second <= options.tolerance; });
  return result;
}

}  // namespace dmoe_bench
