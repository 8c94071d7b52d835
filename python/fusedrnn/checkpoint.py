"""Checkpoints: fusedrnn's own ``.npz`` format, MXNet's ``.params`` (``nd.save``) binary format, and
MXNet's ``save_rnn_checkpoint`` / ``load_rnn_checkpoint`` / ``do_rnn_checkpoint``.

Nothing here ever unpickles or otherwise executes code from a file, and every problem with a file's
contents (missing file, truncation, corruption, a foreign format, object arrays, a dtype or storage
type that is not supported, names or shapes that the cells do not accept) raises ``CheckpointError``,
a ``ValueError`` whose message names the file and says what is wrong. A missing file raises
``CheckpointNotFoundError``, which is both a ``CheckpointError`` and a ``FileNotFoundError``. Other
``OSError``s (permissions, a directory for a file) propagate unchanged. Writes are atomic: the data
goes to a temporary file in the target's directory, is fsync'ed, and replaces the target with
``os.replace``, so a crash or an exception during a save leaves the previous file intact (and no
temporary file behind, except after a hard crash of the process, which leaves a ``.*.tmp`` file
next to the target).

Formats
-------
**fusedrnn npz** (the default): a zip written by ``np.savez`` (uncompressed), read with
``np.load(..., allow_pickle=False)``. One ``.npy`` member per array, named like MXNet's
``save_checkpoint`` names them (``'arg:<name>'``, ``'aux:<name>'``), and a member
``'__fusedrnn_checkpoint__'`` holding the format version (int64 scalar 1). Only bool, integer,
float and complex arrays are accepted (no object, string or structured dtypes).

**MXNet ``.params``** (``format='mxnet'``), i.e. what ``mx.nd.save`` / ``mx.model.save_checkpoint``
write, all little-endian (MXNet writes native byte order; every platform it runs on is
little-endian)::

    u64  0x112                       list magic (kMXAPINDArrayListMagic)
    u64  0                           reserved (MXNet ignores it; so does this reader)
    u64  n                           number of arrays (dmlc vector<NDArray>)
    n x  NDArray                     see below
    u64  k                           number of names: 0 (a list) or n (a dict)
    k x  (u64 length, UTF-8 bytes)   names (dmlc std::string)
    (nothing after: trailing bytes are an error here; MXNet ignores them)

    NDArray, version 2 (0xF993FAC9, legacy shape semantics) or 3 (0xF993FACA, NumPy semantics):
    u32  magic
    i32  storage type: 0 dense (1 row_sparse and 2 csr are refused: not supported)
    i32  ndim, then ndim x i64 dims  (V2: ndim 0 = an uninitialized array;
                                      V3: ndim -1 = unknown, ndim 0 = a 0-d array)
    i32  dev_type (1 cpu, 2 gpu, 3 cpu_pinned, 5 cpu_shared), i32 dev_id   (ignored: loads to CPU)
    i32  dtype flag: 0 float32, 1 float64, 2 float16, 3 uint8, 4 int32, 5 int8, 6 int64, 7 bool
         (12 bfloat16 and anything else are refused)
    prod(dims) x itemsize bytes, C order

Older files are read too (from MXNet's C++ ``LegacyLoad``; no MXNet release that writes them was
available to test against): magic 0xF993FAC8 (V1) has no storage type and a u32 ndim with i64 dims;
files from before V1 have no magic at all, the first u32 being ndim (accepted up to 32), followed by
u32 dims. Uninitialized ("none") arrays carry no data and cannot be represented: they are refused.
Duplicate names are refused (MXNet keeps the last). An unnamed list loads as keys '0', '1', ....

``save_mxnet_params`` writes version 2 (``mx.nd.load`` reads it, zero-length axes included)
unless an array is 0-d, which only NumPy semantics can store (in version 2, ndim 0 means "no
array"); then every array is written as version 3, and MXNet reads the file only under NumPy
semantics (``mx.npx.set_np()`` then ``mx.npx.load``).
MXNet refuses to load a V3 array in legacy mode and a V2 array under ``set_np()``, so one file holds
one version. ``np_shape=True`` / ``False`` forces the choice.

Checkpoint API (MXNet 1.9.1's ``mx.rnn`` semantics)
--------------------------------------------------
``save_rnn_checkpoint(cells, prefix, epoch, symbol, arg_params, aux_params)`` unpacks every cell's
weights (``cell.unpack_weights``: fused vector -> per-gate names) and saves ``'arg:'``/``'aux:'``
entries; ``load_rnn_checkpoint(cells, prefix, epoch)`` loads them and packs them back
(``cell.pack_weights``), returning ``(None, arg_params, aux_params)`` with NumPy arrays;
``do_rnn_checkpoint(cells, prefix, period)`` returns the epoch-end callback that saves epoch
``iter_no + 1`` when ``(iter_no + 1) % period == 0``. ``cells`` is any object with
``unpack_weights(dict) -> dict`` and ``pack_weights(dict) -> dict`` or a list of such.

File names: ``'%s-%04d.npz' % (prefix, epoch)`` by default, ``'%s-%04d.params' % (prefix, epoch)``
with ``format='mxnet'`` (a real MXNet ``.params`` file, loadable with ``mx.model.load_params`` or
``mx.nd.load``). No symbol JSON is written or read: ``symbol`` must be None (a symbol cannot be
built without MXNet), and load returns None in its place; an existing ``prefix-symbol.json`` is
left alone. Entries whose names start with neither ``'arg:'`` nor ``'aux:'`` are refused by
``load_rnn_checkpoint`` (MXNet drops other ``'x:'`` prefixes silently and fails on names without a
colon); use ``load_params`` for plain ``nd.save`` files.
"""

from __future__ import annotations

import os
import secrets
import struct
import zipfile
from collections.abc import Mapping

import numpy as np

from . import _checks as chk

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "checkpoint_path",
    "do_rnn_checkpoint",
    "load_mxnet_params",
    "load_params",
    "load_rnn_checkpoint",
    "save_mxnet_params",
    "save_params",
    "save_rnn_checkpoint",
]


class CheckpointError(ValueError):
    """A file that cannot be loaded as a checkpoint: missing, truncated, corrupted, foreign, or not
    matching the cells. The message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a FileNotFoundError, with errno and filename)."""

    __init__ = FileNotFoundError.__init__  # else ValueError's, which leaves filename unset


# --------------------------------------------------------------------------------------------------
# MXNet's binary format
# --------------------------------------------------------------------------------------------------

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
NDARRAY_V3_MAGIC = 0xF993FACA

# mshadow type flags that MXNet 1.9.1 can save, and the NumPy dtypes (little-endian)
_FLAG_TO_DTYPE = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
}
_DTYPE_TO_FLAG = {dt.newbyteorder("="): flag for flag, dt in _FLAG_TO_DTYPE.items()}
_FLAG_NAMES = {8: "int16", 9: "uint16", 10: "uint32", 11: "uint64", 12: "bfloat16"}
_STORAGE_NAMES = {-1: "undefined", 1: "row_sparse", 2: "csr"}
_DEV_TYPES = {1: "cpu", 2: "gpu", 3: "cpu_pinned", 5: "cpu_shared"}
_MAX_LEGACY_NDIM = 32
_MAX_NDIM = 64

_NPZ_MARKER = "__fusedrnn_checkpoint__"
_NPZ_VERSION = 1
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def _describe_foreign(head: bytes) -> str:
    """A hint at what a file that is not what we expected seems to be, from its first bytes."""
    if head.startswith(_ZIP_MAGICS):
        return "a zip archive (an .npz?)"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "a Python pickle (never loaded: unpickling can run code)"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    if head.startswith((b"{", b"[")):
        return "JSON text (a -symbol.json?)"
    return f"unknown contents starting with {head[:8].hex(' ')}" if head else "an empty file"


class _Reader:
    """A cursor over the bytes of an MXNet file; every read checks the bytes are there."""

    def __init__(self, data: bytes, path: str):
        self.data = memoryview(data)
        self.path = path
        self.pos = 0

    def error(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what}")

    def take(self, n: int, what: str) -> memoryview:
        left = len(self.data) - self.pos
        if n > left:
            raise self.error(
                f"truncated at offset {len(self.data)}: {what} at offset {self.pos} needs "
                f"{n} bytes, {left} left (file is {len(self.data)} bytes)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def u32(self, what):
        return self.unpack("<I", what)

    def i32(self, what):
        return self.unpack("<i", what)

    def u64(self, what):
        return self.unpack("<Q", what)


def _read_shape(r: _Reader, what: str, ndim_fmt: str, dim_fmt: str) -> tuple:
    at = r.pos
    ndim = r.unpack(ndim_fmt, f"{what}: ndim")
    if ndim < -1 or ndim > _MAX_NDIM:
        raise r.error(f"{what}: implausible ndim {ndim} at offset {at} (corrupted file?)")
    if ndim == -1:
        return None
    dims = tuple(r.unpack(dim_fmt, f"{what}: dim {i}") for i in range(ndim))
    return dims


def _read_ndarray(r: _Reader, index: int) -> np.ndarray:
    what = f"array #{index}"
    start = r.pos
    magic = r.u32(f"{what}: magic")
    if magic in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        version = 2 if magic == NDARRAY_V2_MAGIC else 3
        stype = r.i32(f"{what}: storage type")
        if stype != 0:
            name = _STORAGE_NAMES.get(stype)
            if name is None:
                raise r.error(f"{what}: invalid storage type {stype} at offset {r.pos - 4} "
                              "(corrupted file?)")
            raise r.error(f"{what}: unsupported storage type {name} ({stype}); only dense "
                          "arrays can be loaded (call .tostype('default') in MXNet before saving)")
        shape = _read_shape(r, what + " shape", "<i", "<q")
        if shape is None or (version == 2 and len(shape) == 0) or any(d < 0 for d in shape):
            raise r.error(f"{what} (offset {start}) is an uninitialized MXNet NDArray (no shape, "
                          "no data), which cannot be loaded")
    elif magic == NDARRAY_V1_MAGIC:
        shape = _read_shape(r, what + " shape", "<I", "<q")
        if not shape or any(d < 0 for d in shape):
            raise r.error(f"{what} (offset {start}) is an uninitialized MXNet NDArray")
    elif magic <= _MAX_LEGACY_NDIM:  # pre-V1 files: the word is the ndim, dims are u32
        shape = tuple(r.u32(f"{what}: dim {i}") for i in range(magic))
        if not shape:
            raise r.error(f"{what} (offset {start}) is an uninitialized MXNet NDArray")
    else:
        raise r.error(f"{what}: bad NDArray magic 0x{magic:08X} at offset {start} (expected "
                      f"0x{NDARRAY_V2_MAGIC:08X} or 0x{NDARRAY_V3_MAGIC:08X}; corrupted file?)")
    at = r.pos
    dev_type = r.i32(f"{what}: device type")
    r.i32(f"{what}: device id")
    if dev_type not in _DEV_TYPES:
        raise r.error(f"{what}: invalid device type {dev_type} at offset {at} (corrupted file?)")
    at = r.pos
    flag = r.i32(f"{what}: dtype flag")
    dtype = _FLAG_TO_DTYPE.get(flag)
    if dtype is None:
        if flag in _FLAG_NAMES:
            raise r.error(f"{what}: unsupported dtype {_FLAG_NAMES[flag]} (type flag {flag})")
        raise r.error(f"{what}: unknown dtype flag {flag} at offset {at} (corrupted file?)")
    count = 1
    for d in shape:
        count *= d
    raw = r.take(count * dtype.itemsize, f"{what}: data of shape {shape}, {dtype.name}")
    try:  # a zero-size shape can still have dims NumPy cannot represent
        arr = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
    except (ValueError, OverflowError) as exc:
        raise r.error(f"{what}: shape {shape} cannot be represented ({exc})") from None
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _parse_mxnet(data: bytes, path: str) -> dict:
    r = _Reader(data, path)
    if bytes(data[:8]) != struct.pack("<Q", LIST_MAGIC)[: len(data)]:
        raise r.error(f"not an MXNet NDArray file: bad magic {bytes(data[:8]).hex(' ')} at "
                      f"offset 0 (expected 0x{LIST_MAGIC:X} as u64); the file looks like "
                      f"{_describe_foreign(bytes(data[:16]))}")
    r.u64("header (list magic)")
    r.u64("reserved word")
    n = r.u64("number of arrays")
    arrays = []
    for i in range(n):  # each array takes >= 4 bytes, so a huge n fails by truncation quickly
        arrays.append(_read_ndarray(r, i))
    at = r.pos
    k = r.u64("number of names")
    if k not in (0, n):
        raise r.error(f"{k} names for {n} arrays at offset {at} (corrupted file?)")
    names = []
    for i in range(k):
        length = r.u64(f"length of name #{i}")
        raw = r.take(length, f"name #{i}")
        try:
            names.append(bytes(raw).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise r.error(f"name #{i} at offset {r.pos - length} is not UTF-8 "
                          "(corrupted file?)") from exc
    if r.pos != len(data):
        raise r.error(f"{len(data) - r.pos} unexpected trailing bytes at offset {r.pos} "
                      f"(the {n} arrays and {k} names end there)")
    if not names:
        names = [str(i) for i in range(n)]
    out = {}
    for name, arr in zip(names, arrays):
        if name in out:
            raise r.error(f"duplicate name {name!r}")
        out[name] = arr
    return out


def _read_file(path) -> tuple:
    """(the path as a str, the file's bytes); a missing file raises CheckpointNotFoundError."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return path, f.read()
    except FileNotFoundError:
        raise CheckpointNotFoundError(2, "checkpoint file not found", path) from None


def load_mxnet_params(path) -> dict:
    """The arrays of an MXNet ``.params`` / ``nd.save`` file, {name: np.ndarray} in file order.

    Names are kept as stored (``'arg:...'`` / ``'aux:...'`` prefixes included); an unnamed list
    gives keys '0', '1', .... Dense CPU or GPU arrays of float32/float64/float16/uint8/int8/int32/
    int64/bool load as NumPy arrays of that dtype (GPU arrays load to CPU, as MXNet does without
    CUDA). Pure Python: never executes code from the file. Any problem with the file's contents
    raises CheckpointError (a ValueError) naming the file and what is wrong."""
    path, data = _read_file(path)
    return _parse_mxnet(data, path)


def _as_numpy(name: str, value) -> np.ndarray:
    if hasattr(value, "asnumpy"):  # an mxnet NDArray, without importing mxnet
        value = value.asnumpy()
    elif hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - report what could not be converted
        raise TypeError(f"{name}: expected an array, got {type(value).__name__}") from exc
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    return arr


def _named_arrays(argname: str, arrays) -> dict:
    """{name: np.ndarray} from a mapping (str keys) or, for MXNet lists, a list/tuple."""
    if isinstance(arrays, Mapping):
        out = {}
        for k, v in arrays.items():
            if not isinstance(k, str):
                raise TypeError(f"{argname}: names must be strings, got {type(k).__name__} {k!r}")
            out[k] = _as_numpy(f"{argname}[{k!r}]", v)
        return out
    raise TypeError(f"{argname}: expected a dict of names to arrays, got {type(arrays).__name__}")


def _mxnet_bytes(arrays: dict, named: bool, np_shape) -> bytes:
    """The bytes of an MXNet NDArray list file holding ``arrays`` (checked numeric ndarrays)."""
    if np_shape is None:
        np_shape = any(a.ndim == 0 for a in arrays.values())
    elif not isinstance(np_shape, (bool, np.bool_)):
        raise TypeError(f"np_shape: expected None, True or False, got {np_shape!r}")
    magic = NDARRAY_V3_MAGIC if np_shape else NDARRAY_V2_MAGIC
    parts = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    for name, arr in arrays.items():
        flag = _DTYPE_TO_FLAG.get(arr.dtype.newbyteorder("="))
        if flag is None:
            raise TypeError(f"arrays[{name!r}]: MXNet cannot store dtype {arr.dtype} (supported: "
                            "float32, float64, float16, uint8, int8, int32, int64, bool)")
        if not np_shape and arr.ndim == 0:
            raise ValueError(f"arrays[{name!r}]: shape {arr.shape} needs MXNet's NumPy shape "
                             "semantics; save with np_shape=True (or None)")
        parts.append(struct.pack("<Iii", magic, 0, arr.ndim))
        parts.append(struct.pack(f"<{arr.ndim}q", *arr.shape))
        parts.append(struct.pack("<iii", 1, 0, flag))  # cpu(0), dtype flag
        parts.append(np.ascontiguousarray(arr, dtype=_FLAG_TO_DTYPE[flag]).tobytes())
    names = list(arrays) if named else []
    parts.append(struct.pack("<Q", len(names)))
    for name in names:
        raw = name.encode("utf-8")
        parts.append(struct.pack("<Q", len(raw)) + raw)
    return b"".join(parts)


def save_mxnet_params(path, arrays, *, np_shape=None) -> None:
    """Write ``arrays`` (a dict {name: array}, or a list/tuple of arrays for an unnamed list) as an
    MXNet ``nd.save`` file, atomically. Values may be NumPy arrays, array-likes or MXNet NDArrays;
    dtypes float32/float64/float16/uint8/int8/int32/int64/bool (others: TypeError).

    ``np_shape``: None (default) writes NDArray version 2, which ``mx.nd.load`` reads, unless an
    array is 0-d, in which case all arrays are written as version 3 (MXNet reads them
    only under NumPy semantics, ``mx.npx.set_np()`` + ``mx.npx.load``); True / False force it."""
    if isinstance(arrays, (list, tuple)):
        named = False
        arrays = {str(i): _as_numpy(f"arrays[{i}]", v) for i, v in enumerate(arrays)}
    else:
        named = True
        arrays = _named_arrays("arrays", arrays)
    data = _mxnet_bytes(arrays, named, np_shape)
    _atomic_write(path, lambda f: f.write(data))


# --------------------------------------------------------------------------------------------------
# fusedrnn's npz format and atomic writes
# --------------------------------------------------------------------------------------------------


def _write_npz(f, arrays: dict) -> None:
    """The npz writer (a separate function so that tests can make it fail part way). It writes the
    zip members itself: np.savez(f, **arrays) would take a name such as 'allow_pickle' or 'file'
    for its own keyword argument and lose or reject that array."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, arr in arrays.items():
            with z.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)


def _atomic_write(path, write) -> str:
    """Call ``write(f)`` on a new temporary file next to ``path``, fsync it, and move it over
    ``path`` (os.replace). On any exception the temporary file is removed and ``path`` is left as
    it was. Returns the path as a str."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:  # mode 0o666 & ~umask, like an ordinary new file
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (POSIX); not possible everywhere
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
    return path


def _save_npz(path, arrays: dict) -> str:
    if _NPZ_MARKER in arrays:
        raise ValueError(f"arrays: the name {_NPZ_MARKER!r} is reserved")
    members = dict(arrays)
    members[_NPZ_MARKER] = np.array(_NPZ_VERSION, dtype=np.int64)
    return _atomic_write(path, lambda f: _write_npz(f, members))


def _load_npz(path: str, data_head: bytes, require_marker: bool) -> dict:
    """The arrays of an npz file (the marker removed); every problem -> CheckpointError."""
    if not data_head.startswith(_ZIP_MAGICS):
        raise CheckpointError(f"{path}: not an npz file: the file looks like "
                              f"{_describe_foreign(data_head)}")
    out = {}
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            for key in z.files:
                try:
                    value = z[key]
                except ValueError as exc:
                    if "pickle" in str(exc) or "Object arrays" in str(exc):
                        raise CheckpointError(
                            f"{path}: entry {key!r} is an object array (pickled); object arrays "
                            "are never loaded (unpickling can run code)") from exc
                    raise
                if not isinstance(value, np.ndarray):
                    raise CheckpointError(f"{path}: member {key!r} of the zip is not a .npy "
                                          "array (not an npz checkpoint?)")
                if value.dtype.kind not in "biufc":
                    raise CheckpointError(f"{path}: entry {key!r} has unsupported dtype "
                                          f"{value.dtype} (numeric arrays only)")
                out[key] = value
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointNotFoundError(2, "checkpoint file not found", path) from None
    except (IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile/numpy errors on a damaged archive
        raise CheckpointError(f"{path}: corrupted or truncated npz file "
                              f"({type(exc).__name__}: {exc})") from exc
    marker = out.pop(_NPZ_MARKER, None)
    if marker is None:
        if require_marker:
            raise CheckpointError(
                f"{path}: not a fusedrnn checkpoint (an npz without the {_NPZ_MARKER!r} entry)")
    elif marker.shape != () or marker.dtype.kind not in "iu" or int(marker) != _NPZ_VERSION:
        raise CheckpointError(f"{path}: unsupported fusedrnn checkpoint version {marker!r} "
                              f"(this fusedrnn reads version {_NPZ_VERSION})")
    return out


def _head(path) -> tuple:
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return path, f.read(16)
    except FileNotFoundError:
        raise CheckpointNotFoundError(2, "checkpoint file not found", path) from None


def load_params(path) -> dict:
    """The arrays of a parameter file of either format, found from its contents (not its name):
    an npz (zip) file -> its arrays (fusedrnn's version entry removed); an MXNet NDArray file ->
    ``load_mxnet_params``. Anything else (a pickle, random bytes, ...) -> CheckpointError."""
    path, head = _head(path)
    if head.startswith(_ZIP_MAGICS):
        return _load_npz(path, head, require_marker=False)
    if len(head) >= 8 and struct.unpack_from("<Q", head)[0] == LIST_MAGIC:
        return load_mxnet_params(path)
    raise CheckpointError(f"{path}: neither an npz file nor an MXNet NDArray file: the file looks "
                          f"like {_describe_foreign(head)}")


def save_params(path, arrays, *, format="npz") -> str:
    """Write {name: array} atomically: format 'npz' (fusedrnn's, with its version entry) or
    'mxnet' (``save_mxnet_params``). Returns the path."""
    fmt = _check_format(format)
    named = _named_arrays("arrays", arrays)
    if fmt == "mxnet":
        save_mxnet_params(path, named)
        return os.fspath(path)
    return _save_npz(path, named)


# --------------------------------------------------------------------------------------------------
# MXNet's rnn checkpoint API
# --------------------------------------------------------------------------------------------------

_FORMATS = {"npz": "npz", "mxnet": "params"}


def _check_format(format) -> str:
    if not isinstance(format, str) or format not in _FORMATS:
        raise ValueError(f"format: expected 'npz' or 'mxnet', got {format!r}")
    return format


def _cell_list(cells) -> list:
    def is_cell(c):
        return callable(getattr(c, "unpack_weights", None)) and callable(
            getattr(c, "pack_weights", None))

    if is_cell(cells):
        return [cells]
    if isinstance(cells, (list, tuple)) and all(is_cell(c) for c in cells):
        return list(cells)
    raise TypeError("cells: expected a cell (with unpack_weights and pack_weights) or a list of "
                    f"cells, got {type(cells).__name__}")


def _cell_desc(i: int, cell) -> str:
    prefix = getattr(cell, "_prefix", getattr(cell, "prefix", None))
    extra = f" prefix {prefix!r}" if isinstance(prefix, str) else ""
    return f"cell #{i} ({type(cell).__name__}{extra})"


def _epoch(epoch) -> int:
    return chk.size("epoch", epoch, 0)


def checkpoint_path(prefix, epoch, format="npz") -> str:
    """``'%s-%04d.npz' % (prefix, epoch)``, or ``.params`` for format='mxnet' (MXNet's name)."""
    return "%s-%04d.%s" % (os.fspath(prefix), _epoch(epoch), _FORMATS[_check_format(format)])


def save_rnn_checkpoint(cells, prefix, epoch, symbol=None, arg_params=None, aux_params=None, *,
                        format="npz") -> str:
    """MXNet's ``mx.rnn.save_rnn_checkpoint``: unpack the cells' weights (each cell's
    ``unpack_weights`` in turn, e.g. a fused '{prefix}parameters' vector -> per-gate arrays) and
    save ``'arg:'+name`` and ``'aux:'+name`` entries to ``checkpoint_path(prefix, epoch, format)``,
    atomically. ``symbol`` must be None: fusedrnn writes no ``-symbol.json``. None params mean {}.
    Returns the path written."""
    cell_list = _cell_list(cells)
    fmt = _check_format(format)
    if symbol is not None:
        raise TypeError("symbol: fusedrnn writes no symbol JSON; pass symbol=None (got "
                        f"{type(symbol).__name__})")
    path = checkpoint_path(prefix, epoch, fmt)
    arg = {} if arg_params is None else arg_params
    aux = {} if aux_params is None else aux_params
    for name, value in (("arg_params", arg), ("aux_params", aux)):
        if not isinstance(value, Mapping):
            raise TypeError(f"{name}: expected a dict of names to arrays, got "
                            f"{type(value).__name__}")
    arg = dict(arg)
    for i, cell in enumerate(cell_list):
        try:
            arg = cell.unpack_weights(arg)
        except KeyError as exc:
            raise ValueError(f"arg_params: {_cell_desc(i, cell)} cannot unpack its weights: "
                             f"missing {exc}") from exc
    save = {f"arg:{k}": v for k, v in _named_arrays("arg_params", arg).items()}
    save.update({f"aux:{k}": v for k, v in _named_arrays("aux_params", aux).items()})
    if fmt == "mxnet":
        data = _mxnet_bytes(save, True, None)
        return _atomic_write(path, lambda f: f.write(data))
    return _save_npz(path, save)


def load_rnn_checkpoint(cells, prefix, epoch, *, format="npz") -> tuple:
    """MXNet's ``mx.rnn.load_rnn_checkpoint``: load ``checkpoint_path(prefix, epoch, format)``,
    split it into arg and aux params, and pack the cells' weights back (each cell's
    ``pack_weights`` in turn). Returns ``(None, arg_params, aux_params)`` with NumPy arrays (no
    symbol is read). A file that is missing, damaged, of the other format, or whose names or
    shapes the cells refuse raises CheckpointError (a ValueError) naming the file."""
    cell_list = _cell_list(cells)
    fmt = _check_format(format)
    path = checkpoint_path(prefix, epoch, fmt)
    path, head = _head(path)
    if fmt == "npz":
        named = _load_npz(path, head, require_marker=True)
    else:
        named = load_mxnet_params(path)
    arg, aux = {}, {}
    for key, value in named.items():
        kind, sep, name = key.partition(":")
        if not sep or kind not in ("arg", "aux"):
            raise CheckpointError(f"{path}: entry {key!r} is neither 'arg:...' nor 'aux:...' "
                                  "(not a checkpoint? load_params reads plain parameter files)")
        (arg if kind == "arg" else aux)[name] = value
    for i, cell in enumerate(cell_list):
        try:
            arg = cell.pack_weights(arg)
        except KeyError as exc:
            raise CheckpointError(f"{path}: does not match {_cell_desc(i, cell)}: missing "
                                  f"{exc}") from exc
        except (ValueError, TypeError) as exc:  # shapes, dtypes the cell refuses
            raise CheckpointError(f"{path}: does not match {_cell_desc(i, cell)}: {exc}") from exc
    return None, arg, aux


def do_rnn_checkpoint(cells, prefix, period=1, *, format="npz"):
    """MXNet's ``mx.rnn.do_rnn_checkpoint``: a callback ``(iter_no, sym=None, arg=None, aux=None)``
    for the end of each epoch that saves epoch ``iter_no + 1`` with ``save_rnn_checkpoint`` when
    ``(iter_no + 1) % period == 0`` (period is ``int(max(1, period))``, as in MXNet)."""
    _cell_list(cells)
    _check_format(format)
    if isinstance(period, (bool, np.bool_)) or not isinstance(period, (int, float, np.integer,
                                                                       np.floating)):
        raise TypeError(f"period: expected a number of epochs, got {period!r}")
    if not np.isfinite(period):
        raise ValueError(f"period: expected a finite number of epochs, got {period!r}")
    period = int(max(1, period))

    def _callback(iter_no, sym=None, arg=None, aux=None):
        if (iter_no + 1) % period == 0:
            save_rnn_checkpoint(cells, prefix, iter_no + 1, sym, arg, aux, format=format)

    return _callback
