// bench/micro/w_stream.cpp: what bounds W1 (LSTM 256, batch 1): streaming W_hh once per step.
//
// Each of `threads` threads owns a slice of `slice_kb` KiB of weights (rows of 256 floats, packed
// in 64-row panels) and, per iteration, multiplies it by a 256-vector (a GEMV: 2 flops per 4-byte
// weight), then all meet at a spinning barrier: one recurrent step of the batch-1 forward. With
// `snake` set, odd iterations walk the panels backwards (the most recently used first).
//
//   g++ -O2 -mavx2 -mfma -pthread bench/micro/w_stream.cpp -o /tmp/w_stream
//   /tmp/w_stream 2 512 0     # W1's float32 W_hh (1 MiB) split over 2 cores: 512 KiB each
//
// 2-core AMD EPYC (512 KiB L2 per core), 2026-11-22, us per iteration over 4 runs (one thread is
// steady; two vary run to run, the VM's cores sharing their host):
//   1 x 1024 KiB 20.5-23.0 | 1 x 256 KiB 4.7-5.3 | 2 x 512 KiB 11.9-21.2 (snake 14.6-20.8) |
//   2 x 384 KiB 8.5-16.1 | 2 x 256 KiB 4.9-12.7
// So W1's 100 steps stream 1 MiB of float32 W_hh each from L3 (it does not fit the two 512 KiB
// L2s): 1.2-2.1 ms on this machine, where fusedrnn measures 1.6 ms and ONNX Runtime 1.5. The 0.9 ms
// target needs the weights to stay in L2: 16-bit weights (2 x 256 KiB) at about 5-12 us per step.
#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s threads slice_kb snake\n", argv[0]);
    return 2;
  }
  const int nthr = std::atoi(argv[1]), snake = std::atoi(argv[3]);
  const int K = 256, R = std::atoi(argv[2]) * 1024 / (4 * K) / 64 * 64, iters = 2000;
  std::vector<float*> W(nthr);
  for (auto& w : W) {
    w = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * R * K));
    for (int i = 0; i < R * K; ++i) w[i] = 0.001f;
  }
  std::vector<float> x(K, 1.f), y(static_cast<size_t>(R) * nthr);
  std::atomic<int> arrived{0};
  auto work = [&](int t) {
    const int panels = R / 64;
    for (int it = 0; it < iters; ++it) {
      const bool back = snake && (it & 1);
      for (int i = 0; i < panels; ++i) {
        const int p = back ? panels - 1 - i : i;
        const float* wp = W[t] + static_cast<size_t>(p) * 64 * K;
        __m256 acc[8];
        for (auto& a : acc) a = _mm256_setzero_ps();
        for (int k = 0; k < K; ++k) {
          const __m256 xb = _mm256_broadcast_ss(&x[k]);
          for (int j = 0; j < 8; ++j)
            acc[j] = _mm256_fmadd_ps(_mm256_load_ps(wp + k * 64 + 8 * j), xb, acc[j]);
        }
        for (int j = 0; j < 8; ++j) _mm256_storeu_ps(&y[t * R + p * 64 + 8 * j], acc[j]);
      }
      arrived.fetch_add(1);
      while (arrived.load() < (it + 1) * nthr) _mm_pause();
    }
  };
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 1; t < nthr; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
  const double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
      iters;
  std::printf("threads %d, slice %d KiB, snake %d: %.2f us per step (y[0] = %g)\n", nthr,
              R * K * 4 / 1024, snake, us, y[0]);
  for (auto* w : W) std::free(w);
  return 0;
}
