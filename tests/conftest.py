"""Shared helpers for the fusedrnn test-suite.

Test modules import these directly (``from conftest import ...``); the tests
directory is put on sys.path here so that ``import reference`` / ``import
conftest`` work whatever pytest import mode is used.
"""

import os
import sys
import zlib
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference as ref  # noqa: E402

import fusedrnn  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)   # tiny problems: threading only adds overhead / noise

MODES = ref.MODES
IS_LSTM = {m: m == "lstm" for m in MODES}


# --------------------------------------------------------------------------
# Random problems
# --------------------------------------------------------------------------

def seed_of(*key):
    """Deterministic seed from any repr-able key."""
    return zlib.crc32(repr(key).encode())


def rng_for(*key):
    return np.random.default_rng(seed_of(*key))


def random_weights(mode, C, H, L=1, bidirectional=False, rng=None, scale=1.0):
    """Flat float64 weights, uniform(-k, k) with k = scale/sqrt(H) (torch's init range)."""
    rng = np.random.default_rng(0) if rng is None else rng
    k = scale / np.sqrt(H)
    return rng.uniform(-k, k, ref.param_size(mode, C, H, L, bidirectional))


def _f32_exact(a):
    return None if a is None else a.astype(np.float32).astype(np.float64)


def make_problem(mode, T, N, C, H, L=1, bidirectional=False, init=True, seed=0,
                 f32_exact=True):
    """Random inputs/weights/output-gradients, float64.

    With f32_exact=True every array holds float32-representable values, so the
    same float64 reference serves float32 and float64 runs and input rounding
    does not count as error.
    """
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    lstm = mode == "lstm"
    p = SimpleNamespace(mode=mode, T=T, N=N, C=C, H=H, L=L, bidirectional=bidirectional,
                        D=D, init=init)
    p.flat = random_weights(mode, C, H, L, bidirectional, rng)
    p.x = rng.standard_normal((T, N, C))
    p.h0 = 0.5 * rng.standard_normal((L * D, N, H)) if init else None
    p.c0 = rng.standard_normal((L * D, N, H)) if (init and lstm) else None
    p.dy = rng.standard_normal((T, N, D * H))
    p.dhN = rng.standard_normal((L * D, N, H))
    p.dcN = rng.standard_normal((L * D, N, H)) if lstm else None
    if f32_exact:
        for name in ("flat", "x", "h0", "c0", "dy", "dhN", "dcN"):
            setattr(p, name, _f32_exact(getattr(p, name)))
    return p


def cast(a, dtype):
    return None if a is None else np.ascontiguousarray(a, dtype=dtype)


def reference_result(p):
    """Float64 oracle forward+backward for a problem -> SimpleNamespace."""
    y, hN, cN, cache = ref.forward(p.x, p.flat, p.mode, p.H, p.L, p.bidirectional, p.h0, p.c0)
    dx, dh0, dc0, dw = ref.backward(cache, p.dy, p.dhN, p.dcN)
    return SimpleNamespace(y=y, hN=hN, cN=cN, dx=dx, dh0=dh0, dc0=dc0, dw=dw)


# --------------------------------------------------------------------------
# torch.nn counterparts
# --------------------------------------------------------------------------

def torch_module(mode, C, H, L=1, bidirectional=False, flat=None, dtype=torch.float64,
                 batch_first=False):
    """torch.nn.LSTM/GRU/RNN; weights from a flat vector (via the reference layout) if given."""
    kw = dict(input_size=C, hidden_size=H, num_layers=L, bidirectional=bidirectional,
              batch_first=batch_first)
    if mode == "lstm":
        m = torch.nn.LSTM(**kw)
    elif mode == "gru":
        m = torch.nn.GRU(**kw)
    elif mode == "rnn_tanh":
        m = torch.nn.RNN(nonlinearity="tanh", **kw)
    elif mode == "rnn_relu":
        m = torch.nn.RNN(nonlinearity="relu", **kw)
    else:
        raise ValueError(mode)
    m = m.to(dtype)
    if flat is not None:
        sd = ref.unpack(np.asarray(flat), mode, C, H, L, bidirectional)
        m.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)).to(dtype)
                           for k, v in sd.items()})
    return m


def torch_run(m, mode, x, h0=None, c0=None, dy=None, dhN=None, dcN=None):
    """Forward + autograd backward of a torch module.

    Arrays are numpy in the module's layout (x batch-first iff the module is);
    computation is in the module's dtype.  Missing h0/c0 are zeros (so their
    gradients are still returned); missing dy/dhN/dcN are zero.  Returns numpy
    arrays: y, hN, cN, dx, dh0, dc0 and dparams (dict by torch name).
    """
    dtype = next(m.parameters()).dtype
    lstm = mode == "lstm"
    D = 2 if m.bidirectional else 1
    N = x.shape[0] if m.batch_first else x.shape[1]
    hshape = (m.num_layers * D, N, m.hidden_size)

    def t(a, shape=None):
        a = np.zeros(shape) if a is None else a
        return torch.tensor(np.asarray(a), dtype=dtype)

    xt = t(x).requires_grad_()
    h0t = t(h0, hshape).requires_grad_()
    if lstm:
        c0t = t(c0, hshape).requires_grad_()
        y, (hN, cN) = m(xt, (h0t, c0t))
    else:
        y, hN = m(xt, h0t)
        cN = None
    loss = (y * t(dy, tuple(y.shape))).sum() + (hN * t(dhN, hshape)).sum()
    if lstm:
        loss = loss + (cN * t(dcN, hshape)).sum()
    names = [n for n, _ in m.named_parameters()]
    inputs = [xt, h0t] + ([c0t] if lstm else []) + [p for _, p in m.named_parameters()]
    grads = torch.autograd.grad(loss, inputs)
    out = SimpleNamespace(
        y=y.detach().numpy(), hN=hN.detach().numpy(),
        cN=cN.detach().numpy() if lstm else None,
        dx=grads[0].numpy(), dh0=grads[1].numpy(),
        dc0=grads[2].numpy() if lstm else None)
    pg = grads[3 if lstm else 2:]
    out.dparams = {n: g.numpy() for n, g in zip(names, pg)}
    return out


def torch_result_flat(p, dtype=torch.float32):
    """Run the torch module built from p.flat on problem p (time-major) in `dtype`.

    Weight gradients are packed into a flat vector (attribute dw) with the
    reference layout."""
    m = torch_module(p.mode, p.C, p.H, p.L, p.bidirectional, p.flat, dtype)
    r = torch_run(m, p.mode, p.x, p.h0, p.c0, p.dy, p.dhN, p.dcN)
    r.dw = ref.pack(r.dparams, p.mode, p.C, p.H, p.L, p.bidirectional)
    return r


# --------------------------------------------------------------------------
# The accuracy rule (the one place where tolerances live)
# --------------------------------------------------------------------------

F64_RTOL = 1e-9        # float64 results vs the float64 reference
F32_TORCH_FACTOR = 2.0  # float32 error may be at most this times torch's float32 error
F32_FLOOR = 1e-6       # ... plus this times max(max-abs scale of the reference, 1)


def _maxabs(a):
    a = np.asarray(a, dtype=np.float64)
    return float(np.max(np.abs(a))) if a.size else 0.0


def assert_close(name, actual, expected, torch_val=None, rtol=F64_RTOL, ctx="",
                 details=None):
    """Accuracy rule used everywhere (errors are max-abs over the whole tensor).

    `expected` is a float64 reference, scale = max|expected|.
    * float64 `actual`: max|actual - expected| <= rtol * scale.
    * float32 `actual`: max|actual - expected| <= 2 * max|torch_val - expected|
      + 1e-6 * max(scale, 1), where `torch_val` is torch's own float32 result
      for the same (float32) inputs.  The floor keeps a (lucky) exact or
      near-exact torch result from demanding the impossible; it is relative to
      max(scale, 1) because inputs and output gradients are O(1), so rounding
      of O(1) intermediates (e.g. sums that cancel to a small weight gradient)
      bounds what any float32 implementation can achieve.
    `details`: optional callable giving extra text for the failure message.
    """
    label = "%s %s" % (name, ctx)
    assert actual is not None, "%s: got None" % label
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, "%s: shape %r != expected %r" % (
        label, actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), "%s: non-finite values" % label
    err = _maxabs(actual.astype(np.float64) - expected)
    scale = _maxabs(expected)
    if actual.dtype == np.float64:
        tol = rtol * scale
        detail = "rtol %g" % rtol
    elif actual.dtype == np.float32:
        assert torch_val is not None, "%s: float32 check needs torch's float32 result" % label
        torch_err = _maxabs(np.asarray(torch_val, dtype=np.float64) - expected)
        tol = F32_TORCH_FACTOR * torch_err + F32_FLOOR * max(scale, 1.0)
        detail = "torch f32 err %.3g" % torch_err
    else:
        raise AssertionError("%s: unexpected dtype %s" % (label, actual.dtype))
    assert err <= tol, "%s: max abs err %.3g > tol %.3g (%s, scale %.3g)%s" % (
        label, err, tol, detail, scale, details() if details else "")


def assert_close_flat(name, actual, expected, torch_val, mode, C, H, L, bidirectional,
                      rtol=F64_RTOL, ctx=""):
    """assert_close on a whole flat weight(-gradient) vector; a failure message lists
    the error of every named block (weight_ih_l0, ...) for diagnosis."""
    assert actual is not None, "%s %s: got None" % (name, ctx)
    actual = np.asarray(actual)
    n = ref.param_size(mode, C, H, L, bidirectional)
    assert actual.shape == (n,), "%s %s: shape %r != (%d,)" % (name, ctx, actual.shape, n)

    def details():
        a = ref.unpack(actual.astype(np.float64), mode, C, H, L, bidirectional)
        e = ref.unpack(np.asarray(expected, dtype=np.float64), mode, C, H, L, bidirectional)
        t = None if torch_val is None else ref.unpack(
            np.asarray(torch_val, dtype=np.float64), mode, C, H, L, bidirectional)
        lines = ["\n  %-22s err %.3g%s scale %.3g" % (
            k, _maxabs(a[k] - e[k]),
            "" if t is None else " (torch %.3g)" % _maxabs(t[k] - e[k]), _maxabs(e[k]))
            for k in e]
        return "".join(lines)

    assert_close(name, actual, expected, torch_val, rtol=rtol, ctx=ctx, details=details)


# --------------------------------------------------------------------------
# fusedrnn's counter-based random numbers (fusedrnn/random.h), re-implemented in NumPy so that the
# reference can run with the very masks fusedrnn draws
# --------------------------------------------------------------------------

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(z):
    z = (z + np.uint64(0x9E3779B97F4A7C15)) & _M64
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return z ^ (z >> np.uint64(31))


def uniform01(seed, stream, count):
    """The uniforms of indices 0..count-1 of one stream, as float64 (exactly the float32 values)."""
    with np.errstate(over="ignore"):
        key = _mix64(np.uint64(seed) ^ _mix64(np.uint64(stream)))
        u = _mix64(key + np.arange(count, dtype=np.uint64)) >> np.uint64(40)
    return u.astype(np.float64) * 2.0**-24


# --------------------------------------------------------------------------
# Finite differences
# --------------------------------------------------------------------------

def check_finite_differences(loss_fn, arrays, analytic, eps=1e-6, tol=1e-6, ctx=""):
    """Central differences of scalar loss_fn() w.r.t. every entry of each array.

    `arrays`: name -> contiguous float64 array that loss_fn reads (perturbed in
    place and restored).  `analytic`: name -> gradient to check.
    Asserts max|numeric - analytic| <= tol * max(1, max|analytic|).
    """
    for name, arr in arrays.items():
        assert arr.dtype == np.float64 and arr.flags.c_contiguous
        g = np.asarray(analytic[name], dtype=np.float64)
        assert g.shape == arr.shape, "%s %s: grad shape %r != %r" % (name, ctx, g.shape,
                                                                     arr.shape)
        flat = arr.reshape(-1)
        num = np.zeros(flat.size)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + eps
            fp = loss_fn()
            flat[j] = old - eps
            fm = loss_fn()
            flat[j] = old
            num[j] = (fp - fm) / (2 * eps)
        err = _maxabs(num - g.reshape(-1))
        bound = tol * max(1.0, _maxabs(g))
        assert err <= bound, "finite differences %s %s: max err %.3g > %.3g" % (
            name, ctx, err, bound)


# --------------------------------------------------------------------------
# Options without a torch counterpart (activations, reset-before GRU, masks): fusedrnn vs the
# reference run as dicts, float32 judged against the reference's own float32 arithmetic.
# --------------------------------------------------------------------------

# float32: at most 4x the error of the reference's own float32 arithmetic (the same plain math in
# NumPy float32), plus a floor of 1e-6 * max(scale, 1). Some options (linear or relu gates and cells)
# make recurrences that amplify rounding chaotically, so the ratio between two float32 computations
# varies more than with tanh/sigmoid.
F32_FACTOR, F32_FLOOR = 4.0, 1e-6


def reference_dict(p, dtype=np.float64, **opt):
    """The oracle's forward + backward of problem p as a dict (y, hN, cN, dx, dh0, dc0, dw)."""
    y, hN, cN, cache = ref.forward(p.x, p.flat, p.mode, p.H, p.L, p.bidirectional, p.h0, p.c0,
                                   dtype=dtype, **opt)
    dx, dh0, dc0, dw = ref.backward(cache, p.dy, p.dhN, p.dcN)
    return dict(y=y, hN=hN, cN=cN, dx=dx, dh0=dh0, dc0=dc0, dw=dw)


def fused_dict(p, dtype, **opt):
    """fusedrnn's forward(training) + backward of problem p in dtype, as the same dict."""
    c = lambda a: None if a is None else np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
    res = fusedrnn.forward(c(p.x), c(p.flat), mode=p.mode, hidden_size=p.H, num_layers=p.L,
                           bidirectional=p.bidirectional, h0=c(p.h0), c0=c(p.c0), training=True,
                           **opt)
    g = fusedrnn.backward(res.ctx, dy=c(p.dy), dhN=c(p.dhN), dcN=c(p.dcN))
    return dict(y=res.y, hN=res.hN, cN=res.cN, dx=g.dx, dh0=g.dh0, dc0=g.dc0, dw=g.dw)


def _scale_of(a):
    return max(float(np.max(np.abs(a))), 1.0)


def compare_with_yardstick(got, want, dtype, ctx, yardstick=None):
    """float64: 1e-10 relative to each array's scale. float32: the yardstick is the largest relative
    error of the reference's own float32 arithmetic over all arrays of the run (per-array ratios of
    two float32 computations scatter too much on the amplifying options)."""
    if dtype == np.float32:
        rel32 = max(float(np.max(np.abs(yardstick[k].astype(np.float64) - w))) / _scale_of(w)
                    for k, w in want.items() if w is not None)
    for name, w in want.items():
        if w is None:
            assert got[name] is None, (name, ctx)
            continue
        a = np.asarray(got[name], dtype=np.float64)
        assert a.shape == w.shape and got[name].dtype == dtype, (name, ctx)
        err = float(np.max(np.abs(a - w)))
        if dtype == np.float64:
            tol = 1e-10 * _scale_of(w)
        else:
            tol = (F32_FACTOR * rel32 + F32_FLOOR) * _scale_of(w)
        assert err <= tol, f"{name} {ctx}: max abs err {err:.3g} > {tol:.3g}"


# --------------------------------------------------------------------------
# Executors: tests that take `executor` run once with each (fusedrnn.forward(..., executor=...))
# --------------------------------------------------------------------------

import pytest  # noqa: E402

EXECUTORS = ("loop", "unrolled")


@pytest.fixture(params=EXECUTORS)
def executor(request):
    """The executor to pass as fusedrnn.forward(..., executor=executor): "loop" (while-loop) or
    "unrolled" (fully unrolled)."""
    return request.param


# The core suite runs once per executor: in these modules every fusedrnn call that leaves the
# executor to 'auto' (all of them) gets the one of the run, so both executors pass every test.
CORE_SUITE = {"test_numerics", "test_masks", "test_cell_options", "test_dropout", "test_zoneout",
              "test_projection"}


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__.rsplit(".", 1)[-1] in CORE_SUITE:
        metafunc.parametrize("core_executor", EXECUTORS, indirect=True)


@pytest.fixture(autouse=True)
def core_executor(request, monkeypatch):
    """In CORE_SUITE modules: the executor 'auto' resolves to for this test (else untouched)."""
    chosen = getattr(request, "param", None)
    if chosen is not None:
        import fusedrnn.functional as functional
        monkeypatch.setattr(functional, "choose_executor", lambda *a, **k: chosen)
    return chosen
