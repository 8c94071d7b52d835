// core/plan.cpp: decides once per (description, T, N, training) everything that does not change per
// step: the executor, the input-projection chunk, the pointwise kernels, and the workspace and reserve
// maps with their byte sizes.
#include <algorithm>
#include <functional>
#include <thread>
#include <cstdlib>
#include <limits>

#include "../cpu/cell.h"
#include "../cpu/packed_gemm.h"
#include "../cpu/blas.h"
#include "fusedrnn/fusedrnn.h"

namespace fusedrnn {

namespace {

constexpr int64_t kChunkRows = 512;  // inference projects about this many (t, n) rows per GEMM
constexpr int64_t kAlignBytes = 64;

// Hands out 64-byte aligned element offsets; throws instead of overflowing.
class Arena {
 public:
  explicit Arena(std::size_t elem) : elem_(static_cast<int64_t>(elem)) {}
  int64_t take(int64_t a, int64_t b = 1, int64_t c = 1) {
    const int64_t n = mul(mul(a, b), c);
    const int64_t align = kAlignBytes / elem_;
    const int64_t at = (top_ + align - 1) / align * align;
    FUSEDRNN_CHECK(at <= kMax - n, ValueError, "T/N/hidden_size: buffer sizes overflow");
    top_ = at + n;
    return at;
  }
  // Bytes for `n` doubles, placed at an element offset.
  int64_t take_bytes(int64_t bytes) { return take((bytes + elem_ - 1) / elem_); }
  std::size_t bytes() const {
    FUSEDRNN_CHECK(top_ <= kMax / elem_, ValueError, "T/N/hidden_size: buffer sizes overflow");
    return static_cast<std::size_t>(top_ * elem_);
  }
  static int64_t mul(int64_t a, int64_t b) {
    int64_t r;
    FUSEDRNN_CHECK(!__builtin_mul_overflow(a, b, &r) && r <= kMax, ValueError,
                   "T/N/hidden_size: buffer sizes overflow (", a, " x ", b, ")");
    return r;
  }

 private:
  static constexpr int64_t kMax = std::numeric_limits<int64_t>::max() / 16;
  int64_t elem_;
  int64_t top_ = 0;
};

}  // namespace

namespace {

// The unrolled executor's schedule (make_plan's part): the lanes, and for a wavefront the tasks per
// lane in one topological order.
void schedule(Plan& p) {
  const int64_t L = p.desc.num_layers, D = p.desc.directions(), T = p.T;
  // Unidirectional stacks run as a wavefront of chunks (layer l's chunk k beside layer l+1's chunk
  // k-1); a bidirectional layer's reverse stream needs all of the layer below, so its tasks are
  // whole layers and the overlap is between the two directions.
  const bool wave = D == 1 && L >= 2;
  const int64_t chunk = wave ? std::max<int64_t>(1, (T + 7) / 8) : std::max<int64_t>(T, 1);
  const int64_t K = (T + chunk - 1) / chunk;  // tasks per stream
  p.unroll_chunk = chunk;
  const int64_t parallel = wave ? L : D;
  p.num_lanes = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(parallel, lane_count())));
  if (!wave) return;  // whole-layer phases, lane = direction (unrolled_executor.cpp): no task list
  p.fwd_tasks.assign(p.num_lanes, {});
  p.bwd_tasks.assign(p.num_lanes, {});
  struct Keyed { int64_t key0, key1; Task task; };
  std::vector<Keyed> fwd, bwd;
  for (int64_t l = 0; l < L; ++l) {
    for (int dir = 0; dir < D; ++dir) {
      for (int64_t k = 0; k < K; ++k) {
        Task f;
        f.layer = l;
        f.dir = dir;
        f.t0 = k * chunk;
        f.t1 = std::min(T, f.t0 + chunk);
        f.index = k;
        if (l > 0) {
          for (int d2 = 0; d2 < D; ++d2) f.deps.push_back({(l - 1) * D + d2, k + 1});
        }
        fwd.push_back({l + k, l * D + dir, f});
        // backward: chunks in reverse; the layer above must have produced this chunk's gradient
        Task b = f;
        b.deps.clear();
        const int64_t kb = K - 1 - k;  // chunk processed as the stream's k-th backward task
        b.t0 = kb * chunk;
        b.t1 = std::min(T, b.t0 + chunk);
        if (l < L - 1) {
          for (int d2 = 0; d2 < D; ++d2) b.deps.push_back({(l + 1) * D + d2, k + 1});
        }
        bwd.push_back({(L - 1 - l) + k, (L - 1 - l) * D + dir, b});
      }
    }
  }
  auto by_key = [](const Keyed& a, const Keyed& b) {
    return a.key0 != b.key0 ? a.key0 < b.key0 : a.key1 < b.key1;
  };
  std::stable_sort(fwd.begin(), fwd.end(), by_key);
  std::stable_sort(bwd.begin(), bwd.end(), by_key);
  auto lane_of = [&](const Task& t) { return static_cast<int>(t.layer % p.num_lanes); };
  for (auto& k : fwd) p.fwd_tasks[lane_of(k.task)].push_back(k.task);
  for (auto& k : bwd) p.bwd_tasks[lane_of(k.task)].push_back(k.task);
}

}  // namespace

int64_t lane_count() {
  if (const char* env = std::getenv("FUSEDRNN_LANES")) {
    const int64_t v = std::atoll(env);
    if (v >= 1) return v;
  }
  return std::max<int64_t>(1, std::thread::hardware_concurrency());
}

int num_threads() { return cpu::blas_num_threads(); }

void set_num_threads(int n) {
  FUSEDRNN_CHECK(n >= 0, ValueError, "n: expected a thread count >= 0 (0: follow OpenMP), got ", n);
  cpu::set_blas_num_threads(n);
}

ExecutorKind parse_executor(const std::string& name) {
  if (name == "loop") return ExecutorKind::kLoop;
  if (name == "unrolled") return ExecutorKind::kUnrolled;
  FUSEDRNN_CHECK(false, ValueError, "executor: expected 'loop' or 'unrolled', got '", name, "'");
  return ExecutorKind::kLoop;
}

std::string executor_name(ExecutorKind kind) {
  return kind == ExecutorKind::kUnrolled ? "unrolled" : "loop";
}

Plan make_plan(const RnnDesc& desc, int64_t T, int64_t N, bool training,
               const std::vector<int64_t>& lengths, ExecutorKind executor) {
  validate(desc);
  const int64_t kBlasMax = std::numeric_limits<int32_t>::max();
  FUSEDRNN_CHECK(T >= 0, ValueError, "T (sequence length): expected >= 0, got ", T);
  FUSEDRNN_CHECK(N >= 0, ValueError, "N (batch size): expected >= 0, got ", N);
  FUSEDRNN_CHECK(T <= kBlasMax && N <= kBlasMax && (T == 0 || N <= kBlasMax / T), ValueError,
                 "T*N: expected at most ", kBlasMax, " rows, got T=", T, ", N=", N);

  Plan p;
  p.desc = desc;
  p.T = T;
  p.N = N;
  p.training = training;
  p.executor = executor;
  p.kernels = cpu::select_cell_kernels(cpu::cell_kind(desc));

  if (!lengths.empty()) {
    FUSEDRNN_CHECK(static_cast<int64_t>(lengths.size()) == N, ValueError,
                   "lengths: expected shape (", N, ",) (one per sample), got ", lengths.size(),
                   " values");
    FUSEDRNN_CHECK(!desc.residual && !desc.zoneout(), ValueError,
                   "lengths: not supported together with zoneout or residual");
    for (int64_t v : lengths)
      FUSEDRNN_CHECK(v >= 0 && v <= T, ValueError, "lengths: expected values in [0, T] = [0, ", T,
                     "], got ", v);
    p.lengths = lengths;
    std::sort(p.lengths.begin(), p.lengths.end(), std::greater<int64_t>());
    p.batch.assign(T, 0);
    p.offsets.assign(T + 1, 0);
    for (int64_t t = 0, r = N; t < T; ++t) {
      while (r > 0 && p.lengths[r - 1] <= t) --r;
      p.batch[t] = r;
      p.offsets[t + 1] = p.offsets[t] + r;
    }
  }

  const int64_t H = desc.hidden_size, D = desc.directions(), L = desc.num_layers;
  const int64_t S = desc.state_size(), P = desc.proj_size;  // width of h; projection (0: none)
  const int64_t GH = num_gates(desc.mode) * H;
  const int64_t R = p.rows();  // (t, n) rows of every sequence buffer
  p.gate_slots = desc.mode == Mode::kGru ? 4 : num_gates(desc.mode);
  const int64_t SH = p.gate_slots * H;
  const bool lstm = desc.mode == Mode::kLstm;
  const bool unrolled = executor == ExecutorKind::kUnrolled;
  if (unrolled) schedule(p);
  const int64_t chunk_infer =
      std::min<int64_t>(T, std::max<int64_t>(1, (kChunkRows + N - 1) / std::max<int64_t>(N, 1)));
  p.chunk_t = training ? T : (unrolled ? std::max<int64_t>(p.unroll_chunk, 0) : chunk_infer);
  FUSEDRNN_CHECK(N == 0 || Arena::mul(N, Arena::mul(D, H)) <= kBlasMax, ValueError,
                 "N*hidden_size: too large for 32-bit BLAS indexing");

  Arena ws(dtype_size(desc.dtype));
  p.ws.zeros = ws.take(std::max<int64_t>(p.gate_slots, 2), H);
  if (unrolled && !training) {
    for (int64_t l = 0; l < L; ++l) p.ws.outs.push_back(ws.take(R, D * S));
  } else {
    if (L >= 2) p.ws.inter[0] = ws.take(R, D * S);
    if (L >= 3) p.ws.inter[1] = ws.take(R, D * S);
  }
  const bool drop = training && (desc.dropout > 0 || desc.recurrent_dropout > 0);
  const int64_t widest = std::max(desc.input_size, std::max<int64_t>(D * H, H));
  const int64_t masks = desc.dropout_mask_count();
  const int64_t streams = unrolled ? L * D : 1;
  // float32 recurrent products run through the packed GEMM (cpu/packed_gemm.h): W_hh is packed once
  // per call, where a BLAS call re-packs it on every step; single-threaded on a lane, shared out
  // over the team's threads otherwise (faster than OpenBLAS by 8-35 % at the per-step shapes of
  // W2-W8 on 2 cores). Batch 1 keeps BLAS's GEMV, which streams W_hh unpacked (measured faster).
  const int64_t k_rec = (desc.gru_reset_before() ? 2 : num_gates(desc.mode)) * H;
  const bool packed = desc.dtype == DType::kFloat32 && desc.dropout_mask_count() == 1 && N >= 2 &&
                      cpu::packed_gemm_available();
  for (int64_t i = 0; i < streams; ++i) {
    Plan::Lane ln;
    ln.bias = ws.take(GH + H);
    ln.gh = ws.take(N, GH);
    if (desc.gru_reset_before()) ln.rh = ws.take(N, H);
    if (P > 0) ln.proj = ws.take(2, N, H);
    if (drop) {
      ln.xdrop = ws.take(R, widest);
      if (desc.dropout > 0) ln.drop_x = ws.take(masks * N, widest);
      if (desc.recurrent_dropout > 0) {
        ln.drop_h = ws.take(masks * N, H);
        ln.hdrop = ws.take(2, N, H);
      }
    }
    if (desc.residual || desc.zoneout()) ln.zone = ws.take(4, N, H);
    if (packed)
      ln.wpack = ws.take(std::max(cpu::packed_size(k_rec, S), training ? cpu::packed_size(S, k_rec) : 0));
    if (training) {
      ln.dh = ws.take(N, S);
      ln.dc = ws.take(N, H);
    } else {
      ln.gx = ws.take(p.chunk_t, N, GH);
      if (lstm) ln.cstate = ws.take(N, H);
    }
    if (p.varlen()) {
      ln.h0 = ws.take(N, S);
      ln.c0 = ws.take(N, H);
    }
    if (training) {
      ln.colsum = ws.take_bytes(Arena::mul(SH, sizeof(double)));
      if (p.varlen() || desc.recurrent_dropout > 0) ln.hprev = ws.take(R, S);
    }
    p.lanes.push_back(ln);
  }
  if (!training && desc.zero_masked_output) {
    p.ws.states = ws.take(T, N, D * S);
  }
  if (p.varlen()) {
    // loop inference streams the packed input per chunk and keeps the last layer's states in a
    // ring (scattering each step into y), so its scratch still does not grow with T
    const bool streamed = !training && !unrolled;
    if (p.ws.states < 0 && !streamed) p.ws.states = ws.take(R, D * S);
    p.ws.xpack = streamed ? ws.take(p.chunk_t, N, desc.input_size) : ws.take(R, desc.input_size);
    if (streamed) p.lanes[0].ring = ws.take(2, N, S);
    p.ws.order = ws.take_bytes(Arena::mul(2 * N, sizeof(int64_t)));
  }
  p.workspace_bytes = ws.bytes();

  if (training) {
    Arena rs(dtype_size(desc.dtype));
    for (int64_t l = 0; l < L; ++l) {
      p.reserve.out.push_back(rs.take(R, D * S));
      for (int64_t d = 0; d < D; ++d) {
        p.reserve.gates.push_back(rs.take(R, SH));
        p.reserve.cells.push_back(lstm ? rs.take(R, H) : -1);
        p.reserve.grads.push_back(rs.take(R, SH));
        p.reserve.states.push_back(desc.separate_states(true) ? rs.take(R, H) : -1);
        p.reserve.hraw.push_back(P > 0 ? rs.take(R, H) : -1);
        p.reserve.dproj.push_back(P > 0 ? rs.take(R, P) : -1);
      }
    }
    p.reserve_bytes = rs.bytes();
  }
  return p;
}

}  // namespace fusedrnn
