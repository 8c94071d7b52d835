// bench/micro/packed_vs_blas.cpp: the per-step recurrent product through cpu::gemm (single-threaded
// OpenBLAS calls on shape-fixed blocks over the OpenMP team, B re-packed by every call) against
// cpu::gemm_packed (B packed once, 16-column panels shared out over the same team), at the step
// shapes of BENCH.md's workloads. Forward: C = h W_hh^T (M = batch, K = H, N = 4H); backward:
// C += dG W_hh (K = 4H, N = H). Best of 7 runs of 100 calls after 20 warm-up calls.
//
//   cmake --build build -j2   # the core library, build/libfusedrnn_core.a
//   D=$(python -c "import scipy_openblas32 as s; print(s.get_lib_dir())")
//   g++ -O2 -fopenmp -Icsrc -Icsrc/include bench/micro/packed_vs_blas.cpp build/libfusedrnn_core.a \
//       $D/libscipy_openblas.so -Wl,-rpath,$D -o /tmp/packed_vs_blas && /tmp/packed_vs_blas
//
// 2-core AMD EPYC, 2026-11-22 (2 OpenMP threads), us per call (GFLOP/s):
//   M=64  K=512  N=2048 fwd (W3/W8)  blas 857.8 (156)  packed 796.6 (168)
//   M=32  K=256  N=1024 fwd (W2)     blas 129.7 (129)  packed  95.7 (175)
//   M=32  K=1024 N=256  bwd (W2)     blas 117.6 (143)  packed  98.1 (171)
//   M=128 K=128  N=512  fwd (W5)     blas 111.2 (151)  packed  92.6 (181)
//   M=8   K=256  N=1024 fwd          blas  52.3  (80)  packed  30.9 (136)
//   M=64  K=2048 N=512  bwd (W3)     blas 867.4 (155)  packed 777.7 (173)
//   M=1   K=256  N=1024 fwd (W1)     blas   9.0  (59)  packed  10.8  (48)   <- batch 1 keeps BLAS
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "cpu/blas.h"
#include "cpu/packed_gemm.h"

using namespace fusedrnn::cpu;

int main() {
  struct Shape {
    int64_t M, K, N;
    bool backward;
  };
  const Shape shapes[] = {{64, 512, 2048, false}, {32, 256, 1024, false}, {32, 1024, 256, true},
                          {128, 128, 512, false}, {8, 256, 1024, false},  {64, 2048, 512, true},
                          {1, 256, 1024, false}};
  if (!packed_gemm_available()) {
    std::printf("no AVX2+FMA: the packed GEMM is not used on this CPU\n");
    return 0;
  }
  for (const Shape& s : shapes) {
    std::vector<float> A(s.M * s.K, 0.5f), W(s.K * s.N, 0.25f), C(s.M * s.N);
    std::vector<float> packed(packed_size(s.N, s.K));
    // forward: W is (N x K), op(B) = W^T; backward: W is (K x N)
    pack_b(!s.backward, W.data(), s.backward ? s.N : s.K, s.N, s.K, packed.data());
    auto best_us = [](auto f) {
      for (int i = 0; i < 20; ++i) f();
      double best = 1e30;
      for (int r = 0; r < 7; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < 100; ++i) f();
        const std::chrono::duration<double, std::micro> d = std::chrono::steady_clock::now() - t0;
        best = std::min(best, d.count() / 100);
      }
      return best;
    };
    const double blas = best_us([&] {
      gemm<float>(false, !s.backward, s.M, s.N, s.K, 1.0f, A.data(), s.K, W.data(),
                  s.backward ? s.N : s.K, s.backward ? 1.0f : 0.0f, C.data(), s.N);
    });
    const double pk = best_us([&] {
      gemm_packed(s.M, s.N, s.K, A.data(), s.K, packed.data(), s.backward, C.data(), s.N);
    });
    const double flop = 2.0 * s.M * s.N * s.K;
    std::printf("M=%-4ld K=%-5ld N=%-5ld %s  blas %7.1f us (%3.0f GFLOP/s)  packed %7.1f us "
                "(%3.0f GFLOP/s)\n",
                static_cast<long>(s.M), static_cast<long>(s.K), static_cast<long>(s.N),
                s.backward ? "bwd" : "fwd", blas, flop / blas / 1e3, pk, flop / pk / 1e3);
  }
  return 0;
}
