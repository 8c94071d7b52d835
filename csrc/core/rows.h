// core/rows.h: GEMMs over grids of (t, n) rows, the shape in which sequences live.
//
// A Rows value addresses row (t, n) at p + t*st + n*sn; its features are contiguous. Time-major
// buffers (st = N*sn) collapse to one matrix and take one GEMM; any other layout (batch-major input,
// a strided view) is covered by a loop of GEMMs over the shorter of the two grid dimensions, so no
// input is ever copied to change its layout. A packed grid (variable lengths: `off` points at the
// plan's row offsets) has off[t+1] - off[t] rows at step t, row (t, n) at p + (off[t] - off[0] + n)*sn;
// it is always one matrix.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../cpu/blas.h"

namespace fusedrnn {

template <typename T>
struct Rows {
  T* p = nullptr;
  int64_t st = 0, sn = 0;
  const int64_t* off = nullptr;

  T* row(int64_t t, int64_t n = 0) const {
    return off ? p + (off[t] - off[0] + n) * sn : p + t * st + n * sn;
  }
  Rows shifted(int64_t t, int64_t col = 0) const {
    return off ? Rows{row(t) + col, st, sn, off + t} : Rows{p + t * st + col, st, sn, nullptr};
  }
  Rows<const T> as_const() const { return {p, st, sn, off}; }
  // Rows of step t (N unless packed), and of steps [0, nt).
  int64_t count(int64_t t, int64_t N) const { return off ? off[t + 1] - off[t] : N; }
  int64_t total(int64_t nt, int64_t N) const { return off ? off[nt] - off[0] : nt * N; }
};

// When the nt x N grid is one matrix with a single row stride, returns true and that stride.
template <typename T>
inline bool collapse(const Rows<T>& r, int64_t nt, int64_t N, int64_t width, int64_t* ld) {
  if (r.off) {
    *ld = r.sn;
  } else if (nt * N == 1) {
    *ld = width;
  } else if (N == 1) {
    *ld = r.st;
  } else if (nt == 1 || r.st == N * r.sn) {
    *ld = r.sn;
  } else {
    return false;
  }
  return true;
}

// C[t, n, :M] = A[t, n, :K] @ op(B) + beta * C[t, n, :M] for t < nt, n < N.
// op(B) is B^T for B (M x K) when trans_b, else B (K x M); ldb is B's row stride.
template <typename T>
void gemm_rows(int64_t nt, int64_t N, Rows<const T> A, int64_t K, bool trans_b, const T* B,
               int64_t ldb, int64_t M, T beta, Rows<T> C) {
  if (nt == 0 || N == 0) return;
  int64_t lda, ldc;
  if (collapse(A, nt, N, K, &lda) && collapse(C, nt, N, M, &ldc)) {
    cpu::gemm<T>(false, trans_b, A.total(nt, N), M, K, T(1), A.p, lda, B, ldb, beta, C.p, ldc);
  } else if (nt <= N) {
    for (int64_t t = 0; t < nt; ++t)
      cpu::gemm<T>(false, trans_b, N, M, K, T(1), A.row(t), A.sn, B, ldb, beta, C.row(t), C.sn);
  } else {
    for (int64_t n = 0; n < N; ++n)
      cpu::gemm<T>(false, trans_b, nt, M, K, T(1), A.row(0, n), A.st, B, ldb, beta, C.row(0, n),
                   C.st);
  }
}

// C (M x K) += sum over t < nt, n < N of A[t, n, :M]^T B[t, n, :K]  (weight gradients).
template <typename T>
void gemm_rows_tn(int64_t nt, int64_t N, Rows<const T> A, int64_t M, Rows<const T> B, int64_t K,
                  T* C, int64_t ldc) {
  if (nt == 0 || N == 0) return;
  int64_t lda, ldb;
  if (collapse(A, nt, N, M, &lda) && collapse(B, nt, N, K, &ldb)) {
    cpu::gemm<T>(true, false, M, K, A.total(nt, N), T(1), A.p, lda, B.p, ldb, T(1), C, ldc);
  } else if (nt <= N) {
    for (int64_t t = 0; t < nt; ++t)
      cpu::gemm<T>(true, false, M, K, N, T(1), A.row(t), A.sn, B.row(t), B.sn, T(1), C, ldc);
  } else {
    for (int64_t n = 0; n < N; ++n)
      cpu::gemm<T>(true, false, M, K, nt, T(1), A.row(0, n), A.st, B.row(0, n), B.st, T(1), C,
                   ldc);
  }
}

}  // namespace fusedrnn
