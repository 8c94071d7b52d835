// core/engine.h: the per-stream machinery both executors drive.
//
// A stream is one (layer, direction). Forward: begin (fold the biases, draw the dropout masks, set
// the initial states), then chunks of steps (one input-projection GEMM per chunk, then per step a
// recurrent GEMM and one fused pointwise call), then end (the final states). Backward-data: begin
// (the running state gradients), chunks of steps in reverse (the fused gate-gradient kernel and one
// GEMM dG W_hh per step), and the input gradient of the chunk's rows (one GEMM). The while-loop
// executor runs the streams one after another, each as one or a few chunks; the unrolled executor
// runs independent streams concurrently, each on a lane with scratch of its own (Plan::Lane).
//
// Variable lengths: samples are taken in rank order (longest first), so step t computes rows
// [0, batch[t]); every internal buffer is packed (Rows with offsets). A step's rows split into
// segments: rows that continue from the previous step in processing order and rows that start from
// the initial state (the reverse direction's samples start at their own last step).
// Nothing allocates: every buffer is a region of the caller's workspace or reserve.
#pragma once

#include <algorithm>
#include <functional>
#include <type_traits>
#include <cstring>

#include "../cpu/blas.h"
#include "../cpu/cell.h"
#include "../cpu/packed_gemm.h"
#include "fusedrnn/fusedrnn.h"
#include "fusedrnn/random.h"
#include "rows.h"

namespace fusedrnn::engine {

// LSTM state clipping (RnnDesc::clip_state) into a StepForward or StepBackward.
template <typename Step>
inline void set_clip(Step& st, const RnnDesc& desc) {
  using T = decltype(st.clip_lo);
  if (!desc.clip_state) return;
  st.clip = true;
  st.clip_nan = desc.clip_nan;
  st.clip_lo = static_cast<T>(desc.clip_min);
  st.clip_hi = static_cast<T>(desc.clip_max);
}

template <typename T>
struct Net {
  const Plan& p;
  int64_t T_, N, H, G, GH, D, L, SH;
  int64_t HS;          // width of h: the projection size, else H
  bool lstm, gru, rb;  // rb: GRU with the reset gate before the recurrent product
  bool proj;           // LSTM with a projection
  int64_t DG;          // dropout masks per (layer, direction) and kind: G per gate, else 1
  bool sep;            // zoneout / residual: hidden states in rows of their own, apart from outputs
  bool varlen;
  const int64_t* order = nullptr;  // lengths: rank -> sample (null: identity)
  explicit Net(const Plan& plan)
      : p(plan),
        T_(plan.T),
        N(plan.N),
        H(plan.desc.hidden_size),
        G(num_gates(plan.desc.mode)),
        GH(G * plan.desc.hidden_size),
        D(plan.desc.directions()),
        L(plan.desc.num_layers),
        SH(plan.gate_slots * plan.desc.hidden_size),
        HS(plan.desc.state_size()),
        lstm(plan.desc.mode == Mode::kLstm),
        gru(plan.desc.mode == Mode::kGru),
        rb(plan.desc.gru_reset_before()),
        proj(plan.desc.proj_size > 0),
        DG(plan.desc.dropout_mask_count()),
        sep(plan.desc.separate_states(plan.training)),
        varlen(plan.varlen()) {}

  // The gate-gradient slot of gate k's input part (reset-after GRU: n's is slot 3).
  int64_t input_slot(int64_t k) const { return gru && !rb && k == 2 ? 3 : k; }
  // Steps of direction `dir` in processing order: s-th step is time index t.
  int64_t time_of(int dir, int64_t s) const { return dir == 0 ? s : T_ - 1 - s; }
  // Time index of the step before t in processing order.
  int64_t prev_of(int dir, int64_t t) const { return dir == 0 ? t - 1 : t + 1; }
  int64_t batch(int64_t t) const { return varlen ? p.batch[t] : N; }
  int64_t length(int64_t r) const { return varlen ? p.lengths[r] : T_; }
  int64_t sample(int64_t r) const { return order ? order[r] : r; }
  // An internal sequence buffer of `width` features per (t, n) row: packed with lengths.
  Rows<T> rows(T* base, int64_t width) const {
    return varlen ? Rows<T>{base, 0, width, p.offsets.data()} : Rows<T>{base, N * width, width};
  }
  Rows<T> grid(T* base) const { return rows(base, D * HS); }
  Rows<T> slots(T* base) const { return rows(base, SH); }

  // Calls fn(r0, r1, first) for the row segments of step t of direction dir: rows [r0, r1) continue
  // from the previous step in processing order, or (first) start from the initial state.
  template <typename Fn>
  void segments(int dir, int64_t t, Fn&& fn) const {
    const int64_t b = batch(t);
    if (b == 0) return;
    if (dir == 0) return fn(int64_t{0}, b, t == 0);
    const int64_t bn = t + 1 < T_ ? batch(t + 1) : 0;
    if (bn > 0) fn(int64_t{0}, bn, false);
    if (b > bn) fn(bn, b, true);
  }

  // The hidden-state rows of (layer, direction) given its layer-output grid O: O's slice of the
  // direction, or, with separate states, the reserve's state rows (training) or a ring of two rows in
  // the lane's zone scratch (inference: step t in row t % 2).
  struct States {
    T* base;
    int64_t st, ld;
    bool ring;
    const int64_t* off;
    T* row(int64_t t) const {
      if (ring) return base + (t & 1) * st;
      return off ? base + (off[t] - off[0]) * ld : base + t * st;
    }
  };
  States states(const Rows<T>& O, T* rs, T* zone, int64_t si, int dir) const {
    if (!sep) return {O.p + dir * HS, O.st, O.sn, false, O.off};
    if (p.training) return {rs + p.reserve.states[si], N * H, H, false, nullptr};
    return {zone, N * H, H, true, nullptr};
  }
};

template <typename T>
void add_rows(T* dst, const T* src, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] += src[i];
}

template <typename T>
void copy_rows(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t N, int64_t H) {
  for (int64_t n = 0; n < N; ++n) std::memcpy(dst + n * ld_dst, src + n * ld_src, sizeof(T) * H);
}

// Row r of dst (rank order) = row order[r] of src (null src: zeros).
template <typename T>
void gather_rows(T* dst, const T* src, const Net<T>& net, int64_t width) {
  for (int64_t r = 0; r < net.N; ++r) {
    if (src) {
      std::memcpy(dst + r * width, src + net.sample(r) * width, sizeof(T) * width);
    } else {
      std::memset(dst + r * width, 0, sizeof(T) * width);
    }
  }
}

// The initial state (L*D, N, width) of stream si in rank order: a pointer and its row stride (0 for
// the shared zero row when absent). With lengths and a state given, the rows live in `scratch`:
// gathered there when `gather` (a stream's begin), read from there afterwards.
template <typename T>
const T* initial_state(const Net<T>& net, const void* state, int64_t si, int64_t width,
                       const T* zeros, T* scratch, int64_t* ld, bool gather = false) {
  if (!state) {
    *ld = 0;
    return zeros;
  }
  const T* src = static_cast<const T*>(state) + si * net.N * width;
  *ld = width;
  if (!net.order) return src;
  if (gather) gather_rows(scratch, src, net, width);
  return scratch;
}

// Folds b_ih + b_hh into one vector (G*H); the reset-after GRU keeps its recurrent n-bias apart,
// after it (H), since r multiplies it.
template <typename T>
void fold_bias(const Net<T>& net, const T* b_ih, const T* b_hh, T* out) {
  const bool apart = net.gru && !net.rb;
  const int64_t fold = apart ? 2 * net.H : net.GH;
  for (int64_t k = 0; k < fold; ++k) out[k] = b_ih[k] + b_hh[k];
  if (apart) {
    for (int64_t j = 0; j < net.H; ++j) {
      out[2 * net.H + j] = b_ih[2 * net.H + j];
      out[3 * net.H + j] = b_hh[2 * net.H + j];
    }
  }
}

// Writes the zero-filled stand-ins for absent states and gradients.
template <typename T>
T* zero_row(const Plan& p, T* ws) {
  T* zeros = ws + p.ws.zeros;
  std::memset(zeros, 0, sizeof(T) * std::max<int64_t>(p.gate_slots, 2) * p.desc.hidden_size);
  return zeros;
}

// Scaled dropout masks (count, N, width) in rank order, consecutive in one stream: 1/(1 - rate)
// where kept, 0 where dropped; null when rate is 0. count: G with per-gate masks, else 1. A
// sample's mask depends on the sample, not on its rank.
template <typename T>
T* dropout_mask(const Net<T>& net, T* ws, int64_t offset, int64_t width, double rate,
                uint64_t seed, int64_t layer, int dir, DropoutKind kind) {
  const Plan& p = net.p;
  if (!p.training || rate <= 0.0) return nullptr;
  T* m = ws + offset;
  const uint64_t stream = dropout_stream(layer, dir, kind);
  const T keep = static_cast<T>(1.0 / (1.0 - rate));
  const int64_t N = p.N;
  for (int64_t k = 0; k < p.desc.dropout_mask_count(); ++k) {
    for (int64_t r = 0; r < N; ++r) {
      T* row = m + (k * N + r) * width;
      const uint64_t base = static_cast<uint64_t>((k * N + net.sample(r)) * width);
      for (int64_t j = 0; j < width; ++j)
        row[j] = uniform01(seed, stream, base + static_cast<uint64_t>(j)) >= rate ? keep : T(0);
    }
  }
  return m;
}

// dst[t, n, :] (+)= src[t, n, :] * mask[n, :] over steps [0, nt) of `width` (mask rows of `width`).
template <typename T>
void mask_rows(Rows<T> dst, Rows<const T> src, const T* mask, int64_t nt, int64_t N, int64_t width,
               bool accumulate) {
  for (int64_t t = 0; t < nt; ++t) {
    const int64_t rows = dst.count(t, N);
    for (int64_t n = 0; n < rows; ++n) {
      T* d = dst.row(t, n);
      const T* x = src.row(t, n);
      const T* m = mask + n * width;
      if (accumulate) {
        for (int64_t j = 0; j < width; ++j) d[j] += x[j] * m[j];
      } else {
        for (int64_t j = 0; j < width; ++j) d[j] = x[j] * m[j];
      }
    }
  }
}

// The zoneout / residual epilogue of (layer, direction): sizes, probabilities (training only) and
// the keys of its mask streams.
template <typename T>
StepZone<T> zone_of(const Plan& p, uint64_t seed, int64_t layer, int dir) {
  StepZone<T> zn;
  zn.N = p.N;
  zn.H = p.desc.hidden_size;
  if (p.training) {
    zn.p_out = static_cast<float>(p.desc.zoneout_outputs);
    zn.p_state = static_cast<float>(p.desc.zoneout_states);
  }
  zn.key_h = stream_key(seed, zoneout_stream(layer, dir, ZoneoutKind::kState));
  zn.key_c = stream_key(seed, zoneout_stream(layer, dir, ZoneoutKind::kCell));
  zn.key_o = stream_key(seed, zoneout_stream(layer, dir, ZoneoutKind::kOutput));
  return zn;
}

// Projection, after h = (o * act(c)) W_hr^T: masked rows keep h_{t-1} (the kernel left zeros), and
// the user's y (when it is not where h lives) gets h, or zero for masked rows with zero_masked_output.
template <typename T>
void project_fixup(const StepForward<T>& st, T* h, int64_t ld_h, int64_t HS, T* y, int64_t ld_y) {
  for (int64_t n = 0; n < st.N; ++n) {
    const bool masked = st.mask && !st.mask[n * st.ld_mask];
    T* hn = h + n * ld_h;
    if (masked) std::memcpy(hn, st.h_prev + n * st.ld_hp, sizeof(T) * HS);
    if (!y) continue;
    if (masked && st.zero_masked_output) {
      std::memset(y + n * ld_y, 0, sizeof(T) * HS);
    } else {
      std::memcpy(y + n * ld_y, hn, sizeof(T) * HS);
    }
  }
}

// Projection, backward of one step: dhp = dh + dy, the gradient of h (dy ignored on masked rows whose
// output was zero); saved for dW_hr, and the masked rows' pass-through.
template <typename T>
void project_backward(const StepBackward<T>& st, const T* dh, T* dhp, int64_t HS) {
  for (int64_t n = 0; n < st.N; ++n) {
    const bool drop_dy = st.mask && !st.mask[n * st.ld_mask] && st.zero_masked_output;
    const T* dy = st.dy + n * st.ld_dy;
    for (int64_t j = 0; j < HS; ++j) dhp[n * HS + j] = dh[n * HS + j] + (drop_dy ? T(0) : dy[j]);
  }
}

// Rank order of the call (lengths): a stable sort of the samples by descending length (each takes
// the next rank of its length's block in the plan's profile, found by binary search), checked
// against the profile; the packed form's own order (or identity: null).
template <typename T>
const int64_t* call_order(const Plan& p, T* ws, const int64_t* lengths, bool packed,
                          const int64_t* order) {
  if (!p.varlen()) return nullptr;
  if (packed) {
    if (order) {  // must be a permutation of [0, N)
      int64_t* seen = reinterpret_cast<int64_t*>(ws + p.ws.order) + p.N;
      for (int64_t n = 0; n < p.N; ++n) seen[n] = 0;
      for (int64_t r = 0; r < p.N; ++r) {
        const int64_t v = order[r];
        FUSEDRNN_CHECK(v >= 0 && v < p.N && !seen[v], ValueError,
                       "order: expected a permutation of [0, ", p.N, "), got ", v, " at rank ", r);
        seen[v] = 1;
      }
    }
    return order;
  }
  int64_t* out = reinterpret_cast<int64_t*>(ws + p.ws.order);
  int64_t* taken = out + p.N;  // per block of equal lengths (at its first rank): ranks handed out
  for (int64_t r = 0; r < p.N; ++r) taken[r] = 0;
  const int64_t* sorted = p.lengths.data();
  for (int64_t n = 0; n < p.N; ++n) {
    const int64_t v = lengths[n];
    FUSEDRNN_CHECK(v >= 0 && v <= p.T, ValueError, "lengths: expected values in [0, ", p.T,
                   "], got ", v, " at index ", n);
    // first rank of length v in the descending profile
    const int64_t first =
        std::lower_bound(sorted, sorted + p.N, v, std::greater<int64_t>()) - sorted;
    const int64_t r = first + taken[first < p.N ? first : 0];
    FUSEDRNN_CHECK(first < p.N && r < p.N && sorted[r] == v, ValueError,
                   "lengths: not the length profile the plan was made for (too many samples of "
                   "length ", v, ")");
    out[r] = n;
    ++taken[first];
  }
  return out;
}

// Packed rows (rank order) <-> a padded (T, N) grid of the user's. Scatter zero-fills past lengths.
template <typename T>
void gather_seq(const Net<T>& net, Rows<T> packed, Rows<const T> grid, int64_t width) {
  for (int64_t t = 0; t < net.T_; ++t)
    for (int64_t r = 0; r < net.batch(t); ++r)
      std::memcpy(packed.row(t, r), grid.row(t, net.sample(r)), sizeof(T) * width);
}
// A null `packed` only zero-fills (the valid rows are already in place).
template <typename T>
void scatter_seq(const Net<T>& net, Rows<T> grid, Rows<const T> packed, int64_t width) {
  for (int64_t r = 0; r < net.N; ++r) {
    const int64_t n = net.sample(r), len = net.length(r);
    for (int64_t t = 0; packed.p && t < len; ++t)
      std::memcpy(grid.row(t, n), packed.row(t, r), sizeof(T) * width);
    for (int64_t t = len; t < net.T_; ++t) std::memset(grid.row(t, n), 0, sizeof(T) * width);
  }
}

// The recurrent products that lanes run single-threaded: with packed weights (float32, see
// Plan::Lane::wpack) through the packed GEMM, else BLAS. Forward: C = A W^T (W is (N x K));
// backward: C += A W (W is (K x N)).
template <typename T>
void pack_recurrent(const Plan::Lane& ln, T* ws, bool backward, const T* w, int64_t ld,
                    int64_t rows, int64_t cols) {
  if constexpr (std::is_same_v<T, float>) {
    if (ln.wpack < 0) return;
    if (backward) {
      cpu::pack_b(false, w, ld, cols, rows, ws + ln.wpack);
    } else {
      cpu::pack_b(true, w, ld, rows, cols, ws + ln.wpack);
    }
  }
}

template <typename T>
void recurrent_gemm(const Plan::Lane& ln, const T* ws, bool backward, int64_t M, int64_t N,
                    int64_t K, const T* A, int64_t lda, const T* w, int64_t ldw, T* C,
                    int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    if (ln.wpack >= 0) return cpu::gemm_packed(M, N, K, A, lda, ws + ln.wpack, backward, C, ldc);
  }
  cpu::gemm<T>(false, !backward, M, N, K, T(1), A, lda, w, ldw, backward ? T(1) : T(0), C, ldc);
}

// ---- Forward ---------------------------------------------------------------------------------------
// What a forward or backward-data call holds: the plan, the arguments, the kernels, the buffers and
// the call's rank order (lengths); `gathered`: lengths with padded data, packed in the workspace.
template <typename T, typename Args>
struct Call {
  const Plan& p;
  const Args& a;
  Net<T> net;
  const CellFns<T>& cell;
  T* ws;
  T* rs;
  const T* w;
  const T* zeros;
  bool gathered;

  Call(const Plan& plan, const Args& args)
      : p(plan),
        a(args),
        net(plan),
        cell(plan.kernels->get<T>()),
        ws(static_cast<T*>(args.workspace)),
        rs(static_cast<T*>(args.reserve)),
        w(static_cast<const T*>(args.w)),
        zeros(zero_row(plan, ws)),
        gathered(plan.varlen() && !args.packed) {
    net.order = call_order(p, ws, a.lengths, a.packed, a.order);
  }
};

#define FUSEDRNN_CALL_MEMBERS(Base) \
  using Base::p;                    \
  using Base::a;                    \
  using Base::net;                  \
  using Base::cell;                 \
  using Base::ws;                   \
  using Base::rs;                   \
  using Base::w;                    \
  using Base::zeros;                \
  using Base::gathered

template <typename T>
struct Forward : Call<T, ForwardArgs> {
  using Base = Call<T, ForwardArgs>;
  FUSEDRNN_CALL_MEMBERS(Base);

  // Loop inference with lengths and padded data: the input is gathered per chunk and the last
  // layer's states live in a ring of two rows, each step scattered into y.
  bool streamed() const { return gathered && p.lanes[0].ring >= 0; }

  Forward(const Plan& plan, const ForwardArgs& args) : Base(plan, args) {
    if (gathered && !streamed()) {
      gather_seq(net, net.rows(ws + p.ws.xpack, p.desc.input_size),
                 Rows<const T>{static_cast<const T*>(a.x), a.x_st, a.x_sn}, p.desc.input_size);
    }
  }

  // The user's x and y grids (packed rows with offsets in the packed form).
  Rows<T> user(void* base, int64_t st, int64_t sn) const {
    if (a.packed) return {static_cast<T*>(base), 0, sn, p.offsets.data()};
    return {static_cast<T*>(base), st, sn};
  }

  struct IO {
    Rows<const T> X;  // the layer's input
    Rows<T> O;        // the layer's output, where h_{t-1} is read back from
    Rows<T> Y;        // the user's y (last layer)
    bool copy_to_y;   // the last layer's output is also written to Y per step
    bool zero_masked;
  };
  IO io(int64_t l) const {
    IO r;
    const bool last = l == net.L - 1;
    const bool unrolled_infer = !p.training && !p.ws.outs.empty();
    if (l == 0) {
      r.X = gathered && !streamed() ? net.rows(ws + p.ws.xpack, p.desc.input_size).as_const()
                                    : user(const_cast<void*>(a.x), a.x_st, a.x_sn).as_const();
    } else if (p.training) {
      r.X = net.grid(rs + p.reserve.out[l - 1]).as_const();
    } else if (unrolled_infer) {
      r.X = net.grid(ws + p.ws.outs[l - 1]).as_const();
    } else {
      r.X = net.grid(ws + p.ws.inter[(l - 1) % 2]).as_const();
    }
    r.Y = user(a.y, a.y_st, a.y_sn);
    r.zero_masked = last && a.mask && p.desc.zero_masked_output;
    // Where this layer's hidden states go (and are read back as h_{t-1}). The user's y can hold
    // them unless training (the reserve keeps them), masked steps must show zeros there, or y is
    // padded while the states are packed.
    if (p.training) {
      r.O = net.grid(rs + p.reserve.out[l]);
    } else if (!last) {
      r.O = net.grid(unrolled_infer ? ws + p.ws.outs[l] : ws + p.ws.inter[l % 2]);
    } else if (r.zero_masked || (gathered && !streamed())) {
      r.O = net.grid(ws + p.ws.states);
    } else if (gathered) {
      r.O = Rows<T>{};  // streamed: the states are in the lane's ring (states_of)
    } else {
      r.O = r.Y;
    }
    r.copy_to_y = last && !gathered && (p.training || r.zero_masked);
    return r;
  }

  const Plan::Lane& lane(int li) const { return p.lanes[li]; }

  // The hidden-state rows of (layer, direction): the ring when streamed (the last layer).
  typename Net<T>::States states_of(const IO& io, int64_t l, int dir, const Plan::Lane& ln) const {
    if (streamed() && l == net.L - 1)
      return {ws + ln.ring, net.N * net.HS, net.HS, true, nullptr};
    return net.states(io.O, rs, ln.zone >= 0 ? ws + ln.zone : nullptr, p.reserve_index(l, dir),
                      dir);
  }

  void begin(int64_t l, int dir, int li) {
    const Plan::Lane& ln = lane(li);
    const LayerParams off = layer_param_offsets(p.desc, l, dir);
    fold_bias(net, w + off.b_ih, w + off.b_hh, ws + ln.bias);
    const int64_t si = p.reserve_index(l, dir), cin = p.desc.layer_input_size(l);
    int64_t ld;  // the rank-ordered initial states, gathered once for the stream's chunks
    initial_state<T>(net, a.hx, si, net.HS, zeros, ws + ln.h0, &ld, true);
    const T* c0 = initial_state<T>(net, a.cx, si, net.H, zeros, ws + ln.c0, &ld, true);
    if (net.lstm && !p.training) copy_rows(ws + ln.cstate, net.H, c0, ld, net.N, net.H);
    dropout_mask(net, ws, ln.drop_x, cin, p.desc.dropout, a.seed, l, dir, DropoutKind::kInput);
    dropout_mask(net, ws, ln.drop_h, net.H, p.desc.recurrent_dropout, a.seed, l, dir,
                 DropoutKind::kRecurrent);
    const int64_t k_rec = (net.rb ? 2 : net.G) * net.H;  // the rows of W_hh projected per step
    pack_recurrent(ln, ws, false, w + off.w_hh, net.HS, k_rec, net.HS);
  }

  // Steps [t0, t1) of (layer, direction), in its processing order.
  void chunk(int64_t l, int dir, int li, int64_t t0, int64_t t1) {
    const Plan::Lane& ln = lane(li);
    const int64_t N = net.N, H = net.H, GH = net.GH, HS = net.HS, nt = t1 - t0;
    const int64_t si = p.reserve_index(l, dir), cin = p.desc.layer_input_size(l);
    const IO io = this->io(l);
    const LayerParams off = layer_param_offsets(p.desc, l, dir);
    const T* w_ih = w + off.w_ih;
    const T* w_hh = w + off.w_hh;
    const T* w_hr = net.proj ? w + off.w_hr : nullptr;
    const T* bias = ws + ln.bias;
    T* gh = ws + ln.gh;
    const auto S = states_of(io, l, dir, ln);
    const bool zone = net.sep;
    const bool scatter = streamed() && l == net.L - 1;  // each step's rows go to y
    StepZone<T> zn = zone_of<T>(p, a.seed, l, dir);
    int64_t ld_h0 = 0, ld_c0 = 0;
    // with lengths the rank-ordered initial states were gathered in begin()
    const T* h0 = initial_state<T>(net, a.hx, si, HS, zeros, ws + ln.h0, &ld_h0);
    const T* c0 = net.lstm && p.training
                      ? initial_state<T>(net, a.cx, si, H, zeros, ws + ln.c0, &ld_c0)
                      : zeros;
    if (!(net.lstm && p.training)) ld_c0 = 0;
    const Rows<T> C = net.rows(p.training && net.lstm ? rs + p.reserve.cells[si] : nullptr, H);
    const bool cells = p.training && net.lstm;
    T* cstate = !p.training && net.lstm ? ws + ln.cstate : nullptr;
    const T* mx = p.training && p.desc.dropout > 0 ? ws + ln.drop_x : nullptr;
    const T* mh = p.training && p.desc.recurrent_dropout > 0 ? ws + ln.drop_h : nullptr;

    // Input projection of steps [t0, t1): training writes it into the reserve's gate rows, where
    // the pointwise step then overwrites it in place with the saved gates.
    int64_t ld_gx;
    Rows<T> GX;  // row (t - base, r)
    int64_t base;
    if (p.training) {
      ld_gx = net.SH;
      GX = net.slots(rs + p.reserve.gates[si]);
      base = 0;
    } else {
      ld_gx = GH;
      GX = net.varlen ? Rows<T>{ws + ln.gx, 0, GH, p.offsets.data() + t0}
                      : Rows<T>{ws + ln.gx, N * GH, GH};
      base = t0;
    }
    const Rows<T> GXc = p.training ? GX.shifted(t0) : GX;
    Rows<const T> Xc = io.X.shifted(t0);
    if (streamed() && l == 0) {  // gather this chunk's rows of the padded input
      const Rows<T> Xp{ws + p.ws.xpack, 0, cin, p.offsets.data() + t0};
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t r = 0; r < net.batch(t); ++r)
          std::memcpy(Xp.row(t - t0, r),
                      static_cast<const T*>(a.x) + t * a.x_st + net.sample(r) * a.x_sn,
                      sizeof(T) * cin);
      Xc = Xp.as_const();
    }
    if (mx) {
      const Rows<T> Xm = net.rows(ws + ln.xdrop, cin).shifted(t0);
      for (int64_t k = 0; k < net.DG; ++k) {
        // gate k's block sees x * mx_k (one block of all gates without per-gate masks)
        mask_rows(Xm, Xc, mx + k * N * cin, nt, N, cin, false);
        const int64_t width = net.DG > 1 ? H : GH;
        gemm_rows<T>(nt, N, Xm.as_const(), cin, true, w_ih + k * H * cin, cin, width, T(0),
                     GXc.shifted(0, k * H));
      }
    } else {
      gemm_rows<T>(nt, N, Xc, cin, true, w_ih, cin, GH, T(0), GXc);
    }

    for (int64_t s = 0; s < nt; ++s) {
      const int64_t t = dir == 0 ? t0 + s : t1 - 1 - s;
      const int64_t tp = net.prev_of(dir, t);
      net.segments(dir, t, [&](int64_t r0, int64_t r1, bool first) {
        const int64_t nb = r1 - r0;
        StepForward<T> st;
        st.N = nb;
        st.H = H;
        st.act = p.desc.activation;
        st.rec = p.desc.recurrent_activation;
        set_clip(st, p.desc);
        st.gx = GX.row(t - base, r0);
        st.ld_gx = ld_gx;
        st.bias = bias;
        if (first) {
          st.h_prev = h0 + r0 * ld_h0;
          st.ld_hp = ld_h0;
        } else {
          st.h_prev = S.row(tp) + r0 * S.ld;
          st.ld_hp = S.ld;
        }
        // h0 = 0: the recurrent projection is zero, skip its GEMM(s)
        const bool zero_h = first && !a.hx;
        if (zero_h) {
          st.gh = zeros;
          st.ld_gh = 0;
          st.h_rec = zeros;
          st.ld_hrec = 0;
        } else {
          st.h_rec = st.h_prev;
          st.ld_hrec = st.ld_hp;
          // the reset-before GRU projects only r and z here; n waits for r*h
          const int64_t k_rec = net.rb ? 2 : net.G;
          if (mh && net.DG > 1) {  // per-gate masks: gate k's product sees h_{t-1} * mh_k
            T* hm = ws + ln.hdrop;
            for (int64_t k = 0; k < k_rec; ++k) {
              mask_rows(Rows<T>{hm, 0, H}, Rows<const T>{st.h_prev, 0, st.ld_hp},
                        mh + (k * N + r0) * H, 1, nb, H, false);
              cpu::gemm<T>(false, true, nb, H, H, T(1), hm, H, w_hh + k * H * H, H, T(0),
                           gh + k * H, GH);
            }
            if (net.rb) {  // n's product sees r * (h_{t-1} * mh_n)
              mask_rows(Rows<T>{hm + N * H, 0, H}, Rows<const T>{st.h_prev, 0, st.ld_hp},
                        mh + (2 * N + r0) * H, 1, nb, H, false);
              st.h_rec = hm + N * H;
              st.ld_hrec = H;
            }
          } else {
            if (mh) {  // recurrent dropout: the product sees h_{t-1} * mask
              T* hm = ws + ln.hdrop;
              mask_rows(Rows<T>{hm, 0, H}, Rows<const T>{st.h_prev, 0, st.ld_hp}, mh + r0 * H, 1,
                        nb, H, false);
              st.h_rec = hm;
              st.ld_hrec = H;
            }
            recurrent_gemm(ln, ws, false, nb, k_rec * H, HS, st.h_rec, st.ld_hrec, w_hh, HS, gh,
                           GH);
          }
          st.gh = gh;
          st.ld_gh = GH;
        }
        if (cells) {
          st.c_prev = first ? c0 + r0 * ld_c0 : C.row(tp, r0);
          st.ld_cp = first ? ld_c0 : H;
          st.c_out = C.row(t, r0);
          st.ld_co = H;
        } else if (cstate) {
          st.c_prev = st.c_out = cstate + r0 * H;
          st.ld_cp = st.ld_co = H;
        }
        st.h_out = S.row(t) + r0 * S.ld;
        st.ld_ho = S.ld;
        if (net.proj) {  // the cell writes o * act(c); h = that W_hr^T, after it
          st.h_out = p.training ? net.rows(rs + p.reserve.hraw[si], H).row(t, r0) : ws + ln.proj;
          st.ld_ho = H;
          st.proj = true;
        }
        if (io.copy_to_y && !zone && !net.proj) {
          st.y_out = io.Y.row(t, r0) + dir * H;
          st.ld_yo = io.Y.sn;
        }
        if (a.mask) {
          st.mask = a.mask + t * a.mask_st + r0 * a.mask_sn;
          st.ld_mask = a.mask_sn;
          st.zero_masked_output = io.zero_masked;
        }
        if (net.rb) {  // training saves r*h in the gate row's fourth slot
          st.rh = p.training ? st.gx + 3 * H : ws + ln.rh;
          st.ld_rh = p.training ? ld_gx : H;
        }
        (p.training ? cell.forward_train : cell.forward_infer)(st);
        if (net.rb) {
          if (!zero_h)
            cpu::gemm<T>(false, true, nb, H, H, T(1), st.rh, st.ld_rh, w_hh + 2 * H * H, H, T(0),
                         gh + 2 * H, GH);
          cell.forward2(st);
        }
        T* hrow = S.row(t) + r0 * S.ld;
        if (net.proj) {
          cpu::gemm<T>(false, true, nb, HS, H, T(1), st.h_out, H, w_hr, H, T(0), hrow, S.ld);
          project_fixup(st, hrow, S.ld, HS, io.copy_to_y ? io.Y.row(t, r0) + dir * HS : nullptr,
                        io.Y.sn);
        }
        if (scatter) {
          for (int64_t n = 0; n < nb; ++n)
            std::memcpy(static_cast<T*>(a.y) + t * a.y_st + net.sample(r0 + n) * a.y_sn + dir * HS,
                        hrow + n * S.ld, sizeof(T) * HS);
        }
        if (zone) {
          zn.N = nb;
          zn.index0 = static_cast<uint64_t>((t * N + r0) * H);
          zn.h = st.h_out;
          zn.ld_h = st.ld_ho;
          zn.h_prev = st.h_prev;
          zn.ld_hp = st.ld_hp;
          if (cells) {
            zn.c = st.c_out;
            zn.ld_c = st.ld_co;
            zn.c_prev = st.c_prev;
            zn.ld_cp = st.ld_cp;
          }
          if (zn.p_out > 0.0f) {  // outputs ring: step s in row s % 2, zeros before the first
            T* ring = ws + ln.zone;
            zn.y = ring + (t & 1) * N * H + r0 * H;
            zn.y_prev = first ? zeros : ring + (tp & 1) * N * H + r0 * H;
            zn.ld_yp = first ? 0 : H;
          }
          zn.out = io.O.row(t, r0) + dir * H;
          zn.ld_out = io.O.sn;
          if (io.copy_to_y) {
            zn.out2 = io.Y.row(t, r0) + dir * H;
            zn.ld_out2 = io.Y.sn;
          }
          if (p.desc.residual) {
            zn.x = io.X.row(t, r0) + dir * H;
            zn.ld_x = io.X.sn;
          }
          cell.zone_forward(zn);
        }
      });
    }
  }

  // The final states of (layer, direction): each sample's state at its own last step.
  void end(int64_t l, int dir, int li) {
    const Plan::Lane& ln = lane(li);
    const int64_t N = net.N, H = net.H, HS = net.HS;
    const int64_t si = p.reserve_index(l, dir);
    const IO io = this->io(l);
    const auto S = states_of(io, l, dir, ln);
    const Rows<T> C = net.rows(p.training && net.lstm ? rs + p.reserve.cells[si] : nullptr, H);
    int64_t ld_h0 = 0, ld_c0 = 0;
    const T* h0 = a.hy ? initial_state<T>(net, a.hx, si, HS, zeros, ws + ln.h0, &ld_h0) : nullptr;
    const T* c0 = a.cy && net.lstm && p.training
                      ? initial_state<T>(net, a.cx, si, H, zeros, ws + ln.c0, &ld_c0)
                      : nullptr;
    for (int64_t r = 0; r < N; ++r) {
      const int64_t len = net.length(r), n = net.sample(r);
      const int64_t t_last = dir == 0 ? len - 1 : 0;
      if (a.hy) {
        const T* src = len == 0 ? h0 + r * ld_h0 : S.row(t_last) + r * S.ld;
        std::memcpy(static_cast<T*>(a.hy) + (si * N + n) * HS, src, sizeof(T) * HS);
      }
      if (a.cy && net.lstm) {
        const T* src = !p.training ? ws + ln.cstate + r * H
                       : len == 0  ? c0 + r * ld_c0
                                   : C.row(t_last, r);
        std::memcpy(static_cast<T*>(a.cy) + (si * N + n) * H, src, sizeof(T) * H);
      }
    }
  }

  // After every stream of layer l: with lengths and a padded y, the last layer's packed output goes
  // to y (zeros past the lengths).
  void layer_end(int64_t l) {
    if (l != net.L - 1 || !gathered) return;
    const IO io = this->io(l);
    scatter_seq(net, io.Y, streamed() ? Rows<const T>{} : io.O.as_const(), net.D * net.HS);
  }
};

// ---- Backward-data ---------------------------------------------------------------------------------
template <typename T>
struct BackwardData : Call<T, BackwardDataArgs> {
  using Base = Call<T, BackwardDataArgs>;
  FUSEDRNN_CALL_MEMBERS(Base);

  BackwardData(const Plan& plan, const BackwardDataArgs& args) : Base(plan, args) {
    if (gathered && a.dy) {
      gather_seq(net, net.grid(ws + p.ws.states),
                 Rows<const T>{static_cast<const T*>(a.dy), a.dy_st, a.dy_sn}, net.D * net.HS);
    }
  }

  // The gradient arriving at layer l's output, and the one to write for its input.
  Rows<const T> dY(int64_t l) const {
    if (l < net.L - 1) return net.grid(ws + p.ws.inter[l % 2]).as_const();
    if (!a.dy) return Rows<const T>{zeros, 0, 0};
    if (gathered) return net.grid(ws + p.ws.states).as_const();
    if (a.packed) return {static_cast<const T*>(a.dy), 0, a.dy_sn, p.offsets.data()};
    return {static_cast<const T*>(a.dy), a.dy_st, a.dy_sn};
  }
  Rows<T> dX(int64_t l) const {
    if (l > 0) return net.grid(ws + p.ws.inter[(l - 1) % 2]);
    if (gathered) return net.rows(ws + p.ws.xpack, p.desc.input_size);
    if (a.packed) return {static_cast<T*>(a.dx), 0, a.dx_sn, p.offsets.data()};
    return {static_cast<T*>(a.dx), a.dx_st, a.dx_sn};
  }

  const Plan::Lane& lane(int li) const { return p.lanes[li]; }

  void begin(int64_t l, int dir, int li) {
    const Plan::Lane& ln = lane(li);
    const int64_t N = net.N, H = net.H, HS = net.HS, cin = p.desc.layer_input_size(l);
    const int64_t si = p.reserve_index(l, dir);
    T* dh = ws + ln.dh;
    T* dc = ws + ln.dc;
    int64_t ld;  // the rank-ordered initial states, gathered once for the stream's chunks
    initial_state<T>(net, a.hx, si, HS, zeros, ws + ln.h0, &ld, true);
    initial_state<T>(net, a.cx, si, H, zeros, ws + ln.c0, &ld, true);
    gather_rows(dh, a.dhy ? static_cast<const T*>(a.dhy) + si * N * HS : nullptr, net, HS);
    if (net.lstm) gather_rows(dc, a.dcy ? static_cast<const T*>(a.dcy) + si * N * H : nullptr, net, H);
    if (net.sep) std::memset(ws + ln.zone, 0, sizeof(T) * N * H);  // the output carry
    if (net.proj) std::memset(ws + ln.proj + N * H, 0, sizeof(T) * N * H);
    // The forward's dropout masks, drawn again from the same (seed, position).
    dropout_mask(net, ws, ln.drop_x, cin, p.desc.dropout, a.seed, l, dir, DropoutKind::kInput);
    dropout_mask(net, ws, ln.drop_h, H, p.desc.recurrent_dropout, a.seed, l, dir,
                 DropoutKind::kRecurrent);
    if (!net.proj) {  // dh_{t-1} += dG_h W_hh, W_hh's first k_rec rows
      const int64_t k_rec = (net.rb ? 2 : net.G) * H;
      pack_recurrent(ln, ws, true, w + layer_param_offsets(p.desc, l, dir).w_hh, H, k_rec, H);
    }
  }

  // Steps [t0, t1) of (layer, direction) in reverse processing order.
  void chunk(int64_t l, int dir, int li, int64_t t0, int64_t t1) {
    const Plan::Lane& ln = lane(li);
    const int64_t N = net.N, H = net.H, GH = net.GH, HS = net.HS;
    const int64_t si = p.reserve_index(l, dir);
    const LayerParams off = layer_param_offsets(p.desc, l, dir);
    const T* w_hh = w + off.w_hh;
    const T* w_hr = net.proj ? w + off.w_hr : nullptr;
    const Rows<T> O = net.grid(rs + p.reserve.out[l]);
    const auto S = net.states(O, rs, nullptr, si, dir);
    const Rows<const T> dY = this->dY(l);
    T* dh = ws + ln.dh;
    T* dc = ws + ln.dc;
    // Zoneout / residual: the gradient splits of the forward's epilogue, in lane rows.
    const bool zone = net.sep;
    StepZone<T> zn = zone_of<T>(p, a.seed, l, dir);
    if (zone) {
      T* zw = ws + ln.zone;
      zn.carry = zw;
      zn.dk = zw + N * H;
      zn.skip_h = zw + 2 * N * H;
      zn.skip_c = zw + 3 * N * H;
      zn.dh = dh;
      zn.dc = net.lstm ? dc : nullptr;
    }
    int64_t ld_h0 = 0, ld_c0 = 0;
    const T* h0 = initial_state<T>(net, a.hx, si, HS, zeros, ws + ln.h0, &ld_h0);
    const T* c0 = net.lstm ? initial_state<T>(net, a.cx, si, H, zeros, ws + ln.c0, &ld_c0) : zeros;
    if (!net.lstm) ld_c0 = 0;
    // projection: the cell kernel sees d(o * act(c)) and a zero dh row (its dh_{t-1} is all W_hh's)
    T* dhraw = net.proj ? ws + ln.proj : nullptr;
    T* dzero = net.proj ? ws + ln.proj + N * H : nullptr;
    const Rows<T> GT = net.slots(rs + p.reserve.gates[si]);
    const Rows<T> C = net.rows(net.lstm ? rs + p.reserve.cells[si] : nullptr, H);
    const Rows<T> GR = net.slots(rs + p.reserve.grads[si]);
    const T* mh = p.training && p.desc.recurrent_dropout > 0 ? ws + ln.drop_h : nullptr;
    T* hm = mh ? ws + ln.hdrop : nullptr;        // h_{t-1} * mask, as the forward's product saw it
    T* tmp = mh ? ws + ln.hdrop + N * H : nullptr;  // dG W_hh before the mask

    const int64_t nt = t1 - t0;
    for (int64_t s = 0; s < nt; ++s) {
      const int64_t t = dir == 0 ? t1 - 1 - s : t0 + s;
      const int64_t tp = net.prev_of(dir, t);
      net.segments(dir, t, [&](int64_t r0, int64_t r1, bool first) {
        const int64_t nb = r1 - r0;
        T* dhs = dh + r0 * HS;
        T* dcs = dc + r0 * H;
        StepBackward<T> st;
        st.N = nb;
        st.H = H;
        st.act = p.desc.activation;
        st.rec = p.desc.recurrent_activation;
        set_clip(st, p.desc);
        st.dy = dY.row(t, r0) + dir * HS;
        st.ld_dy = dY.sn;
        if (zone) {
          zn.N = nb;
          zn.index0 = static_cast<uint64_t>((t * N + r0) * H);
          zn.dout = st.dy;
          zn.ld_dout = st.ld_dy;
          cell.zone_backward(zn);
          if (zn.p_out > 0.0f) {
            st.dy = zn.dk;
            st.ld_dy = H;
          }
        }
        st.dh = dhs;
        st.ld_dh = H;
        st.dc = dcs;
        st.ld_dc = H;
        st.gates = GT.row(t, r0);
        st.ld_g = net.SH;
        if (net.lstm) {
          // with zoneout states the saved cells are zoned: the kernel recomputes the unzoned one
          st.c = zone && zn.p_state > 0.0f ? nullptr : C.row(t, r0);
          st.ld_c = H;
          st.c_prev = first ? c0 + r0 * ld_c0 : C.row(tp, r0);
          st.ld_cp = first ? ld_c0 : H;
        }
        st.h_prev = first ? h0 + r0 * ld_h0 : S.row(tp) + r0 * S.ld;
        st.ld_hp = first ? ld_h0 : S.ld;
        st.dg = GR.row(t, r0);
        st.ld_dg = net.SH;
        st.slots = p.gate_slots;
        if (a.mask) {
          st.mask = a.mask + t * a.mask_st + r0 * a.mask_sn;
          st.ld_mask = a.mask_sn;
          st.zero_masked_output = l == net.L - 1 && p.desc.zero_masked_output;
        }
        if (net.proj) {
          T* dhp = net.rows(rs + p.reserve.dproj[si], HS).row(t, r0);
          project_backward(st, dhs, dhp, HS);
          cpu::gemm<T>(false, false, nb, H, HS, T(1), dhp, HS, w_hr, H, T(0), dhraw, H);
          st.dy = dhraw;
          st.ld_dy = H;
          st.dh = dzero;
          st.zero_masked_output = true;  // masked rows: dh passes by in project_backward
          cell.backward(st);
          // dh_{t-1} = dG W_hh (P wide); masked rows pass dh_t + dy_t on unchanged
          cpu::gemm<T>(false, false, nb, HS, GH, T(1), st.dg, net.SH, w_hh, HS, T(0), dhs, HS);
          for (int64_t n = 0; n < nb; ++n)
            if (st.mask && !st.mask[n * st.ld_mask])
              std::memcpy(dhs + n * HS, dhp + n * HS, sizeof(T) * HS);
          return;
        }
        cell.backward(st);
        // The recurrent product's part of dh_{t-1}: dG_h W_hh, through the dropout mask if any,
        // added to the part the kernel left in dh (GRU z*dh, masked rows' dh).
        const int64_t k_rec = net.rb ? 2 * H : GH;  // reset-before GRU: n goes through r*h
        if (net.rb) {
          // d(r*h) = dn W_hn, then r's gradient and the path of dh through r*h
          T* drh = ws + ln.rh;
          cpu::gemm<T>(false, false, nb, H, H, T(1), st.dg + 2 * H, net.SH, w_hh + 2 * H * H, H,
                       T(0), drh, H);
          st.drh = drh;
          st.ld_drh = H;
          const bool zero_h = first && !a.hx;
          st.h_rec = zero_h ? zeros : st.h_prev;
          st.ld_hrec = zero_h ? 0 : st.ld_hp;
          const T* mh_n = mh ? mh + ((net.DG > 1 ? 2 * N : 0) + r0) * H : nullptr;
          if (mh && !zero_h) {
            mask_rows(Rows<T>{hm, 0, H}, Rows<const T>{st.h_prev, 0, st.ld_hp}, mh_n, 1, nb, H,
                      false);
            st.h_rec = hm;
            st.ld_hrec = H;
          }
          st.rec_mask = mh_n;
          cell.backward2(st);
        }
        if (zone && zn.p_state > 0.0f) {  // the zoned-out elements' gradients skip this step
          add_rows(dhs, zn.skip_h, nb * H);
          if (net.lstm) add_rows(dcs, zn.skip_c, nb * H);
        }
        if (mh && net.DG > 1) {  // per-gate masks: each gate's part through its own mask
          for (int64_t k = 0; k < k_rec / H; ++k) {
            cpu::gemm<T>(false, false, nb, H, H, T(1), st.dg + k * H, net.SH, w_hh + k * H * H, H,
                         T(0), tmp, H);
            mask_rows(Rows<T>{dhs, 0, H}, Rows<const T>{tmp, 0, H}, mh + (k * N + r0) * H, 1, nb,
                      H, true);
          }
        } else if (mh) {
          cpu::gemm<T>(false, false, nb, H, k_rec, T(1), st.dg, net.SH, w_hh, H, T(0), tmp, H);
          mask_rows(Rows<T>{dhs, 0, H}, Rows<const T>{tmp, 0, H}, mh + r0 * H, 1, nb, H, true);
        } else {
          recurrent_gemm(ln, ws, true, nb, H, k_rec, st.dg, net.SH, w_hh, H, dhs, H);
        }
      });
    }
  }

  // The state gradients of (layer, direction) after its last backward step, in sample order.
  void end(int64_t l, int dir, int li) {
    const Plan::Lane& ln = lane(li);
    const int64_t N = net.N, H = net.H, HS = net.HS, si = p.reserve_index(l, dir);
    for (int64_t r = 0; r < N; ++r) {
      const int64_t n = net.sample(r);
      if (a.dhx)
        std::memcpy(static_cast<T*>(a.dhx) + (si * N + n) * HS, ws + ln.dh + r * HS,
                    sizeof(T) * HS);
      if (a.dcx && net.lstm)
        std::memcpy(static_cast<T*>(a.dcx) + (si * N + n) * H, ws + ln.dc + r * H, sizeof(T) * H);
    }
  }

  // Input gradient of steps [t0, t1) of (layer, direction): dX (+)= dG_x W_ih; the directions add
  // into it in order (dir 0 first). With input dropout each direction's part goes through its own
  // mask first. The last direction also adds the residual path.
  void input_grad(int64_t l, int dir, int li, int64_t t0, int64_t t1) {
    const Plan::Lane& ln = lane(li);
    const int64_t N = net.N, H = net.H, GH = net.GH, nt = t1 - t0;
    const int64_t si = p.reserve_index(l, dir), cin = p.desc.layer_input_size(l);
    const T* w_ih = w + layer_param_offsets(p.desc, l, dir).w_ih;
    const T* mx = p.training && p.desc.dropout > 0 ? ws + ln.drop_x : nullptr;
    const Rows<T> dX = this->dX(l).shifted(t0);
    const Rows<const T> dG = net.slots(rs + p.reserve.grads[si]).as_const().shifted(t0);
    const Rows<T> dXd = mx ? net.rows(ws + ln.xdrop, cin).shifted(t0) : dX;
    const T beta = dir == 0 || mx ? T(0) : T(1);
    if (mx && net.DG > 1) {  // per-gate masks: dX += (dG_k W_ih_k) * mx_k for each gate
      for (int64_t k = 0; k < net.G; ++k) {
        gemm_rows<T>(nt, N, dG.shifted(0, net.input_slot(k) * H), H, false, w_ih + k * H * cin,
                     cin, cin, T(0), dXd);
        mask_rows(dX, dXd.as_const(), mx + k * N * cin, nt, N, cin, dir > 0 || k > 0);
      }
    } else {
      if (net.gru && !net.rb) {  // dG_x = [dr, dz | dn] lives in slots 0, 1 and 3
        gemm_rows<T>(nt, N, dG, 2 * H, false, w_ih, cin, cin, beta, dXd);
        gemm_rows<T>(nt, N, dG.shifted(0, 3 * H), H, false, w_ih + 2 * H * cin, cin, cin, T(1),
                     dXd);
      } else {
        gemm_rows<T>(nt, N, dG, GH, false, w_ih, cin, cin, beta, dXd);
      }
      if (mx) mask_rows(dX, dXd.as_const(), mx, nt, N, cin, dir > 0);
    }
    // Residual: the output's gradient reaches the input directly too.
    const Rows<const T> dY = this->dY(l).shifted(t0);
    if (dir == net.D - 1 && p.desc.residual && dY.st + dY.sn > 0) {
      for (int64_t t = 0; t < nt; ++t)
        for (int64_t n = 0; n < dX.count(t, N); ++n) add_rows(dX.row(t, n), dY.row(t, n), cin);
    }
  }

  // After the last layer (layer 0's input gradient): with lengths and a padded dx, scatter it.
  void finish() {
    if (!gathered) return;
    scatter_seq(net, Rows<T>{static_cast<T*>(a.dx), a.dx_st, a.dx_sn}, dX(0).as_const(),
                p.desc.input_size);
  }
};

// ---- Backward-weights ------------------------------------------------------------------------------
// Large GEMMs and column sums per stream, independent across streams (each writes its own pieces of
// dw), so the unrolled executor runs streams on its lanes.
template <typename T>
struct BackwardWeights {
  const Plan& p;
  const BackwardWeightsArgs& a;
  Net<T> net;
  const T* rs;
  T* ws;
  T* dw;
  Rows<const T> X0;  // layer 0's input as the forward saw it: packed rows in rank order with lengths

  BackwardWeights(const Plan& plan, const BackwardWeightsArgs& args)
      : p(plan),
        a(args),
        net(plan),
        rs(static_cast<const T*>(args.reserve)),
        ws(static_cast<T*>(args.workspace)),
        dw(static_cast<T*>(args.dw)),
        X0{static_cast<const T*>(args.x), args.x_st, args.x_sn} {
    net.order = call_order(p, ws, a.lengths, a.packed, a.order);
    if (a.packed) {
      X0 = {static_cast<const T*>(a.x), 0, a.x_sn, p.offsets.data()};
    } else if (p.varlen()) {
      const Rows<T> Xp = net.rows(ws + p.ws.xpack, p.desc.input_size);
      gather_seq(net, Xp, X0, p.desc.input_size);
      X0 = Xp.as_const();
    }
  }

  void stream(int64_t l, int dir, int li) {
    const int64_t T_ = net.T_, N = net.N, H = net.H, GH = net.GH, HS = net.HS;
    const Plan::Lane& ln = p.lanes[li];
    double* colsum = reinterpret_cast<double*>(ws + ln.colsum);
    const int64_t cin = p.desc.layer_input_size(l);
    const Rows<const T> X =
        l == 0 ? X0 : net.grid(const_cast<T*>(rs) + p.reserve.out[l - 1]).as_const();
    const Rows<T> Ow = net.grid(const_cast<T*>(rs) + p.reserve.out[l]);
    const int64_t si = p.reserve_index(l, dir);
    const LayerParams off = layer_param_offsets(p.desc, l, dir);
    // the hidden states (h_{t-1} of the recurrent product), as rows with the direction applied
    const auto Sd = net.states(Ow, const_cast<T*>(rs), nullptr, si, dir);
    const Rows<const T> Hs{Sd.base, Sd.st, Sd.ld, Sd.off};
    const Rows<const T> dG = net.slots(const_cast<T*>(rs) + p.reserve.grads[si]).as_const();
    const T* mx = dropout_mask(net, ws, ln.drop_x, cin, p.desc.dropout, a.seed, l, dir,
                               DropoutKind::kInput);
    const T* mh = dropout_mask(net, ws, ln.drop_h, H, p.desc.recurrent_dropout, a.seed, l, dir,
                               DropoutKind::kRecurrent);
    Rows<const T> Xin = X;  // the layer input as the projection saw it (masked with dropout)
    if (mx && net.DG == 1) {
      const Rows<T> Xm = net.rows(ws + ln.xdrop, cin);
      mask_rows(Xm, X, mx, T_, N, cin, false);
      Xin = Xm.as_const();
    }

    const bool split = net.gru && !net.rb;  // reset-after GRU: dG_x = [dr, dz | dn], slots 0, 1, 3
    // dW_ih += dG_x^T X
    if (mx && net.DG > 1) {  // per-gate masks: gate k's rows pair with x * mx_k
      const Rows<T> Xm = net.rows(ws + ln.xdrop, cin);
      for (int64_t k = 0; k < net.G; ++k) {
        mask_rows(Xm, X, mx + k * N * cin, T_, N, cin, false);
        gemm_rows_tn<T>(T_, N, dG.shifted(0, net.input_slot(k) * H), H, Xm.as_const(), cin,
                        dw + off.w_ih + k * H * cin, cin);
      }
    } else if (split) {
      gemm_rows_tn<T>(T_, N, dG, 2 * H, Xin, cin, dw + off.w_ih, cin);
      gemm_rows_tn<T>(T_, N, dG.shifted(0, 3 * H), H, Xin, cin, dw + off.w_ih + 2 * H * cin, cin);
    } else {
      gemm_rows_tn<T>(T_, N, dG, GH, Xin, cin, dw + off.w_ih, cin);
    }
    // dW_hh += dG_h^T H_prev: every step but the first pairs with the layer's own output one
    // step earlier in processing order; the first pairs with h0 (nothing when h0 is zero). The
    // reset-before GRU does this for r and z; its n rows pair with the saved r*h of the same step.
    const int64_t m_rec = net.rb ? 2 * H : GH;
    if (mh || net.varlen) {
      // recurrent dropout or lengths: gather every step's h_{t-1} (through the mask, per gate
      // with per-gate masks) into packed rows in time order, then one GEMM per pass
      const Rows<T> Hm = net.rows(ws + ln.hprev, HS);
      int64_t ld_h0 = 0;
      const T* h0 = initial_state<T>(net, a.hx, si, HS, nullptr, ws + ln.h0, &ld_h0, true);
      const int64_t passes = mh && net.DG > 1 ? m_rec / H : 1;
      for (int64_t k = 0; k < passes; ++k) {
        for (int64_t t = 0; t < T_; ++t) {
          net.segments(dir, t, [&](int64_t r0, int64_t r1, bool first) {
            const T* src = first ? (h0 ? h0 + r0 * ld_h0 : nullptr)
                                 : Hs.row(net.prev_of(dir, t), r0);
            const int64_t ld_src = first ? ld_h0 : Hs.sn;
            T* dst = Hm.row(t, r0);
            if (!src) {
              std::memset(dst, 0, sizeof(T) * (r1 - r0) * HS);
            } else if (mh) {
              mask_rows(Rows<T>{dst, 0, HS}, Rows<const T>{src, 0, ld_src},
                        mh + (k * N + r0) * H, 1, r1 - r0, H, false);
            } else {
              copy_rows(dst, HS, src, ld_src, r1 - r0, HS);
            }
          });
        }
        const int64_t rows = mh && net.DG > 1 ? H : m_rec;
        gemm_rows_tn<T>(T_, N, dG.shifted(0, k * H), rows, Hm.as_const(), HS,
                        dw + off.w_hh + k * H * HS, HS);
      }
    } else {
      if (T_ > 1) {
        const Rows<const T> dGh = dir == 0 ? dG.shifted(1) : dG;
        const Rows<const T> Hp = dir == 0 ? Hs : Hs.shifted(1);
        gemm_rows_tn<T>(T_ - 1, N, dGh, m_rec, Hp, HS, dw + off.w_hh, HS);
      }
      if (a.hx && T_ > 0) {
        const int64_t t_first = net.time_of(dir, 0);
        const Rows<const T> h0{static_cast<const T*>(a.hx) + si * N * HS, 0, HS};
        gemm_rows_tn<T>(1, N, dG.shifted(t_first), m_rec, h0, HS, dw + off.w_hh, HS);
      }
    }
    if (net.proj) {  // dW_hr += dH^T (o * act(c))
      const Rows<const T> dP = net.rows(const_cast<T*>(rs) + p.reserve.dproj[si], HS).as_const();
      const Rows<const T> Hr = net.rows(const_cast<T*>(rs) + p.reserve.hraw[si], H).as_const();
      gemm_rows_tn<T>(T_, N, dP, HS, Hr, H, dw + off.w_hr, H);
    }
    if (net.rb) {
      const Rows<const T> RH = net.slots(const_cast<T*>(rs) + p.reserve.gates[si]).as_const();
      gemm_rows_tn<T>(T_, N, dG.shifted(0, 2 * H), H, RH.shifted(0, 3 * H), H,
                      dw + off.w_hh + 2 * H * H, H);
    }
    // Bias gradients: column sums of the gate gradients over all (t, n).
    const int64_t rows = p.rows(), width = net.SH;
    const T* g = rs + p.reserve.grads[si];
    for (int64_t c0 = 0; c0 < width; c0 += 64) {
      const int64_t c1 = std::min(width, c0 + 64);
      for (int64_t c = c0; c < c1; ++c) colsum[c] = 0.0;
      for (int64_t r = 0; r < rows; ++r) {
        const T* row = g + r * width;
        for (int64_t c = c0; c < c1; ++c) colsum[c] += row[c];
      }
    }
    T* db_ih = dw + off.b_ih;
    T* db_hh = dw + off.b_hh;
    if (split) {
      for (int64_t k = 0; k < 2 * H; ++k) db_ih[k] += static_cast<T>(colsum[k]);
      for (int64_t j = 0; j < H; ++j) db_ih[2 * H + j] += static_cast<T>(colsum[3 * H + j]);
      for (int64_t k = 0; k < GH; ++k) db_hh[k] += static_cast<T>(colsum[k]);
    } else {
      for (int64_t k = 0; k < GH; ++k) {
        db_ih[k] += static_cast<T>(colsum[k]);
        db_hh[k] += static_cast<T>(colsum[k]);
      }
    }
  }
};

}  // namespace fusedrnn::engine
