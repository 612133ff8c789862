// What every dmoe benchmark prints first: the machine, kernel, compiler and build it ran on.
#pragma once

#include <sys/utsname.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <thread>

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

}  // namespace dmoe_bench
