// cuda/backend.cu: the CUDA backend's plan, the per-step fused pointwise kernels (forward and
// backward, every mode) and the drivers of forward / backward_data / backward_weights.
//
// The structure (docs/architecture.md, "CUDA backend"):
//   - the input projection of all rows of a (layer, direction) is one GEMM, before the recurrence,
//     written straight into the reserve's gate rows in training (the pointwise kernel overwrites the
//     pre-activations with the activations in place);
//   - per step: h_{t-1} W_hh^T (one GEMM over the step's active rows) and one fused pointwise kernel
//     (biases, activations, state update, output and reserve writes); or, for small batches, the
//     whole recurrence in one persistent kernel (persistent.cu);
//   - the running state lives in one (N, H) buffer in rank order: with lengths, rows past a step's
//     active batch are simply not touched, so each sample's final state is what the buffer holds at
//     the end (the forward direction) and a sample joining late (the reverse direction) starts from
//     its initial state;
//   - backward runs the steps in the opposite order with a running (dh, dc) in the same way; the
//     input gradients and all weight gradients are GEMMs over all rows after the recurrence.
#include <cooperative_groups.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <numeric>

#include "common.cuh"

namespace fusedrnn {
namespace cuda {

// ---- errors, context, cuBLAS ------------------------------------------------------------------------

void throw_cuda(cudaError_t err, const char* what, const char* file, int line) {
  throw std::runtime_error(detail::concat("fusedrnn CUDA error: ", cudaGetErrorString(err), " (",
                                          cudaGetErrorName(err), ") in ", what, " at ", file, ":",
                                          line));
}

void throw_cublas(cublasStatus_t st, const char* what, const char* file, int line) {
  throw std::runtime_error(detail::concat("fusedrnn cuBLAS error: ", cublasGetStatusString(st),
                                          " in ", what, " at ", file, ":", line));
}

bool available(std::string* why) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    if (why) *why = detail::concat("no usable CUDA device: ", cudaGetErrorString(err));
    return false;
  }
  if (n == 0) {
    if (why) *why = "no CUDA device";
    return false;
  }
  return true;
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

Ctx make_ctx(int device, void* stream, bool tf32) {
  // One handle per (host thread, device): cuBLAS handles are not to be shared between threads that
  // use them concurrently; creating one costs milliseconds, so it is kept for the thread's life.
  struct Handles {
    std::map<int, cublasHandle_t> by_device;
    ~Handles() {
      for (auto& kv : by_device) cublasDestroy(kv.second);
    }
  };
  thread_local Handles handles;
  FUSEDRNN_CUDA_CHECK(cudaSetDevice(device));
  Ctx c;
  c.device = device;
  c.stream = static_cast<cudaStream_t>(stream);
  auto it = handles.by_device.find(device);
  if (it == handles.by_device.end()) {
    cublasHandle_t h = nullptr;
    FUSEDRNN_CUBLAS_CHECK(cublasCreate(&h));
    it = handles.by_device.emplace(device, h).first;
  }
  c.blas = it->second;
  // Plain float32 arithmetic unless the plan allows TF32 tensor cores.
  FUSEDRNN_CUBLAS_CHECK(
      cublasSetMathMode(c.blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  FUSEDRNN_CUBLAS_CHECK(cublasSetStream(c.blas, c.stream));
  return c;
}

namespace {

cublasStatus_t gemm_raw(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                        int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                        const float* beta, float* C, int ldc) {
  return cublasSgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
cublasStatus_t gemm_raw(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                        int k, const double* alpha, const double* A, int lda, const double* B,
                        int ldb, const double* beta, double* C, int ldc) {
  return cublasDgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
cublasStatus_t gemv_raw(cublasHandle_t h, int m, int n, const float* alpha, const float* A,
                        int lda, const float* x, const float* beta, float* y) {
  return cublasSgemv(h, CUBLAS_OP_N, m, n, alpha, A, lda, x, 1, beta, y, 1);
}
cublasStatus_t gemv_raw(cublasHandle_t h, int m, int n, const double* alpha, const double* A,
                        int lda, const double* x, const double* beta, double* y) {
  return cublasDgemv(h, CUBLAS_OP_N, m, n, alpha, A, lda, x, 1, beta, y, 1);
}

int as_int(int64_t v, const char* what) {
  FUSEDRNN_CHECK(v <= INT32_MAX, ValueError, what, ": ", v,
                 " exceeds cuBLAS's 32-bit sizes (at most 2147483647)");
  return static_cast<int>(v);
}

}  // namespace

template <typename S>
void gemm(const Ctx& c, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const S* A, int64_t lda,
          const S* B, int64_t ldb, S* C, int64_t ldc, S beta) {
  if (m == 0 || n == 0 || k == 0) return;
  const S one = 1;
  // Column-major cuBLAS sees each row-major matrix transposed: C^T = op(B)^T op(A)^T.
  FUSEDRNN_CUBLAS_CHECK(gemm_raw(c.blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                 ta ? CUBLAS_OP_T : CUBLAS_OP_N, as_int(n, "gemm n"),
                                 as_int(m, "gemm m"), as_int(k, "gemm k"), &one, B,
                                 as_int(ldb, "ldb"), A, as_int(lda, "lda"), &beta, C,
                                 as_int(ldc, "ldc")));
}

template <typename S>
void colsum_add(const Ctx& c, int64_t rows, int64_t n, const S* A, int64_t lda, const S* ones,
                S* y) {
  if (rows == 0 || n == 0) return;
  const S one = 1;
  FUSEDRNN_CUBLAS_CHECK(gemv_raw(c.blas, as_int(n, "gemv n"), as_int(rows, "gemv rows"), &one, A,
                                 as_int(lda, "lda"), ones, &one, y));
}

#define FUSEDRNN_INSTANTIATE_BLAS(S)                                                            \
  template void gemm<S>(const Ctx&, bool, bool, int64_t, int64_t, int64_t, const S*, int64_t,  \
                        const S*, int64_t, S*, int64_t, S);                                     \
  template void colsum_add<S>(const Ctx&, int64_t, int64_t, const S*, int64_t, const S*, S*);
FUSEDRNN_INSTANTIATE_BLAS(float)
FUSEDRNN_INSTANTIATE_BLAS(double)

// ---- plan -------------------------------------------------------------------------------------------

Algo parse_algo(const std::string& name) {
  if (name == "auto") return Algo::kAuto;
  if (name == "step") return Algo::kStep;
  if (name == "persistent") return Algo::kPersistent;
  throw ValueError(detail::concat("algo: expected 'auto', 'step' or 'persistent', got '", name,
                                  "'"));
}

std::string algo_name(Algo algo) {
  switch (algo) {
    case Algo::kAuto: return "auto";
    case Algo::kStep: return "step";
    case Algo::kPersistent: return "persistent";
  }
  return "?";
}

namespace {

// Byte offsets: every region starts 256-byte aligned.
struct Layout {
  std::size_t bytes = 0;
  int64_t take(std::size_t n) {
    const std::size_t at = (bytes + 255) / 256 * 256;
    bytes = at + n;
    return static_cast<int64_t>(at);
  }
};

}  // namespace

CudaPlan make_plan(const RnnDesc& desc, int64_t T, int64_t N, bool training,
                   const std::vector<int64_t>& lengths, int device, Algo algo, bool tf32) {
  validate(desc);
  FUSEDRNN_CHECK(!desc.residual, ValueError, "residual: CPU only for now");
  FUSEDRNN_CHECK(!desc.zoneout(), ValueError, "zoneout: CPU only for now");
  FUSEDRNN_CHECK(!desc.clip_state, ValueError, "lstm_state_clip_min/max: CPU only for now");
  FUSEDRNN_CHECK(desc.dropout == 0.0 && desc.recurrent_dropout == 0.0, ValueError,
                 "dropout / recurrent_dropout: CPU only for now (the CUDA backend runs without "
                 "dropout masks)");
  FUSEDRNN_CHECK(!desc.zero_masked_output, ValueError,
                 "zero_masked_output: masks are CPU only for now; pass lengths");
  FUSEDRNN_CHECK(T >= 0, ValueError, "T: expected >= 0, got ", T);
  FUSEDRNN_CHECK(N >= 0, ValueError, "N: expected >= 0, got ", N);
  FUSEDRNN_CHECK(device >= 0, ValueError, "device: expected >= 0, got ", device);

  CudaPlan p;
  p.desc = desc;
  p.T = T;
  p.N = N;
  p.training = training;
  p.device = device;
  p.tf32 = tf32 && desc.dtype == DType::kFloat32;
  p.batch.assign(T, N);
  p.offsets.resize(T + 1);
  if (!lengths.empty()) {
    FUSEDRNN_CHECK(static_cast<int64_t>(lengths.size()) == N, ValueError,
                   "lengths: expected ", N, " lengths (one per sample), got ", lengths.size());
    for (std::size_t i = 0; i < lengths.size(); ++i)
      FUSEDRNN_CHECK(lengths[i] >= 0 && lengths[i] <= T, ValueError, "lengths[", i,
                     "]: expected a length in [0, T=", T, "], got ", lengths[i]);
    p.lengths = lengths;
    std::sort(p.lengths.begin(), p.lengths.end(), std::greater<int64_t>());
    for (int64_t t = 0; t < T; ++t)
      p.batch[t] = std::count_if(p.lengths.begin(), p.lengths.end(),
                                 [t](int64_t len) { return len > t; });
  }
  p.offsets[0] = 0;
  for (int64_t t = 0; t < T; ++t) p.offsets[t + 1] = p.offsets[t] + p.batch[t];
  p.rows = p.offsets[T];

  const int64_t H = desc.hidden_size, G = num_gates(desc.mode), L = desc.num_layers;
  const int D = desc.directions();
  const std::size_t es = dtype_size(desc.dtype);
  p.gate_slots = desc.mode == Mode::kLstm ? 4 : desc.mode == Mode::kGru ? 4 : 1;
  const int64_t GS = p.gate_slots;

  p.algo = Algo::kStep;
  if (algo != Algo::kStep && desc.dtype == DType::kFloat32 && !desc.gru_reset_before() &&
      desc.proj_size == 0) {
    const bool fits = persistent_geometry(p);
    if (algo == Algo::kPersistent) {
      FUSEDRNN_CHECK(fits, ValueError,
                     "algo: 'persistent' does not fit this network on this device (hidden_size ",
                     H, ", batch ", N, "); use 'auto' or 'step'");
      p.algo = Algo::kPersistent;
    } else if (fits && N * G * H <= 131072) {
      // Measured on an H100 (bench/cuda_bench.py and a sweep of both algorithms): the persistent
      // kernels win while a step's recurrent product is small (LSTM N=32 at H=1024, N=64 at
      // H=512, N=128 at H=256: 1.1-1.9x over the step path); above (N=64 at H=1024), their
      // per-block FMA work outgrows the per-step GEMM (TF32 where allowed) and launches they save.
      p.algo = Algo::kPersistent;
    }
  } else if (algo == Algo::kPersistent) {
    throw ValueError(
        "algo: 'persistent' runs float32 networks other than the reset-before GRU and the "
        "projected LSTM; use 'step'");
  }

  const int64_t SW = desc.state_size(), P = desc.proj_size;
  Layout ws, rs;
  p.ws.gh = ws.take(N * G * H * es);
  p.ws.hcur = ws.take(N * std::max(H, SW) * es);
  p.ws.ccur = ws.take(N * H * es);
  if (desc.gru_reset_before()) p.ws.rh = ws.take(N * H * es);
  if (P > 0) p.ws.hraw = ws.take(N * H * es);
  if (!training) p.ws.gx = ws.take(p.rows * G * H * es);
  if (L > 1) {
    p.ws.inter[0] = ws.take(p.rows * D * SW * es);
    p.ws.inter[1] = ws.take(p.rows * D * SW * es);
  }
  if (training) p.ws.ones = ws.take(std::max<int64_t>(p.rows, 1) * es);
  if (p.algo == Algo::kPersistent) {
    p.ws.hbuf = ws.take(2 * N * H * es);
    if (!p.lengths.empty()) p.ws.offsets = ws.take((T + 1) * sizeof(int64_t));
  }
  p.workspace_bytes = ws.bytes;

  if (training) {
    for (int64_t l = 0; l < L; ++l) {
      p.reserve.out.push_back(rs.take(p.rows * D * SW * es));
      for (int d = 0; d < D; ++d) {
        p.reserve.gates.push_back(rs.take(p.rows * GS * H * es));
        p.reserve.cell.push_back(desc.mode == Mode::kLstm ? rs.take(p.rows * H * es) : -1);
        p.reserve.cprev.push_back(desc.mode == Mode::kLstm ? rs.take(p.rows * H * es) : -1);
        p.reserve.hprev.push_back(rs.take(p.rows * SW * es));
        p.reserve.grads.push_back(rs.take(p.rows * GS * H * es));
        p.reserve.hraw.push_back(P > 0 ? rs.take(p.rows * H * es) : -1);
        p.reserve.dproj.push_back(P > 0 ? rs.take(p.rows * P * es) : -1);
      }
    }
    p.reserve_bytes = rs.bytes;
  }
  return p;
}

// ---- pointwise kernels ------------------------------------------------------------------------------

namespace {

constexpr int kThreads = 256;

template <typename S>
struct FwdStep {
  int b, H, gs;
  const S* gx;        // the step's first row of x W_ih^T (no bias)
  int64_t ldgx;
  const S* gh;        // (b, G*H) h_{t-1} W_hh^T (GRU reset-before: n part is (r*h) W_hn^T)
  const S* bih;
  const S* bhh;
  S* h;               // running state (N, H)
  S* c;
  S* rh;              // GRU reset-before: r*h out of the first kernel
  S* hraw;            // LSTM projection: o*act(c) goes here (N, H), not to h / y / hprev
  S* y;               // the step's first output row, column offset applied
  int64_t ldy;
  S* gates;           // reserve rows (null in inference)
  S* cell;
  S* cprev;
  S* hprev;
  int act, ract;
};

template <typename S, int M>
__global__ void fwd_step_kernel(FwdStep<S> a) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= int64_t(a.b) * a.H) return;
  const int n = static_cast<int>(idx / a.H), j = static_cast<int>(idx % a.H);
  const int H = a.H;
  const S* gx = a.gx + n * a.ldgx;
  const S* gh = a.gh + int64_t(n) * (M == 0 ? 4 : M == 1 || M == 2 ? 3 : 1) * H;
  const S hp = a.hraw ? S(0) : a.h[int64_t(n) * H + j];  // projected h is P wide: unread
  S* grow = a.gates ? a.gates + int64_t(n) * a.gs * H : nullptr;
  S hn;
  if (M == 0) {  // LSTM
    const S i = act_f(a.ract, gx[j] + gh[j] + a.bih[j] + a.bhh[j]);
    const S f = act_f(a.ract, gx[H + j] + gh[H + j] + a.bih[H + j] + a.bhh[H + j]);
    const S g = act_f(a.act, gx[2 * H + j] + gh[2 * H + j] + a.bih[2 * H + j] + a.bhh[2 * H + j]);
    const S o = act_f(a.ract, gx[3 * H + j] + gh[3 * H + j] + a.bih[3 * H + j] + a.bhh[3 * H + j]);
    const S cp = a.c[int64_t(n) * H + j];
    const S cn = f * cp + i * g;
    hn = o * act_f(a.act, cn);
    a.c[int64_t(n) * H + j] = cn;
    if (grow) {
      grow[j] = i;
      grow[H + j] = f;
      grow[2 * H + j] = g;
      grow[3 * H + j] = o;
      a.cell[int64_t(n) * H + j] = cn;
      a.cprev[int64_t(n) * H + j] = cp;
    }
  } else if (M == 1 || M == 2) {  // GRU reset after (1) / before (2; gh's n part is (r*h) W_hn^T)
    const S r = act_f(a.ract, gx[j] + gh[j] + a.bih[j] + a.bhh[j]);
    const S z = act_f(a.ract, gx[H + j] + gh[H + j] + a.bih[H + j] + a.bhh[H + j]);
    const S hn_ = gh[2 * H + j] + a.bhh[2 * H + j];
    const S nn = act_f(a.act, gx[2 * H + j] + a.bih[2 * H + j] + (M == 1 ? r * hn_ : hn_));
    hn = (S(1) - z) * nn + z * hp;
    if (grow) {
      grow[j] = r;
      grow[H + j] = z;
      grow[2 * H + j] = nn;
      grow[3 * H + j] = M == 1 ? hn_ : r * hp;
    }
  } else {  // RNN
    hn = act_f(a.act, gx[j] + gh[j] + a.bih[j] + a.bhh[j]);
    if (grow) grow[j] = hn;
  }
  if (a.hraw) {  // the projection GEMM makes h, y (and the caller copies h_{t-1})
    a.hraw[int64_t(n) * H + j] = hn;
    return;
  }
  if (grow) a.hprev[int64_t(n) * H + j] = hp;
  a.h[int64_t(n) * H + j] = hn;
  a.y[n * a.ldy + j] = hn;
}

// dst[n, k] += src[n * ld + k] for n < b, k < w: the output gradient into the projected dh.
template <typename S>
__global__ void add_rows_kernel(S* dst, const S* src, int64_t ld, int b, int w) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= int64_t(b) * w) return;
  dst[idx] += src[(idx / w) * ld + idx % w];
}

// GRU reset-before, first half of a step: r*h for the n-gate's recurrent product.
template <typename S>
__global__ void gru_rh_kernel(FwdStep<S> a) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= int64_t(a.b) * a.H) return;
  const int n = static_cast<int>(idx / a.H), j = static_cast<int>(idx % a.H);
  const S* gx = a.gx + n * a.ldgx;
  const S* gh = a.gh + int64_t(n) * 3 * a.H;
  const S r = act_f(a.ract, gx[j] + gh[j] + a.bih[j] + a.bhh[j]);
  a.rh[idx] = r * a.h[idx];
}

template <typename S>
struct BwdStep {
  int b, H, gs;
  const S* dy;       // the step's first output-gradient row (column offset applied) or null
  int64_t lddy;
  S* dh;             // running dh (N, H)
  S* dc;             // running dc (N, H), LSTM
  S* drh;            // GRU reset-before: d(r*h) (N, H)
  const S* gates;    // reserve rows of the step
  const S* cell;
  const S* cprev;
  const S* hprev;
  S* grads;
  int act, ract;
};

// LSTM / GRU-after / RNN: the gate gradients; GRU also leaves dh = dh_total * z for the GEMM to add
// to, GRU-before leaves dz and dn (dr comes from gru_dr_kernel).
template <typename S, int M>
__global__ void bwd_step_kernel(BwdStep<S> a) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= int64_t(a.b) * a.H) return;
  const int n = static_cast<int>(idx / a.H), j = static_cast<int>(idx % a.H);
  const int H = a.H;
  const int64_t e = int64_t(n) * H + j;
  const S dh = a.dh[e] + (a.dy ? a.dy[n * a.lddy + j] : S(0));
  const S* g = a.gates + int64_t(n) * a.gs * H;
  S* dg = a.grads + int64_t(n) * a.gs * H;
  if (M == 0) {
    const S i = g[j], f = g[H + j], gg = g[2 * H + j], o = g[3 * H + j];
    const S tc = act_f(a.act, a.cell[e]);
    const S dc = a.dc[e] + dh * o * act_d(a.act, tc);
    dg[j] = dc * gg * act_d(a.ract, i);
    dg[H + j] = dc * a.cprev[e] * act_d(a.ract, f);
    dg[2 * H + j] = dc * i * act_d(a.act, gg);
    dg[3 * H + j] = dh * tc * act_d(a.ract, o);
    a.dc[e] = dc * f;
  } else if (M == 1 || M == 2) {
    const S r = g[j], z = g[H + j], nn = g[2 * H + j];
    const S hp = a.hprev[e];
    const S dn = dh * (S(1) - z) * act_d(a.act, nn);
    dg[H + j] = dh * (hp - nn) * act_d(a.ract, z);
    if (M == 1) {
      const S hn_ = g[3 * H + j];
      dg[j] = dn * hn_ * act_d(a.ract, r);
      dg[2 * H + j] = dn * r;  // the recurrent n-part: d(W_hn h + b_hn)
      dg[3 * H + j] = dn;      // the input n-part
    } else {
      dg[2 * H + j] = dn;
    }
    a.dh[e] = dh * z;
  } else {
    dg[j] = dh * act_d(a.act, g[j]);
  }
}

// GRU reset-before, second half: dr from d(r*h), and dh += d(r*h) * r.
template <typename S>
__global__ void gru_dr_kernel(BwdStep<S> a) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= int64_t(a.b) * a.H) return;
  const int n = static_cast<int>(idx / a.H), j = static_cast<int>(idx % a.H);
  const S r = a.gates[int64_t(n) * a.gs * a.H + j];
  const S d = a.drh[idx];
  a.grads[int64_t(n) * a.gs * a.H + j] = d * a.hprev[idx] * act_d(a.ract, r);
  a.dh[idx] += d * r;
}

template <typename S>
__global__ void fill_kernel(S* p, int64_t n, S v) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) p[i] = v;
}

int mode_code(const RnnDesc& d) {
  switch (d.mode) {
    case Mode::kLstm: return 0;
    case Mode::kGru: return d.reset_after ? 1 : 2;
    default: return 3;
  }
}

template <typename S>
S* at(void* base, int64_t byte_offset) {
  return reinterpret_cast<S*>(static_cast<char*>(base) + byte_offset);
}
template <typename S>
const S* at(const void* base, int64_t byte_offset) {
  return reinterpret_cast<const S*>(static_cast<const char*>(base) + byte_offset);
}

void copy_or_zero(const Ctx& c, void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  if (src)
    FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c.stream));
  else
    FUSEDRNN_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, c.stream));
}

void copy_out(const Ctx& c, void* dst, const void* src, std::size_t bytes) {
  if (dst && bytes)
    FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c.stream));
}

template <typename S, int M>
void launch_fwd(const Ctx& c, const FwdStep<S>& a) {
  fwd_step_kernel<S, M><<<blocks_for(int64_t(a.b) * a.H, kThreads), kThreads, 0, c.stream>>>(a);
  FUSEDRNN_LAUNCH_CHECK();
}

template <typename S, int M>
void launch_bwd(const Ctx& c, const BwdStep<S>& a) {
  bwd_step_kernel<S, M><<<blocks_for(int64_t(a.b) * a.H, kThreads), kThreads, 0, c.stream>>>(a);
  FUSEDRNN_LAUNCH_CHECK();
}

// The persistent kernels read the steps' row offsets from the workspace (plans with lengths).
void upload_offsets(const CudaPlan& p, void* workspace, const Ctx& c) {
  if (p.lengths.empty() || p.T == 0) return;
  FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(at<int64_t>(workspace, p.ws.offsets), p.offsets.data(),
                                      (p.T + 1) * sizeof(int64_t), cudaMemcpyHostToDevice,
                                      c.stream));
}

// ---- drivers ----------------------------------------------------------------------------------------

template <typename S>
void forward_impl(const CudaPlan& p, const ForwardArgs& args, const Ctx& c) {
  const RnnDesc& desc = p.desc;
  const int64_t H = desc.hidden_size, G = num_gates(desc.mode), L = desc.num_layers, T = p.T;
  const int D = desc.directions();
  const int64_t GS = p.gate_slots, N = p.N, SW = desc.state_size(), P = desc.proj_size;
  const int M = mode_code(desc);
  const std::size_t es = sizeof(S);
  const S* w = static_cast<const S*>(args.w);
  S* h = at<S>(args.workspace, p.ws.hcur);
  S* cst = at<S>(args.workspace, p.ws.ccur);
  S* gh = at<S>(args.workspace, p.ws.gh);
  if (p.algo == Algo::kPersistent) upload_offsets(p, args.workspace, c);

  for (int64_t l = 0; l < L; ++l) {
    const int64_t cin = desc.layer_input_size(l);
    const S* X = l == 0 ? static_cast<const S*>(args.x)
                        : (p.training ? at<S>(args.reserve, p.reserve.out[l - 1])
                                      : at<S>(args.workspace, p.ws.inter[(l - 1) % 2]));
    S* out = p.training ? at<S>(args.reserve, p.reserve.out[l])
                        : (l == L - 1 ? static_cast<S*>(args.y)
                                      : at<S>(args.workspace, p.ws.inter[l % 2]));
    const int64_t ldo = D * SW;
    for (int d = 0; d < D; ++d) {
      const int64_t s = p.stream_index(l, d);
      const LayerParams o = layer_param_offsets(desc, l, d);
      S* gx = p.training ? at<S>(args.reserve, p.reserve.gates[s]) : at<S>(args.workspace, p.ws.gx);
      const int64_t ldgx = p.training ? GS * H : G * H;
      gemm_nt<S>(c, p.rows, G * H, cin, X, cin, w + o.w_ih, cin, gx, ldgx, S(0));
      copy_or_zero(c, h, args.hx ? static_cast<const S*>(args.hx) + s * N * SW : nullptr,
                   N * SW * es);
      if (desc.mode == Mode::kLstm)
        copy_or_zero(c, cst, args.cx ? static_cast<const S*>(args.cx) + s * N * H : nullptr,
                     N * H * es);

      S* gates = p.training ? gx : nullptr;
      S* cell = p.training && p.reserve.cell[s] >= 0 ? at<S>(args.reserve, p.reserve.cell[s]) : nullptr;
      S* cprev = p.training && p.reserve.cprev[s] >= 0 ? at<S>(args.reserve, p.reserve.cprev[s]) : nullptr;
      S* hprev = p.training ? at<S>(args.reserve, p.reserve.hprev[s]) : nullptr;
      S* hraw = P == 0 ? nullptr
                       : (p.training ? at<S>(args.reserve, p.reserve.hraw[s])
                                     : at<S>(args.workspace, p.ws.hraw));

      if (p.algo == Algo::kPersistent) {
        PersistentArgs pa{};
        pa.gx = gx;
        pa.ldgx = ldgx;
        pa.w_hh = w + o.w_hh;
        pa.b_ih = w + o.b_ih;
        pa.b_hh = w + o.b_hh;
        pa.h = h;
        pa.c = cst;
        pa.y = out + d * H;
        pa.ldy = ldo;
        pa.reverse = d == 1;
        pa.gates = gates;
        pa.cell = cell;
        pa.cprev = cprev;
        pa.hprev = hprev;
        pa.hbuf = at<S>(args.workspace, p.ws.hbuf);
        pa.offsets = p.lengths.empty() ? nullptr : at<int64_t>(args.workspace, p.ws.offsets);
        persistent_forward(p, c, pa);
      } else {
        for (int64_t k = 0; k < T; ++k) {
          const int64_t t = d == 0 ? k : T - 1 - k;
          const int64_t b = p.batch[t], r0 = p.offsets[t];
          if (b == 0) continue;
          FwdStep<S> a{};
          a.b = static_cast<int>(b);
          a.H = static_cast<int>(H);
          a.gs = static_cast<int>(GS);
          a.gx = gx + r0 * ldgx;
          a.ldgx = ldgx;
          a.gh = gh;
          a.bih = w + o.b_ih;
          a.bhh = w + o.b_hh;
          a.h = h;
          a.c = cst;
          a.y = out + r0 * ldo + d * SW;
          a.ldy = ldo;
          a.gates = gates ? gates + r0 * GS * H : nullptr;
          a.cell = cell ? cell + r0 * H : nullptr;
          a.cprev = cprev ? cprev + r0 * H : nullptr;
          a.hprev = hprev ? hprev + r0 * H : nullptr;
          a.act = static_cast<int>(desc.activation);
          a.ract = static_cast<int>(desc.recurrent_activation);
          if (M == 2) {
            S* rh = at<S>(args.workspace, p.ws.rh);
            a.rh = rh;
            gemm_nt<S>(c, b, 2 * H, H, h, H, w + o.w_hh, H, gh, 3 * H, S(0));
            gru_rh_kernel<S><<<blocks_for(b * H, kThreads), kThreads, 0, c.stream>>>(a);
            FUSEDRNN_LAUNCH_CHECK();
            gemm_nt<S>(c, b, H, H, rh, H, w + o.w_hh + 2 * H * H, H, gh + 2 * H, 3 * H, S(0));
            launch_fwd<S, 2>(c, a);
          } else if (P > 0) {
            // LSTMP: the cell writes o*act(c) to hraw; h_t = hraw W_hr^T goes to the output rows
            // and then to the running state (after h_{t-1} was kept for backward_weights).
            S* hraw_t = p.training ? hraw + r0 * H : hraw;
            S* yrow = a.y;
            a.hraw = hraw_t;
            if (hprev)
              FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(hprev + r0 * SW, h, b * SW * es,
                                                  cudaMemcpyDeviceToDevice, c.stream));
            gemm_nt<S>(c, b, G * H, SW, h, SW, w + o.w_hh, SW, gh, G * H, S(0));
            launch_fwd<S, 0>(c, a);
            gemm_nt<S>(c, b, P, H, hraw_t, H, w + o.w_hr, H, yrow, ldo, S(0));
            FUSEDRNN_CUDA_CHECK(cudaMemcpy2DAsync(h, SW * es, yrow, ldo * es, SW * es, b,
                                                  cudaMemcpyDeviceToDevice, c.stream));
          } else {
            gemm_nt<S>(c, b, G * H, H, h, H, w + o.w_hh, H, gh, G * H, S(0));
            if (M == 0) launch_fwd<S, 0>(c, a);
            else if (M == 1) launch_fwd<S, 1>(c, a);
            else launch_fwd<S, 3>(c, a);
          }
        }
      }
      copy_out(c, args.hy ? static_cast<S*>(args.hy) + s * N * SW : nullptr, h, N * SW * es);
      if (desc.mode == Mode::kLstm)
        copy_out(c, args.cy ? static_cast<S*>(args.cy) + s * N * H : nullptr, cst, N * H * es);
    }
    if (p.training && l == L - 1) copy_out(c, args.y, out, p.rows * ldo * es);
  }
}

template <typename S>
void backward_data_impl(const CudaPlan& p, const BackwardDataArgs& args, const Ctx& c) {
  const RnnDesc& desc = p.desc;
  const int64_t H = desc.hidden_size, G = num_gates(desc.mode), L = desc.num_layers, T = p.T;
  const int D = desc.directions();
  const int64_t GS = p.gate_slots, N = p.N, SW = desc.state_size(), P = desc.proj_size;
  const int M = mode_code(desc);
  const std::size_t es = sizeof(S);
  const S* w = static_cast<const S*>(args.w);
  S* dh = at<S>(args.workspace, p.ws.hcur);
  S* dc = at<S>(args.workspace, p.ws.ccur);
  const bool persistent = p.algo == Algo::kPersistent && p.pb_nch > 0;
  if (persistent) upload_offsets(p, args.workspace, c);

  for (int64_t l = L - 1; l >= 0; --l) {
    const int64_t cin = desc.layer_input_size(l);
    const S* dY = l == L - 1 ? static_cast<const S*>(args.dy)
                             : at<S>(args.workspace, p.ws.inter[l % 2]);
    S* dX = l == 0 ? static_cast<S*>(args.dx) : at<S>(args.workspace, p.ws.inter[(l - 1) % 2]);
    const int64_t ldo = D * SW;
    for (int d = 0; d < D; ++d) {
      const int64_t s = p.stream_index(l, d);
      const LayerParams o = layer_param_offsets(desc, l, d);
      const S* gates = at<S>(args.reserve, p.reserve.gates[s]);
      S* grads = at<S>(args.reserve, p.reserve.grads[s]);
      const S* cell = p.reserve.cell[s] >= 0 ? at<S>(args.reserve, p.reserve.cell[s]) : nullptr;
      const S* cprev = p.reserve.cprev[s] >= 0 ? at<S>(args.reserve, p.reserve.cprev[s]) : nullptr;
      const S* hprev = at<S>(args.reserve, p.reserve.hprev[s]);
      copy_or_zero(c, dh, args.dhy ? static_cast<const S*>(args.dhy) + s * N * SW : nullptr,
                   N * SW * es);
      S* dproj = P > 0 ? at<S>(args.reserve, p.reserve.dproj[s]) : nullptr;
      if (desc.mode == Mode::kLstm)
        copy_or_zero(c, dc, args.dcy ? static_cast<const S*>(args.dcy) + s * N * H : nullptr,
                     N * H * es);
      if (persistent) {
        PersistentBwdArgs pa{};
        pa.w_hh = w + o.w_hh;
        pa.dy = dY ? dY + d * H : nullptr;
        pa.lddy = ldo;
        pa.dh = dh;
        pa.dc = dc;
        pa.gates = gates;
        pa.cell = cell;
        pa.cprev = cprev;
        pa.hprev = hprev;
        pa.grads = grads;
        pa.reverse = d == 1;
        pa.offsets = p.lengths.empty() ? nullptr : at<int64_t>(args.workspace, p.ws.offsets);
        persistent_backward(p, c, pa);
      }
      for (int64_t k = 0; k < (persistent ? 0 : T); ++k) {
        // the opposite of forward's order: the forward direction from the last step down
        const int64_t t = d == 0 ? T - 1 - k : k;
        const int64_t b = p.batch[t], r0 = p.offsets[t];
        if (b == 0) continue;
        BwdStep<S> a{};
        a.b = static_cast<int>(b);
        a.H = static_cast<int>(H);
        a.gs = static_cast<int>(GS);
        a.dy = dY ? dY + r0 * ldo + d * SW : nullptr;
        a.lddy = ldo;
        a.dh = dh;
        a.dc = dc;
        a.gates = gates + r0 * GS * H;
        a.cell = cell ? cell + r0 * H : nullptr;
        a.cprev = cprev ? cprev + r0 * H : nullptr;
        a.hprev = hprev + r0 * H;
        a.grads = grads + r0 * GS * H;
        a.act = static_cast<int>(desc.activation);
        a.ract = static_cast<int>(desc.recurrent_activation);
        if (M == 0 && P > 0) {
          // LSTMP: dh (P wide) takes the output gradient, is kept for dW_hr, and becomes the
          // cell's d(o*act(c)) through W_hr; then dh_{t-1} = dG W_hh (W_hh is (4H, P)).
          if (a.dy) {
            add_rows_kernel<S><<<blocks_for(b * SW, kThreads), kThreads, 0, c.stream>>>(
                dh, a.dy, ldo, static_cast<int>(b), static_cast<int>(SW));
            FUSEDRNN_LAUNCH_CHECK();
          }
          FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(dproj + r0 * P, dh, b * P * es,
                                              cudaMemcpyDeviceToDevice, c.stream));
          S* dhraw = at<S>(args.workspace, p.ws.hraw);
          gemm_nn<S>(c, b, H, P, dh, SW, w + o.w_hr, H, dhraw, H, S(0));
          a.dh = dhraw;
          a.dy = nullptr;
          launch_bwd<S, 0>(c, a);
          gemm_nn<S>(c, b, SW, 4 * H, a.grads, GS * H, w + o.w_hh, SW, dh, SW, S(0));
        } else if (M == 0) {
          launch_bwd<S, 0>(c, a);
          gemm_nn<S>(c, b, H, 4 * H, a.grads, GS * H, w + o.w_hh, H, dh, H, S(0));
        } else if (M == 1) {
          launch_bwd<S, 1>(c, a);
          gemm_nn<S>(c, b, H, 3 * H, a.grads, GS * H, w + o.w_hh, H, dh, H, S(1));
        } else if (M == 2) {
          S* drh = at<S>(args.workspace, p.ws.rh);
          a.drh = drh;
          launch_bwd<S, 2>(c, a);
          gemm_nn<S>(c, b, H, H, a.grads + 2 * H, GS * H, w + o.w_hh + 2 * H * H, H, drh, H,
                     S(0));
          gru_dr_kernel<S><<<blocks_for(b * H, kThreads), kThreads, 0, c.stream>>>(a);
          FUSEDRNN_LAUNCH_CHECK();
          gemm_nn<S>(c, b, H, 2 * H, a.grads, GS * H, w + o.w_hh, H, dh, H, S(1));
        } else {
          launch_bwd<S, 3>(c, a);
          gemm_nn<S>(c, b, H, H, a.grads, GS * H, w + o.w_hh, H, dh, H, S(0));
        }
      }
      copy_out(c, args.dhx ? static_cast<S*>(args.dhx) + s * N * SW : nullptr, dh, N * SW * es);
      if (desc.mode == Mode::kLstm)
        copy_out(c, args.dcx ? static_cast<S*>(args.dcx) + s * N * H : nullptr, dc, N * H * es);
      // The layer input's gradient: both directions add into it.
      const S beta = d == 0 ? S(0) : S(1);
      if (M == 1) {
        gemm_nn<S>(c, p.rows, cin, 2 * H, grads, GS * H, w + o.w_ih, cin, dX, cin, beta);
        gemm_nn<S>(c, p.rows, cin, H, grads + 3 * H, GS * H, w + o.w_ih + 2 * H * cin, cin, dX,
                   cin, S(1));
      } else {
        gemm_nn<S>(c, p.rows, cin, G * H, grads, GS * H, w + o.w_ih, cin, dX, cin, beta);
      }
    }
  }
}

template <typename S>
void backward_weights_impl(const CudaPlan& p, const BackwardWeightsArgs& args, const Ctx& c) {
  const RnnDesc& desc = p.desc;
  const int64_t H = desc.hidden_size, G = num_gates(desc.mode), L = desc.num_layers;
  const int D = desc.directions();
  const int64_t GS = p.gate_slots;
  const int M = mode_code(desc);
  S* dw = static_cast<S*>(args.dw);
  S* ones = at<S>(args.workspace, p.ws.ones);
  if (p.rows > 0) {
    fill_kernel<S><<<blocks_for(p.rows, kThreads), kThreads, 0, c.stream>>>(ones, p.rows, S(1));
    FUSEDRNN_LAUNCH_CHECK();
  }
  for (int64_t l = 0; l < L; ++l) {
    const int64_t cin = desc.layer_input_size(l);
    const S* X = l == 0 ? static_cast<const S*>(args.x) : at<S>(args.reserve, p.reserve.out[l - 1]);
    const int64_t ldx = cin, SW = desc.state_size(), P = desc.proj_size;
    for (int d = 0; d < D; ++d) {
      const int64_t s = p.stream_index(l, d);
      const LayerParams o = layer_param_offsets(desc, l, d);
      const S* grads = at<S>(args.reserve, p.reserve.grads[s]);
      const S* hprev = at<S>(args.reserve, p.reserve.hprev[s]);
      const S* gates = at<S>(args.reserve, p.reserve.gates[s]);
      const int64_t R = p.rows, ld = GS * H;
      if (M == 1) {
        gemm_tn<S>(c, 2 * H, cin, R, grads, ld, X, ldx, dw + o.w_ih, cin, S(1));
        gemm_tn<S>(c, H, cin, R, grads + 3 * H, ld, X, ldx, dw + o.w_ih + 2 * H * cin, cin, S(1));
        gemm_tn<S>(c, 3 * H, H, R, grads, ld, hprev, H, dw + o.w_hh, H, S(1));
        colsum_add<S>(c, R, 2 * H, grads, ld, ones, dw + o.b_ih);
        colsum_add<S>(c, R, H, grads + 3 * H, ld, ones, dw + o.b_ih + 2 * H);
        colsum_add<S>(c, R, 3 * H, grads, ld, ones, dw + o.b_hh);
      } else {
        gemm_tn<S>(c, G * H, cin, R, grads, ld, X, ldx, dw + o.w_ih, cin, S(1));
        if (M == 2) {
          gemm_tn<S>(c, 2 * H, H, R, grads, ld, hprev, H, dw + o.w_hh, H, S(1));
          gemm_tn<S>(c, H, H, R, grads + 2 * H, ld, gates + 3 * H, ld, dw + o.w_hh + 2 * H * H, H,
                     S(1));
        } else {
          gemm_tn<S>(c, G * H, SW, R, grads, ld, hprev, SW, dw + o.w_hh, SW, S(1));
        }
        if (P > 0)  // dW_hr += dh^T (o*act(c))
          gemm_tn<S>(c, P, H, R, at<S>(args.reserve, p.reserve.dproj[s]), P,
                     at<S>(args.reserve, p.reserve.hraw[s]), H, dw + o.w_hr, H, S(1));
        colsum_add<S>(c, R, G * H, grads, ld, ones, dw + o.b_ih);
        colsum_add<S>(c, R, G * H, grads, ld, ones, dw + o.b_hh);
      }
    }
  }
}

template <typename Fn>
void with_dtype(DType dt, const Fn& fn) {
  if (dt == DType::kFloat32) fn(float{});
  else fn(double{});
}

void check_plan_shape(const CudaPlan& p) {
  FUSEDRNN_CHECK(p.batch.size() == static_cast<std::size_t>(p.T), ValueError,
                 "plan: not made by fusedrnn::cuda::make_plan");
}

}  // namespace

void forward(const CudaPlan& p, const ForwardArgs& args) {
  check_plan_shape(p);
  FUSEDRNN_CHECK(!p.training || args.reserve || p.reserve_bytes == 0, ValueError,
                 "reserve: a training plan needs reserve_bytes of reserve");
  if (p.T == 0 || p.N == 0) {
    // No steps: the final states are the initial ones.
    Ctx c = make_ctx(p.device, args.stream, p.tf32);
    const std::size_t rows = p.desc.num_layers * p.desc.directions() * p.N;
    const std::size_t es = dtype_size(p.desc.dtype);
    if (args.hy) copy_or_zero(c, args.hy, args.hx, rows * p.desc.state_size() * es);
    if (args.cy && p.desc.mode == Mode::kLstm)
      copy_or_zero(c, args.cy, args.cx, rows * p.desc.hidden_size * es);
    return;
  }
  Ctx c = make_ctx(p.device, args.stream, p.tf32);
  with_dtype(p.desc.dtype, [&](auto s) { forward_impl<decltype(s)>(p, args, c); });
}

void backward_data(const CudaPlan& p, const BackwardDataArgs& args) {
  check_plan_shape(p);
  FUSEDRNN_CHECK(p.training, ValueError, "plan: backward needs a plan made with training=True");
  Ctx c = make_ctx(p.device, args.stream, p.tf32);
  if (p.T == 0 || p.N == 0) {
    const std::size_t rows = p.desc.num_layers * p.desc.directions() * p.N;
    const std::size_t es = dtype_size(p.desc.dtype);
    if (args.dhx) copy_or_zero(c, args.dhx, args.dhy, rows * p.desc.state_size() * es);
    if (args.dcx && p.desc.mode == Mode::kLstm)
      copy_or_zero(c, args.dcx, args.dcy, rows * p.desc.hidden_size * es);
    return;
  }
  with_dtype(p.desc.dtype, [&](auto s) { backward_data_impl<decltype(s)>(p, args, c); });
}

void backward_weights(const CudaPlan& p, const BackwardWeightsArgs& args) {
  check_plan_shape(p);
  FUSEDRNN_CHECK(p.training, ValueError, "plan: backward needs a plan made with training=True");
  if (p.T == 0 || p.N == 0) return;
  Ctx c = make_ctx(p.device, args.stream, p.tf32);
  with_dtype(p.desc.dtype, [&](auto s) { backward_weights_impl<decltype(s)>(p, args, c); });
}

}  // namespace cuda
}  // namespace fusedrnn
