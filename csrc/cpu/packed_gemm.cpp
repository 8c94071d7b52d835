// cpu/packed_gemm.cpp: see packed_gemm.h. The kernels carry their own target attribute, so this
// file builds with the baseline flags and they run only where the CPU has AVX2 and FMA.
#include "packed_gemm.h"

#include <algorithm>

#include "blas.h"
#include "cell.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FUSEDRNN_PACKED_X86 1
#endif

namespace fusedrnn::cpu {

namespace {
constexpr int64_t kNr = 16;  // columns per panel
// Below this many multiply-adds a product runs on the calling thread (a fork-join costs 1-2 us).
constexpr int64_t kSplitMacs = 1 << 16;

// The threads to share `panels` panels over: 1 inside a team, on a lane (WholeCalls) or for a
// small product. Every panel is computed the same way whichever thread runs it, so the results do
// not depend on the thread count.
int team_size(int64_t panels, int64_t macs) {
#ifdef _OPENMP
  if (whole_calls() || omp_in_parallel() || macs < kSplitMacs) return 1;
  return static_cast<int>(std::min<int64_t>(blas_num_threads(), panels));
#else
  (void)panels, (void)macs;
  return 1;
#endif
}

// f(first_panel, end_panel) over contiguous shares of the panels, one per thread of the team.
template <typename F>
void over_panels(int64_t panels, int64_t macs, F&& f) {
  const int nt = team_size(panels, macs);
  if (nt <= 1) return f(int64_t(0), panels);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
  {
    const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
    f(panels * t / n, panels * (t + 1) / n);
  }
#endif
}
}  // namespace

int64_t packed_size(int64_t N, int64_t K) { return (N + kNr - 1) / kNr * kNr * K; }

void pack_b(bool trans, const float* B, int64_t ldb, int64_t N, int64_t K, float* packed) {
  const int64_t panels = (N + kNr - 1) / kNr;
  over_panels(panels, N * K, [&](int64_t first, int64_t end) {
  for (int64_t p = first; p < end; ++p) {
    float* dst = packed + p * K * kNr;
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t c = 0; c < kNr; ++c) {
        const int64_t n = p * kNr + c;
        dst[k * kNr + c] = n >= N ? 0.0f : trans ? B[n * ldb + k] : B[k * ldb + n];
      }
    }
  }
  });
}

#ifdef FUSEDRNN_PACKED_X86

namespace {

#define FUSEDRNN_TARGET __attribute__((target("avx2,fma")))

// One row of a panel's result: `cols` of its 16 columns stored, or added to C with accumulate.
FUSEDRNN_TARGET inline void store_row(float* c, __m256 lo, __m256 hi, int64_t cols,
                                      bool accumulate) {
  if (cols == kNr) {
    if (accumulate) {
      lo = _mm256_add_ps(lo, _mm256_loadu_ps(c));
      hi = _mm256_add_ps(hi, _mm256_loadu_ps(c + 8));
    }
    _mm256_storeu_ps(c, lo);
    _mm256_storeu_ps(c + 8, hi);
  } else {
    alignas(32) float t[kNr];
    _mm256_store_ps(t, lo);
    _mm256_store_ps(t + 8, hi);
    for (int64_t j = 0; j < cols; ++j) c[j] = accumulate ? c[j] + t[j] : t[j];
  }
}

// Rows [0, MR) x one panel: C = A op(B) (+ C), `cols` of the panel's 16 columns stored.
template <int MR>
FUSEDRNN_TARGET inline void panel(const float* A, int64_t lda, const float* bp, int64_t K, float* C,
                                  int64_t ldc, int64_t cols, bool accumulate) {
  __m256 lo[MR], hi[MR];
  for (int r = 0; r < MR; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(bp + k * kNr), b1 = _mm256_loadu_ps(bp + k * kNr + 8);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
      lo[r] = _mm256_fmadd_ps(a, b0, lo[r]);
      hi[r] = _mm256_fmadd_ps(a, b1, hi[r]);
    }
  }
  for (int r = 0; r < MR; ++r) store_row(C + r * ldc, lo[r], hi[r], cols, accumulate);
}

// The 6-row case with named accumulators (12 ymm + 2 for B + 1 broadcast): arrays of __m256 in
// loops were kept in memory by the compiler and ran at half the speed.
FUSEDRNN_TARGET inline void panel6(const float* A, int64_t lda, const float* bp, int64_t K,
                                   float* C, int64_t ldc, bool accumulate) {
  __m256 a0l = _mm256_setzero_ps(), a0h = a0l, a1l = a0l, a1h = a0l, a2l = a0l, a2h = a0l;
  __m256 a3l = a0l, a3h = a0l, a4l = a0l, a4h = a0l, a5l = a0l, a5h = a0l;
  const float *r0 = A, *r1 = A + lda, *r2 = A + 2 * lda, *r3 = A + 3 * lda, *r4 = A + 4 * lda,
              *r5 = A + 5 * lda;
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(bp + k * kNr), b1 = _mm256_loadu_ps(bp + k * kNr + 8);
    __m256 a = _mm256_broadcast_ss(r0 + k);
    a0l = _mm256_fmadd_ps(a, b0, a0l);
    a0h = _mm256_fmadd_ps(a, b1, a0h);
    a = _mm256_broadcast_ss(r1 + k);
    a1l = _mm256_fmadd_ps(a, b0, a1l);
    a1h = _mm256_fmadd_ps(a, b1, a1h);
    a = _mm256_broadcast_ss(r2 + k);
    a2l = _mm256_fmadd_ps(a, b0, a2l);
    a2h = _mm256_fmadd_ps(a, b1, a2h);
    a = _mm256_broadcast_ss(r3 + k);
    a3l = _mm256_fmadd_ps(a, b0, a3l);
    a3h = _mm256_fmadd_ps(a, b1, a3h);
    a = _mm256_broadcast_ss(r4 + k);
    a4l = _mm256_fmadd_ps(a, b0, a4l);
    a4h = _mm256_fmadd_ps(a, b1, a4h);
    a = _mm256_broadcast_ss(r5 + k);
    a5l = _mm256_fmadd_ps(a, b0, a5l);
    a5h = _mm256_fmadd_ps(a, b1, a5h);
  }
  const __m256 out[12] = {a0l, a0h, a1l, a1h, a2l, a2h, a3l, a3h, a4l, a4h, a5l, a5h};
  for (int r = 0; r < 6; ++r) store_row(C + r * ldc, out[2 * r], out[2 * r + 1], kNr, accumulate);
}

FUSEDRNN_TARGET void gemm_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                               const float* packed, bool accumulate, float* C, int64_t ldc) {
  const int64_t panels = (N + kNr - 1) / kNr;
  for (int64_t p = 0; p < panels; ++p) {
    const float* bp = packed + p * K * kNr;
    const int64_t cols = N - p * kNr < kNr ? N - p * kNr : kNr;
    float* Cp = C + p * kNr;
    int64_t i = 0;
    if (cols == kNr)
      for (; i + 6 <= M; i += 6) panel6(A + i * lda, lda, bp, K, Cp + i * ldc, ldc, accumulate);
    for (; i + 6 <= M; i += 6) panel<6>(A + i * lda, lda, bp, K, Cp + i * ldc, ldc, cols, accumulate);
    const float* Ai = A + i * lda;
    float* Ci = Cp + i * ldc;
    switch (M - i) {
      case 5: panel<5>(Ai, lda, bp, K, Ci, ldc, cols, accumulate); break;
      case 4: panel<4>(Ai, lda, bp, K, Ci, ldc, cols, accumulate); break;
      case 3: panel<3>(Ai, lda, bp, K, Ci, ldc, cols, accumulate); break;
      case 2: panel<2>(Ai, lda, bp, K, Ci, ldc, cols, accumulate); break;
      case 1: panel<1>(Ai, lda, bp, K, Ci, ldc, cols, accumulate); break;
      default: break;
    }
  }
}

}  // namespace

bool packed_gemm_available() { return use_avx2(); }

void gemm_packed(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* packed,
                 bool accumulate, float* C, int64_t ldc) {
  over_panels((N + kNr - 1) / kNr, M * N * K, [&](int64_t first, int64_t end) {
    const int64_t n = std::min(N, end * kNr) - first * kNr;
    if (n > 0)
      gemm_avx2(M, n, K, A, lda, packed + first * kNr * K, accumulate, C + first * kNr, ldc);
  });
}

#else  // no x86: never available, and a plain loop keeps the symbol defined

bool packed_gemm_available() { return false; }

void gemm_packed(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* packed,
                 bool accumulate, float* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t n = 0; n < N; ++n) {
      float s = accumulate ? C[i * ldc + n] : 0.0f;
      for (int64_t k = 0; k < K; ++k) s += A[i * lda + k] * packed[(n / kNr * K + k) * kNr + n % kNr];
      C[i * ldc + n] = s;
    }
}

#endif

}  // namespace fusedrnn::cpu
