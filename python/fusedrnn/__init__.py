"""fusedrnn: fused LSTM, GRU and vanilla RNN kernels, forward and backward, on one C++ core.

The functional API works on NumPy arrays::

    import numpy as np, fusedrnn
    w = fusedrnn.init_weights("lstm", input_size=8, hidden_size=16, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 3, 8), dtype=np.float32)   # (T, N, C)
    out = fusedrnn.forward(x, w, mode="lstm", hidden_size=16, training=True)
    grads = fusedrnn.backward(out.ctx, dy=np.ones_like(out.y))

Weights are one flat vector in MXNet's FusedRNNCell order (see ``param_layout``);
``fusedrnn.converters`` maps it to and from PyTorch state dicts.
"""

from __future__ import annotations


def _load_blas() -> None:
    # The extension links the OpenBLAS of the scipy-openblas32 wheel; loading it here (RTLD_GLOBAL)
    # makes the import work wherever that wheel lives, whatever the extension's RPATH says.
    try:
        import scipy_openblas32

        scipy_openblas32.get_openblas_config()
    except ImportError:  # a build against a system OpenBLAS needs no preload
        pass


_load_blas()

from . import _C  # noqa: E402
from . import converters  # noqa: E402
from .functional import (  # noqa: E402
    BackwardResult,
    Context,
    ForwardResult,
    Memory,
    backward,
    backward_data,
    backward_weights,
    choose_executor,
    forward,
    memory,
)
from .layout import MODES, ParamPiece, init_weights, num_gates, param_layout, param_size  # noqa: E402
from .layers import GRU, LSTM, Bidirectional, SimpleRNN  # noqa: E402
from .layers import RNN, GRUCell, LSTMCell, SimpleRNNCell, StackedRNNCells  # noqa: E402
from . import checkpoint, io, rnn_cell  # noqa: E402, F401

__version__ = "0.1.0"


def build_info() -> dict:
    """How this build was made and what it runs on: BLAS, OpenMP, CUDA, compiler, flags, SIMD level."""
    return dict(_C.build_info())


__all__ = [
    "MODES",
    "BackwardResult",
    "Context",
    "Bidirectional",
    "ForwardResult",
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "Memory",
    "ParamPiece",
    "RNN",
    "SimpleRNN",
    "SimpleRNNCell",
    "StackedRNNCells",
    "backward",
    "backward_data",
    "backward_weights",
    "build_info",
    "checkpoint",
    "choose_executor",
    "converters",
    "forward",
    "init_weights",
    "io",
    "memory",
    "num_gates",
    "param_layout",
    "param_size",
    "rnn_cell",
]
