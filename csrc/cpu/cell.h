// cpu/cell.h: the fused pointwise step of each cell type, forward and backward, for the CPU backend.
//
// One call processes one time step of one (layer, direction) for N rows: it adds the input projection,
// the recurrent projection and the biases, applies the activations, updates the state and, when
// training, saves what backward needs. The GEMMs around it live in the executor. Every (N, H)-shaped
// argument is a row pointer plus a row stride (ld); a stride of 0 repeats one row, which is how a zero
// initial state is passed without materialising it. Kernels are compiled once per instruction set
// (AVX2+FMA and a baseline) and chosen once per plan at run time.
#pragma once

#include <cstdint>

#include "fusedrnn/fusedrnn.h"
#include "fusedrnn/random.h"

namespace fusedrnn {

template <typename T>
struct StepForward {
  int64_t N = 0, H = 0;
  Activation act = Activation::kTanh;      // cell activation
  Activation rec = Activation::kSigmoid;   // gate activation
  T* gx = nullptr;           int64_t ld_gx = 0;  // in: (N, G*H) input projection, no bias;
                                                 // out: gate activations in place (saved gates)
  const T* gh = nullptr;     int64_t ld_gh = 0;  // (N, G*H) recurrent projection, no bias
  const T* bias = nullptr;                       // (G*H) folded biases; GRU: then (H) recurrent n-bias
  const T* h_prev = nullptr; int64_t ld_hp = 0;  // (N, H) previous hidden state (read by GRU)
  const T* c_prev = nullptr; int64_t ld_cp = 0;  // (N, H) previous cell state (LSTM)
  T* h_out = nullptr;        int64_t ld_ho = 0;  // (N, H) new hidden state
  T* y_out = nullptr;        int64_t ld_yo = 0;  // optional second copy of the new hidden state
  T* c_out = nullptr;        int64_t ld_co = 0;  // (N, H) new cell state (LSTM); may alias c_prev
  T* rh = nullptr;           int64_t ld_rh = 0;  // GRU reset-before: (N, H) r*h_rec, out of part 1
  const T* h_rec = nullptr;  int64_t ld_hrec = 0; // GRU reset-before: the h the recurrent product
                                                  // sees (h_prev, or it with recurrent dropout)
  const uint8_t* mask = nullptr; int64_t ld_mask = 0;  // optional (N): 0 = keep the previous state
  bool zero_masked_output = false;               // masked rows write 0 to y_out instead of the state
  bool proj = false;  // LSTM projection: h_out is o*act(c) (H wide) before W_hr, the executor keeps
                      // masked rows' h; the kernel writes zeros there (h_prev is P wide)
  bool clip = false;  // LSTM state clipping (RnnDesc::clip_state): c_out in [clip_lo, clip_hi]
  bool clip_nan = false;
  T clip_lo = T(0), clip_hi = T(0);
};

template <typename T>
struct StepBackward {
  int64_t N = 0, H = 0;
  Activation act = Activation::kTanh;
  Activation rec = Activation::kSigmoid;
  const T* dy = nullptr;     int64_t ld_dy = 0;  // (N, H) gradient from this step's output
  T* dh = nullptr;           int64_t ld_dh = 0;  // in: dh from the later step; out: the part of
                                                 // dh_{t-1} not through W_hh (GRU z*dh; masked: dh)
  T* dc = nullptr;           int64_t ld_dc = 0;  // LSTM in: dc from the later step; out: dc earlier
  const T* gates = nullptr;  int64_t ld_g = 0;   // saved gates of this step
  const T* c = nullptr;      int64_t ld_c = 0;   // LSTM: this step's cell state (null: recompute
                                                 // it from the gates and c_prev; with zoneout the
                                                 // saved cell state is the zoned one)
  const T* c_prev = nullptr; int64_t ld_cp = 0;  // LSTM: the previous cell state
  const T* h_prev = nullptr; int64_t ld_hp = 0;  // GRU: the previous hidden state
  const T* drh = nullptr;    int64_t ld_drh = 0; // GRU reset-before part 2: d(r*h) = dn W_hn
  const T* h_rec = nullptr;  int64_t ld_hrec = 0; // GRU reset-before part 2: h as the product saw it
  const T* rec_mask = nullptr;                    // GRU reset-before part 2: (N, H) recurrent
                                                  // dropout mask (null: none), row stride H
  T* dg = nullptr;           int64_t ld_dg = 0;  // out: pre-activation gate gradients, slots*H per row
  int64_t slots = 0;                             // row width of dg in units of H (zeroed when masked)
  const uint8_t* mask = nullptr; int64_t ld_mask = 0;
  bool zero_masked_output = false;               // masked rows ignore dy (their output was 0)
  bool clip = false;  // LSTM state clipping: the kernel recomputes the unclipped c (c is ignored)
  bool clip_nan = false;                          // and passes dc only where it was inside
  T clip_lo = T(0), clip_hi = T(0);
};

// Zoneout and residual around one step of any cell type (forward: after the cell's step, on the rows
// it just wrote; backward: before the cell's step). Masks are drawn from the stream keys per element
// (fusedrnn/random.h), index0 + n*H + j for row n. A probability of 0 disables that zoneout.
template <typename T>
struct StepZone {
  int64_t N = 0, H = 0;
  float p_out = 0.0f, p_state = 0.0f;
  uint64_t key_h = 0, key_c = 0, key_o = 0, index0 = 0;
  // forward
  T* h = nullptr;            int64_t ld_h = 0;   // in: the cell's new h; out: zoned h
  const T* h_prev = nullptr; int64_t ld_hp = 0;
  T* c = nullptr;            int64_t ld_c = 0;   // LSTM: in the new c, out zoned c
  const T* c_prev = nullptr; int64_t ld_cp = 0;
  T* y = nullptr;                                // zoneout outputs: (N, H) this step's output
  const T* y_prev = nullptr; int64_t ld_yp = 0;  // zoneout outputs: the previous output
  T* out = nullptr;          int64_t ld_out = 0; // the layer output row: y (+ x)
  T* out2 = nullptr;         int64_t ld_out2 = 0; // optional copy of it
  const T* x = nullptr;      int64_t ld_x = 0;   // residual: the input slice added to the output
  // backward (N, H) rows, stride H except dout
  const T* dout = nullptr;   int64_t ld_dout = 0; // gradient of this step's output
  T* carry = nullptr;        // zoneout outputs: gradient reaching this step's output from later steps
  T* dk = nullptr;           // out: the output path's gradient of the cell's new h
  T* dh = nullptr;           // in: gradient of the zoned h; out: the part reaching the new h
  T* dc = nullptr;           // LSTM likewise for c
  T* skip_h = nullptr;       // out: the part of dh that goes to h_{t-1} unchanged
  T* skip_c = nullptr;
};

// One cell type's step functions. GRU reset-before splits each direction into two parts around a
// second GEMM (the n-gate's recurrent product needs r first); the others leave part 2 null.
template <typename T>
struct CellFns {
  void (*forward_infer)(const StepForward<T>&) = nullptr;
  void (*forward_train)(const StepForward<T>&) = nullptr;
  void (*forward2)(const StepForward<T>&) = nullptr;
  void (*backward)(const StepBackward<T>&) = nullptr;
  void (*backward2)(const StepBackward<T>&) = nullptr;
  void (*zone_forward)(const StepZone<T>&) = nullptr;
  void (*zone_backward)(const StepZone<T>&) = nullptr;
};

struct CellKernels {
  const char* isa = "";
  CellFns<float> f32;
  CellFns<double> f64;

  template <typename T>
  const CellFns<T>& get() const {
    if constexpr (sizeof(T) == 4) {
      return f32;
    } else {
      return f64;
    }
  }
};

namespace cpu {
// The kinds of cell with kernels of their own (the RNN activations are a run-time choice).
enum class CellKind { kLstm, kGru, kGruResetBefore, kRnn };
CellKind cell_kind(const RnnDesc& desc);

// Chooses the instruction set once per process (AVX2+FMA when the CPU has it).
const CellKernels* select_cell_kernels(CellKind kind);
const char* simd_level();
// Whether the AVX2+FMA code paths are used (the CPU has them, the build has them, and
// FUSEDRNN_FORCE_BASELINE is not set); decided once per process.
bool use_avx2();

// Per-ISA tables, defined in cell_avx2.cpp and cell_generic.cpp.
const CellKernels* cell_kernels_avx2(CellKind kind);
const CellKernels* cell_kernels_generic(CellKind kind);
void activations_avx2(const float* x, float* sigmoid, float* tanh, int64_t n);
void activations_generic(const float* x, float* sigmoid, float* tanh, int64_t n);

// The float32 activations of the selected instruction set, over an array (for accuracy tests).
void eval_activations(const float* x, float* sigmoid, float* tanh, int64_t n);
}  // namespace cpu

}  // namespace fusedrnn
