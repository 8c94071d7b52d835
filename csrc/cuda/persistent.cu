// cuda/persistent.cu: the persistent forward kernel for small batches (float32; LSTM, GRU with the
// reset gate after the product, RNN).
//
// One cooperative launch runs every step of one (layer, direction). Block b owns hidden units
// [b*U, (b+1)*U) with all G of their gate rows of W_hh, held in registers for the whole sequence:
// warp w keeps rows [w*RPW, (w+1)*RPW) of the block's G*U rows, each lane the columns
// k = 128*q + 4*lane + e (q < KCH/4, e < 4), so a warp's 16-byte shared-memory reads of h are
// consecutive. Per step:
//   1. the block stages h_{t-1} (the active rows, all H columns) from global memory (L2, bypassing
//      L1, since other blocks wrote it) into shared memory;
//   2. each warp forms its rows' recurrent pre-activations for every active sample: per lane a partial
//      sum over its columns, then a warp reduction;
//   3. the block applies the cell (biases, activations, state update) to its units, keeping the
//      LSTM cell state in shared memory across steps, and writes h_t (double-buffered in global
//      memory), the output row and, in training, the reserve rows of the step path's layout;
//   4. one grid-wide barrier.
// Rows past a step's active batch copy their state through, so the final buffer holds each sample's
// state at its own last step (lengths), as the step path's running state does.
#include <cooperative_groups.h>

#include <algorithm>

#include "common.cuh"

namespace fusedrnn {
namespace cuda {

namespace {

namespace cg = cooperative_groups;

constexpr int kWarps = 8;
constexpr int kBlockThreads = kWarps * 32;

struct PK {
  int T, N, H, U, G, gs, mode, act, ract;
  bool reverse;
  const float* gx;
  int64_t ldgx;
  const float* whh;
  const float* bih;
  const float* bhh;
  float* h;
  float* c;
  float* y;
  int64_t ldy;
  float* gates;
  float* cell;
  float* cprev;
  float* hprev;
  float* hbuf;
  const int64_t* offsets;
};

// Copies rows [0, rows) of a (rows, width) matrix in global memory (written by other blocks: read
// through L2 only) into shared memory rows of stride `ld`, with kV loads in flight per thread.
__device__ __forceinline__ void stage_rows(float* dst, int ld, const float* src, int64_t src_ld,
                                           int rows, int width) {
  constexpr int kV = 8;
  const int tid = threadIdx.x;
  if ((width & 3) == 0 && (src_ld & 3) == 0 && (ld & 3) == 0 &&
      (reinterpret_cast<uintptr_t>(src) & 15) == 0) {
    // 16-byte asynchronous copies global -> shared through L2 only (cp.async.cg): every copy of
    // the block in flight at once, no registers held, one round trip.
    const int w4 = width >> 2;
    const int total = rows * w4;
    for (int i = tid; i < total; i += kBlockThreads) {
      const float* g = src + (i / w4) * src_ld + 4 * (i % w4);
      const unsigned sa =
          static_cast<unsigned>(__cvta_generic_to_shared(dst + (i / w4) * ld + 4 * (i % w4)));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(g) : "memory");
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  } else {
    const int total = rows * width;
    for (int base = 0; base < total; base += kBlockThreads * kV) {
      float v[kV];
#pragma unroll
      for (int q = 0; q < kV; ++q) {
        const int i = base + q * kBlockThreads + tid;
        if (i < total) v[q] = __ldcg(src + (i / width) * src_ld + i % width);
      }
#pragma unroll
      for (int q = 0; q < kV; ++q) {
        const int i = base + q * kBlockThreads + tid;
        if (i < total) dst[(i / width) * ld + i % width] = v[q];
      }
    }
  }
}

// Every lane's acc becomes the sum over the warp; the A*B butterflies interleaved, so their
// shuffle latencies overlap.
template <int A, int B>
__device__ __forceinline__ void warp_allreduce(float (&acc)[A][B]) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
#pragma unroll
    for (int a = 0; a < A; ++a)
#pragma unroll
      for (int b = 0; b < B; ++b) acc[a][b] += __shfl_xor_sync(0xffffffffu, acc[a][b], off);
}

template <int RPW, int KCH>
__global__ void __launch_bounds__(kBlockThreads, 1) persistent_kernel(PK a) {
  static_assert(KCH % 4 == 0, "KCH must be a multiple of 4");
  constexpr int HP = KCH * 32;  // padded row width of the staged h
  extern __shared__ float4 smem4[];
  float* hs = reinterpret_cast<float*>(smem4);  // (N, HP)
  const int R = a.G * a.U;
  float* pre = hs + int64_t(a.N) * HP;  // (N, R) recurrent pre-activations
  float* cs = pre + a.N * R;            // (N, U) LSTM cell state
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int H = a.H, U = a.U, N = a.N;
  const int j0 = blockIdx.x * U;
  cg::grid_group grid = cg::this_grid();

  // W_hh rows of this warp, in registers for all steps.
  float w[RPW][KCH];
#pragma unroll
  for (int r = 0; r < RPW; ++r) {
    const int lr = warp * RPW + r;
    const int g = lr / U, u = lr % U, j = j0 + u;
    const bool valid = lr < R && j < H;
#pragma unroll
    for (int kc = 0; kc < KCH; ++kc) {
      const int k = 128 * (kc / 4) + 4 * lane + (kc % 4);
      w[r][kc] = valid && k < H ? a.whh[(int64_t(g) * H + j) * H + k] : 0.0f;
    }
  }
  for (int i = tid; i < N * (HP - H); i += kBlockThreads)
    hs[(i / (HP - H)) * HP + H + i % (HP - H)] = 0.0f;
  if (a.mode == 0)
    for (int i = tid; i < N * U; i += kBlockThreads) {
      const int n = i / U, j = j0 + i % U;
      if (j < H) cs[i] = a.c[int64_t(n) * H + j];
    }

  // The biases of the thread's first cell item (unit tid % U), constant over the steps.
  float bi0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, bh0[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (j0 + tid % U < H) {
#pragma unroll
    for (int g = 0; g < 4; ++g)
      if (g < a.G) {
        bi0[g] = a.bih[g * H + j0 + tid % U];
        bh0[g] = a.bhh[g * H + j0 + tid % U];
      }
  }

  const int64_t NH = int64_t(N) * H;
  for (int s = 0; s < a.T; ++s) {
    const int t = a.reverse ? a.T - 1 - s : s;
    const int64_t r0 = a.offsets ? a.offsets[t] : int64_t(t) * N;
    const int b = a.offsets ? static_cast<int>(a.offsets[t + 1] - r0) : N;
    const float* src = s == 0 ? a.h : a.hbuf + ((s - 1) & 1) * NH;
    float* dst = a.hbuf + (s & 1) * NH;

    // This step's input projections and biases of the first cell item, loaded before the
    // products so that their latency hides behind them.
    float gx0[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (tid < b * U && j0 + tid % U < H) {
      const float* gxr = a.gx + (r0 + tid / U) * a.ldgx + j0 + tid % U;
#pragma unroll
      for (int g = 0; g < 4; ++g)
        if (g < a.G) gx0[g] = gxr[g * H];
    }
    stage_rows(hs, HP, src, H, b, H);
    __syncthreads();

    // NB samples at a time: their reductions are independent shuffle chains, so their latencies
    // overlap (one sample at a time left the warps waiting on one chain).
    constexpr int NB = RPW >= 4 ? 2 : 4;
    for (int n0 = 0; n0 < b; n0 += NB) {
      float acc[NB][RPW];
#pragma unroll
      for (int m = 0; m < NB; ++m)
#pragma unroll
        for (int r = 0; r < RPW; ++r) acc[m][r] = 0.0f;
#pragma unroll
      for (int q = 0; q < KCH / 4; ++q) {
#pragma unroll
        for (int m = 0; m < NB; ++m) {
          // rows past b read row b-1's neighbour in the padded buffer: results are discarded
          const float4 v = reinterpret_cast<const float4*>(hs + int64_t(min(n0 + m, N - 1)) * HP)[32 * q + lane];
#pragma unroll
          for (int r = 0; r < RPW; ++r) {
            acc[m][r] = fmaf(w[r][4 * q], v.x, acc[m][r]);
            acc[m][r] = fmaf(w[r][4 * q + 1], v.y, acc[m][r]);
            acc[m][r] = fmaf(w[r][4 * q + 2], v.z, acc[m][r]);
            acc[m][r] = fmaf(w[r][4 * q + 3], v.w, acc[m][r]);
          }
        }
      }
      warp_allreduce(acc);
      if (lane == 0)
#pragma unroll
        for (int m = 0; m < NB; ++m)
#pragma unroll
          for (int r = 0; r < RPW; ++r) {
            const int lr = warp * RPW + r;
            if (lr < R && n0 + m < b) pre[(n0 + m) * R + lr] = acc[m][r];
          }
    }
    __syncthreads();

    for (int i = tid; i < N * U; i += kBlockThreads) {
      const int n = i / U, u = i % U, j = j0 + u;
      if (j >= H) continue;
      const int64_t e = int64_t(n) * H + j;
      if (n >= b) {  // not active this step: the state passes through
        dst[e] = __ldcg(src + e);
        continue;
      }
      const int64_t row = r0 + n;
      const float* gxr = a.gx + row * a.ldgx;
      float gv[4], bi[4], bh[4];
#pragma unroll
      for (int g = 0; g < 4; ++g) {
        const bool first = i == tid, in = g < a.G;
        gv[g] = first ? gx0[g] : (in ? gxr[g * H + j] : 0.0f);
        bi[g] = first ? bi0[g] : (in ? a.bih[g * H + j] : 0.0f);
        bh[g] = first ? bh0[g] : (in ? a.bhh[g * H + j] : 0.0f);
      }
      const float* pr = pre + n * R;
      const float hp = hs[int64_t(n) * HP + j];
      float* grow = a.gates ? a.gates + row * a.gs * H : nullptr;
      float hn;
      if (a.mode == 0) {
        const float i_ = act_f(a.ract, gv[0] + pr[u] + bi[0] + bh[0]);
        const float f_ = act_f(a.ract, gv[1] + pr[U + u] + bi[1] + bh[1]);
        const float g_ = act_f(a.act, gv[2] + pr[2 * U + u] + bi[2] + bh[2]);
        const float o_ = act_f(a.ract, gv[3] + pr[3 * U + u] + bi[3] + bh[3]);
        const float cp = cs[i];
        const float cn = f_ * cp + i_ * g_;
        hn = o_ * act_f(a.act, cn);
        cs[i] = cn;
        if (grow) {
          grow[j] = i_;
          grow[H + j] = f_;
          grow[2 * H + j] = g_;
          grow[3 * H + j] = o_;
          a.cell[row * H + j] = cn;
          a.cprev[row * H + j] = cp;
        }
      } else if (a.mode == 1) {
        const float r_ = act_f(a.ract, gv[0] + pr[u] + bi[0] + bh[0]);
        const float z_ = act_f(a.ract, gv[1] + pr[U + u] + bi[1] + bh[1]);
        const float hn_ = pr[2 * U + u] + bh[2];
        const float n_ = act_f(a.act, gv[2] + bi[2] + r_ * hn_);
        hn = (1.0f - z_) * n_ + z_ * hp;
        if (grow) {
          grow[j] = r_;
          grow[H + j] = z_;
          grow[2 * H + j] = n_;
          grow[3 * H + j] = hn_;
        }
      } else {
        hn = act_f(a.act, gv[0] + pr[u] + bi[0] + bh[0]);
        if (grow) grow[j] = hn;
      }
      if (grow) a.hprev[row * H + j] = hp;
      dst[e] = hn;
      a.y[row * a.ldy + j] = hn;
    }
    grid.sync();
  }

  // The final states, each block its own units.
  const float* last = a.T > 0 ? a.hbuf + ((a.T - 1) & 1) * NH : a.h;
  for (int i = tid; i < N * U; i += kBlockThreads) {
    const int n = i / U, j = j0 + i % U;
    if (j >= H) continue;
    const int64_t e = int64_t(n) * H + j;
    a.h[e] = __ldcg(last + e);
    if (a.mode == 0) a.c[e] = cs[i];
  }
}

// ---- backward ---------------------------------------------------------------------------------------
// The same ownership: block b owns units [b*U, (b+1)*U), with its running dh (and LSTM dc) in shared
// memory across steps. Per step (in the opposite order of forward):
//   1. the cell's gate gradients of its units, for the active rows (from the reserve, the running
//      dh and the output gradient), written to the reserve's gradient rows;
//   2. one grid-wide barrier: every unit's gate gradients of the step are written;
//   3. dh_{t-1} of its units: the gate gradients of the step (all G*H recurrent columns, staged
//      through shared memory in chunks of `nch` rows) times the block's columns of W_hh, held in
//      registers (thread t keeps rows t + 256*i, i < RS, of its UM columns), reduced over the block.
// The next step's first phase needs only the block's own units, so one barrier per step suffices.
struct PB {
  int T, N, H, U, G, GR, gs, mode, act, ract, nch;
  bool reverse;
  const float* whh;
  const float* dy;
  int64_t lddy;
  float* dh;
  float* dc;
  const float* gates;
  const float* cell;
  const float* cprev;
  const float* hprev;
  float* grads;
  const int64_t* offsets;
};

template <int RS, int UM>
__global__ void __launch_bounds__(kBlockThreads, 1) persistent_bwd_kernel(PB a) {
  constexpr int GRP = RS * kBlockThreads;
  extern __shared__ float4 smem4[];
  const int H = a.H, U = a.U, N = a.N, nch = a.nch, GR = a.GR;
  float* dgs = reinterpret_cast<float*>(smem4);      // (nch, GRP) staged gate gradients
  float* red = dgs + int64_t(nch) * GRP;              // (warps, nch, UM) partial sums
  float* dhs = red + kWarps * nch * UM;               // (N, U) running dh
  float* dcs = dhs + N * U;                           // (N, U) running dc (LSTM)
  float* dhz = dcs + N * U;                           // (N, U) dh's direct part (GRU: dh * z)
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int j0 = blockIdx.x * U;
  cg::grid_group grid = cg::this_grid();

  float w[RS][UM];
#pragma unroll
  for (int i = 0; i < RS; ++i) {
    const int r = tid + kBlockThreads * i;
#pragma unroll
    for (int u = 0; u < UM; ++u)
      w[i][u] = r < GR && u < U && j0 + u < H ? a.whh[int64_t(r) * H + j0 + u] : 0.0f;
  }
  for (int i = tid; i < nch * (GRP - GR); i += kBlockThreads)
    dgs[(i / (GRP - GR)) * GRP + GR + i % (GRP - GR)] = 0.0f;
  for (int i = tid; i < N * U; i += kBlockThreads) {
    const int n = i / U, j = j0 + i % U;
    if (j >= H) continue;
    dhs[i] = a.dh[int64_t(n) * H + j];
    if (a.mode == 0) dcs[i] = a.dc[int64_t(n) * H + j];
  }
  __syncthreads();

  const int64_t gsH = int64_t(a.gs) * H;
  for (int k = 0; k < a.T; ++k) {
    const int t = a.reverse ? k : a.T - 1 - k;
    const int64_t r0 = a.offsets ? a.offsets[t] : int64_t(t) * N;
    const int b = a.offsets ? static_cast<int>(a.offsets[t + 1] - r0) : N;

    for (int i = tid; i < b * U; i += kBlockThreads) {
      const int n = i / U, j = j0 + i % U;
      if (j >= H) continue;
      const int64_t row = r0 + n, e = row * H + j;
      const float dh = dhs[i] + (a.dy ? a.dy[row * a.lddy + j] : 0.0f);
      const float* g = a.gates + row * gsH;
      float* dg = a.grads + row * gsH;
      if (a.mode == 0) {
        const float i_ = g[j], f_ = g[H + j], g_ = g[2 * H + j], o_ = g[3 * H + j];
        const float tc = act_f(a.act, a.cell[e]);
        const float dc = dcs[i] + dh * o_ * act_d(a.act, tc);
        dg[j] = dc * g_ * act_d(a.ract, i_);
        dg[H + j] = dc * a.cprev[e] * act_d(a.ract, f_);
        dg[2 * H + j] = dc * i_ * act_d(a.act, g_);
        dg[3 * H + j] = dh * tc * act_d(a.ract, o_);
        dcs[i] = dc * f_;
        dhz[i] = 0.0f;
      } else if (a.mode == 1) {
        const float r_ = g[j], z_ = g[H + j], n_ = g[2 * H + j], hn_ = g[3 * H + j];
        const float hp = a.hprev[e];
        const float dn = dh * (1.0f - z_) * act_d(a.act, n_);
        dg[j] = dn * hn_ * act_d(a.ract, r_);
        dg[H + j] = dh * (hp - n_) * act_d(a.ract, z_);
        dg[2 * H + j] = dn * r_;
        dg[3 * H + j] = dn;
        dhz[i] = dh * z_;
      } else {
        dg[j] = dh * act_d(a.act, g[j]);
        dhz[i] = 0.0f;
      }
    }
    grid.sync();

    for (int c0 = 0; c0 < b; c0 += nch) {
      const int nc = min(nch, b - c0);
      stage_rows(dgs, GRP, a.grads + (r0 + c0) * gsH, gsH, nc, GR);
      __syncthreads();
      constexpr int NB = UM >= 8 ? 1 : UM >= 4 ? 2 : 4;  // independent reductions in flight
      for (int n0 = 0; n0 < nc; n0 += NB) {
        float acc[NB][UM];
#pragma unroll
        for (int m = 0; m < NB; ++m)
#pragma unroll
          for (int u = 0; u < UM; ++u) acc[m][u] = 0.0f;
#pragma unroll
        for (int i = 0; i < RS; ++i) {
#pragma unroll
          for (int m = 0; m < NB; ++m) {
            const float d = dgs[int64_t(min(n0 + m, nch - 1)) * GRP + tid + kBlockThreads * i];
#pragma unroll
            for (int u = 0; u < UM; ++u) acc[m][u] = fmaf(w[i][u], d, acc[m][u]);
          }
        }
        warp_allreduce(acc);
        if (lane == 0)
#pragma unroll
          for (int m = 0; m < NB; ++m)
            if (n0 + m < nc)
#pragma unroll
              for (int u = 0; u < UM; ++u) red[(warp * nch + n0 + m) * UM + u] = acc[m][u];
      }
      __syncthreads();
      for (int i = tid; i < nc * U; i += kBlockThreads) {
        const int n = i / U, u = i % U;
        float sum = 0.0f;
#pragma unroll
        for (int q = 0; q < kWarps; ++q) sum += red[(q * nch + n) * UM + u];
        dhs[(c0 + n) * U + u] = sum + dhz[(c0 + n) * U + u];
      }
      __syncthreads();
    }
  }

  for (int i = tid; i < N * U; i += kBlockThreads) {
    const int n = i / U, j = j0 + i % U;
    if (j >= H) continue;
    a.dh[int64_t(n) * H + j] = dhs[i];
    if (a.mode == 0) a.dc[int64_t(n) * H + j] = dcs[i];
  }
}

using BwdKernelFn = void (*)(PB);

BwdKernelFn bwd_kernel_for(int rs, int um) {
#define FUSEDRNN_PB_CASE(R, M) \
  if (rs == R && um == M) return persistent_bwd_kernel<R, M>;
#define FUSEDRNN_PB_ROW(R) \
  FUSEDRNN_PB_CASE(R, 1) FUSEDRNN_PB_CASE(R, 2) FUSEDRNN_PB_CASE(R, 4) FUSEDRNN_PB_CASE(R, 8)
  FUSEDRNN_PB_ROW(1) FUSEDRNN_PB_ROW(2) FUSEDRNN_PB_ROW(4) FUSEDRNN_PB_ROW(8) FUSEDRNN_PB_ROW(16)
#undef FUSEDRNN_PB_ROW
#undef FUSEDRNN_PB_CASE
  return nullptr;
}

using KernelFn = void (*)(PK);

KernelFn kernel_for(int rpw, int kch) {
#define FUSEDRNN_PK_CASE(R, K) \
  if (rpw == R && kch == K) return persistent_kernel<R, K>;
#define FUSEDRNN_PK_ROW(R) \
  FUSEDRNN_PK_CASE(R, 4) FUSEDRNN_PK_CASE(R, 8) FUSEDRNN_PK_CASE(R, 16) FUSEDRNN_PK_CASE(R, 32)
  FUSEDRNN_PK_ROW(1) FUSEDRNN_PK_ROW(2) FUSEDRNN_PK_ROW(4)
#undef FUSEDRNN_PK_ROW
#undef FUSEDRNN_PK_CASE
  return nullptr;
}

std::size_t smem_bytes(int64_t N, int kch, int G, int U) {
  return sizeof(float) * (N * kch * 32 + N * G * U + N * U);
}

}  // namespace

bool persistent_geometry(CudaPlan& p) {
  const RnnDesc& d = p.desc;
  const int64_t H = d.hidden_size, N = p.N;
  const int G = num_gates(d.mode);
  if (d.dtype != DType::kFloat32 || d.gru_reset_before() || d.proj_size > 0 || H > 1024 || N < 1)
    return false;
  int kch = 4;
  while (kch * 32 < H) kch *= 2;
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, p.device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (!prop.cooperativeLaunch) return false;
  const int sms = prop.multiProcessorCount;
  // The fewest units per block whose blocks fit one per multiprocessor: the least work per block.
  int U = static_cast<int>((H + sms - 1) / sms);
  const int rows = G * U;
  int rpw = (rows + kWarps - 1) / kWarps;
  if (rpw == 3) rpw = 4;
  if (rpw > 4) return false;
  const std::size_t smem = smem_bytes(N, kch, G, U);
  if (smem > prop.sharedMemPerBlockOptin) return false;
  KernelFn k = kernel_for(rpw, kch);
  if (!k) return false;
  if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, kBlockThreads, smem) !=
      cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  const int blocks = static_cast<int>((H + U - 1) / U);
  if (per_sm < 1 || blocks > per_sm * sms) return false;
  p.p_units = U;
  p.p_blocks = blocks;
  p.p_rpw = rpw;
  p.p_kch = kch;
  p.p_smem = smem;

  // Backward: RS rows of W_hh per thread and UM >= U columns; the gate gradients staged in chunks.
  p.pb_nch = 0;
  const int GR = static_cast<int>(G * H);
  int rs = 1;
  while (rs * kBlockThreads < GR) rs *= 2;
  int um = 1;
  while (um < U) um *= 2;
  BwdKernelFn bk = rs <= 16 && um <= 8 ? bwd_kernel_for(rs, um) : nullptr;
  if (bk) {
    const std::size_t fixed = sizeof(float) * 3 * N * U;
    const std::size_t per_row = sizeof(float) * (std::size_t(rs) * kBlockThreads + kWarps * um);
    const std::size_t room = prop.sharedMemPerBlockOptin > fixed ? prop.sharedMemPerBlockOptin - fixed : 0;
    const int64_t nch = std::min<int64_t>(N, static_cast<int64_t>(room / per_row));
    const std::size_t bsmem = fixed + per_row * nch;
    int bper_sm = 0;
    if (nch >= 1 &&
        cudaFuncSetAttribute(bk, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(bsmem)) == cudaSuccess &&
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bper_sm, bk, kBlockThreads, bsmem) ==
            cudaSuccess &&
        bper_sm * sms >= blocks) {
      p.pb_rs = rs;
      p.pb_um = um;
      p.pb_nch = static_cast<int>(nch);
      p.pb_smem = bsmem;
    }
    cudaGetLastError();
  }
  return true;
}

void persistent_backward(const CudaPlan& p, const Ctx& ctx, const PersistentBwdArgs& a) {
  const RnnDesc& d = p.desc;
  PB k{};
  k.T = static_cast<int>(p.T);
  k.N = static_cast<int>(p.N);
  k.H = static_cast<int>(d.hidden_size);
  k.U = p.p_units;
  k.G = num_gates(d.mode);
  k.GR = k.G * k.H;
  k.gs = p.gate_slots;
  k.mode = d.mode == Mode::kLstm ? 0 : d.mode == Mode::kGru ? 1 : 3;
  k.act = static_cast<int>(d.activation);
  k.ract = static_cast<int>(d.recurrent_activation);
  k.nch = p.pb_nch;
  k.reverse = a.reverse;
  k.whh = static_cast<const float*>(a.w_hh);
  k.dy = static_cast<const float*>(a.dy);
  k.lddy = a.lddy;
  k.dh = static_cast<float*>(a.dh);
  k.dc = static_cast<float*>(a.dc);
  k.gates = static_cast<const float*>(a.gates);
  k.cell = static_cast<const float*>(a.cell);
  k.cprev = static_cast<const float*>(a.cprev);
  k.hprev = static_cast<const float*>(a.hprev);
  k.grads = static_cast<float*>(a.grads);
  k.offsets = a.offsets;
  BwdKernelFn fn = bwd_kernel_for(p.pb_rs, p.pb_um);
  FUSEDRNN_CHECK(fn != nullptr && p.pb_nch > 0, ValueError,
                 "plan: persistent backward geometry not supported");
  FUSEDRNN_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(p.pb_smem)));
  void* params[] = {&k};
  FUSEDRNN_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(fn), dim3(p.p_blocks),
                                                  dim3(kBlockThreads), params, p.pb_smem,
                                                  ctx.stream));
  FUSEDRNN_LAUNCH_CHECK();
}

void persistent_forward(const CudaPlan& p, const Ctx& ctx, const PersistentArgs& a) {
  const RnnDesc& d = p.desc;
  PK k{};
  k.T = static_cast<int>(p.T);
  k.N = static_cast<int>(p.N);
  k.H = static_cast<int>(d.hidden_size);
  k.U = p.p_units;
  k.G = num_gates(d.mode);
  k.gs = p.gate_slots;
  k.mode = d.mode == Mode::kLstm ? 0 : d.mode == Mode::kGru ? 1 : 3;
  k.act = static_cast<int>(d.activation);
  k.ract = static_cast<int>(d.recurrent_activation);
  k.reverse = a.reverse;
  k.gx = static_cast<const float*>(a.gx);
  k.ldgx = a.ldgx;
  k.whh = static_cast<const float*>(a.w_hh);
  k.bih = static_cast<const float*>(a.b_ih);
  k.bhh = static_cast<const float*>(a.b_hh);
  k.h = static_cast<float*>(a.h);
  k.c = static_cast<float*>(a.c);
  k.y = static_cast<float*>(a.y);
  k.ldy = a.ldy;
  k.gates = static_cast<float*>(a.gates);
  k.cell = static_cast<float*>(a.cell);
  k.cprev = static_cast<float*>(a.cprev);
  k.hprev = static_cast<float*>(a.hprev);
  k.hbuf = static_cast<float*>(a.hbuf);
  k.offsets = a.offsets;
  KernelFn fn = kernel_for(p.p_rpw, p.p_kch);
  FUSEDRNN_CHECK(fn != nullptr, ValueError, "plan: persistent geometry not supported");
  FUSEDRNN_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(p.p_smem)));
  void* params[] = {&k};
  FUSEDRNN_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(fn), dim3(p.p_blocks),
                                                  dim3(kBlockThreads), params, p.p_smem,
                                                  ctx.stream));
  FUSEDRNN_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace fusedrnn
