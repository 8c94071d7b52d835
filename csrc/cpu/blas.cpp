// cpu/blas.cpp: binds the GEMM wrapper to OpenBLAS's CBLAS interface.
//
// The scipy-openblas32 wheel (the OpenBLAS NumPy and SciPy ship) prefixes every symbol with
// "scipy_"; FUSEDRNN_BLAS_PREFIX names that prefix (empty for a system OpenBLAS).
//
// Threads: OpenBLAS runs single-threaded (pinned on first use); a GEMM big enough to split is cut
// into one column (or row) block per OpenMP thread, each a single-threaded BLAS call. fusedrnn thus
// has no thread pool of OpenBLAS's: its threads are the process's OpenMP team. In a process with
// torch (whose CPU ops run on libgomp, the same libgomp.so.1 this module binds to) that is torch's
// own pool, so the two never fight over the cores: OpenBLAS's pool kept spinning after fusedrnn's
// calls and libgomp's after torch's, and each time the other ran with one core short (+8 ms, a
// quarter, on a W2 training step through fusedrnn.torch; bench/torch_adapter.py).
#include "blas.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#define FUSEDRNN_CAT2(a, b) a##b
#define FUSEDRNN_CAT(a, b) FUSEDRNN_CAT2(a, b)
#ifndef FUSEDRNN_BLAS_PREFIX
#define FUSEDRNN_BLAS_PREFIX
#endif
#define FUSEDRNN_BLAS(name) FUSEDRNN_CAT(FUSEDRNN_BLAS_PREFIX, name)

namespace fusedrnn::cpu {

namespace {

template <typename T>
void scale(int64_t M, int64_t N, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    T* row = C + i * ldc;
    if (beta == T(0)) {
      std::memset(row, 0, sizeof(T) * N);
    } else {
      for (int64_t j = 0; j < N; ++j) row[j] *= beta;
    }
  }
}

std::atomic<int> g_threads{0};  // set_blas_num_threads; 0: follow omp_get_max_threads()
thread_local bool t_whole_calls = false;  // WholeCalls

void pin_openblas() {
  static const bool pinned = (FUSEDRNN_BLAS(openblas_set_num_threads)(1), true);
  (void)pinned;
}

// Below this many multiply-adds a GEMM is one call on the calling thread (a fork-join costs about
// 1-2 us); above, it is cut into 2 blocks, or more (a power of two, at most kMaxBlocks) while each
// keeps at least kMinBlock rows or columns and kBlockMacs multiply-adds (a call per block: smaller
// ones lose more to packing than they gain; W4's per-step products lost 10 % in 8 blocks of 96).
constexpr int64_t kSplitMacs = 1 << 16;
constexpr int64_t kMinBlock = 64;
constexpr int64_t kBlockMacs = int64_t(1) << 21;
constexpr int64_t kMaxBlocks = 8;

template <typename T>
void gemm_serial(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                 const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

template <>
void gemm_serial<float>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                        const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                        float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) return scale(M, N, beta, C, ldc);
  if (M == 1) {  // one row (batch 1): a GEMV, which OpenBLAS runs without packing B
    FUSEDRNN_BLAS(cblas_sgemv)(CblasRowMajor, trans_b ? CblasNoTrans : CblasTrans,
                                 trans_b ? (int)N : (int)K, trans_b ? (int)K : (int)N, alpha, B,
                                 (int)ldb, A, trans_a ? (int)lda : 1, beta, C, 1);
    return;
  }
  FUSEDRNN_BLAS(cblas_sgemm)(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                             trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, alpha, A,
                             (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

template <>
void gemm_serial<double>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                         double alpha, const double* A, int64_t lda, const double* B, int64_t ldb,
                         double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) return scale(M, N, beta, C, ldc);
  if (M == 1) {  // one row (batch 1): a GEMV, which OpenBLAS runs without packing B
    FUSEDRNN_BLAS(cblas_dgemv)(CblasRowMajor, trans_b ? CblasNoTrans : CblasTrans,
                                 trans_b ? (int)N : (int)K, trans_b ? (int)K : (int)N, alpha, B,
                                 (int)ldb, A, trans_a ? (int)lda : 1, beta, C, 1);
    return;
  }
  FUSEDRNN_BLAS(cblas_dgemm)(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                             trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, alpha, A,
                             (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  pin_openblas();
  int nt = blas_num_threads();
#ifdef _OPENMP
  if (omp_in_parallel()) nt = 1;  // inside a team (or a nested call): this thread's share only
#endif
  if (t_whole_calls || M == 0 || N == 0 || K == 0 || M * N * K < kSplitMacs) {
    return gemm_serial(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  // C is cut along its longer side into blocks fixed by the shape alone (never by the thread
  // count), each one single-threaded BLAS call, shared out over the threads: every element is
  // computed by the same call on 1 thread or 16, so results are bitwise identical whatever the
  // thread count. Column blocks are multiples of 16 (the micro-kernels' width), row blocks of 8.
  // op(A) rows start at A + i*lda (or A + i transposed), op(B) columns at B + j (or B + j*ldb).
  const bool by_cols = N >= M;
  const int64_t len = by_cols ? N : M, unit = by_cols ? 16 : 8;
  int64_t want = 2;  // a power of two (an even share on 2, 4 or 8 threads), at most kMaxBlocks
  const int64_t other = (by_cols ? M : N) * K;  // multiply-adds per row or column of the blocks
  while (want < kMaxBlocks && len / (2 * want) >= kMinBlock &&
         len / (2 * want) * other >= kBlockMacs)
    want *= 2;
  const int64_t per = (len / want + unit - 1) / unit * unit;
  const int blocks = static_cast<int>((len + per - 1) / per);
  auto block = [&](int b) {
    const int64_t lo = b * per, n = std::min(len, lo + per) - lo;
    if (by_cols) {
      gemm_serial(trans_a, trans_b, M, n, K, alpha, A, lda, trans_b ? B + lo * ldb : B + lo, ldb,
                  beta, C + lo, ldc);
    } else {
      gemm_serial(trans_a, trans_b, n, N, K, alpha, trans_a ? A + lo : A + lo * lda, lda, B, ldb,
                  beta, C + lo * ldc, ldc);
    }
  };
  nt = std::min(nt, blocks);
  if (nt <= 1) {
    for (int b = 0; b < blocks; ++b) block(b);
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int b = 0; b < blocks; ++b) block(b);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);

std::string blas_name() {
#ifdef FUSEDRNN_BLAS_NAME
  return FUSEDRNN_BLAS_NAME;
#else
  return "OpenBLAS";
#endif
}

std::string blas_config() {
  const char* cfg = FUSEDRNN_BLAS(openblas_get_config)();
  return cfg ? std::string(cfg) : std::string();
}

bool whole_calls() { return t_whole_calls; }

WholeCalls::WholeCalls() : saved_(t_whole_calls) { t_whole_calls = true; }
WholeCalls::~WholeCalls() { t_whole_calls = saved_; }

int blas_num_threads() {
  const int n = g_threads.load(std::memory_order_relaxed);
  if (n > 0) return n;
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int set_blas_num_threads(int n) {
  return g_threads.exchange(n < 0 ? 0 : n, std::memory_order_relaxed);
}

}  // namespace fusedrnn::cpu
