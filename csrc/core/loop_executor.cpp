// core/loop_executor.cpp: the while-loop executor: (layer, direction) streams one after another,
// each a run-time loop over its steps (engine.h), and backward-weights (shared by both executors).
//
// Forward projects the input in chunks of plan.chunk_t steps (all T when training, written straight
// into the reserve's gate area); backward-data walks each stream's steps in reverse and then gets
// the layer's input gradient from one large GEMM per direction. Backward-weights is large GEMMs and
// column sums only. Nothing allocates: every buffer is a region of the caller's workspace or
// reserve, laid out by make_plan.
#include <cstring>

#include "engine.h"
#include "executor.h"

namespace fusedrnn::loop {

using namespace engine;

template <typename T>
void forward(const Plan& p, const ForwardArgs& a) {
  Forward<T> f(p, a);
  const int64_t T_ = p.T, chunk = p.chunk_t, nchunks = (T_ + chunk - 1) / chunk;
  for (int64_t l = 0; l < f.net.L; ++l) {
    for (int dir = 0; dir < f.net.D; ++dir) {
      f.begin(l, dir, 0);
      for (int64_t ci = 0; ci < nchunks; ++ci) {
        const int64_t k = dir == 0 ? ci : nchunks - 1 - ci;
        f.chunk(l, dir, 0, k * chunk, std::min(T_, (k + 1) * chunk));
      }
      f.end(l, dir, 0);
    }
    f.layer_end(l);
  }
}

template <typename T>
void backward_data(const Plan& p, const BackwardDataArgs& a) {
  BackwardData<T> b(p, a);
  for (int64_t l = b.net.L - 1; l >= 0; --l) {
    for (int dir = 0; dir < b.net.D; ++dir) {
      b.begin(l, dir, 0);
      b.chunk(l, dir, 0, 0, p.T);
      b.end(l, dir, 0);
      b.input_grad(l, dir, 0, 0, p.T);
    }
  }
  b.finish();
}

template <typename T>
void backward_weights(const Plan& p, const BackwardWeightsArgs& a) {
  Net<T> net(p);
  const int64_t T_ = net.T_, N = net.N, H = net.H, GH = net.GH, D = net.D, L = net.L, HS = net.HS;
  const T* rs = static_cast<const T*>(a.reserve);
  T* ws = static_cast<T*>(a.workspace);
  T* dw = static_cast<T*>(a.dw);
  double* colsum = reinterpret_cast<double*>(ws + p.ws.colsum);
  net.order = call_order(p, ws, a.lengths, a.packed, a.order);
  // layer 0's input as the forward saw it: packed rows in rank order with lengths
  Rows<const T> X0{static_cast<const T*>(a.x), a.x_st, a.x_sn};
  if (a.packed) {
    X0 = {static_cast<const T*>(a.x), 0, a.x_sn, p.offsets.data()};
  } else if (p.varlen()) {
    const Rows<T> Xp = net.rows(ws + p.ws.xpack, p.desc.input_size);
    gather_seq(net, Xp, X0, p.desc.input_size);
    X0 = Xp.as_const();
  }
  const Plan::Lane& ln = p.lanes[0];

  for (int64_t l = 0; l < L; ++l) {
    const int64_t cin = p.desc.layer_input_size(l);
    const Rows<const T> X =
        l == 0 ? X0 : net.grid(const_cast<T*>(rs) + p.reserve.out[l - 1]).as_const();
    const Rows<T> Ow = net.grid(const_cast<T*>(rs) + p.reserve.out[l]);
    for (int dir = 0; dir < D; ++dir) {
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
        const Rows<T> Hm = net.rows(ws + p.ws.hprev, HS);
        int64_t ld_h0 = 0;
        const T* h0 = initial_state<T>(net, a.hx, si, HS, nullptr, ws + ln.h0, &ld_h0);
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
  }
}

template void forward<float>(const Plan&, const ForwardArgs&);
template void forward<double>(const Plan&, const ForwardArgs&);
template void backward_data<float>(const Plan&, const BackwardDataArgs&);
template void backward_data<double>(const Plan&, const BackwardDataArgs&);
template void backward_weights<float>(const Plan&, const BackwardWeightsArgs&);
template void backward_weights<double>(const Plan&, const BackwardWeightsArgs&);

}  // namespace fusedrnn::loop
