// core/loop_executor.cpp: the while-loop executor: a run-time loop over time steps.
//
// Per layer and direction, forward does one input-projection GEMM per chunk of steps (all T at once
// when training, written straight into the reserve's gate area), then for every step one recurrent
// GEMM (h_{t-1} W_hh^T) and one fused pointwise call. Backward-data walks the steps in reverse with
// the fused gate-gradient kernel and one GEMM (dG W_hh) per step, then gets the layer's input gradient
// from one large GEMM. Backward-weights is large GEMMs and column sums only. Nothing allocates: every
// buffer is a region of the caller's workspace or reserve, laid out by make_plan.
#include <cstring>

#include "../cpu/blas.h"
#include "../cpu/cell.h"
#include "executor.h"
#include "fusedrnn/random.h"
#include "rows.h"

namespace fusedrnn::loop {

namespace {

template <typename T>
struct Net {
  const Plan& p;
  int64_t T_, N, H, G, GH, D, L, SH;
  int64_t HS;          // width of h: the projection size, else H
  bool lstm, gru, rb;  // rb: GRU with the reset gate before the recurrent product
  bool proj;           // LSTM with a projection
  int64_t DG;          // dropout masks per (layer, direction) and kind: G per gate, else 1
  bool sep;            // zoneout / residual: hidden states in rows of their own, apart from outputs
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
        sep(plan.desc.separate_states(plan.training)) {}

  // The gate-gradient slot of gate k's input part (reset-after GRU: n's is slot 3).
  int64_t input_slot(int64_t k) const { return gru && !rb && k == 2 ? 3 : k; }
  // Steps of direction `dir` in processing order: s-th step is time index t.
  int64_t time_of(int dir, int64_t s) const { return dir == 0 ? s : T_ - 1 - s; }
  // Time index of the step before t in processing order.
  int64_t prev_of(int dir, int64_t t) const { return dir == 0 ? t - 1 : t + 1; }
  Rows<T> grid(T* base) const { return {base, N * D * HS, D * HS}; }
  Rows<T> slots(T* base) const { return {base, N * SH, SH}; }

  // The hidden-state rows of (layer, direction) given its layer-output grid O: O's slice of the
  // direction, or, with separate states, the reserve's state rows (training) or a ring of two rows in
  // the workspace (inference: step t in row t % 2).
  struct States {
    T* base;
    int64_t st, ld;
    bool ring;
    T* row(int64_t t) const { return base + (ring ? (t & 1) : t) * st; }
  };
  States states(const Rows<T>& O, T* rs, T* ws, int64_t si, int dir) const {
    if (!sep) return {O.p + dir * HS, O.st, O.sn, false};
    if (p.training) return {rs + p.reserve.states[si], N * H, H, false};
    return {ws + p.ws.zone, N * H, H, true};
  }
};

template <typename T>
void add_rows(T* dst, const T* src, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] += src[i];
}

// state (L*D, N, H) of one (layer, direction), or the shared zero row (row stride 0).
template <typename T>
const T* state_or_zero(const void* state, int64_t index, int64_t N, int64_t H, const T* zeros,
                       int64_t* ld) {
  if (state) {
    *ld = H;
    return static_cast<const T*>(state) + index * N * H;
  }
  *ld = 0;
  return zeros;
}

template <typename T>
void copy_rows(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t N, int64_t H) {
  for (int64_t n = 0; n < N; ++n) std::memcpy(dst + n * ld_dst, src + n * ld_src, sizeof(T) * H);
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

// Scaled dropout masks (count, N, width), consecutive in one stream: 1/(1 - rate) where kept, 0
// where dropped; null when rate is 0. count: G with per-gate masks, else 1.
template <typename T>
T* dropout_mask(const Plan& p, T* ws, int64_t offset, int64_t width, double rate, uint64_t seed,
                int64_t layer, int dir, DropoutKind kind) {
  if (!p.training || rate <= 0.0) return nullptr;
  T* m = ws + offset;
  const uint64_t stream = dropout_stream(layer, dir, kind);
  const T keep = static_cast<T>(1.0 / (1.0 - rate));
  const int64_t count = p.desc.dropout_mask_count() * p.N * width;
  for (int64_t i = 0; i < count; ++i)
    m[i] = uniform01(seed, stream, static_cast<uint64_t>(i)) >= rate ? keep : T(0);
  return m;
}

// dst[t, n, :] (+)= src[t, n, :] * mask[n, :] over nt x N rows of `width` (mask rows of `width`).
template <typename T>
void mask_rows(Rows<T> dst, Rows<const T> src, const T* mask, int64_t nt, int64_t N, int64_t width,
               bool accumulate) {
  for (int64_t t = 0; t < nt; ++t) {
    for (int64_t n = 0; n < N; ++n) {
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

}  // namespace

template <typename T>
void forward(const Plan& p, const ForwardArgs& a) {
  const Net<T> net(p);
  const int64_t T_ = net.T_, N = net.N, H = net.H, GH = net.GH, D = net.D, L = net.L, HS = net.HS;
  const auto& cell = p.kernels->get<T>();
  T* ws = static_cast<T*>(a.workspace);
  T* rs = static_cast<T*>(a.reserve);
  const T* w = static_cast<const T*>(a.w);
  const T* zeros = zero_row(p, ws);
  T* bias = ws + p.ws.bias;
  T* gh = ws + p.ws.gh;

  for (int64_t l = 0; l < L; ++l) {
    const bool last = l == L - 1;
    const int64_t cin = p.desc.layer_input_size(l);
    Rows<const T> X;
    if (l == 0) {
      X = {static_cast<const T*>(a.x), a.x_st, a.x_sn};
    } else {
      X = net.grid(p.training ? rs + p.reserve.out[l - 1] : ws + p.ws.inter[(l - 1) % 2]).as_const();
    }
    const Rows<T> Yuser{static_cast<T*>(a.y), a.y_st, a.y_sn};
    // Where this layer's hidden states go (and are read back as h_{t-1}). The user's y can hold
    // them unless training (the reserve keeps them) or masked steps must show zeros there.
    const bool zero_masked = last && a.mask && p.desc.zero_masked_output;
    Rows<T> O;
    if (p.training) {
      O = net.grid(rs + p.reserve.out[l]);
    } else if (!last) {
      O = net.grid(ws + p.ws.inter[l % 2]);
    } else {
      O = zero_masked ? net.grid(ws + p.ws.states) : Yuser;
    }
    const bool copy_to_y = last && (p.training || zero_masked);

    for (int dir = 0; dir < D; ++dir) {
      const int64_t si = p.reserve_index(l, dir);
      const LayerParams off = layer_param_offsets(p.desc, l, dir);
      const T* w_ih = w + off.w_ih;
      const T* w_hh = w + off.w_hh;
      const T* w_hr = net.proj ? w + off.w_hr : nullptr;
      fold_bias(net, w + off.b_ih, w + off.b_hh, bias);
      const auto S = net.states(O, rs, ws, si, dir);
      // Zoneout (training) and residual: the step's epilogue, with its mask streams.
      const bool zone = net.sep;
      StepZone<T> zn = zone_of<T>(p, a.seed, l, dir);
      int64_t ld_h0, ld_c0;
      const T* h0 = state_or_zero<T>(a.hx, si, N, HS, zeros, &ld_h0);
      const T* c0 = state_or_zero<T>(a.cx, si, N, H, zeros, &ld_c0);
      T* cells = p.training && net.lstm ? rs + p.reserve.cells[si] : nullptr;
      T* cstate = !p.training && net.lstm ? ws + p.ws.cstate : nullptr;
      if (cstate) copy_rows(cstate, H, c0, ld_c0, N, H);
      // Dropout (training): the layer input masked once for all steps, h_{t-1} per step.
      const T* mx = dropout_mask(p, ws, p.ws.drop_x, cin, p.desc.dropout, a.seed, l, dir,
                                 DropoutKind::kInput);
      const T* mh = dropout_mask(p, ws, p.ws.drop_h, H, p.desc.recurrent_dropout, a.seed, l, dir,
                                 DropoutKind::kRecurrent);
      Rows<const T> Xin = X;
      if (mx && net.DG == 1) {
        const Rows<T> Xm{ws + p.ws.xdrop, N * cin, cin};
        mask_rows(Xm, X, mx, T_, N, cin, false);
        Xin = Xm.as_const();
      }

      const int64_t chunk = p.chunk_t;
      const int64_t nchunks = (T_ + chunk - 1) / chunk;
      for (int64_t ci = 0; ci < nchunks; ++ci) {
        const int64_t k = dir == 0 ? ci : nchunks - 1 - ci;
        const int64_t t0 = k * chunk, t1 = std::min(T_, t0 + chunk);
        // Input projection of steps [t0, t1): training writes it into the reserve's gate rows,
        // where the pointwise step then overwrites it in place with the saved gates.
        T* gx;
        int64_t ld_gx;
        if (p.training) {
          ld_gx = net.SH;
          gx = rs + p.reserve.gates[si] + t0 * N * ld_gx;
        } else {
          ld_gx = GH;
          gx = ws + p.ws.gx;
        }
        if (mx && net.DG > 1) {
          // per-gate masks (training: one chunk of all T steps): gate k's block sees x * mx_k
          const Rows<T> Xm{ws + p.ws.xdrop, N * cin, cin};
          for (int64_t k = 0; k < net.G; ++k) {
            mask_rows(Xm, X, mx + k * N * cin, T_, N, cin, false);
            gemm_rows<T>(T_, N, Xm.as_const(), cin, true, w_ih + k * H * cin, cin, H, T(0),
                         Rows<T>{gx + k * H, N * ld_gx, ld_gx});
          }
        } else {
          gemm_rows<T>(t1 - t0, N, Xin.shifted(t0), cin, true, w_ih, cin, GH, T(0),
                       Rows<T>{gx, N * ld_gx, ld_gx});
        }

        for (int64_t s = 0; s < t1 - t0; ++s) {
          const int64_t t = dir == 0 ? t0 + s : t1 - 1 - s;
          const bool first = dir == 0 ? t == 0 : t == T_ - 1;
          const int64_t tp = net.prev_of(dir, t);
          StepForward<T> st;
          st.N = N;
          st.H = H;
          st.act = p.desc.activation;
          st.rec = p.desc.recurrent_activation;
          st.gx = gx + (t - t0) * N * ld_gx;
          st.ld_gx = ld_gx;
          st.bias = bias;
          if (first) {
            st.h_prev = h0;
            st.ld_hp = ld_h0;
          } else {
            st.h_prev = S.row(tp);
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
              T* hm = ws + p.ws.hdrop;
              for (int64_t k = 0; k < k_rec; ++k) {
                mask_rows(Rows<T>{hm, 0, H}, Rows<const T>{st.h_prev, 0, st.ld_hp}, mh + k * N * H,
                          1, N, H, false);
                cpu::gemm<T>(false, true, N, H, H, T(1), hm, H, w_hh + k * H * H, H, T(0),
                             gh + k * H, GH);
              }
              if (net.rb) {  // n's product sees r * (h_{t-1} * mh_n)
                mask_rows(Rows<T>{hm + N * H, 0, H}, Rows<const T>{st.h_prev, 0, st.ld_hp},
                          mh + 2 * N * H, 1, N, H, false);
                st.h_rec = hm + N * H;
                st.ld_hrec = H;
              }
            } else {
              if (mh) {  // recurrent dropout: the product sees h_{t-1} * mask
                T* hm = ws + p.ws.hdrop;
                mask_rows(Rows<T>{hm, 0, H}, Rows<const T>{st.h_prev, 0, st.ld_hp}, mh, 1, N, H,
                          false);
                st.h_rec = hm;
                st.ld_hrec = H;
              }
              cpu::gemm<T>(false, true, N, k_rec * H, HS, T(1), st.h_rec, st.ld_hrec, w_hh, HS,
                           T(0), gh, GH);
            }
            st.gh = gh;
            st.ld_gh = GH;
          }
          if (cells) {
            st.c_prev = first ? c0 : cells + tp * N * H;
            st.ld_cp = first ? ld_c0 : H;
            st.c_out = cells + t * N * H;
            st.ld_co = H;
          } else if (cstate) {
            st.c_prev = st.c_out = cstate;
            st.ld_cp = st.ld_co = H;
          }
          st.h_out = S.row(t);
          st.ld_ho = S.ld;
          if (net.proj) {  // the cell writes o * act(c); h = that W_hr^T, after it
            st.h_out = p.training ? rs + p.reserve.hraw[si] + t * N * H : ws + p.ws.proj;
            st.ld_ho = H;
            st.proj = true;
          }
          if (copy_to_y && !zone && !net.proj) {
            st.y_out = Yuser.row(t) + dir * H;
            st.ld_yo = Yuser.sn;
          }
          if (a.mask) {
            st.mask = a.mask + t * a.mask_st;
            st.ld_mask = a.mask_sn;
            st.zero_masked_output = zero_masked;
          }
          if (net.rb) {  // training saves r*h in the gate row's fourth slot
            st.rh = p.training ? st.gx + 3 * H : ws + p.ws.rh;
            st.ld_rh = p.training ? ld_gx : H;
          }
          (p.training ? cell.forward_train : cell.forward_infer)(st);
          if (net.rb) {
            if (!zero_h)
              cpu::gemm<T>(false, true, N, H, H, T(1), st.rh, st.ld_rh, w_hh + 2 * H * H, H, T(0),
                           gh + 2 * H, GH);
            cell.forward2(st);
          }
          if (net.proj) {
            cpu::gemm<T>(false, true, N, HS, H, T(1), st.h_out, H, w_hr, H, T(0), S.row(t), S.ld);
            project_fixup(st, S.row(t), S.ld, HS, copy_to_y ? Yuser.row(t) + dir * HS : nullptr,
                          Yuser.sn);
          }
          if (zone) {
            zn.index0 = static_cast<uint64_t>(t * N * H);
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
              T* ring = ws + p.ws.zone;
              zn.y = ring + (t & 1) * N * H;
              zn.y_prev = first ? zeros : ring + (tp & 1) * N * H;
              zn.ld_yp = first ? 0 : H;
            }
            zn.out = O.row(t) + dir * H;
            zn.ld_out = O.sn;
            if (copy_to_y) {
              zn.out2 = Yuser.row(t) + dir * H;
              zn.ld_out2 = Yuser.sn;
            }
            if (p.desc.residual) {
              zn.x = X.row(t) + dir * H;
              zn.ld_x = X.sn;
            }
            cell.zone_forward(zn);
          }
        }
      }

      const int64_t t_last = net.time_of(dir, T_ - 1);
      if (a.hy) copy_rows(static_cast<T*>(a.hy) + si * N * HS, HS, S.row(t_last), S.ld, N, HS);
      if (a.cy && net.lstm) {
        const T* c_last = cells ? cells + t_last * N * H : cstate;
        copy_rows(static_cast<T*>(a.cy) + si * N * H, H, c_last, H, N, H);
      }
    }
  }
}

template <typename T>
void backward_data(const Plan& p, const BackwardDataArgs& a) {
  const Net<T> net(p);
  const int64_t T_ = net.T_, N = net.N, H = net.H, GH = net.GH, D = net.D, L = net.L, HS = net.HS;
  const auto& cell = p.kernels->get<T>();
  T* ws = static_cast<T*>(a.workspace);
  T* rs = static_cast<T*>(a.reserve);
  const T* w = static_cast<const T*>(a.w);
  const T* zeros = zero_row(p, ws);
  T* dh = ws + p.ws.dh;
  T* dc = ws + p.ws.dc;

  for (int64_t l = L - 1; l >= 0; --l) {
    const int64_t cin = p.desc.layer_input_size(l);
    Rows<const T> dY;  // gradient arriving at this layer's output
    if (l == L - 1) {
      dY = a.dy ? Rows<const T>{static_cast<const T*>(a.dy), a.dy_st, a.dy_sn}
                : Rows<const T>{zeros, 0, 0};
    } else {
      dY = net.grid(ws + p.ws.inter[l % 2]).as_const();
    }
    const Rows<T> dX = l == 0 ? Rows<T>{static_cast<T*>(a.dx), a.dx_st, a.dx_sn}
                              : net.grid(ws + p.ws.inter[(l - 1) % 2]);
    const Rows<T> O = net.grid(rs + p.reserve.out[l]);

    for (int dir = 0; dir < D; ++dir) {
      const int64_t si = p.reserve_index(l, dir);
      const LayerParams off = layer_param_offsets(p.desc, l, dir);
      const T* w_ih = w + off.w_ih;
      const T* w_hh = w + off.w_hh;
      const T* w_hr = net.proj ? w + off.w_hr : nullptr;
      const auto S = net.states(O, rs, ws, si, dir);
      // Zoneout / residual: the gradient splits of the forward's epilogue, in workspace rows.
      const bool zone = net.sep;
      StepZone<T> zn = zone_of<T>(p, a.seed, l, dir);
      if (zone) {
        T* zw = ws + p.ws.zone;
        zn.carry = zw;
        zn.dk = zw + N * H;
        zn.skip_h = zw + 2 * N * H;
        zn.skip_c = zw + 3 * N * H;
        zn.dh = dh;
        zn.dc = net.lstm ? dc : nullptr;
        std::memset(zn.carry, 0, sizeof(T) * N * H);
      }
      int64_t ld, ld_h0, ld_c0;
      const T* h0 = state_or_zero<T>(a.hx, si, N, HS, zeros, &ld_h0);
      const T* c0 = state_or_zero<T>(a.cx, si, N, H, zeros, &ld_c0);
      const T* dhN = state_or_zero<T>(a.dhy, si, N, HS, zeros, &ld);
      copy_rows(dh, HS, dhN, ld, N, HS);
      // projection: the cell kernel sees d(o * act(c)) and a zero dh row (its dh_{t-1} is all W_hh's)
      T* dhraw = net.proj ? ws + p.ws.proj : nullptr;
      T* dzero = net.proj ? ws + p.ws.proj + N * H : nullptr;
      if (dzero) std::memset(dzero, 0, sizeof(T) * N * H);
      if (net.lstm) {
        const T* dcN = state_or_zero<T>(a.dcy, si, N, H, zeros, &ld);
        copy_rows(dc, H, dcN, ld, N, H);
      }
      const T* gates = rs + p.reserve.gates[si];
      const T* cells = net.lstm ? rs + p.reserve.cells[si] : nullptr;
      T* grads = rs + p.reserve.grads[si];
      // The forward's dropout masks, drawn again from the same (seed, position).
      const T* mx = dropout_mask(p, ws, p.ws.drop_x, cin, p.desc.dropout, a.seed, l, dir,
                                 DropoutKind::kInput);
      const T* mh = dropout_mask(p, ws, p.ws.drop_h, H, p.desc.recurrent_dropout, a.seed, l, dir,
                                 DropoutKind::kRecurrent);
      T* hm = mh ? ws + p.ws.hdrop : nullptr;        // h_{t-1} * mask, as the forward's product saw it
      T* tmp = mh ? ws + p.ws.hdrop + N * H : nullptr;  // dG W_hh before the mask

      for (int64_t s = T_ - 1; s >= 0; --s) {
        const int64_t t = net.time_of(dir, s);
        const bool first = s == 0;
        const int64_t tp = net.prev_of(dir, t);
        StepBackward<T> st;
        st.N = N;
        st.H = H;
        st.act = p.desc.activation;
        st.rec = p.desc.recurrent_activation;
        st.dy = dY.row(t) + dir * HS;
        st.ld_dy = dY.sn;
        if (zone) {
          zn.index0 = static_cast<uint64_t>(t * N * H);
          zn.dout = st.dy;
          zn.ld_dout = st.ld_dy;
          cell.zone_backward(zn);
          if (zn.p_out > 0.0f) {
            st.dy = zn.dk;
            st.ld_dy = H;
          }
        }
        st.dh = dh;
        st.ld_dh = H;
        st.dc = dc;
        st.ld_dc = H;
        st.gates = gates + t * N * net.SH;
        st.ld_g = net.SH;
        if (cells) {
          // with zoneout states the saved cells are zoned: the kernel recomputes the unzoned one
          st.c = zone && zn.p_state > 0.0f ? nullptr : cells + t * N * H;
          st.ld_c = H;
          st.c_prev = first ? c0 : cells + tp * N * H;
          st.ld_cp = first ? ld_c0 : H;
        }
        st.h_prev = first ? h0 : S.row(tp);
        st.ld_hp = first ? ld_h0 : S.ld;
        st.dg = grads + t * N * net.SH;
        st.ld_dg = net.SH;
        st.slots = p.gate_slots;
        if (a.mask) {
          st.mask = a.mask + t * a.mask_st;
          st.ld_mask = a.mask_sn;
          st.zero_masked_output = l == L - 1 && p.desc.zero_masked_output;
        }
        if (net.proj) {
          T* dhp = rs + p.reserve.dproj[si] + t * N * HS;
          project_backward(st, dh, dhp, HS);
          cpu::gemm<T>(false, false, N, H, HS, T(1), dhp, HS, w_hr, H, T(0), dhraw, H);
          st.dy = dhraw;
          st.ld_dy = H;
          st.dh = dzero;
          st.zero_masked_output = true;  // masked rows: dh passes by in project_backward
          cell.backward(st);
          // dh_{t-1} = dG W_hh (P wide); masked rows pass dh_t + dy_t on unchanged
          cpu::gemm<T>(false, false, N, HS, GH, T(1), st.dg, net.SH, w_hh, HS, T(0), dh, HS);
          for (int64_t n = 0; n < N; ++n)
            if (st.mask && !st.mask[n * st.ld_mask])
              std::memcpy(dh + n * HS, dhp + n * HS, sizeof(T) * HS);
          continue;
        }
        cell.backward(st);
        // The recurrent product's part of dh_{t-1}: dG_h W_hh, through the dropout mask if any,
        // added to the part the kernel left in dh (GRU z*dh, masked rows' dh).
        const int64_t k_rec = net.rb ? 2 * H : GH;  // reset-before GRU: n goes through r*h
        if (net.rb) {
          // d(r*h) = dn W_hn, then r's gradient and the path of dh through r*h
          T* drh = ws + p.ws.rh;
          cpu::gemm<T>(false, false, N, H, H, T(1), st.dg + 2 * H, net.SH, w_hh + 2 * H * H, H,
                       T(0), drh, H);
          st.drh = drh;
          st.ld_drh = H;
          const bool zero_h = first && !a.hx;
          st.h_rec = zero_h ? zeros : st.h_prev;
          st.ld_hrec = zero_h ? 0 : st.ld_hp;
          const T* mh_n = mh && net.DG > 1 ? mh + 2 * N * H : mh;  // the mask n's product saw
          if (mh && !zero_h) {
            mask_rows(Rows<T>{hm, 0, H}, Rows<const T>{st.h_prev, 0, st.ld_hp}, mh_n, 1, N, H,
                      false);
            st.h_rec = hm;
            st.ld_hrec = H;
          }
          st.rec_mask = mh_n;
          cell.backward2(st);
        }
        if (zone && zn.p_state > 0.0f) {  // the zoned-out elements' gradients skip this step
          add_rows(dh, zn.skip_h, N * H);
          if (net.lstm) add_rows(dc, zn.skip_c, N * H);
        }
        if (mh && net.DG > 1) {  // per-gate masks: each gate's part through its own mask
          for (int64_t k = 0; k < k_rec / H; ++k) {
            cpu::gemm<T>(false, false, N, H, H, T(1), st.dg + k * H, net.SH, w_hh + k * H * H, H,
                         T(0), tmp, H);
            mask_rows(Rows<T>{dh, 0, H}, Rows<const T>{tmp, 0, H}, mh + k * N * H, 1, N, H, true);
          }
        } else if (mh) {
          cpu::gemm<T>(false, false, N, H, k_rec, T(1), st.dg, net.SH, w_hh, H, T(0), tmp, H);
          mask_rows(Rows<T>{dh, 0, H}, Rows<const T>{tmp, 0, H}, mh, 1, N, H, true);
        } else {
          cpu::gemm<T>(false, false, N, H, k_rec, T(1), st.dg, net.SH, w_hh, H, T(1), dh, H);
        }
      }
      if (a.dhx) copy_rows(static_cast<T*>(a.dhx) + si * N * HS, HS, dh, HS, N, HS);
      if (a.dcx && net.lstm) copy_rows(static_cast<T*>(a.dcx) + si * N * H, H, dc, H, N, H);

      // Input gradient of the whole layer: dX (+)= dG_x W_ih; both directions add into it. With
      // input dropout each direction's part goes through its own mask first.
      const Rows<const T> dG = net.slots(grads).as_const();
      const Rows<T> dXd = mx ? Rows<T>{ws + p.ws.xdrop, N * cin, cin} : dX;
      const T beta = dir == 0 || mx ? T(0) : T(1);
      if (mx && net.DG > 1) {  // per-gate masks: dX += (dG_k W_ih_k) * mx_k for each gate
        for (int64_t k = 0; k < net.G; ++k) {
          gemm_rows<T>(T_, N, dG.shifted(0, net.input_slot(k) * H), H, false, w_ih + k * H * cin,
                       cin, cin, T(0), dXd);
          mask_rows(dX, dXd.as_const(), mx + k * N * cin, T_, N, cin, dir > 0 || k > 0);
        }
        continue;
      }
      if (net.gru && !net.rb) {  // dG_x = [dr, dz | dn] lives in slots 0, 1 and 3
        gemm_rows<T>(T_, N, dG, 2 * H, false, w_ih, cin, cin, beta, dXd);
        gemm_rows<T>(T_, N, dG.shifted(0, 3 * H), H, false, w_ih + 2 * H * cin, cin, cin, T(1), dXd);
      } else {
        gemm_rows<T>(T_, N, dG, GH, false, w_ih, cin, cin, beta, dXd);
      }
      if (mx) mask_rows(dX, dXd.as_const(), mx, T_, N, cin, dir > 0);
    }
    // Residual: the output's gradient reaches the input directly too.
    if (p.desc.residual && dY.st + dY.sn > 0) {
      for (int64_t t = 0; t < T_; ++t)
        for (int64_t n = 0; n < N; ++n) add_rows(dX.row(t, n), dY.row(t, n), cin);
    }
  }
}

template <typename T>
void backward_weights(const Plan& p, const BackwardWeightsArgs& a) {
  const Net<T> net(p);
  const int64_t T_ = net.T_, N = net.N, H = net.H, GH = net.GH, D = net.D, L = net.L, HS = net.HS;
  const T* rs = static_cast<const T*>(a.reserve);
  T* dw = static_cast<T*>(a.dw);
  double* colsum = reinterpret_cast<double*>(static_cast<T*>(a.workspace) + p.ws.colsum);

  for (int64_t l = 0; l < L; ++l) {
    const int64_t cin = p.desc.layer_input_size(l);
    const Rows<const T> X = l == 0 ? Rows<const T>{static_cast<const T*>(a.x), a.x_st, a.x_sn}
                                   : net.grid(const_cast<T*>(rs) + p.reserve.out[l - 1]).as_const();
    const Rows<T> Ow = net.grid(const_cast<T*>(rs) + p.reserve.out[l]);
    for (int dir = 0; dir < D; ++dir) {
      const int64_t si = p.reserve_index(l, dir);
      const LayerParams off = layer_param_offsets(p.desc, l, dir);
      // the hidden states (h_{t-1} of the recurrent product), as rows with the direction applied
      const auto Sd = net.states(Ow, const_cast<T*>(rs), nullptr, si, dir);
      const Rows<const T> Hs{Sd.base, Sd.st, Sd.ld};
      const Rows<const T> dG = net.slots(const_cast<T*>(rs) + p.reserve.grads[si]).as_const();
      T* ws = static_cast<T*>(a.workspace);
      const T* mx = dropout_mask(p, ws, p.ws.drop_x, cin, p.desc.dropout, a.seed, l, dir,
                                 DropoutKind::kInput);
      const T* mh = dropout_mask(p, ws, p.ws.drop_h, H, p.desc.recurrent_dropout, a.seed, l, dir,
                                 DropoutKind::kRecurrent);
      Rows<const T> Xin = X;  // the layer input as the projection saw it (masked with dropout)
      if (mx && net.DG == 1) {
        const Rows<T> Xm{ws + p.ws.xdrop, N * cin, cin};
        mask_rows(Xm, X, mx, T_, N, cin, false);
        Xin = Xm.as_const();
      }

      const bool split = net.gru && !net.rb;  // reset-after GRU: dG_x = [dr, dz | dn], slots 0, 1, 3
      // dW_ih += dG_x^T X
      if (mx && net.DG > 1) {  // per-gate masks: gate k's rows pair with x * mx_k
        const Rows<T> Xm{ws + p.ws.xdrop, N * cin, cin};
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
      if (mh) {
        // recurrent dropout: pair every step with its masked h_{t-1}, gathered in time order; with
        // per-gate masks once per gate, for that gate's rows
        const Rows<T> Hm{ws + p.ws.xdrop, N * H, H};
        const int64_t passes = net.DG > 1 ? m_rec / H : 1;
        for (int64_t k = 0; k < passes; ++k) {
          for (int64_t t = 0; t < T_; ++t) {
            const bool first = t == net.time_of(dir, 0);
            const T* src = first ? (a.hx ? static_cast<const T*>(a.hx) + si * N * H : nullptr)
                                 : Hs.row(net.prev_of(dir, t));
            if (src) {
              mask_rows(Hm.shifted(t), Rows<const T>{src, 0, first ? H : Hs.sn}, mh + k * N * H,
                        1, N, H, false);
            } else {
              std::memset(Hm.row(t), 0, sizeof(T) * N * H);
            }
          }
          const int64_t rows = net.DG > 1 ? H : m_rec;
          gemm_rows_tn<T>(T_, N, dG.shifted(0, k * H), rows, Hm.as_const(), H,
                          dw + off.w_hh + k * H * H, H);
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
        const Rows<const T> dP{rs + p.reserve.dproj[si], N * HS, HS};
        const Rows<const T> Hr{rs + p.reserve.hraw[si], N * H, H};
        gemm_rows_tn<T>(T_, N, dP, HS, Hr, H, dw + off.w_hr, H);
      }
      if (net.rb) {
        const Rows<const T> RH = net.slots(const_cast<T*>(rs) + p.reserve.gates[si]).as_const();
        gemm_rows_tn<T>(T_, N, dG.shifted(0, 2 * H), H, RH.shifted(0, 3 * H), H,
                        dw + off.w_hh + 2 * H * H, H);
      }
      // Bias gradients: column sums of the gate gradients over all (t, n).
      const int64_t rows = T_ * N, width = net.SH;
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
  }
}

template void forward<float>(const Plan&, const ForwardArgs&);
template void forward<double>(const Plan&, const ForwardArgs&);
template void backward_data<float>(const Plan&, const BackwardDataArgs&);
template void backward_data<double>(const Plan&, const BackwardDataArgs&);
template void backward_weights<float>(const Plan&, const BackwardWeightsArgs&);
template void backward_weights<double>(const Plan&, const BackwardWeightsArgs&);

}  // namespace fusedrnn::loop
