"""Zoneout and residual connections inside the fused step (MXNet's ZoneoutCell and ResidualCell on
built-in cells). The zoneout masks are a pure function of (seed, position) (fusedrnn/random.h),
re-drawn here in NumPy, so fusedrnn is checked against the float64 reference run with the very same
masks, and by finite differences."""

import numpy as np
import pytest

import fusedrnn
import reference as ref
from conftest import (check_finite_differences, compare_with_yardstick, fused_dict, make_problem,
                      reference_dict, seed_of, uniform01)


def zoneout_masks_like_fusedrnn(seed, L, D, T, N, H, p_out, p_state, lstm):
    """{(layer, dir): (keep_h, keep_c, keep_o)} (T, N, H) bools, exactly as fusedrnn draws them."""
    out = {}
    for layer in range(L):
        for d in range(D):
            masks = []
            for kind, p in ((0, p_state), (1, p_state if lstm else 0.0), (2, p_out)):
                if p == 0:
                    masks.append(None)
                    continue
                stream = (1 << 32) + (layer * 2 + d) * 4 + kind
                u = uniform01(seed, stream, T * N * H).reshape(T, N, H)
                masks.append(u >= np.float32(p))
            out[(layer, d)] = tuple(masks)
    return out


CASES = [("lstm", True), ("gru", True), ("gru", False), ("rnn_tanh", True)]
SEED = 4242


def _opts(shape, L, D, mode, p_out, p_state, residual):
    T, N, C, H = shape
    masks = zoneout_masks_like_fusedrnn(SEED, L, D, T, N, H, p_out, p_state, mode == "lstm")
    return (dict(zoneout_masks=masks, residual=residual),
            dict(zoneout_outputs=p_out, zoneout_states=p_state, residual=residual, seed=SEED))


@pytest.mark.parametrize("mode,reset_after", CASES)
@pytest.mark.parametrize("p_out,p_state,residual", [(0.3, 0.0, False), (0.0, 0.4, False),
                                                    (0.25, 0.5, False), (0.0, 0.0, True),
                                                    (0.3, 0.2, True)])
def test_matches_reference_with_the_same_masks(mode, reset_after, p_out, p_state, residual):
    # Residual needs C == D*H: the grid's shapes are chosen so; odd sizes and both directions.
    grid = [((6, 3, 14, 7), 2, True), ((3, 1, 1, 1), 1, False), ((5, 4, 7, 7), 3, False)]
    for shape, L, bi in grid:
        D = 2 if bi else 1
        p = make_problem(mode, *shape, L=L, bidirectional=bi, init=True,
                         seed=seed_of("zone", mode, p_out, p_state, residual, shape))
        ref_opt, fused_opt = _opts(shape, L, D, mode, p_out, p_state, residual)
        want = reference_dict(p, reset_after=reset_after, **ref_opt)
        yard = reference_dict(p, np.float32, reset_after=reset_after, **ref_opt)
        for dtype in (np.float64, np.float32):
            compare_with_yardstick(fused_dict(p, dtype, reset_after=reset_after, **fused_opt), want,
                                   dtype, f"[{mode} ra={reset_after} zo={p_out} zs={p_state} "
                                   f"res={residual} {shape} L={L} {dtype.__name__}]", yard)


@pytest.mark.parametrize("mode,reset_after", CASES)
def test_finite_differences(mode, reset_after):
    shape, L, bi = (4, 2, 6, 3), 2, True
    p = make_problem(mode, *shape, L=L, bidirectional=bi, init=True, seed=seed_of("zfd", mode),
                     f32_exact=False)
    ref_opt, fused_opt = _opts(shape, L, 2, mode, 0.3, 0.4, True)
    g = fused_dict(p, np.float64, reset_after=reset_after, **fused_opt)
    lstm = mode == "lstm"

    def loss():
        r = fusedrnn.forward(p.x, p.flat, mode=mode, hidden_size=p.H, num_layers=L,
                             bidirectional=bi, h0=p.h0, c0=p.c0, training=True,
                             reset_after=reset_after, **fused_opt)
        return ref.loss(r.y, r.hN, r.cN, p.dy, p.dhN, p.dcN)

    arrays = {"x": p.x, "h0": p.h0, "weights": p.flat}
    analytic = {"x": g["dx"], "h0": g["dh0"], "weights": g["dw"]}
    if lstm:
        arrays["c0"], analytic["c0"] = p.c0, g["dc0"]
    check_finite_differences(loss, arrays, analytic, eps=1e-6, tol=1e-6, ctx=f"[{mode}]")


def test_zoneout_is_off_outside_training_and_residual_is_not():
    p = make_problem("lstm", 5, 3, 8, 8, init=True, seed=5)
    kw = dict(mode="lstm", hidden_size=8, h0=p.h0, c0=p.c0)
    plain = fusedrnn.forward(p.x, p.flat, **kw)
    zoned = fusedrnn.forward(p.x, p.flat, zoneout_outputs=0.5, zoneout_states=0.5, seed=1, **kw)
    for a, b in zip(plain[:3], zoned[:3]):
        np.testing.assert_array_equal(a, b)
    res = fusedrnn.forward(p.x, p.flat, residual=True, **kw)
    np.testing.assert_allclose(res.y, plain.y + p.x, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(res.hN, plain.hN)  # the recurrence runs on the states
    want, _, _, _ = ref.forward(p.x, p.flat, "lstm", 8, h0=p.h0, c0=p.c0, residual=True)
    np.testing.assert_allclose(res.y, want, rtol=0, atol=1e-12)
    # training with zoneout probabilities 0 is the plain network, bit for bit
    t0 = fusedrnn.forward(p.x, p.flat, training=True, zoneout_states=0.0, **kw)
    np.testing.assert_array_equal(t0.y, plain.y)


def test_inference_residual_multilayer_bidirectional_does_not_grow_with_t():
    # loop inference keeps the states in a ring of two rows: scratch is the same for T = 200 and 400
    m = [fusedrnn.memory("gru", 6, 3, T, 5, bidirectional=True, residual=True,
                         executor="loop").workspace_bytes for T in (200, 400)]
    assert m[0] == m[1]
    p = make_problem("gru", 9, 5, 6, 3, L=2, bidirectional=True, init=True, seed=8)
    got = fusedrnn.forward(p.x, p.flat, mode="gru", hidden_size=3, num_layers=2,
                           bidirectional=True, h0=p.h0, residual=True)
    want, hN, _, _ = ref.forward(p.x, p.flat, "gru", 3, 2, True, h0=p.h0, residual=True)
    np.testing.assert_allclose(got.y, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.hN, hN, rtol=0, atol=1e-12)


def test_reproducible_and_seeded():
    p = make_problem("gru", 6, 4, 5, 7, L=2, bidirectional=True, init=True, seed=3)
    kw = dict(mode="gru", hidden_size=7, num_layers=2, bidirectional=True, h0=p.h0, training=True,
              zoneout_outputs=0.3, zoneout_states=0.3)
    a = fusedrnn.forward(p.x, p.flat, seed=7, **kw)
    b = fusedrnn.forward(p.x, p.flat, seed=7, **kw)
    c = fusedrnn.forward(p.x, p.flat, seed=8, **kw)
    np.testing.assert_array_equal(a.y, b.y)
    assert np.max(np.abs(a.y - c.y)) > 1e-3
    ga, gb = fusedrnn.backward(a.ctx, dy=p.dy), fusedrnn.backward(b.ctx, dy=p.dy)
    np.testing.assert_array_equal(ga.dw, gb.dw)


def test_zoneout_rates_are_what_was_asked():
    # with p_state = 1 the state never changes; with p_out = 1 the output stays at zero
    p = make_problem("lstm", 4, 2, 3, 5, init=True, seed=11)
    kw = dict(mode="lstm", hidden_size=5, h0=p.h0, c0=p.c0, training=True, seed=1)
    r = fusedrnn.forward(p.x, p.flat, zoneout_states=1.0, **kw)
    np.testing.assert_array_equal(r.hN[0], p.h0[0])
    np.testing.assert_array_equal(r.cN[0], p.c0[0])
    r = fusedrnn.forward(p.x, p.flat, zoneout_outputs=1.0, **kw)
    np.testing.assert_array_equal(r.y, 0.0)
    # an intermediate probability keeps about that fraction of the elements: with zero weights the
    # cell's new h is tanh(0) = 0, so after one step kept elements show h0 = 0.5, the others 0
    N, H = 64, 32
    x = np.zeros((1, N, 3), np.float32)
    w = np.zeros(fusedrnn.param_size("rnn_tanh", 3, H), np.float32)
    h0 = np.full((1, N, H), 0.5, np.float32)
    r = fusedrnn.forward(x, w, mode="rnn_tanh", hidden_size=H, h0=h0, training=True, seed=3,
                         zoneout_states=0.25)
    assert set(np.unique(r.hN)) == {0.0, 0.5}
    assert abs(float(np.mean(r.hN == 0.5)) - 0.25) < 0.03  # 2048 elements: 5 sigma is 0.024


@pytest.mark.parametrize("kw,msg", [
    (dict(zoneout_outputs=1.5), "zoneout_outputs: expected a probability in [0, 1], got 1.5"),
    (dict(zoneout_states=-0.1), "zoneout_states: expected a probability in [0, 1], got -0.1"),
    (dict(residual=True), "residual: the input is added to the output, so x needs directions * "
                          "hidden_size = 4 features, got 3"),
    (dict(zoneout_states=0.2, mask=np.ones((5, 2), bool)),
     "mask: not supported together with zoneout or residual"),
])
def test_bad_options(kw, msg):
    x = np.zeros((5, 2, 3), np.float32)
    w = fusedrnn.init_weights("lstm", 3, 4, seed=0)
    with pytest.raises(ValueError) as e:
        fusedrnn.forward(x, w, mode="lstm", hidden_size=4, training=True, **kw)
    assert msg in str(e.value)
    with pytest.raises(TypeError, match="zoneout_outputs: expected a float"):
        fusedrnn.forward(x, w, mode="lstm", hidden_size=4, zoneout_outputs="0.1")
