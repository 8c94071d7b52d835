"""Converters between the flat parameter vector and other frameworks' named parameters.

PyTorch's nn.LSTM / nn.GRU / nn.RNN use the same gate orders as fusedrnn (LSTM i,f,g,o; GRU r,z,n)
and the same matrix shapes, so conversion is slicing by name: ``weight_ih_l0``, ``weight_hh_l0``,
``bias_ih_l0``, ``bias_hh_l0`` and ``..._reverse`` for the second direction.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import _checks as chk
from .layout import param_layout, param_size


def _to_numpy(name: str, value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return chk.float_array(name, value)


def flat_to_torch(flat, mode, input_size, hidden_size, num_layers=1, bidirectional=False) -> dict:
    """Named arrays (copies) in torch.nn's state_dict naming, from the flat vector."""
    flat = chk.float_array("flat", flat)
    n = param_size(mode, input_size, hidden_size, num_layers, bidirectional)
    chk.shape("flat", flat, (n,), f"for mode={mode!r}, input_size={input_size}, "
              f"hidden_size={hidden_size}, num_layers={num_layers}, bidirectional={bidirectional}")
    out = {}
    for p in param_layout(mode, input_size, hidden_size, num_layers, bidirectional):
        out[p.torch_name] = flat[p.offset : p.offset + p.size].reshape(p.shape).copy()
    return out


def torch_to_flat(
    state_dict: Mapping, mode, input_size, hidden_size, num_layers=1, bidirectional=False
) -> np.ndarray:
    """The flat vector from a torch.nn.LSTM/GRU/RNN state_dict (tensors or arrays). The dtype follows
    the inputs (all must agree). Every expected name must be present, and no other."""
    pieces = param_layout(mode, input_size, hidden_size, num_layers, bidirectional)
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
