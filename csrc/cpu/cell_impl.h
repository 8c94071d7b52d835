// cpu/cell_impl.h: the fused pointwise kernels and the vectorisable activations behind them.
//
// Included by exactly one translation unit per instruction set (cell_avx2.cpp, cell_generic.cpp), each
// of which defines FUSEDRNN_ISA to a distinct namespace name first, so that the same inline code built
// with different target flags never merges across units. Inner loops over hidden units are written
// branch-free so that the compiler vectorises them (`omp simd`). A step runs on the calling thread:
// it is a few per cent of the step's time, and forking OpenMP threads between OpenBLAS calls made both
// pools spin against each other on 2 cores (W8 forward 980 ms with a per-step parallel-for against
// 190 ms without; see docs/architecture.md). Threads that own a slice of hidden units for the whole
// sequence are the CPU performance issue's job.
//
// Activations. float32: exp by range reduction (x = k ln2 + r, |r| <= ln2/2) and a degree-6 polynomial,
// 2^k built in the exponent bits; sigmoid = 1/(1+exp(-x)); tanh = a minimax odd polynomial for
// |x| < 0.625 and 1 - 2/(1 + exp(2|x|)) above. Max error against float64 over the whole float range:
// sigmoid <= 1e-7 absolute and 3 ulp, tanh <= 1e-7 absolute and 2 ulp (tests/test_activations.py).
// NaN propagates.
// float64 uses the C library (exact to the last bit or so), since float64 is the accuracy path.
#ifndef FUSEDRNN_ISA
#error "define FUSEDRNN_ISA before including cell_impl.h"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cell.h"

namespace fusedrnn::cpu::FUSEDRNN_ISA {

// ---- activations ---------------------------------------------------------------------------------
static inline float exp_f(float x) {
  // Clamp keeps 2^k a normal number below and lets it become +inf (k = 128: exponent field 255)
  // above about 88.4, so that 1/(1 + e) reaches exactly 0; comparisons pass NaN through.
  x = x < -87.0f ? -87.0f : x;
  x = x > 89.0f ? 89.0f : x;
  const float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  float t = x * 1.44269504088896341f + kMagic;
  float k = t - kMagic;
  float r = x - k * 0.693359375f;  // ln2 split in a short and a long part (Cody-Waite)
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^k from k + 127 in the exponent field; t's low mantissa bits hold k as an integer.
  uint32_t bits;
  std::memcpy(&bits, &t, 4);
  bits = (bits + 127u) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

static inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

static inline float tanh_f(float x) {
  float ax = x < 0.0f ? -x : x;
  // 1 - 2/(1 + e^{2|x|}): the rounding of the small correction term is scaled down by its size, so
  // results near +-1 (where 1 - tanh^2 amplifies any error in backward) are close to correctly rounded.
  float big = 1.0f - 2.0f / (1.0f + exp_f(2.0f * ax));
  big = x < 0.0f ? -big : big;
  float x2 = x * x;
  float p = -5.70498872745e-3f;
  p = p * x2 + 2.06390887954e-2f;
  p = p * x2 - 5.37397155531e-2f;
  p = p * x2 + 1.33314422036e-1f;
  p = p * x2 - 3.33332819422e-1f;
  float small = x + x * x2 * p;
  return ax < 0.625f ? small : big;
}

static inline float act_sigmoid(float x) { return sigmoid_f(x); }
static inline float act_tanh(float x) { return tanh_f(x); }
static inline double act_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
static inline double act_tanh(double x) { return std::tanh(x); }
template <typename T>
static inline T act_relu(T x) {
  return x > T(0) ? x : (x != x ? x : T(0));
}

// ---- row drivers ------------------------------------------------------------------------------------
template <typename Body>
static inline void for_rows(int64_t N, const Body& body) {
  for (int64_t n = 0; n < N; ++n) body(n);
}

template <typename T>
static inline void copy_row(T* __restrict dst, const T* __restrict src, int64_t H) {
  std::memcpy(dst, src, sizeof(T) * H);
}

// ---- LSTM ---------------------------------------------------------------------------------------------
template <typename T, bool Train>
static void lstm_forward(const StepForward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    const T* gx = s.gx + n * s.ld_gx;
    const T* gh = s.gh + n * s.ld_gh;
    const T* b = s.bias;
    const T* cp = s.c_prev + n * s.ld_cp;
    T* ho = s.h_out + n * s.ld_ho;
    T* co = s.c_out + n * s.ld_co;
    T* g = Train ? s.gates + n * s.ld_g : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T gi = act_sigmoid(gx[j] + gh[j] + b[j]);
      T gf = act_sigmoid(gx[H + j] + gh[H + j] + b[H + j]);
      T gg = act_tanh(gx[2 * H + j] + gh[2 * H + j] + b[2 * H + j]);
      T go = act_sigmoid(gx[3 * H + j] + gh[3 * H + j] + b[3 * H + j]);
      T c = gf * cp[j] + gi * gg;
      T h = go * act_tanh(c);
      if constexpr (Train) {
        g[j] = gi;
        g[H + j] = gf;
        g[2 * H + j] = gg;
        g[3 * H + j] = go;
      }
      co[j] = c;
      ho[j] = h;
    }
    if (s.y_out) copy_row(s.y_out + n * s.ld_yo, ho, H);
  });
}

template <typename T>
static void lstm_backward(const StepBackward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    const T* dy = s.dy + n * s.ld_dy;
    T* dh = s.dh + n * s.ld_dh;
    T* dc = s.dc + n * s.ld_dc;
    const T* g = s.gates + n * s.ld_g;
    const T* c = s.c + n * s.ld_c;
    const T* cp = s.c_prev + n * s.ld_cp;
    T* dg = s.dg + n * s.ld_dg;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T gi = g[j], gf = g[H + j], gg = g[2 * H + j], go = g[3 * H + j];
      T dhv = dy[j] + dh[j];
      T tc = act_tanh(c[j]);
      T dcv = dc[j] + dhv * go * (T(1) - tc * tc);
      dc[j] = dcv * gf;
      dg[j] = dcv * gg * gi * (T(1) - gi);
      dg[H + j] = dcv * cp[j] * gf * (T(1) - gf);
      dg[2 * H + j] = dcv * gi * (T(1) - gg * gg);
      dg[3 * H + j] = dhv * tc * go * (T(1) - go);
    }
  });
}

// ---- GRU (reset after) ------------------------------------------------------------------------------
template <typename T, bool Train>
static void gru_forward(const StepForward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    const T* gx = s.gx + n * s.ld_gx;
    const T* gh = s.gh + n * s.ld_gh;
    const T* b = s.bias;
    const T* bhn = s.bias + 3 * H;
    const T* hp = s.h_prev + n * s.ld_hp;
    T* ho = s.h_out + n * s.ld_ho;
    T* g = Train ? s.gates + n * s.ld_g : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T r = act_sigmoid(gx[j] + gh[j] + b[j]);
      T z = act_sigmoid(gx[H + j] + gh[H + j] + b[H + j]);
      T hn = gh[2 * H + j] + bhn[j];
      T nn = act_tanh(gx[2 * H + j] + b[2 * H + j] + r * hn);
      T h = nn + z * (hp[j] - nn);
      if constexpr (Train) {
        g[j] = r;
        g[H + j] = z;
        g[2 * H + j] = nn;
        g[3 * H + j] = hn;
      }
      ho[j] = h;
    }
    if (s.y_out) copy_row(s.y_out + n * s.ld_yo, ho, H);
  });
}

// Gate-gradient row layout: [dr, dz, dhn, dn] so that the recurrent part (dr, dz, dhn) is contiguous
// for the per-step GEMM; the input part is (dr, dz) and dn.
template <typename T>
static void gru_backward(const StepBackward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    const T* dy = s.dy + n * s.ld_dy;
    T* dh = s.dh + n * s.ld_dh;
    const T* g = s.gates + n * s.ld_g;
    const T* hp = s.h_prev + n * s.ld_hp;
    T* dg = s.dg + n * s.ld_dg;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T r = g[j], z = g[H + j], nn = g[2 * H + j], hn = g[3 * H + j];
      T dhv = dy[j] + dh[j];
      T dn = dhv * (T(1) - z) * (T(1) - nn * nn);
      T dz = dhv * (hp[j] - nn) * z * (T(1) - z);
      T dr = dn * hn * r * (T(1) - r);
      dh[j] = dhv * z;
      dg[j] = dr;
      dg[H + j] = dz;
      dg[2 * H + j] = dn * r;
      dg[3 * H + j] = dn;
    }
  });
}

// ---- vanilla RNN ------------------------------------------------------------------------------------
template <typename T, bool Relu>
static void rnn_forward(const StepForward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    const T* gx = s.gx + n * s.ld_gx;
    const T* gh = s.gh + n * s.ld_gh;
    const T* b = s.bias;
    T* ho = s.h_out + n * s.ld_ho;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T a = gx[j] + gh[j] + b[j];
      ho[j] = Relu ? act_relu(a) : act_tanh(a);
    }
    if (s.y_out) copy_row(s.y_out + n * s.ld_yo, ho, H);
  });
}

template <typename T, bool Relu>
static void rnn_backward(const StepBackward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    const T* dy = s.dy + n * s.ld_dy;
    const T* dh = s.dh + n * s.ld_dh;
    const T* h = s.h + n * s.ld_h;
    T* dg = s.dg + n * s.ld_dg;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T dhv = dy[j] + dh[j];
      dg[j] = Relu ? (h[j] > T(0) ? dhv : T(0)) : dhv * (T(1) - h[j] * h[j]);
    }
  });
}

// ---- tables ---------------------------------------------------------------------------------------
template <typename T>
static CellFns<T> fns_for(Mode mode) {
  CellFns<T> f;
  switch (mode) {
    case Mode::kLstm:
      f = {&lstm_forward<T, false>, &lstm_forward<T, true>, &lstm_backward<T>};
      break;
    case Mode::kGru:
      f = {&gru_forward<T, false>, &gru_forward<T, true>, &gru_backward<T>};
      break;
    case Mode::kRnnTanh:
      f = {&rnn_forward<T, false>, &rnn_forward<T, false>, &rnn_backward<T, false>};
      break;
    case Mode::kRnnRelu:
      f = {&rnn_forward<T, true>, &rnn_forward<T, true>, &rnn_backward<T, true>};
      break;
  }
  return f;
}

static const CellKernels* table(Mode mode, const char* isa) {
  static const CellKernels tables[4] = {
      {isa, fns_for<float>(Mode::kLstm), fns_for<double>(Mode::kLstm)},
      {isa, fns_for<float>(Mode::kGru), fns_for<double>(Mode::kGru)},
      {isa, fns_for<float>(Mode::kRnnTanh), fns_for<double>(Mode::kRnnTanh)},
      {isa, fns_for<float>(Mode::kRnnRelu), fns_for<double>(Mode::kRnnRelu)},
  };
  return &tables[static_cast<int>(mode)];
}

// Exposed for the activation-accuracy test.
static void eval_activations(const float* x, float* sig, float* th, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    sig[i] = sigmoid_f(x[i]);
    th[i] = tanh_f(x[i]);
  }
}

}  // namespace fusedrnn::cpu::FUSEDRNN_ISA
