"""fusedrnn's Keras-style layers vs Keras 3 (JAX backend) on the options cuDNN refuses.

On a GPU, Keras (like PyTorch) leaves cuDNN for a slow per-step loop as soon as a layer has a
non-default activation, recurrent dropout, a left-padded mask or the reset-before GRU; fusedrnn runs
all of them in its fused kernels. This script times forward (inference) and train (forward +
backward) for LSTM(256) / GRU(256) layers with C=256, N=32, T=50 on each option, Keras vs fusedrnn
with the same weights, interleaved, median of --repeats calls after warm-up.

    python bench/keras_options.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import fusedrnn  # noqa: E402

N, T, C, U = 32, 50, 256, 256

CASES = [
    ("LSTM default", "LSTM", {}, None),
    ("LSTM hard_sigmoid gates", "LSTM", dict(recurrent_activation="hard_sigmoid"), None),
    ("LSTM relu cell", "LSTM", dict(activation="relu"), None),
    ("LSTM left-padded mask", "LSTM", {}, "left"),
    ("LSTM recurrent_dropout=0.2", "LSTM", dict(recurrent_dropout=0.2), None),
    ("GRU reset_after=False", "GRU", dict(reset_after=False), None),
]


def left_padded_mask(rng):
    lengths = rng.integers(T // 5, T + 1, N)
    return np.arange(T)[None, :] >= (T - lengths)[:, None]


def keras_fns(layer):
    """Jitted forward and value-and-grad of sum(output) for a Keras layer, stateless."""
    tv = [v.value for v in layer.trainable_variables]
    ntv = [v.value for v in layer.non_trainable_variables]

    def out(tv_, x, mask, training):
        y, _ = layer.stateless_call(tv_, ntv, x, mask=mask, training=training)
        return y

    fwd = jax.jit(lambda tv_, x, mask: out(tv_, x, mask, False))
    train = jax.jit(jax.value_and_grad(lambda tv_, x, mask: out(tv_, x, mask, True).sum(),
                                       argnums=(0, 1)))
    return tv, fwd, train


def timed(fn):
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, T, C)).astype(np.float32)
    print(f"fusedrnn {fusedrnn.__version__} ({fusedrnn.build_info()['simd']}) vs keras "
          f"{keras.__version__} (jax {jax.__version__}); N={N} T={T} C={C} units={U}; "
          f"median of {args.repeats}\n")
    print("| case | Keras fwd ms | fusedrnn fwd ms | Keras train ms | fusedrnn train ms | train speedup |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, cls, kw, mask_kind in CASES:
        mask = left_padded_mask(rng) if mask_kind else None
        k_layer = getattr(keras.layers, cls)(U, return_sequences=True, **kw)
        k_layer.build((N, T, C))
        f_layer = getattr(fusedrnn, cls)(U, return_sequences=True, **kw)
        f_layer.build((N, T, C))
        f_layer.set_weights(k_layer.get_weights())
        tv, k_fwd, k_train = keras_fns(k_layer)
        km = None if mask is None else jax.numpy.asarray(mask)

        def run_k_fwd():
            jax.block_until_ready(k_fwd(tv, x, km))

        def run_k_train():
            jax.block_until_ready(k_train(tv, x, km))

        def run_f_fwd():
            f_layer(x, mask=mask)

        def run_f_train():
            y = f_layer(x, mask=mask, training=True)
            f_layer.backward(np.ones_like(y))

        for fn in (run_k_fwd, run_k_train, run_f_fwd, run_f_train):  # warm-up (and JAX compile)
            fn()
            fn()
        times = {k: [] for k in ("kf", "ff", "kt", "ft")}
        for _ in range(args.repeats):
            times["kf"].append(timed(run_k_fwd))
            times["ff"].append(timed(run_f_fwd))
            times["kt"].append(timed(run_k_train))
            times["ft"].append(timed(run_f_train))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {name} | {med['kf']:.1f} | {med['ff']:.1f} | {med['kt']:.1f} | {med['ft']:.1f} "
              f"| {med['kt'] / med['ft']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
