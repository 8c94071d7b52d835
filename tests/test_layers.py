"""Keras-style layers (fusedrnn.layers) against real Keras 3 layers (JAX backend), same weights.

Every Keras comparison builds the Keras layer, draws weights uniform in +-0.7, loads the same list
into both with set_weights, and compares outputs and states (forward) or, for gradients, our
explicit ``backward`` against JAX autodiff of the Keras layer through its stateless API
(``layer.stateless_call(trainable, non_trainable, x, ...)``). Keras runs its default lax.scan path
(unroll=False; its unroll=True path differs at masked first steps, see test_keras_parity.py).

Tolerance, as in test_converters.py: max|ours - Keras| <= rtol * max(1, scale), scale = max|Keras|,
rtol 1e-5 in float32. The problems are tiny (T = 5 steps, dot products of at most C + U = 7 terms,
O(1) values), two float32 implementations differ by ~1e-7 there (gradients a few 1e-7), while a
semantic mistake (a reversed sequence, a mask applied wrongly, a swapped gate) gives errors of
order 0.1.

Keras's calls dominate the cost; they run op by op (``jax.disable_jit``),
which avoids an XLA compile of the scan at every call (keras_support.keras_op_by_op), and every
case checks several features.
"""


import numpy as np
import pytest

import fusedrnn
from fusedrnn import converters as cv
from fusedrnn import layers as L

from keras_support import (  # noqa: F401 (keras_op_by_op: an autouse fixture)
    C, N, T, U, close, ignore_array_warning, keras, keras_grads, keras_mask,
    keras_op_by_op, needs_keras, rng_for)

pytestmark = ignore_array_warning




def _x(rng, n=N, t=T, c=C):
    return rng.standard_normal((n, t, c)).astype(np.float32)



def _states(rng, cls, n=1):
    k = 2 if cls == "LSTM" else 1
    return [rng.standard_normal((N, U)).astype(np.float32) for _ in range(k * n)]



def close_all(name, got, want):
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    assert len(got) == len(want), f"{name}: {len(got)} results, Keras {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        close(f"{name}[{i}]", g, w)


def keras_pair(cls, rng, bidirectional="-", backward=None, **kw):
    """A built Keras layer and ours (built by set_weights) with the same random weights;
    ``bidirectional``: a merge_mode to wrap both in Bidirectional ("-": no wrapping)."""
    def make(mod, **extra):
        if mod is keras.layers:  # the tests set the weights; skip Keras's slow orthogonal init
            extra = dict(kernel_initializer="zeros", recurrent_initializer="zeros", **extra)
        return getattr(mod, cls)(U, **kw, **extra)

    k, ours = make(keras.layers), make(L)
    if bidirectional != "-":
        kb = ob = None
        if backward is not None:
            bcls, bkw = backward
            kb = getattr(keras.layers, bcls)(U, go_backwards=True, **bkw)
            ob = getattr(L, bcls)(U, go_backwards=True, **bkw)
        k = keras.layers.Bidirectional(k, merge_mode=bidirectional, backward_layer=kb)
        ours = L.Bidirectional(ours, merge_mode=bidirectional, backward_layer=ob)
    k.build((N, T, C))
    weights = [rng.uniform(-0.7, 0.7, w.shape).astype(np.float32) for w in k.get_weights()]
    k.set_weights(weights)
    ours.set_weights(weights)
    return k, ours


# --------------------------------------------------------------------------------------------------
# Single layers: outputs and states
# --------------------------------------------------------------------------------------------------

FORWARD_CASES = [
    # class, kwargs, mask, initial_state
    ("LSTM", dict(return_sequences=True, return_state=True), None, True),
    ("LSTM", dict(return_state=True), "left", False),
    ("LSTM", dict(return_sequences=True, go_backwards=True), "left", True),
    ("LSTM", dict(return_sequences=True, use_bias=False, activation="relu",
                  recurrent_activation="hard_sigmoid"), None, False),
    ("GRU", dict(return_sequences=True, return_state=True, go_backwards=True), None, True),
    ("GRU", dict(reset_after=False, return_state=True), "gaps", True),
    ("GRU", dict(reset_after=False, return_sequences=True, zero_output_for_mask=True), "left",
     False),
    ("GRU", dict(return_sequences=True, use_bias=False, go_backwards=True,
                 zero_output_for_mask=True), "gaps", False),
    ("SimpleRNN", dict(return_sequences=True, return_state=True, activation="relu"), None, True),
    ("SimpleRNN", dict(go_backwards=True, zero_output_for_mask=True, return_state=True), "left",
     False),
    ("SimpleRNN", {}, None, False),
    ("SimpleRNN", dict(return_sequences=True, activation="softplus"), None, True),
    ("GRU", dict(return_sequences=True, activation="softsign"), "gaps", False),
]


@needs_keras
@pytest.mark.parametrize("cls,kw,mask_kind,init", FORWARD_CASES)
def test_forward_matches_keras(cls, kw, mask_kind, init):
    rng = rng_for(cls, kw, mask_kind, init)
    k, ours = keras_pair(cls, rng, **kw)
    x, mask = _x(rng), keras_mask(mask_kind)
    state = _states(rng, cls) if init else None
    want = k(x, initial_state=state, mask=mask)
    got = ours(x, initial_state=state, mask=mask)
    assert isinstance(got, tuple) == isinstance(want, tuple)
    close_all(cls, got, want)
    if cls == "SimpleRNN" and kw.get("zero_output_for_mask") and not kw.get("return_sequences"):
        # Keras's last output is the output of the last step processed: with go_backwards the
        # left padding comes last, and zero_output_for_mask makes it zero (the state is not).
        out, h = got
        assert np.all(out[1:] == 0) and np.all(h[1:] != 0)


@needs_keras
def test_stateful_matches_keras():
    rng = rng_for("stateful")
    k, ours = keras_pair("LSTM", rng, stateful=True, return_sequences=True)
    x1, x2 = _x(rng), _x(rng)
    assert ours.states is None
    for step, x in enumerate((x1, x2)):
        close(f"call {step}", ours(x), k(x))
        close_all(f"states after call {step}", ours.states, [v.value for v in k.states])
    ours.reset_states()
    k.reset_states()
    assert all(np.all(s == 0) for s in ours.states)
    close("after reset", ours(x2), k(x2))
    # reset_states(states) continues from given states, as initial_state does
    h, c = _states(rng, "LSTM")
    ours.reset_states([h, c])
    fresh = L.LSTM(U, return_sequences=True)
    fresh.set_weights(ours.get_weights())
    close("reset to states", ours(x1), fresh(x1, initial_state=[h, c]))


# --------------------------------------------------------------------------------------------------
# Bidirectional
# --------------------------------------------------------------------------------------------------

BIDIRECTIONAL_CASES = [
    # merge_mode, class, kwargs, mask, initial_state, backward layer (class, kwargs) or None
    ("concat", "LSTM", dict(return_sequences=True, return_state=True), "left", True, None),
    ("sum", "GRU", {}, "gaps", False, None),
    ("mul", "SimpleRNN", dict(return_sequences=True), None, True, None),
    ("ave", "LSTM", dict(return_state=True), None, True, None),
    (None, "GRU", dict(reset_after=False, return_sequences=True, return_state=True), "left",
     False, None),
    ("concat", "LSTM", dict(return_sequences=True), "gaps", False,
     ("LSTM", dict(activation="relu", return_sequences=True))),
]


@needs_keras
@pytest.mark.parametrize("merge_mode,cls,kw,mask_kind,init,backward", BIDIRECTIONAL_CASES)
def test_bidirectional_matches_keras(merge_mode, cls, kw, mask_kind, init, backward):
    rng = rng_for("bi", merge_mode, cls, kw, mask_kind, init)
    k, ours = keras_pair(cls, rng, bidirectional=merge_mode, backward=backward, **kw)
    assert ours._fusable() == (backward is None)
    x, mask = _x(rng), keras_mask(mask_kind)
    state = _states(rng, cls, 2) if init else None
    want = k(x, initial_state=state, mask=mask)
    got = ours(x, initial_state=state, mask=mask)
    assert isinstance(got, tuple) == isinstance(want, tuple)
    close_all(f"Bidirectional({cls}, {merge_mode})", got, want)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("cls,kw", [("LSTM", dict(return_sequences=True, return_state=True)),
                                    ("GRU", dict(return_state=True))])
def test_bidirectional_fused_equals_two_calls(merge_mode, cls, kw, monkeypatch):
    """The one fused bidirectional call and the two single-direction calls agree, forward and
    backward (with a mask and initial states)."""
    rng = rng_for("fused", merge_mode, cls)
    layer = L.Bidirectional(getattr(L, cls)(U, **kw), merge_mode=merge_mode)
    layer.build((N, T, C))
    x, mask, init = _x(rng), keras_mask("left"), _states(rng, cls, 2)
    outs = layer(x, initial_state=init, mask=mask, training=True)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    n_out = 2 if merge_mode is None else 1
    d_out = [rng.standard_normal(o.shape).astype(np.float32) for o in outs]
    d_output = d_out[:n_out] if merge_mode is None else d_out[0]
    fused = layer.backward(d_output, d_out[n_out:])
    fused_grads = layer.grads
    monkeypatch.setattr(layer, "_fusable", lambda: False)
    outs2 = layer(x, initial_state=init, mask=mask, training=True)
    close_all("outputs", outs, outs2)
    two = layer.backward(d_output, d_out[n_out:])
    close("dx", fused[0], two[0])
    close_all("d_initial_state", fused[1], two[1])
    close_all("grads", fused_grads, layer.grads)


def test_bidirectional_stateful_and_states():
    rng = rng_for("bi-stateful")
    bi = L.Bidirectional(L.GRU(U, stateful=True, return_sequences=True))
    x1, x2 = _x(rng), _x(rng)
    bi(x1)
    states = bi.states
    assert len(states) == 2 and all(s.shape == (N, U) for s in states)
    fresh = L.Bidirectional(L.GRU(U, return_sequences=True))
    fresh.set_weights(bi.get_weights())
    close("carried", bi(x2), fresh(x2, initial_state=states))
    bi.reset_states()
    close("reset", bi(x1), fresh(x1))
    with pytest.raises(AttributeError, match="not stateful"):
        fresh.reset_states()


# --------------------------------------------------------------------------------------------------
# Gradients against JAX autodiff of the Keras layer
# --------------------------------------------------------------------------------------------------

GRAD_CASES = [
    # class, kwargs, mask, initial_state, bidirectional merge_mode ("-" = single layer)
    ("LSTM", dict(return_sequences=True, return_state=True), "left", True, "-"),
    ("GRU", dict(reset_after=False, go_backwards=True, zero_output_for_mask=True,
                 return_state=True), "left", False, "-"),
    ("SimpleRNN", dict(use_bias=False, return_sequences=True, go_backwards=True), "gaps", True,
     "-"),
    ("LSTM", dict(return_state=True), None, True, "concat"),
    ("GRU", dict(return_sequences=True), "gaps", False, "mul"),
]


@needs_keras
@pytest.mark.parametrize("cls,kw,mask_kind,init,merge_mode", GRAD_CASES)
def test_backward_matches_jax_autodiff(cls, kw, mask_kind, init, merge_mode):
    rng = rng_for("grad", cls, kw, mask_kind, init, merge_mode)
    bi = merge_mode != "-"
    k, ours = keras_pair(cls, rng, bidirectional=merge_mode, **kw)
    x, mask = _x(rng), keras_mask(mask_kind)
    state = _states(rng, cls, 2 if bi else 1) if init else None
    outs = ours(x, initial_state=state, mask=mask, training=True)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    cot = [rng.standard_normal(o.shape).astype(np.float32) for o in outs]
    w_grads, dx_want, dinit_want = keras_grads(k, x, state, mask, cot)
    got = ours.backward(cot[0], cot[1:] if len(cot) > 1 else None)
    dx = got[0] if init else got
    close("dx", dx, dx_want)
    if init:
        close_all("d_initial_state", got[1], dinit_want)
    close_all("weight grads", ours.grads, w_grads)
    if kw.get("use_bias") is False:
        assert len(ours.grads) == 2 and not np.any(ours.flat_grad[-2 * U:])


# --------------------------------------------------------------------------------------------------
# Parameters, weights and initializers
# --------------------------------------------------------------------------------------------------

GUIDE_COUNTS = [  # the Keras RNN guide's models: layer, input features, Keras's count
    (lambda: L.LSTM(128), 64, 98_816),
    (lambda: L.GRU(256), 64, 247_296),
    (lambda: L.SimpleRNN(128), 256, 49_280),
    (lambda: L.Bidirectional(L.LSTM(64)), 10, 38_400),
]


@pytest.mark.parametrize("make,features,count", GUIDE_COUNTS)
def test_param_counts_of_the_keras_guide(make, features, count):
    layer = make()
    with pytest.raises(ValueError, match="not built"):
        layer.count_params()
    layer.build((None, None, features))
    assert layer.count_params() == count
    assert sum(w.size for w in layer.get_weights()) == count


@needs_keras
@pytest.mark.parametrize("cls,kw", [("LSTM", dict(use_bias=False)), ("GRU", {}),
                                    ("GRU", dict(reset_after=False)), ("SimpleRNN", {})])
def test_param_counts_and_shapes_match_keras(cls, kw):
    k = getattr(keras.layers, cls)(U, kernel_initializer="zeros", recurrent_initializer="zeros",
                                   **kw)
    k.build((None, None, C))
    ours = getattr(L, cls)(U, **kw)
    ours.build((None, None, C))
    assert ours.count_params() == k.count_params()
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in k.get_weights()]


def test_default_initializers_follow_keras():
    layer = L.LSTM(8, seed=1)
    layer.build((2, 3, 20))
    kernel, rec, bias = layer.get_weights()
    assert kernel.dtype == np.float32
    limit = np.sqrt(6.0 / (20 + 32))  # glorot_uniform: fan_in + fan_out of (20, 32)
    assert np.max(np.abs(kernel)) <= limit and np.max(np.abs(kernel)) > 0.8 * limit
    np.testing.assert_allclose(rec @ rec.T, np.eye(8), atol=1e-5)  # orthogonal (8, 32): rows
    np.testing.assert_array_equal(bias, np.r_[np.zeros(8), np.ones(8), np.zeros(16)])
    assert not np.any(L.LSTM(8, unit_forget_bias=False).get_weights())  # unbuilt: []
    nb = L.LSTM(8, unit_forget_bias=False)
    nb.build((None, None, 4))
    assert not np.any(nb.get_weights()[2])
    g = L.GRU(4)
    g.build((None, None, 3))
    assert g.get_weights()[2].shape == (2, 12) and not np.any(g.get_weights()[2])
    # The flat vector keeps Keras's single bias in b_ih and b_hh = 0.
    flat = layer.flat_weights
    assert flat.shape == (fusedrnn.param_size("lstm", 20, 8),)
    np.testing.assert_array_equal(flat[-32:], 0)


def test_initializers_names_callables_and_seeds():
    def make(**kw):
        layer = L.GRU(4, **kw)
        layer.build((None, None, 3))
        return layer.get_weights()

    k, r, b = make(kernel_initializer="ones", recurrent_initializer="zeros",
                   bias_initializer="Ones")
    assert np.all(k == 1) and np.all(r == 0) and np.all(b == 1)
    seen = []

    def const(shape, dtype=None):
        seen.append((shape, dtype))
        return np.full(shape, 0.25)

    k, r, b = make(kernel_initializer=const, recurrent_initializer=lambda shape: np.eye(*shape)
                   if shape[0] == shape[1] else np.ones(shape), bias_initializer=const)
    assert np.all(k == 0.25) and np.all(r == 1) and np.all(b == 0.25)
    assert seen == [((3, 12), "float32"), ((2, 12), "float32")]
    same = [make(seed=7) for _ in range(2)]
    for a, b in zip(*same):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(make(seed=7)[0], make(seed=8)[0])
    assert not np.array_equal(make()[0], make()[0])
    k = make(kernel_initializer="orthogonal")[0]  # (3, 12): orthonormal rows
    np.testing.assert_allclose(k @ k.T, np.eye(3), atol=1e-5)
    if keras is not None:  # a Keras initializer object is a callable(shape, dtype)
        k = make(kernel_initializer=keras.initializers.Constant(0.5))[0]
        assert np.all(k == 0.5)
    with pytest.raises(ValueError, match="kernel_initializer"):
        L.LSTM(2, kernel_initializer="no_such_init")
    with pytest.raises(TypeError, match="bias_initializer"):
        L.LSTM(2, bias_initializer=3)
    with pytest.raises(ValueError, match="recurrent_initializer: the initializer returned shape"):
        make(recurrent_initializer=lambda shape: np.zeros(3))
    # Bidirectional: the backward copy draws other weights than the forward copy
    bi = L.Bidirectional(L.LSTM(3, seed=0))
    bi.build((None, None, 2))
    w = bi.get_weights()
    assert not np.array_equal(w[0], w[3])


def test_set_weights_get_weights_round_trip_and_checks():
    rng = rng_for("weights")
    layer = L.GRU(U, reset_after=False)
    shapes = cv.keras_weight_shapes("gru", C, U, reset_after=False)
    weights = [rng.standard_normal(s) for s in shapes]  # float64 lists are cast
    layer.set_weights(weights)
    assert layer.built and layer.input_dim == C
    for got, want in zip(layer.get_weights(), weights):
        np.testing.assert_array_equal(got, want.astype(np.float32))
    with pytest.raises(ValueError, match=r"weights: GRU expects 3 arrays"):
        layer.set_weights(weights[:2])
    with pytest.raises(ValueError, match=r"weights\[1\]: expected shape"):
        layer.set_weights([weights[0], weights[1][:, :3], weights[2]])
    with pytest.raises(TypeError, match="weights"):
        layer.set_weights(np.zeros(3))
    nb = L.SimpleRNN(U, use_bias=False)
    nb.build((None, None, C))
    flat = nb.flat_weights.copy()
    flat[-1] = 1.0
    with pytest.raises(ValueError, match="flat_weights: use_bias=False"):
        nb.flat_weights = flat
    with pytest.raises(ValueError, match="flat_weights: expected shape"):
        nb.flat_weights = flat[:-1]


# --------------------------------------------------------------------------------------------------
# Backward: structure and bookkeeping
# --------------------------------------------------------------------------------------------------


def test_backward_bookkeeping():
    rng = rng_for("bookkeeping")
    layer = L.LSTM(U, return_sequences=True, seed=0)
    x = _x(rng)
    with pytest.raises(RuntimeError, match="training=True"):
        layer(x)
        layer.backward(np.ones((N, T, U), np.float32))
    y = layer(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    layer(_x(rng))  # an inference call in between does not replace the training context
    np.testing.assert_array_equal(layer.backward(dy), dx)
    assert dx.shape == x.shape and dx.dtype == np.float32
    # flat_grad: Keras's gradients in the flat layout (bias in b_ih, zero for the extra b_hh), so
    # an update of the flat vector is Keras's update of its list.
    np.testing.assert_array_equal(layer.flat_grad, cv.keras_to_flat(layer.grads, "lstm", C, U))
    before = layer.get_weights()
    layer.flat_weights = layer.flat_weights - 0.1 * layer.flat_grad
    for w0, g, w1 in zip(before, layer.grads, layer.get_weights()):
        np.testing.assert_allclose(w1, w0 - 0.1 * g, atol=1e-6)
    with pytest.raises(ValueError, match="d_output"):
        layer.backward(np.ones((N, U), np.float32))
    with pytest.raises(ValueError, match="d_states"):
        layer.backward(dy, [np.ones((N, U), np.float32)])
    # use_bias=False: bias gradients exactly zero, and no bias in the Keras list
    nb = L.GRU(U, use_bias=False, return_state=True)
    out, h = nb(x, training=True)
    nb.backward(np.ones_like(out), [np.ones_like(h)])
    assert len(nb.grads) == 2
    piece = {p.name: p for p in fusedrnn.param_layout("gru", C, U)}["l0_i2h_bias"]
    assert not np.any(nb.flat_grad[piece.offset:]) and np.any(nb.flat_grad[:piece.offset])
    # with only d_states, return_sequences=False: the output's gradient is that of h
    both = nb.backward(np.ones_like(out))
    np.testing.assert_array_equal(nb.backward(None, [np.ones_like(h)]), both)


def test_float64_and_unroll():
    rng = rng_for("f64")
    x = _x(rng)
    a = L.GRU(U, return_sequences=True, seed=3)
    b = L.GRU(U, return_sequences=True, seed=3, dtype="float64", unroll=True)
    ya, yb = a(x), b(x)
    assert yb.dtype == np.float64
    close("float64 vs float32", ya, yb)
    c = L.GRU(U, return_sequences=True, seed=3, unroll=True)
    np.testing.assert_array_equal(c(x), ya)  # unroll: the same fused path for now
    yb = b(x, training=True)
    assert b.backward(np.ones_like(yb)).dtype == np.float64


def test_config_round_trip_and_bidirectional_copies():
    layer = L.GRU(5, activation="relu", reset_after=False, go_backwards=True, seed=4,
                  return_state=True, name="g")
    clone = L.GRU.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    layer = L.LSTM(3, return_sequences=True)
    layer.build((None, None, 2))
    bi = L.Bidirectional(layer)  # as Keras: new layers from the config, fresh weights
    assert bi.forward_layer is not layer and not bi.forward_layer.built
    assert not bi.forward_layer.go_backwards and bi.backward_layer.go_backwards
    # as Keras: zero_output_for_mask = return_sequences on both layers
    assert bi.forward_layer.zero_output_for_mask and bi.backward_layer.zero_output_for_mask


# --------------------------------------------------------------------------------------------------
# The Keras RNN guide's shape examples
# --------------------------------------------------------------------------------------------------


def test_keras_guide_examples():
    rng = rng_for("guide")
    # Encoder-decoder: the encoder's final states start the decoder.
    encoder_embedded = rng.standard_normal((2, 6, 64)).astype(np.float32)
    decoder_embedded = rng.standard_normal((2, 7, 64)).astype(np.float32)
    output, state_h, state_c = L.LSTM(64, return_state=True, name="encoder")(encoder_embedded)
    assert output.shape == state_h.shape == state_c.shape == (2, 64)
    np.testing.assert_array_equal(output, state_h)
    decoder_output = L.LSTM(64, name="decoder")(decoder_embedded,
                                                initial_state=[state_h, state_c])
    assert decoder_output.shape == (2, 64)

    # Stateful: paragraphs fed one after another, then reset; states reused by a new layer.
    paragraphs = [rng.standard_normal((2, 5, 8)).astype(np.float32) for _ in range(4)]
    lstm_layer = L.LSTM(16, stateful=True, return_sequences=True, seed=0)
    for p in paragraphs[:3]:
        output = lstm_layer(p)
    existing_state = lstm_layer.states
    new_lstm_layer = L.LSTM(16, return_sequences=True)
    new_lstm_layer.set_weights(lstm_layer.get_weights())
    close("state reuse", new_lstm_layer(paragraphs[3], initial_state=existing_state),
          lstm_layer(paragraphs[3]))
    lstm_layer.reset_states()
    close("after reset", lstm_layer(paragraphs[0]), new_lstm_layer(paragraphs[0]))

    # Stacked Bidirectional layers.
    x = rng.standard_normal((2, 5, 10)).astype(np.float32)
    y = L.Bidirectional(L.LSTM(64, return_sequences=True))(x)
    assert y.shape == (2, 5, 128)
    assert L.Bidirectional(L.LSTM(32))(y).shape == (2, 64)


# --------------------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------------------


def _identity_rnn(rate, recurrent):
    """A linear SimpleRNN that exposes its dropout mask: kernel I and recurrent 0 (y = x * m), or
    kernel I and recurrent I with x = e_0 at the first step only (y_1 = m_rec)."""
    kw = dict(recurrent_dropout=rate) if recurrent else dict(dropout=rate)
    layer = L.SimpleRNN(4, activation="linear", use_bias=False, return_sequences=True, seed=11,
                        **kw)
    layer.set_weights([np.eye(4, dtype=np.float32),
                       np.eye(4, dtype=np.float32) if recurrent else np.zeros((4, 4), np.float32)])
    return layer


def test_dropout_masks_like_keras():
    p, n = 0.5, 400
    x = np.ones((n, 3, 4), np.float32)
    layer = _identity_rnn(p, recurrent=False)
    y = layer(x, training=True)
    masks = y[:, 0]
    assert set(np.unique(masks)) <= {0.0, np.float32(1 / (1 - p))}
    assert abs(float(np.mean(masks == 0)) - p) < 0.08
    np.testing.assert_array_equal(y, np.repeat(masks[:, None], 3, axis=1))  # one mask per sequence
    np.testing.assert_array_equal(layer.backward(np.ones_like(y)), y)  # dx = dy * m
    assert not np.array_equal(layer(x, training=True), y)  # a new mask every call
    np.testing.assert_array_equal(_identity_rnn(p, False)(x, training=True), y)  # same seed
    np.testing.assert_array_equal(layer(x), x)  # training=False: no dropout
    xr = np.zeros((n, 3, 4), np.float32)
    xr[:, 0] = 1.0
    yr = _identity_rnn(p, recurrent=True)(xr, training=True)
    assert set(np.unique(yr[:, 1])) <= {0.0, np.float32(1 / (1 - p))}
    assert abs(float(np.mean(yr[:, 1] == 0)) - p) < 0.08
    if keras is not None:  # Keras's masks: the same values, one per sequence, same rate
        for recurrent in (False, True):
            k = keras.layers.SimpleRNN(4, activation="linear", use_bias=False,
                                       return_sequences=True, seed=3, kernel_initializer="identity",
                                       recurrent_initializer="identity" if recurrent else "zeros",
                                       **{"recurrent_dropout" if recurrent else "dropout": p})
            ky = np.asarray(k(xr if recurrent else x, training=True))
            km = ky[:, 1] if recurrent else ky[:, 0]
            assert set(np.unique(km)) <= {0.0, np.float32(1 / (1 - p))}
            assert abs(float(np.mean(km == 0)) - p) < 0.08
            if not recurrent:
                np.testing.assert_array_equal(ky, np.repeat(ky[:, :1], 3, axis=1))


@pytest.mark.parametrize("make,per_gate", [
    (lambda: L.LSTM(3, dropout=0.3, seed=1), False),
    (lambda: L.LSTM(3, recurrent_dropout=0.3, seed=1), True),
    (lambda: L.GRU(3, dropout=0.2, recurrent_dropout=0.3, seed=1, reset_after=False), True),
    (lambda: L.RNN(L.GRUCell(3, recurrent_dropout=0.3, seed=1)), True),
])
def test_recurrent_dropout_draws_a_mask_per_gate_as_keras(monkeypatch, make, per_gate):
    """Keras' LSTM and GRU switch to implementation=1 with recurrent_dropout > 0: one input and one
    recurrent mask per gate (the kernel's dropout_per_gate, checked against the reference in
    test_dropout.py); with input dropout only, one mask for all gates."""
    seen = []
    real = fusedrnn.functional.forward

    def spy(*a, **kw):
        seen.append(kw.get("dropout_per_gate", False))
        return real(*a, **kw)

    monkeypatch.setattr(fusedrnn.functional, "forward", spy)
    layer = make()
    x = np.ones((2, 4, 5), np.float32)
    y = layer(x, training=True)
    assert seen and all(s == per_gate for s in seen)
    seen.clear()
    layer(x)  # inference: no dropout, no per-gate masks
    assert seen and not any(seen)
    assert y.shape == (2, 3)


def test_dropout_layers():
    """Rates of 0 and inference calls apply no dropout; the same seed gives the same masks; the
    gradient of a training call with dropout is that of the function it computed (central
    differences in float64 through fresh layers with the same seed, whose first calls draw the same
    masks)."""
    rng = rng_for("dropout")
    x = rng.standard_normal((N, T, C))
    kw = dict(return_sequences=True, go_backwards=True, dtype="float64")
    plain = L.LSTM(U, seed=5, **kw)
    y0 = plain(x)
    np.testing.assert_array_equal(L.LSTM(U, seed=5, dropout=0.0, **kw)(x, training=True), y0)
    drop = L.LSTM(U, seed=5, dropout=0.3, recurrent_dropout=0.3, **kw)
    np.testing.assert_array_equal(drop(x), y0)
    y1 = drop(x, training=True)
    assert not np.allclose(y1, y0)
    np.testing.assert_array_equal(L.LSTM(U, seed=5, dropout=0.3, recurrent_dropout=0.3, **kw)(
        x, training=True), y1)
    for make in (lambda: L.LSTM(U, seed=5, dropout=0.3, recurrent_dropout=0.3, **kw),
                 lambda: L.Bidirectional(L.GRU(U, seed=5, dropout=0.3, recurrent_dropout=0.3,
                                               **dict(kw, go_backwards=False)))):
        layer = make()
        y = layer(x, training=True)
        dy = rng.standard_normal(y.shape)
        dx = layer.backward(dy)
        v = rng.standard_normal(x.shape)
        eps = 1e-6
        f = [float(np.sum(make()(x + s * eps * v, training=True) * dy)) for s in (1, -1)]
        np.testing.assert_allclose((f[0] - f[1]) / (2 * eps), np.sum(dx * v), rtol=1e-6)
    bi = L.Bidirectional(L.GRU(U, seed=5, dropout=0.3, return_sequences=True))
    assert bi._fusable()
    yb = bi(x.astype(np.float32), training=True)
    assert not np.allclose(yb, bi(x.astype(np.float32)))


# --------------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------------

BAD_CONSTRUCTION = [
    (lambda: L.LSTM(0), ValueError, "units"),
    (lambda: L.LSTM(2.5), TypeError, "units"),
    (lambda: L.GRU(True), TypeError, "units"),
    (lambda: L.LSTM(2, activation="swish"), ValueError, "activation"),
    (lambda: L.GRU(2, recurrent_activation=3), TypeError, "recurrent_activation"),
    (lambda: L.LSTM(2, dropout=1.0), ValueError, "dropout"),
    (lambda: L.LSTM(2, recurrent_dropout="0.1"), TypeError, "recurrent_dropout"),
    (lambda: L.LSTM(2, seed=-1), ValueError, "seed"),
    (lambda: L.LSTM(2, return_sequences=1), TypeError, "return_sequences"),
    (lambda: L.GRU(2, reset_after=None), TypeError, "reset_after"),
    (lambda: L.LSTM(2, dtype="float16"), ValueError, "dtype"),
    (lambda: L.LSTM(2, no_such_argument=1), TypeError, "no_such_argument"),
    (lambda: L.LSTM(2, kernel_regularizer="l2"), NotImplementedError, "kernel_regularizer"),
    (lambda: L.Bidirectional(object()), TypeError, "layer"),
    (lambda: L.Bidirectional(L.LSTM(2), merge_mode="max"), ValueError, "merge_mode"),
    (lambda: L.Bidirectional(L.LSTM(2), backward_layer=L.LSTM(2)), ValueError,
     "go_backwards"),
    (lambda: L.Bidirectional(L.LSTM(2), backward_layer=L.LSTM(2, go_backwards=True,
                                                               return_sequences=True)),
     ValueError, "return_sequences"),
    (lambda: L.Bidirectional(L.LSTM(2, go_backwards=True)), ValueError, "go_backwards"),
]


@pytest.mark.parametrize("make,exc,match", BAD_CONSTRUCTION)
def test_bad_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_calls():
    rng = rng_for("bad")
    x = _x(rng)
    layer = L.LSTM(U)
    with pytest.raises(ValueError, match="inputs: expected a 3-D array"):
        layer(x[0])
    with pytest.raises(TypeError, match="inputs"):
        layer(np.array([["a"]]))
    with pytest.raises(TypeError, match="training"):
        layer(x, training="yes")
    layer(x)
    with pytest.raises(ValueError, match="inputs: LSTM 'lstm' was built for 4 features"):
        layer(x[..., :2])
    with pytest.raises(ValueError, match="mask: expected shape"):
        layer(x, mask=np.ones((N, T + 1), bool))
    with pytest.raises(TypeError, match="mask"):
        layer(x, mask=np.full((N, T), "a"))
    with pytest.raises(ValueError, match="initial_state: LSTM has 2 state"):
        layer(x, initial_state=[np.zeros((N, U))])
    with pytest.raises(ValueError, match=r"initial_state\[1\]: expected shape"):
        layer(x, initial_state=[np.zeros((N, U)), np.zeros((N, U + 1))])
    with pytest.raises(ValueError, match="input_shape"):
        L.GRU(2).build((3, 4))
    stateful = L.GRU(U, stateful=True)
    stateful(x)
    with pytest.raises(ValueError, match="batch size"):
        stateful(x[:2])
    with pytest.raises(ValueError, match="states: GRU 'gru' is not stateful"):
        L.GRU(U).reset_states([np.zeros((N, U))])
    bi = L.Bidirectional(L.GRU(U))
    with pytest.raises(ValueError, match="initial_state: expected 2 arrays"):
        bi(x, initial_state=[np.zeros((N, U))])
    with pytest.raises(RuntimeError, match="training=True"):
        bi.backward(np.zeros((N, 2 * U), np.float32))
    bi(x, training=True)
    with pytest.raises(ValueError, match="d_output: expected shape"):
        bi.backward(np.zeros((N, U), np.float32))
