// fusedrnn/cuda.h: the CUDA backend's C++ API (built when a CUDA toolkit is found; see
// docs/architecture.md, "CUDA backend").
//
// Data are device pointers in the flat parameter layout of fusedrnn.h and dense row-major rows:
//   x (rows, C), y (rows, D*S), dx, dy likewise (S: desc.state_size(), H or proj_size); rows = T*N time-major (row t*N + n), or, for a plan
//   made with lengths, PyTorch's PackedSequence order (step t's rows are the batch[t] longest samples
//   in rank order, starting at row offsets[t]);
//   states hx, hy, dhy, dhx: (L*D, N, S) and cx, cy, dcy, dcx: (L*D, N, H) contiguous, samples in the same order as
//   the rows (rank order with lengths: the caller applies PackedSequence.sorted_indices).
// Work runs on the given stream (cudaStream_t as void*; null is the legacy default stream) of the
// given device; a call never synchronises the device or the stream. Nothing is allocated by a call:
// the caller passes plan.workspace_bytes of scratch and, for training, plan.reserve_bytes kept from
// forward to the backward calls (backward_data writes gate gradients into the reserve, which
// backward_weights reads; dw is accumulated into, +=).
//
// Coverage: modes lstm (with projection: states and outputs P = proj_size wide, c H wide), gru
// (reset after or before), rnn_tanh, rnn_relu; every activation; layers, bidirectional, lengths;
// float32 and float64. Masks, dropout, zoneout and residual are CPU-only for now: make_plan
// rejects them with a ValueError naming the option.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fusedrnn/fusedrnn.h"

namespace fusedrnn {
namespace cuda {

// Whether the CUDA backend was compiled in and a device can be used; the reason when not.
bool available(std::string* why = nullptr);
int device_count();

// How a forward runs each (layer, direction):
//   kStep: per step one cuBLAS GEMM (h W_hh^T) and one fused pointwise kernel;
//   kPersistent: one cooperative kernel for all steps, W_hh held in registers across steps, one
//   grid-wide barrier per step (small batches; plans fall back to kStep where it does not fit).
enum class Algo { kAuto, kStep, kPersistent };
Algo parse_algo(const std::string& name);  // "auto" | "step" | "persistent"
std::string algo_name(Algo algo);

struct CudaPlan {
  RnnDesc desc;
  int64_t T = 0, N = 0;
  bool training = false;
  int device = 0;
  std::vector<int64_t> lengths;  // sorted descending; empty without lengths
  std::vector<int64_t> batch;    // (T) rows of each step
  std::vector<int64_t> offsets;  // (T + 1) first row of each step
  int64_t rows = 0;              // offsets[T]
  int gate_slots = 0;            // reserve gate row width in units of H (LSTM 4, GRU 4, RNN 1)

  // float32 GEMMs on TF32 tensor cores (what cuDNN does for float32 RNNs under PyTorch's default
  // torch.backends.cudnn.allow_tf32 = True); false: plain float32 arithmetic.
  bool tf32 = false;
  Algo algo = Algo::kStep;       // resolved: kStep or kPersistent
  // Persistent kernel geometry: blocks of `p_units` hidden units (all gates of each), `p_rpw`
  // weight rows per warp, `p_kch` K-chunks of 32 per lane (W_hh registers = p_rpw * p_kch).
  int p_units = 0, p_blocks = 0, p_rpw = 0, p_kch = 0;
  std::size_t p_smem = 0;
  // The persistent backward (the same blocks): `pb_rs` rows of W_hh per thread, `pb_um` >= U
  // columns, gate gradients staged `pb_nch` rows at a time; pb_nch == 0: backward runs the step path.
  int pb_rs = 0, pb_um = 0, pb_nch = 0;
  std::size_t pb_smem = 0;

  // Byte offsets (256-byte aligned) into the reserve: per layer the output (rows, D*H); per
  // (layer, dir) stream the saved gates (rows, gate_slots*H), LSTM cell states and previous cell
  // states (rows, H), the previous hidden states (rows, H), the gate gradients (rows, gate_slots*H).
  struct ReserveMap {
    std::vector<int64_t> out, gates, cell, cprev, hprev, grads;
    std::vector<int64_t> hraw, dproj;  // projection: o*act(c) (rows, H) and dh (rows, P)
  } reserve;
  // Byte offsets into the workspace (-1: not used by this plan).
  struct WorkspaceMap {
    int64_t gx = -1;                // inference: input projection (rows, G*H)
    int64_t gh = -1;                // one step's recurrent projection (N, G*H)
    int64_t hcur = -1, ccur = -1;   // running state (N, H); backward: running dh, dc
    int64_t rh = -1;                // GRU reset-before: r*h, or d(r*h) (N, H)
    int64_t hraw = -1;              // projection: one step's o*act(c), or its gradient (N, H)
    int64_t inter[2] = {-1, -1};    // inter-layer outputs (inference) / gradients (backward) (rows, D*H)
    int64_t ones = -1;              // backward_weights: a column of ones (rows)
    int64_t hbuf = -1;              // persistent: double-buffered h (2, N, H)
    int64_t offsets = -1;           // persistent with lengths: the row offsets (T + 1 int64)
  } ws;
  std::size_t workspace_bytes = 0;
  std::size_t reserve_bytes = 0;

  int64_t stream_index(int64_t layer, int dir) const { return layer * desc.directions() + dir; }
};

// lengths: empty, or N per-sample lengths in [0, T] (any order; kept sorted descending). The data
// of a plan with lengths are packed rows (see above). device: the CUDA device the calls run on.
CudaPlan make_plan(const RnnDesc& desc, int64_t T, int64_t N, bool training,
                   const std::vector<int64_t>& lengths = {}, int device = 0,
                   Algo algo = Algo::kAuto, bool tf32 = false);

struct ForwardArgs {
  const void* x = nullptr;   // (rows, C)
  const void* w = nullptr;   // flat parameters
  const void* hx = nullptr;  // optional (L*D, N, H)
  const void* cx = nullptr;  // optional (L*D, N, H), LSTM
  void* y = nullptr;         // (rows, D*H)
  void* hy = nullptr;        // optional
  void* cy = nullptr;        // optional, LSTM
  void* workspace = nullptr;
  void* reserve = nullptr;   // training
  void* stream = nullptr;
};
struct BackwardDataArgs {
  const void* dy = nullptr;   // optional (rows, D*H)
  const void* dhy = nullptr;  // optional (L*D, N, H)
  const void* dcy = nullptr;  // optional, LSTM
  const void* w = nullptr;
  void* dx = nullptr;         // (rows, C)
  void* dhx = nullptr;        // optional
  void* dcx = nullptr;        // optional, LSTM
  void* workspace = nullptr;
  void* reserve = nullptr;
  void* stream = nullptr;
};
struct BackwardWeightsArgs {
  const void* x = nullptr;  // as given to forward
  void* dw = nullptr;       // flat parameter gradient, accumulated into
  void* workspace = nullptr;
  const void* reserve = nullptr;
  void* stream = nullptr;
};

void forward(const CudaPlan& plan, const ForwardArgs& args);
void backward_data(const CudaPlan& plan, const BackwardDataArgs& args);
void backward_weights(const CudaPlan& plan, const BackwardWeightsArgs& args);

}  // namespace cuda
}  // namespace fusedrnn
