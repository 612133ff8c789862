// OpenBLAS as the GEMM peak for dmoe_bench_ops: its own kernel choice, the best kernel this CPU runs (forced when
// OpenBLAS's own choice is older), and its kernel facts.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <cblas.h>

namespace dmoe_bench {

// OpenBLAS picks its kernel when the library loads (before main), reading OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE;
// the environment may force the AVX2 "Haswell" kernel, which halves it on this AVX-512 CPU. So when either is set,
// drop both and start this program again, so that OpenBLAS loads in a process that never saw them.
// Returns whether this process is such a restart (DMOE_BENCH_OPS_REEXEC marks it and stops a loop).
inline bool reexec_without_openblas_overrides(char** argv) {
  const bool restarted = std::getenv("DMOE_BENCH_OPS_REEXEC") != nullptr;
  if (std::getenv("DMOE_BENCH_OPS_FORCED_CORETYPE")) return restarted;  // the best core type, set by us
  if (!std::getenv("OPENBLAS_CORETYPE") && !std::getenv("OPENBLAS_L2_SIZE")) return restarted;
  if (restarted) {
    std::fprintf(stderr, "dmoe_bench_ops: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE still set after a restart; going on\n");
    return restarted;
  }
  // Kept under other names, for a PyTorch peer run the way this environment would run it.
  for (const char* name : {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"})
    if (const char* value = std::getenv(name)) setenv((std::string("DMOE_BENCH_OPS_ORIGINAL_") + name).c_str(), value, 1);
  unsetenv("OPENBLAS_CORETYPE");
  unsetenv("OPENBLAS_L2_SIZE");
  setenv("DMOE_BENCH_OPS_REEXEC", "1", 1);
  std::fflush(nullptr);
  execv("/proc/self/exe", argv);
  std::fprintf(stderr, "dmoe_bench_ops: re-exec without OPENBLAS_CORETYPE failed (%s); going on with them unset\n",
               std::strerror(errno));
  return false;
}

// The OpenBLAS overrides the environment had before the restart, as NAME=VALUE (empty when it had none).
inline std::vector<std::string> original_openblas_overrides() {
  std::vector<std::string> out;
  for (const char* name : {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"})
    if (const char* value = std::getenv((std::string("DMOE_BENCH_OPS_ORIGINAL_") + name).c_str()))
      out.push_back(std::string(name) + "=" + value);
  return out;
}

// How new an OpenBLAS core type's SGEMM kernel is: 0 SSE, 1 AVX, 2 AVX2 + FMA, 3 AVX-512; -1 unknown.
inline int openblas_core_rank(std::string_view name) {
  for (std::string_view n : {"SkylakeX", "Cooperlake", "SapphireRapids"})
    if (name == n) return 3;
  for (std::string_view n : {"Haswell", "Zen"})
    if (name == n) return 2;
  for (std::string_view n : {"Sandybridge", "Bulldozer", "Piledriver", "Steamroller", "Excavator"})
    if (name == n) return 1;
  for (std::string_view n : {"Prescott", "Katmai", "Coppermine", "Northwood", "Banias", "Atom", "Core2", "Penryn",
                             "Dunnington", "Nehalem", "Opteron", "Opteron(SSE3)", "Barcelona", "Bobcat", "Nano"})
    if (name == n) return 0;
  return -1;
}

// The newest OpenBLAS core type whose instructions this CPU runs ("" when it runs none we force): SkylakeX needs
// AVX-512 F/VL/BW/DQ/CD, Haswell AVX2 + FMA, Sandybridge AVX.
inline std::string best_openblas_core_type() {
#if defined(__x86_64__) || defined(__i386__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  if (__builtin_cpu_supports("avx")) return "Sandybridge";
#endif
  return "";
}

// OpenBLAS's own kernel choice on this CPU, the best this CPU runs, and the one in use in this process.
struct openblas_choice {
  std::string own;
  std::string best;
  bool forced = false;  // OPENBLAS_CORETYPE=best was set because `own` is older than `best`
  bool restarted = false;
};

// OpenBLAS reads OPENBLAS_CORETYPE when it loads (before main), so a change of kernel takes a restart. After
// reexec_without_openblas_overrides (OpenBLAS on its own choice), when that choice is older than the best core type
// this CPU runs (Debian's OpenBLAS may not know the CPU and fall back to Prescott), start again with
// OPENBLAS_CORETYPE=best: the GEMM baseline and the PyTorch peers (which inherit the environment) run at their best.
inline openblas_choice force_best_openblas_core(char** argv, bool restarted) {
  openblas_choice choice;
  choice.restarted = restarted;
  if (const char* forced = std::getenv("DMOE_BENCH_OPS_FORCED_CORETYPE")) {
    const char* own = std::getenv("DMOE_BENCH_OPS_OWN_CORENAME");
    choice.own = own ? own : "";
    choice.best = forced;
    choice.forced = true;
    return choice;
  }
  if (const char* name = openblas_get_corename()) choice.own = name;
  choice.best = best_openblas_core_type();
  if (choice.best.empty() || openblas_core_rank(choice.own) >= openblas_core_rank(choice.best)) {
    if (openblas_core_rank(choice.own) > openblas_core_rank(choice.best)) choice.best = choice.own;
    return choice;
  }
  setenv("OPENBLAS_CORETYPE", choice.best.c_str(), 1);
  setenv("DMOE_BENCH_OPS_FORCED_CORETYPE", choice.best.c_str(), 1);
  setenv("DMOE_BENCH_OPS_OWN_CORENAME", choice.own.c_str(), 1);
  setenv("DMOE_BENCH_OPS_REEXEC", "1", 1);
  std::fflush(nullptr);
  execv("/proc/self/exe", argv);
  std::fprintf(stderr, "dmoe_bench_ops: re-exec with OPENBLAS_CORETYPE=%s failed (%s); going on with %s\n",
               choice.best.c_str(), std::strerror(errno), choice.own.c_str());
  unsetenv("OPENBLAS_CORETYPE");
  unsetenv("DMOE_BENCH_OPS_FORCED_CORETYPE");
  choice.best = choice.own;
  return choice;
}

struct openblas_facts {
  std::string corename;
  std::string config;
  int threads = 0;
};

inline openblas_facts openblas_info() {
  openblas_facts facts;
  if (const char* name = openblas_get_corename()) facts.corename = name;
  if (const char* config = openblas_get_config()) facts.config = config;
  facts.threads = openblas_get_num_threads();
  return facts;
}

// c[m,n] = op(a) * op(b) + beta * c, row-major, leading dimensions of the unstrided matrices.
inline void openblas_sgemm(bool trans_a, bool trans_b, int m, int n, int k, const float* a, const float* b, float beta,
                           float* c) {
  const int lda = trans_a ? m : k;
  const int ldb = trans_b ? k : n;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n, k, 1.0f,
              a, lda, b, ldb, beta, c, n);
}

}  // namespace dmoe_bench
