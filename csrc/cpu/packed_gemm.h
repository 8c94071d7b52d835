// cpu/packed_gemm.h: the recurrent products' own GEMM for single-threaded use (the unrolled
// executor's lanes): B packed once per call into panels of 16 columns, then a 6x16 AVX2/FMA
// register-blocked micro-kernel per step. A BLAS call re-packs B on every call; for the per-step
// shapes (M = batch <= 64, K = H, N = 4H) that costs as much as the arithmetic (measured single
// -threaded, H=256: M=8 53 vs 28 GFLOP/s, M=32 63 vs 53; H=512: M=32 80 vs 62). float32 only;
// packed_gemm_available() is false without AVX2+FMA, and callers use BLAS then.
#pragma once

#include <cstdint>

namespace fusedrnn::cpu {

bool packed_gemm_available();

// Floats of a packed B with N output columns and depth K.
int64_t packed_size(int64_t N, int64_t K);

// Packs op(B) (K x N): with trans, B is (N x K) and op(B) = B^T; else B is (K x N). ldb: B's row
// stride. Columns past N are zero.
void pack_b(bool trans, const float* B, int64_t ldb, int64_t N, int64_t K, float* packed);

// C (M x N) = A (M x K) op(B), or C += that with accumulate. `packed` from pack_b.
void gemm_packed(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* packed,
                 bool accumulate, float* C, int64_t ldc);

}  // namespace fusedrnn::cpu
