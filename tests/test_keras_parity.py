"""The fused kernels against real Keras 3 (JAX backend) where Keras and cuDNN leave the fast path:
non-default activations (hard_sigmoid, relu, sigmoid, linear), the reset-before GRU, and masks
(left-padded and gapped, with zero_output_for_mask False and True). Weights are converted with
fusedrnn.converters.keras_to_flat. Tolerance as in test_converters.py: float32 results of two
implementations on these tiny problems differ by ~1e-7; 1e-5 * max(1, scale) separates that from
any semantic mismatch (order 0.1).

Keras runs its default lax.scan path (unroll=False). Its unroll=True path differs at a masked first
step: it outputs zeros there instead of the kept initial state, while the scan path (and fusedrnn)
output the state; every later step agrees between the two."""

import os

import numpy as np
import pytest

import fusedrnn
from fusedrnn import converters as cv

os.environ["KERAS_BACKEND"] = "jax"
keras = pytest.importorskip("keras")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

T, N, C, H = 6, 4, 3, 5
LAYERS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "SimpleRNN"}


def _mask(kind):
    m = np.ones((N, T), bool)  # Keras: (N, T)
    if kind == "left":
        for n, length in enumerate((6, 2, 4, 1)):
            m[n, :T - length] = False
    elif kind == "gaps":
        m[0, [1, 4]] = False
        m[1, 0] = False
        m[2, 5] = False
        m[3, ::2] = False
    return m


CASES = [
    # mode, keras kwargs, fusedrnn kwargs, mask kind, zero_output_for_mask
    ("lstm", dict(activation="relu", recurrent_activation="hard_sigmoid"),
     dict(activation="relu", recurrent_activation="hard_sigmoid"), None, False),
    ("lstm", {}, {}, "left", False),
    ("lstm", dict(recurrent_activation="hard_sigmoid"), dict(recurrent_activation="hard_sigmoid"),
     "gaps", True),
    ("gru", dict(reset_after=False), dict(reset_after=False), None, False),
    ("gru", dict(reset_after=False, activation="sigmoid"),
     dict(reset_after=False, activation="sigmoid"), "gaps", False),
    ("gru", dict(recurrent_activation="linear"), dict(recurrent_activation="linear"), "left", True),
    ("rnn_tanh", dict(activation="sigmoid"), dict(activation="sigmoid"), "gaps", False),
    ("rnn_tanh", dict(activation="linear"), dict(activation="linear"), "left", True),
]


@pytest.mark.parametrize("mode,kkw,fkw,mask_kind,zero_out", CASES)
def test_matches_keras(mode, kkw, fkw, mask_kind, zero_out):
    rng = np.random.default_rng(abs(hash((mode, mask_kind, zero_out))) % 2**32)
    layer = getattr(keras.layers, LAYERS[mode])(
        H, return_sequences=True, return_state=True, zero_output_for_mask=zero_out,
        kernel_initializer="zeros", recurrent_initializer="zeros", **kkw)
    x = rng.standard_normal((N, T, C)).astype(np.float32)
    layer.build((N, T, C))
    weights = [rng.uniform(-0.7, 0.7, w.shape).astype(np.float32) for w in layer.get_weights()]
    layer.set_weights(weights)
    reset_after = fkw.get("reset_after", True)
    flat = cv.keras_to_flat(weights, mode, C, H, reset_after=reset_after)
    mask = None if mask_kind is None else _mask(mask_kind)
    h0 = rng.standard_normal((N, H)).astype(np.float32)
    c0 = rng.standard_normal((N, H)).astype(np.float32)
    init = [h0, c0] if mode == "lstm" else [h0]
    out = layer(x, initial_state=init, mask=mask)
    k_y, k_h = np.asarray(out[0]), np.asarray(out[1])

    res = fusedrnn.forward(x, flat, mode=mode, hidden_size=H, batch_first=True, h0=h0[None],
                           c0=c0[None] if mode == "lstm" else None, mask=mask,
                           zero_masked_output=zero_out, **fkw)
    for name, got, want in (("y", res.y, k_y), ("hN", res.hN[0], k_h)):
        err = float(np.max(np.abs(got - want)))
        assert err <= 1e-5 * max(1.0, float(np.max(np.abs(want)))), f"{name}: {err:.3g}"
    if mode == "lstm":
        k_c = np.asarray(out[2])
        assert float(np.max(np.abs(res.cN[0] - k_c))) <= 1e-5 * max(1.0, float(np.max(np.abs(k_c))))
