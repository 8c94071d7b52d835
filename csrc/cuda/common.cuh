// cuda/common.cuh: what the CUDA backend's translation units share: error checks, the activations
// (f(x) and the derivative in terms of the output y = f(x), as cpu/cell_impl.h), the cuBLAS
// wrappers in row-major terms, and the per-call context (device, stream, handle).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "fusedrnn/cuda.h"
#include "fusedrnn/fusedrnn.h"

namespace fusedrnn {
namespace cuda {

[[noreturn]] void throw_cuda(cudaError_t err, const char* what, const char* file, int line);
[[noreturn]] void throw_cublas(cublasStatus_t st, const char* what, const char* file, int line);

#define FUSEDRNN_CUDA_CHECK(expr)                                                    \
  do {                                                                               \
    cudaError_t err_ = (expr);                                                       \
    if (err_ != cudaSuccess) ::fusedrnn::cuda::throw_cuda(err_, #expr, __FILE__, __LINE__); \
  } while (0)
#define FUSEDRNN_CUBLAS_CHECK(expr)                                                  \
  do {                                                                               \
    cublasStatus_t st_ = (expr);                                                     \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                \
      ::fusedrnn::cuda::throw_cublas(st_, #expr, __FILE__, __LINE__);                \
  } while (0)
// After a kernel launch: a bad launch configuration shows here, not at the launch.
#define FUSEDRNN_LAUNCH_CHECK() FUSEDRNN_CUDA_CHECK(cudaGetLastError())

// Activation codes as the kernels take them (the order of fusedrnn::Activation).
enum ActCode : int { kTanh = 0, kSigmoid, kHardSigmoid, kRelu, kLinear, kSoftrelu, kSoftsign };

template <typename S> __device__ __forceinline__ S dev_exp(S x);
template <> __device__ __forceinline__ float dev_exp<float>(float x) { return expf(x); }
template <> __device__ __forceinline__ double dev_exp<double>(double x) { return exp(x); }

template <typename S>
__device__ __forceinline__ S act_f(int a, S x) {
  switch (a) {
    case kTanh: return tanh(x);
    case kSigmoid: return S(1) / (S(1) + dev_exp(-x));
    case kHardSigmoid: {
      S y = x * S(1.0 / 6.0) + S(0.5);
      y = y < S(0) ? S(0) : y;
      return y > S(1) ? S(1) : y;
    }
    case kRelu: return x < S(0) ? S(0) : x;
    case kLinear: return x;
    case kSoftrelu: return (x > S(0) ? x : S(0)) + log1p(dev_exp(-(x < S(0) ? -x : x)));
    default: return x / (S(1) + (x < S(0) ? -x : x));  // softsign
  }
}

// The derivative at the input whose output is y.
template <typename S>
__device__ __forceinline__ S act_d(int a, S y) {
  switch (a) {
    case kTanh: return S(1) - y * y;
    case kSigmoid: return y * (S(1) - y);
    case kHardSigmoid: return (y > S(0) && y < S(1)) ? S(1.0 / 6.0) : S(0);
    case kRelu: return y > S(0) ? S(1) : S(0);
    case kLinear: return S(1);
    case kSoftrelu: return -expm1(-y);
    default: {
      S m = S(1) - (y < S(0) ? -y : y);
      return m * m;
    }
  }
}

// One call's device, stream and cuBLAS handle (one handle per host thread and device, made on
// first use; bound to the call's stream).
struct Ctx {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
};
Ctx make_ctx(int device, void* stream, bool tf32);

// Row-major GEMM: C[m,n] = op(A) op(B) + beta C with op(A) (m, k) and op(B) (k, n); ta / tb: A is
// stored (k, m) / B is stored (n, k). Zero sizes are no-ops (callers never rely on beta with k == 0).
template <typename S>
void gemm(const Ctx& c, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const S* A, int64_t lda,
          const S* B, int64_t ldb, S* C, int64_t ldc, S beta);
//   nt: C = A B^T (B stored (n, k), as W_ih / W_hh are)   nn: C = A B   tn: C = A^T B
template <typename S>
inline void gemm_nt(const Ctx& c, int64_t m, int64_t n, int64_t k, const S* A, int64_t lda,
                    const S* B, int64_t ldb, S* C, int64_t ldc, S beta) {
  gemm<S>(c, false, true, m, n, k, A, lda, B, ldb, C, ldc, beta);
}
template <typename S>
inline void gemm_nn(const Ctx& c, int64_t m, int64_t n, int64_t k, const S* A, int64_t lda,
                    const S* B, int64_t ldb, S* C, int64_t ldc, S beta) {
  gemm<S>(c, false, false, m, n, k, A, lda, B, ldb, C, ldc, beta);
}
template <typename S>
inline void gemm_tn(const Ctx& c, int64_t m, int64_t n, int64_t k, const S* A, int64_t lda,
                    const S* B, int64_t ldb, S* C, int64_t ldc, S beta) {
  gemm<S>(c, true, false, m, n, k, A, lda, B, ldb, C, ldc, beta);
}
// y[n] += sum over rows of A[rows, n] (lda): the bias gradients, as a GEMV with a ones column.
template <typename S>
void colsum_add(const Ctx& c, int64_t rows, int64_t n, const S* A, int64_t lda, const S* ones,
                S* y);

inline int blocks_for(int64_t n, int threads) {
  return static_cast<int>((n + threads - 1) / threads);
}

// The persistent forward of one (layer, direction): false when it cannot run (the caller then runs
// the step path).
struct PersistentArgs {
  const void* gx;       // (rows, ldgx): x W_ih^T (no bias) of every row, gate-major columns
  int64_t ldgx;
  const void* w_hh;     // (G*H, H)
  const void* b_ih;     // (G*H)
  const void* b_hh;     // (G*H)
  void* h;              // (N, H) running state: initial in, final out
  void* c;              // (N, H) LSTM cell state: initial in, final out
  void* y;              // output rows, column offset applied, leading dimension ldy
  int64_t ldy;
  bool reverse;
  // training only (null in inference): the reserve rows of this stream
  void* gates;          // (rows, gate_slots*H)
  void* cell;
  void* cprev;
  void* hprev;
  void* hbuf;           // workspace (2, N, H)
  const int64_t* offsets;  // device (T + 1) row offsets with lengths; null: step t at row t*N
};
void persistent_forward(const CudaPlan& plan, const Ctx& ctx, const PersistentArgs& a);
// The persistent backward_data recurrence of one (layer, direction): the reserve's gate gradients
// and the running (dh, dc) (initial in, final out), as the step path leaves them.
struct PersistentBwdArgs {
  const void* w_hh;
  const void* dy;     // the stream's first output-gradient column (null: zeros), leading dim lddy
  int64_t lddy;
  void* dh;           // (N, H)
  void* dc;           // (N, H), LSTM
  const void* gates;  // the stream's reserve regions
  const void* cell;
  const void* cprev;
  const void* hprev;
  void* grads;
  bool reverse;
  const int64_t* offsets;
};
void persistent_backward(const CudaPlan& plan, const Ctx& ctx, const PersistentBwdArgs& a);
// The geometry of the persistent kernel for this plan, or false.
bool persistent_geometry(CudaPlan& plan);

}  // namespace cuda
}  // namespace fusedrnn
