// core/api.cpp: the public entry points: argument checks, the empty-sequence cases, and dispatch to
// the plan's executor for the plan's dtype.
#include <cstring>

#include "executor.h"
#include "fusedrnn/fusedrnn.h"

namespace fusedrnn {

namespace {

void check_ptr(const void* ptr, const char* name) {
  FUSEDRNN_CHECK(ptr != nullptr, ValueError, name, ": expected a buffer, got a null pointer");
}

// Row strides of a (T, N, width) grid: rows must not overlap.
void check_grid(const char* name, int64_t T, int64_t N, int64_t width, int64_t st, int64_t sn) {
  FUSEDRNN_CHECK(st >= 0 && sn >= 0, ValueError, name, ": expected non-negative strides, got (", st,
                 ", ", sn, ")");
  const int64_t kMax = 2147483647;
  FUSEDRNN_CHECK(st <= kMax && sn <= kMax, ValueError, name, ": strides (", st, ", ", sn,
                 ") exceed 32-bit BLAS indexing");
  if (T <= 0 || N <= 0) return;
  const bool rows_apart = (N == 1 || sn >= width) && (T == 1 || st >= width);
  const bool disjoint = N == 1 || T == 1 || st >= N * sn || sn >= T * st;
  FUSEDRNN_CHECK(rows_apart && disjoint, ValueError, name,
                 ": rows overlap; expected strides (t, n) that separate ", T, " x ", N,
                 " rows of ", width, " elements, got (", st, ", ", sn, ")");
}

void check_mask_strides(int64_t st, int64_t sn) {
  FUSEDRNN_CHECK(st >= 0 && sn >= 0, ValueError, "mask: expected non-negative strides, got (", st,
                 ", ", sn, ")");
}

// Zoneout and residual define the output without reference to masks; the two do not combine.
void check_mask_options(const Plan& p, const uint8_t* mask) {
  FUSEDRNN_CHECK(!mask || !(p.desc.residual || p.desc.zoneout()), ValueError,
                 "mask: not supported together with zoneout or residual");
}

// A plan with lengths needs them (or packed data) with every call; a plan without, neither.
void check_lengths(const Plan& p, const int64_t* lengths, bool packed, const uint8_t* mask) {
  if (!p.varlen()) {
    FUSEDRNN_CHECK(!lengths && !packed, ValueError,
                   "lengths: this plan was made without lengths; make one with the length profile");
    return;
  }
  FUSEDRNN_CHECK(lengths || packed, ValueError,
                 "lengths: this plan was made for variable lengths; pass lengths or packed data");
  FUSEDRNN_CHECK(!(lengths && packed), ValueError,
                 "lengths: pass either lengths (padded data) or packed data, not both");
  FUSEDRNN_CHECK(!mask, ValueError, "lengths: not supported together with mask");
}

void check_workspace(const Plan& p, void* ws) {
  if (p.workspace_bytes) check_ptr(ws, "workspace");
}

template <typename T>
void fill_state(void* out, const void* in, int64_t count) {
  if (!out) return;
  if (in) {
    std::memcpy(out, in, sizeof(T) * count);
  } else {
    std::memset(out, 0, sizeof(T) * count);
  }
}

template <typename Fn>
void dispatch(DType dtype, Fn&& fn) {
  if (dtype == DType::kFloat32) {
    fn(float{});
  } else {
    fn(double{});
  }
}

// Empty problems: with N = 0 there is nothing to do; with T = 0 the final states are the initial
// ones (and the state gradients pass straight through), zeros when absent. True when handled.
bool done_if_empty(const Plan& p, void* h_out, const void* h_in, void* c_out, const void* c_in) {
  if (p.N == 0) return true;
  if (p.T != 0) return false;
  const int64_t rows = p.desc.num_layers * p.desc.directions() * p.N;
  dispatch(p.desc.dtype, [&](auto v) {
    using T = decltype(v);
    fill_state<T>(h_out, h_in, rows * p.desc.state_size());
    if (p.desc.mode == Mode::kLstm) fill_state<T>(c_out, c_in, rows * p.desc.hidden_size);
  });
  return true;
}

}  // namespace

void forward(const Plan& p, const ForwardArgs& a) {
  const int64_t D = p.desc.directions(), H = p.desc.state_size();
  if (done_if_empty(p, a.hy, a.hx, a.cy, a.cx)) return;
  check_ptr(a.x, "x");
  check_ptr(a.w, "weights");
  check_ptr(a.y, "y");
  check_lengths(p, a.lengths, a.packed, a.mask);
  if (a.packed) {
    check_grid("x", 1, p.rows(), p.desc.input_size, 0, a.x_sn);
    check_grid("y", 1, p.rows(), D * H, 0, a.y_sn);
  } else {
    check_grid("x", p.T, p.N, p.desc.input_size, a.x_st, a.x_sn);
    check_grid("y", p.T, p.N, D * H, a.y_st, a.y_sn);
  }
  check_workspace(p, a.workspace);
  if (p.training) check_ptr(a.reserve, "reserve");
  if (a.mask) check_mask_strides(a.mask_st, a.mask_sn);
  check_mask_options(p, a.mask);
  dispatch(p.desc.dtype, [&](auto v) {
    if (p.executor == ExecutorKind::kUnrolled) {
      unrolled::forward<decltype(v)>(p, a);
    } else {
      loop::forward<decltype(v)>(p, a);
    }
  });
}

void backward_data(const Plan& p, const BackwardDataArgs& a) {
  FUSEDRNN_CHECK(p.training, ValueError,
                 "plan: backward needs a plan made with training=true and its forward's reserve");
  const int64_t D = p.desc.directions(), H = p.desc.state_size();
  if (done_if_empty(p, a.dhx, a.dhy, a.dcx, a.dcy)) return;
  check_ptr(a.w, "weights");
  check_ptr(a.dx, "dx");
  check_ptr(a.reserve, "reserve");
  check_workspace(p, a.workspace);
  check_lengths(p, a.lengths, a.packed, a.mask);
  if (a.packed) {
    if (a.dy) check_grid("dy", 1, p.rows(), D * H, 0, a.dy_sn);
    check_grid("dx", 1, p.rows(), p.desc.input_size, 0, a.dx_sn);
  } else {
    if (a.dy) check_grid("dy", p.T, p.N, D * H, a.dy_st, a.dy_sn);
    check_grid("dx", p.T, p.N, p.desc.input_size, a.dx_st, a.dx_sn);
  }
  if (a.mask) check_mask_strides(a.mask_st, a.mask_sn);
  check_mask_options(p, a.mask);
  dispatch(p.desc.dtype, [&](auto v) {
    if (p.executor == ExecutorKind::kUnrolled) {
      unrolled::backward_data<decltype(v)>(p, a);
    } else {
      loop::backward_data<decltype(v)>(p, a);
    }
  });
}

void backward_weights(const Plan& p, const BackwardWeightsArgs& a) {
  FUSEDRNN_CHECK(p.training, ValueError,
                 "plan: backward needs a plan made with training=true and its forward's reserve");
  if (p.N == 0 || p.T == 0) return;
  check_ptr(a.x, "x");
  check_ptr(a.dw, "dw");
  check_ptr(a.reserve, "reserve");
  check_workspace(p, a.workspace);
  check_lengths(p, a.lengths, a.packed, nullptr);
  if (a.packed) {
    check_grid("x", 1, p.rows(), p.desc.input_size, 0, a.x_sn);
  } else {
    check_grid("x", p.T, p.N, p.desc.input_size, a.x_st, a.x_sn);
  }
  dispatch(p.desc.dtype, [&](auto v) {
    if (p.executor == ExecutorKind::kUnrolled) {
      unrolled::backward_weights<decltype(v)>(p, a);
    } else {
      loop::backward_weights<decltype(v)>(p, a);
    }
  });
}

}  // namespace fusedrnn
