"""Shared set-up for the tests that compare fusedrnn with real Keras 3 (JAX backend): the import,
the skip marker, the op-by-op fixture, the problem size, masks, the tolerance rule and JAX autodiff
of a Keras layer.

Tolerance: max|ours - Keras| <= rtol * max(1, scale), scale = max|Keras|, rtol 1e-5 in float32.
The problems are tiny (T = 5 steps, dot products of at most C + U = 7 terms, O(1) values): two
float32 implementations differ by ~1e-7 there, while a semantic mistake (a reversed sequence, a
mask applied wrongly, a swapped gate) gives errors of order 0.1.
"""

import os

import numpy as np
import pytest

os.environ["KERAS_BACKEND"] = "jax"
try:
    import jax
    import jax.numpy as jnp
    import keras

    if keras.backend.backend() != "jax":  # keras imported earlier with another backend
        keras = None
except ImportError:
    jax = jnp = keras = None

needs_keras = pytest.mark.skipif(keras is None, reason="needs keras 3 with the JAX backend")
# Keras's Variable.__array__ predates NumPy 2's copy keyword; get_weights() warns about it.
ignore_array_warning = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning")

N, T, C, U = 3, 5, 4, 3


@pytest.fixture(autouse=True)
def keras_op_by_op():
    """Keras's lax.scan is compiled by XLA anew at every call (~0.2 s); run op by op instead
    (jax.disable_jit: the same Keras code and math, each op's compiled kernel reused), ~20 ms.
    Autouse in every module that imports it."""
    if keras is None:
        yield
    else:
        with jax.disable_jit():
            yield


def rng_for(*key):
    return np.random.default_rng(abs(hash(repr(key))) % 2**32)


def keras_mask(kind):
    """(N, T) Keras masks: left-padded (lengths 5, 3, 1) or with gaps (a masked first and last
    step included); None for no mask."""
    if kind is None:
        return None
    m = np.ones((N, T), bool)
    if kind == "left":
        m[1, :2] = False
        m[2, :4] = False
    else:  # gaps
        m[0, [1, 4]] = False
        m[1, 0] = False
        m[2, ::2] = False
    return m


def close(name, got, want, rtol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    assert err <= rtol * scale, f"{name}: max abs err {err:.3g} > {rtol * scale:.3g}"


def keras_grads(k, x, init, mask, cotangents):
    """JAX autodiff of sum(output_i * cotangent_i) over the Keras layer's (flattened) outputs;
    None cotangents are skipped. Returns (weight grads, x grad, init grads or None), as NumPy."""
    tv = [v.value for v in k.trainable_variables]
    ntv = [v.value for v in k.non_trainable_variables]

    def loss(tv, x, init):
        kw = {} if mask is None else {"mask": jnp.asarray(mask)}
        if init is not None:
            kw["initial_state"] = init
        out, _ = k.stateless_call(tv, ntv, x, **kw)
        flat = jax.tree_util.tree_leaves(out)
        assert len(flat) == len(cotangents)
        return sum(jnp.sum(o * c) for o, c in zip(flat, cotangents) if c is not None)

    init = None if init is None else jax.tree_util.tree_map(jnp.asarray, init)
    g = jax.grad(loss, argnums=(0, 1, 2) if init is not None else (0, 1))(tv, jnp.asarray(x), init)
    return ([np.asarray(a) for a in g[0]], np.asarray(g[1]),
            None if init is None else jax.tree_util.tree_map(np.asarray, g[2]))
