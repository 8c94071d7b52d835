// core/layout.cpp: the flat parameter layout (MXNet FusedRNNCell order) and mode/dtype names.
//
// All weight matrices first, for each layer and direction: i2h (G*H, C_in), h2h (G*H, S) and, with a
// projection, h2r (P, H); then all biases in the same order: i2h (G*H,), h2h (G*H,). This is the only
// place that computes offsets.
#include <cmath>
#include <limits>

#include "fusedrnn/fusedrnn.h"

namespace fusedrnn {

Mode parse_mode(const std::string& name) {
  if (name == "lstm") return Mode::kLstm;
  if (name == "gru") return Mode::kGru;
  if (name == "rnn_tanh") return Mode::kRnnTanh;
  if (name == "rnn_relu") return Mode::kRnnRelu;
  throw ValueError("mode: expected one of 'lstm', 'gru', 'rnn_tanh', 'rnn_relu', got '" + name + "'");
}

std::string mode_name(Mode mode) {
  switch (mode) {
    case Mode::kLstm: return "lstm";
    case Mode::kGru: return "gru";
    case Mode::kRnnTanh: return "rnn_tanh";
    case Mode::kRnnRelu: return "rnn_relu";
  }
  return "?";
}

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::kFloat32;
  if (name == "float64") return DType::kFloat64;
  throw TypeError("dtype: expected 'float32' or 'float64', got '" + name + "'");
}

std::string dtype_name(DType dtype) { return dtype == DType::kFloat32 ? "float32" : "float64"; }
std::size_t dtype_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 8; }

int num_gates(Mode mode) {
  switch (mode) {
    case Mode::kLstm: return 4;
    case Mode::kGru: return 3;
    default: return 1;
  }
}

namespace {
int64_t weight_block(const RnnDesc& d, int64_t layer) {
  const int64_t gh = num_gates(d.mode) * d.hidden_size;
  return gh * (d.layer_input_size(layer) + d.state_size()) + d.proj_size * d.hidden_size;
}

// The element count, with every product and sum checked: sizes that pass one by one can still
// overflow together.
int64_t checked_count(const RnnDesc& d) {
  const int64_t kMax = int64_t(1) << 62;
  auto fail = [&] {
    throw ValueError(detail::concat("input_size/hidden_size/num_layers: the parameter vector of (",
                                    d.input_size, ", ", d.hidden_size, ", ", d.num_layers,
                                    ") would have more than 2^62 elements"));
  };
  int64_t total = 0;
  const int64_t gh = num_gates(d.mode) * d.hidden_size;
  for (int64_t l = 0; l < d.num_layers; ++l) {
    int64_t block, piece, proj;
    if (__builtin_mul_overflow(gh, d.layer_input_size(l) + d.state_size() + 2, &block) ||
        __builtin_mul_overflow(d.proj_size, d.hidden_size, &proj) ||
        __builtin_add_overflow(block, proj, &block) ||
        __builtin_mul_overflow(block, int64_t(d.directions()), &piece) ||
        __builtin_add_overflow(total, piece, &total) || total > kMax)
      fail();
  }
  return total;
}
}  // namespace

Activation parse_activation(const std::string& name) {
  if (name == "tanh") return Activation::kTanh;
  if (name == "sigmoid") return Activation::kSigmoid;
  if (name == "hard_sigmoid") return Activation::kHardSigmoid;
  if (name == "relu") return Activation::kRelu;
  if (name == "linear") return Activation::kLinear;
  if (name == "softrelu") return Activation::kSoftrelu;
  if (name == "softsign") return Activation::kSoftsign;
  throw ValueError("activation: expected one of 'tanh', 'sigmoid', 'hard_sigmoid', 'relu', 'linear', "
                   "'softrelu', 'softsign', got '" +
                   name + "'");
}

std::string activation_name(Activation act) {
  switch (act) {
    case Activation::kTanh: return "tanh";
    case Activation::kSigmoid: return "sigmoid";
    case Activation::kHardSigmoid: return "hard_sigmoid";
    case Activation::kRelu: return "relu";
    case Activation::kLinear: return "linear";
    case Activation::kSoftrelu: return "softrelu";
    case Activation::kSoftsign: return "softsign";
  }
  return "?";
}

Activation default_activation(Mode mode) {
  return mode == Mode::kRnnRelu ? Activation::kRelu : Activation::kTanh;
}

void validate(const RnnDesc& d) {
  const int64_t kMaxDim = std::numeric_limits<int32_t>::max() / 8;
  FUSEDRNN_CHECK(d.input_size >= 1 && d.input_size <= kMaxDim, ValueError,
                 "input_size: expected an integer in [1, ", kMaxDim, "], got ", d.input_size);
  FUSEDRNN_CHECK(d.hidden_size >= 1 && d.hidden_size <= kMaxDim, ValueError,
                 "hidden_size: expected an integer in [1, ", kMaxDim, "], got ", d.hidden_size);
  FUSEDRNN_CHECK(d.num_layers >= 1 && d.num_layers <= 1024, ValueError,
                 "num_layers: expected an integer in [1, 1024], got ", d.num_layers);
  FUSEDRNN_CHECK(d.dropout >= 0.0 && d.dropout < 1.0, ValueError,
                 "dropout: expected a rate in [0, 1), got ", d.dropout);
  FUSEDRNN_CHECK(d.recurrent_dropout >= 0.0 && d.recurrent_dropout < 1.0, ValueError,
                 "recurrent_dropout: expected a rate in [0, 1), got ", d.recurrent_dropout);
  FUSEDRNN_CHECK(d.zoneout_outputs >= 0.0 && d.zoneout_outputs <= 1.0, ValueError,
                 "zoneout_outputs: expected a probability in [0, 1], got ", d.zoneout_outputs);
  FUSEDRNN_CHECK(d.zoneout_states >= 0.0 && d.zoneout_states <= 1.0, ValueError,
                 "zoneout_states: expected a probability in [0, 1], got ", d.zoneout_states);
  FUSEDRNN_CHECK(!d.residual || d.input_size == d.directions() * d.hidden_size, ValueError,
                 "residual: the layer input is added to the output, so input_size must equal "
                 "directions * hidden_size = ", d.directions() * d.hidden_size, ", got input_size ",
                 d.input_size);
  FUSEDRNN_CHECK(d.proj_size == 0 || d.mode == Mode::kLstm, ValueError,
                 "proj_size: only mode 'lstm' has a projection, got proj_size=", d.proj_size,
                 " for mode '", mode_name(d.mode), "'");
  FUSEDRNN_CHECK(d.proj_size >= 0 && d.proj_size < d.hidden_size, ValueError,
                 "proj_size: expected 0 (none) or an integer in [1, hidden_size) = [1, ",
                 d.hidden_size, "), got ", d.proj_size);
  FUSEDRNN_CHECK(d.proj_size == 0 || (!d.residual && !d.zoneout() && d.recurrent_dropout == 0.0),
                 ValueError,
                 "proj_size: not supported together with zoneout, residual or recurrent_dropout");
  FUSEDRNN_CHECK(!d.clip_state || d.mode == Mode::kLstm, ValueError,
                 "lstm_state_clip_min/max: only mode 'lstm' has a cell state to clip, got mode '",
                 mode_name(d.mode), "'");
  FUSEDRNN_CHECK(!d.clip_state || (std::isfinite(d.clip_min) && std::isfinite(d.clip_max) &&
                                   d.clip_min <= d.clip_max),
                 ValueError, "lstm_state_clip_min/max: expected finite bounds with min <= max, got [",
                 d.clip_min, ", ", d.clip_max, "]");
  FUSEDRNN_CHECK(d.reset_after || d.mode == Mode::kGru, ValueError,
                 "reset_after: only mode 'gru' has a reset gate, got reset_after=false for mode '",
                 mode_name(d.mode), "'");
  checked_count(d);
}


int64_t param_count(const RnnDesc& d) {
  validate(d);
  return checked_count(d);
}

LayerParams layer_param_offsets(const RnnDesc& d, int64_t layer, int direction) {
  const int64_t gh = num_gates(d.mode) * d.hidden_size;
  int64_t w = 0, all_w = 0;
  for (int64_t l = 0; l < d.num_layers; ++l) {
    if (l < layer) w += d.directions() * weight_block(d, l);
    all_w += d.directions() * weight_block(d, l);
  }
  w += direction * weight_block(d, layer);
  const int64_t index = layer * d.directions() + direction;
  LayerParams p;
  p.w_ih = w;
  p.w_hh = w + gh * d.layer_input_size(layer);
  if (d.proj_size > 0) p.w_hr = p.w_hh + gh * d.proj_size;
  p.b_ih = all_w + index * 2 * gh;
  p.b_hh = p.b_ih + gh;
  return p;
}

std::vector<ParamPiece> param_layout(const RnnDesc& d) {
  validate(d);
  const int64_t gh = num_gates(d.mode) * d.hidden_size;
  std::vector<ParamPiece> weights, biases;
  for (int64_t l = 0; l < d.num_layers; ++l) {
    for (int dir = 0; dir < d.directions(); ++dir) {
      const LayerParams p = layer_param_offsets(d, l, dir);
      weights.push_back({l, dir, false, false, false, p.w_ih, gh, d.layer_input_size(l)});
      weights.push_back({l, dir, false, true, false, p.w_hh, gh, d.state_size()});
      if (d.proj_size > 0)
        weights.push_back({l, dir, false, false, true, p.w_hr, d.proj_size, d.hidden_size});
      biases.push_back({l, dir, true, false, false, p.b_ih, gh, 1});
      biases.push_back({l, dir, true, true, false, p.b_hh, gh, 1});
    }
  }
  weights.insert(weights.end(), biases.begin(), biases.end());
  return weights;
}

}  // namespace fusedrnn
