"""fusedrnn.torch (the drop-in modules) vs torch.nn, and the adapter's overhead over the raw core.

The workloads W1-W8 of ../shared/BENCH.md (definitions in compare.py) run, interleaved in the same
process with compare.py's timing discipline (idle pause, untimed priming calls, median of the timed
calls), through three variants sharing the weights and the input:

- ``fusedrnn.torch``: the drop-in module on torch tensors, forward + ``loss.backward()`` with
  gradients for the input and every parameter (W6: a PackedSequence, enforce_sorted=False);
- ``torch.nn``: the same module class of torch (W6: packed, as a torch user would run it);
- ``core``: fusedrnn.forward / fusedrnn.backward on NumPy arrays, the work the adapter delegates
  (W6: the same padding mask the adapter passes).

The adapter's overhead is fusedrnn.torch ms - core ms. Run from the repository root::

    python bench/torch_adapter.py                        # all workloads, 5 timed calls each
    python bench/torch_adapter.py --workloads W1,W2 --repeats 7 --json out.json
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    from compare import parse_args  # sets nothing up; the thread count must go in first

    ARGS = parse_args()
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(ARGS.threads)

import json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import compare  # noqa: E402
import fusedrnn  # noqa: E402
import fusedrnn.torch as ft  # noqa: E402

OURS = {"lstm": ft.LSTM, "gru": ft.GRU}


def module_call(w: compare.Workload, module, x: torch.Tensor):
    """forward (+ backward of the outputs used) through a torch-style module: compare.py's torch
    call (W6 as a PackedSequence, enforce_sorted=False)."""
    return compare.torch_call(w, module, x, packed=w.lengths is not None)


def core_call(w: compare.Workload, x: np.ndarray, flat: np.ndarray):
    """fusedrnn.forward / backward on NumPy: what the adapter calls (W6 with its mask)."""
    mask = None
    if w.lengths is not None:
        mask = np.arange(w.T)[:, None] < np.asarray(w.lengths)[None, :]
    dy = None
    if w.train:
        dy = np.zeros((w.T, w.N, w.directions * w.H), dtype=np.float32)
        dy[-1 if w.last_only else slice(None)] = 1.0
        if mask is not None:
            dy *= mask[:, :, None]

    def call() -> np.ndarray:
        out = fusedrnn.forward(x, flat, mode=w.mode, hidden_size=w.H, num_layers=w.L,
                               bidirectional=w.bidirectional, training=w.train, mask=mask,
                               zero_masked_output=mask is not None)
        if w.train:
            fusedrnn.backward(out.ctx, dy=dy)
        return out.y

    return call


def make_calls(w: compare.Workload) -> dict:
    torch.manual_seed(0)
    theirs = compare.TORCH_MODULES[w.mode](w.C, w.H, num_layers=w.L, bidirectional=w.bidirectional)
    ours = OURS[w.mode](w.C, w.H, num_layers=w.L, bidirectional=w.bidirectional)
    ours.load_state_dict(theirs.state_dict())
    flat = fusedrnn.converters.torch_to_flat(theirs.state_dict(), w.mode, w.C, w.H, w.L,
                                             w.bidirectional)
    x = np.random.default_rng(1).standard_normal((w.T, w.N, w.C), dtype=np.float32)
    if w.lengths is not None:  # padding is zero, as pack_padded_sequence would see it
        x *= (np.arange(w.T)[:, None] < np.asarray(w.lengths)[None, :])[:, :, None]
    xt = torch.from_numpy(x)
    return {"fusedrnn.torch": module_call(w, ours, xt), "torch.nn": module_call(w, theirs, xt),
            "core": core_call(w, x, flat)}


def main(args) -> int:
    ids = [s.strip().upper() for s in args.workloads.split(",") if s.strip()]
    unknown = [i for i in ids if i not in compare.WORKLOADS]
    if unknown:
        print(f"unknown workload(s) {unknown}; known: {', '.join(compare.WORKLOADS)}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    env = compare.environment(args.threads)
    env["fusedrnn_torch_blas_threads"] = ft.get_num_threads()
    results = []
    for i in ids:
        w = compare.WORKLOADS[i]
        t0 = time.perf_counter()
        times, first = compare.time_interleaved(make_calls(w), args.repeats, args.warmup)
        ours = first["fusedrnn.torch"]
        diff = {name: float(np.max(np.abs(ours - first[name].reshape(ours.shape))))
                if first[name].size == ours.size else None for name in ("torch.nn",)}
        med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        results.append({"id": i, "desc": w.desc, "median_ms": med,
                        "times_ms": {n: [t * 1e3 for t in ts] for n, ts in times.items()},
                        "max_abs_y_diff": diff["torch.nn"]})
        print(f"{i} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    print(f"fusedrnn {env['fusedrnn']} (simd {env['simd']}, blas {env['blas']}) vs torch "
          f"{env['torch']} (threads {env['torch_threads']}, fusedrnn.torch GEMM threads "
          f"{env['fusedrnn_torch_blas_threads']}) on {env['cpu']}, {env['cores']} cores")
    print()
    cols = ["id", "workload", "fusedrnn.torch ms", "torch.nn ms", "speedup", "core ms",
            "adapter overhead ms (%)", "max abs y diff"]
    print("| " + " | ".join(cols) + " |")
    print("| --- | --- |" + " ---: |" * (len(cols) - 2))
    for r in results:
        m = r["median_ms"]
        noisy = {n: m[n] > compare.NOISY * min(r["times_ms"][n]) for n in m}
        fmt = lambda n: f"{m[n]:.2f}" + (" *" if noisy[n] else "")  # noqa: E731
        over = m["fusedrnn.torch"] - m["core"]
        diff = "n/a" if r["max_abs_y_diff"] is None else f"{r['max_abs_y_diff']:.1e}"
        print(f"| {r['id']} | {r['desc']}{' (packed)' if r['id'] == 'W6' else ''} | "
              f"{fmt('fusedrnn.torch')} | {fmt('torch.nn')} | "
              f"{m['torch.nn'] / m['fusedrnn.torch']:.2f}x | {fmt('core')} | "
              f"{over:+.2f} ({100 * over / m['core']:+.1f} %) | {diff} |")
    print()
    print(f"median of {args.repeats} interleaved timed calls after {args.warmup} warm-up round(s) "
          f"(compare.py's discipline: {compare.SETTLE_S} s idle, {compare.PRIME_S * 1e3:.0f} ms "
          "priming); speedup: torch.nn ms / fusedrnn.torch ms; overhead: fusedrnn.torch - core; "
          f"* noisy: median > {compare.NOISY} x fastest call")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "repeats": args.repeats, "results": results}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
