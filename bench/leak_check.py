"""Leak check: 10,000 forward + backward calls through fusedrnn.forward / fusedrnn.backward (small
shapes; LSTM and GRU, uni- and bidirectional, both executors, lengths, masks, dropout, inference and
training), resident memory measured after a warm-up round and at the end. Exits non-zero when the
resident set grew by more than the threshold (default 5 MiB).

    python bench/leak_check.py [--calls 10000] [--threshold-mib 5]

Every call allocates its outputs, workspace and reserve anew (NumPy) and the plan cache is bounded,
so a steady state is reached after the warm-up: growth after it means something (a plan, a buffer,
a Python object held by the bindings) is kept per call.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time

import numpy as np

import fusedrnn


def rss_bytes() -> int:
    """Current resident set (from /proc/self/statm), or the peak (getrusage) elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_cases():
    """(name, callable) pairs; each callable is one forward + backward (or one inference call)."""
    rng = np.random.default_rng(0)
    cases = []

    def add(name, mode, T, N, C, H, L=1, bi=False, training=True, **kw):
        D = 2 if bi else 1
        S = kw.get("proj_size", 0) or H  # the width of h
        dtype = kw.pop("dtype", np.float32)
        w = rng.uniform(-0.3, 0.3, fusedrnn.param_size(mode, C, H, L, bi, S if S < H else 0))
        w = w.astype(dtype)
        x = rng.standard_normal((T, N, C)).astype(dtype)
        h0 = rng.standard_normal((L * D, N, S)).astype(dtype)
        dy = rng.standard_normal((T, N, D * S)).astype(dtype)
        lengths_kind = kw.pop("lengths", None)
        mask_kind = kw.pop("mask", None)

        def call():
            opts = dict(kw)
            if lengths_kind:  # new lengths every call: new arrays, several length profiles
                lengths = rng.integers(0, T + 1, N)
                lengths[0] = T
                opts["lengths"] = lengths
            if mask_kind:
                opts["mask"] = rng.random((T, N)) < 0.8
            res = fusedrnn.forward(x, w, mode=mode, hidden_size=H, num_layers=L, bidirectional=bi,
                                   h0=h0, training=training, **opts)
            if training:
                fusedrnn.backward(res.ctx, dy=dy, dhN=np.ones_like(res.hN))

        cases.append((name, call))

    add("lstm train", "lstm", 8, 4, 6, 8)
    add("gru bi train loop", "gru", 6, 3, 5, 7, bi=True, executor="loop")
    add("lstm 2-layer bi unrolled lengths", "lstm", 7, 5, 4, 6, L=2, bi=True, executor="unrolled",
        lengths=True)
    add("gru lengths loop", "gru", 9, 6, 3, 5, executor="loop", lengths=True)
    add("lstm mask dropout", "lstm", 5, 4, 4, 6, mask=True, dropout=0.2, recurrent_dropout=0.2,
        seed=3)
    add("gru reset-before float64", "gru", 6, 3, 4, 5, reset_after=False, dtype=np.float64)
    add("lstm inference unrolled", "lstm", 6, 4, 5, 6, L=2, training=False, executor="unrolled")
    add("rnn_tanh zoneout residual", "rnn_tanh", 5, 3, 6, 6, zoneout_states=0.3, zoneout_outputs=0.2,
        residual=True, seed=5)
    add("lstm projection", "lstm", 5, 3, 4, 8, proj_size=4)
    return cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=10_000, help="measured calls (default 10000)")
    ap.add_argument("--warmup", type=int, default=1_000, help="calls before the first measurement")
    ap.add_argument("--threshold-mib", type=float, default=5.0)
    args = ap.parse_args(argv)

    cases = make_cases()
    for i in range(args.warmup):
        cases[i % len(cases)][1]()
    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    checkpoints = []
    for i in range(args.calls):
        cases[i % len(cases)][1]()
        if (i + 1) % (args.calls // 4 or 1) == 0:
            gc.collect()
            checkpoints.append(rss_bytes())
    elapsed = time.perf_counter() - t0
    gc.collect()
    after = rss_bytes()
    grew = (after - before) / 2**20
    mib = lambda b: f"{b / 2**20:.2f}"  # noqa: E731
    print(f"fusedrnn leak check: {args.calls} forward+backward calls over {len(cases)} cases "
          f"({', '.join(name for name, _ in cases)}) in {elapsed:.1f} s")
    print(f"RSS after {args.warmup} warm-up calls: {mib(before)} MiB; at quarters: "
          f"{', '.join(mib(c) for c in checkpoints)} MiB; at the end: {mib(after)} MiB; "
          f"growth {grew:+.2f} MiB (threshold {args.threshold_mib} MiB)")
    print(f"plan cache: {fusedrnn.functional.plan_cache_info()}")
    if grew > args.threshold_mib:
        print("FAIL: resident memory grew by more than the threshold", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
