// x86 intrinsics for the kernels that use them, and the CPU features a kernel may ask for at run time.
#pragma once

#include <dmoe/core/config.hpp>

#if defined(__x86_64__) || defined(__i386__)
#define DMOE_X86 1
// g++ 12 reports its own AVX-512 intrinsics as reading uninitialised values when inlined at -O2 (GCC bug
// 105593); the region below covers those header lines only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#else
#define DMOE_X86 0
#endif

DMOE_BEGIN_NAMESPACE
namespace detail {

// Whether this CPU runs AVX2 with FMA, and AVX-512 (F, VL, DQ) — whatever the compiler flags were.
inline bool cpu_has_avx2_fma() noexcept {
#if DMOE_X86
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}
inline bool cpu_has_avx512() noexcept {
#if DMOE_X86
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq") && cpu_has_avx2_fma();
  return has;
#else
  return false;
#endif
}

}  // namespace detail
DMOE_END_NAMESPACE
