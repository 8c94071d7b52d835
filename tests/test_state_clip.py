"""LSTM state clipping (MXNet's lstm_state_clip_min / _max / _nan, cuDNN's RNN clip): every step's new
cell state is clipped to [min, max] before h is computed from it and before it carries on; the
gradient passes only where the unclipped state was inside; lstm_state_clip_nan turns a NaN state into
min. Checked against the float64 reference (tests/reference.py, which writes the clip once), by finite
differences, in both executors, with lengths, layers, directions and projection."""

import numpy as np
import pytest

import fusedrnn
import reference as ref

LO, HI = -0.35, 0.45  # tight enough that a good share of the states is clipped


def _problem(T, N, C, H, L, bi, P=0, seed=0):
    rng = np.random.default_rng(seed)
    D = 2 if bi else 1
    S = P or H
    return dict(
        flat=rng.uniform(-0.6, 0.6, ref.param_size("lstm", C, H, L, bi, P)),
        x=rng.standard_normal((T, N, C)), h0=0.5 * rng.standard_normal((L * D, N, S)),
        c0=rng.standard_normal((L * D, N, H)), dy=rng.standard_normal((T, N, D * S)),
        dhN=rng.standard_normal((L * D, N, S)), dcN=rng.standard_normal((L * D, N, H)))


def _run(q, H, L, bi, P=0, dtype=np.float64, lengths=None, executor="loop", clip=(LO, HI, False)):
    c = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
    res = fusedrnn.forward(c(q["x"]), c(q["flat"]), mode="lstm", hidden_size=H, num_layers=L,
                           bidirectional=bi, h0=c(q["h0"]), c0=c(q["c0"]), proj_size=P,
                           training=True, lengths=lengths, executor=executor,
                           lstm_state_clip_min=clip[0], lstm_state_clip_max=clip[1],
                           lstm_state_clip_nan=clip[2])
    g = fusedrnn.backward(res.ctx, dy=c(q["dy"]), dhN=c(q["dhN"]), dcN=c(q["dcN"]))
    return res, g


def _reference(q, H, L, bi, P=0, lengths=None, clip=(LO, HI, False)):
    """The reference with lengths as a right-padded mask with zero outputs (the same function as
    the core's lengths, see test_varlen.py)."""
    T, N = q["x"].shape[:2]
    mask = None if lengths is None else np.arange(T)[:, None] < np.asarray(lengths)[None, :]
    dy = q["dy"] if mask is None else q["dy"] * mask[:, :, None]
    y, hN, cN, cache = ref.forward(q["x"], q["flat"], "lstm", H, L, bi, q["h0"], q["c0"],
                                   mask=mask, zero_masked_output=mask is not None, proj_size=P,
                                   lstm_state_clip=clip)
    dx, dh0, dc0, dw = ref.backward(cache, dy=dy, dhN=q["dhN"], dcN=q["dcN"])
    return (y, hN, cN), (dx, dh0, dc0, dw), cache


@pytest.mark.parametrize("executor", ["loop", "unrolled"])
@pytest.mark.parametrize("T,N,C,H,L,bi,P,varlen", [
    (7, 3, 5, 7, 1, False, 0, False),
    (5, 1, 1, 3, 2, True, 0, False),
    (9, 7, 3, 5, 2, False, 0, True),
    (6, 5, 4, 7, 1, True, 3, False),
    (4, 3, 97, 33, 1, False, 0, False),
])
def test_matches_reference(executor, T, N, C, H, L, bi, P, varlen):
    q = _problem(T, N, C, H, L, bi, P, seed=T * 100 + H)
    lengths = np.random.default_rng(1).integers(0, T + 1, N) if varlen else None
    res, g = _run(q, H, L, bi, P, lengths=lengths, executor=executor)
    (y, hN, cN), (dx, dh0, dc0, dw), cache = _reference(q, H, L, bi, P, lengths)
    # the bounds bite: some steps' states are clipped, some are not
    passes = np.concatenate([s["clip_pass"].ravel() for steps in cache["steps"].values()
                             for s in steps if s is not None])
    assert 0.1 < passes.mean() < 0.9
    ran = slice(None) if lengths is None else np.asarray(lengths) > 0  # length 0: cN is c0
    assert np.all((res.cN[:, ran] >= LO) & (res.cN[:, ran] <= HI))
    for got, want in ((res.y, y), (res.hN, hN), (res.cN, cN), (g.dx, dx), (g.dh0, dh0),
                      (g.dc0, dc0), (g.dw, dw)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_float32_matches_reference():
    T, N, C, H = 8, 5, 7, 33
    q = _problem(T, N, C, H, 1, True, seed=5)
    res, g = _run(q, H, 1, True, dtype=np.float32)
    (y, hN, cN), (dx, dh0, dc0, dw), _ = _reference(q, H, 1, True)
    assert res.y.dtype == np.float32
    for got, want in ((res.y, y), (res.cN, cN), (g.dx, dx), (g.dw, dw)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_gradient_by_finite_differences():
    T, N, C, H = 5, 2, 3, 4
    q = _problem(T, N, C, H, 1, False, seed=11)
    res, g = _run(q, H, 1, False)

    def loss(flat):
        r = fusedrnn.forward(q["x"], flat, mode="lstm", hidden_size=H, h0=q["h0"], c0=q["c0"],
                             lstm_state_clip_min=LO, lstm_state_clip_max=HI)
        return ref.loss(r.y, r.hN, r.cN, q["dy"], q["dhN"], q["dcN"])

    eps = 1e-6
    rng = np.random.default_rng(0)
    for k in rng.choice(q["flat"].size, 25, replace=False):
        e = np.zeros_like(q["flat"])
        e[k] = eps
        fd = (loss(q["flat"] + e) - loss(q["flat"] - e)) / (2 * eps)
        assert abs(fd - g.dw[k]) <= 1e-6 * max(1.0, abs(fd)), (k, fd, g.dw[k])
    # the clip changes the function: without it the result differs
    plain = fusedrnn.forward(q["x"], q["flat"], mode="lstm", hidden_size=H, h0=q["h0"], c0=q["c0"])
    assert not np.allclose(plain.y, res.y)


def test_bounds_outside_the_range_change_nothing():
    T, N, C, H = 6, 3, 4, 5
    q = _problem(T, N, C, H, 1, False, seed=3)
    a, ga = _run(q, H, 1, False, clip=(-1e6, 1e6, True))
    b, gb = _run(q, H, 1, False, clip=(None, None, False))
    for x, y in ((a.y, b.y), (a.cN, b.cN), (ga.dx, gb.dx), (ga.dw, gb.dw), (ga.dc0, gb.dc0)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_nan(dtype):
    """A NaN cell state (here from c0) becomes min with lstm_state_clip_nan and stays NaN without."""
    T, N, C, H = 4, 3, 2, 5
    q = _problem(T, N, C, H, 1, False, seed=9)
    q["c0"][0, 1, 2] = np.nan  # sample 1, unit 2
    with_nan, _ = _run(q, H, 1, False, dtype=dtype, clip=(LO, HI, True))
    assert np.all(np.isfinite(with_nan.y)) and np.all(np.isfinite(with_nan.cN))
    y, _, cN, _ = ref.forward(q["x"], q["flat"], "lstm", H, 1, False, q["h0"], q["c0"],
                              lstm_state_clip=(LO, HI, True))
    np.testing.assert_allclose(with_nan.y, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(with_nan.cN, cN, rtol=1e-5, atol=1e-6)
    propagating, _ = _run(q, H, 1, False, dtype=dtype, clip=(LO, HI, False))
    assert np.isnan(propagating.cN[0, 1, 2])
    assert np.isnan(propagating.y[0, 1, 2])
    assert np.all(np.isnan(propagating.y[1:, 1]))  # then through W_hh to all units of the sample
    assert np.all(np.isfinite(propagating.y[:, [0, 2]]))  # the other samples are untouched


def test_plan_reports_the_clip():
    x = np.zeros((2, 1, 3), np.float32)
    w = np.zeros(fusedrnn.param_size("lstm", 3, 4), np.float32)
    res = fusedrnn.forward(x, w, mode="lstm", hidden_size=4, lstm_state_clip_min=-1,
                           lstm_state_clip_max=2.5, lstm_state_clip_nan=True, training=True)
    assert res.ctx.plan.lstm_state_clip == (-1.0, 2.5, True)  # the keywords reach the core's plan
    p = fusedrnn._C.Plan("lstm", 3, 4, 1, False, "float32", 2, 1, False, lstm_state_clip_min=-1.0,
                         lstm_state_clip_max=2.5, lstm_state_clip_nan=True)
    assert p.lstm_state_clip == (-1.0, 2.5, True)
    assert fusedrnn._C.Plan("lstm", 3, 4, 1, False, "float32", 2, 1, False).lstm_state_clip is None


@pytest.mark.parametrize("kwargs,exc,message", [
    (dict(mode="gru", lstm_state_clip_min=-1, lstm_state_clip_max=1), ValueError,
     r"lstm_state_clip_min/max: only mode 'lstm' has a cell state to clip, got mode 'gru'"),
    (dict(lstm_state_clip_min=-1), ValueError,
     r"lstm_state_clip_min/max: give both bounds \(or neither\), got only lstm_state_clip_min"),
    (dict(lstm_state_clip_max=1), ValueError,
     r"give both bounds \(or neither\), got only lstm_state_clip_max"),
    (dict(lstm_state_clip_min=2, lstm_state_clip_max=1), ValueError,
     r"lstm_state_clip_min/max: expected finite bounds with min <= max, got \[2.*, 1.*\]"),
    (dict(lstm_state_clip_min=-np.inf, lstm_state_clip_max=1), ValueError,
     r"lstm_state_clip_min: expected a finite float, got -inf"),
    (dict(lstm_state_clip_min=True, lstm_state_clip_max=1), TypeError,
     r"lstm_state_clip_min: expected a float or None, got bool"),
    (dict(lstm_state_clip_min="1", lstm_state_clip_max=2), TypeError,
     r"lstm_state_clip_min: expected a float or None, got str"),
    (dict(lstm_state_clip_min=-1, lstm_state_clip_max=1, lstm_state_clip_nan="yes"), TypeError,
     r"lstm_state_clip_nan: expected"),
])
def test_bad_arguments(kwargs, exc, message):
    mode = kwargs.pop("mode", "lstm")
    x = np.zeros((2, 1, 3), np.float32)
    w = np.zeros(fusedrnn.param_size(mode, 3, 4), np.float32)
    with pytest.raises(exc, match=message):
        fusedrnn.forward(x, w, mode=mode, hidden_size=4, **kwargs)
