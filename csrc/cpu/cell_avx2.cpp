// cpu/cell_avx2.cpp: the pointwise kernels built for AVX2 + FMA (this file gets -mavx2 -mfma).
#define FUSEDRNN_ISA avx2
#include "cell_impl.h"

namespace fusedrnn::cpu {
const CellKernels* cell_kernels_avx2(CellKind kind) { return avx2::table(kind, "avx2+fma"); }
void activations_avx2(const float* x, float* sigmoid, float* tanh, int64_t n) {
  avx2::eval_activations(x, sigmoid, tanh, n);
}
}  // namespace fusedrnn::cpu
