// cpu/blas.cpp: binds the GEMM wrapper to OpenBLAS's CBLAS interface.
//
// The scipy-openblas32 wheel (the OpenBLAS NumPy and SciPy ship) prefixes every symbol with
// "scipy_"; FUSEDRNN_BLAS_PREFIX names that prefix (empty for a system OpenBLAS).
#include "blas.h"

#include <cblas.h>

#include <cstring>

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
}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                 int64_t ldc) {
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
void gemm<double>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
                  const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                  double* C, int64_t ldc) {
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

int blas_num_threads() { return FUSEDRNN_BLAS(openblas_get_num_threads)(); }

void set_blas_num_threads(int n) { FUSEDRNN_BLAS(openblas_set_num_threads)(n); }

}  // namespace fusedrnn::cpu
