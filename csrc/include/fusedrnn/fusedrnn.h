// fusedrnn/fusedrnn.h: the public, framework-free C++ API of the fusedrnn core.
//
// General notes (shape letters used everywhere):
//   T  time steps            N  batch size            C  input features of layer 0
//   H  hidden units          G  gates (LSTM 4, GRU 3, RNN 1)    L  layers    D  directions (1 or 2)
// Sequences are addressed as a grid of rows (t, n) with element strides (stride_t, stride_n); the
// feature dimension is always contiguous. A time-major (T, N, C) array has strides (N*C, C), a
// batch-major (N, T, C) one (C, T*C): both are used in place, without a copy.
//
// Usage: make a Plan once per (description, T, N, training), allocate plan.workspace_bytes and, when
// training, plan.reserve_bytes, then call forward / backward_data / backward_weights. The reserve holds
// what backward needs and must be passed unchanged from forward to the backward calls; backward_data
// writes gate gradients into its gradient area, which backward_weights then reads. The workspace is
// scratch and may be reused between calls. Nothing is allocated inside these calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fusedrnn/errors.h"

namespace fusedrnn {

enum class Mode { kLstm, kGru, kRnnTanh, kRnnRelu };
// Activations selectable for the cell (`activation`: LSTM g and c, GRU n, RNN h) and the gates
// (`recurrent_activation`: LSTM i, f, o; GRU r, z). hard_sigmoid is Keras 3's: clip(x/6 + 1/2, 0, 1);
// softrelu is MXNet's log(1 + e^x) (softplus), softsign x / (1 + |x|).
enum class Activation { kTanh, kSigmoid, kHardSigmoid, kRelu, kLinear, kSoftrelu, kSoftsign };
enum class DType { kFloat32, kFloat64 };
// kLoop: the while-loop executor (a run-time loop over steps, one (layer, direction) after another);
// kUnrolled: the fully unrolled executor (the whole schedule materialised in the plan, independent
// (layer, direction) streams run concurrently on lanes of threads). See docs/architecture.md.
enum class ExecutorKind { kLoop, kUnrolled };
ExecutorKind parse_executor(const std::string& name);  // "loop" | "unrolled"
std::string executor_name(ExecutorKind kind);
// Lanes (concurrent streams) the unrolled executor may use: the machine's hardware threads, or
// FUSEDRNN_LANES when set.
int64_t lane_count();
// The threads fusedrnn's GEMMs are split over (the process's OpenMP team; OpenBLAS itself runs
// single-threaded). set_num_threads(n >= 1) pins n; 0 (the default) follows omp_get_max_threads(),
// which OMP_NUM_THREADS sets and, in a process with torch, torch.set_num_threads.
int num_threads();
void set_num_threads(int n);

Mode parse_mode(const std::string& name);    // "lstm" | "gru" | "rnn_tanh" | "rnn_relu"
std::string mode_name(Mode mode);
DType parse_dtype(const std::string& name);  // "float32" | "float64"
std::string dtype_name(DType dtype);
std::size_t dtype_size(DType dtype);
int num_gates(Mode mode);  // G
// "tanh" | "sigmoid" | "hard_sigmoid" | "relu" | "linear" | "softrelu" | "softsign"
Activation parse_activation(const std::string& name);
std::string activation_name(Activation act);
Activation default_activation(Mode mode);  // relu for rnn_relu, tanh otherwise

// What the network is; independent of T and N.
struct RnnDesc {
  Mode mode = Mode::kLstm;
  int64_t input_size = 0;   // C
  int64_t hidden_size = 0;  // H
  int64_t num_layers = 1;   // L
  bool bidirectional = false;
  DType dtype = DType::kFloat32;
  Activation activation = Activation::kTanh;
  Activation recurrent_activation = Activation::kSigmoid;
  // GRU only. true: n = act(W_in x + b_in + r*(W_hn h + b_hn)) (cuDNN, PyTorch, Keras default);
  // false: n = act(W_in x + b_in + W_hn (r*h) + b_hn) (Keras reset_after=False, ONNX default).
  bool reset_after = true;
  // LSTM only (PyTorch proj_size, LSTMP): 0 for none, else P in [1, H): the hidden state is
  // h = W_hr (o * act(c)), (N, P); W_hh is (4H, P); outputs and h0/hN are P wide, c stays H wide.
  int64_t proj_size = 0;
  // With a mask, a masked step keeps the previous state; its output is that state (Keras default)
  // or, with zero_masked_output, zero (Keras zero_output_for_mask=True).
  bool zero_masked_output = false;
  // Variational dropout (Keras semantics), applied in training only: one mask per sequence for each
  // layer's input (N, C_in) and one for the recurrent state (N, H) before W_hh, per layer and
  // direction, drawn from (seed, position) by fusedrnn/random.h; inverted scaling 1/(1 - rate).
  double dropout = 0.0;
  double recurrent_dropout = 0.0;
  // Per-gate masks (Keras 3's LSTM/GRU with recurrent_dropout > 0, implementation=1): G input masks
  // and G recurrent masks per layer and direction, gate k's W_ih block seeing x * mx_k and its W_hh
  // block h * mh_k (GRU reset-before: n's product sees r * (h * mh_n)).
  bool dropout_per_gate = false;
  // Zoneout (MXNet ZoneoutCell, Krueger et al. 2016), training only: per step and element, the state
  // (h, and c for LSTM, independently) keeps its previous value with probability zoneout_states, and
  // the output keeps the previous step's output (zero before the first) with probability
  // zoneout_outputs; the output is otherwise the cell's new h, before state zoneout. No scaling.
  // Masks come from (seed, position) like dropout's.
  double zoneout_outputs = 0.0;
  double zoneout_states = 0.0;
  // Residual (MXNet ResidualCell): each layer's output is its (zoned) output plus its input, direction
  // d adding input features [d*H, (d+1)*H); needs input_size == directions * hidden_size. The
  // recurrence runs on the states, without the sum.
  bool residual = false;
  // LSTM state clipping (MXNet's lstm_state_clip_min / _max / _nan, cuDNN's RNN clip): with
  // clip_state, each step's new cell state is clipped to [clip_min, clip_max] before h = o*act(c)
  // is computed from it and before it carries on to the next step; its gradient passes only where
  // the unclipped value lay inside [clip_min, clip_max]. NaN propagates unless clip_nan, which turns
  // a NaN cell state into clip_min (as fmin(fmax(c, clip_min), clip_max) would; no gradient there).
  bool clip_state = false;
  double clip_min = 0.0, clip_max = 0.0;
  bool clip_nan = false;

  bool zoneout() const { return zoneout_outputs > 0.0 || zoneout_states > 0.0; }
  // Dropout masks of each kind per (layer, direction): one per gate with dropout_per_gate, else 1.
  int64_t dropout_mask_count() const { return dropout_per_gate ? num_gates(mode) : 1; }
  // Whether a layer's output differs from its hidden state, so the states need rows of their own.
  bool separate_states(bool training) const { return residual || (training && zoneout()); }
  bool gru_reset_before() const { return mode == Mode::kGru && !reset_after; }
  int directions() const { return bidirectional ? 2 : 1; }
  // The width of h (and of each direction's output): proj_size when projecting, else H.
  int64_t state_size() const { return proj_size > 0 ? proj_size : hidden_size; }
  int64_t layer_input_size(int64_t layer) const {
    return layer == 0 ? input_size : directions() * state_size();
  }
};
void validate(const RnnDesc& desc);  // throws ValueError naming the bad field

// ---- Flat weight layout (MXNet FusedRNNCell order) -------------------------------------------------
// All weight matrices first: for each layer, for each direction (forward, then reverse): the i2h block
// (G*H, C_in) then the h2h block (G*H, S) (S = state_size()), and with a projection the h2r block
// (P, H); row-major, rows gate-major. Then all biases in the same order: i2h (G*H,), h2h (G*H,).
struct ParamPiece {
  int64_t layer;
  int direction;    // 0 forward, 1 reverse
  bool is_bias;     // false: weight matrix, true: bias vector
  bool is_h2h;      // false: i2h (input-to-hidden), true: h2h (hidden-to-hidden)
  bool is_h2r;      // the projection (hidden-to-recurrent, P x H); is_h2h is false then
  int64_t offset;   // in elements, into the flat vector
  int64_t rows;     // G*H
  int64_t cols;     // C_in or H for weights, 1 for biases
};
int64_t param_count(const RnnDesc& desc);
std::vector<ParamPiece> param_layout(const RnnDesc& desc);
// Offsets of the four pieces of one (layer, direction).
struct LayerParams {
  int64_t w_ih, w_hh, b_ih, b_hh;
  int64_t w_hr = -1;  // the projection, -1 without one
};
LayerParams layer_param_offsets(const RnnDesc& desc, int64_t layer, int direction);

// ---- Plans ------------------------------------------------------------------------------------------
struct CellKernels;  // the backend's fused pointwise step functions, chosen once per plan

// A unit of the unrolled executor's schedule: steps [t0, t1) of one (layer, direction) (in that
// direction's processing order), after which the stream has done `index + 1` tasks. It may start
// once every dependency (stream, tasks done) holds.
struct Task {
  int64_t layer = 0;
  int dir = 0;
  int64_t t0 = 0, t1 = 0;  // time range, ascending; a reverse stream processes it from t1 - 1 down
  int64_t index = 0;       // position in its stream
  std::vector<std::pair<int64_t, int64_t>> deps;  // (stream = layer * D + dir, tasks done)
};

struct Plan {
  RnnDesc desc;
  int64_t T = 0, N = 0;
  bool training = false;
  ExecutorKind executor = ExecutorKind::kLoop;

  // Inference projects the input in chunks of chunk_t steps so that scratch does not grow with T
  // (for a one-layer network); training projects all T steps at once into the reserve.
  int64_t chunk_t = 0;
  std::size_t workspace_bytes = 0;
  std::size_t reserve_bytes = 0;

  // Per-step gate row widths: saved gates in the reserve and gate gradients, in units of H.
  // LSTM 4 (i,f,g,o), GRU 4 (r,z,n and the recurrent n-projection), RNN 1.
  int gate_slots = 0;

  // Element offsets inside the reserve (training) and the workspace. Each region starts 64-byte aligned.
  struct ReserveMap {
    std::vector<int64_t> out;    // per layer: layer output (T, N, D*H)
    std::vector<int64_t> gates;  // per (layer, dir): saved gates (T, N, gate_slots*H)
    std::vector<int64_t> cells;  // per (layer, dir): LSTM cell states (T, N, H)
    std::vector<int64_t> grads;  // per (layer, dir): gate gradients (T, N, gate_slots*H)
    std::vector<int64_t> states; // per (layer, dir), zoneout / residual: hidden states (T, N, H)
    std::vector<int64_t> hraw;   // per (layer, dir), projection: o * act(c) before W_hr (T, N, H)
    std::vector<int64_t> dproj;  // per (layer, dir), projection: gradients of h (T, N, P)
  } reserve;
  struct WorkspaceMap {
    int64_t zeros = -1;     // one zero row, standing in for an absent h0 / c0 / dy (row stride 0)
    int64_t inter[2] = {-1, -1};  // inter-layer activations / gradients (rows, D*S), ping-pong;
                                  // the unrolled executor keeps one per layer in `outs`
    std::vector<int64_t> outs;    // unrolled inference: every layer's output (rows, D*S)
    int64_t states = -1;    // inference with zero_masked_output: the last layer's states (T, N, D*S);
                            // with lengths: the packed output (forward) / output gradient (backward)
    int64_t xpack = -1;     // lengths: the packed layer-0 input (forward, backward_weights) or its
                            // gradient (backward_data) (rows, C); loop inference: one chunk's
    int64_t order = -1;     // lengths: rank -> sample (N int64), then N int64 for the sort or the
                            // permutation check
  } ws;

  const CellKernels* kernels = nullptr;

  // Variable lengths (a plan made with a length profile): samples are processed sorted by length,
  // longest first (rank r), so the active rows of step t are ranks [0, batch[t]); every internal
  // sequence buffer is packed: step t's rows start at row offsets[t] (PyTorch's PackedSequence
  // layout). Empty without lengths.
  std::vector<int64_t> lengths;  // (N) sorted descending
  std::vector<int64_t> batch;    // (T) active rows per step
  std::vector<int64_t> offsets;  // (T + 1) first packed row of each step; offsets[T] = sum(lengths)
  bool varlen() const { return !lengths.empty(); }
  int64_t rows() const { return varlen() ? offsets.back() : T * N; }  // (t, n) rows computed

  // Scratch that each concurrently running (layer, direction) stream owns (the loop executor has
  // one; the unrolled executor one per stream). Offsets into the workspace, -1 when unused.
  struct Lane {
    int64_t gx = -1;        // inference: input projection of one chunk (chunk_t, N, G*H)
    int64_t gh = -1;        // recurrent projection of one step (N, G*H)
    int64_t bias = -1;      // folded biases (G*H) plus the GRU recurrent n-bias (H)
    int64_t rh = -1;        // GRU reset-before: r*h of one step (N, H) (inference), d(r*h) (backward)
    int64_t cstate = -1;    // inference LSTM cell state (N, H)
    int64_t dh = -1;        // backward: running dh (N, S)
    int64_t dc = -1;        // backward: running dc (N, H)
    int64_t drop_x = -1;    // dropout: the input mask(s) of one (layer, dir) (1 or G, N, C_in)
    int64_t drop_h = -1;    // recurrent dropout: the state mask(s) (1 or G, N, H)
    int64_t xdrop = -1;     // dropout: masked layer input / input-gradient scratch (rows, max(C_in, H))
    int64_t hdrop = -1;     // recurrent dropout: masked h_{t-1} and a GEMM scratch (2, N, H)
    int64_t proj = -1;      // projection (2, N, H)
    int64_t zone = -1;      // zoneout / residual (4, N, H)
    int64_t h0 = -1;        // lengths: the initial states in rank order (N, S) and (N, H)
    int64_t c0 = -1;
    int64_t wpack = -1;     // unrolled float32 lanes: W_hh packed for the packed GEMM (forward:
                            // op = W^T, backward: W), cpu/packed_gemm.h
    int64_t ring = -1;      // loop inference with lengths: the last layer's states, two rows (2, N, S)
    int64_t colsum = -1;    // backward_weights: bias-gradient accumulators (gate_slots*H doubles)
    int64_t hprev = -1;     // backward_weights with lengths or recurrent dropout: every step's
                            // h_{t-1} (masked) in packed order (rows, S)
  };
  std::vector<Lane> lanes;

  // The unrolled executor's schedule: its lanes and, for a unidirectional stack (the wavefront),
  // the tasks per lane, each lane's list in one global topological order (so lanes never wait on
  // each other in a cycle), forward and backward-data. Other networks run whole-layer phases with
  // lane = direction and no task list.
  int num_lanes = 1;
  int64_t unroll_chunk = 0;  // steps per task
  std::vector<std::vector<Task>> fwd_tasks, bwd_tasks;

  int64_t reserve_index(int64_t layer, int direction) const {
    return layer * desc.directions() + direction;
  }
};

// lengths: empty, or the N per-sample lengths in [0, T] (any order: the plan keeps the profile,
// sorted; forward then needs ForwardArgs::lengths with the same multiset, or packed data).
Plan make_plan(const RnnDesc& desc, int64_t T, int64_t N, bool training,
               const std::vector<int64_t>& lengths = {},
               ExecutorKind executor = ExecutorKind::kLoop);

// ---- Operations -------------------------------------------------------------------------------------
// Pointers are to elements of desc.dtype. "optional" pointers may be null (meaning zeros / not wanted).
struct ForwardArgs {
  const void* x = nullptr;        // (T, N, C) rows at x + t*x_st + n*x_sn
  int64_t x_st = 0, x_sn = 0;
  const void* w = nullptr;        // flat parameters, param_count(desc) elements
  const void* hx = nullptr;       // optional (L*D, N, S) contiguous initial hidden state
  const void* cx = nullptr;       // optional (L*D, N, H) initial cell state (LSTM)
  void* y = nullptr;              // output (T, N, D*S) rows at y + t*y_st + n*y_sn (S: state_size)
  int64_t y_st = 0, y_sn = 0;
  void* hy = nullptr;             // optional (L*D, N, S) final hidden state
  void* cy = nullptr;             // optional (L*D, N, H) final cell state (LSTM)
  const uint8_t* mask = nullptr;  // optional (T, N): 0 masks step t of sample n, at mask + t*m_st + n*m_sn
  int64_t mask_st = 0, mask_sn = 0;
  uint64_t seed = 0;              // dropout masks (training with dropout rates > 0)
  void* workspace = nullptr;      // scratch, plan.workspace_bytes
  void* reserve = nullptr;        // training: kept for backward, plan.reserve_bytes
  // A plan with lengths takes either `lengths` (N, any order, the same multiset as the plan's):
  // x and y are padded (T, N) grids, y is zero past each length; or `packed`: x and y are packed
  // rows (PyTorch's PackedSequence data: step t's rows for the plan's batch[t] longest samples, at
  // x + (offsets[t] + r) * x_sn, x_st unused) and `order` (N, optional: identity) maps rank r to
  // the sample whose states are row order[r] of hx / hy / cx / cy (PackedSequence.sorted_indices).
  const int64_t* lengths = nullptr;
  bool packed = false;
  const int64_t* order = nullptr;
};

struct BackwardDataArgs {
  const void* dy = nullptr;       // optional (T, N, D*H) gradient of y, rows at dy + t*dy_st + n*dy_sn
  int64_t dy_st = 0, dy_sn = 0;
  const void* dhy = nullptr;      // optional (L*D, N, H) gradient of the final hidden state
  const void* dcy = nullptr;      // optional (L*D, N, H) gradient of the final cell state (LSTM)
  const void* w = nullptr;        // flat parameters, as given to forward
  const void* hx = nullptr;       // optional, as given to forward
  const void* cx = nullptr;       // optional, as given to forward
  void* dx = nullptr;             // output (T, N, C) rows at dx + t*dx_st + n*dx_sn
  int64_t dx_st = 0, dx_sn = 0;
  void* dhx = nullptr;            // optional output (L*D, N, H)
  void* dcx = nullptr;            // optional output (L*D, N, H) (LSTM)
  const uint8_t* mask = nullptr;  // the forward's mask, if any
  int64_t mask_st = 0, mask_sn = 0;
  uint64_t seed = 0;              // the forward's seed
  void* workspace = nullptr;      // scratch
  void* reserve = nullptr;        // from forward(training); its gradient area is written
  const int64_t* lengths = nullptr;  // as given to forward (dy, dx padded; dx zero past lengths)
  bool packed = false;               // as given to forward (dy, dx packed)
  const int64_t* order = nullptr;
};

struct BackwardWeightsArgs {
  const void* x = nullptr;        // as given to forward
  int64_t x_st = 0, x_sn = 0;
  const void* hx = nullptr;       // optional, as given to forward
  void* dw = nullptr;             // flat parameter gradient: accumulated into (+=)
  uint64_t seed = 0;              // the forward's seed
  void* workspace = nullptr;      // scratch
  const void* reserve = nullptr;  // after backward_data
  const int64_t* lengths = nullptr;  // as given to forward
  bool packed = false;
  const int64_t* order = nullptr;
};

void forward(const Plan& plan, const ForwardArgs& args);
void backward_data(const Plan& plan, const BackwardDataArgs& args);
void backward_weights(const Plan& plan, const BackwardWeightsArgs& args);

// ---- Build and runtime information ------------------------------------------------------------------
struct BuildInfo {
  std::string version, blas, blas_config, compiler, cxx_flags, simd;
  bool openmp = false;
  int openmp_max_threads = 1;
  bool cuda = false;
};
BuildInfo build_info();

}  // namespace fusedrnn
