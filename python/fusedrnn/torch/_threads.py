"""The BLAS thread count of fusedrnn's calls from torch, kept in step with torch's own.

fusedrnn's GEMMs run on OpenBLAS's pthread pool (the scipy-openblas32 wheel's library, loaded by
``fusedrnn/__init__.py``); torch's CPU ops run on its own OpenMP pool (``torch.get_num_threads()``).
The two pools never run a kernel at the same time (calls alternate on the calling thread), but each
pool keeps its threads spinning for a while after its last call, so two pools each sized to all
cores fight for the cores at every switch between a torch op and a fusedrnn call. By default every
fusedrnn.torch call first sets OpenBLAS to ``torch.get_num_threads()`` threads (the setter is only
called when the number differs), so the process has one thread count, torch's, and
``torch.set_num_threads`` is the one knob. ``set_num_threads(n)`` pins OpenBLAS to n threads instead;
``set_num_threads(None)`` goes back to following torch.

Measured (2-core AMD EPYC, idle; /tmp probe: one SGD step of fusedrnn.torch.LSTM(256, 256) on
(T=50, N=32) plus a torch MLP head of 256-1024-256, median of 9): torch 2 / OpenBLAS 2 threads
176 ms, 1 / 1 130 ms, torch 2 / OpenBLAS 1 107 ms. The spinning is the cost: with
OPENBLAS_THREAD_TIMEOUT=4 (OpenBLAS threads sleep almost at once after a call) 2 / 2 takes 86 ms,
with OMP_WAIT_POLICY=PASSIVE (torch's OpenMP threads do not spin) 107 ms. Both are environment
variables read when the libraries load, so they must be set before ``import fusedrnn`` / ``import
torch``; this module cannot change them afterwards. The timings of a run that shares the machine
with other work vary far more (2 / 2 took 480-920 ms in one such run).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from .. import _checks as chk


def _load_setters():
    """OpenBLAS's (set, get) thread-count functions, or None where fusedrnn was built against a BLAS
    without them (a system OpenBLAS without the scipy-openblas symbol prefix)."""
    try:
        import scipy_openblas32
    except ImportError:
        return None
    import os

    lib_dir = scipy_openblas32.get_lib_dir()
    name = next((f for f in sorted(os.listdir(lib_dir)) if f.startswith("libscipy_openblas")), None)
    if name is None:
        return None
    lib = ctypes.CDLL(os.path.join(lib_dir, name))  # already loaded: the same handle, no second copy
    try:
        setter, getter = lib.scipy_openblas_set_num_threads, lib.scipy_openblas_get_num_threads
    except AttributeError:
        return None
    setter.argtypes, setter.restype = [ctypes.c_int], None
    getter.argtypes, getter.restype = [], ctypes.c_int
    return setter, getter


_SETTERS = _load_setters()
_pinned: Optional[int] = None  # set_num_threads(n); None: follow torch.get_num_threads()


def _set_blas(n: int) -> None:
    # Asking OpenBLAS (not a cached value) keeps this right when other code sets it too.
    if _SETTERS is not None and _SETTERS[1]() != n:
        _SETTERS[0](n)


def set_num_threads(n: Optional[int]) -> None:
    """Threads of fusedrnn's BLAS calls: an integer >= 1 pins that number; None (the default state)
    follows ``torch.get_num_threads()`` at every call."""
    global _pinned
    if n is None:
        _pinned = None
        return
    n = chk.size("n", n, 1)
    _pinned = n
    _set_blas(n)


def get_num_threads() -> int:
    """The thread count fusedrnn's next BLAS call uses (OpenBLAS's own answer where it can be
    asked)."""
    sync()
    if _SETTERS is not None:
        return int(_SETTERS[1]())
    return _pinned if _pinned is not None else torch.get_num_threads()


def sync() -> None:
    """Called before every fusedrnn call: OpenBLAS to the pinned count or to torch's."""
    _set_blas(_pinned if _pinned is not None else torch.get_num_threads())
