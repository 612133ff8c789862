// The CPU GEMM's packed kernels (BLIS-style): operands copied into cache-sized panels, a register tile of C
// updated by broadcast FMAs. One kernel for AVX-512, one for AVX2+FMA, chosen at run time; Eigen elsewhere.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/cpu_features.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string_view>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace ops {

// Which code multiplies matrices on the CPU: Eigen's GEMM, or our packed kernels for AVX2+FMA or AVX-512.
enum class gemm_kernel { eigen, avx2, avx512 };

DMOE_LAZY inline std::string_view to_string(gemm_kernel kernel) noexcept {
  switch (kernel) {
    case gemm_kernel::eigen: return "eigen";
    case gemm_kernel::avx2: return "avx2";
    case gemm_kernel::avx512: return "avx512";
  }
  return "?";
}

// Whether this CPU can run the kernel.
DMOE_LAZY inline bool gemm_kernel_supported(gemm_kernel kernel) noexcept {
  switch (kernel) {
    case gemm_kernel::eigen: return true;
    case gemm_kernel::avx2: return dmoe::detail::cpu_has_avx2_fma();
    case gemm_kernel::avx512: return dmoe::detail::cpu_has_avx512();
  }
  return false;
}

namespace detail {

// The fastest kernel this CPU runs, unless DMOE_GEMM_KERNEL names one (eigen, avx2, avx512).
DMOE_LAZY inline gemm_kernel default_gemm_kernel() {
  if (const char* env = std::getenv("DMOE_GEMM_KERNEL")) {
    for (auto k : {gemm_kernel::eigen, gemm_kernel::avx2, gemm_kernel::avx512})
      if (to_string(k) == env) {
        if (!gemm_kernel_supported(k))
          throw invalid_argument_error(dmoe::format("DMOE_GEMM_KERNEL={}: this CPU cannot run it", env));
        return k;
      }
    throw invalid_argument_error(dmoe::format("DMOE_GEMM_KERNEL={}: expected eigen, avx2 or avx512", env));
  }
  if (gemm_kernel_supported(gemm_kernel::avx512)) return gemm_kernel::avx512;
  if (gemm_kernel_supported(gemm_kernel::avx2)) return gemm_kernel::avx2;
  return gemm_kernel::eigen;
}

DMOE_LAZY inline std::atomic<gemm_kernel>& gemm_kernel_setting() {
  static std::atomic<gemm_kernel> setting{default_gemm_kernel()};
  return setting;
}

}  // namespace detail

// The kernel ops::gemm uses now, and a way to pick another (for tests and benchmarks; process-wide).
DMOE_LAZY inline gemm_kernel current_gemm_kernel() {
  return detail::gemm_kernel_setting().load(std::memory_order_relaxed);
}
DMOE_LAZY inline void set_gemm_kernel(gemm_kernel kernel) {
  if (!gemm_kernel_supported(kernel))
    throw invalid_argument_error(dmoe::format("set_gemm_kernel: this CPU cannot run the {} kernel", to_string(kernel)));
  detail::gemm_kernel_setting().store(kernel, std::memory_order_relaxed);
}

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/core/simd.hpp>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace detail {

// One GEMM (or a block of one) on raw row-major storage: c = alpha * op(a) * op(b) + beta * c, where
// op(a)[i][p] is a[i * lda + p] (or a[p * lda + i] when trans_a), op(b)[p][j] is b[p * ldb + j] (or
// b[j * ldb + p] when trans_b). With beta == 0, c is only written.
struct gemm_problem {
  std::int64_t m = 0, n = 0, k = 0;
  const float* a = nullptr;
  std::int64_t lda = 0;
  bool trans_a = false;
  const float* b = nullptr;
  std::int64_t ldb = 0;
  bool trans_b = false;
  float* c = nullptr;
  std::int64_t ldc = 0;
  float alpha = 1.0f, beta = 0.0f;

  // The block of rows [r0, r1) and columns [c0, c1) of c.
  gemm_problem block(std::int64_t r0, std::int64_t r1, std::int64_t c0, std::int64_t c1) const noexcept {
    gemm_problem p = *this;
    p.m = r1 - r0;
    p.n = c1 - c0;
    p.a = trans_a ? a + r0 : a + r0 * lda;
    p.b = trans_b ? b + c0 * ldb : b + c0;
    p.c = c + r0 * ldc + c0;
    return p;
  }
};

// Cache blocking: an mr x kc panel of A stays in L1 while the kernel walks kc x nc of B in L2; mc x kc of A
// is packed once per kc step and kept in L3.
struct gemm_blocking {
  int mr, nr;
  std::int64_t kc, mc, nc;
};

// A per-thread, 64-byte-aligned scratch buffer that only grows.
class pack_buffer {
 public:
  float* get(std::size_t floats) {
    if (floats > size_) {
      data_.reset(static_cast<float*>(::operator new[](floats * sizeof(float), std::align_val_t{64})));
      size_ = floats;
    }
    return data_.get();
  }

 private:
  struct release {
    void operator()(float* p) const noexcept { ::operator delete[](p, std::align_val_t{64}); }
  };
  std::unique_ptr<float, release> data_;
  std::size_t size_ = 0;
};

// Packs op(a)[i0 .. i0 + mc, p0 .. p0 + kc] into panels of mr rows: panel q holds, for each p, the mr values
// op(a)[i0 + q * mr + i][p0 + p] side by side. Rows past mc are zero.
template <int MR>
void pack_a(const gemm_problem& g, std::int64_t i0, std::int64_t mc, std::int64_t p0, std::int64_t kc, float* out) {
  for (std::int64_t q = 0; q < mc; q += MR) {
    const int rows = static_cast<int>(std::min<std::int64_t>(MR, mc - q));
    float* dst = out + q * kc;
    if (g.trans_a) {
      const float* src = g.a + (p0 * g.lda) + i0 + q;
      for (std::int64_t p = 0; p < kc; ++p, src += g.lda, dst += MR) {
        int i = 0;
        for (; i < rows; ++i) dst[i] = src[i];
        for (; i < MR; ++i) dst[i] = 0.0f;
      }
    } else {
      for (int i = 0; i < rows; ++i) {
        const float* src = g.a + (i0 + q + i) * g.lda + p0;
        for (std::int64_t p = 0; p < kc; ++p) dst[p * MR + i] = src[p];
      }
      for (int i = rows; i < MR; ++i)
        for (std::int64_t p = 0; p < kc; ++p) dst[p * MR + i] = 0.0f;
    }
  }
}

#if DMOE_X86
// An 8 x 8 transpose: rows of src (stride lds) become rows of dst (stride ldd).
__attribute__((target("avx2,fma"))) inline void transpose_8x8(const float* src, std::int64_t lds, float* dst,
                                                              std::int64_t ldd) {
  __m256 r0 = _mm256_loadu_ps(src + 0 * lds), r1 = _mm256_loadu_ps(src + 1 * lds);
  __m256 r2 = _mm256_loadu_ps(src + 2 * lds), r3 = _mm256_loadu_ps(src + 3 * lds);
  __m256 r4 = _mm256_loadu_ps(src + 4 * lds), r5 = _mm256_loadu_ps(src + 5 * lds);
  __m256 r6 = _mm256_loadu_ps(src + 6 * lds), r7 = _mm256_loadu_ps(src + 7 * lds);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  r0 = _mm256_shuffle_ps(t0, t2, 0x44);
  r1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  r2 = _mm256_shuffle_ps(t1, t3, 0x44);
  r3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  r4 = _mm256_shuffle_ps(t4, t6, 0x44);
  r5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  r6 = _mm256_shuffle_ps(t5, t7, 0x44);
  r7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * ldd, _mm256_permute2f128_ps(r0, r4, 0x20));
  _mm256_storeu_ps(dst + 1 * ldd, _mm256_permute2f128_ps(r1, r5, 0x20));
  _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(r2, r6, 0x20));
  _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(r3, r7, 0x20));
  _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(r0, r4, 0x31));
  _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(r1, r5, 0x31));
  _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(r2, r6, 0x31));
  _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(r3, r7, 0x31));
}
#endif

// Packs op(b)[p0 .. p0 + kc, j0 .. j0 + nc] into panels of nr columns: panel q holds, for each p, the nr values
// op(b)[p0 + p][j0 + q * nr + j] side by side. Columns past nc are zero. Only called by the x86 kernels.
template <int NR>
void pack_b(const gemm_problem& g, std::int64_t p0, std::int64_t kc, std::int64_t j0, std::int64_t nc, float* out) {
  static_assert(NR % 8 == 0);
  for (std::int64_t q = 0; q < nc; q += NR) {
    const int cols = static_cast<int>(std::min<std::int64_t>(NR, nc - q));
    float* dst = out + q * kc;
    if (!g.trans_b) {
      const float* src = g.b + p0 * g.ldb + j0 + q;
      for (std::int64_t p = 0; p < kc; ++p, src += g.ldb, dst += NR) {
        std::memcpy(dst, src, sizeof(float) * static_cast<std::size_t>(cols));
        if (cols < NR) std::memset(dst + cols, 0, sizeof(float) * static_cast<std::size_t>(NR - cols));
      }
      continue;
    }
    // op(b)[p][j] = b[j * ldb + p]: rows of b become columns of the panel, 8 x 8 at a time.
    const float* src = g.b + (j0 + q) * g.ldb + p0;
    std::int64_t p = 0;
#if DMOE_X86
    if (cols == NR)
      for (; p + 8 <= kc; p += 8)
        for (int j = 0; j < NR; j += 8) transpose_8x8(src + j * g.ldb + p, g.ldb, dst + p * NR + j, NR);
#endif
    for (; p < kc; ++p) {
      int j = 0;
      for (; j < cols; ++j) dst[p * NR + j] = src[j * g.ldb + p];
      for (; j < NR; ++j) dst[p * NR + j] = 0.0f;
    }
  }
}

#if DMOE_X86

// The register tiles. Each computes acc = sum over p of a_panel[p][i] * b_panel[p][j] for an MR x NR tile and
// stores c[i][j] = alpha * acc + beta * c[i][j] for i < rows, j < cols (c is not read when beta == 0).

// AVX-512: 12 x 32, 24 zmm accumulators; per step two loads of b and twelve broadcasts of a.
#define DMOE_GEMM_ROWS12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) inline void kernel_avx512_12x32(
    std::int64_t kc, const float* __restrict a, const float* __restrict b, float* c, std::int64_t ldc, int rows,
    int cols, float alpha, float beta) {
#define DMOE_ZERO(i) __m512 c##i##_0 = _mm512_setzero_ps(), c##i##_1 = _mm512_setzero_ps();
  DMOE_GEMM_ROWS12(DMOE_ZERO)
#undef DMOE_ZERO
  for (int i = 0; i < rows; ++i) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
  for (std::int64_t p = 0; p < kc; ++p, a += 12, b += 32) {
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#define DMOE_FMA(i)                                 \
  {                                                 \
    const __m512 ai = _mm512_set1_ps(a[i]);         \
    c##i##_0 = _mm512_fmadd_ps(ai, b0, c##i##_0);   \
    c##i##_1 = _mm512_fmadd_ps(ai, b1, c##i##_1);   \
  }
    DMOE_GEMM_ROWS12(DMOE_FMA)
#undef DMOE_FMA
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  const __mmask16 m0 = static_cast<__mmask16>(cols >= 16 ? 0xFFFF : (1u << cols) - 1u);
  const __mmask16 m1 = static_cast<__mmask16>(cols >= 32 ? 0xFFFF : cols <= 16 ? 0u : (1u << (cols - 16)) - 1u);
#define DMOE_STORE(i)                                                                                   \
  if (i < rows) {                                                                                       \
    float* ci = c + i * ldc;                                                                            \
    __m512 v0 = _mm512_mul_ps(c##i##_0, va), v1 = _mm512_mul_ps(c##i##_1, va);                          \
    if (beta != 0.0f) {                                                                                 \
      v0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, ci), vb, v0);                                      \
      v1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, ci + 16), vb, v1);                                 \
    }                                                                                                   \
    _mm512_mask_storeu_ps(ci, m0, v0);                                                                  \
    _mm512_mask_storeu_ps(ci + 16, m1, v1);                                                             \
  }
  DMOE_GEMM_ROWS12(DMOE_STORE)
#undef DMOE_STORE
}
#undef DMOE_GEMM_ROWS12

// AVX2: 6 x 16, 12 ymm accumulators; per step two loads of b and six broadcasts of a.
#define DMOE_GEMM_ROWS6(X) X(0) X(1) X(2) X(3) X(4) X(5)
__attribute__((target("avx2,fma"))) inline void kernel_avx2_6x16(std::int64_t kc, const float* __restrict a,
                                                                 const float* __restrict b, float* c,
                                                                 std::int64_t ldc, int rows, int cols, float alpha,
                                                                 float beta) {
#define DMOE_ZERO(i) __m256 c##i##_0 = _mm256_setzero_ps(), c##i##_1 = _mm256_setzero_ps();
  DMOE_GEMM_ROWS6(DMOE_ZERO)
#undef DMOE_ZERO
  for (std::int64_t p = 0; p < kc; ++p, a += 6, b += 16) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#define DMOE_FMA(i)                                 \
  {                                                 \
    const __m256 ai = _mm256_broadcast_ss(a + i);   \
    c##i##_0 = _mm256_fmadd_ps(ai, b0, c##i##_0);   \
    c##i##_1 = _mm256_fmadd_ps(ai, b1, c##i##_1);   \
  }
    DMOE_GEMM_ROWS6(DMOE_FMA)
#undef DMOE_FMA
  }
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  if (cols == 16) {
#define DMOE_STORE(i)                                                                          \
  if (i < rows) {                                                                              \
    float* ci = c + i * ldc;                                                                   \
    __m256 v0 = _mm256_mul_ps(c##i##_0, va), v1 = _mm256_mul_ps(c##i##_1, va);                 \
    if (beta != 0.0f) {                                                                        \
      v0 = _mm256_fmadd_ps(_mm256_loadu_ps(ci), vb, v0);                                       \
      v1 = _mm256_fmadd_ps(_mm256_loadu_ps(ci + 8), vb, v1);                                   \
    }                                                                                          \
    _mm256_storeu_ps(ci, v0);                                                                  \
    _mm256_storeu_ps(ci + 8, v1);                                                              \
  }
    DMOE_GEMM_ROWS6(DMOE_STORE)
#undef DMOE_STORE
    return;
  }
  // A partial tile goes through a buffer: AVX2 has no cheap masked store for floats at any width.
  alignas(32) float tile[6][16];
#define DMOE_SPILL(i)                                            \
  _mm256_store_ps(tile[i], _mm256_mul_ps(c##i##_0, va));         \
  _mm256_store_ps(tile[i] + 8, _mm256_mul_ps(c##i##_1, va));
  DMOE_GEMM_ROWS6(DMOE_SPILL)
#undef DMOE_SPILL
  for (int i = 0; i < rows; ++i) {
    float* ci = c + i * ldc;
    for (int j = 0; j < cols; ++j) ci[j] = beta != 0.0f ? tile[i][j] + beta * ci[j] : tile[i][j];
  }
}
#undef DMOE_GEMM_ROWS6

// The blocked loops around one kernel, on the calling thread.
template <int MR, int NR, auto Kernel>
void gemm_packed(const gemm_problem& g, const gemm_blocking& blocking) {
  static thread_local pack_buffer a_buffer, b_buffer;
  const std::int64_t kc_max = std::min(blocking.kc, g.k);
  const std::int64_t mc_max = std::min(blocking.mc, (g.m + MR - 1) / MR * MR);
  const std::int64_t nc_max = std::min(blocking.nc, (g.n + NR - 1) / NR * NR);
  float* ap = a_buffer.get(static_cast<std::size_t>(kc_max * mc_max));
  float* bp = b_buffer.get(static_cast<std::size_t>(kc_max * nc_max));
  for (std::int64_t ic = 0; ic < g.m; ic += blocking.mc) {
    const std::int64_t mc = std::min(blocking.mc, g.m - ic);
    for (std::int64_t pc = 0; pc < g.k; pc += blocking.kc) {
      const std::int64_t kc = std::min(blocking.kc, g.k - pc);
      const float beta = pc == 0 ? g.beta : 1.0f;
      pack_a<MR>(g, ic, mc, pc, kc, ap);
      for (std::int64_t jc = 0; jc < g.n; jc += blocking.nc) {
        const std::int64_t nc = std::min(blocking.nc, g.n - jc);
        pack_b<NR>(g, pc, kc, jc, nc, bp);
        for (std::int64_t ir = 0; ir < mc; ir += MR) {
          const int rows = static_cast<int>(std::min<std::int64_t>(MR, mc - ir));
          float* c_row = g.c + (ic + ir) * g.ldc + jc;
          for (std::int64_t jr = 0; jr < nc; jr += NR)
            Kernel(kc, ap + ir * kc, bp + jr * kc, c_row + jr, g.ldc, rows,
                   static_cast<int>(std::min<std::int64_t>(NR, nc - jr)), g.alpha, beta);
        }
      }
    }
  }
}

inline constexpr gemm_blocking avx512_blocking{12, 32, 384, 1536, 320};
inline constexpr gemm_blocking avx2_blocking{6, 16, 256, 1536, 256};

#endif  // DMOE_X86

// Runs one block of a GEMM with a packed kernel (not eigen) on the calling thread.
inline void gemm_packed_block(gemm_kernel kernel, const gemm_problem& g) {
#if DMOE_X86
  if (kernel == gemm_kernel::avx512) return gemm_packed<12, 32, kernel_avx512_12x32>(g, avx512_blocking);
  if (kernel == gemm_kernel::avx2) return gemm_packed<6, 16, kernel_avx2_6x16>(g, avx2_blocking);
#endif
  throw invalid_argument_error(dmoe::format("gemm: the {} kernel has no packed implementation", to_string(kernel)));
}

}  // namespace detail
}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
