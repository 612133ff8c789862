// x86 intrinsics for the kernels that use them (immintrin.h, included once here), and the CPU features.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/cpu_features.hpp>

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
