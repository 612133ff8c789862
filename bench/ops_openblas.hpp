// OpenBLAS as the GEMM peak for dmoe_bench_ops: a clean start without the core-type overrides, and its kernel facts.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cblas.h>

namespace dmoe_bench {

// OpenBLAS picks its kernel when the library loads (before main), reading OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE;
// the environment may force the AVX2 "Haswell" kernel, which halves it on this AVX-512 CPU. So when either is set,
// drop both and start this program again, so that OpenBLAS loads in a process that never saw them.
// Returns whether this process is such a restart (DMOE_BENCH_OPS_REEXEC marks it and stops a loop).
inline bool reexec_without_openblas_overrides(char** argv) {
  const bool restarted = std::getenv("DMOE_BENCH_OPS_REEXEC") != nullptr;
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
