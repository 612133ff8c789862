// What every dmoe benchmark prints first: the machine, kernel, compiler and build it ran on.
#pragma once

#include <pthread.h>
#include <sched.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

namespace dmoe_bench {

inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

inline std::string json_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out;
}

// One JSON line: {"bench":name,"cpu":…,"cores":…,"kernel":…,"compiler":…,"build_type":…}.
inline void print_environment(const std::string& bench) {
  utsname u{};
  uname(&u);
#ifdef NDEBUG
  const char* build = "release";
#else
  const char* build = "debug";
#endif
#if defined(__clang__)
  std::string compiler = fmt::format("clang {}.{}.{}", __clang_major__, __clang_minor__, __clang_patchlevel__);
#elif defined(__GNUC__)
  std::string compiler = fmt::format("g++ {}.{}.{}", __GNUC__, __GNUC_MINOR__, __GNUC_PATCHLEVEL__);
#else
  std::string compiler = "unknown";
#endif
  fmt::print("{{\"bench\":\"{}\",\"env\":true,\"cpu\":\"{}\",\"cores\":{},\"kernel\":\"{} {}\",\"compiler\":\"{}\",\"build_type\":\"{}\"}}\n",
             bench, json_escape(cpu_model()), std::thread::hardware_concurrency(), u.sysname, u.release, compiler,
             build);
  std::fflush(stdout);
}

// Pins the calling thread to one CPU for its lifetime and restores the thread's CPUs on destruction. The CPU is
// the `nth` (modulo their number) of those the process could run on when the first pin was made; where that is
// one CPU, nothing is pinned and cpu() is -1. Benchmarks that put a server and a client on two threads pin them
// to distinct CPUs, for every peer alike: on loopback, the scheduler otherwise sometimes runs both threads on one
// CPU, which turns a round trip into a context switch for whichever runtime's wakeups happen to invite it, and
// machines talking over a network never share a CPU.
class cpu_pin {
 public:
  explicit cpu_pin(int nth) {
    static const std::vector<int> process_cpus = [] {
      std::vector<int> cpus;
      cpu_set_t allowed;
      CPU_ZERO(&allowed);
      if (sched_getaffinity(0, sizeof allowed, &allowed) == 0)
        for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
          if (CPU_ISSET(cpu, &allowed)) cpus.push_back(cpu);
      return cpus;
    }();
    if (process_cpus.size() < 2 || pthread_getaffinity_np(pthread_self(), sizeof saved_, &saved_) != 0) return;
    const int cpu = process_cpus[static_cast<std::size_t>(nth) % process_cpus.size()];
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0) cpu_ = cpu;
  }
  ~cpu_pin() {
    if (cpu_ >= 0) pthread_setaffinity_np(pthread_self(), sizeof saved_, &saved_);
  }
  cpu_pin(const cpu_pin&) = delete;
  cpu_pin& operator=(const cpu_pin&) = delete;

  int cpu() const noexcept { return cpu_; }

 private:
  cpu_set_t saved_{};
  int cpu_ = -1;
};

}  // namespace dmoe_bench
