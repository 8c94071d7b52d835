"""Converters between the flat parameter vector and other frameworks' named parameters.

PyTorch's nn.LSTM / nn.GRU / nn.RNN use the same gate orders as fusedrnn (LSTM i,f,g,o; GRU r,z,n)
and the same matrix shapes, so conversion is slicing by name: ``weight_ih_l0``, ``weight_hh_l0``,
``bias_ih_l0``, ``bias_hh_l0`` and ``..._reverse`` for the second direction.

Keras 3 (``flat_to_keras``, ``keras_to_flat``, ``keras_weight_shapes``): the ``get_weights()``
list of one keras.layers.LSTM / GRU / SimpleRNN, or of a Bidirectional of one: transposed matrices,
Keras's gate orders (LSTM i,f,c,o; GRU z,r,h), one bias vector except for GRU(reset_after=True).

MXNet (``flat_to_mxnet``, ``mxnet_to_flat``, ``mxnet_param_shapes``, ``mxnet_fused_name``): the flat
vector is FusedRNNCell's '{prefix}parameters' as it is; the per-gate names are those of
FusedRNNCell.unpack_weights ('l0_i2h_i_weight', ...).

Gate blocks are split, joined and reordered in one place (``_split_gates``, ``_join_gates``), driven
by per-framework tables of gate names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from . import _checks as chk
from .layout import check_mode, num_gates, param_layout, param_size


def _to_numpy(name: str, value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return chk.float_array(name, value)


def flat_to_torch(flat, mode, input_size, hidden_size, num_layers=1, bidirectional=False,
                  proj_size=0) -> dict:
    """Named arrays (copies) in torch.nn's state_dict naming, from the flat vector."""
    flat = chk.float_array("flat", flat)
    n = param_size(mode, input_size, hidden_size, num_layers, bidirectional, proj_size)
    chk.shape("flat", flat, (n,), f"for mode={mode!r}, input_size={input_size}, "
              f"hidden_size={hidden_size}, num_layers={num_layers}, bidirectional={bidirectional}, "
              f"proj_size={proj_size}")
    out = {}
    for p in param_layout(mode, input_size, hidden_size, num_layers, bidirectional, proj_size):
        out[p.torch_name] = flat[p.offset : p.offset + p.size].reshape(p.shape).copy()
    return out


def torch_to_flat(
    state_dict: Mapping, mode, input_size, hidden_size, num_layers=1, bidirectional=False,
    proj_size=0,
) -> np.ndarray:
    """The flat vector from a torch.nn.LSTM/GRU/RNN state_dict (tensors or arrays). The dtype follows
    the inputs (all must agree). Every expected name must be present, and no other."""
    pieces = param_layout(mode, input_size, hidden_size, num_layers, bidirectional, proj_size)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict: expected a mapping of names to tensors, got {type(state_dict).__name__}")
    expected = {p.torch_name for p in pieces}
    got = set(state_dict.keys())
    if got != expected:
        missing, extra = sorted(expected - got), sorted(got - expected, key=repr)
        raise ValueError(f"state_dict: names do not match mode={mode!r}, num_layers={num_layers}, "
                         f"bidirectional={bidirectional}: missing {missing}, unexpected {extra}")
    arrays = {name: _to_numpy(f"state_dict[{name!r}]", v) for name, v in state_dict.items()}
    dtypes = {a.dtype for a in arrays.values()}
    if len(dtypes) != 1:
        raise TypeError(f"state_dict: expected one dtype for all tensors, got {sorted(map(str, dtypes))}")
    flat = np.empty(pieces[-1].offset + pieces[-1].size, dtype=dtypes.pop())
    for p in pieces:
        chk.shape(f"state_dict[{p.torch_name!r}]", arrays[p.torch_name], p.shape)
        flat[p.offset : p.offset + p.size] = arrays[p.torch_name].reshape(-1)
    return flat


# --------------------------------------------------------------------------------------------------
# Gate orders: the one mechanism for gate blocks
# --------------------------------------------------------------------------------------------------
#
# A weight matrix or bias of G gates holds G equal blocks of hidden_size rows (or entries), one per
# gate. Frameworks differ in the order of those blocks and in their names. Orders are tuples of
# fusedrnn's own gate names; ``_split_gates`` / ``_join_gates`` are the only code that cuts an array
# into gate blocks or puts blocks together, whatever the framework.

_GATE_ORDER = {  # fusedrnn's canonical order (the flat vector's)
    "lstm": ("i", "f", "g", "o"),
    "gru": ("r", "z", "n"),
    "rnn_tanh": ("h",),
    "rnn_relu": ("h",),
}

_KERAS_GATE_ORDER = {  # keras.layers.LSTM i,f,c,o; GRU z,r,h; SimpleRNN one block
    "lstm": ("i", "f", "g", "o"),
    "gru": ("z", "r", "n"),
    "rnn_tanh": ("h",),
    "rnn_relu": ("h",),
}

# MXNet's per-gate name suffixes (FusedRNNCell._gate_names) by fusedrnn gate. MXNet's gate order is
# fusedrnn's; LSTM '_c' is the cell candidate g, GRU '_o' the new gate n; vanilla RNNs have none.
_MXNET_GATE_SUFFIX = {
    "lstm": {"i": "_i", "f": "_f", "g": "_c", "o": "_o"},
    "gru": {"r": "_r", "z": "_z", "n": "_o"},
    "rnn_tanh": {"h": ""},
    "rnn_relu": {"h": ""},
}


def _split_gates(arr: np.ndarray, order: tuple, axis: int = 0) -> dict:
    """{gate: block}: arr cut into len(order) equal blocks along ``axis``, stored in ``order``."""
    return dict(zip(order, np.split(arr, len(order), axis=axis)))


def _join_gates(blocks: Mapping, order: tuple, axis: int = 0) -> np.ndarray:
    """The blocks {gate: block} put together along ``axis`` in ``order`` (a new array)."""
    return np.concatenate([blocks[g] for g in order], axis=axis)


def _reorder_gates(arr: np.ndarray, src: tuple, dst: tuple, axis: int = 0) -> np.ndarray:
    """arr's gate blocks, stored in order ``src``, rearranged into order ``dst`` (a new array)."""
    return _join_gates(_split_gates(arr, src, axis), dst, axis)


def _desc_text(mode, input_size, hidden_size, num_layers, bidirectional) -> str:
    return (f"for mode={mode!r}, input_size={input_size}, hidden_size={hidden_size}, "
            f"num_layers={num_layers}, bidirectional={bidirectional}")


def _check_flat(flat, mode, input_size, hidden_size, num_layers, bidirectional) -> np.ndarray:
    flat = chk.float_array("flat", flat)
    n = param_size(mode, input_size, hidden_size, num_layers, bidirectional)
    chk.shape("flat", flat, (n,),
              _desc_text(mode, input_size, hidden_size, num_layers, bidirectional))
    return flat


def _views(flat, mode, input_size, hidden_size, num_layers, bidirectional) -> dict:
    """(layer, direction, kind, part) -> that piece of ``flat`` in its shape (a view when ``flat``
    is contiguous)."""
    return {
        (p.layer, p.direction, p.kind, p.part): flat[p.offset : p.offset + p.size].reshape(p.shape)
        for p in param_layout(mode, input_size, hidden_size, num_layers, bidirectional)
    }


def _one_dtype(argname: str, arrays) -> np.dtype:
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) != 1:
        raise TypeError(
            f"{argname}: expected one dtype for all arrays, got {sorted(map(str, dtypes))}")
    return dtypes.pop()


# --------------------------------------------------------------------------------------------------
# Keras 3: keras.layers.LSTM / GRU / SimpleRNN, and Bidirectional of them
# --------------------------------------------------------------------------------------------------
#
# Keras layers are single-layer, so these converters describe one layer (num_layers=1); a
# keras.layers.Bidirectional layer is bidirectional=True: its forward layer is fusedrnn's direction
# 0, its backward (go_backwards) layer direction 1.
#
# Keras stores, per layer, as ``layer.get_weights()`` lists them:
#   kernel            (C, G*U)  W_ih^T: gate blocks along the columns, in Keras's gate order
#   recurrent_kernel  (U, G*U)  W_hh^T, likewise
#   bias              (G*U,)    one vector: LSTM, SimpleRNN, GRU(reset_after=False);
#                     (2, 3U)   GRU(reset_after=True): [input bias, recurrent bias]
# and no bias with use_bias=False. Keras's gate orders are LSTM i,f,c,o (fusedrnn's i,f,g,o) and
# GRU z,r,h (fusedrnn's r,z,n); Keras's GRU(reset_after=True) is fusedrnn's GRU exactly.
#
# Where Keras has one bias vector and fusedrnn two (b_ih, b_hh), the two only ever enter the
# pre-activations as the sum b_ih + b_hh:
#   * LSTM and SimpleRNN: always;
#   * GRU(reset_after=False), the reset-before form n = tanh(W_in x + b_in + W_hn (r*h) + b_hn): the
#     reset scales h before the matrix, so both biases of the n gate lie outside it too.
# So import puts the Keras bias into b_ih with b_hh = 0, and export writes b_ih + b_hh: both exact
# (the same function). Export then import moves b_hh into b_ih; import then export gives the Keras
# weights back bit for bit.
#
# use_bias=False: the list has no bias arrays; import sets both biases to zero, and export refuses a
# flat vector with non-zero biases (ValueError): dropping them would change the model silently.
#
# Outputs (using the converted weights with ``fusedrnn.forward``; Keras is batch-major, so use
# batch_first=True): Bidirectional(merge_mode="concat", return_sequences=True) flips the backward
# layer's sequence back into the original time order before concatenating, which is fusedrnn's y
# (N, T, 2U) exactly. Its states are the forward layer's then the backward layer's ([h_f, c_f, h_b,
# c_b] for LSTM): hN[0], cN[0], hN[1], cN[1]; the backward layer's final state is the one after
# reading x[:, 0]. With return_sequences=False the output is concat(hN[0], hN[1]), which is not
# y[:, -1] (whose reverse half has read only x[:, -1]). Initial states go in the same order.


def _keras_gates(mode) -> tuple:
    if check_mode(mode) not in _KERAS_GATE_ORDER:
        raise ValueError(f"mode: Keras has no layer for mode={mode!r}")
    return _KERAS_GATE_ORDER[mode]


def _keras_entries(mode, input_size, hidden_size, bidirectional, reset_after, use_bias) -> list:
    """[(description, shape)] for every array of the Keras weight list, in order."""
    _keras_gates(mode)
    C, H = chk.size("input_size", input_size), chk.size("hidden_size", hidden_size)
    bidirectional = chk.flag("bidirectional", bidirectional)
    reset_after = chk.flag("reset_after", reset_after)
    use_bias = chk.flag("use_bias", use_bias)
    GH = num_gates(mode) * H
    bias_shape = (2, GH) if mode == "gru" and reset_after else (GH,)
    entries = []
    for direction in ("forward", "backward")[: 2 if bidirectional else 1]:
        entries.append((f"{direction} kernel", (C, GH)))
        entries.append((f"{direction} recurrent_kernel", (H, GH)))
        if use_bias:
            entries.append((f"{direction} bias", bias_shape))
    return entries


def keras_weight_shapes(
    mode, input_size, hidden_size, *, bidirectional=False, reset_after=True, use_bias=True
) -> list:
    """The shapes of ``layer.get_weights()`` of the matching Keras 3 layer, in order: per direction
    kernel (C, G*U), recurrent_kernel (U, G*U) and, with use_bias, bias ((2, 3U) for a GRU with
    reset_after, else (G*U,)). ``reset_after`` matters for mode='gru' only."""
    entries = _keras_entries(mode, input_size, hidden_size, bidirectional, reset_after, use_bias)
    return [shape for _, shape in entries]


def flat_to_keras(
    flat, mode, input_size, hidden_size, *, bidirectional=False, reset_after=True, use_bias=True
) -> list:
    """The weight list (new arrays) for ``layer.set_weights`` of the matching Keras 3 layer:
    keras.layers.LSTM / GRU / SimpleRNN (activation 'tanh' or 'relu' for rnn_tanh / rnn_relu), or a
    keras.layers.Bidirectional of one (the forward layer's weights, then the backward layer's).

    ``flat`` describes one layer (num_layers=1). ``reset_after`` (GRU only) chooses the Keras GRU
    form; with reset_after=False the flat vector is taken as a reset-before GRU. Where Keras keeps
    one bias it gets b_ih + b_hh. With use_bias=False no bias is written, and non-zero biases in
    ``flat`` are refused (ValueError). The comment above this function tells how outputs and states
    correspond.
    """
    entries = _keras_entries(mode, input_size, hidden_size, bidirectional, reset_after, use_bias)
    flat = _check_flat(flat, mode, input_size, hidden_size, 1, bidirectional)
    views = _views(flat, mode, input_size, hidden_size, 1, bidirectional)
    ours, theirs = _GATE_ORDER[mode], _keras_gates(mode)
    two_biases = mode == "gru" and reset_after

    out = []
    for d in range(2 if bidirectional else 1):
        w_ih, w_hh = views[(0, d, "weight", "i2h")], views[(0, d, "weight", "h2h")]
        b_ih, b_hh = views[(0, d, "bias", "i2h")], views[(0, d, "bias", "h2h")]
        out.append(np.ascontiguousarray(_reorder_gates(w_ih, ours, theirs).T))
        out.append(np.ascontiguousarray(_reorder_gates(w_hh, ours, theirs).T))
        if not use_bias:
            if np.any(b_ih) or np.any(b_hh):
                raise ValueError(
                    f"flat: use_bias=False drops the biases, but direction {d} has non-zero "
                    "biases; zero them first, or convert with use_bias=True")
        elif two_biases:
            out.append(np.stack([_reorder_gates(b_ih, ours, theirs),
                                 _reorder_gates(b_hh, ours, theirs)]))
        else:
            out.append(_reorder_gates(b_ih + b_hh, ours, theirs))
    assert [a.shape for a in out] == [shape for _, shape in entries]
    return out


def keras_to_flat(
    weights_list, mode, input_size, hidden_size, *, bidirectional=False, reset_after=True,
    use_bias=True,
) -> np.ndarray:
    """The flat vector (one layer) from a Keras 3 layer's ``get_weights()`` list (NumPy arrays or
    array-likes): the inverse of ``flat_to_keras``. The dtype follows the arrays (all must agree).
    A single Keras bias goes to b_ih, with b_hh = 0 (exact: see the comment above); with
    use_bias=False both biases are zero."""
    entries = _keras_entries(mode, input_size, hidden_size, bidirectional, reset_after, use_bias)
    if isinstance(weights_list, (str, bytes, Mapping, np.ndarray)) or not isinstance(
        weights_list, Sequence
    ):
        raise TypeError("weights_list: expected a list of arrays, as layer.get_weights() returns, "
                        f"got {type(weights_list).__name__}")
    if len(weights_list) != len(entries):
        form = f", reset_after={reset_after}" if mode == "gru" else ""
        raise ValueError(
            f"weights_list: expected {len(entries)} arrays ({', '.join(n for n, _ in entries)}) "
            f"for mode={mode!r}, bidirectional={bidirectional}, use_bias={use_bias}{form}; "
            f"got {len(weights_list)}")
    arrays = []
    for i, ((what, shape), value) in enumerate(zip(entries, weights_list)):
        name = f"weights_list[{i}] ({what})"
        arr = chk.float_array(name, value)
        chk.shape(name, arr, shape, f"for input_size={input_size}, hidden_size={hidden_size}")
        arrays.append(arr)
    dtype = _one_dtype("weights_list", arrays)

    flat = np.zeros(param_size(mode, input_size, hidden_size, 1, bidirectional), dtype=dtype)
    views = _views(flat, mode, input_size, hidden_size, 1, bidirectional)
    ours, theirs = _GATE_ORDER[mode], _keras_gates(mode)
    two_biases = mode == "gru" and reset_after
    per_direction = 3 if use_bias else 2
    for d in range(2 if bidirectional else 1):
        kernel, recurrent, *bias = arrays[d * per_direction : (d + 1) * per_direction]
        views[(0, d, "weight", "i2h")][...] = _reorder_gates(kernel.T, theirs, ours)
        views[(0, d, "weight", "h2h")][...] = _reorder_gates(recurrent.T, theirs, ours)
        if not use_bias:
            continue
        if two_biases:
            views[(0, d, "bias", "i2h")][...] = _reorder_gates(bias[0][0], theirs, ours)
            views[(0, d, "bias", "h2h")][...] = _reorder_gates(bias[0][1], theirs, ours)
        else:
            views[(0, d, "bias", "i2h")][...] = _reorder_gates(bias[0], theirs, ours)
    return flat


# --------------------------------------------------------------------------------------------------
# MXNet: FusedRNNCell's fused vector and its unpacked per-gate names
# --------------------------------------------------------------------------------------------------
#
# MXNet's FusedRNNCell (python/mxnet/rnn/rnn_cell.py) keeps the whole flat vector, in this same
# layout, as one parameter named '{prefix}parameters'; the cell's default prefix is f'{mode}_'
# (so 'lstm_parameters'). FusedRNNCell.unpack_weights cuts it into one array per layer, direction
# ('l' forward, 'r' reverse), i2h/h2h, gate and weight/bias, in the flat vector's order:
#     '{prefix}{l|r}{layer}_{i2h|h2h}{gate}_{weight|bias}'
# with gate suffixes LSTM '_i', '_f', '_c', '_o'; GRU '_r', '_z', '_o' (its 'o' is fusedrnn's new
# gate n); vanilla RNNs none (so 'l0_i2h_weight'). Weights are (H, C_in) and (H, H), biases (H,);
# C_in is the input size at layer 0 and D*H above. The unfused cell stack (FusedRNNCell.unfuse())
# gives the same names from its unpack_weights.


def _check_prefix(prefix) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix: expected a string, got {type(prefix).__name__} {prefix!r}")
    return prefix


def mxnet_fused_name(prefix: str = "") -> str:
    """The name under which MXNet's FusedRNNCell keeps the whole flat vector: '{prefix}parameters'
    (MXNet's default prefix is f'{mode}_', e.g. 'lstm_parameters')."""
    return f"{_check_prefix(prefix)}parameters"


def _mxnet_entries(mode, input_size, hidden_size, num_layers, bidirectional, prefix) -> list:
    """[(piece, {gate: name})] for every piece of the flat vector, in order."""
    prefix = _check_prefix(prefix)
    if check_mode(mode) not in _MXNET_GATE_SUFFIX:
        raise ValueError(f"mode: MXNet's FusedRNNCell has no mode {mode!r}")
    out = []
    for p in param_layout(mode, input_size, hidden_size, num_layers, bidirectional):
        start = f"{prefix}{'r' if p.direction else 'l'}{p.layer}_{p.part}"
        names = {g: f"{start}{suffix}_{p.kind}" for g, suffix in _MXNET_GATE_SUFFIX[mode].items()}
        out.append((p, names))
    return out


def mxnet_param_shapes(
    mode, input_size, hidden_size, num_layers=1, bidirectional=False, prefix=""
) -> dict:
    """{name: shape} of MXNet's unpacked per-gate parameters, in MXNet's order."""
    entries = _mxnet_entries(mode, input_size, hidden_size, num_layers, bidirectional, prefix)
    return {names[g]: (int(hidden_size),) + p.shape[1:]
            for p, names in entries for g in _GATE_ORDER[mode]}


def flat_to_mxnet(
    flat, mode, input_size, hidden_size, num_layers=1, bidirectional=False, prefix=""
) -> dict:
    """Named per-gate arrays (copies), as MXNet's FusedRNNCell.unpack_weights gives them and in its
    order: weights (H, C_in) / (H, H), biases (H,). ``prefix``: the cell's prefix ('' here; MXNet's
    default is f'{mode}_')."""
    entries = _mxnet_entries(mode, input_size, hidden_size, num_layers, bidirectional, prefix)
    flat = _check_flat(flat, mode, input_size, hidden_size, num_layers, bidirectional)
    order = _GATE_ORDER[mode]
    out = {}
    for p, names in entries:
        blocks = _split_gates(flat[p.offset : p.offset + p.size].reshape(p.shape), order)
        out.update((names[g], blocks[g].copy()) for g in order)
    return out


def mxnet_to_flat(
    named: Mapping, mode, input_size, hidden_size, num_layers=1, bidirectional=False, prefix=""
) -> np.ndarray:
    """The flat vector (MXNet's '{prefix}parameters') from per-gate arrays named as
    ``flat_to_mxnet`` / MXNet's unpack_weights name them (NumPy arrays or array-likes, e.g.
    NDArray.asnumpy()). Every expected name must be present, and no other; the dtype follows the
    arrays (all must agree)."""
    entries = _mxnet_entries(mode, input_size, hidden_size, num_layers, bidirectional, prefix)
    if not isinstance(named, Mapping):
        raise TypeError(
            f"named: expected a mapping of names to arrays, got {type(named).__name__}")
    order = _GATE_ORDER[mode]
    expected = [names[g] for _, names in entries for g in order]
    got = set(named.keys())
    if got != set(expected):
        missing = [n for n in expected if n not in got]
        extra = sorted(got - set(expected), key=repr)
        raise ValueError(
            f"named: names do not match mode={mode!r}, num_layers={num_layers}, "
            f"bidirectional={bidirectional}, prefix={prefix!r}: missing {missing}, "
            f"unexpected {extra}")
    arrays = {n: chk.float_array(f"named[{n!r}]", named[n]) for n in expected}
    dtype = _one_dtype("named", arrays.values())
    desc = _desc_text(mode, input_size, hidden_size, num_layers, bidirectional)
    flat = np.empty(param_size(mode, input_size, hidden_size, num_layers, bidirectional), dtype)
    for p, names in entries:
        for g in order:
            shape = (int(hidden_size),) + p.shape[1:]
            chk.shape(f"named[{names[g]!r}]", arrays[names[g]], shape, desc)
        blocks = {g: arrays[names[g]] for g in order}
        flat[p.offset : p.offset + p.size] = _join_gates(blocks, order).reshape(-1)
    return flat
