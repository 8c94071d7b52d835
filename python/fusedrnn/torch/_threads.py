"""The thread count of fusedrnn's calls from torch, kept in step with torch's own.

fusedrnn's GEMMs are split over OpenMP threads (OpenBLAS itself runs single-threaded;
csrc/cpu/blas.cpp). torch's CPU ops run on libgomp too, and a process loads one libgomp.so.1, so in a
torch process both run on one OpenMP team and never fight over the cores. (Before, fusedrnn's GEMMs
ran on OpenBLAS's own pthread pool; each pool kept spinning after its last call, so every switch
between a torch op and a fusedrnn call ran one core short: a W2 training step through
fusedrnn.torch took 44.8 ms against 36.3 ms for the same core calls alone, and 38.3 ms with
OMP_WAIT_POLICY=PASSIVE; bench/torch_adapter.py on 2 cores.)

The OpenMP team's size is torch.set_num_threads's (the same libgomp's nthreads setting). Every
fusedrnn.torch call still sets fusedrnn's count explicitly, to ``torch.get_num_threads()`` (only when
it differs), so the rule also holds where torch runs on another OpenMP runtime.
``set_num_threads(n)`` pins n threads instead; ``set_num_threads(None)`` goes back to following torch.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _C
from .. import _checks as chk


_pinned: Optional[int] = None  # set_num_threads(n); None: follow torch.get_num_threads()


def _set_blas(n: int) -> None:
    # Asking the core (not a cached value) keeps this right when other code sets it too.
    if _C.get_num_threads() != n:
        _C.set_num_threads(n)


def set_num_threads(n: Optional[int]) -> None:
    """Threads of fusedrnn's GEMMs: an integer >= 1 pins that number; None (the default state)
    follows ``torch.get_num_threads()`` at every call."""
    global _pinned
    if n is None:
        _pinned = None
        return
    n = chk.size("n", n, 1)
    _pinned = n
    _set_blas(n)


def get_num_threads() -> int:
    """The thread count fusedrnn's next call from torch splits its GEMMs over."""
    sync()
    return int(_C.get_num_threads())


def sync() -> None:
    """Called before every fusedrnn call: the GEMM threads to the pinned count or to torch's."""
    _set_blas(_pinned if _pinned is not None else torch.get_num_threads())
