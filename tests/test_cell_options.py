"""Cell options in the fused kernels: selectable activations (tanh, sigmoid, hard_sigmoid, relu,
linear, and MXNet's softrelu and softsign) for the cell and the gates, and the reset-before GRU.
Checked against the float64 reference (itself checked here by finite differences, since torch has
none of these options), and fusedrnn's own gradients by finite differences."""

import itertools

import numpy as np
import pytest

import fusedrnn
import reference as ref
from conftest import (check_finite_differences, compare_with_yardstick, fused_dict, make_problem,
                      reference_dict, seed_of)

ACTS = ref.ACTIVATIONS.keys()
# Gate activations: the Keras ones (softrelu/softsign gates are unbounded or signed, which no
# framework uses; they are covered as cell activations).
GATE_ACTS = ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear")
# Where the float64 result itself explodes (scale > 1e3), only float64 is compared: float32 then
# measures nothing but amplified rounding.
F32_MAX_SCALE = 1e3


def _options(mode, act, rec, reset_after):
    return dict(activation=act, recurrent_activation=rec, reset_after=reset_after)


# Every (cell activation, gate activation) pair for LSTM and GRU (both forms); every activation for
# the RNN; uni- and bidirectional, two layers, with initial states, odd sizes.
CASES = (
    [("lstm", a, r, True) for a, r in itertools.product(ACTS, GATE_ACTS)]
    + [("gru", a, r, ra) for a, r in itertools.product(ACTS, GATE_ACTS) for ra in (True, False)]
    + [(m, a, "sigmoid", True) for m in ("rnn_tanh", "rnn_relu") for a in ACTS]
)


@pytest.mark.parametrize("mode,act,rec,reset_after", CASES)
def test_options_match_reference(mode, act, rec, reset_after):
    opt = _options(mode, act, rec, reset_after)
    for shape, L, bi in (((7, 3, 5, 16), 2, True), ((1, 1, 1, 1), 1, False), ((4, 2, 3, 5), 1, True)):
        p = make_problem(mode, *shape, L=L, bidirectional=bi, init=True,
                         seed=seed_of("opt", mode, act, rec, reset_after, shape))
        want = reference_dict(p, **opt)
        exploding = max(float(np.max(np.abs(w))) for w in want.values() if w is not None) > F32_MAX_SCALE
        yardstick = None if exploding else reference_dict(p, np.float32, **opt)
        for dtype in (np.float64,) if exploding else (np.float64, np.float32):
            compare_with_yardstick(fused_dict(p, dtype, **opt), want, dtype, f"[{mode} {opt} {shape} {dtype.__name__}]",
                     yardstick)


def test_defaults_are_tanh_sigmoid_and_relu_for_rnn_relu():
    for mode in fusedrnn.MODES:
        p = make_problem(mode, 3, 2, 4, 5, init=True, seed=seed_of("defaults", mode))
        default = fused_dict(p, np.float64)
        explicit = fused_dict(p, np.float64, activation=ref.default_activation(mode),
                          recurrent_activation="sigmoid")
        for k, v in default.items():
            if v is not None:
                np.testing.assert_array_equal(v, explicit[k])


def test_options_change_the_result():
    # a kernel that ignored an option would pass the reference comparison only by accident
    p = make_problem("lstm", 4, 2, 3, 5, init=True, seed=1)
    base = fused_dict(p, np.float64)["y"]
    for opt in (dict(activation="relu"), dict(recurrent_activation="hard_sigmoid")):
        assert np.max(np.abs(fused_dict(p, np.float64, **opt)["y"] - base)) > 1e-3
    q = make_problem("gru", 4, 2, 3, 5, init=True, seed=1)
    assert np.max(np.abs(fused_dict(q, np.float64)["y"] - fused_dict(q, np.float64, reset_after=False)["y"])) > 1e-3


FD_CASES = [("lstm", "hard_sigmoid", "hard_sigmoid", True), ("lstm", "relu", "linear", True),
            ("gru", "tanh", "sigmoid", False), ("gru", "linear", "hard_sigmoid", False),
            ("gru", "relu", "sigmoid", True), ("rnn_tanh", "sigmoid", "sigmoid", True),
            ("rnn_relu", "linear", "sigmoid", True), ("rnn_tanh", "softrelu", "sigmoid", True),
            ("lstm", "softsign", "sigmoid", True), ("gru", "softrelu", "sigmoid", False)]


@pytest.mark.parametrize("mode,act,rec,reset_after", FD_CASES)
def test_reference_and_fusedrnn_finite_differences(mode, act, rec, reset_after):
    # Inputs scaled so that hard_sigmoid and relu see both their linear parts and their kinks'
    # neighbourhoods; eps is far below the distance of any sampled pre-activation to a kink.
    opt = _options(mode, act, rec, reset_after)
    p = make_problem(mode, 3, 2, 2, 3, 2, True, True, seed=seed_of("fdopt", mode, act, rec),
                     f32_exact=False)
    r = reference_dict(p, **opt)
    g = fused_dict(p, np.float64, **opt)
    lstm = mode == "lstm"

    def ref_loss():
        y, hN, cN, _ = ref.forward(p.x, p.flat, mode, p.H, p.L, True, p.h0, p.c0, **opt)
        return ref.loss(y, hN, cN, p.dy, p.dhN, p.dcN)

    arrays = {"x": p.x, "h0": p.h0, "weights": p.flat}
    if lstm:
        arrays["c0"] = p.c0
    for got, label in ((r, "reference"), (g, "fusedrnn")):
        analytic = {"x": got["dx"], "h0": got["dh0"], "weights": got["dw"]}
        if lstm:
            analytic["c0"] = got["dc0"]
        check_finite_differences(ref_loss, arrays, analytic, ctx=f"[{label} {mode} {opt}]")


@pytest.mark.parametrize("bad,exc", [("softmax", ValueError), ("Tanh", ValueError), (3, TypeError)])
def test_bad_activation(bad, exc):
    x = np.zeros((2, 1, 3), np.float32)
    w = fusedrnn.init_weights("lstm", 3, 4)
    with pytest.raises(exc, match="activation"):
        fusedrnn.forward(x, w, mode="lstm", hidden_size=4, activation=bad)
    with pytest.raises(exc, match="recurrent_activation"):
        fusedrnn.forward(x, w, mode="lstm", hidden_size=4, recurrent_activation=bad)


@pytest.mark.parametrize("mode", ["lstm", "rnn_tanh"])
def test_reset_after_only_for_gru(mode):
    x = np.zeros((2, 1, 3), np.float32)
    w = fusedrnn.init_weights(mode, 3, 4)
    with pytest.raises(ValueError, match="reset_after"):
        fusedrnn.forward(x, w, mode=mode, hidden_size=4, reset_after=False)
