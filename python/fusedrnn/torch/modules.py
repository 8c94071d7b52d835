"""Drop-in torch.nn.LSTM / GRU / RNN and LSTMCell / GRUCell / RNNCell on the fused core.

Same constructor signatures, parameter names, shapes and registration order, initialisation
(every parameter U(-1/sqrt(H), 1/sqrt(H)), drawn in torch's order, so the same torch seed gives the
same weights), forward signatures and return values as torch.nn, so state dicts load both ways.
The parameters are views into one buffer in the core's flat layout (``flatten_parameters``), so
forward passes them to the core without conversion.
Shapes: input (T, N, C) ((N, T, C) with batch_first), or (T, C) unbatched, or a PackedSequence;
states (L*D, N, H_out), (L*D, H_out) unbatched, with H_out = proj_size or H (c: H).

Variable lengths (PackedSequence): padded time-major plus the per-sample lengths (``_pad_packed``,
the one place that builds them), which the core takes natively: samples sorted by length, the
batch shrinking as they end (work proportional to the sum of lengths), each sample's final state
that of its own last step, the reverse direction starting at each sample's own last step.

Dropout between layers (training, num_layers > 1, dropout > 0): torch's semantics (an elementwise
Bernoulli mask on the output of every layer but the last, scaled by 1/(1 - p)); the layers then run
one core call each. The masks come from the module's own torch.Generator, seeded with the module's
``seed`` attribute, or with ``torch.initial_seed()`` when ``seed`` is None (the default), at the
first forward after construction or after ``seed`` is set: the same seed gives bitwise the same
masks and results. They are not torch's random stream.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ..layout import param_size
from . import _autograd

_MODES = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}
_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _torch_name(layer: int, direction: int, kind: str, part: str, cell: bool = False) -> str:
    """torch.nn's name of a piece: weight_ih_l0, bias_hh_l1_reverse, ...; cells: weight_ih, ..."""
    name = f"{kind}_{ {'i2h': 'ih', 'h2h': 'hh', 'h2r': 'hr'}[part] }"
    return name if cell else f"{name}_l{layer}{'_reverse' if direction else ''}"


# --------------------------------------------------------------------------------------------------
# Input checks: every message names the argument, the expected and the received value


def _check_tensor(name: str, t, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the parameters' device), got "
                         f"device {t.device}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the parameters' dtype), got {t.dtype}; "
                        f"convert the input (.to({dtype})) or the module (.to({t.dtype}))")
    return t


def _check_shape(name: str, t: torch.Tensor, expected: tuple, what: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)} {what}, got {tuple(t.shape)}")


def _param_dtype(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The parameters' dtype and device, checked."""
    first = next(module.parameters())
    dtype, device = first.dtype, first.device
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"parameters: fusedrnn.torch computes in float32 or float64, got {dtype}; "
                        "convert the module with .float() or .double()")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"parameters: fusedrnn.torch runs on CPU or CUDA devices, got {device}")
    return dtype, device


# --------------------------------------------------------------------------------------------------
# PackedSequence <-> padded time-major input and lengths


class _Padded(NamedTuple):
    x: torch.Tensor  # (T, N, C) zero-padded, the caller's batch order, differentiable
    lengths: np.ndarray  # (N,) int64, each sample's length, the caller's batch order
    rows: tuple  # (t index, n index): where each row of the packed data lies in the (T, N) grid


def _pad_packed(seq: PackedSequence) -> _Padded:
    """The one place that turns a PackedSequence into what the core takes (padded data and the
    lengths, in the caller's batch order)."""
    batch_sizes = seq.batch_sizes
    T, N = len(batch_sizes), int(batch_sizes[0])
    t_idx = torch.repeat_interleave(torch.arange(T), batch_sizes)
    starts = torch.cumsum(batch_sizes, 0) - batch_sizes  # first packed row of each step
    b_idx = torch.arange(len(t_idx)) - starts[t_idx]  # position in the (sorted) batch
    n_idx = b_idx if seq.sorted_indices is None else seq.sorted_indices.cpu()[b_idx]
    lengths = np.bincount(n_idx.numpy(), minlength=N).astype(np.int64)
    dev = seq.data.device
    rows = (t_idx.to(dev), n_idx.to(dev))
    x = seq.data.new_zeros((T, N) + tuple(seq.data.shape[1:])).index_put(rows, seq.data)
    return _Padded(x, lengths, rows)


def _pack_like(y: torch.Tensor, padded: _Padded, seq: PackedSequence) -> PackedSequence:
    """y (T, N, F), time-major, back into ``seq``'s packing."""
    return PackedSequence(y[padded.rows], seq.batch_sizes, seq.sorted_indices,
                          seq.unsorted_indices)


# --------------------------------------------------------------------------------------------------
# LSTM / GRU / RNN


class _FlatModule(nn.Module):
    """What the modules and cells share: torch.nn's init (uniform in +-1/sqrt(hidden_size)) and
    keeping the parameters in the core's flat layout (``flatten_parameters``) across ``.to()`` /
    ``.double()`` / ... and unpickling or deepcopy."""

    hidden_size: int

    def flatten_parameters(self) -> None:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def _apply(self, fn, recurse=True):
        ret = super()._apply(fn, recurse)
        self.flatten_parameters()
        return ret

    def __setstate__(self, state):
        super().__setstate__(state)
        self.flatten_parameters()


class _RNNBase(_FlatModule):
    """Shared by LSTM, GRU and RNN; ``mode`` is torch's ('LSTM', 'GRU', 'RNN_TANH', 'RNN_RELU')."""

    __constants__ = ["mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                     "dropout", "bidirectional", "proj_size"]

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        for name, value in (("bias", bias), ("batch_first", batch_first),
                            ("bidirectional", bidirectional)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: expected True or False, got {value!r}")
        for name, value, low in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                                 ("num_layers", num_layers, 1), ("proj_size", proj_size, 0)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
            if value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value}")
        if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Number)
                or not 0 <= dropout <= 1):
            raise ValueError(f"dropout: expected a number in [0, 1] (the probability of an "
                             f"element being zeroed), got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        if proj_size and mode != "LSTM":
            raise ValueError(f"proj_size: only LSTM has a projection, got proj_size={proj_size} "
                             f"for {mode}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size: expected less than hidden_size={hidden_size}, got "
                             f"{proj_size}")
        # sizes beyond the core's limits: its ValueError naming the size, before any allocation
        param_size(_MODES[mode], input_size, hidden_size, num_layers, bidirectional, proj_size)
        self.mode, self._core_mode = mode, _MODES[mode]
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self._seed: Optional[int] = None
        self._generator: Optional[torch.Generator] = None
        self._stacks: dict = {}  # (first layer, layers) -> _autograd.Stack

        D, G = 2 if bidirectional else 1, _GATES[self._core_mode]
        h_out = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            c_in = input_size if layer == 0 else h_out * D
            for direction in range(D):
                suffix = f"_l{layer}{'_reverse' if direction else ''}"
                shapes = [("weight_ih", (G * hidden_size, c_in)),
                          ("weight_hh", (G * hidden_size, h_out))]
                if bias:
                    shapes += [("bias_ih", (G * hidden_size,)), ("bias_hh", (G * hidden_size,))]
                if proj_size > 0:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                names = []
                for base, shape in shapes:
                    setattr(self, base + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(base + suffix)
                self._flat_weights_names += names
                self._all_weights.append(names)
        self.flatten_parameters()
        self.reset_parameters()

    # ----------------------------------------------------------------- torch.nn compatibility


    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    @property
    def _flat_weights(self) -> list[nn.Parameter]:
        return [getattr(self, name) for name in self._flat_weights_names]

    def flatten_parameters(self) -> None:
        """Makes the parameters views into one buffer in the core's flat layout, so that forward
        reads them with no conversion (torch.nn does this for cuDNN). Called on construction, after
        ``.to()`` / ``.double()`` / ... and after unpickling or deepcopy; parameters moved out of
        the buffer otherwise still work, copied into a flat vector on every call."""
        self._stack(0, self.num_layers).flatten(self)


    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__)

    # ----------------------------------------------------------------- dropout randomness

    @property
    def seed(self) -> Optional[int]:
        """Seed of the inter-layer dropout masks; None: ``torch.initial_seed()`` at the next forward.
        Setting it (even to the same value) restarts the mask sequence."""
        return self._seed

    @seed.setter
    def seed(self, value: Optional[int]) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"seed: expected an int or None, got {type(value).__name__} {value!r}")
        self._seed, self._generator = value, None

    def _dropout_noise(self, like: torch.Tensor) -> torch.Tensor:
        """An elementwise Bernoulli(1 - p) mask shaped like ``like``, scaled by 1/(1 - p), as
        torch's dropout builds it."""
        if self._generator is None:
            self._generator = torch.Generator()
            self._generator.manual_seed(self._seed if self._seed is not None
                                        else torch.initial_seed())
        p = self.dropout
        if p == 1.0:
            return torch.zeros_like(like)
        noise = torch.empty(like.shape, dtype=like.dtype)
        noise = noise.bernoulli_(1.0 - p, generator=self._generator).div_(1.0 - p)
        return noise.to(like.device)  # drawn on the CPU: the same masks on every device

    # ----------------------------------------------------------------- core calls

    def _stack(self, first: int, count: int) -> _autograd.Stack:
        """Layers first .. first + count - 1 as one core call (built once, then cached)."""
        key = (first, count)
        if key not in self._stacks:
            D = 2 if self.bidirectional else 1
            h_out = self.proj_size if self.proj_size > 0 else self.hidden_size
            c_in = self.input_size if first == 0 else h_out * D
            self._stacks[key] = _autograd.Stack(
                self, self._core_mode, c_in, self.hidden_size, count, self.bidirectional,
                lambda layer, d, kind, part: _torch_name(first + layer, d, kind, part),
                self.proj_size)
        return self._stacks[key]

    def _run_layers(self, x, h0, c0, batch_first, lengths):
        """(y, hN, cN) of all layers: one core call, or one per layer with dropout between them."""
        L, D = self.num_layers, 2 if self.bidirectional else 1
        if not (self.training and self.dropout > 0 and L > 1):
            return _autograd.run(self, self._stack(0, L), x, h0, c0, batch_first, lengths)
        hs, cs = [], []
        for layer in range(L):
            states = slice(layer * D, (layer + 1) * D)
            x, h, c = _autograd.run(
                self, self._stack(layer, 1), x, None if h0 is None else h0[states],
                None if c0 is None else c0[states], batch_first, lengths)
            hs.append(h)
            cs.append(c)
            if layer < L - 1:
                x = x * self._dropout_noise(x)
        return x, torch.cat(hs), None if cs[0] is None else torch.cat(cs)

    # ----------------------------------------------------------------- forward

    def forward(self, input, hx=None):
        """(output, h_n), or (output, (h_n, c_n)) for LSTM, as torch.nn."""
        dtype, device = _param_dtype(self)
        lstm = self.mode == "LSTM"
        D = 2 if self.bidirectional else 1
        h_out = self.proj_size if self.proj_size > 0 else self.hidden_size

        packed = isinstance(input, PackedSequence)
        if packed:
            data = _check_tensor("input", input.data, dtype, device)
            if data.dim() != 2:
                raise ValueError(f"input: expected PackedSequence data of 2 dimensions "
                                 f"(sum of lengths, input_size), got shape {tuple(data.shape)}")
            padded = _pad_packed(input)
            x, lengths, batch_first, batched = padded.x, padded.lengths, False, True
        else:
            x = _check_tensor("input", input, dtype, device)
            if x.dim() not in (2, 3):
                layout = "(N, T, input_size)" if self.batch_first else "(T, N, input_size)"
                raise ValueError(f"input: expected a 3-D tensor {layout} or a 2-D unbatched "
                                 f"tensor (T, input_size), got shape {tuple(x.shape)}")
            batched, lengths, batch_first = x.dim() == 3, None, self.batch_first
            if not batched:
                x = x.unsqueeze(0 if batch_first else 1)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected input_size={self.input_size} features in the last "
                             f"dimension, got shape {tuple(input.data.shape if packed else input.shape)}")
        N = x.shape[0 if batch_first else 1]

        h0 = c0 = None
        if hx is not None:
            if lstm:
                if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                    raise TypeError(f"hx: expected a tuple (h_0, c_0) for LSTM, got "
                                    f"{type(hx).__name__}")
                h0, c0 = hx
            else:
                h0 = hx
            states = [("hx[0]" if lstm else "hx", h0, h_out)] + ([("hx[1]", c0, self.hidden_size)]
                                                                 if lstm else [])
            for name, t, width in states:
                t = _check_tensor(name, t, dtype, device)
                if batched:
                    _check_shape(name, t, (self.num_layers * D, N, width),
                                 "(num_layers * num_directions, batch, hidden)")
                else:
                    _check_shape(name, t, (self.num_layers * D, width),
                                 "(num_layers * num_directions, hidden) for unbatched input")
            if not batched:
                h0 = h0.unsqueeze(1)
                c0 = c0.unsqueeze(1) if lstm else None

        y, hN, cN = self._run_layers(x, h0, c0, batch_first, lengths)

        if packed:
            y = _pack_like(y, padded, input)
        elif not batched:
            y, hN = y.squeeze(0 if batch_first else 1), hN.squeeze(1)
            cN = cN.squeeze(1) if lstm else None
        return (y, (hN, cN)) if lstm else (y, hN)


class LSTM(_RNNBase):
    """torch.nn.LSTM on the fused core (see the module docstring); proj_size > 0 runs in the core
    (weight_hr_l* as torch.nn's), on CPU and CUDA."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype)


class GRU(_RNNBase):
    """torch.nn.GRU on the fused core (see the module docstring)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype)


class RNN(_RNNBase):
    """torch.nn.RNN (tanh or relu) on the fused core (see the module docstring)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype)
        self.nonlinearity = nonlinearity


# --------------------------------------------------------------------------------------------------
# Cells: one step (T = 1) of a one-layer network


class _CellBase(_FlatModule):
    __constants__ = ["input_size", "hidden_size", "bias"]

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool, device, dtype):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
            if value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value}")
        if not isinstance(bias, bool):
            raise TypeError(f"bias: expected True or False, got {bias!r}")
        param_size(mode, input_size, hidden_size)  # beyond the core's limits: ValueError
        self._core_mode = mode
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        G = _GATES[mode]
        self.weight_ih = nn.Parameter(torch.empty((G * hidden_size, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((G * hidden_size, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(G * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self._stack = _autograd.Stack(
            self, mode, input_size, hidden_size, 1, False,
            lambda layer, d, kind, part: _torch_name(layer, d, kind, part, cell=True))
        self.flatten_parameters()
        self.reset_parameters()

    def flatten_parameters(self) -> None:
        """As the LSTM/GRU/RNN modules': the parameters become views into the core's flat layout."""
        self._stack.flatten(self)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if "bias" in self.__dict__ and self.bias is not True:
            s += ", bias={bias}"
        if "nonlinearity" in self.__dict__ and self.nonlinearity != "tanh":
            s += ", nonlinearity={nonlinearity}"
        return s.format(**self.__dict__)

    def _step(self, input, hx, cx=None):
        """(h', c') of one step; hx/cx are the checked states or None."""
        dtype, device = _param_dtype(self)
        x = _check_tensor("input", input, dtype, device)
        if x.dim() not in (1, 2):
            raise ValueError(f"input: expected a 2-D tensor (batch, input_size) or a 1-D unbatched "
                             f"tensor (input_size,), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected input_size={self.input_size} features in the last "
                             f"dimension, got shape {tuple(x.shape)}")
        batched = x.dim() == 2
        if not batched:
            x = x.unsqueeze(0)
        N = x.shape[0]
        lstm = self._core_mode == "lstm"
        states = [("hx[0]" if lstm else "hx", hx)] + ([("hx[1]", cx)] if lstm else [])
        for name, t in states:
            if t is not None:
                _check_tensor(name, t, dtype, device)
                want = (N, self.hidden_size) if batched else (self.hidden_size,)
                _check_shape(name, t, want, "(batch, hidden_size)" if batched
                             else "(hidden_size,) for unbatched input")
        prep = lambda t: None if t is None else t.reshape(1, N, self.hidden_size)  # noqa: E731
        _, h, c = _autograd.run(self, self._stack, x.unsqueeze(0), prep(hx), prep(cx), False, None)
        shape = (N, self.hidden_size) if batched else (self.hidden_size,)
        return h.reshape(shape), None if c is None else c.reshape(shape)


class LSTMCell(_CellBase):
    """torch.nn.LSTMCell on the fused core: forward(input, hx=None) -> (h', c')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None):
        super().__init__("lstm", input_size, hidden_size, bias, device, dtype)

    def forward(self, input, hx=None):
        if hx is not None and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError(f"hx: expected a tuple (h_0, c_0) for LSTMCell, got "
                            f"{type(hx).__name__}")
        return self._step(input, *(hx if hx is not None else (None, None)))


class GRUCell(_CellBase):
    """torch.nn.GRUCell on the fused core: forward(input, hx=None) -> h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None):
        super().__init__("gru", input_size, hidden_size, bias, device, dtype)

    def forward(self, input, hx=None):
        return self._step(input, hx)[0]


class RNNCell(_CellBase):
    """torch.nn.RNNCell (tanh or relu) on the fused core: forward(input, hx=None) -> h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__("rnn_tanh" if nonlinearity == "tanh" else "rnn_relu", input_size,
                         hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input, hx=None):
        return self._step(input, hx)[0]
