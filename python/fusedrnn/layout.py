"""The flat parameter layout (MXNet FusedRNNCell order): sizes, offsets and names of every piece.

All weight matrices come first: for each layer, for each direction (forward, then reverse), the i2h
block (G*H, C_in) and then the h2h block (G*H, H), row-major with rows gate-major (LSTM i,f,g,o;
GRU r,z,n); an LSTM with a projection (``proj_size`` P, PyTorch's LSTMP) has an h2h block (4H, P)
followed by the h2r block (P, H). Then all biases in the same order: i2h (G*H,), h2h (G*H,). C_in is
C for layer 0 and D*H (D*P) above it. Offsets come from the C++ core, the single place that computes
them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _C
from . import _checks as chk

MODES = ("lstm", "gru", "rnn_tanh", "rnn_relu")
ACTIVATIONS = ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear", "softrelu", "softsign")
_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


class ParamPiece(NamedTuple):
    """One piece of the flat vector."""

    name: str  # MXNet FusedRNNCell name without prefix: l0_i2h_weight, r1_h2h_bias, ...
    torch_name: str  # the torch.nn.LSTM/GRU/RNN name: weight_ih_l0, bias_hh_l1_reverse, ...
    layer: int
    direction: int  # 0 forward, 1 reverse
    kind: str  # "weight" or "bias"
    part: str  # "i2h", "h2h" or "h2r" (the projection)
    offset: int  # in elements
    shape: tuple  # (G*H, C_in), (G*H, H or P), (P, H) or (G*H,)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def check_mode(mode) -> str:
    if not isinstance(mode, str):
        raise TypeError(f"mode: expected a string, one of {', '.join(map(repr, MODES))}; got {mode!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    return mode


def check_activation(name: str, value, default: str) -> str:
    """An activation name; None means the default."""
    if value is None:
        return default
    if not isinstance(value, str) or value not in ACTIVATIONS:
        exc = ValueError if isinstance(value, str) else TypeError
        raise exc(f"{name}: expected one of {', '.join(map(repr, ACTIVATIONS))}, got {value!r}")
    return value


def num_gates(mode: str) -> int:
    """G: 4 for LSTM, 3 for GRU, 1 for the vanilla RNNs."""
    return _GATES[check_mode(mode)]


def check_desc(mode, input_size, hidden_size, num_layers, bidirectional, proj_size=0):
    return (
        check_mode(mode),
        chk.size("input_size", input_size),
        chk.size("hidden_size", hidden_size),
        chk.size("num_layers", num_layers),
        chk.flag("bidirectional", bidirectional),
        chk.size("proj_size", proj_size, 0),
    )


def param_size(mode, input_size, hidden_size, num_layers=1, bidirectional=False,
               proj_size=0) -> int:
    """Number of elements of the flat parameter vector."""
    return int(_C.param_count(*check_desc(mode, input_size, hidden_size, num_layers, bidirectional,
                                          proj_size)))


def param_layout(mode, input_size, hidden_size, num_layers=1, bidirectional=False,
                 proj_size=0) -> list[ParamPiece]:
    """Every piece of the flat vector, in storage order, with its names, offset and shape."""
    desc = check_desc(mode, input_size, hidden_size, num_layers, bidirectional, proj_size)
    pieces = []
    for layer, direction, is_bias, is_h2h, offset, rows, cols, is_h2r in _C.param_layout(*desc):
        kind = "bias" if is_bias else "weight"
        part = "h2r" if is_h2r else "h2h" if is_h2h else "i2h"
        suffix = "_reverse" if direction else ""
        torch_part = {"i2h": "ih", "h2h": "hh", "h2r": "hr"}[part]
        torch_name = f"{kind}_{torch_part}_l{layer}{suffix}"
        name = f"{'r' if direction else 'l'}{layer}_{part}_{kind}"
        shape = (rows,) if is_bias else (rows, cols)
        pieces.append(ParamPiece(name, torch_name, layer, direction, kind, part, offset, shape))
    return pieces


def init_weights(
    mode, input_size, hidden_size, num_layers=1, bidirectional=False, dtype=np.float32, seed=None,
    proj_size=0,
) -> np.ndarray:
    """A flat vector drawn like torch.nn's default: every entry uniform in (-1/sqrt(H), 1/sqrt(H))."""
    dtype = chk.float_dtype("dtype", dtype)
    n = param_size(mode, input_size, hidden_size, num_layers, bidirectional, proj_size)
    bound = 1.0 / np.sqrt(hidden_size)
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"seed: expected None or a non-negative integer, got {seed!r}")
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"seed: expected None or a non-negative integer, got {seed!r}") from exc
    return rng.uniform(-bound, bound, n).astype(dtype)
