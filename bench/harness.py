"""fusedrnn against every installed framework on the workloads W1-W8 of shared/BENCH.md, in one run.

One command, from the repository root, with fusedrnn installed::

    python bench/harness.py                                  # W1-W8, 5 timed calls each
    python bench/harness.py --workloads W1 --repeats 1       # smoke check, well under a minute
    python bench/harness.py --repeats 3 --json out.json --png out.png
    python bench/harness.py --workloads W2 --custom "lstm,C=256,H=256,N=32,T=50,L=1,bi=0,train=1"

Frameworks (each workload runs all of them side by side, interleaved, with the same weights and
the same float32 random normal input; a framework that cannot be imported is skipped with a line
saying so, only fusedrnn and torch are required):

- ``fusedrnn``: ``fusedrnn.forward`` / ``fusedrnn.backward`` on NumPy arrays, executor 'auto'.
  W6 runs with its true ``lengths=`` ("fusedrnn") and padded to T=100 ("fusedrnn padded").
- ``torch``: ``torch.nn.LSTM/GRU/RNN`` on CPU (the weights' source; converted to fusedrnn's flat
  vector with ``fusedrnn.converters.torch_to_flat``). W6 padded ("torch padded") and as a
  PackedSequence ("torch packed"). Calls are compare.py's ``torch_call``.
- ``onnxruntime``: forward-only workloads only (W1, W8): the torch module exported with
  ``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``, opset 17) and run by an
  InferenceSession on the CPU execution provider, intra-op threads = --threads.
- ``keras``: Keras 3 on JAX (KERAS_BACKEND=jax is set here), ``keras.layers.LSTM/GRU/SimpleRNN``
  (wrapped in ``Bidirectional`` for W7, ``return_sequences=False`` for W5's last output), weights
  set from the same torch weights with ``fusedrnn.converters.flat_to_keras``. forward = a jitted
  ``stateless_call``, train = a jitted ``jax.value_and_grad`` of the sum of the outputs used w.r.t.
  the weights and the input; both compiled ahead of time (``.lower().compile()``), so no compile
  time is timed. W6 runs with a Keras mask ("keras masked"). XLA uses its own thread pool (all
  cores; --threads does not reach it).

"train" = forward + backward with gradients for the weights and the input, loss = sum of the
outputs used (W5: the last step; W6: the true steps for fusedrnn with lengths and Keras masked,
all steps for the padded variants). Timing is compare.py's ``time_interleaved``: every round times
each variant once, in turn, each call after an idle pause and untimed priming calls (compare.py's
SETTLE_S and PRIME_S); the first --warmup rounds are dropped and the median of --repeats timed
calls is reported.

Reported per workload and variant: median ms, GFLOP/s as BENCH.md counts them (GEMM work only;
W6: the useful FLOPs of the true lengths, for every variant), speed relative to the anchor (the
fastest variant of any other framework in this run: anchor ms / ms, > 1 is faster than the
anchor), memory, and the largest absolute difference of the outputs from fusedrnn's (true steps
only for W6, last step for W5 in Keras). Memory:

- fusedrnn "plan": the workspace + reserve bytes of the call's plan, ``fusedrnn.memory(...)``.
- "rss" (every variant, fusedrnn included): the growth of the process's peak resident set during
  one steady-state call over the resident set right before it, measured in a separate process
  (the same script with --memory-probe) after one untimed call (compile, lazy initialisation),
  with glibc's mmap threshold fixed at 64 KiB so that freed blocks go back to the kernel instead
  of staying in malloc's free lists; the peak is reset through /proc/self/clear_refs and read from
  VmHWM. It counts what the call allocates and touches, outputs and gradients included; memory a
  framework keeps between calls is not counted (torch's module ``.grad`` are cleared before the
  measured call; the ONNX Runtime session runs without its memory arena in the probe).

Also reported: the machine's numpy sgemm 2048^3 ceiling (compare.sgemm_ceiling) in the header,
and the per-call overhead from Python of each framework on one tiny step (LSTM C=H=64, N=1, T=1,
forward only; median microseconds of 1000 individually timed calls after 100 untimed ones).

Output: a markdown report on stdout (progress on stderr); --json PATH writes everything as JSON,
--png PATH a bar chart of each variant's speed relative to the anchor per workload (matplotlib,
Agg backend; skipped with a line if matplotlib is missing). Nothing is written without the flags.

Custom shapes: --custom "MODE,C=..,H=..,N=..,T=..[,L=1][,bi=0][,train=1][,last=0][,lengths=A-B]"
(repeatable; MODE one of fusedrnn.MODES; lengths=A-B draws N lengths uniform in [A, B] with a
fixed seed, B <= T). They get ids C1, C2, ... and run after the selected W workloads.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _cli  # noqa: E402

OPTIONAL = ("onnxruntime", "keras")
OVERHEAD_CALLS = 1000
OVERHEAD_WARMUP = 100


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="W1,W2,W3,W4,W5,W6,W7,W8",
                   help="comma-separated BENCH.md workload ids, or 'none' (default: all)")
    p.add_argument("--custom", action="append", default=[], metavar="SPEC",
                   help='a custom shape, e.g. "lstm,C=256,H=256,N=32,T=50,L=1,bi=0,train=1" '
                        "(repeatable)")
    p.add_argument("--frameworks", default=",".join(OPTIONAL),
                   help="optional frameworks to try besides fusedrnn and torch "
                        f"(default: {','.join(OPTIONAL)}; '' for none)")
    _cli.add_common(p, "threads for fusedrnn, torch and ONNX Runtime (default: all cores)",
                    "write the results as JSON to PATH")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the RSS measurement (the separate probe process)")
    p.add_argument("--no-overhead", action="store_true",
                   help="skip the per-call overhead measurement")
    p.add_argument("--png", metavar="PATH", help="write a bar chart of the results to PATH")
    p.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    _cli.check_common(p, args)
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    bad = [f for f in args.frameworks if f not in OPTIONAL]
    if bad:
        p.error(f"unknown framework(s) {bad}; optional ones: {', '.join(OPTIONAL)}")
    return args


# The thread pools (OpenMP, OpenBLAS, MKL) are sized when numpy, torch and fusedrnn load, so the
# thread count goes into the environment first (as in compare.py); Keras reads its backend when
# it is imported.
ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    _cli.set_threads(ARGS.threads)
os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import compare
import fusedrnn
import numpy as np
import torch
from compare import Workload

# --------------------------------------------------------------------------------------------------
# Workloads


def parse_custom(spec: str, index: int) -> Workload:
    """A Workload from a --custom spec (see the top of the file)."""
    mode, *items = [s.strip() for s in spec.split(",") if s.strip()]
    if mode not in fusedrnn.MODES:
        raise ValueError(f"custom {spec!r}: mode {mode!r} is not one of {fusedrnn.MODES}")
    kv = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"custom {spec!r}: {item!r} is not KEY=VALUE")
        kv[key.strip()] = value.strip()
    known = {"C", "H", "N", "T", "L", "bi", "train", "last", "lengths"}
    if set(kv) - known or not {"C", "H", "N", "T"} <= set(kv):
        raise ValueError(f"custom {spec!r}: needs C, H, N, T; knows {sorted(known)}")
    C, H, N, T, L = (int(kv.get(k, 1)) for k in ("C", "H", "N", "T", "L"))
    lengths = None
    if "lengths" in kv:
        lo, _, hi = kv["lengths"].partition("-")
        lo, hi = int(lo), int(hi or lo)
        if not 1 <= lo <= hi <= T:
            raise ValueError(f"custom {spec!r}: lengths A-B needs 1 <= A <= B <= T")
        lengths = tuple(int(n) for n in np.random.default_rng(0).integers(lo, hi + 1, N))
    w = Workload(f"C{index}", spec, mode, C=C, H=H, N=N, T=T, L=L,
                 bidirectional=bool(int(kv.get("bi", 0))), train=bool(int(kv.get("train", 1))),
                 last_only=bool(int(kv.get("last", 0))), lengths=lengths)
    if w.last_only and w.lengths is not None:
        raise ValueError(f"custom {spec!r}: last=1 with lengths is not supported")
    return w


def select_workloads(args: argparse.Namespace) -> list[Workload]:
    ids = [s.strip().upper() for s in args.workloads.split(",")
           if s.strip() and s.strip().lower() != "none"]
    unknown = [i for i in ids if i not in compare.WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; known: {', '.join(compare.WORKLOADS)}")
    return [compare.WORKLOADS[i] for i in ids] + [
        parse_custom(spec, k + 1) for k, spec in enumerate(args.custom)]


def true_steps(w: Workload) -> np.ndarray | None:
    """(T, N) bool: the steps inside each sequence's true length; None without lengths."""
    if w.lengths is None:
        return None
    return np.arange(w.T)[:, None] < np.asarray(w.lengths)[None, :]


# --------------------------------------------------------------------------------------------------
# Frameworks: each builder returns the workload's variants of that framework


@dataclass
class Variant:
    """One timed way of running a workload."""
    call: Callable[[], np.ndarray]  # one forward (+ backward) call; returns the output
    layout: str = "TND"  # of the output: TND, NTD (batch first), ND (last step), or none
    plan_bytes: int | None = None  # fusedrnn's workspace + reserve
    before_probe: Callable[[], None] | None = None  # drops state kept between calls


@dataclass
class Setup:
    """What every framework of one workload shares: the torch module (the weights) and the input."""
    w: Workload
    module: torch.nn.Module
    flat: np.ndarray
    x: np.ndarray  # (T, N, C), zero beyond the true lengths
    threads: int
    probe: bool = False  # building for the memory probe


def make_setup(w: Workload, threads: int, probe: bool = False) -> Setup:
    torch.manual_seed(0)
    if w.mode in compare.TORCH_MODULES:
        module = compare.TORCH_MODULES[w.mode](w.C, w.H, num_layers=w.L,
                                               bidirectional=w.bidirectional)
    else:
        module = torch.nn.RNN(w.C, w.H, num_layers=w.L, bidirectional=w.bidirectional,
                              nonlinearity=w.mode.split("_")[1])
    flat = fusedrnn.converters.torch_to_flat(module.state_dict(), w.mode, w.C, w.H, w.L,
                                             w.bidirectional)
    x = np.random.default_rng(1).standard_normal((w.T, w.N, w.C), dtype=np.float32)
    keep = true_steps(w)
    if keep is not None:  # zero padding, as a padded batch has
        x *= keep[:, :, None]
    return Setup(w, module, flat, x, threads, probe)


def fusedrnn_variants(s: Setup) -> dict[str, Variant]:
    w = s.w

    def variant(lengths) -> Variant:
        kw = {"mode": w.mode, "hidden_size": w.H, "num_layers": w.L,
              "bidirectional": w.bidirectional, "training": w.train, "lengths": lengths,
              "executor": "auto"}
        dy = None
        if w.train:
            dy = np.zeros((w.T, w.N, w.directions * w.H), dtype=np.float32)
            dy[-1 if w.last_only else slice(None)] = 1.0
            if lengths is not None:
                dy *= true_steps(w)[:, :, None]

        def call() -> np.ndarray:
            out = fusedrnn.forward(s.x, s.flat, **kw)
            if w.train:
                fusedrnn.backward(out.ctx, dy=dy)
            return out.y

        mem = fusedrnn.memory(w.mode, w.C, w.H, w.T, w.N, num_layers=w.L,
                              bidirectional=w.bidirectional, training=w.train, lengths=lengths,
                              executor="auto")
        return Variant(call, plan_bytes=mem.workspace_bytes + mem.reserve_bytes)

    if w.lengths is None:
        return {"fusedrnn": variant(None)}
    return {"fusedrnn": variant(np.asarray(w.lengths)), "fusedrnn padded": variant(None)}


def torch_variants(s: Setup) -> dict[str, Variant]:
    xt = torch.from_numpy(s.x)
    clear = lambda: s.module.zero_grad(set_to_none=True)
    padded = "torch" if s.w.lengths is None else "torch padded"
    out = {padded: Variant(compare.torch_call(s.w, s.module, xt, packed=False),
                           before_probe=clear)}
    if s.w.lengths is not None:
        out["torch packed"] = Variant(compare.torch_call(s.w, s.module, xt, packed=True),
                                      layout="none", before_probe=clear)
    return out


def onnxruntime_variants(s: Setup) -> dict[str, Variant]:
    """The torch module exported to ONNX, run by ONNX Runtime; forward-only workloads only."""
    if s.w.train:
        return {}
    ort = importlib.import_module("onnxruntime")
    fd, path = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(s.module, (torch.from_numpy(s.x),), path, opset_version=17,
                              dynamo=False, input_names=["x"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = s.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if s.probe:  # the arena keeps its memory between calls: let the RSS probe see each call's
            opts.enable_cpu_mem_arena = False
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    finally:
        os.unlink(path)
    y_name = sess.get_outputs()[0].name
    feed = {sess.get_inputs()[0].name: s.x}
    return {"onnxruntime": Variant(lambda: sess.run([y_name], feed)[0])}


KERAS_LAYERS = {"lstm": ("LSTM", {}), "gru": ("GRU", {"reset_after": True}),
                "rnn_tanh": ("SimpleRNN", {"activation": "tanh"}),
                "rnn_relu": ("SimpleRNN", {"activation": "relu"})}


def _layer_flat(s: Setup, layer: int, c_in: int) -> np.ndarray:
    """fusedrnn's flat vector of one layer of the torch module (its _l{layer} weights as _l0)."""
    sub = {}
    for name, value in s.module.state_dict().items():
        m = re.fullmatch(r"(\w+?)_l(\d+)(_reverse)?", name)
        if m and int(m.group(2)) == layer:
            sub[f"{m.group(1)}_l0{m.group(3) or ''}"] = value
    return fusedrnn.converters.torch_to_flat(sub, s.w.mode, c_in, s.w.H, 1, s.w.bidirectional)


def keras_variants(s: Setup) -> dict[str, Variant]:
    """Keras 3 layers on JAX with the torch weights; jitted and compiled ahead of time."""
    keras = importlib.import_module("keras")
    jax = importlib.import_module("jax")
    if keras.backend.backend() != "jax":
        raise RuntimeError(f"Keras backend is {keras.backend.backend()!r}, not 'jax'")
    w = s.w
    cls_name, opts = KERAS_LAYERS[w.mode]
    layers = []
    for layer in range(w.L):
        c_in = w.C if layer == 0 else w.directions * w.H
        last_layer = layer == w.L - 1
        rnn = getattr(keras.layers, cls_name)(w.H, return_sequences=not (last_layer and
                                                                         w.last_only), **opts)
        lay = keras.layers.Bidirectional(rnn) if w.bidirectional else rnn
        lay.build((w.N, w.T, c_in))
        lay.set_weights(fusedrnn.converters.flat_to_keras(
            _layer_flat(s, layer, c_in), w.mode, c_in, w.H, bidirectional=w.bidirectional))
        layers.append(lay)

    keep = true_steps(w)
    mask = None if keep is None else jax.numpy.asarray(keep.T)  # Keras masks are (N, T)
    tv = [[v.value for v in lay.trainable_variables] for lay in layers]
    ntv = [[v.value for v in lay.non_trainable_variables] for lay in layers]
    xk = jax.device_put(np.ascontiguousarray(s.x.transpose(1, 0, 2)))  # (N, T, C)

    def forward(tv_, x_, training):
        for lay, t, n in zip(layers, tv_, ntv):
            x_, _ = lay.stateless_call(t, n, x_, mask=mask, training=training)
        return x_

    def loss(tv_, x_):
        y = forward(tv_, x_, True)
        used = y if mask is None else y * mask[:, :, None]
        return used.sum(), y

    layout = "ND" if w.last_only else "NTD"
    if w.train:
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        compiled = step.lower(tv, xk).compile()

        def call() -> np.ndarray:
            (_, y), grads = compiled(tv, xk)
            jax.block_until_ready(grads)
            return np.asarray(y)
    else:
        compiled = jax.jit(lambda tv_, x_: forward(tv_, x_, False)).lower(tv, xk).compile()

        def call() -> np.ndarray:
            return np.asarray(compiled(tv, xk))

    name = "keras masked" if mask is not None else "keras"
    return {name: Variant(call, layout=layout)}


BUILDERS = {"fusedrnn": fusedrnn_variants, "torch": torch_variants,
            "onnxruntime": onnxruntime_variants, "keras": keras_variants}
IMPORTS = {"onnxruntime": ("onnxruntime", "onnx"), "keras": ("keras", "jax")}


def available_frameworks(optional: list[str]) -> tuple[list[str], dict[str, str]]:
    """The frameworks to run (fusedrnn and torch first) and, for each optional one, its version or
    why it is skipped."""
    run, status = ["fusedrnn", "torch"], {}
    for fw in OPTIONAL:
        if fw not in optional:
            status[fw] = "skipped: not selected (--frameworks)"
            continue
        try:
            mods = [importlib.import_module(m) for m in IMPORTS[fw]]
        except Exception as e:  # noqa: BLE001 - any import failure means "not usable here"
            status[fw] = f"skipped: cannot import ({type(e).__name__}: {e})"
            continue
        run.append(fw)
        status[fw] = " ".join(f"{m.__name__} {m.__version__}" for m in mods)
    return run, status


def build_variants(s: Setup, frameworks: list[str],
                   failures: dict | None = None) -> dict[str, Variant]:
    """Every framework's variants of a workload; a framework that fails here is recorded in
    ``failures`` (fusedrnn and torch must not fail)."""
    variants: dict[str, Variant] = {}
    for fw in frameworks:
        try:
            variants.update(BUILDERS[fw](s))
        except Exception as e:
            if fw in ("fusedrnn", "torch"):
                raise
            if failures is not None:
                failures[fw] = f"{type(e).__name__}: {e}"
            print(f"  {s.w.id}: {fw} failed: {type(e).__name__}: {e}", file=sys.stderr)
    return variants


# --------------------------------------------------------------------------------------------------
# Measurement


def y_diff(w: Workload, ref: np.ndarray, y: np.ndarray, layout: str) -> float | None:
    """Largest |y - fusedrnn's y| over the outputs both compute (W6: the true steps)."""
    if layout == "none":
        return None
    if layout == "ND":
        ref, y = ref[-1], np.asarray(y)
    elif layout == "NTD":
        y = np.asarray(y).transpose(1, 0, 2)
    y = y.reshape(ref.shape)
    keep = true_steps(w)
    d = np.abs(y - ref) if keep is None or layout == "ND" else np.abs(y - ref)[keep]
    return float(d.max())


def run_workload(w: Workload, frameworks: list[str], args: argparse.Namespace) -> dict:
    failures: dict[str, str] = {}
    variants = build_variants(make_setup(w, args.threads), frameworks, failures)
    times, outputs = compare.time_interleaved({n: v.call for n, v in variants.items()},
                                              args.repeats, args.warmup)
    flop = w.gemm_flop()
    res = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        v = variants[name]
        res[name] = {"framework": name.split()[0], "median_ms": med * 1e3,
                     "gflops": flop / med / 1e9, "times_ms": [t * 1e3 for t in ts],
                     "plan_bytes": v.plan_bytes, "rss_growth_bytes": None,
                     "max_abs_y_diff": y_diff(w, outputs["fusedrnn"], outputs[name], v.layout)}
    others = {n: r for n, r in res.items() if r["framework"] != "fusedrnn"}
    anchor = min(others, key=lambda n: others[n]["median_ms"]) if others else None
    for r in res.values():
        r["vs_anchor"] = res[anchor]["median_ms"] / r["median_ms"] if anchor else None
    return {"workload": asdict(w), "gemm_gflop": flop / 1e9, "anchor": anchor,
            "failures": failures, "variants": res}


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_growth(v: Variant) -> int:
    """Bytes by which one steady-state call raises the peak resident set (top of the file)."""
    v.call()  # compile, lazy initialisation, caches
    if v.before_probe:
        v.before_probe()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current VmRSS
    base = _proc_status_kib("VmRSS")
    v.call()
    return max(0, _proc_status_kib("VmHWM") - base) * 1024


def memory_probe(workloads: list[Workload], frameworks: list[str], threads: int) -> dict:
    """{workload id: {variant: bytes}}; runs in the child process started by measure_memory."""
    out = {}
    for w in workloads:
        out[w.id] = {}
        for name, v in build_variants(make_setup(w, threads, probe=True), frameworks).items():
            out[w.id][name] = rss_growth(v)
            del v
            gc.collect()
    return out


def measure_memory(args: argparse.Namespace, frameworks: list[str]) -> tuple[dict, str]:
    """Runs this script with --memory-probe in a child process (fixed malloc mmap threshold, see
    the top of the file); returns its {workload id: {variant: bytes}} and an error, if any."""
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe",
           "--workloads", args.workloads, "--threads", str(args.threads),
           "--frameworks", ",".join(f for f in frameworks if f in OPTIONAL)]
    for spec in args.custom:
        cmd += ["--custom", spec]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {}, f"memory probe failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def measure_overhead(frameworks: list[str], threads: int) -> dict:
    """Median, 10th and 90th percentile microseconds of one tiny forward call per framework."""
    w = Workload("overhead", "LSTM 64, N=1, T=1, fwd", "lstm", C=64, H=64, N=1, T=1, train=False)
    variants = build_variants(make_setup(w, threads), frameworks)
    out = {}
    for name, v in variants.items():
        time.sleep(compare.SETTLE_S)
        for _ in range(OVERHEAD_WARMUP):
            v.call()
        ts = []
        for _ in range(OVERHEAD_CALLS):
            t0 = time.perf_counter()
            v.call()
            ts.append(time.perf_counter() - t0)
        q = np.percentile(np.array(ts) * 1e6, [10, 50, 90])
        out[name] = {"median_us": float(q[1]), "p10_us": float(q[0]), "p90_us": float(q[2])}
    return out


# --------------------------------------------------------------------------------------------------
# Report


def fmt_mem(r: dict) -> str:
    parts = []
    if r["plan_bytes"] is not None:
        parts.append(f"plan {r['plan_bytes'] / 2**20:.1f}")
    if r["rss_growth_bytes"] is not None:
        parts.append(f"rss {r['rss_growth_bytes'] / 2**20:.1f}")
    return " / ".join(parts) or "n/a"


def table_lines(results: list[dict]) -> list[str]:
    cols = ["id", "workload", "variant", "median ms", "GFLOP/s", "vs anchor", "memory MiB",
            "max abs y diff"]
    lines = ["| " + " | ".join(cols) + " |", "| --- | --- | --- |" + " ---: |" * (len(cols) - 3)]
    for r in results:
        w = r["workload"]
        for name, v in r["variants"].items():
            vs = "" if v["vs_anchor"] is None else f"{v['vs_anchor']:.2f}x"
            if name == r["anchor"]:
                vs += " (anchor)"
            diff = "" if v["max_abs_y_diff"] is None else f"{v['max_abs_y_diff']:.1e}"
            cells = [w["id"], w["desc"], name, compare.fmt_ms(v), f"{v['gflops']:.1f}", vs,
                     fmt_mem(v), diff]
            lines.append("| " + " | ".join(cells) + " |")
        for fw, why in r["failures"].items():
            lines.append(f"| {w['id']} | {w['desc']} | {fw} | failed: {why} | | | | |")
    return lines


def overhead_lines(overhead: dict) -> list[str]:
    lines = [(f"Per-call overhead from Python: LSTM C=H=64, N=1, T=1, forward only, "
             f"{OVERHEAD_CALLS} calls timed one by one after {OVERHEAD_WARMUP} untimed ones"),
             "", "| framework | median µs | p10 µs | p90 µs |", "| --- | ---: | ---: | ---: |"]
    for name, o in overhead.items():
        lines.append(f"| {name} | {o['median_us']:.1f} | {o['p10_us']:.1f} | {o['p90_us']:.1f} |")
    return lines


COLORS = {"fusedrnn": "#d62728", "fusedrnn padded": "#ff9896", "torch": "#1f77b4",
          "torch padded": "#1f77b4", "torch packed": "#aec7e8", "onnxruntime": "#2ca02c",
          "keras": "#9467bd", "keras masked": "#c5b0d5"}


def write_png(path: str, results: list[dict], title: str) -> None:
    """Grouped bars: per workload, each variant's speed relative to the anchor; fusedrnn in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8.0, 1.5 * len(results) + 2), 5.5))
    seen = set()
    for i, r in enumerate(results):
        names = list(r["variants"])
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            v = r["variants"][name]
            if v["vs_anchor"] is None:
                continue
            xpos = i - 0.4 + width * (j + 0.5)
            ours = v["framework"] == "fusedrnn"
            ax.bar(xpos, v["vs_anchor"], width * 0.92, color=COLORS.get(name, "#7f7f7f"),
                   edgecolor="black" if ours else "none", linewidth=1.2 if ours else 0,
                   label=None if name in seen else name, zorder=3)
            seen.add(name)
            if ours:
                ax.annotate(f"{v['vs_anchor']:.2f}x", (xpos, v["vs_anchor"]),
                            xytext=(0, 3), textcoords="offset points", ha="center",
                            fontsize=8, fontweight="bold" if name == "fusedrnn" else "normal")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", zorder=2)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([f"{r['workload']['id']}\n{r['anchor'] or ''}" for r in results],
                       fontsize=9)
    ax.set_ylabel("speed relative to the anchor (anchor ms / ms)")
    ax.set_xlabel("workload (and its anchor: the fastest other framework)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, ncol=4, loc="upper left")
    ax.set_ylim(0, max(v["vs_anchor"] or 0 for r in results
                       for v in r["variants"].values()) * 1.2 or 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    try:
        workloads = select_workloads(args)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    frameworks, status = available_frameworks(args.frameworks)
    if args.memory_probe:
        print(json.dumps(memory_probe(workloads, frameworks, args.threads)))
        return 0

    start = time.perf_counter()
    env = compare.environment(args.threads)
    env["frameworks"] = status
    ceiling = compare.sgemm_ceiling()
    for fw, st in status.items():
        if st.startswith("skipped"):
            print(f"{fw}: {st}", file=sys.stderr)
    results = []
    for w in workloads:
        t0 = time.perf_counter()
        results.append(run_workload(w, frameworks, args))
        print(f"{w.id} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    overhead = {} if args.no_overhead else measure_overhead(frameworks, args.threads)
    memory_error = ""
    if not args.no_memory and workloads:
        t0 = time.perf_counter()
        rss, memory_error = measure_memory(args, frameworks)
        for r in results:
            for name, v in r["variants"].items():
                v["rss_growth_bytes"] = rss.get(r["workload"]["id"], {}).get(name)
        print(f"memory probe done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    lines = compare.header_lines(env, ceiling)
    lines.append("frameworks: fusedrnn, torch; " + "; ".join(
        f"{fw}: {st}" for fw, st in status.items()))
    lines += ["", *table_lines(results), "",
              (f"median of {args.repeats} interleaved timed calls after {args.warmup} warm-up "
              f"round(s), each after {compare.SETTLE_S} s idle and {compare.PRIME_S * 1e3:.0f} ms "
              "of untimed calls (compare.py). GFLOP/s: BENCH.md GEMM FLOPs (W6: useful FLOPs of "
              "the true lengths, for every variant). vs anchor: anchor ms / ms, the anchor being "
              "the fastest variant of another framework than fusedrnn. memory: plan = fusedrnn's "
              "workspace + reserve; rss = peak resident-set growth of one steady-state call, "
              "measured in a separate process (bench/harness.py docstring). max abs y diff: vs "
              f"fusedrnn's outputs. * noisy: median > {compare.NOISY} x fastest call, rerun.")]
    if memory_error:
        lines.append(memory_error)
    if overhead:
        lines += ["", *overhead_lines(overhead)]
    print("\n".join(lines))
    elapsed = time.perf_counter() - start
    print(f"total {elapsed:.1f} s", file=sys.stderr)

    if args.json:
        report = {"environment": env, "sgemm_2048_gflops": ceiling, "repeats": args.repeats,
                  "warmup": args.warmup, "settle_s": compare.SETTLE_S,
                  "prime_s": compare.PRIME_S, "results": results, "overhead": overhead,
                  "memory_error": memory_error or None, "total_s": elapsed}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.png:
        try:
            write_png(args.png, results,
                      f"fusedrnn {env['fusedrnn']} vs the fastest other framework, {env['cpu']}, "
                      f"{env['threads']} threads (sgemm ceiling {ceiling:.0f} GFLOP/s)")
        except ImportError as e:
            print(f"--png skipped: {e} (pip install matplotlib)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
