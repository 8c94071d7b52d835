"""fusedrnn's CUDA backend against torch.nn (cuDNN) on one GPU, in the same process and run.

    python bench/cuda_bench.py [--json out.json] [--quick]

Workloads: BENCH.md's W1-W8 (float32), and an LSTM sweep over N in {1, 4, 16, 64, 256} and
H in {256, 512, 1024} (C = H, T = 100, one layer), forward only (inference, no_grad) and training
(forward + backward with input and weight gradients). Each case is timed with CUDA events around
the whole Python call (host overhead included, for both), median of the repeats after warm-up.
fusedrnn runs with its plan choice ('auto') and, in the sweep, with each algorithm forced
('step': per-step cuBLAS GEMM + fused kernel; 'persistent': one cooperative kernel per layer and
direction). cuDNN runs twice: with PyTorch's defaults (cuDNN may use TF32 tensor cores for float32
RNNs: torch.backends.cudnn.allow_tf32 is True by default) and in strict float32 (allow_tf32 False).
fusedrnn follows the same flag (its step path's GEMMs use TF32 when allow_tf32 is True, as timed
here; its persistent kernels are always plain float32). The speed-up columns of the sweep divide by
the fastest of fusedrnn's variants (auto, step, persistent); the README's grid uses 'auto'. Before timing, each fusedrnn case is checked against cuDNN
strict float32 (relative error of the output).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn.torch as ft
from fusedrnn.torch import _cuda as fcuda

DEV = "cuda"


def timed(fn, warmup: int, reps: int) -> float:
    """Median ms of fn() between CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def make_case(spec: dict):
    """(ours, theirs, make_input, loss) for one workload."""
    torch.manual_seed(0)
    mode, C, H, L, bi = spec["mode"], spec["C"], spec["H"], spec.get("L", 1), spec.get("bi", False)
    ours_cls = {"lstm": ft.LSTM, "gru": ft.GRU}[mode]
    theirs_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[mode]
    ours = ours_cls(C, H, num_layers=L, bidirectional=bi).to(DEV)
    theirs = theirs_cls(C, H, num_layers=L, bidirectional=bi)
    theirs.load_state_dict(ours.state_dict())
    theirs = theirs.to(DEV)
    T, N = spec["T"], spec["N"]
    x = torch.randn(T, N, C, device=DEV)
    lengths = spec.get("lengths")

    def inp(requires_grad: bool):
        xi = x.detach().requires_grad_(requires_grad)
        if lengths is not None:
            return xi, pack_padded_sequence(xi, lengths, enforce_sorted=False)
        return xi, xi

    def out_of(y):
        y = y.data if lengths is not None else y
        return y[-1] if spec.get("last") else y

    return ours, theirs, inp, out_of


def run_case(name: str, spec: dict, warmup: int, reps: int) -> dict:
    ours, theirs, inp, out_of = make_case(spec)
    train = spec["train"]
    row = {"case": name, **{k: v for k, v in spec.items() if k != "lengths"}}

    def call(m):
        def fn():
            if train:
                xi, arg = inp(True)
                y, _ = m(arg)
                out_of(y).sum().backward()
            else:
                with torch.no_grad():
                    m(inp(False)[1])
        return fn

    # correctness first: fusedrnn vs cuDNN strict float32
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        ya = out_of(ours(inp(False)[1])[0])
        yb = out_of(theirs(inp(False)[1])[0])
    row["rel_err_vs_cudnn_fp32"] = float((ya - yb).norm() / yb.norm())

    row["cudnn_fp32_ms"] = timed(call(theirs), warmup, reps)
    torch.backends.cudnn.allow_tf32 = True
    row["cudnn_default_ms"] = timed(call(theirs), warmup, reps)
    algos = spec.get("algos", ["auto"])
    for algo in algos:
        fcuda.ALGO = algo
        try:
            row[f"fusedrnn_{algo}_ms"] = timed(call(ours), warmup, reps)
        except ValueError as e:  # persistent forced where it does not fit
            row[f"fusedrnn_{algo}_ms"] = None
            row[f"fusedrnn_{algo}_why"] = str(e)
    fcuda.ALGO = "auto"
    best = min(v for k, v in row.items() if k.startswith("fusedrnn_") and k.endswith("_ms") and v)
    row["speedup_vs_cudnn_default"] = row["cudnn_default_ms"] / best
    row["speedup_vs_cudnn_fp32"] = row["cudnn_fp32_ms"] / best
    return row


def workloads(quick: bool) -> list[tuple[str, dict]]:
    g = torch.Generator().manual_seed(6)
    w6_lengths = torch.randint(10, 101, (64,), generator=g)
    cases = [
        ("W1", dict(mode="lstm", C=256, H=256, N=1, T=100, train=False)),
        ("W2", dict(mode="lstm", C=256, H=256, N=32, T=50, train=True)),
        ("W3", dict(mode="lstm", C=512, H=512, N=64, T=100, train=True)),
        ("W4", dict(mode="gru", C=256, H=256, N=32, T=50, train=True)),
        ("W5", dict(mode="lstm", C=57, H=128, N=128, T=40, train=True, last=True)),
        ("W6", dict(mode="lstm", C=256, H=256, N=64, T=100, train=True, lengths=w6_lengths)),
        ("W7", dict(mode="lstm", C=256, H=256, N=32, T=100, L=2, bi=True, train=True)),
        ("W8", dict(mode="lstm", C=512, H=512, N=64, T=100, train=False)),
    ]
    Ns = [1, 16, 64] if quick else [1, 4, 16, 64, 256]
    for H in (256, 512, 1024):
        for N in Ns:
            for train in (False, True):
                cases.append((f"H{H} N{N} {'train' if train else 'fwd'}",
                              dict(mode="lstm", C=H, H=H, N=N, T=100, train=train,
                                   algos=["auto", "step", "persistent"])))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write every row as JSON here")
    ap.add_argument("--quick", action="store_true", help="fewer sweep points and repeats")
    ap.add_argument("--only", help="run the cases whose name contains this")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    warmup, reps = (3, 10) if args.quick else (5, 25)
    rows = []
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"cuDNN {torch.backends.cudnn.version()}")
    head = ("| case | cuDNN default ms | cuDNN fp32 ms | fusedrnn auto | step | persistent | "
            "speedup vs default | vs fp32 | rel err |")
    print(head)
    print("|" + " --- |" * 9)
    for name, spec in workloads(args.quick):
        if args.only and args.only not in name:
            continue
        r = run_case(name, spec, warmup, reps)
        rows.append(r)
        f = lambda k: "-" if r.get(k) is None else f"{r[k]:.3f}"  # noqa: E731
        print(f"| {name} | {f('cudnn_default_ms')} | {f('cudnn_fp32_ms')} | "
              f"{f('fusedrnn_auto_ms')} | {f('fusedrnn_step_ms')} | {f('fusedrnn_persistent_ms')} | "
              f"{r['speedup_vs_cudnn_default']:.2f}x | {r['speedup_vs_cudnn_fp32']:.2f}x | "
              f"{r['rel_err_vs_cudnn_fp32']:.1e} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
