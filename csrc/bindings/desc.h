// bindings/desc.h: what both extension modules (fusedrnn._C, fusedrnn._cuda) share: the RnnDesc
// built from Python arguments (with the core's validation) and the exception translation.
#pragma once

#include <pybind11/pybind11.h>

#include <exception>
#include <string>

#include "fusedrnn/fusedrnn.h"

namespace fusedrnn {
namespace bindings {

inline RnnDesc make_desc(const std::string& mode, int64_t input_size, int64_t hidden_size,
                  int64_t num_layers, bool bidirectional, const std::string& dtype,
                  const pybind11::object& activation = pybind11::none(),
                  const std::string& recurrent_activation = "sigmoid", bool reset_after = true,
                  bool zero_masked_output = false, double dropout = 0.0,
                  double recurrent_dropout = 0.0, double zoneout_outputs = 0.0,
                  double zoneout_states = 0.0, bool residual = false, int64_t proj_size = 0,
                  bool dropout_per_gate = false,
                  const pybind11::object& lstm_state_clip_min = pybind11::none(),
                  const pybind11::object& lstm_state_clip_max = pybind11::none(),
                  bool lstm_state_clip_nan = false) {
  RnnDesc d;
  d.mode = parse_mode(mode);
  d.input_size = input_size;
  d.hidden_size = hidden_size;
  d.num_layers = num_layers;
  d.bidirectional = bidirectional;
  d.dtype = parse_dtype(dtype);
  d.activation = activation.is_none() ? default_activation(d.mode)
                                      : parse_activation(pybind11::cast<std::string>(activation));
  d.recurrent_activation = parse_activation(recurrent_activation);
  d.reset_after = reset_after;
  d.zero_masked_output = zero_masked_output;
  d.dropout = dropout;
  d.recurrent_dropout = recurrent_dropout;
  d.zoneout_outputs = zoneout_outputs;
  d.zoneout_states = zoneout_states;
  d.residual = residual;
  d.proj_size = proj_size;
  d.dropout_per_gate = dropout_per_gate;
  // MXNet's rule: clipping is on when the bounds are given, and then both are
  if (lstm_state_clip_min.is_none() != lstm_state_clip_max.is_none()) {
    throw ValueError("lstm_state_clip_min/max: give both bounds (or neither), got only " +
                     std::string(lstm_state_clip_min.is_none() ? "lstm_state_clip_max"
                                                               : "lstm_state_clip_min"));
  }
  if (!lstm_state_clip_min.is_none()) {
    d.clip_state = true;
    d.clip_min = pybind11::cast<double>(lstm_state_clip_min);
    d.clip_max = pybind11::cast<double>(lstm_state_clip_max);
    d.clip_nan = lstm_state_clip_nan;
  }
  validate(d);
  return d;
}

// fusedrnn::ValueError / TypeError as Python's ValueError / TypeError (each module registers it).
inline void register_exceptions() {
  pybind11::register_exception_translator([](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const fusedrnn::TypeError& err) {
      PyErr_SetString(PyExc_TypeError, err.what());
    } catch (const fusedrnn::ValueError& err) {
      PyErr_SetString(PyExc_ValueError, err.what());
    }
  });
}

}  // namespace bindings
}  // namespace fusedrnn
