"""Argument checks shared by the Python API: every message names the argument and gives the expected
and the received value, shape or dtype."""

from __future__ import annotations

import inspect
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


MAX_SIZE = 2**62


def size(name: str, value, minimum: int = 1) -> int:
    """An integer size in [minimum, 2**62] (bools, floats and NaN are refused)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}") from None
    if v < minimum or v > MAX_SIZE:
        raise ValueError(f"{name}: expected an integer in [{minimum}, 2**62], got {v}")
    return v


def dense(arr: np.ndarray) -> np.ndarray:
    """arr itself when C-contiguous and aligned, else an aligned C-contiguous copy."""
    return np.require(arr, requirements=["C", "A"])


def flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def float_array(name: str, value, dtype: np.dtype | None = None) -> np.ndarray:
    """A float32/float64 ndarray (array-likes are converted); with dtype, exactly that dtype."""
    if value is None:
        raise TypeError(f"{name}: expected an array, got None")
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception as exc:  # noqa: BLE001 - report what could not be converted
            raise TypeError(f"{name}: expected a float array, got {type(value).__name__}") from exc
    want = (dtype,) if dtype is not None else FLOAT_DTYPES
    if value.dtype not in want:
        names = " or ".join(str(d) for d in want)
        raise TypeError(f"{name}: expected dtype {names}, got {value.dtype}")
    return value


def array(name: str, value, dtype=None) -> np.ndarray:
    """np.asarray(value, dtype) with the argument's name in the error: a ragged nested list or an
    object NumPy cannot convert is a TypeError naming ``name`` (NumPy's own ValueError names
    nothing)."""
    if isinstance(value, np.ndarray) and dtype is None:
        return value
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        what = "an array" if dtype is None else f"an array of {np.dtype(dtype)}"
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} that NumPy cannot "
                        f"convert ({str(exc).splitlines()[0][:80]})") from exc


def float_dtype(name: str, value) -> np.dtype:
    """float32 or float64 (anything np.dtype takes that names one of them)."""
    try:
        dt = np.dtype(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected float32 or float64, got {value!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {dt}")
    return dt


def shape(name: str, arr: np.ndarray, expected: tuple, what: str = "") -> None:
    if tuple(arr.shape) != tuple(expected):
        hint = f" {what}" if what else ""
        raise ValueError(f"{name}: expected shape {tuple(expected)}{hint}, got {tuple(arr.shape)}")


def grid_view(arr: np.ndarray) -> np.ndarray:
    """A (T, N, F) array the core can address in place (non-negative strides that are multiples of
    the element size, contiguous features, rows apart); otherwise a C-contiguous copy."""
    item = arr.itemsize
    T, N, F = arr.shape
    st, sn, sf = arr.strides
    ok = (
        arr.flags.aligned
        and (F <= 1 or sf == item)
        and st >= 0
        and sn >= 0
        and st % item == 0
        and sn % item == 0
    )
    if ok and T > 0 and N > 0:
        st, sn, width = st // item, sn // item, F
        rows_apart = (N == 1 or sn >= width) and (T == 1 or st >= width)
        disjoint = N == 1 or T == 1 or st >= N * sn or sn >= T * st
        ok = rows_apart and disjoint
    return arr if ok else dense(arr)


_SIGNATURES: dict = {}


def accepts_keyword(fn, name: str, unknown: bool = False) -> bool:
    """Whether calling fn with keyword ``name`` is allowed (a parameter of that name or **kwargs).
    ``unknown`` is the answer when fn has no inspectable signature. Cached per underlying function
    (the same for every bound method or instance of a class), so it is cheap inside step loops."""
    if inspect.ismethod(fn):
        key_fn = fn.__func__
    elif inspect.isfunction(fn) or isinstance(fn, type):
        key_fn = fn
    else:  # a callable instance: its class's __call__ (self does not change the keyword names)
        key_fn = type(fn).__call__
    key = (key_fn, name, unknown)
    if key not in _SIGNATURES:
        try:
            params = inspect.signature(fn).parameters.values()
            _SIGNATURES[key] = any(p.name == name or p.kind == p.VAR_KEYWORD for p in params)
        except (TypeError, ValueError):
            _SIGNATURES[key] = unknown
    return _SIGNATURES[key]
