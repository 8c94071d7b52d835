"""fusedrnn vs torch.nn.LSTM/GRU on the standard workloads W1-W8 of shared/BENCH.md, side by side.

Each workload runs through fusedrnn's functional API and through the matching torch.nn module with
the same weights (converted with ``fusedrnn.converters.torch_to_flat``) and the same float32
random normal input. The timed calls are interleaved (fusedrnn, torch, fusedrnn, torch, ...) so
both see the same machine state; each comes after a short idle pause and untimed priming calls
(see SETTLE_S). Reported: median milliseconds, GFLOP/s as BENCH.md defines them (GEMM work only;
W6 counts the useful FLOPs of the true lengths) and the speedup of fusedrnn over torch, as a
markdown table on stdout, with the machine's numpy sgemm ceiling as a reference. Progress goes to
stderr.

"train" is forward(training=True) + backward with data and weight gradients, loss = sum of the
outputs used (W5: the last step only). W6 runs padded to T=100 on both sides (fusedrnn's native
lengths are measured by bench/harness.py); torch also runs it as a packed sequence.

Run from the repository root, with fusedrnn installed::

    python bench/compare.py                                 # all workloads, 5 timed calls each
    python bench/compare.py --workloads W1,W3 --repeats 7 --threads 1 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="W1,W2,W3,W4,W5,W6,W7,W8",
                   help="comma-separated workload ids (default: all)")
    _cli.add_common(p, "threads for every library (default: all cores)",
                    "also write the results as JSON to PATH")
    args = p.parse_args(argv)
    _cli.check_common(p, args)
    return args


# numpy, torch and fusedrnn size their thread pools (OpenMP, OpenBLAS, MKL) when they load, so the
# thread count goes into the environment before they are imported; torch.set_num_threads is called
# as well.
ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    _cli.set_threads(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fusedrnn  # noqa: E402


# --------------------------------------------------------------------------------------------------
# Workloads


@dataclass(frozen=True)
class Workload:
    id: str
    desc: str
    mode: str  # a key of TORCH_MODULES
    C: int
    H: int
    N: int
    T: int
    L: int = 1
    bidirectional: bool = False
    train: bool = True
    last_only: bool = False  # loss uses the output of the last step only (W5)
    lengths: Optional[tuple[int, ...]] = None  # true sequence lengths (W6); inputs are padded to T

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def gemm_flop(self) -> float:
        """GEMM FLOPs of one call as BENCH.md counts them: per step, layer and direction
        2*N*(C_in+H)*G*H, times 3 for train. With ``lengths`` only the useful steps count."""
        G, D, H = fusedrnn.num_gates(self.mode), self.directions, self.H
        # sequence steps, summed over the batch: N * T, or the sum of the true lengths
        seq_steps = self.N * self.T if self.lengths is None else sum(self.lengths)
        c_in = [self.C] + [D * H] * (self.L - 1)
        per_seq_step = sum(2 * (c + H) * G * H for c in c_in)
        return seq_steps * D * per_seq_step * (3 if self.train else 1)


W6_LENGTHS = tuple(int(n) for n in np.random.default_rng(0).integers(10, 101, 64))

WORKLOADS = {w.id: w for w in [
    Workload("W1", "LSTM 256, N=1, T=100, fwd", "lstm", C=256, H=256, N=1, T=100, train=False),
    Workload("W2", "LSTM 256, N=32, T=50, train", "lstm", C=256, H=256, N=32, T=50),
    Workload("W3", "LSTM 512, N=64, T=100, train", "lstm", C=512, H=512, N=64, T=100),
    Workload("W4", "GRU 256, N=32, T=50, train", "gru", C=256, H=256, N=32, T=50),
    Workload("W5", "char-LSTM 128, C=57, N=128, T=40, train, last out", "lstm",
             C=57, H=128, N=128, T=40, last_only=True),
    Workload("W6", "LSTM 256, N=64, T<=100 variable, train", "lstm", C=256, H=256, N=64, T=100,
             lengths=W6_LENGTHS),
    Workload("W7", "LSTM 256, 2 layers, bidir, N=32, T=100, train", "lstm",
             C=256, H=256, N=32, T=100, L=2, bidirectional=True),
    Workload("W8", "LSTM 512, N=64, T=100, fwd", "lstm", C=512, H=512, N=64, T=100, train=False),
]}

TORCH_MODULES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


# --------------------------------------------------------------------------------------------------
# One call of each library, as a closure over prepared inputs


def fusedrnn_call(w: Workload, x: np.ndarray, flat: np.ndarray) -> Callable[[], np.ndarray]:
    dy = None
    if w.train:
        dy = np.zeros((w.T, w.N, w.directions * w.H), dtype=np.float32)
        dy[-1 if w.last_only else slice(None)] = 1.0

    def call() -> np.ndarray:
        out = fusedrnn.forward(x, flat, mode=w.mode, hidden_size=w.H, num_layers=w.L,
                               bidirectional=w.bidirectional, training=w.train)
        if w.train:
            fusedrnn.backward(out.ctx, dy=dy)
        return out.y

    return call


def torch_call(
    w: Workload, module: torch.nn.Module, x: torch.Tensor, packed: bool
) -> Callable[[], np.ndarray]:
    x = x.clone().requires_grad_(w.train)
    lengths = torch.tensor(w.lengths) if packed else None

    def run() -> torch.Tensor:
        if not packed:
            return module(x)[0]
        seq = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        return module(seq)[0].data  # the outputs of the true steps, no padding

    def call() -> np.ndarray:
        if not w.train:
            with torch.no_grad():
                return run().numpy()
        module.zero_grad(set_to_none=True)
        x.grad = None
        y = run()
        (y[-1] if w.last_only else y).sum().backward()
        return y.detach().numpy()

    return call


def make_calls(w: Workload) -> dict[str, Callable[[], np.ndarray]]:
    """The variants timed for a workload, fusedrnn first; all share the weights and the input."""
    torch.manual_seed(0)
    module = TORCH_MODULES[w.mode](w.C, w.H, num_layers=w.L, bidirectional=w.bidirectional)
    flat = fusedrnn.converters.torch_to_flat(
        module.state_dict(), w.mode, w.C, w.H, w.L, w.bidirectional)
    x = np.random.default_rng(1).standard_normal((w.T, w.N, w.C), dtype=np.float32)
    calls = {
        "fusedrnn": fusedrnn_call(w, x, flat),
        "torch": torch_call(w, module, torch.from_numpy(x), packed=False),
    }
    if w.lengths is not None:
        calls["torch packed"] = torch_call(w, module, torch.from_numpy(x), packed=True)
    return calls


# --------------------------------------------------------------------------------------------------
# Measurement


# A thread pool keeps spinning for a while after its last call (OpenBLAS's about 0.1 s, libgomp's a
# few ms), and on a 2-core machine a spinning pool can halve the speed of the other library's calls
# (measured while fusedrnn's GEMMs ran on OpenBLAS's own pool: torch W2 36 -> 75 ms when called
# right after fusedrnn; both now share libgomp's team, but ONNX Runtime and JAX keep pools of their
# own). So before each call the machine idles for SETTLE_S, until the
# other library's threads sleep, then the library runs untimed calls for at least PRIME_S to wake
# its own threads, so that the timed call sees the steady state of back-to-back calls, as in a
# training loop or a server.
SETTLE_S = 0.25
PRIME_S = 0.03


def timed_call(call: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    """Seconds of one call in steady state (see SETTLE_S), and its output."""
    time.sleep(SETTLE_S)
    t_end = time.perf_counter() + PRIME_S
    call()
    while time.perf_counter() < t_end:
        call()
    t0 = time.perf_counter()
    y = call()
    return time.perf_counter() - t0, y


def time_interleaved(
    calls: dict[str, Callable[[], np.ndarray]], repeats: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Seconds of each timed call per variant, and each variant's first output. Every round times
    each variant once, in turn, so all see the same machine state; the first ``warmup`` rounds are
    dropped."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    first: dict[str, np.ndarray] = {}
    for round_ in range(warmup + repeats):
        for name, call in calls.items():
            dt, y = timed_call(call)
            first.setdefault(name, y)
            if round_ >= warmup:
                times[name].append(dt)
    return times, first


def sgemm_ceiling(n: int = 2048, tries: int = 3) -> float:
    """GFLOP/s of numpy's float32 n x n x n matmul, best of ``tries``."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a @ b  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def run_workload(w: Workload, repeats: int, warmup: int) -> dict:
    times, outputs = time_interleaved(make_calls(w), repeats, warmup)
    # Both sides must compute the same thing (same weights, same input): compare the padded outputs.
    diff = float(np.max(np.abs(outputs["fusedrnn"] - outputs["torch"])))
    flop = w.gemm_flop()
    variants = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        variants[name] = {"median_ms": med * 1e3, "gflops": flop / med / 1e9,
                          "times_ms": [t * 1e3 for t in ts]}
    return {"workload": asdict(w), "gemm_gflop": flop / 1e9, "max_abs_y_diff": diff,
            "variants": variants}


# --------------------------------------------------------------------------------------------------
# Report


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(threads: int) -> dict:
    info = fusedrnn.build_info()
    return {
        "cpu": cpu_name(),
        "cores": _cli.cores(),
        "threads": threads,
        "fusedrnn": info["version"],
        "simd": info["simd"],
        "blas": info["blas"],
        "fusedrnn_omp_threads": info["openmp_max_threads"],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
    }


def header_lines(env: dict, ceiling: float) -> list[str]:
    return [
        f"fusedrnn {env['fusedrnn']} (simd {env['simd']}, blas {env['blas']}, OpenMP threads "
        f"{env['fusedrnn_omp_threads']}) vs torch {env['torch']} (threads {env['torch_threads']}) "
        f"on {env['cpu']}, {env['cores']} cores, --threads {env['threads']}",
        f"reference: numpy {env['numpy']} sgemm 2048^3, best of 3: {ceiling:.0f} GFLOP/s",
    ]


# A median this much above the fastest call means other work shared the machine during the run.
NOISY = 1.25


def fmt_ms(variant: dict) -> str:
    noisy = variant["median_ms"] > NOISY * min(variant["times_ms"])
    return f"{variant['median_ms']:.2f}" + (" *" if noisy else "")


def table_lines(results: list[dict]) -> list[str]:
    """One row per torch variant: W6 gets a second row comparing against torch's packed sequence."""
    columns = ["id", "workload", "fusedrnn ms", "fusedrnn GFLOP/s", "torch ms", "torch GFLOP/s",
               "speedup", "max abs y diff"]
    lines = ["| " + " | ".join(columns) + " |", "| --- | --- |" + " ---: |" * (len(columns) - 2)]
    for r in results:
        w, v = r["workload"], r["variants"]
        ours = v["fusedrnn"]
        for name in (n for n in v if n != "fusedrnn"):
            theirs = v[name]
            label = w["id"] if name == "torch" else f"{w['id']} ({name})"
            padded = w["lengths"] is not None and name == "torch"
            cells = [label, w["desc"] + (", padded" if padded else ""),
                     fmt_ms(ours), f"{ours['gflops']:.1f}",
                     fmt_ms(theirs), f"{theirs['gflops']:.1f}",
                     f"{theirs['median_ms'] / ours['median_ms']:.2f}x",
                     f"{r['max_abs_y_diff']:.1e}"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(args: argparse.Namespace) -> int:
    ids = [s.strip().upper() for s in args.workloads.split(",") if s.strip()]
    unknown = [i for i in ids if i not in WORKLOADS]
    if unknown:
        print(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    env = environment(args.threads)
    ceiling = sgemm_ceiling()
    results = []
    for i in ids:
        t0 = time.perf_counter()
        results.append(run_workload(WORKLOADS[i], args.repeats, args.warmup))
        print(f"{i} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    print("\n".join(header_lines(env, ceiling)))
    print()
    print("\n".join(table_lines(results)))
    print()
    print(f"median of {args.repeats} interleaved timed calls after {args.warmup} warm-up round(s), "
          f"each after {SETTLE_S} s idle and {PRIME_S * 1e3:.0f} ms of untimed calls; GFLOP/s: "
          "BENCH.md GEMM FLOPs (W6: useful, true lengths); speedup: torch ms / fusedrnn ms; "
          f"* noisy: median > {NOISY} x fastest call, the machine was busy, rerun")
    elapsed = time.perf_counter() - start
    print(f"total {elapsed:.1f} s", file=sys.stderr)

    if args.json:
        report = {"environment": env, "sgemm_2048_gflops": ceiling, "repeats": args.repeats,
                  "warmup": args.warmup, "settle_s": SETTLE_S, "prime_s": PRIME_S,
                  "results": results, "total_s": elapsed}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
