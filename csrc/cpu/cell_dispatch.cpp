// cpu/cell_dispatch.cpp: picks the pointwise kernels' instruction set once per process.
//
// FUSEDRNN_FORCE_BASELINE=1 in the environment selects the baseline kernels even on an AVX2 machine
// (used by the tests to check both builds of the kernels).
#include <cstdlib>
#include <cstring>

#include "cell.h"

namespace fusedrnn::cpu {
bool use_avx2() {
#if defined(FUSEDRNN_HAVE_AVX2_TU)
  static const bool ok = [] {
    const char* force = std::getenv("FUSEDRNN_FORCE_BASELINE");
    if (force && std::strcmp(force, "") != 0 && std::strcmp(force, "0") != 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

CellKind cell_kind(const RnnDesc& desc) {
  switch (desc.mode) {
    case Mode::kLstm: return CellKind::kLstm;
    case Mode::kGru: return desc.reset_after ? CellKind::kGru : CellKind::kGruResetBefore;
    default: return CellKind::kRnn;
  }
}

const CellKernels* select_cell_kernels(CellKind kind) {
#if defined(FUSEDRNN_HAVE_AVX2_TU)
  if (use_avx2()) return cell_kernels_avx2(kind);
#endif
  return cell_kernels_generic(kind);
}

const char* simd_level() { return use_avx2() ? "avx2+fma" : "baseline"; }

void eval_activations(const float* x, float* sigmoid, float* tanh, int64_t n) {
#if defined(FUSEDRNN_HAVE_AVX2_TU)
  if (use_avx2()) return activations_avx2(x, sigmoid, tanh, n);
#endif
  activations_generic(x, sigmoid, tanh, n);
}
}  // namespace fusedrnn::cpu
