// The CPU features a kernel may ask for at run time, whatever the compiler flags were.
#pragma once

#include <dmoe/core/config.hpp>

DMOE_BEGIN_NAMESPACE
namespace detail {

// Whether this CPU runs AVX2 with FMA, and AVX-512 (F, VL, DQ) — whatever the compiler flags were.
DMOE_LAZY inline bool cpu_has_avx2_fma() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}
DMOE_LAZY inline bool cpu_has_avx512() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq") && cpu_has_avx2_fma();
  return has;
#else
  return false;
#endif
}

}  // namespace detail
DMOE_END_NAMESPACE
