"""The two executors and variable lengths, against torch 2.13 in the same run.

Workloads (float32, shared/BENCH.md conventions; "train" = forward + backward with data and weight
gradients, loss = sum of the outputs):
- W6: LSTM C=H=256, N=64, lengths uniform in [10, 100]: fusedrnn padded to T=100 (no lengths), with
  lengths (both executors); torch padded and as a PackedSequence. GFLOP/s count the useful FLOPs.
- W7: LSTM C=H=256, 2 layers, bidirectional, N=32, T=100, train and forward only.
- L4: LSTM C=H=256, 4 layers, unidirectional, N=32, T=100, train and forward only (the wavefront).
- S: LSTM C=H=256, T=10, N=8 (a short sequence, small batch), forward only and train.
Every variant of a workload is timed in interleaved rounds after an idle pause and untimed priming
calls (bench/compare.py's method); the median is reported, with the workspace and reserve bytes of
each fusedrnn plan, and a memory table (workspace of forward only, both executors, T=100 and 1000).

    python bench/executors.py [--repeats 5] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ARGS = None
if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--workloads", default="W6,W7,W7f,L4,L4f,Sf,S")
    p.add_argument("--json", metavar="PATH")
    ARGS = p.parse_args()
    threads = str(len(os.sched_getaffinity(0)))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = threads

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fusedrnn  # noqa: E402
from compare import W6_LENGTHS, Workload, sgemm_ceiling, time_interleaved, torch_call  # noqa: E402

WORKLOADS = {w.id: w for w in [
    Workload("W6", "LSTM 256, N=64, lengths U[10,100], train", "lstm", C=256, H=256, N=64, T=100,
             lengths=W6_LENGTHS),
    Workload("W7", "LSTM 256, 2 layers, bidir, N=32, T=100, train", "lstm", C=256, H=256, N=32,
             T=100, L=2, bidirectional=True),
    Workload("W7f", "W7 forward only", "lstm", C=256, H=256, N=32, T=100, L=2,
             bidirectional=True, train=False),
    Workload("L4", "LSTM 256, 4 layers, N=32, T=100, train", "lstm", C=256, H=256, N=32, T=100,
             L=4),
    Workload("L4f", "L4 forward only", "lstm", C=256, H=256, N=32, T=100, L=4, train=False),
    Workload("Sf", "LSTM 256, T=10, N=8, forward only", "lstm", C=256, H=256, N=8, T=10,
             train=False),
    Workload("S", "LSTM 256, T=10, N=8, train", "lstm", C=256, H=256, N=8, T=10),
]}


def fusedrnn_call(w: Workload, x, flat, executor: str, lengths=None):
    dy = np.ones((w.T, w.N, w.directions * w.H), dtype=np.float32) if w.train else None
    kw = dict(mode=w.mode, hidden_size=w.H, num_layers=w.L, bidirectional=w.bidirectional,
              training=w.train, executor=executor, lengths=lengths)

    def call():
        out = fusedrnn.forward(x, flat, **kw)
        if w.train:
            fusedrnn.backward(out.ctx, dy=dy)
        return out.y

    mem = fusedrnn.memory(w.mode, w.C, w.H, w.T, w.N, num_layers=w.L,
                          bidirectional=w.bidirectional, training=w.train, executor=executor,
                          lengths=lengths)
    return call, mem


def run(w: Workload, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    module = torch.nn.LSTM(w.C, w.H, num_layers=w.L, bidirectional=w.bidirectional)
    flat = fusedrnn.converters.torch_to_flat(module.state_dict(), w.mode, w.C, w.H, w.L,
                                             w.bidirectional)
    x = np.random.default_rng(1).standard_normal((w.T, w.N, w.C), dtype=np.float32)
    if w.lengths is not None:  # zero padding, as a padded batch has
        for n, n_len in enumerate(w.lengths):
            x[n_len:, n] = 0.0
    calls, mems = {}, {}
    lengths = None if w.lengths is None else np.array(w.lengths)
    if lengths is not None:
        calls["fusedrnn padded (loop)"], mems["fusedrnn padded (loop)"] = fusedrnn_call(
            w, x, flat, "loop")
    for ex in ("loop", "unrolled"):
        name = f"fusedrnn {ex}" + (" lengths" if lengths is not None else "")
        calls[name], mems[name] = fusedrnn_call(w, x, flat, ex, lengths)
    calls["torch"] = torch_call(w, module, torch.from_numpy(x), packed=False)
    if lengths is not None:
        calls["torch packed"] = torch_call(w, module, torch.from_numpy(x), packed=True)
    times, outputs = time_interleaved(calls, repeats, warmup)
    flop = w.gemm_flop()
    res = {"workload": w.id, "desc": w.desc, "useful_gflop": flop / 1e9, "variants": {}}
    ref = outputs["torch"]
    for name, ts in times.items():
        med = statistics.median(ts)
        v = {"median_ms": med * 1e3, "gflops": flop / med / 1e9, "times_ms": [t * 1e3 for t in ts]}
        if name in mems:
            v["workspace_bytes"], v["reserve_bytes"] = mems[name]
        if name.startswith("fusedrnn"):
            y = outputs[name]
            if lengths is not None:  # torch's padded run computes the padding too: compare true steps
                keep = np.arange(w.T)[:, None] < lengths[None, :]
                v["max_abs_y_diff_vs_torch_packed"] = float(np.max(np.abs(
                    (y - outputs["torch"])[keep]))) if "padded" not in name else None
            else:
                v["max_abs_y_diff_vs_torch"] = float(np.max(np.abs(y - ref)))
        res["variants"][name] = v
    return res


def memory_table() -> list[str]:
    lines = ["| network | T | loop workspace | unrolled workspace |", "| --- | --- | --- | --- |"]
    for name, L, bi in (("LSTM 256, 1 layer, N=32, fwd", 1, False),
                        ("LSTM 256, 2 layers bidir, N=32, fwd", 2, True),
                        ("LSTM 256, 4 layers, N=32, fwd", 4, False)):
        for T in (100, 1000):
            b = [fusedrnn.memory("lstm", 256, 256, T, 32, num_layers=L, bidirectional=bi,
                                 executor=ex).workspace_bytes for ex in ("loop", "unrolled")]
            lines.append(f"| {name} | {T} | {b[0] / 2**20:.2f} MiB | {b[1] / 2**20:.2f} MiB |")
    return lines


def main(args) -> int:
    print(f"sgemm 2048^3 ceiling: {sgemm_ceiling():.0f} GFLOP/s; lanes: "
          f"{fusedrnn._C.lane_count()}; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads", flush=True)
    results = []
    lines = ["| workload | variant | median ms | GFLOP/s (useful) | vs torch | workspace MiB | "
             "reserve MiB |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for wid in args.workloads.split(","):
        w = WORKLOADS[wid]
        print(f"{wid}: {w.desc} ...", file=sys.stderr, flush=True)
        r = run(w, args.repeats, args.warmup)
        results.append(r)
        base = r["variants"]["torch"]["median_ms"]
        for name, v in r["variants"].items():
            ws = f"{v['workspace_bytes'] / 2**20:.2f}" if "workspace_bytes" in v else ""
            rs = f"{v['reserve_bytes'] / 2**20:.2f}" if "reserve_bytes" in v else ""
            lines.append(f"| {wid} {w.desc} | {name} | {v['median_ms']:.2f} | {v['gflops']:.1f} | "
                         f"{base / v['median_ms']:.2f}x | {ws} | {rs} |")
    print("\n".join(lines))
    print()
    print("\n".join(memory_table()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
