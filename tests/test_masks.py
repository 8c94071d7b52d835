"""Masks in the fused kernels (Keras semantics): a masked step of a sample keeps its previous state
(h, and c for LSTM) and outputs it, or zero with zero_masked_output; any pattern (left-padded,
right-padded, gaps, a fully masked sample). The reference's masked semantics are checked against
running each sample alone on its valid steps; fusedrnn against the reference, and by finite
differences."""

import numpy as np
import pytest

import fusedrnn
import reference as ref
from conftest import (check_finite_differences, compare_with_yardstick, fused_dict, make_problem,
                      reference_dict, seed_of)

T, N = 7, 5


def _mask(kind):
    """(T, N) bools; every sample shows a different pattern."""
    m = np.ones((T, N), bool)
    if kind == "right":    # right-padded lengths 7, 5, 1, 3, 6
        for n, length in enumerate((7, 5, 1, 3, 6)):
            m[length:, n] = False
    elif kind == "left":   # left-padded
        for n, length in enumerate((7, 2, 4, 1, 6)):
            m[:T - length, n] = False
    elif kind == "gaps":
        m[[1, 2, 5], 0] = False
        m[0, 1] = False
        m[6, 2] = False
        m[:, 3] = False    # a sample with no valid step at all
        m[::2, 4] = False
    return m


KINDS = ["none", "right", "left", "gaps"]


def _expected_by_compression(p, mask):
    """Each sample run alone on its valid steps (no mask): y at a masked step holds the state that
    direction had reached there in its own processing order; hN/cN are the compressed run's."""
    D, H = p.D, p.H
    y = np.zeros((T, N, D * H))
    hN = np.zeros((p.L * D, N, H))
    cN = np.zeros_like(hN) if p.mode == "lstm" else None
    for n in range(N):
        idx = np.flatnonzero(mask[:, n])
        h0 = None if p.h0 is None else p.h0[:, n:n + 1]
        c0 = None if p.c0 is None else p.c0[:, n:n + 1]
        if idx.size:
            yc, hc, cc, _ = ref.forward(p.x[idx, n:n + 1], p.flat, p.mode, H, p.L, p.bidirectional,
                                        h0, c0)
        else:
            yc = np.zeros((0, 1, D * H))
            hc = np.zeros((p.L * D, 1, H)) if h0 is None else h0
            cc = (np.zeros((p.L * D, 1, H)) if c0 is None else c0) if p.mode == "lstm" else None
        hN[:, n] = hc[:, 0]
        if cN is not None:
            cN[:, n] = cc[:, 0]
        last = p.L - 1
        for d in range(D):
            init = (np.zeros(H) if h0 is None else h0[last * D + d, 0])
            state = init
            order = range(T) if d == 0 else range(T - 1, -1, -1)
            for t in order:
                if mask[t, n]:
                    state = yc[np.searchsorted(idx, t), 0, d * H:(d + 1) * H]
                y[t, n, d * H:(d + 1) * H] = state
    return y, hN, cN


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", fusedrnn.MODES)
def test_reference_mask_equals_per_sample_compression(mode, kind):
    for L, bi in ((1, False), (2, True)):
        p = make_problem(mode, T, N, 3, 4, L, bi, init=True, seed=seed_of("cmp", mode, kind, L))
        mask = _mask(kind)
        y, hN, cN, _ = ref.forward(p.x, p.flat, mode, p.H, L, bi, p.h0, p.c0, mask=mask)
        ey, ehN, ecN = _expected_by_compression(p, mask)
        np.testing.assert_allclose(y, ey, rtol=0, atol=1e-12)
        np.testing.assert_allclose(hN, ehN, rtol=0, atol=1e-12)
        if cN is not None:
            np.testing.assert_allclose(cN, ecN, rtol=0, atol=1e-12)


CASES = [(m, k, z) for m in ("lstm", "gru", "rnn_tanh") for k in KINDS for z in (False, True)]


@pytest.mark.parametrize("mode,kind,zero", CASES)
def test_masked_matches_reference(mode, kind, zero):
    mask = _mask(kind)
    for L, bi, opt in ((1, False, {}), (2, True, {}), (2, False, dict(reset_after=False)
                                                        if mode == "gru" else {})):
        p = make_problem(mode, T, N, 3, 16, L, bi, init=True, seed=seed_of("mask", mode, kind, L))
        opt = dict(opt, mask=mask, zero_masked_output=zero)
        want = reference_dict(p, **opt)
        yardstick = reference_dict(p, np.float32, **opt)
        for dtype in (np.float64, np.float32):
            compare_with_yardstick(fused_dict(p, dtype, **opt), want, dtype,
                                   f"[{mode} {kind} zero={zero} L={L} bi={bi} {dtype.__name__}]",
                                   yardstick)


def test_zero_masked_output_and_kept_state_in_y():
    p = make_problem("lstm", T, N, 3, 4, 1, False, init=True, seed=5)
    mask = _mask("gaps")
    kept = fused_dict(p, np.float64, mask=mask)["y"]
    zero = fused_dict(p, np.float64, mask=mask, zero_masked_output=True)["y"]
    np.testing.assert_array_equal(zero[~mask], 0.0)
    np.testing.assert_array_equal(zero[mask], kept[mask])
    # sample 3 is fully masked: its output is h0 throughout, and it gets no gradient into x
    np.testing.assert_array_equal(kept[:, 3], np.broadcast_to(p.h0[0, 3], (T, 4)))
    g = fused_dict(p, np.float64, mask=mask)
    np.testing.assert_array_equal(g["dx"][~mask], 0.0)


def test_inference_matches_training_and_batch_first():
    p = make_problem("gru", T, N, 3, 6, 2, True, init=True, seed=9)
    mask = _mask("left")
    for zero in (False, True):
        kw = dict(mode="gru", hidden_size=6, num_layers=2, bidirectional=True, h0=p.h0,
                  mask=mask, zero_masked_output=zero)
        inf = fusedrnn.forward(p.x, p.flat, **kw)
        tr = fusedrnn.forward(p.x, p.flat, training=True, **kw)
        np.testing.assert_array_equal(inf.y, tr.y)
        np.testing.assert_array_equal(inf.hN, tr.hN)
        kw["mask"] = mask.T  # (N, T) as Keras gives it
        bf = fusedrnn.forward(np.ascontiguousarray(p.x.transpose(1, 0, 2)), p.flat, batch_first=True,
                              **kw)
        np.testing.assert_allclose(bf.y.transpose(1, 0, 2), inf.y, rtol=0, atol=1e-14)


@pytest.mark.parametrize("mode,reset_after", [("lstm", True), ("gru", True), ("gru", False),
                                              ("rnn_relu", True)])
def test_masked_finite_differences(mode, reset_after):
    p = make_problem(mode, 4, 3, 2, 3, 2, True, init=True, seed=seed_of("fdmask", mode),
                     f32_exact=False)
    mask = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 0, 1]], bool)
    opt = dict(mask=mask, zero_masked_output=True, reset_after=reset_after)
    g = fused_dict(p, np.float64, **opt)

    def loss():
        r = fusedrnn.forward(p.x, p.flat, mode=mode, hidden_size=p.H, num_layers=2,
                             bidirectional=True, h0=p.h0, c0=p.c0, **opt)
        return ref.loss(r.y, r.hN, r.cN, p.dy, p.dhN, p.dcN)

    arrays = {"x": p.x, "h0": p.h0, "weights": p.flat}
    analytic = {"x": g["dx"], "h0": g["dh0"], "weights": g["dw"]}
    if mode == "lstm":
        arrays["c0"], analytic["c0"] = p.c0, g["dc0"]
    check_finite_differences(loss, arrays, analytic, ctx=f"[masked {mode}]")


@pytest.mark.parametrize("bad,exc,match", [
    (np.ones((T, N), np.float32), TypeError, "mask: expected dtype bool"),
    (np.ones((N, T), bool), ValueError, r"mask: expected shape \(7, 5\)"),
    (np.full((T, N), 2), ValueError, "mask: expected only 0 and 1"),
])
def test_bad_mask(bad, exc, match):
    x = np.zeros((T, N, 3), np.float32)
    w = fusedrnn.init_weights("lstm", 3, 4)
    with pytest.raises(exc, match=match):
        fusedrnn.forward(x, w, mode="lstm", hidden_size=4, mask=bad)
