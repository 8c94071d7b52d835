"""Rejected inputs: every bad argument gets a clear Python exception, never a crash.

The rule (project standards): ValueError for wrong values and shapes, TypeError for wrong types and
dtypes; the message names the argument and gives the expected and the received shape, dtype or
value; the process never crashes; the caller's arrays are never modified by a call that fails. This
holds for the functional API (fusedrnn.forward / backward / ...), the converters, and for direct
calls of the low-level fusedrnn._C, which must defend itself against any array a caller hands it.

T = 0 and N = 0 are valid (y and dx empty, hN = h0 or zeros, dh0 = dhN or zeros, dw zero), and are
checked here as positive results next to the rejections.

Calls that are known (or likely) to be able to crash the interpreter run in a child process, so that
a segfault fails one test instead of ending the run.
"""

import re
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

import fusedrnn
from fusedrnn import _C
from fusedrnn import converters as cv

MODES = fusedrnn.MODES
T, N, C, H = 3, 2, 4, 5


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

def msg(name, expected, got):
    """A regex for "<name>: ... expected ... <expected> ... got ... <got>"."""
    return (rf"^{re.escape(name)}: .*expected.*{re.escape(str(expected))}"
            rf".*got.*{re.escape(str(got))}")


def snapshot(*arrays):
    return [(a, a.tobytes()) for a in arrays if isinstance(a, np.ndarray)]


def assert_unchanged(snap, what="a failed call"):
    for i, (a, before) in enumerate(snap):
        assert a.tobytes() == before, f"argument #{i} (shape {a.shape}) was modified by {what}"


def raises(exc, pattern, fn, *arrays, **kwargs):
    """fn(**kwargs) raises exc matching pattern and leaves every array in `arrays` and in kwargs
    unchanged."""
    snap = snapshot(*arrays, *kwargs.values())
    with pytest.raises(exc, match=pattern) as info:
        fn(**kwargs)
    assert_unchanged(snap)
    return info


def misaligned(a):
    """A copy of `a` starting 2 bytes past an aligned address (NumPy's aligned flag is off)."""
    buf = np.zeros(a.nbytes + 16, np.uint8)
    start = (-buf.ctypes.data) % 16 + 2
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned and out.ctypes.data % a.itemsize != 0
    return out


def read_only(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def problem(mode="lstm", dtype=np.float32, L=1, bi=False, T_=T, N_=N, batch_first=False, seed=0):
    """Valid inputs for the functional API."""
    rng = np.random.default_rng(seed)
    D = 2 if bi else 1
    lstm = mode == "lstm"
    s = (L * D, N_, H)
    xshape = (N_, T_, C) if batch_first else (T_, N_, C)
    yshape = (N_, T_, D * H) if batch_first else (T_, N_, D * H)

    def r(shape):
        return rng.standard_normal(shape).astype(dtype)

    return SimpleNamespace(
        mode=mode, dtype=np.dtype(dtype), L=L, bi=bi, D=D, batch_first=batch_first, state=s,
        x=r(xshape), w=fusedrnn.init_weights(mode, C, H, L, bi, dtype=dtype, seed=seed),
        h0=r(s), c0=r(s) if lstm else None, dy=r(yshape), dhN=r(s), dcN=r(s) if lstm else None)


def fwd(p, **kw):
    args = dict(mode=p.mode, hidden_size=H, num_layers=p.L, bidirectional=p.bi,
                batch_first=p.batch_first, h0=p.h0, c0=p.c0)
    args.update(kw)
    x = args.pop("x", p.x)
    w = args.pop("weights", p.w)
    return fusedrnn.forward(x, w, **args)


def trained_ctx(p):
    return fwd(p, training=True).ctx


def run_isolated(code, timeout=120):
    """Runs `code` in a fresh interpreter; a crash fails the calling test with the signal number."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout)
    sig = f" (killed by signal {-r.returncode})" if r.returncode < 0 else ""
    assert r.returncode == 0, (
        f"child process exited with {r.returncode}{sig}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r.stdout


# --------------------------------------------------------------------------------------------------
# forward: x
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("shape", [(4,), (2, 4), (1, 3, 2, 4), ()])
def test_forward_x_wrong_rank(shape, batch_first):
    p = problem(batch_first=batch_first)
    layout = "(N, T, C)" if batch_first else "(T, N, C)"
    pat = rf"^x: expected a 3-D array {re.escape(layout)}, got shape {re.escape(str(shape))}"
    raises(ValueError, pat, fwd, p.w, p.h0, p.c0, p=p, x=np.zeros(shape, np.float32),
           batch_first=batch_first)


@pytest.mark.parametrize("batch_first", [False, True])
def test_forward_x_zero_features(batch_first):
    p = problem(batch_first=batch_first)
    x = np.zeros((N, T, 0) if batch_first else (T, N, 0), np.float32)
    raises(ValueError, rf"^x: .*C >= 1.*got shape {re.escape(str(x.shape))}", fwd, p.w, p=p, x=x,
           batch_first=batch_first)


@pytest.mark.parametrize("bad", [np.int64, np.int32, np.float16, np.complex64, np.bool_, ">f4",
                                 "U3"])
def test_forward_x_dtype(bad):
    p = problem()
    x = np.zeros((T, N, C), bad)
    raises(TypeError, msg("x", "float32 or float64", np.dtype(bad)), fwd, p.w, p=p, x=x)


@pytest.mark.parametrize("value, pattern", [
    (None, r"^x: expected an array, got None"),
    ([[1.0], [1.0, 2.0]], r"^x: expected a float array, got list"),
    ("abc", r"^x: expected dtype float32 or float64, got <U3"),
])
def test_forward_x_not_an_array(value, pattern):
    p = problem()
    raises(TypeError, pattern, fwd, p.w, p=p, x=value)


# --------------------------------------------------------------------------------------------------
# forward: weights
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["short", "long", "2-D row", "2-D column", "0-D", "other mode",
                                 "bidirectional"])
def test_forward_weights_wrong_shape(how):
    p = problem("lstm")
    n = p.w.size
    w, kw = {
        "short": (p.w[:-1], {}),
        "long": (np.concatenate([p.w, p.w[:1]]), {}),
        "2-D row": (p.w[None], {}),
        "2-D column": (p.w[:, None], {}),
        "0-D": (np.ones((), np.float32), {}),
        "other mode": (fusedrnn.init_weights("gru", C, H), {}),
        "bidirectional": (p.w, dict(bidirectional=True, h0=None, c0=None)),
    }[how]
    if how == "bidirectional":
        n = fusedrnn.param_size("lstm", C, H, 1, True)
    raises(ValueError, msg("weights", (n,), w.shape), fwd, p.x, p.w, p.h0, p.c0, w, p=p,
           weights=w, **kw)


@pytest.mark.parametrize("xdtype, wdtype", [(np.float32, np.float64), (np.float64, np.float32),
                                            (np.float32, np.int32), (np.float64, np.float16)])
def test_forward_weights_dtype(xdtype, wdtype):
    p = problem(dtype=xdtype)
    w = p.w.astype(wdtype)
    raises(TypeError, msg("weights", np.dtype(xdtype), np.dtype(wdtype)), fwd, p.x, p=p, weights=w)


def test_forward_weights_none():
    p = problem()
    raises(TypeError, r"^weights: expected an array, got None", fwd, p.x, p=p, weights=None)


# --------------------------------------------------------------------------------------------------
# forward: h0, c0
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["h0", "c0"])
@pytest.mark.parametrize("L, bi", [(1, False), (2, True)])
@pytest.mark.parametrize("delta", ["2-D", "4-D", "layers", "batch", "hidden"])
def test_forward_state_wrong_shape(name, L, bi, delta):
    p = problem("lstm", L=L, bi=bi)
    LD = p.state[0]
    bad_shape = {"2-D": (N, H), "4-D": (1, LD, N, H), "layers": (LD + 1, N, H),
                 "batch": (LD, N + 1, H), "hidden": (LD, N, H + 1)}[delta]
    bad = np.zeros(bad_shape, np.float32)
    raises(ValueError, msg(name, p.state, bad_shape), fwd, p.x, p.w, p.h0, p.c0, bad, p=p,
           **{name: bad})


@pytest.mark.parametrize("name", ["h0", "c0"])
@pytest.mark.parametrize("xdtype, sdtype", [(np.float32, np.float64), (np.float64, np.float32),
                                            (np.float32, np.int64), (np.float32, np.float16)])
def test_forward_state_dtype(name, xdtype, sdtype):
    p = problem("lstm", dtype=xdtype)
    bad = np.zeros(p.state, sdtype)
    raises(TypeError, msg(name, np.dtype(xdtype), np.dtype(sdtype)), fwd, p.x, p.w, p.h0, p.c0,
           p=p, **{name: bad})


@pytest.mark.parametrize("mode", ["gru", "rnn_tanh", "rnn_relu"])
def test_forward_c0_for_non_lstm(mode):
    p = problem(mode)
    c0 = np.zeros(p.state, np.float32)
    raises(ValueError, rf"^c0: .*lstm.*{mode}", fwd, p.x, p.w, p.h0, c0, p=p, c0=c0)


# --------------------------------------------------------------------------------------------------
# Sizes, modes and flags (functional API and the layout helpers)
# --------------------------------------------------------------------------------------------------

BAD_SIZES = [
    (0, ValueError), (-1, ValueError), (2.5, TypeError), (float("nan"), TypeError),
    (True, TypeError), (False, TypeError), ("3", TypeError), (None, TypeError),
    (3.0, TypeError), (np.float64(3.0), TypeError),
]


def _size_pattern(name, value):
    shown = "nan" if isinstance(value, float) and value != value else repr(value)
    if isinstance(value, np.floating):
        shown = "3.0"
    return rf"^{name}: expected an integer.*got.*{re.escape(shown)}"


@pytest.mark.parametrize("value, exc", BAD_SIZES, ids=[repr(v) for v, _ in BAD_SIZES])
def test_forward_bad_hidden_size(value, exc):
    p = problem()
    raises(exc, _size_pattern("hidden_size", value), fwd, p.x, p.w, p.h0, p.c0, p=p,
           hidden_size=value)


@pytest.mark.parametrize("value, exc", [(0, ValueError), (-2, ValueError), (1.0, TypeError),
                                        (True, TypeError), (None, TypeError), ("2", TypeError)])
def test_forward_bad_num_layers(value, exc):
    p = problem()
    raises(exc, _size_pattern("num_layers", value), fwd, p.x, p.w, p.h0, p.c0, p=p,
           num_layers=value)


@pytest.mark.parametrize("fn", ["param_size", "param_layout", "init_weights"])
@pytest.mark.parametrize("arg", ["input_size", "hidden_size", "num_layers"])
@pytest.mark.parametrize("value, exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                        (True, TypeError), ("3", TypeError), (None, TypeError)])
def test_layout_helpers_bad_sizes(fn, arg, value, exc):
    kw = dict(mode="gru", input_size=C, hidden_size=H, num_layers=2)
    kw[arg] = value
    with pytest.raises(exc, match=_size_pattern(arg, value)):
        getattr(fusedrnn, fn)(**kw)


@pytest.mark.parametrize("value", [2**40, 2**63, 2**64, 2**100])
@pytest.mark.parametrize("arg", ["input_size", "hidden_size", "num_layers"])
def test_layout_helpers_too_large_sizes(arg, value):
    # A too-large integer is a wrong value: ValueError naming the argument, not pybind11's
    # "incompatible function arguments" TypeError (or a wrapped-around result).
    kw = dict(mode="lstm", input_size=C, hidden_size=H, num_layers=1)
    kw[arg] = value
    with pytest.raises(ValueError, match=rf"^{arg}: .*expected.*got.*{value}"):
        fusedrnn.param_size(**kw)


def test_forward_too_large_hidden_size():
    p = problem("rnn_tanh")
    raises(ValueError, rf"^hidden_size: .*expected.*got.*{2**64}", fwd, p.x, p.w, p.h0, p=p,
           hidden_size=2**64)


@pytest.mark.parametrize("mode", ["LSTM", "foo", "", "lstm ", "rnn", "gru\x00"])
def test_forward_unknown_mode(mode):
    p = problem()
    pattern = (r"^mode: expected one of 'lstm', 'gru', 'rnn_tanh', 'rnn_relu', "
               rf"got {re.escape(repr(mode))}")
    raises(ValueError, pattern, fwd, p.x, p.w, p=p, mode=mode, h0=None, c0=None)


@pytest.mark.parametrize("fn", ["forward", "param_size", "num_gates", "init_weights"])
@pytest.mark.parametrize("mode", [None, 5, b"lstm", ["lstm"]], ids=["None", "int", "bytes", "list"])
def test_mode_of_wrong_type(fn, mode):
    # Not a string at all: a wrong type, so TypeError (the rule), naming mode.
    p = problem()
    calls = {
        "forward": lambda: fwd(p, mode=mode, h0=None, c0=None),
        "param_size": lambda: fusedrnn.param_size(mode, C, H),
        "num_gates": lambda: fusedrnn.num_gates(mode),
        "init_weights": lambda: fusedrnn.init_weights(mode, C, H),
    }
    with pytest.raises(TypeError, match=rf"^mode: .*got.*{re.escape(repr(mode))}"):
        calls[fn]()


@pytest.mark.parametrize("mode", ["LSTM", "foo"])
@pytest.mark.parametrize("fn", ["param_size", "param_layout", "num_gates", "init_weights"])
def test_layout_helpers_unknown_mode(fn, mode):
    args = (mode,) if fn == "num_gates" else (mode, C, H)
    with pytest.raises(ValueError, match=rf"^mode: expected one of.*got '{mode}'"):
        getattr(fusedrnn, fn)(*args)


@pytest.mark.parametrize("flag", ["bidirectional", "batch_first", "training"])
@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0, np.int64(1)],
                         ids=["1", "0", "str", "None", "1.0", "np.int64"])
def test_forward_flag_not_bool(flag, value):
    p = problem()
    raises(TypeError, rf"^{flag}: expected True or False, got {re.escape(repr(value))}", fwd,
           p.x, p.w, p.h0, p.c0, p=p, **{flag: value})


def test_layout_helpers_flag_not_bool():
    with pytest.raises(TypeError, match=r"^bidirectional: expected True or False, got 1"):
        fusedrnn.param_size("lstm", C, H, 1, 1)
    with pytest.raises(TypeError, match=r"^bidirectional: expected True or False, got 'no'"):
        fusedrnn.param_layout("gru", C, H, 1, "no")


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16, np.complex128, np.bool_])
def test_init_weights_bad_dtype(dtype):
    # init_weights draws floats; any dtype forward would refuse is a TypeError naming dtype
    # (not silently all-zero integer weights).
    with pytest.raises(TypeError, match=rf"^dtype: .*float32.*got.*{np.dtype(dtype).name}"):
        fusedrnn.init_weights("lstm", C, H, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# backward: ctx
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", ["backward", "backward_data", "backward_weights"])
@pytest.mark.parametrize("ctx", ["None", "object", "ForwardResult", "inference ctx", "dict"])
def test_backward_bad_ctx(fn, ctx):
    p = problem()
    value = {
        "None": None,
        "object": object(),
        "ForwardResult": fwd(p, training=True),
        "inference ctx": fwd(p, training=False).ctx,
        "dict": {"plan": None},
    }[ctx]
    pattern = r"^ctx: expected the ctx of forward\(\.\.\., training=True\), got \w+"
    with pytest.raises(TypeError, match=pattern):
        getattr(fusedrnn, fn)(value)


def test_backward_weights_before_backward_data():
    p = problem()
    ctx = trained_ctx(p)
    dw = np.full(p.w.shape, 3.0, np.float32)
    raises(RuntimeError, r"backward_data", fusedrnn.backward_weights, ctx=ctx, dw=dw)
    # and it works once backward_data ran
    fusedrnn.backward_data(ctx, dy=p.dy)
    assert fusedrnn.backward_weights(ctx).shape == p.w.shape


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_backward_weight_grad_not_bool(value):
    p = problem()
    ctx = trained_ctx(p)
    raises(TypeError, rf"^weight_grad: expected True or False, got {re.escape(repr(value))}",
           fusedrnn.backward, p.dy, ctx=ctx, dy=p.dy, weight_grad=value)


# --------------------------------------------------------------------------------------------------
# backward: dy, dhN, dcN, dw
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("how", ["T-1", "2-D", "4-D", "features", "other layout"])
def test_backward_dy_wrong_shape(batch_first, how):
    p = problem("gru", L=2, bi=True, batch_first=batch_first)
    ctx = trained_ctx(p)
    want = p.dy.shape
    bad_shape = {"T-1": (want[0] - 1,) + want[1:], "2-D": want[1:], "4-D": (1,) + want,
                 "features": want[:2] + (want[2] + 1,),
                 "other layout": (want[1], want[0], want[2])}[how]
    dy = np.zeros(bad_shape, np.float32)
    raises(ValueError, msg("dy", want, bad_shape), fusedrnn.backward, p.x, p.w, p.h0,
           ctx=ctx, dy=dy, dhN=p.dhN)


@pytest.mark.parametrize("name", ["dhN", "dcN"])
@pytest.mark.parametrize("how", ["2-D", "layers", "batch", "hidden"])
def test_backward_state_grad_wrong_shape(name, how):
    p = problem("lstm", L=2, bi=True)
    ctx = trained_ctx(p)
    LD = p.state[0]
    bad_shape = {"2-D": (N, H), "layers": (LD - 1, N, H), "batch": (LD, N + 1, H),
                 "hidden": (LD, N, H - 1)}[how]
    bad = np.zeros(bad_shape, np.float32)
    kw = dict(dy=p.dy, dhN=p.dhN, dcN=p.dcN)
    kw[name] = bad
    raises(ValueError, msg(name, p.state, bad_shape), fusedrnn.backward, p.x, p.w, p.h0, p.c0,
           ctx=ctx, **kw)


@pytest.mark.parametrize("name", ["dy", "dhN", "dcN"])
@pytest.mark.parametrize("cdtype, bad", [(np.float32, np.float64), (np.float64, np.float32),
                                         (np.float32, np.int32), (np.float64, np.float16)])
def test_backward_grad_dtype(name, cdtype, bad):
    p = problem("lstm", dtype=cdtype)
    ctx = trained_ctx(p)
    kw = dict(dy=p.dy, dhN=p.dhN, dcN=p.dcN)
    kw[name] = kw[name].astype(bad)
    raises(TypeError, msg(name, np.dtype(cdtype), np.dtype(bad)), fusedrnn.backward_data,
           p.x, p.w, p.h0, p.c0, ctx=ctx, **kw)


@pytest.mark.parametrize("mode", ["gru", "rnn_tanh", "rnn_relu"])
def test_backward_dcN_for_non_lstm(mode):
    p = problem(mode)
    ctx = trained_ctx(p)
    dcN = np.ones(p.state, np.float32)
    raises(ValueError, rf"^dcN: .*lstm.*{mode}", fusedrnn.backward, p.dy, ctx=ctx, dy=p.dy,
           dcN=dcN)


@pytest.mark.parametrize("how, exc, pattern", [
    ("short", ValueError, None),
    ("2-D", ValueError, None),
    ("float64", TypeError, msg("dw", "float32", "float64")),
    ("int32", TypeError, msg("dw", "float32", "int32")),
    ("read-only", ValueError, r"^dw: .*writable"),
    ("strided", ValueError, r"^dw: .*contiguous"),
    ("misaligned", ValueError, r"^dw: .*align"),
])
def test_backward_weights_bad_dw(how, exc, pattern):
    p = problem("gru")
    ctx = trained_ctx(p)
    fusedrnn.backward_data(ctx, dy=p.dy)
    n = p.w.size
    base = np.linspace(-1, 1, n).astype(np.float32)
    dw = {
        "short": base[:-1],
        "2-D": base[None],
        "float64": base.astype(np.float64),
        "int32": np.arange(n, dtype=np.int32),
        "read-only": read_only(base),
        "strided": np.repeat(base, 2)[::2],
        "misaligned": misaligned(base),
    }[how]
    if pattern is None:
        pattern = msg("dw", (n,), dw.shape)
    raises(exc, pattern, fusedrnn.backward_weights, p.x, p.w, ctx=ctx, dw=dw)


# --------------------------------------------------------------------------------------------------
# Unusual but valid layouts are accepted (copied), giving the same results
# --------------------------------------------------------------------------------------------------

def _results_equal(a, b):
    for u, v in zip(a, b):
        if u is None or v is None:
            assert u is None and v is None
        else:
            assert u.shape == v.shape and np.array_equal(u, v)


@pytest.mark.parametrize("name", ["x", "weights", "h0", "c0"])
def test_forward_accepts_misaligned_inputs(name):
    # The functional API copies any valid layout it cannot hand to the core (grid_view's promise for
    # x; ascontiguousarray for the rest); a misaligned array is such a layout. It must not fail with
    # the core's message for another name (hx, cx).
    p = problem("lstm")
    ref = fwd(p, training=True)
    kw = dict(x=p.x, weights=p.w, h0=p.h0, c0=p.c0)
    kw[name] = misaligned(kw[name])
    snap = snapshot(*kw.values())
    got = fwd(p, training=True, **kw)
    assert_unchanged(snap, "forward")
    _results_equal(got[:3], ref[:3])


@pytest.mark.parametrize("name", ["dy", "dhN", "dcN"])
def test_backward_accepts_misaligned_grads(name):
    p = problem("lstm")
    ctx = trained_ctx(p)
    ref = fusedrnn.backward(ctx, dy=p.dy, dhN=p.dhN, dcN=p.dcN)
    kw = dict(dy=p.dy, dhN=p.dhN, dcN=p.dcN)
    kw[name] = misaligned(kw[name])
    snap = snapshot(*kw.values())
    got = fusedrnn.backward(ctx, **kw)
    assert_unchanged(snap, "backward")
    _results_equal(got, ref)


def test_odd_layouts_accepted_and_not_modified():
    p = problem("lstm", dtype=np.float64, L=2, bi=True)
    ref = fwd(p, training=True)
    refg = fusedrnn.backward(ref.ctx, dy=p.dy, dhN=p.dhN, dcN=p.dcN)
    x_rev = np.ascontiguousarray(p.x[::-1])[::-1]          # negative time stride
    w_str = np.repeat(p.w, 2)[::2]                            # strided weights
    h0_f = np.asfortranarray(p.h0)                            # Fortran-ordered state
    c0_l = p.c0.tolist()                                      # nested list
    dy_rev = np.ascontiguousarray(p.dy[:, ::-1])[:, ::-1]     # negative batch stride
    args = [x_rev, w_str, h0_f, dy_rev, p.dhN, p.dcN]
    snap = snapshot(*args)
    out = fwd(p, training=True, x=x_rev, weights=w_str, h0=h0_f, c0=c0_l)
    g = fusedrnn.backward(out.ctx, dy=dy_rev, dhN=p.dhN, dcN=p.dcN)
    assert_unchanged(snap, "forward/backward")
    _results_equal(out[:3], ref[:3])
    _results_equal(g, refg)
    # a broadcast (stride-0, read-only) x is also a valid input
    xb = np.broadcast_to(p.x[:1], p.x.shape)
    outb = fwd(p, x=xb)
    refb = fwd(p, x=np.ascontiguousarray(xb))
    _results_equal(outb[:3], refb[:3])


# --------------------------------------------------------------------------------------------------
# T = 0 and N = 0 are valid
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_states", [False, True], ids=["zero-states", "given-states"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["TNC", "NTC"])
@pytest.mark.parametrize("T_, N_", [(0, 2), (3, 0), (0, 0)])
@pytest.mark.parametrize("mode", MODES)
def test_empty_sequence_or_batch(mode, T_, N_, batch_first, with_states):
    p = problem(mode, L=2, bi=True, T_=T_, N_=N_, batch_first=batch_first)
    lstm = mode == "lstm"
    h0 = p.h0 if with_states else None
    c0 = p.c0 if with_states else None
    out = fwd(p, h0=h0, c0=c0, training=True)
    assert out.y.shape == p.dy.shape and out.y.dtype == np.float32
    assert np.array_equal(out.hN, h0 if with_states else np.zeros(p.state, np.float32))
    if lstm:
        assert np.array_equal(out.cN, c0 if with_states else np.zeros(p.state, np.float32))
    else:
        assert out.cN is None
    dhN = p.dhN if with_states else None
    dcN = p.dcN if with_states else None
    g = fusedrnn.backward(out.ctx, dy=p.dy if with_states else None, dhN=dhN, dcN=dcN)
    assert g.dx.shape == p.x.shape and g.dx.dtype == np.float32
    assert np.array_equal(g.dh0, dhN if with_states else np.zeros(p.state, np.float32))
    if lstm:
        assert np.array_equal(g.dc0, dcN if with_states else np.zeros(p.state, np.float32))
    else:
        assert g.dc0 is None
    assert g.dw.shape == p.w.shape and not g.dw.any()
    acc = np.full(p.w.shape, 0.25, np.float32)
    assert fusedrnn.backward_weights(out.ctx, dw=acc) is acc and np.all(acc == 0.25)


# --------------------------------------------------------------------------------------------------
# Inputs are never modified by a failed call (functional API; _C cases check it per case below)
# --------------------------------------------------------------------------------------------------

def test_failed_calls_leave_everything_unchanged():
    p = problem("lstm", L=2, bi=True)
    x, w, h0, c0 = p.x, p.w, p.h0, p.c0
    snap = snapshot(x, w, h0, c0, p.dy, p.dhN, p.dcN)
    with pytest.raises(ValueError):                               # the last argument checked
        fwd(p, c0=np.zeros((1, N, H), np.float32))
    ctx = trained_ctx(p)
    fusedrnn.backward_data(ctx, dy=p.dy, dhN=p.dhN, dcN=p.dcN)
    dw = np.arange(w.size, dtype=np.float32)
    snap_ctx = snapshot(ctx.x, ctx.weights, ctx.h0, ctx.c0, ctx.reserve, dw)
    with pytest.raises(TypeError):
        fusedrnn.backward(ctx, dy=p.dy, dhN=p.dhN, dcN=p.dcN.astype(np.float64))
    with pytest.raises(ValueError):
        fusedrnn.backward_data(ctx, dy=p.dy, dhN=p.dhN[:, :1])
    with pytest.raises(TypeError):
        fusedrnn.backward_weights(ctx, dw=dw.astype(np.float64))
    with pytest.raises(ValueError):
        fusedrnn.backward_weights(ctx, dw=dw[:-1])
    assert_unchanged(snap)
    assert_unchanged(snap_ctx)
    # ... and the context still works, unaffected by the failed calls
    g1 = fusedrnn.backward(ctx, dy=p.dy, dhN=p.dhN, dcN=p.dcN)
    g2 = fusedrnn.backward(trained_ctx(p), dy=p.dy, dhN=p.dhN, dcN=p.dcN)
    _results_equal(g1, g2)


def test_successful_calls_leave_inputs_unchanged():
    p = problem("gru", dtype=np.float64, L=2, bi=True, batch_first=True)
    snap = snapshot(p.x, p.w, p.h0, p.dy, p.dhN)
    out = fwd(p, training=True)
    fusedrnn.backward(out.ctx, dy=p.dy, dhN=p.dhN)
    fusedrnn.backward(out.ctx, dy=p.dy, dhN=p.dhN, weight_grad=False)
    assert_unchanged(snap, "a successful forward/backward")


# --------------------------------------------------------------------------------------------------
# Converters
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def sd():
    w = fusedrnn.init_weights("lstm", C, H, 2, True, seed=1)
    return w, cv.flat_to_torch(w, "lstm", C, H, 2, True)


@pytest.mark.parametrize("how", ["short", "long", "2-D"])
def test_flat_to_torch_wrong_shape(sd, how):
    w, _ = sd
    flat = {"short": w[:-1], "long": np.concatenate([w, w[:3]]), "2-D": w.reshape(2, -1)}[how]
    raises(ValueError, msg("flat", w.shape, flat.shape), cv.flat_to_torch, flat=flat,
           mode="lstm", input_size=C, hidden_size=H, num_layers=2, bidirectional=True)


@pytest.mark.parametrize("value, pattern", [
    (np.arange(10), r"^flat: expected dtype float32 or float64, got int64"),
    (np.zeros(10, np.float16), r"^flat: expected dtype float32 or float64, got float16"),
    (None, r"^flat: expected an array, got None"),
])
def test_flat_to_torch_bad_type(value, pattern):
    with pytest.raises(TypeError, match=pattern):
        cv.flat_to_torch(value, "gru", C, H)


def test_flat_to_torch_bad_description(sd):
    w, _ = sd
    with pytest.raises(ValueError, match=r"^mode: .*got 'LSTM'"):
        cv.flat_to_torch(w, "LSTM", C, H, 2, True)
    with pytest.raises(ValueError, match=r"^input_size: .*got 0"):
        cv.flat_to_torch(w, "lstm", 0, H, 2, True)
    with pytest.raises(TypeError, match=r"^num_layers: .*got float 2.0"):
        cv.flat_to_torch(w, "lstm", C, H, 2.0, True)


def test_torch_to_flat_names(sd):
    _, d = sd
    missing = dict(d)
    del missing["bias_hh_l1_reverse"]
    extra = dict(d, bias_extra=d["bias_hh_l0"])
    renamed = dict(d)
    renamed["l0_i2h_weight"] = renamed.pop("weight_ih_l0")           # MXNet name
    cases = [
        (missing, r"missing \['bias_hh_l1_reverse'\], unexpected \[\]"),
        (extra, r"missing \[\], unexpected \['bias_extra'\]"),
        (renamed, r"missing \['weight_ih_l0'\], unexpected \['l0_i2h_weight'\]"),
        ({}, r"missing \['bias_hh_l0', "),
    ]
    for state, pattern in cases:
        raises(ValueError, r"^state_dict: names do not match mode='lstm'.*" + pattern,
               cv.torch_to_flat, *state.values(), state_dict=state, mode="lstm", input_size=C,
               hidden_size=H, num_layers=2, bidirectional=True)
    # the state dict of a one-directional / one-layer network is not the two-layer bi one
    with pytest.raises(ValueError, match=r"^state_dict: .*unexpected \[.*_reverse"):
        cv.torch_to_flat(d, "lstm", C, H, 2, False)


@pytest.mark.parametrize("state", [[1.0, 2.0], None, "weight_ih_l0", 3],
                         ids=["list", "None", "str", "int"])
def test_torch_to_flat_not_a_mapping(state):
    with pytest.raises(TypeError, match=r"^state_dict: "):
        cv.torch_to_flat(state, "rnn_tanh", C, H)


def test_torch_to_flat_non_string_keys(sd):
    _, d = sd
    bad = dict(d)
    bad[0] = d["bias_hh_l0"]
    bad["bogus"] = d["bias_hh_l0"]
    raises(ValueError, r"^state_dict: names do not match.*unexpected", cv.torch_to_flat,
           *d.values(), state_dict=bad, mode="lstm", input_size=C, hidden_size=H, num_layers=2,
           bidirectional=True)


@pytest.mark.parametrize("key, shape", [("weight_ih_l0", (4 * H, C + 1)),
                                        ("weight_hh_l1_reverse", (H, 4 * H)),
                                        ("bias_ih_l1", (4 * H - 1,)),
                                        ("bias_hh_l0", (4 * H, 1)),
                                        ("weight_ih_l1", (4 * H * 2 * H,))])
def test_torch_to_flat_wrong_shape(sd, key, shape):
    _, d = sd
    bad = dict(d)
    bad[key] = np.zeros(shape, np.float32)
    raises(ValueError, msg(f"state_dict[{key!r}]", d[key].shape, shape), cv.torch_to_flat,
           *bad.values(), state_dict=bad, mode="lstm", input_size=C, hidden_size=H, num_layers=2,
           bidirectional=True)


def test_torch_to_flat_dtypes(sd):
    _, d = sd
    mixed = dict(d, bias_ih_l0=d["bias_ih_l0"].astype(np.float64))
    raises(TypeError,
           r"^state_dict: expected one dtype for all tensors, got \['float32', 'float64'\]",
           cv.torch_to_flat, *mixed.values(), state_dict=mixed, mode="lstm", input_size=C,
           hidden_size=H, num_layers=2, bidirectional=True)
    for bad_dtype in (np.int32, np.float16):
        bad = dict(d, weight_hh_l0=d["weight_hh_l0"].astype(bad_dtype))
        raises(TypeError, msg("state_dict['weight_hh_l0']", "float32 or float64",
                              np.dtype(bad_dtype)),
               cv.torch_to_flat, *bad.values(), state_dict=bad, mode="lstm", input_size=C,
               hidden_size=H, num_layers=2, bidirectional=True)
    none = dict(d, bias_hh_l0=None)
    with pytest.raises(TypeError,
                       match=r"^state_dict\['bias_hh_l0'\]: expected an array, got None"):
        cv.torch_to_flat(none, "lstm", C, H, 2, True)


def test_torch_to_flat_torch_tensors(sd):
    torch = pytest.importorskip("torch")
    _, d = sd
    t = {k: torch.from_numpy(v.copy()) for k, v in d.items()}
    with pytest.raises(TypeError, match=r"^state_dict: expected one dtype.*float32.*float64"):
        cv.torch_to_flat(dict(t, bias_ih_l0=t["bias_ih_l0"].double()), "lstm", C, H, 2, True)
    with pytest.raises(TypeError, match=r"^state_dict\['bias_ih_l0'\]: .*got float16"):
        cv.torch_to_flat(dict(t, bias_ih_l0=t["bias_ih_l0"].half()), "lstm", C, H, 2, True)
    with pytest.raises(ValueError, match=msg("state_dict['bias_ih_l0']", (4 * H,), (4 * H - 1,))):
        cv.torch_to_flat(dict(t, bias_ih_l0=t["bias_ih_l0"][:-1]), "lstm", C, H, 2, True)
    before = {k: v.clone() for k, v in t.items()}
    with pytest.raises(ValueError):
        cv.torch_to_flat(dict(t, weight_ih_l1=t["weight_ih_l1"][:, :-1]), "lstm", C, H, 2, True)
    assert all(torch.equal(before[k], t[k]) for k in t)


# --------------------------------------------------------------------------------------------------
# _C.Plan and the low-level layout functions
# --------------------------------------------------------------------------------------------------

def plan_args(**kw):
    a = dict(mode="lstm", input_size=C, hidden_size=H, num_layers=1, bidirectional=False,
             dtype="float32", T=T, N=N, training=True)
    a.update(kw)
    return a


@pytest.mark.parametrize("kw, exc, pattern", [
    (dict(mode="LSTM"), ValueError, r"^mode: expected one of .*got 'LSTM'"),
    (dict(mode="foo"), ValueError, r"^mode: .*got 'foo'"),
    (dict(dtype="float16"), TypeError, r"^dtype: expected 'float32' or 'float64', got 'float16'"),
    (dict(dtype="int32"), TypeError, r"^dtype: .*got 'int32'"),
    (dict(input_size=0), ValueError, r"^input_size: expected an integer in \[1, \d+\], got 0"),
    (dict(hidden_size=-1), ValueError, r"^hidden_size: .*got -1"),
    (dict(num_layers=0), ValueError, r"^num_layers: .*got 0"),
    (dict(num_layers=1025), ValueError, r"^num_layers: .*got 1025"),
    (dict(T=-1), ValueError, r"^T \(sequence length\): expected >= 0, got -1"),
    (dict(N=-5), ValueError, r"^N \(batch size\): expected >= 0, got -5"),
    # sizes whose byte counts overflow
    (dict(input_size=1, hidden_size=2**28, T=2**31, N=2**31), ValueError,
     r"^hidden_size: .*2684354"),
    (dict(input_size=1, hidden_size=1, T=2**31, N=2**31), ValueError, r"^T\*N: .*2147483648"),
    (dict(T=2**62, N=2**62), ValueError, r"^T\*N: "),
    (dict(T=2**20, N=2**12), ValueError, r"^T\*N: "),
    (dict(hidden_size=2**28 - 1, N=9), ValueError, r"hidden_size"),
    (dict(hidden_size=2**27, bidirectional=True, N=2**20), ValueError, r"hidden_size"),
    (dict(hidden_size=2**27, bidirectional=True, T=2**31 - 1, N=1), ValueError, r"overflow"),
    (dict(input_size=2**28 - 1, hidden_size=2**28 - 1, num_layers=1024, bidirectional=True,
          dtype="float64", T=2**20, N=2**10), ValueError, r"\w"),
])
def test_plan_rejects(kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        _C.Plan(**plan_args(**kw))


@pytest.mark.parametrize("kw", [dict(mode=None), dict(hidden_size=2.5), dict(T="3"),
                                dict(N=float("nan")), dict(dtype=np.float32)])
def test_plan_wrong_argument_types(kw):
    with pytest.raises(TypeError):
        _C.Plan(**plan_args(**kw))


OVERFLOWING_DESCS = [
    ("lstm", 2**27, 2**27, 1024, True),                    # -> negative count
    ("lstm", 2**25 - 1366, 2**25, 683, True),              # -> exactly 0 elements
    ("lstm", 2**28 - 1, 2**28 - 1, 1024, True),
    ("gru", 2**28 - 1, 2**28 - 1, 600, False),
]


@pytest.mark.parametrize("desc", OVERFLOWING_DESCS)
def test_param_count_overflow(desc):
    # The element count does not fit in int64: ValueError, not a wrapped-around count.
    with pytest.raises(ValueError):
        _C.param_count(*desc)
    with pytest.raises(ValueError):
        fusedrnn.param_size(*desc)


def test_param_count_overflow_cannot_crash_forward():
    # With a count that wraps to 0, a zero-length weights array passes the shape check and the core
    # reads gigabytes past it. Run in a child process: a crash must fail this test, not the session.
    out = run_isolated("""
        import numpy as np
        from fusedrnn import _C
        C, H, L = 2**25 - 1366, 2**25, 683
        try:
            plan = _C.Plan("lstm", C, H, L, True, "float32", 1, 1, False)
            ws = np.empty(plan.workspace_bytes // 8 + 1, np.float64)   # not touched unless run
            x = np.zeros((1, 1, C), np.float32)
            y = np.empty((1, 1, 2 * H), np.float32)
            _C.forward(plan, x, np.zeros(0, np.float32), None, None, y, None, None, ws, None)
            print("accepted")
        except ValueError as e:
            print("ValueError", e)
    """)
    assert out.startswith("ValueError"), out


# --------------------------------------------------------------------------------------------------
# Direct _C calls: forward, backward_data, backward_weights
# --------------------------------------------------------------------------------------------------

def c_problem(mode="lstm", dtype=np.float64, training=True, T_=T, N_=N):
    """Valid arguments of _C.forward / backward_data / backward_weights (one layer, one direction),
    with the forward already run so that the reserve holds what backward needs."""
    rng = np.random.default_rng(7)
    dt = np.dtype(dtype)
    plan = _C.Plan(mode, C, H, 1, False, dt.name, T_, N_, training)
    lstm = mode == "lstm"
    s = (1, N_, H)

    def r(shape):
        return rng.standard_normal(shape).astype(dt)

    ws = np.zeros((plan.workspace_bytes + 7) // 8 + 1, np.float64)
    rs = np.zeros((plan.reserve_bytes + 7) // 8 + 1, np.float64) if training else None
    f = dict(plan=plan, x=r((T_, N_, C)), w=r(_C.param_count(mode, C, H, 1, False)), hx=r(s),
             cx=r(s) if lstm else None, y=np.full((T_, N_, H), 7.0, dt), hy=np.full(s, 7.0, dt),
             cy=np.full(s, 7.0, dt) if lstm else None, workspace=ws, reserve=rs)
    _C.forward(**f)
    b = dict(plan=plan, dy=r((T_, N_, H)), dhy=r(s), dcy=r(s) if lstm else None, w=f["w"],
             hx=f["hx"], cx=f["cx"], dx=np.full((T_, N_, C), 7.0, dt), dhx=np.full(s, 7.0, dt),
             dcx=np.full(s, 7.0, dt) if lstm else None, workspace=ws, reserve=rs)
    bw = dict(plan=plan, x=f["x"], hx=f["hx"], dw=np.full(f["w"].shape, 0.5, dt), workspace=ws,
              reserve=rs)
    return SimpleNamespace(forward=f, backward_data=b, backward_weights=bw)


def _overlapping(shape, dtype, strides_in_items):
    item = np.dtype(dtype).itemsize
    base = np.zeros(int(np.prod(shape)) + 64, dtype)
    return np.lib.stride_tricks.as_strided(base, shape, tuple(s * item for s in strides_in_items),
                                           writeable=True)


def seq_cases(name, width, writable):
    """Bad versions of a (T, N, width) sequence argument: (id, make(a), exception, pattern)."""
    f = (T, N, width)
    cases = [
        ("shape", lambda a: np.zeros((T, N, width + 1)), ValueError,
         msg(name, f, (T, N, width + 1))),
        ("rank", lambda a: np.zeros((N, width)), ValueError, msg(name, f, (N, width))),
        ("float32", lambda a: np.zeros(f, np.float32), TypeError, msg(name, "float64", "float32")),
        ("int64", lambda a: np.zeros(f, np.int64), TypeError, msg(name, "float64", "int64")),
        ("misaligned", lambda a: misaligned(np.ones(f)), ValueError, rf"^{name}: .*align"),
        ("strided features", lambda a: np.zeros((T, N, 2 * width))[:, :, ::2], ValueError,
         rf"^{name}: .*contiguous features"),
        ("negative strides", lambda a: np.zeros(f)[::-1], ValueError, rf"^{name}: .*stride"),
        ("overlapping rows", lambda a: _overlapping(f, np.float64, (1, 1, 1)), ValueError,
         rf"^{name}: .*overlap"),
        ("stride-0 time", lambda a: _overlapping(f, np.float64, (0, width, 1)), ValueError,
         rf"^{name}: .*overlap"),
    ]
    if writable:
        cases += [
            ("read-only", lambda a: read_only(np.zeros(f)), ValueError, rf"^{name}: .*writable"),
            ("broadcast", lambda a: np.broadcast_to(np.zeros(width), f), ValueError,
             rf"^{name}: .*(writable|overlap)"),
        ]
    return [(name,) + c for c in cases]


def dense_cases(name, shape, writable, key=None):
    """Bad versions of a dense (C-contiguous) argument."""
    shp = tuple(shape)
    big = shp[:-1] + (shp[-1] + 1,)
    cases = [
        ("shape", lambda a: np.zeros(big), ValueError, msg(name, shp, big)),
        ("rank", lambda a: np.zeros(shp[1:] if len(shp) > 1 else shp + (1,)), ValueError,
         rf"^{name}: expected shape {re.escape(str(shp))}, got \("),
        ("float32", lambda a: np.zeros(shp, np.float32), TypeError,
         msg(name, "float64", "float32")),
        ("int32", lambda a: np.zeros(shp, np.int32), TypeError, msg(name, "float64", "int32")),
        ("strided", lambda a: np.zeros(shp[:-1] + (2 * shp[-1],))[..., ::2], ValueError,
         rf"^{name}: .*C-contiguous"),
        ("fortran", lambda a: np.asfortranarray(np.zeros(shp[::-1]).T) if len(shp) > 1
         else np.zeros(2 * shp[0])[::2], ValueError, rf"^{name}: .*C-contiguous"),
        ("misaligned", lambda a: misaligned(np.ones(shp)), ValueError, rf"^{name}: .*align"),
    ]
    if writable:
        cases.append(("read-only", lambda a: read_only(np.zeros(shp)), ValueError,
                      rf"^{name}: .*writable"))
    return [(key or name,) + c for c in cases]


def scratch_cases(name, key):
    return [
        (key, "too small", lambda a: a[key][:2].copy(), ValueError,
         rf"^{name}: expected at least \d+ bytes, got 16"),
        (key, "None", lambda a: None, TypeError, rf"^{name}: expected a numpy array"),
        (key, "list", lambda a: [0.0] * a[key].size, TypeError,
         rf"^{name}: expected a numpy array"),
        (key, "read-only", lambda a: read_only(a[key]), ValueError, rf"^{name}: .*writable"),
        (key, "strided", lambda a: np.repeat(a[key], 2)[::2], ValueError,
         rf"^{name}: .*C-contiguous"),
        (key, "misaligned", lambda a: misaligned(a[key]), ValueError, rf"^{name}: .*align"),
    ]


S = (1, N, H)
NP = _C.param_count("lstm", C, H, 1, False)

FORWARD_CASES = (
    seq_cases("x", C, False) + seq_cases("y", H, True)
    + dense_cases("weights", (NP,), False, key="w")
    + dense_cases("hx", S, False) + dense_cases("cx", S, False)
    + dense_cases("hy", S, True) + dense_cases("cy", S, True)
    + scratch_cases("workspace", "workspace") + scratch_cases("reserve", "reserve")
)
BACKWARD_DATA_CASES = (
    seq_cases("dy", H, False) + seq_cases("dx", C, True)
    + dense_cases("dhy", S, False) + dense_cases("dcy", S, False)
    + dense_cases("weights", (NP,), False, key="w")
    + dense_cases("hx", S, False) + dense_cases("cx", S, False)
    + dense_cases("dhx", S, True) + dense_cases("dcx", S, True)
    + scratch_cases("workspace", "workspace") + scratch_cases("reserve", "reserve")
)
BACKWARD_WEIGHTS_CASES = (
    seq_cases("x", C, False) + dense_cases("hx", S, False) + dense_cases("dw", (NP,), True)
    + scratch_cases("workspace", "workspace") + scratch_cases("reserve", "reserve")
)


def _ids(cases):
    return [f"{c[0]}-{c[1]}" for c in cases]


def _run_c_case(fn, args, key, make, exc, pattern):
    args = dict(args)
    args[key] = make(args)
    snap = snapshot(*args.values())
    with pytest.raises(exc, match=pattern):
        getattr(_C, fn)(**args)
    # nothing written: not the inputs, not the outputs, not the workspace or reserve
    assert_unchanged(snap)


@pytest.mark.parametrize("key, what, make, exc, pattern", FORWARD_CASES, ids=_ids(FORWARD_CASES))
def test_C_forward_rejects(key, what, make, exc, pattern):
    _run_c_case("forward", c_problem("lstm").forward, key, make, exc, pattern)


@pytest.mark.parametrize("key, what, make, exc, pattern", BACKWARD_DATA_CASES,
                         ids=_ids(BACKWARD_DATA_CASES))
def test_C_backward_data_rejects(key, what, make, exc, pattern):
    _run_c_case("backward_data", c_problem("lstm").backward_data, key, make, exc, pattern)


@pytest.mark.parametrize("key, what, make, exc, pattern", BACKWARD_WEIGHTS_CASES,
                         ids=_ids(BACKWARD_WEIGHTS_CASES))
def test_C_backward_weights_rejects(key, what, make, exc, pattern):
    _run_c_case("backward_weights", c_problem("lstm").backward_weights, key, make, exc, pattern)


@pytest.mark.parametrize("fn, key", [("forward", "x"), ("forward", "w"), ("forward", "y"),
                                     ("backward_data", "w"), ("backward_data", "dx"),
                                     ("backward_weights", "x"), ("backward_weights", "dw")])
@pytest.mark.parametrize("value", [None, "list", 3.0], ids=["None", "list", "float"])
def test_C_required_array_not_an_array(fn, key, value):
    args = dict(getattr(c_problem("gru"), fn))
    if value == "list":
        value = np.asarray(args[key]).tolist()
    args[key] = value
    snap = snapshot(*args.values())
    with pytest.raises(TypeError):
        getattr(_C, fn)(**args)
    assert_unchanged(snap)


@pytest.mark.parametrize("fn, key", [("forward", "hx"), ("forward", "hy"),
                                     ("backward_data", "dhy"), ("backward_data", "dhx"),
                                     ("backward_weights", "hx")])
@pytest.mark.parametrize("value", ["list", 3.0, "abc"], ids=["list", "float", "str"])
def test_C_optional_array_not_an_array(fn, key, value):
    args = dict(getattr(c_problem("gru"), fn))
    if value == "list":
        value = np.asarray(args[key]).tolist()
    args[key] = value
    with pytest.raises(TypeError, match=rf"^{key}: expected a numpy array, got"):
        getattr(_C, fn)(**args)


def test_C_backward_data_dy_not_an_array():
    # dy is optional in _C.backward_data; anything that is not None must be an ndarray. Run in a
    # child process: the check must not read a non-array object as an array (a crash).
    out = run_isolated("""
        import numpy as np
        from fusedrnn import _C
        T, N, C, H = 3, 2, 4, 5
        plan = _C.Plan("gru", C, H, 1, False, "float64", T, N, True)
        w = np.zeros(_C.param_count("gru", C, H, 1, False))
        ws = np.zeros(plan.workspace_bytes // 8 + 1)
        rs = np.zeros(plan.reserve_bytes // 8 + 1)
        y = np.zeros((T, N, H))
        _C.forward(plan, np.zeros((T, N, C)), w, None, None, y, None, None, ws, rs)
        for obj in ["[1.0, 2.0]", "'abc'", "(1, 2)", "object()", "5", "2.5", "b'xx'",
                    "np.float64(1.0)", "np.zeros((T, N, H)).tolist()"]:
            print(obj, end=" -> ", flush=True)
            try:
                _C.backward_data(plan, eval(obj), None, None, w, None, None, np.zeros((T, N, C)),
                                 np.zeros((1, N, H)), None, ws, rs)
                print("accepted", flush=True)
            except Exception as e:
                print(type(e).__name__, str(e).splitlines()[0], flush=True)
    """)
    lines = out.strip().splitlines()
    assert len(lines) == 9, out
    for line in lines:
        assert " -> TypeError dy: expected" in line, out


@pytest.mark.parametrize("mode", ["gru", "rnn_relu"])
@pytest.mark.parametrize("fn, key", [("forward", "cx"), ("forward", "cy"),
                                     ("backward_data", "dcy"), ("backward_data", "dcx")])
def test_C_cell_state_for_non_lstm(mode, fn, key):
    args = dict(getattr(c_problem(mode), fn))
    args[key] = np.zeros(S)
    snap = snapshot(*args.values())
    with pytest.raises(ValueError, match=rf"^{key}: .*lstm"):
        getattr(_C, fn)(**args)
    assert_unchanged(snap)


@pytest.mark.parametrize("fn", ["backward_data", "backward_weights"])
def test_C_backward_with_inference_plan(fn):
    inf = c_problem("lstm", training=False)
    args = dict(getattr(inf, fn))
    snap = snapshot(*args.values())
    with pytest.raises(ValueError, match=r"^plan: .*training"):
        getattr(_C, fn)(**args)
    assert_unchanged(snap)
    # even with a large enough reserve from a training plan
    args["reserve"] = c_problem("lstm").forward["reserve"]
    with pytest.raises(ValueError, match=r"^plan: .*training"):
        getattr(_C, fn)(**args)


def test_C_plan_argument_must_be_a_plan():
    f = dict(c_problem("gru").forward)
    for bad in (None, "gru", object()):
        with pytest.raises(TypeError):
            _C.forward(**dict(f, plan=bad))


def test_C_wrong_plan_for_arrays():
    # arrays sized for another plan (a different T) are rejected by shape, naming x
    p = c_problem("gru")
    other = _C.Plan("gru", C, H, 1, False, "float64", T + 1, N, True)
    args = dict(p.forward, plan=other)
    with pytest.raises(ValueError, match=msg("x", (T + 1, N, C), (T, N, C))):
        _C.forward(**args)


@pytest.mark.parametrize("T_, N_", [(0, 2), (3, 0), (0, 0)])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_C_empty_sequence_or_batch(mode, T_, N_):
    # Plain np.empty/np.zeros arrays of the right (empty) shapes are valid arguments.
    plan = _C.Plan(mode, C, H, 1, False, "float64", T_, N_, True)
    lstm = mode == "lstm"
    s = (1, N_, H)
    rng = np.random.default_rng(3)
    w = rng.standard_normal(_C.param_count(mode, C, H, 1, False))
    hx, cx = rng.standard_normal(s), rng.standard_normal(s) if lstm else None
    hy, cy = np.full(s, 7.0), np.full(s, 7.0) if lstm else None
    ws = np.zeros(plan.workspace_bytes // 8 + 1)
    rs = np.zeros(plan.reserve_bytes // 8 + 1)
    _C.forward(plan, np.zeros((T_, N_, C)), w, hx, cx, np.empty((T_, N_, H)), hy, cy, ws, rs)
    assert np.array_equal(hy, hx) and (not lstm or np.array_equal(cy, cx))
    dhy, dcy = rng.standard_normal(s), rng.standard_normal(s) if lstm else None
    dhx, dcx = np.full(s, 7.0), np.full(s, 7.0) if lstm else None
    _C.backward_data(plan, np.zeros((T_, N_, H)), dhy, dcy, w, hx, cx, np.empty((T_, N_, C)), dhx,
                     dcx, ws, rs)
    assert np.array_equal(dhx, dhy) and (not lstm or np.array_equal(dcx, dcy))
    dw = np.full(w.shape, 0.5)
    _C.backward_weights(plan, np.zeros((T_, N_, C)), hx, dw, ws, rs)
    assert np.all(dw == 0.5)
