"""The CUDA path of fusedrnn.torch: one core call of the CUDA backend (fusedrnn._cuda) on CUDA
tensors, and its autograd Function.

Tensors cross as device addresses (``data_ptr()``) after the checks here (device, dtype, shape,
contiguity): ``fusedrnn._cuda`` cannot see them. Work is queued on the current torch stream of the
input's device and nothing synchronises; the workspace and the reserve are torch allocations (the
caching allocator, stream-ordered), so nothing is allocated by cudaMalloc per call.

Variable lengths: the backend takes packed rows in rank order (longest sample first, PyTorch's
PackedSequence layout); the padded input and the per-sample lengths are gathered into that order
here by one differentiable index, and the output scattered back, so autograd sees ordinary torch
ops around the fused call.
"""

from __future__ import annotations

import collections
import threading
from typing import Optional

import numpy as np
import torch
from torch.autograd.function import once_differentiable

_ext = None
_PLANS: collections.OrderedDict = collections.OrderedDict()
_PLANS_LOCK = threading.Lock()
_PLAN_CACHE_SIZE = 128
# How forward runs each (layer, direction): 'auto' (persistent kernel for small float32 batches where
# it fits, else per-step GEMM + fused kernel), 'step' or 'persistent' (tests and benchmarks).
ALGO = "auto"


def backend():
    """The fusedrnn._cuda module, or a RuntimeError saying why there is none."""
    global _ext
    if _ext is None:
        try:
            from .. import _cuda  # noqa: PLC0415 - lazy: the CPU package never loads CUDA libraries
        except ImportError as e:
            raise RuntimeError(
                "input: a CUDA tensor needs fusedrnn's CUDA backend, which this build does not "
                f"have ({e}); build fusedrnn with a CUDA toolkit and cuBLAS (README, 'Building "
                "with CUDA')") from e
        ok, why = _cuda.available()
        if not ok:
            raise RuntimeError(f"input: fusedrnn's CUDA backend cannot run here: {why}")
        _ext = _cuda
    return _ext


def plan(mode: str, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool,
         dtype: torch.dtype, T: int, N: int, training: bool, lengths, device: int,
         algo: str = "auto", tf32: bool = False, proj_size: int = 0):
    """A cached fusedrnn._cuda.Plan (LRU of 128); ``lengths`` sorted descending or None."""
    key = (mode, input_size, hidden_size, num_layers, bidirectional, dtype, T, N, training,
           None if lengths is None else tuple(lengths), device, algo, tf32, proj_size)
    with _PLANS_LOCK:
        p = _PLANS.get(key)
        if p is not None:
            _PLANS.move_to_end(key)
            return p
    p = backend().Plan(mode, input_size, hidden_size, num_layers, bidirectional,
                       "float32" if dtype == torch.float32 else "float64", T, N, training,
                       None if lengths is None else list(lengths), device=device, algo=algo,
                       tf32=tf32, proj_size=proj_size)
    with _PLANS_LOCK:
        _PLANS[key] = p
        while len(_PLANS) > _PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    return p


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _scratch(nbytes: int, device: torch.device) -> torch.Tensor:
    return torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=device)


class _Core:
    """One fused call's sizes and plan; rows are packed rank-order rows (rows, features)."""

    __slots__ = ("stack", "T", "N", "lengths", "device")

    def __init__(self, stack, T: int, N: int, lengths: Optional[np.ndarray], device):
        self.stack, self.T, self.N, self.lengths, self.device = stack, T, N, lengths, device

    def plan(self, dtype: torch.dtype, training: bool):
        s = self.stack
        # float32 GEMMs may use TF32 tensor cores exactly where torch.nn.LSTM's cuDNN call would
        # (torch.backends.cudnn.allow_tf32, True by default).
        tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32
        return plan(s.mode, s.input_size, s.hidden_size, s.num_layers, s.bidirectional, dtype,
                    self.T, self.N, training, self.lengths, self.device.index or 0, ALGO, tf32,
                    s.proj_size)

    def forward(self, x, flat, h0, c0, training: bool):
        """(y, hN, cN, plan, reserve) with x (rows, C) contiguous, states (L*D, N, H) rank order."""
        s = self.stack
        p = self.plan(x.dtype, training)
        D = 2 if s.bidirectional else 1
        S = s.proj_size or s.hidden_size  # h's width
        y = torch.empty((p.rows, D * S), dtype=x.dtype, device=x.device)
        hN = torch.empty((s.num_layers * D, self.N, S), dtype=x.dtype, device=x.device)
        cN = (torch.empty((s.num_layers * D, self.N, s.hidden_size), dtype=x.dtype,
                          device=x.device) if s.mode == "lstm" else None)
        ws = _scratch(p.workspace_bytes, x.device)
        reserve = _scratch(p.reserve_bytes, x.device) if training else None
        stream = torch.cuda.current_stream(x.device).cuda_stream
        backend().forward(p, _ptr(x), _ptr(flat), _ptr(h0), _ptr(c0), _ptr(y), _ptr(hN),
                          _ptr(cN), _ptr(ws), _ptr(reserve), stream)
        return y, hN, cN, p, reserve


def _dense(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


class FusedRNNCuda(torch.autograd.Function):
    """(x rows, h0, c0, *params) -> (y rows, hN, cN) through the CUDA backend; cN only for LSTM."""

    @staticmethod
    def forward(ctx, core: _Core, x, h0, c0, *params):
        flat = core.stack.flat_tensor(params)
        y, hN, cN, p, reserve = core.forward(x, flat, _dense(h0), _dense(c0), training=True)
        ctx.core, ctx.plan, ctx.reserve, ctx.flat = core, p, reserve, flat
        ctx.save_for_backward(x, h0, c0, *params)
        ctx.set_materialize_grads(False)
        return (y, hN) + ((cN,) if cN is not None else ())

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dhN, dcN=None):
        x = ctx.saved_tensors[0]
        need = ctx.needs_input_grad  # (core, x, h0, c0, *params)
        if dy is None and dhN is None and dcN is None:
            return (None,) * len(need)
        p, s = ctx.plan, ctx.core.stack
        dev = x.device
        stream = torch.cuda.current_stream(dev).cuda_stream
        D = 2 if s.bidirectional else 1
        shape = (s.num_layers * D, ctx.core.N, s.hidden_size)
        dx = torch.empty_like(x)
        dh0 = torch.empty(shape[:2] + (s.proj_size or s.hidden_size,), dtype=x.dtype, device=dev)
        dc0 = torch.empty(shape, dtype=x.dtype, device=dev) if s.mode == "lstm" else None
        ws = _scratch(p.workspace_bytes, dev)
        ext = backend()
        ext.backward_data(p, _ptr(_dense(dy)), _ptr(_dense(dhN)), _ptr(_dense(dcN)),
                          _ptr(ctx.flat), _ptr(dx), _ptr(dh0), _ptr(dc0), _ptr(ws),
                          _ptr(ctx.reserve), stream)
        dparams = [None] * (len(need) - 4)
        if any(need[4:]):
            dw = torch.zeros(s.size, dtype=x.dtype, device=dev)
            ext.backward_weights(p, _ptr(x), _ptr(dw), _ptr(ws), _ptr(ctx.reserve), stream)
            dparams = s.split_tensor(dw, need[4:])
        return (None, dx if need[1] else None, dh0 if need[2] else None,
                dc0 if need[3] else None, *dparams)


def run(module, stack, x: torch.Tensor, h0, c0, batch_first: bool,
        lengths: Optional[np.ndarray]):
    """(y, hN, cN) of one core call on CUDA tensors, shapes as fusedrnn.torch._autograd.run:
    x (T, N, C) ((N, T, C) batch_first), padded when ``lengths`` (caller's sample order) is given."""
    if batch_first:
        x = x.transpose(0, 1)
    T, N = int(x.shape[0]), int(x.shape[1])
    dev = x.device
    # modules.py checked the input and the states against the first parameter's device; the
    # others must be there too (their addresses go to the kernels)
    params = stack.params(module)
    for name, t in zip(stack.names, params):
        if t.device != dev:
            raise ValueError(f"{name}: expected a parameter on {dev} (the input's device), got "
                             f"device {t.device}")
    rows_idx = None
    sorted_lengths = None
    if lengths is not None:
        order = np.argsort(-lengths, kind="stable")
        sorted_lengths = lengths[order]
        batch = (sorted_lengths[None, :] > np.arange(T)[:, None]).sum(1)
        t_idx = np.repeat(np.arange(T), batch)
        # each packed row's rank within its step: its row index minus the step's first row
        r_idx = np.arange(len(t_idx)) - np.repeat(np.cumsum(batch) - batch, batch)
        rows_idx = (torch.from_numpy(t_idx).to(dev), torch.from_numpy(order[r_idx]).to(dev))
        order_t = torch.from_numpy(order).to(dev)
        xin = x[rows_idx]
        if h0 is not None:
            h0 = h0.index_select(1, order_t)
        if c0 is not None:
            c0 = c0.index_select(1, order_t)
    else:
        xin = x.reshape(T * N, x.shape[2])
    xin = xin.contiguous()
    core = _Core(stack, T, N, sorted_lengths, dev)
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (xin, h0, c0, *params)
    ):
        out = FusedRNNCuda.apply(core, xin, h0, c0, *params)
        y, hN = out[0], out[1]
        cN = out[2] if len(out) == 3 else None
    else:
        flat = stack.flat_tensor(params)
        y, hN, cN, _, _ = core.forward(xin, flat, _dense(h0), _dense(c0), training=False)
    width = y.shape[1]
    if rows_idx is not None:
        y = y.new_zeros((T, N, width)).index_put(rows_idx, y)
        inv = torch.from_numpy(np.argsort(order)).to(dev)
        hN = hN.index_select(1, inv)
        cN = None if cN is None else cN.index_select(1, inv)
    else:
        y = y.view(T, N, width)
    if batch_first:
        y = y.transpose(0, 1)
    return y, hN, cN
