"""Cell options in the fused kernels: selectable activations (tanh, sigmoid, hard_sigmoid, relu,
linear) for the cell and the gates, and the reset-before GRU. Checked against the float64 reference
(itself checked here by finite differences, since torch has none of these options), and fusedrnn's
own gradients by finite differences."""

import itertools

import numpy as np
import pytest

import fusedrnn
import reference as ref
from conftest import check_finite_differences, make_problem, seed_of

ACTS = ref.ACTIVATIONS.keys()
# float32: at most 4x the error of the reference's own float32 arithmetic (the same plain math in
# NumPy float32), plus a floor of 1e-6 * max(scale, 1). Some options (linear or relu gates and cells)
# make recurrences that amplify rounding chaotically, so the ratio between two float32 computations
# varies more than with tanh/sigmoid; where the float64 result itself explodes (scale > 1e3) only
# float64 is compared, since float32 then measures nothing but amplified rounding.
F32_FACTOR, F32_FLOOR, F32_MAX_SCALE = 4.0, 1e-6, 1e3


def _options(mode, act, rec, reset_after):
    return dict(activation=act, recurrent_activation=rec, reset_after=reset_after)


def _reference(p, dtype=np.float64, **opt):
    y, hN, cN, cache = ref.forward(p.x, p.flat, p.mode, p.H, p.L, p.bidirectional, p.h0, p.c0,
                                   dtype=dtype, **opt)
    dx, dh0, dc0, dw = ref.backward(cache, p.dy, p.dhN, p.dcN)
    return dict(y=y, hN=hN, cN=cN, dx=dx, dh0=dh0, dc0=dc0, dw=dw)


def _fused(p, dtype, **opt):
    c = lambda a: None if a is None else np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
    res = fusedrnn.forward(c(p.x), c(p.flat), mode=p.mode, hidden_size=p.H, num_layers=p.L,
                           bidirectional=p.bidirectional, h0=c(p.h0), c0=c(p.c0), training=True,
                           **opt)
    g = fusedrnn.backward(res.ctx, dy=c(p.dy), dhN=c(p.dhN), dcN=c(p.dcN))
    return dict(y=res.y, hN=res.hN, cN=res.cN, dx=g.dx, dh0=g.dh0, dc0=g.dc0, dw=g.dw)


def _scale(a):
    return max(float(np.max(np.abs(a))), 1.0)


def _compare(got, want, dtype, ctx, yardstick=None):
    """float64: 1e-10 relative to each array's scale. float32: the yardstick is the largest relative
    error of the reference's own float32 arithmetic over all arrays of the run (per-array ratios of
    two float32 computations scatter too much on the amplifying options)."""
    if dtype == np.float32:
        rel32 = max(float(np.max(np.abs(yardstick[k].astype(np.float64) - w))) / _scale(w)
                    for k, w in want.items() if w is not None)
    for name, w in want.items():
        if w is None:
            assert got[name] is None, (name, ctx)
            continue
        a = np.asarray(got[name], dtype=np.float64)
        assert a.shape == w.shape and got[name].dtype == dtype, (name, ctx)
        err = float(np.max(np.abs(a - w)))
        if dtype == np.float64:
            tol = 1e-10 * _scale(w)
        else:
            tol = (F32_FACTOR * rel32 + F32_FLOOR) * _scale(w)
        assert err <= tol, f"{name} {ctx}: max abs err {err:.3g} > {tol:.3g}"


# Every (cell activation, gate activation) pair for LSTM and GRU (both forms); every activation for
# the RNN; uni- and bidirectional, two layers, with initial states, odd sizes.
CASES = (
    [("lstm", a, r, True) for a, r in itertools.product(ACTS, ACTS)]
    + [("gru", a, r, ra) for a, r in itertools.product(ACTS, ACTS) for ra in (True, False)]
    + [(m, a, "sigmoid", True) for m in ("rnn_tanh", "rnn_relu") for a in ACTS]
)


@pytest.mark.parametrize("mode,act,rec,reset_after", CASES)
def test_options_match_reference(mode, act, rec, reset_after):
    opt = _options(mode, act, rec, reset_after)
    for shape, L, bi in (((7, 3, 5, 16), 2, True), ((1, 1, 1, 1), 1, False), ((4, 2, 3, 5), 1, True)):
        p = make_problem(mode, *shape, L=L, bidirectional=bi, init=True,
                         seed=seed_of("opt", mode, act, rec, reset_after, shape))
        want = _reference(p, **opt)
        yardstick = _reference(p, np.float32, **opt)
        exploding = max(float(np.max(np.abs(w))) for w in want.values() if w is not None) > F32_MAX_SCALE
        for dtype in (np.float64,) if exploding else (np.float64, np.float32):
            _compare(_fused(p, dtype, **opt), want, dtype, f"[{mode} {opt} {shape} {dtype.__name__}]",
                     yardstick)


def test_defaults_are_tanh_sigmoid_and_relu_for_rnn_relu():
    for mode in fusedrnn.MODES:
        p = make_problem(mode, 3, 2, 4, 5, init=True, seed=seed_of("defaults", mode))
        default = _fused(p, np.float64)
        explicit = _fused(p, np.float64, activation=ref.default_activation(mode),
                          recurrent_activation="sigmoid")
        for k, v in default.items():
            if v is not None:
                np.testing.assert_array_equal(v, explicit[k])


def test_options_change_the_result():
    # a kernel that ignored an option would pass the reference comparison only by accident
    p = make_problem("lstm", 4, 2, 3, 5, init=True, seed=1)
    base = _fused(p, np.float64)["y"]
    for opt in (dict(activation="relu"), dict(recurrent_activation="hard_sigmoid")):
        assert np.max(np.abs(_fused(p, np.float64, **opt)["y"] - base)) > 1e-3
    q = make_problem("gru", 4, 2, 3, 5, init=True, seed=1)
    assert np.max(np.abs(_fused(q, np.float64)["y"] - _fused(q, np.float64, reset_after=False)["y"])) > 1e-3


FD_CASES = [("lstm", "hard_sigmoid", "hard_sigmoid", True), ("lstm", "relu", "linear", True),
            ("gru", "tanh", "sigmoid", False), ("gru", "linear", "hard_sigmoid", False),
            ("gru", "relu", "sigmoid", True), ("rnn_tanh", "sigmoid", "sigmoid", True),
            ("rnn_relu", "linear", "sigmoid", True)]


@pytest.mark.parametrize("mode,act,rec,reset_after", FD_CASES)
def test_reference_and_fusedrnn_finite_differences(mode, act, rec, reset_after):
    # Inputs scaled so that hard_sigmoid and relu see both their linear parts and their kinks'
    # neighbourhoods; eps is far below the distance of any sampled pre-activation to a kink.
    opt = _options(mode, act, rec, reset_after)
    p = make_problem(mode, 3, 2, 2, 3, 2, True, True, seed=seed_of("fdopt", mode, act, rec),
                     f32_exact=False)
    r = _reference(p, **opt)
    g = _fused(p, np.float64, **opt)
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
