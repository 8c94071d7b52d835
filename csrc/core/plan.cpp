// core/plan.cpp: decides once per (description, T, N, training) everything that does not change per
// step: the executor, the input-projection chunk, the pointwise kernels, and the workspace and reserve
// maps with their byte sizes.
#include <algorithm>
#include <limits>

#include "../cpu/cell.h"
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

Plan make_plan(const RnnDesc& desc, int64_t T, int64_t N, bool training) {
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
  p.executor = ExecutorKind::kLoop;
  p.kernels = cpu::select_cell_kernels(cpu::cell_kind(desc));

  const int64_t H = desc.hidden_size, D = desc.directions(), L = desc.num_layers;
  const int64_t S = desc.state_size(), P = desc.proj_size;  // width of h; projection (0: none)
  const int64_t GH = num_gates(desc.mode) * H;
  p.gate_slots = desc.mode == Mode::kGru ? 4 : num_gates(desc.mode);
  const int64_t SH = p.gate_slots * H;
  const bool lstm = desc.mode == Mode::kLstm;
  p.chunk_t = training ? T : std::min<int64_t>(T, std::max<int64_t>(1, (kChunkRows + N - 1) / std::max<int64_t>(N, 1)));
  FUSEDRNN_CHECK(N == 0 || Arena::mul(N, Arena::mul(D, H)) <= kBlasMax, ValueError,
                 "N*hidden_size: too large for 32-bit BLAS indexing");

  Arena ws(dtype_size(desc.dtype));
  p.ws.zeros = ws.take(std::max<int64_t>(p.gate_slots, 2), H);
  p.ws.bias = ws.take(GH + H);
  p.ws.gh = ws.take(N, GH);
  if (desc.gru_reset_before()) p.ws.rh = ws.take(N, H);
  if (L >= 2) p.ws.inter[0] = ws.take(T, N, D * S);
  if (L >= 3) p.ws.inter[1] = ws.take(T, N, D * S);
  if (P > 0) p.ws.proj = ws.take(2, N, H);
  if (training && (desc.dropout > 0 || desc.recurrent_dropout > 0)) {
    const int64_t widest = std::max(desc.input_size, std::max<int64_t>(D * H, H));
    const int64_t masks = desc.dropout_mask_count();
    p.ws.xdrop = ws.take(T, N, widest);
    if (desc.dropout > 0) p.ws.drop_x = ws.take(masks * N, widest);
    if (desc.recurrent_dropout > 0) {
      p.ws.drop_h = ws.take(masks * N, H);
      p.ws.hdrop = ws.take(2, N, H);
    }
  }
  if (desc.residual || desc.zoneout()) p.ws.zone = ws.take(4, N, H);
  if (training) {
    p.ws.dh = ws.take(N, H);
    p.ws.dc = ws.take(N, H);
    p.ws.colsum = ws.take_bytes(Arena::mul(SH, sizeof(double)));
  } else {
    p.ws.gx = ws.take(p.chunk_t, N, GH);
    if (desc.zero_masked_output) p.ws.states = ws.take(T, N, D * S);
    if (lstm) p.ws.cstate = ws.take(N, H);
  }
  p.workspace_bytes = ws.bytes();

  if (training) {
    Arena rs(dtype_size(desc.dtype));
    for (int64_t l = 0; l < L; ++l) {
      p.reserve.out.push_back(rs.take(T, N, D * S));
      for (int64_t d = 0; d < D; ++d) {
        p.reserve.gates.push_back(rs.take(T, N, SH));
        p.reserve.cells.push_back(lstm ? rs.take(T, N, H) : -1);
        p.reserve.grads.push_back(rs.take(T, N, SH));
        p.reserve.states.push_back(desc.separate_states(true) ? rs.take(T, N, H) : -1);
        p.reserve.hraw.push_back(P > 0 ? rs.take(T, N, H) : -1);
        p.reserve.dproj.push_back(P > 0 ? rs.take(T, N, P) : -1);
      }
    }
    p.reserve_bytes = rs.bytes();
  }
  return p;
}

}  // namespace fusedrnn
