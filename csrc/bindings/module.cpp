// bindings/module.cpp: fusedrnn._C, the pybind11 face of the core. The only file that includes pybind11.
//
// It checks every array (dtype, rank, shape, strides, alignment, writability) before any pointer
// reaches the core, turns core exceptions into ValueError / TypeError, and releases the GIL while
// kernels run. The user-facing argument checks with friendlier names live in python/fusedrnn; these
// are the last line of defence for anyone calling _C directly.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "../cpu/cell.h"
#include "desc.h"
#include "fusedrnn/fusedrnn.h"

namespace py = pybind11;
using namespace fusedrnn;
using bindings::make_desc;

namespace {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

void check_dtype(const py::array& a, const char* name, DType dtype) {
  const bool ok = dtype == DType::kFloat32 ? py::isinstance<py::array_t<float>>(a)
                                           : py::isinstance<py::array_t<double>>(a);
  FUSEDRNN_CHECK(ok, TypeError, name, ": expected dtype ", dtype_name(dtype), ", got ",
                 std::string(py::str(a.dtype())));
}

void check_writable(const py::array& a, const char* name) {
  FUSEDRNN_CHECK(a.writeable(), ValueError, name, ": expected a writable array, got a read-only one");
}

void check_aligned(const py::array& a, const char* name) {
  FUSEDRNN_CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % a.itemsize() == 0, ValueError, name,
                 ": expected an array aligned to its element size");
}

struct Grid {
  const void* ptr;
  int64_t st, sn;
};

// A (T, N, width) sequence array with any row strides and contiguous features.
const void* dense(const py::object& o, const char* name, DType dtype, std::vector<int64_t> shape,
                  bool writable, bool optional = true);
std::vector<int64_t> state_shape(const Plan& p);
std::vector<int64_t> cell_shape(const Plan& p);

Grid seq(const py::object& o, const char* name, DType dtype, int64_t T, int64_t N, int64_t width,
         bool writable) {
  FUSEDRNN_CHECK(py::isinstance<py::array>(o), TypeError, name, ": expected a numpy array, got ",
                 std::string(py::str(py::type::of(o))));
  py::array a = py::reinterpret_borrow<py::array>(o);
  check_dtype(a, name, dtype);
  FUSEDRNN_CHECK(a.ndim() == 3 && a.shape(0) == T && a.shape(1) == N && a.shape(2) == width,
                 ValueError, name, ": expected shape (", T, ", ", N, ", ", width, "), got ",
                 shape_str(a));
  if (writable) check_writable(a, name);
  if (T * N == 0) return {a.data(), 0, 0};  // nothing is read or written; strides are meaningless
  check_aligned(a, name);
  const int64_t item = a.itemsize();
  FUSEDRNN_CHECK(width <= 1 || a.strides(2) == item, ValueError, name,
                 ": expected contiguous features (last stride ", item, " bytes), got ", a.strides(2));
  FUSEDRNN_CHECK(a.strides(0) % item == 0 && a.strides(1) % item == 0, ValueError, name,
                 ": expected strides that are multiples of the element size ", item, ", got (",
                 a.strides(0), ", ", a.strides(1), ")");
  return {a.data(), a.strides(0) / item, a.strides(1) / item};
}

// An optional (T, N) mask of uint8 (or bool) with any strides.
void mask_arg(const py::object& o, const Plan& p, const uint8_t** ptr, int64_t* st, int64_t* sn) {
  if (o.is_none()) return;
  FUSEDRNN_CHECK(py::isinstance<py::array>(o), TypeError, "mask: expected a numpy array, got ",
                 std::string(py::str(py::type::of(o))));
  py::array a = py::reinterpret_borrow<py::array>(o);
  const char kind = a.dtype().kind();
  FUSEDRNN_CHECK((kind == 'b' || kind == 'u') && a.itemsize() == 1, TypeError,
                 "mask: expected dtype bool or uint8, got ", std::string(py::str(a.dtype())));
  FUSEDRNN_CHECK(a.ndim() == 2 && a.shape(0) == p.T && a.shape(1) == p.N, ValueError,
                 "mask: expected shape (", p.T, ", ", p.N, "), got ", shape_str(a));
  *ptr = static_cast<const uint8_t*>(a.data());
  *st = a.strides(0);
  *sn = a.strides(1);
}

// Packed sequence rows (rows, width) (PyTorch's PackedSequence data): any row stride, contiguous
// features.
Grid packed_seq(const py::object& o, const char* name, DType dtype, int64_t rows, int64_t width,
                bool writable) {
  FUSEDRNN_CHECK(py::isinstance<py::array>(o), TypeError, name, ": expected a numpy array, got ",
                 std::string(py::str(py::type::of(o))));
  py::array a = py::reinterpret_borrow<py::array>(o);
  check_dtype(a, name, dtype);
  FUSEDRNN_CHECK(a.ndim() == 2 && a.shape(0) == rows && a.shape(1) == width, ValueError, name,
                 ": expected packed rows of shape (", rows, ", ", width, "), got ", shape_str(a));
  if (writable) check_writable(a, name);
  if (rows == 0) return {a.data(), 0, 0};
  check_aligned(a, name);
  const int64_t item = a.itemsize();
  FUSEDRNN_CHECK(width <= 1 || a.strides(1) == item, ValueError, name,
                 ": expected contiguous features (last stride ", item, " bytes), got ", a.strides(1));
  FUSEDRNN_CHECK(a.strides(0) % item == 0 && a.strides(0) >= 0, ValueError, name,
                 ": expected a non-negative row stride that is a multiple of ", item, ", got ",
                 a.strides(0));
  return {a.data(), 0, a.strides(0) / item};
}

// A (T, N, width) grid, or with `packed` a (rows, width) array of packed rows.
Grid sequence(const py::object& o, const char* name, const Plan& p, int64_t width, bool writable,
              bool packed) {
  if (packed) return packed_seq(o, name, p.desc.dtype, p.rows(), width, writable);
  return seq(o, name, p.desc.dtype, p.T, p.N, width, writable);
}

// An optional (N,) int64 C-contiguous array (lengths, order).
const int64_t* index_arg(const py::object& o, const char* name, int64_t N) {
  if (o.is_none()) return nullptr;
  FUSEDRNN_CHECK(py::isinstance<py::array_t<int64_t>>(o), TypeError, name,
                 ": expected an int64 numpy array of shape (", N, ",)");
  py::array a = py::reinterpret_borrow<py::array>(o);
  FUSEDRNN_CHECK(a.ndim() == 1 && a.shape(0) == N, ValueError, name, ": expected shape (", N,
                 ",), got ", shape_str(a));
  FUSEDRNN_CHECK(a.flags() & py::array::c_style, ValueError, name, ": expected a contiguous array");
  return static_cast<const int64_t*>(a.data());
}

// Cell-state arguments exist for LSTM only; anything but None for another mode is an error.
const void* cell_state(const Plan& p, const py::object& o, const char* name, bool writable) {
  if (p.desc.mode == Mode::kLstm) {
    return dense(o, name, p.desc.dtype, cell_shape(p), writable);
  }
  FUSEDRNN_CHECK(o.is_none(), ValueError, name, ": only mode 'lstm' has a cell state, got mode '",
                 mode_name(p.desc.mode), "'");
  return nullptr;
}

// A C-contiguous array of exactly `shape`, or None when optional.
const void* dense(const py::object& o, const char* name, DType dtype, std::vector<int64_t> shape,
                  bool writable, bool optional) {
  if (o.is_none()) {
    FUSEDRNN_CHECK(optional, TypeError, name, ": expected a numpy array, got None");
    return nullptr;
  }
  FUSEDRNN_CHECK(py::isinstance<py::array>(o), TypeError, name, ": expected a numpy array, got ",
                 std::string(py::str(py::type::of(o))));
  py::array a = py::reinterpret_borrow<py::array>(o);
  check_dtype(a, name, dtype);
  bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; same && i < shape.size(); ++i) same = a.shape(i) == shape[i];
  std::string want = "(";
  for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
  want += shape.size() == 1 ? ",)" : ")";
  FUSEDRNN_CHECK(same, ValueError, name, ": expected shape ", want, ", got ", shape_str(a));
  if (writable) check_writable(a, name);
  FUSEDRNN_CHECK(a.flags() & py::array::c_style, ValueError, name,
                 ": expected a C-contiguous array of shape ", want);
  check_aligned(a, name);
  return a.data();
}

void* scratch(const py::object& o, const char* name, std::size_t bytes) {
  if (bytes == 0 && o.is_none()) return nullptr;
  FUSEDRNN_CHECK(py::isinstance<py::array>(o), TypeError, name, ": expected a numpy array of ",
                 bytes, " bytes");
  py::array a = py::reinterpret_borrow<py::array>(o);
  FUSEDRNN_CHECK(a.flags() & py::array::c_style, ValueError, name, ": expected a C-contiguous array");
  FUSEDRNN_CHECK(static_cast<std::size_t>(a.nbytes()) >= bytes, ValueError, name, ": expected at least ",
                 bytes, " bytes, got ", a.nbytes());
  FUSEDRNN_CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % 8 == 0, ValueError, name,
                 ": expected 8-byte alignment");
  check_writable(a, name);
  return a.mutable_data();
}

// h states are state_size() wide (the projection size with one), c states hidden_size.
std::vector<int64_t> state_shape(const Plan& p) {
  return {p.desc.num_layers * p.desc.directions(), p.N, p.desc.state_size()};
}
std::vector<int64_t> cell_shape(const Plan& p) {
  return {p.desc.num_layers * p.desc.directions(), p.N, p.desc.hidden_size};
}


}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusedrnn core: fused LSTM/GRU/RNN kernels (see fusedrnn for the Python API)";

  bindings::register_exceptions();

  py::class_<Plan>(m, "Plan")
      .def(py::init([](const std::string& mode, int64_t input_size, int64_t hidden_size,
                       int64_t num_layers, bool bidirectional, const std::string& dtype, int64_t T,
                       int64_t N, bool training, const py::object& activation,
                       const std::string& recurrent_activation, bool reset_after,
                       bool zero_masked_output, double dropout, double recurrent_dropout,
                       double zoneout_outputs, double zoneout_states, bool residual,
                       int64_t proj_size, bool dropout_per_gate, const py::object& clip_min,
                       const py::object& clip_max, bool clip_nan, const py::object& lengths,
                       const std::string& executor) {
             std::vector<int64_t> lens;
             if (!lengths.is_none()) lens = py::cast<std::vector<int64_t>>(lengths);
             Plan plan = make_plan(make_desc(mode, input_size, hidden_size, num_layers,
                                             bidirectional, dtype, activation,
                                             recurrent_activation, reset_after,
                                             zero_masked_output, dropout, recurrent_dropout,
                                             zoneout_outputs, zoneout_states, residual, proj_size,
                                             dropout_per_gate, clip_min, clip_max, clip_nan),
                                   T, N, training, lens, parse_executor(executor));
             return plan;
           }),
           py::arg("mode"), py::arg("input_size"), py::arg("hidden_size"), py::arg("num_layers"),
           py::arg("bidirectional"), py::arg("dtype"), py::arg("T"), py::arg("N"),
           py::arg("training"), py::kw_only(), py::arg("activation") = py::none(),
           py::arg("recurrent_activation") = "sigmoid", py::arg("reset_after") = true,
           py::arg("zero_masked_output") = false, py::arg("dropout") = 0.0,
           py::arg("recurrent_dropout") = 0.0, py::arg("zoneout_outputs") = 0.0,
           py::arg("zoneout_states") = 0.0, py::arg("residual") = false,
           py::arg("proj_size") = 0, py::arg("dropout_per_gate") = false,
           py::arg("lstm_state_clip_min") = py::none(), py::arg("lstm_state_clip_max") = py::none(),
           py::arg("lstm_state_clip_nan") = false,
           py::arg("lengths") = py::none(), py::arg("executor") = "loop")
      .def_property_readonly("mode", [](const Plan& p) { return mode_name(p.desc.mode); })
      .def_property_readonly("dtype", [](const Plan& p) { return dtype_name(p.desc.dtype); })
      .def_property_readonly("input_size", [](const Plan& p) { return p.desc.input_size; })
      .def_property_readonly("hidden_size", [](const Plan& p) { return p.desc.hidden_size; })
      .def_property_readonly("num_layers", [](const Plan& p) { return p.desc.num_layers; })
      .def_property_readonly("bidirectional", [](const Plan& p) { return p.desc.bidirectional; })
      .def_property_readonly("activation",
                             [](const Plan& p) { return activation_name(p.desc.activation); })
      .def_property_readonly("recurrent_activation",
                             [](const Plan& p) { return activation_name(p.desc.recurrent_activation); })
      .def_property_readonly("reset_after", [](const Plan& p) { return p.desc.reset_after; })
      .def_property_readonly("zero_masked_output",
                             [](const Plan& p) { return p.desc.zero_masked_output; })
      .def_property_readonly("dropout", [](const Plan& p) { return p.desc.dropout; })
      .def_property_readonly("recurrent_dropout",
                             [](const Plan& p) { return p.desc.recurrent_dropout; })
      .def_property_readonly("zoneout_outputs",
                             [](const Plan& p) { return p.desc.zoneout_outputs; })
      .def_property_readonly("zoneout_states", [](const Plan& p) { return p.desc.zoneout_states; })
      .def_property_readonly("residual", [](const Plan& p) { return p.desc.residual; })
      .def_property_readonly("proj_size", [](const Plan& p) { return p.desc.proj_size; })
      .def_property_readonly("dropout_per_gate",
                             [](const Plan& p) { return p.desc.dropout_per_gate; })
      .def_property_readonly("lstm_state_clip",
                             [](const Plan& p) -> py::object {
                               if (!p.desc.clip_state) return py::none();
                               return py::make_tuple(p.desc.clip_min, p.desc.clip_max,
                                                     p.desc.clip_nan);
                             })
      .def_readonly("T", &Plan::T)
      .def_readonly("N", &Plan::N)
      .def_readonly("training", &Plan::training)
      .def_readonly("chunk_t", &Plan::chunk_t)
      .def_readonly("workspace_bytes", &Plan::workspace_bytes)
      .def_readonly("reserve_bytes", &Plan::reserve_bytes)
      .def_property_readonly("executor", [](const Plan& p) { return executor_name(p.executor); })
      .def_property_readonly("varlen", &Plan::varlen)
      .def_property_readonly("rows", &Plan::rows)
      .def_readonly("lengths", &Plan::lengths)
      .def_readonly("batch_sizes", &Plan::batch)
      .def_readonly("num_lanes", &Plan::num_lanes)
      .def_readonly("unroll_chunk", &Plan::unroll_chunk)
      .def_property_readonly("isa", [](const Plan& p) { return std::string(p.kernels->isa); });

  m.def("param_count",
        [](const std::string& mode, int64_t input_size, int64_t hidden_size, int64_t num_layers,
           bool bidirectional, int64_t proj_size) {
          return param_count(make_desc(mode, input_size, hidden_size, num_layers, bidirectional,
                                       "float32", py::none(), "sigmoid", true, false, 0.0, 0.0, 0.0,
                                       0.0, false, proj_size));
        },
        py::arg("mode"), py::arg("input_size"), py::arg("hidden_size"), py::arg("num_layers"),
        py::arg("bidirectional"), py::arg("proj_size") = 0);

  m.def("param_layout",
        [](const std::string& mode, int64_t input_size, int64_t hidden_size, int64_t num_layers,
           bool bidirectional, int64_t proj_size) {
          py::list out;
          for (const ParamPiece& p : param_layout(make_desc(
                   mode, input_size, hidden_size, num_layers, bidirectional, "float32", py::none(),
                   "sigmoid", true, false, 0.0, 0.0, 0.0, 0.0, false, proj_size)))
            out.append(py::make_tuple(p.layer, p.direction, p.is_bias, p.is_h2h, p.offset, p.rows,
                                      p.cols, p.is_h2r));
          return out;
        },
        py::arg("mode"), py::arg("input_size"), py::arg("hidden_size"), py::arg("num_layers"),
        py::arg("bidirectional"), py::arg("proj_size") = 0,
        "Pieces of the flat vector: (layer, direction, is_bias, is_h2h, offset, rows, cols, "
        "is_h2r).");

  m.def("forward",
        [](const Plan& p, const py::object& x, const py::object& w, const py::object& hx,
           const py::object& cx, const py::object& y, const py::object& hy, const py::object& cy,
           const py::object& workspace, const py::object& reserve, const py::object& mask,
           uint64_t seed, const py::object& lengths, bool packed, const py::object& order) {
          const DType dt = p.desc.dtype;
          ForwardArgs a;
          a.seed = seed;
          a.lengths = index_arg(lengths, "lengths", p.N);
          a.packed = packed;
          a.order = index_arg(order, "order", p.N);
          const Grid gx = sequence(x, "x", p, p.desc.input_size, false, packed);
          const Grid gy =
              sequence(y, "y", p, p.desc.directions() * p.desc.state_size(), true, packed);
          a.x = gx.ptr, a.x_st = gx.st, a.x_sn = gx.sn;
          a.y = const_cast<void*>(gy.ptr), a.y_st = gy.st, a.y_sn = gy.sn;
          a.w = dense(w, "weights", dt, {param_count(p.desc)}, false, false);
          a.hx = dense(hx, "hx", dt, state_shape(p), false);
          a.cx = cell_state(p, cx, "cx", false);
          a.hy = const_cast<void*>(dense(hy, "hy", dt, state_shape(p), true));
          a.cy = const_cast<void*>(cell_state(p, cy, "cy", true));
          a.workspace = scratch(workspace, "workspace", p.workspace_bytes);
          if (p.training) a.reserve = scratch(reserve, "reserve", p.reserve_bytes);
          mask_arg(mask, p, &a.mask, &a.mask_st, &a.mask_sn);
          py::gil_scoped_release release;
          forward(p, a);
        },
        py::arg("plan"), py::arg("x"), py::arg("w"), py::arg("hx"), py::arg("cx"), py::arg("y"),
        py::arg("hy"), py::arg("cy"), py::arg("workspace"), py::arg("reserve"),
        py::arg("mask") = py::none(), py::arg("seed") = 0, py::arg("lengths") = py::none(),
        py::arg("packed") = false, py::arg("order") = py::none());

  m.def("backward_data",
        [](const Plan& p, const py::object& dy, const py::object& dhy, const py::object& dcy,
           const py::object& w, const py::object& hx, const py::object& cx, const py::object& dx,
           const py::object& dhx, const py::object& dcx, const py::object& workspace,
           const py::object& reserve, const py::object& mask, uint64_t seed,
           const py::object& lengths, bool packed, const py::object& order) {
          const DType dt = p.desc.dtype;
          BackwardDataArgs a;
          a.seed = seed;
          a.lengths = index_arg(lengths, "lengths", p.N);
          a.packed = packed;
          a.order = index_arg(order, "order", p.N);
          if (!dy.is_none()) {
            const Grid g =
                sequence(dy, "dy", p, p.desc.directions() * p.desc.state_size(), false, packed);
            a.dy = g.ptr, a.dy_st = g.st, a.dy_sn = g.sn;
          }
          const Grid gdx = sequence(dx, "dx", p, p.desc.input_size, true, packed);
          a.dx = const_cast<void*>(gdx.ptr), a.dx_st = gdx.st, a.dx_sn = gdx.sn;
          a.dhy = dense(dhy, "dhy", dt, state_shape(p), false);
          a.dcy = cell_state(p, dcy, "dcy", false);
          a.w = dense(w, "weights", dt, {param_count(p.desc)}, false, false);
          a.hx = dense(hx, "hx", dt, state_shape(p), false);
          a.cx = cell_state(p, cx, "cx", false);
          a.dhx = const_cast<void*>(dense(dhx, "dhx", dt, state_shape(p), true));
          a.dcx = const_cast<void*>(cell_state(p, dcx, "dcx", true));
          a.workspace = scratch(workspace, "workspace", p.workspace_bytes);
          a.reserve = scratch(reserve, "reserve", p.reserve_bytes);
          mask_arg(mask, p, &a.mask, &a.mask_st, &a.mask_sn);
          py::gil_scoped_release release;
          backward_data(p, a);
        },
        py::arg("plan"), py::arg("dy"), py::arg("dhy"), py::arg("dcy"), py::arg("w"), py::arg("hx"),
        py::arg("cx"), py::arg("dx"), py::arg("dhx"), py::arg("dcx"), py::arg("workspace"),
        py::arg("reserve"), py::arg("mask") = py::none(), py::arg("seed") = 0,
        py::arg("lengths") = py::none(), py::arg("packed") = false, py::arg("order") = py::none());

  m.def("backward_weights",
        [](const Plan& p, const py::object& x, const py::object& hx, const py::object& dw,
           const py::object& workspace, const py::object& reserve, uint64_t seed,
           const py::object& lengths, bool packed, const py::object& order) {
          const DType dt = p.desc.dtype;
          BackwardWeightsArgs a;
          a.seed = seed;
          a.lengths = index_arg(lengths, "lengths", p.N);
          a.packed = packed;
          a.order = index_arg(order, "order", p.N);
          const Grid gx = sequence(x, "x", p, p.desc.input_size, false, packed);
          a.x = gx.ptr, a.x_st = gx.st, a.x_sn = gx.sn;
          a.hx = dense(hx, "hx", dt, state_shape(p), false);
          a.dw = const_cast<void*>(dense(dw, "dw", dt, {param_count(p.desc)}, true, false));
          a.workspace = scratch(workspace, "workspace", p.workspace_bytes);
          a.reserve = scratch(reserve, "reserve", p.reserve_bytes);
          py::gil_scoped_release release;
          backward_weights(p, a);
        },
        py::arg("plan"), py::arg("x"), py::arg("hx"), py::arg("dw"), py::arg("workspace"),
        py::arg("reserve"), py::arg("seed") = 0, py::arg("lengths") = py::none(),
        py::arg("packed") = false, py::arg("order") = py::none());

  m.def("lane_count", &lane_count,
        "Lanes the unrolled executor may use (hardware threads, or FUSEDRNN_LANES).");

  m.def("get_num_threads", &num_threads,
        "Threads fusedrnn's GEMMs are split over (OpenMP threads; OpenBLAS runs single-threaded).");
  m.def("set_num_threads", &set_num_threads, py::arg("n"),
        "Pins the GEMM thread count to n >= 1; 0 follows omp_get_max_threads() (the default).");

  m.def("build_info", [] {
    const BuildInfo b = build_info();
    py::dict d;
    d["version"] = b.version;
    d["blas"] = b.blas;
    d["blas_config"] = b.blas_config;
    d["openmp"] = b.openmp;
    d["openmp_max_threads"] = b.openmp_max_threads;
    d["cuda"] = b.cuda;
    d["compiler"] = b.compiler;
    d["cxx_flags"] = b.cxx_flags;
    d["simd"] = b.simd;
    return d;
  });

  m.def("_activations",
        [](py::array_t<float, py::array::c_style | py::array::forcecast> x) {
          py::array_t<float> sig(x.size()), th(x.size());
          cpu::eval_activations(x.data(), sig.mutable_data(), th.mutable_data(), x.size());
          return py::make_tuple(sig, th);
        },
        "float32 sigmoid and tanh of the selected kernels, for accuracy tests.");
}
