// core/build_info.cpp: what this build was made with and what it runs on.
#include "../cpu/blas.h"
#include "../cpu/cell.h"
#include "fusedrnn/fusedrnn.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef FUSEDRNN_VERSION
#define FUSEDRNN_VERSION "0.0.0"
#endif
#ifndef FUSEDRNN_CXX_FLAGS
#define FUSEDRNN_CXX_FLAGS ""
#endif

namespace fusedrnn {

BuildInfo build_info() {
  BuildInfo b;
  b.version = FUSEDRNN_VERSION;
  b.blas = cpu::blas_name();
  b.blas_config = cpu::blas_config();
#if defined(__clang__)
  b.compiler = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  b.compiler = std::string("gcc ") + __VERSION__;
#else
  b.compiler = "unknown";
#endif
  b.cxx_flags = FUSEDRNN_CXX_FLAGS;
  b.simd = cpu::simd_level();
#ifdef _OPENMP
  b.openmp = true;
  b.openmp_max_threads = omp_get_max_threads();
#endif
#ifdef FUSEDRNN_WITH_CUDA
  b.cuda = true;
#endif
  return b;
}

}  // namespace fusedrnn
