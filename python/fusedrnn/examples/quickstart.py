"""Quickstart: train a small LSTM with fusedrnn's functional API on a toy task, on the CPU.

The task: read a sequence of random numbers and output, at every step, the running mean so far. A
linear read-out on top of a 1-layer LSTM learns it in a few hundred plain SGD steps (about a second). Everything runs
through ``fusedrnn.forward`` / ``fusedrnn.backward`` (the fused C++ kernels); NumPy does the rest.

    python -m fusedrnn.examples.quickstart [--steps 600] [--hidden 32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fusedrnn


def make_batch(rng, T, N):
    x = rng.standard_normal((T, N, 1)).astype(np.float32)
    target = np.cumsum(x, axis=0) / np.arange(1, T + 1, dtype=np.float32)[:, None, None]
    return x, target


def train(steps=600, hidden=32, T=20, N=64, lr=1.0, seed=0, log_every=100):
    """Trains and returns the list of losses (one per step)."""
    rng = np.random.default_rng(seed)
    w = fusedrnn.init_weights("lstm", 1, hidden, seed=seed)
    w_out = (rng.standard_normal((hidden, 1)) / np.sqrt(hidden)).astype(np.float32)
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        x, target = make_batch(rng, T, N)
        out = fusedrnn.forward(x, w, mode="lstm", hidden_size=hidden, training=True)
        pred = out.y @ w_out  # (T, N, 1)
        err = pred - target
        loss = float(np.mean(err**2))
        losses.append(loss)
        dpred = (2.0 / err.size) * err
        grad_out = np.einsum("tnh,tno->ho", out.y, dpred)
        grads = fusedrnn.backward(out.ctx, dy=dpred @ w_out.T)
        w -= lr * grads.dw
        w_out -= lr * grad_out
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss:.5f}")
    elapsed = time.perf_counter() - start
    if log_every:
        print(f"{steps} steps in {elapsed:.2f} s ({steps / elapsed:.0f} steps/s); "
              f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return losses


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--hidden", type=int, default=32)
    args = ap.parse_args(argv)
    info = fusedrnn.build_info()
    print(f"fusedrnn {info['version']}: {info['blas']}, SIMD {info['simd']}")
    train(steps=args.steps, hidden=args.hidden)


if __name__ == "__main__":
    main()
