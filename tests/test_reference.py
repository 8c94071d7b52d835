"""Validation of the float64 NumPy oracle (tests/reference.py) itself."""

import numpy as np
import pytest
import torch

import reference as ref
from conftest import (MODES, assert_close, assert_close_flat, check_finite_differences,
                      make_problem, reference_result, seed_of, torch_module, torch_run)

ORACLE_RTOL = 1e-10

# (T, N, C, H): odd sizes, C != H, and the degenerate T=N=C=H=1
SHAPES = [(5, 3, 4, 3), (1, 1, 1, 1), (3, 2, 1, 5)]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_layout_matches_torch(mode, L, bidirectional):
    C, H = 3, 4
    m = torch_module(mode, C, H, L, bidirectional, dtype=torch.float32)
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    lay = ref.layout(mode, C, H, L, bidirectional)
    assert {n for n, _ in lay} == set(sd)
    for name, shape in lay:
        assert tuple(sd[name].shape) == tuple(shape), name
    n = ref.param_size(mode, C, H, L, bidirectional)
    assert n == sum(v.size for v in sd.values())
    # weights first (layer, direction, ih, hh), then biases in the same order
    names = [nm for nm, _ in lay]
    nw = 2 * L * (2 if bidirectional else 1)
    assert all(nm.startswith("weight_") for nm in names[:nw])
    assert all(nm.startswith("bias_") for nm in names[nw:])
    assert names[0] == "weight_ih_l0" and names[1] == "weight_hh_l0"
    if bidirectional:
        assert names[2] == "weight_ih_l0_reverse"
    # pack/unpack round trip, and unpack = consecutive row-major blocks
    flat = ref.pack(sd, mode, C, H, L, bidirectional)
    assert flat.shape == (n,) and flat.dtype == np.float32
    back = ref.unpack(flat, mode, C, H, L, bidirectional)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
    off = 0
    for name, shape in lay:
        size = int(np.prod(shape))
        np.testing.assert_array_equal(flat[off:off + size], sd[name].reshape(-1))
        off += size
    assert off == n


def test_param_size_formula():
    for mode, G in (("lstm", 4), ("gru", 3), ("rnn_tanh", 1), ("rnn_relu", 1)):
        for C, H, L, bi in ((1, 1, 1, False), (5, 16, 3, True), (16, 5, 2, False)):
            D = 2 if bi else 1
            expect = 0
            for l in range(L):
                c_in = C if l == 0 else D * H
                expect += D * (G * H * c_in + G * H * H + 2 * G * H)
            assert ref.param_size(mode, C, H, L, bi) == expect


@pytest.mark.parametrize("init", [False, True], ids=["noinit", "init"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("mode", MODES)
def test_reference_vs_torch_float64(mode, L, bidirectional, init):
    for (T, N, C, H) in SHAPES:
        ctx = "[%s L=%d bi=%s init=%s T=%d N=%d C=%d H=%d]" % (
            mode, L, bidirectional, init, T, N, C, H)
        p = make_problem(mode, T, N, C, H, L, bidirectional, init,
                         seed=seed_of("refvt", mode, L, bidirectional, init, T, N, C, H),
                         f32_exact=False)
        r = reference_result(p)
        m = torch_module(mode, C, H, L, bidirectional, p.flat)
        t = torch_run(m, mode, p.x, p.h0, p.c0, p.dy, p.dhN, p.dcN)
        for name in ("y", "hN", "dx", "dh0"):
            assert_close(name, getattr(r, name), getattr(t, name), rtol=ORACLE_RTOL, ctx=ctx)
        if mode == "lstm":
            assert_close("cN", r.cN, t.cN, rtol=ORACLE_RTOL, ctx=ctx)
            assert_close("dc0", r.dc0, t.dc0, rtol=ORACLE_RTOL, ctx=ctx)
        else:
            assert r.cN is None and r.dc0 is None
        tw = ref.pack(t.dparams, mode, C, H, L, bidirectional)
        assert_close_flat("dw", r.dw, tw, None, mode, C, H, L, bidirectional,
                          rtol=ORACLE_RTOL, ctx=ctx)


@pytest.mark.parametrize("mode", MODES)
def test_reference_partial_output_grads(mode):
    """None output gradients mean zero; gradients are linear in (dy, dhN, dcN)."""
    p = make_problem(mode, 4, 2, 3, 2, 2, True, True, seed=seed_of("partial", mode))
    _, _, _, cache = ref.forward(p.x, p.flat, mode, p.H, p.L, True, p.h0, p.c0)
    full = ref.backward(cache, p.dy, p.dhN, p.dcN)
    parts = [ref.backward(cache, p.dy), ref.backward(cache, None, p.dhN),
             ref.backward(cache, None, None, p.dcN)]
    for i in (0, 1, 3):
        total = sum(pt[i] for pt in parts)
        np.testing.assert_allclose(total, full[i], rtol=1e-12, atol=1e-12)
    zero = ref.backward(cache)
    for i in (0, 1, 3):
        assert not np.any(zero[i])
    if mode == "lstm":
        np.testing.assert_allclose(sum(pt[2] for pt in parts), full[2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_reference_reverse_direction_semantics(mode):
    """Reverse direction = forward direction applied to the time-reversed sequence."""
    T, N, C, H = 4, 2, 3, 2
    p = make_problem(mode, T, N, C, H, 1, True, True, seed=seed_of("revsem", mode))
    y, hN, cN, _ = ref.forward(p.x, p.flat, mode, H, 1, True, p.h0, p.c0)
    blocks = ref.unpack(p.flat, mode, C, H, 1, True)
    fwd = {k: blocks[k] for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")}
    rev = {k: blocks[k + "_reverse"] for k in fwd}
    yf, hf, cf, _ = ref.forward(p.x, ref.pack(fwd, mode, C, H), mode, H, 1, False,
                                p.h0[:1], None if p.c0 is None else p.c0[:1])
    yr, hr, cr, _ = ref.forward(p.x[::-1], ref.pack(rev, mode, C, H), mode, H, 1, False,
                                p.h0[1:], None if p.c0 is None else p.c0[1:])
    np.testing.assert_array_equal(y[:, :, :H], yf)
    np.testing.assert_array_equal(y[:, :, H:], yr[::-1])
    np.testing.assert_array_equal(hN, np.concatenate([hf, hr]))
    np.testing.assert_array_equal(hN[0], y[-1, :, :H])
    np.testing.assert_array_equal(hN[1], y[0, :, H:])


FD_CASES = [
    # (T, N, C, H, L, bidirectional)
    (3, 2, 2, 2, 2, True),
    (1, 1, 1, 1, 1, False),
    (2, 1, 3, 1, 2, False),
]


@pytest.mark.parametrize("case", FD_CASES, ids=lambda c: "T%dN%dC%dH%dL%d%s" % (
    c[:5] + ("bi" if c[5] else "uni",)))
@pytest.mark.parametrize("mode", MODES)
def test_reference_backward_vs_finite_differences(mode, case):
    T, N, C, H, L, bi = case
    p = make_problem(mode, T, N, C, H, L, bi, True, seed=seed_of("fdref", mode, case),
                     f32_exact=False)
    lstm = mode == "lstm"
    arrays = {"x": p.x, "h0": p.h0, "flat": p.flat}
    if lstm:
        arrays["c0"] = p.c0

    def loss_fn():
        y, hN, cN, _ = ref.forward(p.x, p.flat, mode, H, L, bi, p.h0, p.c0)
        return ref.loss(y, hN, cN, p.dy, p.dhN, p.dcN)

    r = reference_result(p)
    analytic = {"x": r.dx, "h0": r.dh0, "flat": r.dw}
    if lstm:
        analytic["c0"] = r.dc0
    check_finite_differences(loss_fn, arrays, analytic, ctx="[%s %r]" % (mode, case))


def test_reference_rejects_bad_inputs():
    with pytest.raises(ValueError):
        ref.param_size("lstmx", 2, 2)
    with pytest.raises(ValueError):
        ref.unpack(np.zeros(3), "gru", 2, 2)
