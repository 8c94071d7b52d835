// cpu/cell_generic.cpp: the pointwise kernels built for the baseline instruction set of the target.
#define FUSEDRNN_ISA generic
#include "cell_impl.h"

namespace fusedrnn::cpu {
const CellKernels* cell_kernels_generic(CellKind kind) { return generic::table(kind, "baseline"); }
void activations_generic(const float* x, float* sigmoid, float* tanh, int64_t n) {
  generic::eval_activations(x, sigmoid, tanh, n);
}
}  // namespace fusedrnn::cpu
