"""Variational dropout in the fused kernels (Keras semantics): one mask per sequence on each layer's
input and one on the state before the recurrent product, per layer and direction, in training only,
scaled by 1/(1 - rate). The masks are a pure function of (seed, position) (fusedrnn/random.h),
re-implemented here in NumPy, so fusedrnn is checked against the reference run with the very same
masks, and by finite differences."""

import numpy as np
import pytest

import fusedrnn
import reference as ref
from conftest import (check_finite_differences, compare_with_yardstick, fused_dict, make_problem,
                      reference_dict, seed_of, uniform01)

def masks_like_fusedrnn(seed, L, D, N, C, H, rate_x, rate_h, gates=None):
    """{(layer, dir): (mx, mh)} exactly as fusedrnn draws them; gates: the gate count with
    per-gate masks ((G, N, width) each, consecutive in the stream), None for one mask."""
    out = {}
    for layer in range(L):
        cin = C if layer == 0 else D * H
        for d in range(D):
            pair = []
            for kind, (width, rate) in enumerate(((cin, rate_x), (H, rate_h))):
                if rate == 0:
                    pair.append(None)
                    continue
                shape = (N, width) if gates is None else (gates, N, width)
                u = uniform01(seed, (layer * 2 + d) * 2 + kind, int(np.prod(shape))).reshape(shape)
                pair.append(np.where(u >= rate, 1.0 / (1.0 - rate), 0.0))
            out[(layer, d)] = tuple(pair)
    return out


CASES = [("lstm", True), ("gru", True), ("gru", False), ("rnn_tanh", True)]


@pytest.mark.parametrize("mode,reset_after", CASES)
@pytest.mark.parametrize("rates", [(0.3, 0.0), (0.0, 0.4), (0.25, 0.5)])
@pytest.mark.parametrize("per_gate", [False, True])
def test_matches_reference_with_the_same_masks(mode, reset_after, rates, per_gate):
    seed = 12345
    gates = {"lstm": 4, "gru": 3}.get(mode, 1) if per_gate else None
    for shape, L, bi in (((6, 4, 5, 16), 2, True), ((3, 1, 1, 1), 1, False)):
        p = make_problem(mode, *shape, L=L, bidirectional=bi, init=True,
                         seed=seed_of("drop", mode, rates, shape))
        T, N, C, H = shape
        masks = masks_like_fusedrnn(seed, L, p.D, N, C, H, *rates, gates=gates)
        want = reference_dict(p, reset_after=reset_after, dropout_masks=masks)
        yard = reference_dict(p, np.float32, reset_after=reset_after, dropout_masks=masks)
        opt = dict(reset_after=reset_after, dropout=rates[0], recurrent_dropout=rates[1], seed=seed,
                   dropout_per_gate=per_gate)
        for dtype in (np.float64, np.float32):
            compare_with_yardstick(fused_dict(p, dtype, **opt), want, dtype,
                                   f"[{mode} ra={reset_after} {rates} {shape} {dtype.__name__}]",
                                   yard)


def test_reproducible_seeded_and_off_outside_training():
    p = make_problem("lstm", 5, 3, 4, 6, 2, True, init=True, seed=3)
    kw = dict(mode="lstm", hidden_size=6, num_layers=2, bidirectional=True, h0=p.h0, c0=p.c0,
              dropout=0.4, recurrent_dropout=0.3)
    a = fusedrnn.forward(p.x, p.flat, training=True, seed=7, **kw)
    b = fusedrnn.forward(p.x, p.flat, training=True, seed=7, **kw)
    c = fusedrnn.forward(p.x, p.flat, training=True, seed=8, **kw)
    np.testing.assert_array_equal(a.y, b.y)
    assert np.max(np.abs(a.y - c.y)) > 1e-3
    ga, gb = fusedrnn.backward(a.ctx, dy=p.dy), fusedrnn.backward(b.ctx, dy=p.dy)
    np.testing.assert_array_equal(ga.dw, gb.dw)
    # inference ignores the rates; rate 0 equals no dropout
    plain = fusedrnn.forward(p.x, p.flat, mode="lstm", hidden_size=6, num_layers=2,
                             bidirectional=True, h0=p.h0, c0=p.c0)
    np.testing.assert_array_equal(fusedrnn.forward(p.x, p.flat, seed=7, **kw).y, plain.y)
    zero = dict(kw, dropout=0.0, recurrent_dropout=0.0)
    np.testing.assert_array_equal(fusedrnn.forward(p.x, p.flat, training=True, seed=7, **zero).y,
                                  plain.y)


def test_mask_statistics():
    u = uniform01(99, 3, 200000)
    assert abs(u.mean() - 0.5) < 0.005 and u.min() >= 0 and u.max() < 1
    masks = masks_like_fusedrnn(5, 1, 1, 400, 250, 250, 0.3, 0.6)[(0, 0)]
    assert abs(float(np.mean(masks[0] == 0)) - 0.3) < 0.01
    assert abs(float(np.mean(masks[1] == 0)) - 0.6) < 0.01
    # one mask per sequence: a dropped input feature of a sample contributes nothing at any step
    x = np.random.default_rng(0).standard_normal((4, 400, 250))
    w = fusedrnn.init_weights("rnn_tanh", 250, 250, dtype=np.float64, seed=0)
    o = fusedrnn.forward(x, w, mode="rnn_tanh", hidden_size=250, training=True, seed=5, dropout=0.3)
    g = fusedrnn.backward(o.ctx, dy=np.ones_like(o.y))
    np.testing.assert_array_equal(g.dx[:, masks[0] == 0], 0.0)
    assert np.all(g.dx[:, masks[0] != 0] != 0.0)


@pytest.mark.parametrize("mode,reset_after", CASES)
@pytest.mark.parametrize("per_gate", [False, True])
def test_finite_differences(mode, reset_after, per_gate):
    p = make_problem(mode, 3, 2, 3, 3, 2, True, init=True, seed=seed_of("fddrop", mode),
                     f32_exact=False)
    opt = dict(reset_after=reset_after, dropout=0.3, recurrent_dropout=0.4, seed=2024,
               dropout_per_gate=per_gate)
    g = fused_dict(p, np.float64, **opt)

    def loss():
        r = fusedrnn.forward(p.x, p.flat, mode=mode, hidden_size=p.H, num_layers=2,
                             bidirectional=True, h0=p.h0, c0=p.c0, training=True, **opt)
        return ref.loss(r.y, r.hN, r.cN, p.dy, p.dhN, p.dcN)

    arrays = {"x": p.x, "h0": p.h0, "weights": p.flat}
    analytic = {"x": g["dx"], "h0": g["dh0"], "weights": g["dw"]}
    if mode == "lstm":
        arrays["c0"], analytic["c0"] = p.c0, g["dc0"]
    check_finite_differences(loss, arrays, analytic, ctx=f"[dropout {mode}]")


@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
@pytest.mark.parametrize("bad,exc", [(1.0, ValueError), (-0.1, ValueError), ("0.5", TypeError),
                                     (True, TypeError)])
def test_bad_rates(name, bad, exc):
    x = np.zeros((2, 1, 3), np.float32)
    w = fusedrnn.init_weights("gru", 3, 4)
    with pytest.raises(exc, match=name):
        fusedrnn.forward(x, w, mode="gru", hidden_size=4, training=True, **{name: bad})
