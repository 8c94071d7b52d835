// cpu/blas.h: the GEMMs of the CPU backend, row-major, over a maintained BLAS (OpenBLAS).
//
// C (M x N) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C, where op is a transpose when the flag
// says so. Leading dimensions are in elements. Sizes must fit BLAS's 32-bit integers (the plan checks).
#pragma once

#include <cstdint>
#include <string>

namespace fusedrnn::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

std::string blas_name();
std::string blas_config();
// The threads a GEMM is split over (OpenMP; OpenBLAS itself stays single-threaded): n >= 1 pins n,
// 0 follows omp_get_max_threads() (the default; torch.set_num_threads sets it in a torch process).
// Process-wide: the unrolled executor sets 1 while its lanes run concurrently and restores the
// previous setting (returned by the setter) after.
int blas_num_threads();
int set_blas_num_threads(int n);

// While one lives on a thread, that thread's GEMMs are single BLAS calls, not cut into blocks: the
// unrolled executor's lanes (one core each) hold one, where the blocks would only add calls.
// Whether this thread holds a WholeCalls (cpu/packed_gemm.cpp follows it too).
bool whole_calls();

class WholeCalls {
 public:
  WholeCalls();
  ~WholeCalls();
  WholeCalls(const WholeCalls&) = delete;
  WholeCalls& operator=(const WholeCalls&) = delete;

 private:
  bool saved_;
};

}  // namespace fusedrnn::cpu
