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

// Each activation as a type: f(x), and its derivative d(y) written in terms of the output y = f(x),
// which is what the saved gates hold. Kernels are instantiated per activation through with_act, so
// the choice is made once per call, outside the vectorised loops.
struct ActTanh {
  template <typename T> static T f(T x) { return act_tanh(x); }
  template <typename T> static T d(T y) { return T(1) - y * y; }
};
struct ActSigmoid {
  template <typename T> static T f(T x) { return act_sigmoid(x); }
  template <typename T> static T d(T y) { return y * (T(1) - y); }
};
struct ActHardSigmoid {  // Keras 3: clip(x/6 + 1/2, 0, 1); NaN passes through
  template <typename T> static T f(T x) {
    T y = x * T(1.0 / 6.0) + T(0.5);
    y = y < T(0) ? T(0) : y;
    return y > T(1) ? T(1) : y;
  }
  template <typename T> static T d(T y) { return (y > T(0) && y < T(1)) ? T(1.0 / 6.0) : T(0); }
};
struct ActRelu {
  template <typename T> static T f(T x) { return x < T(0) ? T(0) : x; }
  template <typename T> static T d(T y) { return y > T(0) ? T(1) : T(0); }
};
struct ActLinear {
  template <typename T> static T f(T x) { return x; }
  template <typename T> static T d(T) { return T(1); }
};

struct ActSoftrelu {  // MXNet softrelu: log(1 + e^x), overflow-free; f' = sigmoid(x) = 1 - e^{-y}
  template <typename T> static T f(T x) {
    return (x > T(0) ? x : T(0)) + std::log1p(std::exp(-(x < T(0) ? -x : x)));
  }
  template <typename T> static T d(T y) { return -std::expm1(-y); }
};
struct ActSoftsign {  // x / (1 + |x|); f' = 1 / (1 + |x|)^2 = (1 - |y|)^2
  template <typename T> static T f(T x) { return x / (T(1) + (x < T(0) ? -x : x)); }
  template <typename T> static T d(T y) {
    T a = T(1) - (y < T(0) ? -y : y);
    return a * a;
  }
};

template <typename Fn>
static inline void with_act(Activation a, const Fn& fn) {
  switch (a) {
    case Activation::kTanh: return fn(ActTanh{});
    case Activation::kSigmoid: return fn(ActSigmoid{});
    case Activation::kHardSigmoid: return fn(ActHardSigmoid{});
    case Activation::kRelu: return fn(ActRelu{});
    case Activation::kLinear: return fn(ActLinear{});
    case Activation::kSoftrelu: return fn(ActSoftrelu{});
    case Activation::kSoftsign: return fn(ActSoftsign{});
  }
}

// ---- shared pieces ------------------------------------------------------------------------------------
template <typename Body>
static inline void for_rows(int64_t N, const Body& body) {
  for (int64_t n = 0; n < N; ++n) body(n);
}

template <typename T>
static inline void copy_row(T* __restrict dst, const T* __restrict src, int64_t H) {
  std::memcpy(dst, src, sizeof(T) * H);
}

// Masks: a masked row (step of a sample) keeps its previous state; forward copies it through, and
// backward passes the gradients to the previous step unchanged with zero gate gradients.
template <typename S>
static inline bool is_masked(const S& s, int64_t n) {
  return s.mask && !s.mask[n * s.ld_mask];
}

template <typename T>
static inline void keep_state(const StepForward<T>& s, int64_t n) {
  const int64_t H = s.H;
  if (s.c_out && s.c_out != s.c_prev) copy_row(s.c_out + n * s.ld_co, s.c_prev + n * s.ld_cp, H);
  if (s.proj) {  // the projected h is kept by the executor; o*act(c) is zero (no dW_hr term)
    std::memset(s.h_out + n * s.ld_ho, 0, sizeof(T) * H);
    return;
  }
  const T* hp = s.h_prev + n * s.ld_hp;
  copy_row(s.h_out + n * s.ld_ho, hp, H);
  if (s.y_out) {
    T* y = s.y_out + n * s.ld_yo;
    if (s.zero_masked_output) {
      std::memset(y, 0, sizeof(T) * H);
    } else {
      copy_row(y, hp, H);
    }
  }
  if (s.rh) std::memset(s.rh + n * s.ld_rh, 0, sizeof(T) * H);  // r*h enters dW_hn: keep it finite
}

template <typename T>
static inline void pass_through(const StepBackward<T>& s, int64_t n) {
  T* dh = s.dh + n * s.ld_dh;
  if (!s.zero_masked_output) {
    const T* dy = s.dy + n * s.ld_dy;
#pragma omp simd
    for (int64_t j = 0; j < s.H; ++j) dh[j] += dy[j];
  }
  std::memset(s.dg + n * s.ld_dg, 0, sizeof(T) * s.slots * s.H);
}

// g[j] = A(gx[j] + gh[j] + b[j]) over one gate block; g may alias gx.
template <typename A, typename T>
static inline void gate_block(T* g, const T* gx, const T* gh, const T* b, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) g[j] = A::f(gx[j] + gh[j] + b[j]);
}

// dg[j] *= A'(y[j]) over one gate block (turns a gradient of the output into one of the input).
template <typename A, typename T>
static inline void scale_by_derivative(T* dg, const T* y, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) dg[j] *= A::d(y[j]);
}

// ---- LSTM ---------------------------------------------------------------------------------------------
// State clipping, branch-free: comparisons with NaN are false, so NaN passes the two clamps and
// only nan_to_lo replaces it.
template <typename T>
static inline T clip_state(T c, T lo, T hi, bool nan_to_lo) {
  c = c < lo ? lo : c;
  c = c > hi ? hi : c;
  return nan_to_lo && c != c ? lo : c;
}

// Whether the gradient of the clip passes: the unclipped value inside [lo, hi] (NaN only while it
// propagates, i.e. without nan_to_lo). A select, not a product by 0/1: 0 * inf would be NaN.
template <typename T>
static inline bool clip_pass(T c, T lo, T hi, bool nan_to_lo) {
  return nan_to_lo ? (c >= lo && c <= hi) : !(c < lo || c > hi);
}

// Gates i, f, g, o are computed in place over the input projection; in training that row is the
// reserve's saved-gates row.
template <typename T, bool Train>
static void lstm_forward(const StepForward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    if (is_masked(s, n)) return keep_state(s, n);
    T* g = s.gx + n * s.ld_gx;
    const T* gh = s.gh + n * s.ld_gh;
    const T* b = s.bias;
    const T* cp = s.c_prev + n * s.ld_cp;
    T* ho = s.h_out + n * s.ld_ho;
    T* co = s.c_out + n * s.ld_co;
    with_act(s.rec, [&](auto R) {
      using Rec = decltype(R);
      gate_block<Rec>(g, g, gh, b, H);
      gate_block<Rec>(g + H, g + H, gh + H, b + H, H);
      gate_block<Rec>(g + 3 * H, g + 3 * H, gh + 3 * H, b + 3 * H, H);
    });
    with_act(s.act, [&](auto A) {
      using Act = decltype(A);
      gate_block<Act>(g + 2 * H, g + 2 * H, gh + 2 * H, b + 2 * H, H);
      if (s.clip) {
        const T lo = s.clip_lo, hi = s.clip_hi;
        const bool nan_to_lo = s.clip_nan;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          T c = clip_state(g[H + j] * cp[j] + g[j] * g[2 * H + j], lo, hi, nan_to_lo);
          co[j] = c;
          ho[j] = g[3 * H + j] * Act::f(c);
        }
        return;
      }
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        T c = g[H + j] * cp[j] + g[j] * g[2 * H + j];
        co[j] = c;
        ho[j] = g[3 * H + j] * Act::f(c);
      }
    });
    if (s.y_out) copy_row(s.y_out + n * s.ld_yo, ho, H);
  });
}

// Recompute: the cell state is not saved as the forward computed it (zoneout saves the zoned one), so
// it is rebuilt from the saved gates and c_prev with the forward's expression.
template <typename T, bool Recompute, bool Clip = false>
static void lstm_backward_rows(const StepBackward<T>& s) {
  static_assert(Recompute || !Clip, "clipping recomputes the unclipped cell state");
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    if (is_masked(s, n)) return pass_through(s, n);
    const T* dy = s.dy + n * s.ld_dy;
    T* dh = s.dh + n * s.ld_dh;
    T* dc = s.dc + n * s.ld_dc;
    const T* g = s.gates + n * s.ld_g;
    const T* c = Recompute ? nullptr : s.c + n * s.ld_c;
    const T* cp = s.c_prev + n * s.ld_cp;
    T* dg = s.dg + n * s.ld_dg;
    const T lo = s.clip_lo, hi = s.clip_hi;
    const bool nan_to_lo = s.clip_nan;
    with_act(s.act, [&](auto A) {
      using Act = decltype(A);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        T gi = g[j], gf = g[H + j], gg = g[2 * H + j], go = g[3 * H + j];
        T dhv = dy[j] + dh[j];
        dh[j] = T(0);  // all of dh_{t-1} comes through W_hh
        T cv;
        bool pass = true;
        if constexpr (Recompute) {
          cv = g[H + j] * cp[j] + g[j] * g[2 * H + j];
          if constexpr (Clip) {
            pass = clip_pass(cv, lo, hi, nan_to_lo);
            cv = clip_state(cv, lo, hi, nan_to_lo);
          }
        } else {
          cv = c[j];
        }
        T ac = Act::f(cv);
        T dcv = dc[j] + dhv * go * Act::d(ac);
        dcv = pass ? dcv : T(0);
        dc[j] = dcv * gf;
        dg[j] = dcv * gg;
        dg[H + j] = dcv * cp[j];
        dg[2 * H + j] = dcv * gi * Act::d(gg);
        dg[3 * H + j] = dhv * ac;
      }
    });
    with_act(s.rec, [&](auto R) {
      using Rec = decltype(R);
      scale_by_derivative<Rec>(dg, g, H);
      scale_by_derivative<Rec>(dg + H, g + H, H);
      scale_by_derivative<Rec>(dg + 3 * H, g + 3 * H, H);
    });
  });
}

template <typename T>
static void lstm_backward(const StepBackward<T>& s) {
  if (s.clip) {
    lstm_backward_rows<T, true, true>(s);
  } else if (s.c) {
    lstm_backward_rows<T, false>(s);
  } else {
    lstm_backward_rows<T, true>(s);
  }
}

// ---- GRU, reset after (cuDNN / PyTorch / Keras default) --------------------------------------------
// Saved gates [r, z, n, hn] with hn = W_hn h + b_hn. Gate-gradient row [dr, dz, dhn, dn], so that the
// recurrent part (dr, dz, dhn) is contiguous for the per-step GEMM; the input part is (dr, dz) and dn.
template <typename T, bool Train>
static void gru_forward(const StepForward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    if (is_masked(s, n)) return keep_state(s, n);
    T* g = s.gx + n * s.ld_gx;
    const T* gh = s.gh + n * s.ld_gh;
    const T* b = s.bias;
    const T* bhn = s.bias + 3 * H;
    const T* hp = s.h_prev + n * s.ld_hp;
    T* ho = s.h_out + n * s.ld_ho;
    with_act(s.rec, [&](auto R) {
      using Rec = decltype(R);
      gate_block<Rec>(g, g, gh, b, 2 * H);
    });
    with_act(s.act, [&](auto A) {
      using Act = decltype(A);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        T hn = gh[2 * H + j] + bhn[j];
        T nn = Act::f(g[2 * H + j] + b[2 * H + j] + g[j] * hn);
        ho[j] = nn + g[H + j] * (hp[j] - nn);
        g[2 * H + j] = nn;
        if constexpr (Train) g[3 * H + j] = hn;
      }
    });
    if (s.y_out) copy_row(s.y_out + n * s.ld_yo, ho, H);
  });
}

template <typename T>
static void gru_backward(const StepBackward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    if (is_masked(s, n)) return pass_through(s, n);
    const T* dy = s.dy + n * s.ld_dy;
    T* dh = s.dh + n * s.ld_dh;
    const T* g = s.gates + n * s.ld_g;
    const T* hp = s.h_prev + n * s.ld_hp;
    T* dg = s.dg + n * s.ld_dg;
    with_act(s.act, [&](auto A) {
      using Act = decltype(A);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        T r = g[j], z = g[H + j], nn = g[2 * H + j], hn = g[3 * H + j];
        T dhv = dy[j] + dh[j];
        T dn = dhv * (T(1) - z) * Act::d(nn);
        dh[j] = dhv * z;
        dg[j] = dn * hn;
        dg[H + j] = dhv * (hp[j] - nn);
        dg[2 * H + j] = dn * r;
        dg[3 * H + j] = dn;
      }
    });
    with_act(s.rec, [&](auto R) {
      using Rec = decltype(R);
      scale_by_derivative<Rec>(dg, g, 2 * H);
    });
  });
}

// ---- GRU, reset before (Keras reset_after=False, ONNX default) --------------------------------------
// Part 1 computes r, z and r*h; the executor then runs the n-gate's recurrent GEMM (r*h) W_hn^T into
// the gh row's n block; part 2 computes n and h. The folded bias holds b_in + b_hn for n. Saved gates
// [r, z, n, r*h]; gate-gradient row [dr, dz, dn, -], input and recurrent parts both (dr, dz, dn).
template <typename T, bool Train>
static void gru_rb_forward1(const StepForward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    if (is_masked(s, n)) return keep_state(s, n);
    T* g = s.gx + n * s.ld_gx;
    const T* hr = s.h_rec + n * s.ld_hrec;
    T* rh = s.rh + n * s.ld_rh;
    with_act(s.rec, [&](auto R) {
      using Rec = decltype(R);
      gate_block<Rec>(g, g, s.gh + n * s.ld_gh, s.bias, 2 * H);
    });
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) rh[j] = g[j] * hr[j];
  });
}

template <typename T>
static void gru_rb_forward2(const StepForward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    if (is_masked(s, n)) return;
    T* g = s.gx + n * s.ld_gx;
    const T* gh = s.gh + n * s.ld_gh;
    const T* hp = s.h_prev + n * s.ld_hp;
    T* ho = s.h_out + n * s.ld_ho;
    with_act(s.act, [&](auto A) {
      using Act = decltype(A);
      gate_block<Act>(g + 2 * H, g + 2 * H, gh + 2 * H, s.bias + 2 * H, H);
    });
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T nn = g[2 * H + j];
      ho[j] = nn + g[H + j] * (hp[j] - nn);
    }
    if (s.y_out) copy_row(s.y_out + n * s.ld_yo, ho, H);
  });
}

// Part 1: dn, the z gradient (before the gate derivative) and the direct term z*dh, before the
// executor's GEMM d(r*h) = dn W_hn.
template <typename T>
static void gru_rb_backward1(const StepBackward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    if (is_masked(s, n)) return pass_through(s, n);
    const T* dy = s.dy + n * s.ld_dy;
    T* dh = s.dh + n * s.ld_dh;
    const T* g = s.gates + n * s.ld_g;
    const T* hp = s.h_prev + n * s.ld_hp;
    T* dg = s.dg + n * s.ld_dg;
    with_act(s.act, [&](auto A) {
      using Act = decltype(A);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        T z = g[H + j], nn = g[2 * H + j];
        T dhv = dy[j] + dh[j];
        dh[j] = dhv * z;
        dg[H + j] = dhv * (hp[j] - nn);
        dg[2 * H + j] = dhv * (T(1) - z) * Act::d(nn);
      }
    });
  });
}

// Part 2: with d(r*h) known, the r gradient and the path of dh through r*h; then both gate
// derivatives.
template <typename T>
static void gru_rb_backward2(const StepBackward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    if (is_masked(s, n)) return;
    T* dh = s.dh + n * s.ld_dh;
    const T* g = s.gates + n * s.ld_g;
    const T* hr = s.h_rec + n * s.ld_hrec;
    const T* drh = s.drh + n * s.ld_drh;
    T* dg = s.dg + n * s.ld_dg;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dg[j] = drh[j] * hr[j];
    if (s.rec_mask) {
      const T* m = s.rec_mask + n * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) dh[j] += drh[j] * g[j] * m[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) dh[j] += drh[j] * g[j];
    }
    with_act(s.rec, [&](auto R) {
      using Rec = decltype(R);
      scale_by_derivative<Rec>(dg, g, 2 * H);
    });
  });
}

// ---- vanilla RNN ------------------------------------------------------------------------------------
// Training saves the new h in the gate row as well (backward needs it; the state rows may hold a
// zoned value instead).
template <typename T, bool Train>
static void rnn_forward(const StepForward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    if (is_masked(s, n)) return keep_state(s, n);
    T* ho = s.h_out + n * s.ld_ho;
    T* g = s.gx + n * s.ld_gx;
    with_act(s.act, [&](auto A) { gate_block<decltype(A)>(ho, g, s.gh + n * s.ld_gh, s.bias, H); });
    if constexpr (Train) copy_row(g, ho, H);
    if (s.y_out) copy_row(s.y_out + n * s.ld_yo, ho, H);
  });
}

template <typename T>
static void rnn_backward(const StepBackward<T>& s) {
  const int64_t H = s.H;
  for_rows(s.N, [&](int64_t n) {
    if (is_masked(s, n)) return pass_through(s, n);
    const T* dy = s.dy + n * s.ld_dy;
    T* dh = s.dh + n * s.ld_dh;
    const T* h = s.gates + n * s.ld_g;
    T* dg = s.dg + n * s.ld_dg;
    with_act(s.act, [&](auto A) {
      using Act = decltype(A);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        dg[j] = (dy[j] + dh[j]) * Act::d(h[j]);
        dh[j] = T(0);  // all of dh_{t-1} comes through W_hh
      }
    });
  });
}

// ---- zoneout and residual ---------------------------------------------------------------------------
// Forward, after the cell's step: the output y = keep_o ? h_new : y_prev (zoneout outputs, else h_new),
// the layer output y (+ x), then the states blended in place: h = keep_h ? h_new : h_prev, and
// likewise c with its own mask. Each mask element is one counter-based uniform (not vectorised; the
// cost is only paid when zoneout is on).
template <typename T>
static void zone_forward(const StepZone<T>& s) {
  const int64_t H = s.H;
  const bool zo = s.p_out > 0.0f, zs = s.p_state > 0.0f;
  for_rows(s.N, [&](int64_t n) {
    T* h = s.h + n * s.ld_h;
    const T* hp = s.h_prev + n * s.ld_hp;
    T* out = s.out + n * s.ld_out;
    const T* x = s.x ? s.x + n * s.ld_x : nullptr;
    const uint64_t i0 = s.index0 + static_cast<uint64_t>(n * H);
    if (zo) {
      T* y = s.y + n * H;
      const T* yp = s.y_prev + n * s.ld_yp;
      for (int64_t j = 0; j < H; ++j)
        y[j] = uniform01_key(s.key_o, i0 + j) >= s.p_out ? h[j] : yp[j];
      if (x) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) out[j] = y[j] + x[j];
      } else {
        copy_row(out, y, H);
      }
    } else if (x) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) out[j] = h[j] + x[j];
    } else {
      copy_row(out, h, H);
    }
    if (s.out2) copy_row(s.out2 + n * s.ld_out2, out, H);
    if (zs) {
      for (int64_t j = 0; j < H; ++j)
        if (uniform01_key(s.key_h, i0 + j) < s.p_state) h[j] = hp[j];
      if (s.c) {
        T* c = s.c + n * s.ld_c;
        const T* cp = s.c_prev + n * s.ld_cp;
        for (int64_t j = 0; j < H; ++j)
          if (uniform01_key(s.key_c, i0 + j) < s.p_state) c[j] = cp[j];
      }
    }
  });
}

// Backward, before the cell's step: splits the output gradient (plus the carry from later outputs)
// into the part reaching h_new (dk) and the part carried to the previous output; splits dh and dc into
// the part reaching the new state and the part that skips to the previous one.
template <typename T>
static void zone_backward(const StepZone<T>& s) {
  const int64_t H = s.H;
  const bool zo = s.p_out > 0.0f, zs = s.p_state > 0.0f;
  for_rows(s.N, [&](int64_t n) {
    const uint64_t i0 = s.index0 + static_cast<uint64_t>(n * H);
    if (zo) {
      const T* d = s.dout + n * s.ld_dout;
      T* carry = s.carry + n * H;
      T* dk = s.dk + n * H;
      for (int64_t j = 0; j < H; ++j) {
        const T g = d[j] + carry[j];
        const bool keep = uniform01_key(s.key_o, i0 + j) >= s.p_out;
        dk[j] = keep ? g : T(0);
        carry[j] = keep ? T(0) : g;
      }
    }
    if (zs) {
      // A zoned-out element's gradient skips the cell to the previous state; a kept one goes in.
      auto split = [&](uint64_t key, T* d, T* skip) {
        for (int64_t j = 0; j < H; ++j) {
          const bool keep = uniform01_key(key, i0 + j) >= s.p_state;
          skip[j] = keep ? T(0) : d[j];
          d[j] = keep ? d[j] : T(0);
        }
      };
      split(s.key_h, s.dh + n * H, s.skip_h + n * H);
      if (s.dc) split(s.key_c, s.dc + n * H, s.skip_c + n * H);
    }
  });
}

// ---- tables ---------------------------------------------------------------------------------------
template <typename T>
static CellFns<T> fns_for(CellKind kind) {
  CellFns<T> f;
  switch (kind) {
    case CellKind::kLstm:
      f.forward_infer = &lstm_forward<T, false>;
      f.forward_train = &lstm_forward<T, true>;
      f.backward = &lstm_backward<T>;
      break;
    case CellKind::kGru:
      f.forward_infer = &gru_forward<T, false>;
      f.forward_train = &gru_forward<T, true>;
      f.backward = &gru_backward<T>;
      break;
    case CellKind::kGruResetBefore:
      f.forward_infer = &gru_rb_forward1<T, false>;
      f.forward_train = &gru_rb_forward1<T, true>;
      f.forward2 = &gru_rb_forward2<T>;
      f.backward = &gru_rb_backward1<T>;
      f.backward2 = &gru_rb_backward2<T>;
      break;
    case CellKind::kRnn:
      f.forward_infer = &rnn_forward<T, false>;
      f.forward_train = &rnn_forward<T, true>;
      f.backward = &rnn_backward<T>;
      break;
  }
  f.zone_forward = &zone_forward<T>;
  f.zone_backward = &zone_backward<T>;
  return f;
}

static const CellKernels* table(CellKind kind, const char* isa) {
  static const CellKernels tables[4] = {
      {isa, fns_for<float>(CellKind::kLstm), fns_for<double>(CellKind::kLstm)},
      {isa, fns_for<float>(CellKind::kGru), fns_for<double>(CellKind::kGru)},
      {isa, fns_for<float>(CellKind::kGruResetBefore), fns_for<double>(CellKind::kGruResetBefore)},
      {isa, fns_for<float>(CellKind::kRnn), fns_for<double>(CellKind::kRnn)},
  };
  return &tables[static_cast<int>(kind)];
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
