// Child processes for the example programs: started with fork/exec, stdout read line by line through a pipe,
// stderr into a log file, killed with the parent (PR_SET_PDEATHSIG), stopped with SIGTERM and a bounded wait
// (pidfd + poll), SIGKILL after it.
#pragma once

#include <dmoe/core/error.hpp>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

namespace dmoe_cli {

class child_process {
 public:
  // Starts `program` with `args`; its stderr goes to `log` (appended). Throws dmoe::system_error.
  child_process(const std::filesystem::path& program, const std::vector<std::string>& args,
                const std::filesystem::path& log)
      : name_(program.filename().string()), log_(log) {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw dmoe::system_error(errno, "pipe for " + name_);
    const int err = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (err < 0) {
      const int e = errno;
      ::close(out[0]);
      ::close(out[1]);
      throw dmoe::system_error(e, "opening log " + log.string());
    }
    std::vector<std::string> argv_text{program.string()};
    argv_text.insert(argv_text.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_text) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
      const int e = errno;
      ::close(out[0]);
      ::close(out[1]);
      ::close(err);
      throw dmoe::system_error(e, "fork for " + name_);
    }
    if (pid == 0) {
      // The child: dies with the parent (also when the parent is killed), signals unblocked, then exec.
      // Its own process group: a Ctrl-C on the terminal reaches the parent, which stops its children in order.
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      sigset_t all;
      sigemptyset(&all);
      ::sigprocmask(SIG_SETMASK, &all, nullptr);
      ::dup2(out[1], STDOUT_FILENO);
      ::dup2(err, STDERR_FILENO);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err);
    pid_ = pid;
    out_ = out[0];
    pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  }
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;
  ~child_process() { stop(std::chrono::seconds(15)); }

  // The next line the child wrote to stdout, or nullopt when it closed stdout (exited) or `timeout` passed.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (const auto newline = buffer_.find('\n'); newline != std::string::npos) {
        std::string line = buffer_.substr(0, newline);
        buffer_.erase(0, newline + 1);
        return line;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0 || out_ < 0) return std::nullopt;
      pollfd p{out_, POLLIN, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return std::nullopt;
      char chunk[4096];
      const ssize_t n = ::read(out_, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::close(std::exchange(out_, -1));
        return std::nullopt;
      }
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }

  // Reads lines until one contains `marker` and returns it; throws dmoe::unavailable_error when the child exits
  // or `timeout` passes first (see its log).
  std::string wait_for_line(std::string_view marker, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      auto line = read_line(std::max(left, std::chrono::milliseconds(0)));
      if (!line)
      {
        const bool alive = running();
        throw dmoe::unavailable_error(fmt::format(
            "{} (pid {}) did not print '{}'{}; see {}", name_, pid(), marker,
            alive ? fmt::format(" within {} ms", timeout.count())
                  : fmt::format(": it exited ({})", WIFEXITED(status_) ? fmt::format("status {}", WEXITSTATUS(status_))
                                                                        : fmt::format("signal {}", WTERMSIG(status_))),
            log_.string()));
      }
      if (line->find(marker) != std::string::npos) return *line;
    }
  }

  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped(status);
      return false;
    }
    return true;
  }

  // SIGTERM, then waits up to `grace` for the exit (SIGKILL after it). Returns the exit status (as waitpid's).
  // Idempotent.
  int stop(std::chrono::milliseconds grace) {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      if (!wait_exit(grace)) {
        ::kill(pid_, SIGKILL);
        wait_exit(std::chrono::milliseconds(-1));
      }
    }
    if (out_ >= 0) ::close(std::exchange(out_, -1));
    if (pidfd_ >= 0) ::close(std::exchange(pidfd_, -1));
    return status_;
  }

  pid_t pid() const noexcept { return pid_ > 0 ? pid_ : last_pid_; }

 private:
  void reaped(int status) {
    status_ = status;
    last_pid_ = pid_;
    pid_ = -1;
  }

  // Waits for the exit (negative timeout: forever) and reaps it; false when it is still running.
  bool wait_exit(std::chrono::milliseconds timeout) {
    if (pidfd_ >= 0) {
      pollfd p{pidfd_, POLLIN, 0};
      int r;
      do r = ::poll(&p, 1, timeout.count() < 0 ? -1 : static_cast<int>(timeout.count()));
      while (r < 0 && errno == EINTR);
      if (r == 0) return false;
    }
    int status = 0;
    pid_t r;
    do r = ::waitpid(pid_, &status, 0);
    while (r < 0 && errno == EINTR);
    reaped(status);
    return true;
  }

  std::string name_;
  std::filesystem::path log_;
  pid_t pid_ = -1, last_pid_ = -1;
  int out_ = -1, pidfd_ = -1;
  int status_ = 0;
  std::string buffer_;
};

// Runs `program` (found on the PATH) with `args` to its end, stdout and stderr into `log`; returns its exit status
// (-1 when it could not be started or was killed). No shell is involved.
inline int run_program(const std::string& program, const std::vector<std::string>& args,
                       const std::filesystem::path& log) {
  const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) return -1;
  std::vector<std::string> argv_text{program};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_text) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out, STDOUT_FILENO);
    ::dup2(out, STDERR_FILENO);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out);
  if (pid < 0) return -1;
  int status = 0;
  pid_t r;
  do r = ::waitpid(pid, &status, 0);
  while (r < 0 && errno == EINTR);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// `name` next to this program (the build tree and an install keep them together), else on the PATH.
inline std::filesystem::path sibling_program(const std::string& name) {
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const auto next = self.parent_path() / name;
    if (::access(next.c_str(), X_OK) == 0) return next;
  }
  if (const char* path = std::getenv("PATH")) {
    std::string_view rest(path);
    while (!rest.empty()) {
      const auto colon = rest.find(':');
      const auto dir = rest.substr(0, colon);
      const auto candidate = std::filesystem::path(std::string(dir)) / name;
      if (!dir.empty() && ::access(candidate.c_str(), X_OK) == 0) return candidate;
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
  }
  throw dmoe::unavailable_error(fmt::format("cannot find the program '{}' next to this one or on the PATH", name));
}

}  // namespace dmoe_cli
