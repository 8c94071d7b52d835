"""fusedrnn (forward/backward, float32/float64) vs the float64 NumPy oracle."""

import functools
from types import SimpleNamespace

import numpy as np
import pytest

import fusedrnn
import reference as ref
from conftest import (MODES, assert_close, assert_close_flat, cast, check_finite_differences,
                      make_problem, reference_result, seed_of, torch_result_flat)

# (T, N, C, H): every value of T {1,7}, N {1,3} and every (C, H) pair of {1,5,16}
# (so C != H occurs with multiple layers, C < H and C > H).
SHAPES = [
    (1, 1, 1, 1), (7, 3, 1, 5), (1, 3, 1, 16),
    (7, 1, 5, 1), (1, 1, 5, 5), (7, 3, 5, 16),
    (7, 3, 16, 1), (1, 3, 16, 5), (7, 1, 16, 16),
]
DTYPES = [np.float32, np.float64]


def _ctx(mode, L, bi, init, shape, dtype=None, extra=""):
    return "[%s L=%d %s %s TNCH=%s%s%s]" % (
        mode, L, "bi" if bi else "uni", "init" if init else "noinit", shape,
        "" if dtype is None else " " + np.dtype(dtype).name, extra)


@functools.lru_cache(maxsize=None)
def _case(mode, L, bi, init, shape):
    """Problem (float32-representable values), float64 oracle result, torch float32 result."""
    T, N, C, H = shape
    p = make_problem(mode, T, N, C, H, L, bi, init, seed=seed_of("num", mode, L, bi, init, shape))
    return p, reference_result(p), torch_result_flat(p)


def _run(p, dtype, training=True, batch_first=False, x=None, **bw):
    """fusedrnn forward (+ backward with the problem's output grads if training)."""
    x = cast(p.x, dtype) if x is None else x
    res = fusedrnn.forward(x, cast(p.flat, dtype), mode=p.mode, hidden_size=p.H,
                           num_layers=p.L, bidirectional=p.bidirectional,
                           h0=cast(p.h0, dtype), c0=cast(p.c0, dtype),
                           batch_first=batch_first, training=training)
    if not training:
        return res, None
    g = fusedrnn.backward(res.ctx, dy=cast(p.dy, dtype), dhN=cast(p.dhN, dtype),
                          dcN=cast(p.dcN, dtype), **bw)
    return res, g


def _check_against_reference(p, r, t, res, g, dtype, ctx):
    lstm = p.mode == "lstm"
    shp = (p.L * p.D, p.N, p.H)
    assert res.y.dtype == dtype and res.hN.dtype == dtype, ctx
    assert res.y.shape == (p.T, p.N, p.D * p.H) and res.hN.shape == shp, ctx
    assert_close("y", res.y, r.y, t.y, ctx=ctx)
    assert_close("hN", res.hN, r.hN, t.hN, ctx=ctx)
    if lstm:
        assert res.cN is not None and res.cN.dtype == dtype, ctx
        assert_close("cN", res.cN, r.cN, t.cN, ctx=ctx)
    else:
        assert res.cN is None, ctx
    if g is None:
        return
    assert g.dx.dtype == dtype and g.dh0.dtype == dtype and g.dw.dtype == dtype, ctx
    assert_close("dx", g.dx, r.dx, t.dx, ctx=ctx)
    assert_close("dh0", g.dh0, r.dh0, t.dh0, ctx=ctx)
    if lstm:
        assert g.dc0 is not None and g.dc0.dtype == dtype, ctx
        assert_close("dc0", g.dc0, r.dc0, t.dc0, ctx=ctx)
    else:
        assert g.dc0 is None, ctx
    assert_close_flat("dw", g.dw, r.dw, t.dw, p.mode, p.C, p.H, p.L, p.bidirectional, ctx=ctx)


# --------------------------------------------------------------------------
# The main grid
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("init", [False, True], ids=["noinit", "init"])
@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_forward_backward_grid(mode, L, bi, init, dtype):
    for shape in SHAPES:
        p, r, t = _case(mode, L, bi, init, shape)
        res, g = _run(p, dtype)
        _check_against_reference(p, r, t, res, g, dtype, _ctx(mode, L, bi, init, shape, dtype))


def test_param_size():
    for mode in MODES:
        for C, H, L, bi in ((1, 1, 1, False), (5, 16, 1, True), (16, 5, 2, False),
                            (5, 16, 3, True), (1, 5, 2, True)):
            assert fusedrnn.param_size(mode, C, H, L, bi) == ref.param_size(mode, C, H, L, bi)
            assert fusedrnn.param_size(mode, C, H, num_layers=L, bidirectional=bi) == \
                ref.param_size(mode, C, H, L, bi)
        assert fusedrnn.param_size(mode, 3, 4) == ref.param_size(mode, 3, 4, 1, False)


def test_result_types():
    p, r, t = _case("lstm", 2, True, True, (7, 3, 5, 16))
    res = fusedrnn.forward(p.x, p.flat, mode="lstm", hidden_size=16, num_layers=2,
                           bidirectional=True, h0=p.h0, c0=p.c0, training=True)
    y, hN, cN, ctx = res
    assert y is res.y and hN is res.hN and cN is res.cN and ctx is res.ctx
    assert ctx is not None
    g = fusedrnn.backward(res.ctx, dy=p.dy, dhN=p.dhN, dcN=p.dcN)
    dx, dh0, dc0, dw = g
    assert dx is g.dx and dh0 is g.dh0 and dc0 is g.dc0 and dw is g.dw
    assert dw.shape == p.flat.shape
    out = fusedrnn.forward(p.x, p.flat, mode="lstm", hidden_size=16, num_layers=2,
                           bidirectional=True, h0=p.h0, c0=p.c0)   # training defaults False
    assert out.ctx is None


# --------------------------------------------------------------------------
# Layout / striding
# --------------------------------------------------------------------------

def _assert_same_sum_order(actual, desired, err_msg=""):
    """Equal up to the order of floating-point sums: a batch-major or strided layout runs the
    same GEMMs split differently (per sample instead of one matrix), which may round differently.
    Allowed: a few units in the last place of the result's scale."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape and actual.dtype == desired.dtype, err_msg
    scale = max(float(np.max(np.abs(desired))) if desired.size else 0.0, 1.0)
    tol = 64 * np.finfo(desired.dtype).eps * scale
    err = float(np.max(np.abs(actual.astype(np.float64) - desired))) if desired.size else 0.0
    assert err <= tol, "%s: max abs diff %.3g > %.3g" % (err_msg, err, tol)


def _transposed(res):
    """A batch-first result in time-major form (y or dx swapped), for the oracle comparison."""
    if hasattr(res, "y"):
        return res._replace(y=res.y.transpose(1, 0, 2))
    return res._replace(dx=res.dx.transpose(1, 0, 2))


LAYOUT_CASES = [(m, d) for m in MODES for d in DTYPES]


@pytest.mark.parametrize("mode,dtype", LAYOUT_CASES,
                         ids=["%s-%s" % (m, np.dtype(d).name) for m, d in LAYOUT_CASES])
def test_batch_first_matches_time_major(mode, dtype):
    for shape in ((7, 3, 5, 16), (1, 1, 1, 1)):
        p, r, t = _case(mode, 2, True, True, shape)
        ctx = _ctx(mode, 2, True, True, shape, dtype)
        tm, gtm = _run(p, dtype)
        xb = np.ascontiguousarray(cast(p.x, dtype).transpose(1, 0, 2))
        res = fusedrnn.forward(xb, cast(p.flat, dtype), mode=mode, hidden_size=p.H,
                               num_layers=p.L, bidirectional=True, h0=cast(p.h0, dtype),
                               c0=cast(p.c0, dtype), batch_first=True, training=True)
        assert res.y.shape == (p.N, p.T, p.D * p.H), ctx
        _assert_same_sum_order(res.y, tm.y.transpose(1, 0, 2), err_msg=ctx)
        _assert_same_sum_order(res.hN, tm.hN, err_msg=ctx)
        if mode == "lstm":
            _assert_same_sum_order(res.cN, tm.cN, err_msg=ctx)
        dyb = np.ascontiguousarray(cast(p.dy, dtype).transpose(1, 0, 2))
        g = fusedrnn.backward(res.ctx, dy=dyb, dhN=cast(p.dhN, dtype), dcN=cast(p.dcN, dtype))
        assert g.dx.shape == xb.shape and g.dx.dtype == dtype, ctx
        _assert_same_sum_order(g.dx, gtm.dx.transpose(1, 0, 2), err_msg=ctx)
        _assert_same_sum_order(g.dh0, gtm.dh0, err_msg=ctx)
        if mode == "lstm":
            _assert_same_sum_order(g.dc0, gtm.dc0, err_msg=ctx)
        _assert_same_sum_order(g.dw, gtm.dw, err_msg=ctx)
        _check_against_reference(p, r, t, _transposed(res), _transposed(g), dtype, ctx)


@pytest.mark.parametrize("mode,dtype", LAYOUT_CASES,
                         ids=["%s-%s" % (m, np.dtype(d).name) for m, d in LAYOUT_CASES])
def test_noncontiguous_input(mode, dtype):
    shape = (7, 3, 5, 16)
    p, r, t = _case(mode, 2, True, True, shape)
    ctx = _ctx(mode, 2, True, True, shape, dtype)
    base = np.ascontiguousarray(cast(p.x, dtype).transpose(1, 0, 2))    # (N, T, C)
    xv = np.swapaxes(base, 0, 1)                                        # (T, N, C) view
    assert not xv.flags.c_contiguous
    # a non-contiguous output-gradient view as well
    dyv = np.swapaxes(np.ascontiguousarray(cast(p.dy, dtype).transpose(1, 0, 2)), 0, 1)
    assert not dyv.flags.c_contiguous
    tm, gtm = _run(p, dtype)
    res = fusedrnn.forward(xv, cast(p.flat, dtype), mode=mode, hidden_size=p.H, num_layers=2,
                           bidirectional=True, h0=cast(p.h0, dtype), c0=cast(p.c0, dtype),
                           training=True)
    _assert_same_sum_order(res.y, tm.y, err_msg=ctx)
    _assert_same_sum_order(res.hN, tm.hN, err_msg=ctx)
    if mode == "lstm":
        _assert_same_sum_order(res.cN, tm.cN, err_msg=ctx)
    g = fusedrnn.backward(res.ctx, dy=dyv, dhN=cast(p.dhN, dtype), dcN=cast(p.dcN, dtype))
    assert g.dx.shape == xv.shape, ctx
    _assert_same_sum_order(g.dx, gtm.dx, err_msg=ctx)
    _assert_same_sum_order(g.dh0, gtm.dh0, err_msg=ctx)
    _assert_same_sum_order(g.dw, gtm.dw, err_msg=ctx)
    # and both agree with the oracle
    _check_against_reference(p, r, t, res, g, dtype, ctx)


# --------------------------------------------------------------------------
# Backward API semantics
# --------------------------------------------------------------------------

API_CASES = [(m, d) for m in MODES for d in DTYPES]
API_IDS = ["%s-%s" % (m, np.dtype(d).name) for m, d in API_CASES]


def _assert_grads_equal(a, b, ctx, weights=True):
    np.testing.assert_array_equal(a.dx, b.dx, err_msg=ctx)
    np.testing.assert_array_equal(a.dh0, b.dh0, err_msg=ctx)
    if a.dc0 is None or b.dc0 is None:
        assert a.dc0 is None and b.dc0 is None, ctx
    else:
        np.testing.assert_array_equal(a.dc0, b.dc0, err_msg=ctx)
    if weights:
        np.testing.assert_array_equal(a.dw, b.dw, err_msg=ctx)


@pytest.mark.parametrize("mode,dtype", API_CASES, ids=API_IDS)
def test_backward_variants_agree(mode, dtype):
    shape = (7, 3, 5, 16)
    p, r, t = _case(mode, 2, True, True, shape)
    ctx = _ctx(mode, 2, True, True, shape, dtype)
    dy, dhN, dcN = cast(p.dy, dtype), cast(p.dhN, dtype), cast(p.dcN, dtype)
    res, g1 = _run(p, dtype)
    _check_against_reference(p, r, t, res, g1, dtype, ctx)
    # calling backward twice on the same ctx gives identical results
    g2 = fusedrnn.backward(res.ctx, dy=dy, dhN=dhN, dcN=dcN)
    _assert_grads_equal(g1, g2, ctx + " backward twice")
    # weight_grad=False: dw is None, data grads unchanged
    g3 = fusedrnn.backward(res.ctx, dy=dy, dhN=dhN, dcN=dcN, weight_grad=False)
    assert g3.dw is None, ctx
    _assert_grads_equal(g1, g3, ctx + " weight_grad=False", weights=False)
    # backward_data + backward_weights == backward (on a fresh ctx)
    c = _run(p, dtype, training=True)[0].ctx
    dx, dh0, dc0 = fusedrnn.backward_data(c, dy=dy, dhN=dhN, dcN=dcN)
    dw = fusedrnn.backward_weights(c)
    split = SimpleNamespace(dx=dx, dh0=dh0, dc0=dc0, dw=dw)
    _assert_grads_equal(g1, split, ctx + " backward_data+backward_weights")


@pytest.mark.parametrize("mode,dtype", API_CASES, ids=API_IDS)
def test_none_output_grads_mean_zero(mode, dtype):
    shape = (7, 3, 5, 16)
    p, _, _ = _case(mode, 2, True, True, shape)
    lstm = mode == "lstm"
    ctx = _ctx(mode, 2, True, True, shape, dtype)
    zeros_h = np.zeros((p.L * p.D, p.N, p.H), dtype)
    res, _ = _run(p, dtype, training=True)
    _, _, _, cache = ref.forward(p.x, p.flat, mode, p.H, p.L, True, p.h0, p.c0)
    combos = [("dy only", cast(p.dy, dtype), None, None),
              ("dhN only", None, cast(p.dhN, dtype), None),
              ("nothing", None, None, None)]
    if lstm:
        combos.append(("dcN only", None, None, cast(p.dcN, dtype)))
    for label, dy, dhN, dcN in combos:
        c = "%s %s" % (ctx, label)
        g = fusedrnn.backward(res.ctx, dy=dy, dhN=dhN, dcN=dcN)
        ex = fusedrnn.backward(res.ctx, dy=np.zeros_like(res.y) if dy is None else dy,
                               dhN=zeros_h if dhN is None else dhN,
                               dcN=(zeros_h if dcN is None else dcN) if lstm else None)
        _assert_grads_equal(g, ex, c)
        # and against the oracle (float64 only: the float32 rule needs a torch run)
        if dtype == np.float64:
            rdx, rdh0, rdc0, rdw = ref.backward(cache, dy, dhN, dcN)
            assert_close("dx", g.dx, rdx, ctx=c)
            assert_close("dh0", g.dh0, rdh0, ctx=c)
            if lstm:
                assert_close("dc0", g.dc0, rdc0, ctx=c)
            assert_close("dw", g.dw, rdw, ctx=c)
        if label == "nothing":
            assert not np.any(g.dx) and not np.any(g.dh0) and not np.any(g.dw), c


@pytest.mark.parametrize("mode,dtype", API_CASES, ids=API_IDS)
def test_inputs_not_modified(mode, dtype):
    shape = (7, 3, 5, 16)
    p, _, _ = _case(mode, 2, True, True, shape)
    lstm = mode == "lstm"
    x, w, h0, c0 = cast(p.x, dtype), cast(p.flat, dtype), cast(p.h0, dtype), cast(p.c0, dtype)
    dy, dhN, dcN = cast(p.dy, dtype), cast(p.dhN, dtype), cast(p.dcN, dtype)
    arrays = {"x": x, "weights": w, "h0": h0, "dy": dy, "dhN": dhN}
    if lstm:
        arrays.update(c0=c0, dcN=dcN)
    saved = {k: v.copy() for k, v in arrays.items()}

    def check(stage):
        for k, v in arrays.items():
            np.testing.assert_array_equal(v, saved[k], err_msg="%s modified by %s [%s]" % (
                k, stage, mode))

    for training in (False, True):
        res = fusedrnn.forward(x, w, mode=mode, hidden_size=p.H, num_layers=2,
                               bidirectional=True, h0=h0, c0=c0, training=training)
        check("forward(training=%s)" % training)
    fusedrnn.backward(res.ctx, dy=dy, dhN=dhN, dcN=dcN)
    check("backward")
    fusedrnn.backward(res.ctx, dy=dy, dhN=dhN, dcN=dcN, weight_grad=False)
    check("backward(weight_grad=False)")
    res = fusedrnn.forward(x, w, mode=mode, hidden_size=p.H, num_layers=2,
                           bidirectional=True, h0=h0, c0=c0, training=True)
    fusedrnn.backward_data(res.ctx, dy=dy, dhN=dhN, dcN=dcN)
    fusedrnn.backward_weights(res.ctx)
    check("backward_data/backward_weights")


@pytest.mark.parametrize("mode,dtype", API_CASES, ids=API_IDS)
def test_training_flag_same_outputs(mode, dtype):
    for L, bi, init, shape in ((2, True, True, (7, 3, 5, 16)), (3, False, False, (1, 1, 1, 1)),
                               (1, True, False, (7, 1, 16, 5))):
        p, _, _ = _case(mode, L, bi, init, shape)
        ctx = _ctx(mode, L, bi, init, shape, dtype)
        inf, _ = _run(p, dtype, training=False)
        tr, _ = _run(p, dtype, training=True)
        assert inf.ctx is None, ctx
        assert tr.ctx is not None, ctx
        np.testing.assert_array_equal(inf.y, tr.y, err_msg=ctx)
        np.testing.assert_array_equal(inf.hN, tr.hN, err_msg=ctx)
        if mode == "lstm":
            np.testing.assert_array_equal(inf.cN, tr.cN, err_msg=ctx)
        else:
            assert inf.cN is None and tr.cN is None, ctx


# --------------------------------------------------------------------------
# Finite differences of fusedrnn itself (float64)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_fusedrnn_finite_differences(mode):
    T, N, C, H, L, bi = 3, 2, 2, 2, 2, True
    p = make_problem(mode, T, N, C, H, L, bi, True, seed=seed_of("fdlib", mode),
                     f32_exact=False)
    lstm = mode == "lstm"

    def loss_fn():
        res = fusedrnn.forward(p.x, p.flat, mode=mode, hidden_size=H, num_layers=L,
                               bidirectional=bi, h0=p.h0, c0=p.c0)
        return ref.loss(res.y, res.hN, res.cN, p.dy, p.dhN, p.dcN)

    res, g = _run(p, np.float64)
    arrays = {"x": p.x, "h0": p.h0, "weights": p.flat}
    analytic = {"x": g.dx, "h0": g.dh0, "weights": g.dw}
    if lstm:
        arrays["c0"], analytic["c0"] = p.c0, g.dc0
    check_finite_differences(loss_fn, arrays, analytic, ctx="[fusedrnn %s]" % mode)
