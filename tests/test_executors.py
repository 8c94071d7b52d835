"""The two executors of the core, the while-loop one (executor="loop") and the fully unrolled one
(executor="unrolled"), compute the same function: on a grid of modes, depths, directions, batch
sizes and lengths, in float32 and float64, training (forward + backward with h0/c0) and inference,
and with the options that run inside the step (masks, dropout, GRU reset-before, projection,
zoneout, residual, activations, lengths), their results agree to rounding (rtol 1e-5 in float32,
1e-12 in float64, relative to max(max|result|, 1))."""

from types import SimpleNamespace

import numpy as np
import pytest

import fusedrnn
import reference as ref
from conftest import seed_of

RTOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = (np.float32, np.float64)


def problem(mode, T, N, C, H, L, bi, P=0, seed=0):
    rng = np.random.default_rng(seed)
    D = 2 if bi else 1
    S = P or H
    lstm = mode == "lstm"
    k = 1.0 / np.sqrt(H)
    return SimpleNamespace(
        mode=mode, T=T, N=N, C=C, H=H, L=L, bi=bi, D=D, P=P,
        flat=rng.uniform(-k, k, ref.param_size(mode, C, H, L, bi, P)),
        x=rng.standard_normal((T, N, C)), h0=0.5 * rng.standard_normal((L * D, N, S)),
        c0=rng.standard_normal((L * D, N, H)) if lstm else None,
        dy=rng.standard_normal((T, N, D * S)), dhN=rng.standard_normal((L * D, N, S)),
        dcN=rng.standard_normal((L * D, N, H)) if lstm else None)


def run(q, dtype, executor, **opt):
    """Training forward + backward, and inference forward, of problem q with one executor."""
    c = lambda a: None if a is None else np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
    kw = dict(mode=q.mode, hidden_size=q.H, num_layers=q.L, bidirectional=q.bi, h0=c(q.h0),
              c0=c(q.c0), proj_size=q.P, executor=executor, **opt)
    r = fusedrnn.forward(c(q.x), c(q.flat), training=True, **kw)
    assert r.ctx.plan.executor == executor
    g = fusedrnn.backward(r.ctx, dy=c(q.dy), dhN=c(q.dhN), dcN=c(q.dcN))
    inf = fusedrnn.forward(c(q.x), c(q.flat), **kw)
    return dict(y=r.y, hN=r.hN, cN=r.cN, dx=g.dx, dh0=g.dh0, dc0=g.dc0, dw=g.dw,
                inf_y=inf.y, inf_hN=inf.hN, inf_cN=inf.cN)


def assert_executors_agree(q, dtype, ctx, **opt):
    a, b = run(q, dtype, "loop", **opt), run(q, dtype, "unrolled", **opt)
    for name, x in a.items():
        y = b[name]
        if x is None:
            assert y is None, (name, ctx)
            continue
        assert x.dtype == y.dtype == dtype and x.shape == y.shape, (name, ctx)
        assert np.all(np.isfinite(x)) and np.all(np.isfinite(y)), (name, ctx)
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        err = float(np.max(np.abs(x64 - y64))) if x.size else 0.0
        tol = RTOL[dtype] * max(float(np.max(np.abs(x64))) if x.size else 0.0, 1.0)
        assert err <= tol, f"{name} {ctx} {dtype.__name__}: loop vs unrolled {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("mode", ref.MODES)
def test_grid(mode, L):
    for bi in (False, True):
        for N in (1, 3):
            for T in (1, 5):
                q = problem(mode, T, N, 3, 5, L, bi, seed=seed_of("exec", mode, L, bi, N, T))
                for dtype in DTYPES:
                    assert_executors_agree(q, dtype, f"[{mode} L={L} bi={bi} N={N} T={T}]")


def _mask(kind, T, N):
    m = np.ones((T, N), bool)
    if kind == "left":      # left-padded: lengths 5, 2, 0, 4
        for n, length in enumerate((5, 2, 0, 4)[:N]):
            m[:T - length, n] = False
    else:                   # gaps
        m[[1, 3], 0] = False
        m[0, 1] = m[4, 1] = False
        m[::2, 2] = False
        m[2, 3:] = False
    return m


OPTIONS = {
    "mask-left": dict(mask=_mask("left", 5, 4)),
    "mask-left-zero": dict(mask=_mask("left", 5, 4), zero_masked_output=True),
    "mask-gaps": dict(mask=_mask("gaps", 5, 4)),
    "mask-gaps-zero": dict(mask=_mask("gaps", 5, 4), zero_masked_output=True),
    "lengths": dict(lengths=np.array([5, 2, 0, 3])),
    "dropout": dict(dropout=0.3, recurrent_dropout=0.4, seed=77),
    "dropout-per-gate": dict(dropout=0.3, recurrent_dropout=0.4, seed=78, dropout_per_gate=True),
    "zoneout": dict(zoneout_outputs=0.3, zoneout_states=0.4, seed=79),
    "activations": dict(activation="softsign", recurrent_activation="hard_sigmoid"),
}


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("mode", ref.MODES)
def test_options(mode, name):
    opt = OPTIONS[name]
    if name == "activations" and mode.startswith("rnn"):
        opt = dict(activation="softsign")
    for L, bi in ((1, False), (2, True)):
        q = problem(mode, 5, 4, 3, 6, L, bi, seed=seed_of("exec-opt", mode, name, L))
        for dtype in DTYPES:
            assert_executors_agree(q, dtype, f"[{mode} {name} L={L} bi={bi}]", **opt)


def test_gru_reset_before():
    for L, bi in ((1, False), (3, True)):
        q = problem("gru", 5, 3, 3, 6, L, bi, seed=seed_of("exec-rb", L))
        for dtype in DTYPES:
            assert_executors_agree(q, dtype, f"[reset_after=False L={L}]", reset_after=False)
            assert_executors_agree(q, dtype, f"[reset_after=False mask L={L}]", reset_after=False,
                                   mask=_mask("gaps", 5, 3))


def test_projection():
    for L, bi in ((1, False), (2, True), (3, False)):
        q = problem("lstm", 5, 3, 3, 7, L, bi, P=3, seed=seed_of("exec-proj", L))
        for dtype in DTYPES:
            assert_executors_agree(q, dtype, f"[proj L={L} bi={bi}]")
            assert_executors_agree(q, dtype, f"[proj mask L={L} bi={bi}]",
                                   mask=_mask("left", 5, 3), zero_masked_output=True)
            assert_executors_agree(q, dtype, f"[proj dropout L={L} bi={bi}]", dropout=0.3, seed=5)


@pytest.mark.parametrize("mode", ref.MODES)
def test_residual(mode):
    for L, bi in ((1, False), (3, True)):
        H = 4
        q = problem(mode, 5, 3, (2 if bi else 1) * H, H, L, bi, seed=seed_of("exec-res", mode, L))
        for dtype in DTYPES:
            assert_executors_agree(q, dtype, f"[{mode} residual L={L} bi={bi}]", residual=True)
            assert_executors_agree(q, dtype, f"[{mode} residual+zoneout L={L} bi={bi}]",
                                   residual=True, zoneout_states=0.3, seed=9)


@pytest.mark.parametrize("mode,L,bi,P", [("lstm", 2, True, 0), ("gru", 3, False, 0),
                                         ("rnn_tanh", 1, True, 0), ("lstm", 2, False, 9)])
def test_packed_recurrent_gemm_shapes(mode, L, bi, P):
    # float32 lanes run the recurrent products through the packed GEMM (cpu/packed_gemm.h): batch
    # 13 = two full 6-row blocks and a remainder, 4H = 80 (five 16-column panels) and H = 20 (a
    # full and a partial panel in backward), with lengths (shrinking row counts) and without
    q = problem(mode, 9, 13, 5, 20, L, bi, P=P, seed=seed_of("packed", mode, L, bi, P))
    assert_executors_agree(q, np.float32, f"packed {mode} L={L} bi={bi} P={P}")
    lengths = np.array([9, 1, 4, 9, 7, 2, 8, 3, 6, 5, 9, 0, 4])
    assert_executors_agree(q, np.float32, f"packed lengths {mode}", lengths=lengths)
    # and against the float64 run: an error of the packed GEMM would be far above float32 rounding
    want = run(q, np.float64, "loop")
    got = run(q, np.float32, "unrolled")
    for name in want:
        if want[name] is not None:
            scale = max(1.0, float(np.max(np.abs(want[name]))))
            assert np.max(np.abs(got[name] - want[name])) <= 1e-4 * scale, name
