"""Real MXNet 1.9.1 for interop tests, in a virtual environment of its own, run in a subprocess.

MXNet 1.9.1 needs NumPy < 1.24 (it uses ``np.bool``), which cannot live beside the NumPy 2 of the
test environment, so ``mxnet_python()`` builds a venv once (``pip install mxnet==1.9.1
numpy==1.23.5``, about 15 s from a warm mirror) under ``$FUSEDRNN_MXNET_VENV`` or
``~/.cache/fusedrnn/mxnet-venv`` and reuses it afterwards; ``run_mxnet(script, **inputs)`` runs a
script in it and returns what the script put in ``outputs``.

When pip cannot get the packages (no network, no wheel for this platform) or no Python <= 3.11 is
available for the venv (NumPy 1.23 has no wheels for newer ones), the tests are skipped with the
reason; any other failure (a venv that cannot be made, an ``import mxnet`` that fails, a script
that raises) is an error. The mxnet wheel bundles OpenBLAS and libgfortran but links the system's
libgomp.so.1 and libquadmath.so.0 (Debian: libgomp1, libquadmath0).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

MXNET_VERSION = "1.9.1"
REQUIREMENTS = (f"mxnet=={MXNET_VERSION}", "numpy==1.23.5")
_MARKER = ".fusedrnn-mxnet-ok"

# pip output that means "could not get the package", not "the package is broken"
_UNREACHABLE = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "Max retries exceeded",
    "ProxyError",
    "Could not fetch URL",
)

# Debian packages of the system libraries libmxnet.so links (the rest are in the wheel)
_SYSTEM_LIBS = {"libgomp.so.1": "libgomp1", "libquadmath.so.0": "libquadmath0"}


class MXNetUnavailable(RuntimeError):
    """MXNet cannot be installed here for a reason outside the project (network, platform)."""


def venv_dir() -> Path:
    env = os.environ.get("FUSEDRNN_MXNET_VENV")
    return Path(env) if env else Path.home() / ".cache" / "fusedrnn" / "mxnet-venv"


def _venv_python(root: Path) -> Path:
    return root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _base_python() -> str:
    """An interpreter NumPy 1.23.5 has wheels for (CPython 3.8-3.11)."""
    env = os.environ.get("FUSEDRNN_MXNET_BASE_PYTHON")
    if env:
        return env
    if (3, 8) <= sys.version_info[:2] <= (3, 11):
        return sys.executable
    for minor in (11, 10, 9, 8):
        found = shutil.which(f"python3.{minor}")
        if found:
            return found
    raise MXNetUnavailable(
        f"mxnet {MXNET_VERSION} needs numpy<1.24, which has no wheels for Python "
        f"{sys.version_info[0]}.{sys.version_info[1]}, and no python3.8-3.11 is on PATH "
        f"(set FUSEDRNN_MXNET_BASE_PYTHON to one)"
    )


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _import_check(python: Path) -> None:
    proc = _run([str(python), "-c", "import mxnet; print(mxnet.__version__)"], env=_clean_env())
    if proc.returncode == 0 and proc.stdout.strip() == MXNET_VERSION:
        return
    hint = ""
    for lib, pkg in _SYSTEM_LIBS.items():
        if lib in proc.stderr:
            hint = (
                f"\nlibmxnet.so needs {lib}: install the Debian package {pkg} "
                f"(apt-get install {pkg})"
            )
    raise RuntimeError(
        f"import mxnet failed in {python} (rc {proc.returncode}):\n{proc.stdout}{proc.stderr}{hint}"
    )


def _create(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    proc = _run([_base_python(), "-m", "venv", str(root)])
    if proc.returncode != 0:
        raise RuntimeError(f"python -m venv {root} failed:\n{proc.stdout}{proc.stderr}")
    python = _venv_python(root)
    cmd = [
        str(python),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--timeout",
        "60",
        "--retries",
        "2",
        *REQUIREMENTS,
    ]
    proc = _run(cmd, env=_clean_env())
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        shutil.rmtree(root, ignore_errors=True)
        if any(s in out for s in _UNREACHABLE):
            tail = "\n".join(out.strip().splitlines()[-5:])
            raise MXNetUnavailable(f"pip could not get {' '.join(REQUIREMENTS)}:\n{tail}")
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{out}")
    _import_check(python)
    (root / _MARKER).write_text(" ".join(REQUIREMENTS) + "\n")


_cache: dict = {}


def _ready(root: Path) -> bool:
    """Built and checked by _create, for the current pins."""
    marker = root / _MARKER
    return (
        _venv_python(root).exists()
        and marker.exists()
        and marker.read_text().split() == list(REQUIREMENTS)
    )


def mxnet_python(skip: bool = True) -> Path:
    """The python of a venv with mxnet 1.9.1, created on first use and reused afterwards.

    When MXNet cannot be had for reasons outside the project: ``pytest.skip`` with the reason if
    ``skip``, else ``MXNetUnavailable``. The outcome is remembered for the rest of the process.
    """
    if "result" not in _cache:
        root = venv_dir()
        try:
            if not _ready(root):
                root.parent.mkdir(parents=True, exist_ok=True)
                with _lock(root.with_name(root.name + ".lock")):
                    if not _ready(root):  # another process may have built it meanwhile
                        _create(root)
            _cache["result"] = _venv_python(root)
        except MXNetUnavailable as exc:
            _cache["result"] = exc
    result = _cache["result"]
    if isinstance(result, MXNetUnavailable):
        if skip:
            import pytest

            pytest.skip(f"real MXNet {MXNET_VERSION} unavailable: {result}")
        raise result
    return result


class _lock:
    """An exclusive file lock (POSIX), so that parallel test workers build the venv once."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fh = open(self.path, "w")
        try:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_EX)
        except ImportError:  # no fcntl (Windows): no lock
            pass
        return self

    def __exit__(self, *exc):
        self.fh.close()  # releases the lock


# --------------------------------------------------------------------------------------------------
# Running scripts
# --------------------------------------------------------------------------------------------------

# Shared by both sides: JSON-able structures in which ndarrays travel through an .npz file.
_CODEC = r"""
import json
import numpy as np

def _encode(obj, arrays):
    if hasattr(obj, "asnumpy"):  # an mxnet NDArray
        obj = obj.asnumpy()
    if isinstance(obj, np.ndarray):
        key = "a%d" % len(arrays)
        arrays[key] = obj
        return {"__ndarray__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("run_mxnet: dict keys must be strings, got %r" % list(obj)[:5])
        return {k: _encode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, arrays) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError("run_mxnet: cannot transfer %s %r" % (type(obj).__name__, obj))

def _decode(obj, arrays):
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            return arrays[obj["__ndarray__"]]
        return {k: _decode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    return obj

def _save(obj, stem):
    arrays = {}
    tree = _encode(obj, arrays)
    np.savez(stem + ".npz", **arrays)
    with open(stem + ".json", "w") as f:
        json.dump(tree, f)

def _load(stem):
    with np.load(stem + ".npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    with open(stem + ".json") as f:
        return _decode(json.load(f), arrays)
"""

_RUNNER = (
    _CODEC
    + r"""
import sys
inputs = _load(sys.argv[1])
outputs = {}
namespace = {"__name__": "__mxnet_script__", "inputs": inputs, "outputs": outputs, **inputs}
with open(sys.argv[3]) as f:
    source = f.read()
exec(compile(source, "mxnet_script.py", "exec"), namespace)
_save(outputs, sys.argv[2])
"""
)

_codec: dict = {}
exec(_CODEC, _codec)


def run_mxnet(script: str, timeout: float = 300, **inputs) -> dict:
    """Run ``script`` under MXNet 1.9.1 and return the dict it fills in ``outputs``.

    Every keyword becomes a global of the script (and an entry of ``inputs``). Inputs and outputs
    are JSON-able structures (str-keyed dicts, lists, tuples -> lists, numbers, strings, None) in
    which NumPy arrays (and, on the way back, mxnet NDArrays) may appear anywhere; the arrays go
    through an .npz file and keep their dtype and shape. ``timeout`` (seconds) is for the
    subprocess, not an input. A script that raises fails the caller with its traceback (a
    RuntimeError). Skips (through ``mxnet_python``) when MXNet cannot be installed.
    """
    python = mxnet_python()
    with tempfile.TemporaryDirectory(prefix="fusedrnn-mxnet-") as tmp:
        tmp = Path(tmp)
        _codec["_save"](inputs, str(tmp / "in"))
        (tmp / "runner.py").write_text(_RUNNER)
        (tmp / "script.py").write_text(textwrap.dedent(script))
        proc = _run(
            [
                str(python),
                str(tmp / "runner.py"),
                str(tmp / "in"),
                str(tmp / "out"),
                str(tmp / "script.py"),
            ],
            env=_clean_env(),
            timeout=timeout,
            cwd=tmp,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"MXNet script failed (rc {proc.returncode}):\n--- stdout\n{proc.stdout}"
                f"--- stderr\n{proc.stderr}"
            )
        return _codec["_load"](str(tmp / "out"))


def _main() -> None:  # python tests/mxnet_env.py: build (or find) the venv and say where it is
    print(mxnet_python(skip=False))


if __name__ == "__main__":
    _main()
