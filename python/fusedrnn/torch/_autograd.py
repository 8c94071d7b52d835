"""One fused core call on torch tensors: the flat weight vector of a stack of layers (the
parameters' own storage, see Stack) and the autograd Function around fusedrnn.forward /
fusedrnn.backward.

Tensors cross into the core as zero-copy NumPy views (``Tensor.numpy()``) and results come back as
zero-copy tensors (``torch.from_numpy``); the core copies only where its layout requires it
(fusedrnn.functional: non-dense states, inputs whose rows it cannot address in place).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .. import functional as F
from ..layout import param_layout, param_size
from . import _threads


class Stack:
    """Layers ``first .. first + num_layers - 1`` of a module as one core call: sizes, where each
    torch parameter lives in the flat vector, and the flat vector of the current parameter values.

    ``name_of(layer, direction, kind, part)`` gives the module's attribute name of a piece
    (``kind`` 'weight'/'bias', ``part`` 'i2h'/'h2h'/'h2r'); pieces whose attribute is missing or None
    (bias=False) stay zero in the flat vector and their gradients are dropped.

    The flat vector: ``flatten(module)`` makes the module's parameters views into one buffer in the
    core's layout (what cuDNN's flatten_parameters does), so while they stay there the core reads
    the parameters themselves, with no conversion at all, and sees every change, even through
    ``.data``. Parameters that were moved out (``module.to``, ``torch.func.functional_call``, a
    stack of one layer of several) are copied into a flat vector on every call: a cache keyed on
    the parameters' versions would miss writes through ``.data``, which do not count versions.
    """

    def __init__(self, module: torch.nn.Module, mode: str, input_size: int, hidden_size: int,
                 num_layers: int, bidirectional: bool, name_of: Callable[..., str],
                 proj_size: int = 0):
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bidirectional, self.proj_size = num_layers, bidirectional, proj_size
        self.size = param_size(mode, input_size, hidden_size, num_layers, bidirectional, proj_size)
        self.names: list[str] = []  # attribute names of the parameters present, in flat order
        self.slices: list[tuple[int, int, tuple]] = []  # (offset, size, shape) of each
        for p in param_layout(mode, input_size, hidden_size, num_layers, bidirectional, proj_size):
            name = name_of(p.layer, p.direction, p.kind, p.part)
            if getattr(module, name, None) is not None:
                self.names.append(name)
                self.slices.append((p.offset, p.size, p.shape))
        self._buffer: Optional[torch.Tensor] = None  # the parameters' storage after flatten()
        self._buffer_np: Optional[np.ndarray] = None

    def params(self, module: torch.nn.Module) -> list[torch.Tensor]:
        return [getattr(module, name) for name in self.names]

    def flatten(self, module: torch.nn.Module) -> None:
        """Moves the module's parameters (their values kept) into one buffer in the flat layout;
        the parameters stay the same Parameter objects. float32/float64 on one CPU or CUDA
        device, else a no-op."""
        params = self.params(module)
        dtype, device = params[0].dtype, params[0].device
        if (any(p.device != device or p.dtype != dtype for p in params)
                or dtype not in (torch.float32, torch.float64)
                or device.type not in ("cpu", "cuda")):
            self._buffer = self._buffer_np = None
            return
        # bias=False: the bias pieces stay zero
        buffer = torch.zeros(self.size, dtype=dtype, device=device)
        with torch.no_grad():
            for (offset, size, shape), p in zip(self.slices, params):
                view = buffer[offset : offset + size].view(shape)
                view.copy_(p)
                p.data = view
        self._buffer = buffer
        self._buffer_np = buffer.numpy() if device.type == "cpu" else None

    def _aliased(self, params: Sequence[torch.Tensor]) -> bool:
        """Whether every parameter still is its piece of the buffer."""
        if self._buffer is None:
            return False
        base, item, dtype = self._buffer.data_ptr(), self._buffer.element_size(), self._buffer.dtype
        return all(p.dtype == dtype and p.data_ptr() == base + offset * item and p.is_contiguous()
                   for (offset, _, _), p in zip(self.slices, params))

    def flat(self, params: Sequence[torch.Tensor]) -> np.ndarray:
        """The flat vector of ``params``: the parameters' own buffer, or a new copy."""
        if self._aliased(params):
            return self._buffer_np
        flat = np.zeros(self.size, dtype=_np_dtype(params[0].dtype))
        with torch.no_grad():
            for (offset, size, _), p in zip(self.slices, params):
                flat[offset : offset + size] = p.detach().reshape(-1).numpy()
        return flat

    def flat_tensor(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """The flat vector of ``params`` as a tensor on their device (the CUDA path): the
        parameters' own buffer, or a new copy."""
        if self._aliased(params):
            return self._buffer
        flat = params[0].new_zeros(self.size)
        with torch.no_grad():
            for (offset, size, _), p in zip(self.slices, params):
                flat[offset : offset + size] = p.detach().reshape(-1)
        return flat

    def split(self, dw: np.ndarray, wanted: Sequence[bool]) -> list[Optional[torch.Tensor]]:
        """Per-parameter gradients as views into ``dw`` (as cuDNN's backward returns them)."""
        return self.split_tensor(torch.from_numpy(dw), wanted)

    def split_tensor(self, flat: torch.Tensor,
                     wanted: Sequence[bool]) -> list[Optional[torch.Tensor]]:
        return [flat[o : o + n].view(shape) if want else None
                for (o, n, shape), want in zip(self.slices, wanted)]


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == torch.float32 else np.dtype(np.float64)


def _np(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().numpy()


def _tensor(a: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    return None if a is None else torch.from_numpy(a)


class _Call:
    """The non-tensor arguments of one core call."""

    __slots__ = ("stack", "batch_first", "lengths")

    def __init__(self, stack: Stack, batch_first: bool, lengths: Optional[np.ndarray]):
        self.stack, self.batch_first, self.lengths = stack, batch_first, lengths

    def forward(self, x, flat, h0, c0, training: bool):
        s = self.stack
        _threads.sync()
        return F.forward(
            _np(x), flat, mode=s.mode, hidden_size=s.hidden_size, num_layers=s.num_layers,
            bidirectional=s.bidirectional, h0=_np(h0), c0=_np(c0), batch_first=self.batch_first,
            training=training, lengths=self.lengths, proj_size=s.proj_size)


class _FusedRNN(torch.autograd.Function):
    """(x, h0, c0, *params) -> (y, hN, cN) through the fused core; cN only for LSTM."""

    @staticmethod
    def forward(ctx, call: _Call, x, h0, c0, *params):
        res = call.forward(x, call.stack.flat(params), h0, c0, training=True)
        ctx.call, ctx.core = call, res.ctx
        # The core keeps references to x, h0, c0 and the weights; saving them makes autograd refuse
        # a backward after any was modified in place, as torch.nn does.
        ctx.save_for_backward(x, h0, c0, *params)
        ctx.set_materialize_grads(False)  # an unused output's gradient is None: the core's zero
        out = (_tensor(res.y), _tensor(res.hN))
        return out + (_tensor(res.cN),) if res.cN is not None else out

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dhN, dcN=None):
        ctx.saved_tensors  # noqa: B018 - the in-place modification check
        need = ctx.needs_input_grad  # (call, x, h0, c0, *params)
        weight_grad = any(need[4:])
        if dy is None and dhN is None and dcN is None:
            return (None,) * len(need)
        g = F.backward(ctx.core, dy=_np(dy), dhN=_np(dhN), dcN=_np(dcN), weight_grad=weight_grad)
        dparams = ctx.call.stack.split(g.dw, need[4:]) if weight_grad else [None] * (len(need) - 4)
        return (None, _tensor(g.dx) if need[1] else None, _tensor(g.dh0) if need[2] else None,
                _tensor(g.dc0) if need[3] else None, *dparams)


def run(module: torch.nn.Module, stack: Stack, x: torch.Tensor, h0: Optional[torch.Tensor],
        c0: Optional[torch.Tensor], batch_first: bool, lengths: Optional[np.ndarray]):
    """(y, hN, cN) of one core call; through autograd when a gradient can be asked for, else the
    core's inference path (no reserve kept). cN is None unless LSTM."""
    if x.is_cuda:
        from . import _cuda  # noqa: PLC0415 - the CUDA path loads fusedrnn._cuda on first use

        return _cuda.run(module, stack, x, h0, c0, batch_first, lengths)
    call = _Call(stack, batch_first, lengths)
    params = stack.params(module)
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *params)
    ):
        out = _FusedRNN.apply(call, x, h0, c0, *params)
        return out if len(out) == 3 else (out[0], out[1], None)
    res = call.forward(x, stack.flat(params), h0, c0, training=False)
    return _tensor(res.y), _tensor(res.hN), _tensor(res.cN)
