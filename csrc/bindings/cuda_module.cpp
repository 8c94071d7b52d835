// bindings/cuda_module.cpp: fusedrnn._cuda, the pybind11 face of the CUDA backend (fusedrnn/cuda.h).
//
// Built only when a CUDA toolkit and cuBLAS are found, and imported lazily by fusedrnn.cuda, so the
// CPU package never needs CUDA libraries. Device data cross as integer addresses (framework tensors'
// data_ptr()) with the stream as an integer handle: this module cannot see shapes, devices or
// dtypes, so its callers (fusedrnn.cuda) check every tensor before passing its address. Sizes and
// options are checked here by the core (ValueError / TypeError naming the argument); CUDA and cuBLAS
// failures raise RuntimeError with the failing call. The GIL is released while work is queued.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "desc.h"
#include "fusedrnn/cuda.h"
#include "fusedrnn/fusedrnn.h"

namespace py = pybind11;
using namespace fusedrnn;
using bindings::make_desc;

namespace {

void* ptr(uintptr_t v) { return reinterpret_cast<void*>(v); }

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fusedrnn CUDA backend (see fusedrnn.cuda for the checked Python API)";

  bindings::register_exceptions();

  m.def("available", [] {
    std::string why;
    const bool ok = cuda::available(&why);
    return py::make_tuple(ok, why);
  }, "(ok, reason): whether a CUDA device can be used, and why not.");
  m.def("device_count", &cuda::device_count);

  py::class_<cuda::CudaPlan>(m, "Plan")
      .def(py::init([](const std::string& mode, int64_t input_size, int64_t hidden_size,
                       int64_t num_layers, bool bidirectional, const std::string& dtype, int64_t T,
                       int64_t N, bool training, const py::object& lengths,
                       const py::object& activation, const std::string& recurrent_activation,
                       bool reset_after, int device, const std::string& algo, bool tf32,
                       int64_t proj_size) {
             RnnDesc d = make_desc(mode, input_size, hidden_size, num_layers, bidirectional,
                                   dtype, activation, recurrent_activation, reset_after, false,
                                   0.0, 0.0, 0.0, 0.0, false, proj_size);
             std::vector<int64_t> lens;
             if (!lengths.is_none()) lens = py::cast<std::vector<int64_t>>(lengths);
             // Planning is host work of microseconds: it keeps the GIL, and its errors leave as
             // pybind11's own exception types (no translator between two extension modules).
             try {
               return cuda::make_plan(d, T, N, training, lens, device, cuda::parse_algo(algo),
                                      tf32);
             } catch (const fusedrnn::TypeError& e) {
               throw py::type_error(e.what());
             } catch (const fusedrnn::ValueError& e) {
               throw py::value_error(e.what());
             }
           }),
           py::arg("mode"), py::arg("input_size"), py::arg("hidden_size"),
           py::arg("num_layers") = 1, py::arg("bidirectional") = false,
           py::arg("dtype") = "float32", py::arg("T") = 1, py::arg("N") = 1,
           py::arg("training") = false, py::arg("lengths") = py::none(),
           py::arg("activation") = py::none(), py::arg("recurrent_activation") = "sigmoid",
           py::arg("reset_after") = true, py::arg("device") = 0, py::arg("algo") = "auto",
           py::arg("tf32") = false, py::arg("proj_size") = 0)
      .def_readonly("T", &cuda::CudaPlan::T)
      .def_readonly("N", &cuda::CudaPlan::N)
      .def_readonly("training", &cuda::CudaPlan::training)
      .def_readonly("device", &cuda::CudaPlan::device)
      .def_readonly("tf32", &cuda::CudaPlan::tf32)
      .def_readonly("rows", &cuda::CudaPlan::rows)
      .def_readonly("lengths", &cuda::CudaPlan::lengths)
      .def_readonly("batch_sizes", &cuda::CudaPlan::batch)
      .def_readonly("workspace_bytes", &cuda::CudaPlan::workspace_bytes)
      .def_readonly("reserve_bytes", &cuda::CudaPlan::reserve_bytes)
      .def_property_readonly("algo", [](const cuda::CudaPlan& p) { return cuda::algo_name(p.algo); })
      .def_property_readonly("dtype", [](const cuda::CudaPlan& p) { return dtype_name(p.desc.dtype); })
      .def_property_readonly("mode", [](const cuda::CudaPlan& p) { return mode_name(p.desc.mode); })
      .def_property_readonly("persistent_blocks",
                             [](const cuda::CudaPlan& p) { return p.p_blocks; })
      .def_property_readonly("persistent_backward", [](const cuda::CudaPlan& p) {
        return p.algo == cuda::Algo::kPersistent && p.pb_nch > 0;
      });

  m.def("forward",
        [](const cuda::CudaPlan& p, uintptr_t x, uintptr_t w, uintptr_t hx, uintptr_t cx,
           uintptr_t y, uintptr_t hy, uintptr_t cy, uintptr_t workspace, uintptr_t reserve,
           uintptr_t stream) {
          cuda::ForwardArgs a;
          a.x = ptr(x), a.w = ptr(w), a.hx = ptr(hx), a.cx = ptr(cx), a.y = ptr(y);
          a.hy = ptr(hy), a.cy = ptr(cy), a.workspace = ptr(workspace), a.reserve = ptr(reserve);
          a.stream = ptr(stream);
          py::gil_scoped_release release;
          cuda::forward(p, a);
        },
        py::arg("plan"), py::arg("x"), py::arg("w"), py::arg("hx"), py::arg("cx"), py::arg("y"),
        py::arg("hy"), py::arg("cy"), py::arg("workspace"), py::arg("reserve"), py::arg("stream"));

  m.def("backward_data",
        [](const cuda::CudaPlan& p, uintptr_t dy, uintptr_t dhy, uintptr_t dcy, uintptr_t w,
           uintptr_t dx, uintptr_t dhx, uintptr_t dcx, uintptr_t workspace, uintptr_t reserve,
           uintptr_t stream) {
          cuda::BackwardDataArgs a;
          a.dy = ptr(dy), a.dhy = ptr(dhy), a.dcy = ptr(dcy), a.w = ptr(w), a.dx = ptr(dx);
          a.dhx = ptr(dhx), a.dcx = ptr(dcx), a.workspace = ptr(workspace);
          a.reserve = ptr(reserve), a.stream = ptr(stream);
          py::gil_scoped_release release;
          cuda::backward_data(p, a);
        },
        py::arg("plan"), py::arg("dy"), py::arg("dhy"), py::arg("dcy"), py::arg("w"),
        py::arg("dx"), py::arg("dhx"), py::arg("dcx"), py::arg("workspace"), py::arg("reserve"),
        py::arg("stream"));

  m.def("backward_weights",
        [](const cuda::CudaPlan& p, uintptr_t x, uintptr_t dw, uintptr_t workspace,
           uintptr_t reserve, uintptr_t stream) {
          cuda::BackwardWeightsArgs a;
          a.x = ptr(x), a.dw = ptr(dw), a.workspace = ptr(workspace), a.reserve = ptr(reserve);
          a.stream = ptr(stream);
          py::gil_scoped_release release;
          cuda::backward_weights(p, a);
        },
        py::arg("plan"), py::arg("x"), py::arg("dw"), py::arg("workspace"), py::arg("reserve"),
        py::arg("stream"));
}
