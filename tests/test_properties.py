"""Property-based tests (hypothesis), derandomized so that CI is reproducible.

1. Valid calls: over random small problems (T, N in 0..9, C, H in 1..9; every mode; 1-2 layers;
   uni/bidirectional; GRU reset_after both ways; batch-first or not; with or without initial
   states; with or without per-sample lengths, 0 and T included; both executors) fusedrnn's
   float64 forward and backward equal the float64 reference (tests/reference.py) to 1e-10 of each
   result's scale. With lengths the oracle runs every sample alone on its own length (as
   tests/test_varlen.py does) and y, dx must be exactly zero on padding.
2. Malformed calls: one or two random corruptions of a valid forward call (shapes, ranks, dtypes of
   x, weights, h0, c0, lengths, mask; bad option values) raise ValueError or TypeError whose
   message starts with the name of a corrupted argument, and leave every array of the caller
   unchanged; corrupted backward calls likewise, and the context still gives the same gradients
   afterwards.
"""

import re
from types import SimpleNamespace

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fusedrnn  # noqa: E402
import reference as ref  # noqa: E402

MODES = ref.MODES
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------------
# 1. Valid calls against the float64 reference
# --------------------------------------------------------------------------------------------------

@st.composite
def problems(draw):
    mode = draw(st.sampled_from(MODES))
    T, N = draw(st.integers(0, 9)), draw(st.integers(0, 9))
    C, H = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    L, bi = draw(st.integers(1, 2)), draw(st.booleans())
    reset_after = draw(st.booleans()) if mode == "gru" else True
    lengths = None
    if draw(st.booleans()):
        lengths = draw(st.lists(st.integers(0, T), min_size=N, max_size=N))
        if N >= 2 and draw(st.booleans()):  # both extremes in one batch
            lengths[0], lengths[-1] = 0, T
        lengths = np.array(lengths, np.int64)
    return dict(mode=mode, T=T, N=N, C=C, H=H, L=L, bi=bi, reset_after=reset_after,
                lengths=lengths, executor=draw(st.sampled_from(["loop", "unrolled"])),
                batch_first=draw(st.booleans()), with_states=draw(st.booleans()),
                seed=draw(st.integers(0, 2**32 - 1)))


def _arrays(p):
    rng = np.random.default_rng(p["seed"])
    T, N, C, H, L = p["T"], p["N"], p["C"], p["H"], p["L"]
    D = 2 if p["bi"] else 1
    lstm = p["mode"] == "lstm"
    k = 1.0 / np.sqrt(H)
    a = dict(flat=rng.uniform(-k, k, ref.param_size(p["mode"], C, H, L, p["bi"])),
             x=rng.standard_normal((T, N, C)), dy=rng.standard_normal((T, N, D * H)),
             dhN=rng.standard_normal((L * D, N, H)),
             dcN=rng.standard_normal((L * D, N, H)) if lstm else None, h0=None, c0=None)
    if p["with_states"]:
        a["h0"] = 0.5 * rng.standard_normal((L * D, N, H))
        a["c0"] = rng.standard_normal((L * D, N, H)) if lstm else None
    return a


def _col(arr, n):
    return None if arr is None else arr[:, n:n + 1]


def oracle(p, a):
    """The reference's forward + backward; with lengths every sample alone on its own length."""
    T, N, H, L = p["T"], p["N"], p["H"], p["L"]
    D = 2 if p["bi"] else 1
    lstm = p["mode"] == "lstm"
    opt = dict(reset_after=p["reset_after"])
    zeros = np.zeros((L * D, N, H))
    h0 = zeros if a["h0"] is None else a["h0"]
    c0 = (zeros if a["c0"] is None else a["c0"]) if lstm else None
    args = (p["mode"], H, L, p["bi"])
    if p["lengths"] is None:
        y, hN, cN, cache = ref.forward(a["x"], a["flat"], *args, h0, c0, **opt)
        dx, dh0, dc0, dw = ref.backward(cache, a["dy"], a["dhN"], a["dcN"])
        return dict(y=y, hN=hN, cN=cN, dx=dx, dh0=dh0, dc0=dc0, dw=dw)
    out = dict(y=np.zeros((T, N, D * H)), hN=np.zeros((L * D, N, H)),
               cN=np.zeros((L * D, N, H)) if lstm else None, dx=np.zeros(a["x"].shape),
               dh0=np.zeros((L * D, N, H)), dc0=np.zeros((L * D, N, H)) if lstm else None,
               dw=np.zeros(a["flat"].size))
    for n, ln in enumerate(p["lengths"].tolist()):
        y, hN, cN, cache = ref.forward(a["x"][:ln, n:n + 1], a["flat"], *args, _col(h0, n),
                                       _col(c0, n), **opt)
        dx, dh0, dc0, dw = ref.backward(cache, a["dy"][:ln, n:n + 1], _col(a["dhN"], n),
                                        _col(a["dcN"], n))
        out["y"][:ln, n], out["dx"][:ln, n] = y[:, 0], dx[:, 0]
        out["hN"][:, n], out["dh0"][:, n] = hN[:, 0], dh0[:, 0]
        if lstm:
            out["cN"][:, n], out["dc0"][:, n] = cN[:, 0], dc0[:, 0]
        out["dw"] += dw
    return out


def fused(p, a):
    bf = p["batch_first"]
    tm = (lambda arr: np.ascontiguousarray(arr.swapaxes(0, 1))) if bf else (lambda arr: arr)
    res = fusedrnn.forward(tm(a["x"]), a["flat"], mode=p["mode"], hidden_size=p["H"],
                           num_layers=p["L"], bidirectional=p["bi"], h0=a["h0"], c0=a["c0"],
                           batch_first=bf, training=True, reset_after=p["reset_after"],
                           lengths=p["lengths"], executor=p["executor"])
    assert res.ctx.plan.executor == p["executor"]
    g = fusedrnn.backward(res.ctx, dy=tm(a["dy"]), dhN=a["dhN"], dcN=a["dcN"])
    inf = fusedrnn.forward(tm(a["x"]), a["flat"], mode=p["mode"], hidden_size=p["H"],
                           num_layers=p["L"], bidirectional=p["bi"], h0=a["h0"], c0=a["c0"],
                           batch_first=bf, reset_after=p["reset_after"], lengths=p["lengths"],
                           executor=p["executor"])
    back = tm  # swapaxes is its own inverse
    return dict(y=back(res.y), hN=res.hN, cN=res.cN, dx=back(g.dx), dh0=g.dh0, dc0=g.dc0,
                dw=g.dw), dict(y=back(inf.y), hN=inf.hN, cN=inf.cN)


@settings(max_examples=400, **SETTINGS)
@given(problems())
def test_forward_backward_match_reference(p):
    a = _arrays(p)
    want = oracle(p, a)
    got, inf = fused(p, a)
    ctx = " ".join(f"{k}={v}" for k, v in p.items() if k != "seed")
    for name, w in want.items():
        if w is None:
            assert got[name] is None, (name, ctx)
            continue
        g = got[name]
        assert g.dtype == np.float64 and g.shape == w.shape, (name, g.shape, w.shape, ctx)
        assert np.all(np.isfinite(g)), (name, ctx)
        scale = max(float(np.max(np.abs(w))) if w.size else 0.0, 1.0)
        err = float(np.max(np.abs(g - w))) if w.size else 0.0
        assert err <= 1e-10 * scale, f"{name}: max abs err {err:.3g} (scale {scale:.3g}) [{ctx}]"
    for name in ("y", "hN", "cN"):  # inference gives the training forward's results
        if want[name] is not None:
            np.testing.assert_allclose(inf[name], got[name], rtol=0, atol=1e-12, err_msg=ctx)
    if p["lengths"] is not None:  # padding is exactly zero
        pad = np.arange(p["T"])[:, None] >= p["lengths"][None, :]
        assert not got["y"][pad].any() and not got["dx"][pad].any() and not inf["y"][pad].any()


# --------------------------------------------------------------------------------------------------
# 2. Malformed calls: ValueError or TypeError naming a corrupted argument, nothing modified
# --------------------------------------------------------------------------------------------------

T0, N0, C0, H0 = 3, 2, 4, 5


def _valid_call(mode, dtype, L, bi, with_states, rng):
    D = 2 if bi else 1
    s = (L * D, N0, H0)

    def r(shape):
        return rng.standard_normal(shape).astype(dtype)

    kw = dict(x=r((T0, N0, C0)),
              weights=fusedrnn.init_weights(mode, C0, H0, L, bi, dtype=dtype, seed=0),
              mode=mode, hidden_size=H0, num_layers=L, bidirectional=bi, training=True)
    if with_states:
        kw["h0"] = r(s)
        if mode == "lstm":
            kw["c0"] = r(s)
    return kw


def _other_float(dtype):
    return np.float32 if dtype == np.float64 else np.float64


# name -> (arguments the error may name, corrupt(kw, draw, base) -> the name it corrupted or
# None; base: the valid call's dtype and weight count); every corruption alone makes
# the call invalid, whatever the rest of the (valid) call is.
def _x_rank(kw, draw, base):
    dtype = base.dtype
    shape = draw(st.sampled_from([(), (C0,), (N0, C0), (1, T0, N0, C0)]))
    kw["x"] = np.zeros(shape, dtype)


def _x_dtype(kw, draw, base):
    dt = draw(st.sampled_from([np.int32, np.int64, np.float16, np.complex64, np.bool_, object,
                               "U2", ">f8"]))
    kw["x"] = np.zeros(kw["x"].shape, dt)


def _x_features(kw, draw, base):
    dtype = base.dtype
    c = draw(st.sampled_from([0, C0 + 1, C0 + 3]))
    kw["x"] = np.zeros((T0, N0, c), dtype)


def _w_length(kw, draw, base):
    dtype = base.dtype
    n = base.n  # the valid size: every choice differs from it
    m = draw(st.sampled_from([0, 1, n - 1, n + 1, 2 * n]))
    kw["weights"] = np.zeros(m, dtype)


def _w_rank(kw, draw, base):
    w = np.asarray(kw["weights"]).reshape(-1)
    kw["weights"] = draw(st.sampled_from([w[None], w[:, None], w[:2 * (w.size // 2)].reshape(2, -1),
                                          np.float64(1.0)]))


def _w_dtype(kw, draw, base):
    dtype = base.dtype
    dt = draw(st.sampled_from([_other_float(dtype), np.int64, np.float16, object]))
    kw["weights"] = kw["weights"].astype(dt)


def _state_shape(kw, draw, base):
    dtype = base.dtype
    name = draw(st.sampled_from(["h0", "c0"] if kw["mode"] == "lstm" else ["h0"]))
    s = list(kw.get(name, np.zeros((kw["num_layers"] * (2 if kw["bidirectional"] else 1),
                                    N0, H0))).shape)
    how = draw(st.sampled_from(["drop", "add", "perturb"]))
    if how == "drop":
        s = s[1:]
    elif how == "add":
        s = [1] + s
    else:
        i = draw(st.integers(0, 2))
        s[i] += draw(st.sampled_from([-1, 1, 2]))
    kw[name] = np.zeros(s, dtype)
    return name


def _state_dtype(kw, draw, base):
    dtype = base.dtype
    name = draw(st.sampled_from(["h0", "c0"] if kw["mode"] == "lstm" else ["h0"]))
    LD = kw["num_layers"] * (2 if kw["bidirectional"] else 1)
    dt = draw(st.sampled_from([_other_float(dtype), np.int32, np.float16, "U1"]))
    kw[name] = np.zeros((LD, N0, H0), dt)
    return name


def _c0_not_lstm(kw, draw, base):
    dtype = base.dtype
    if kw["mode"] == "lstm":
        kw["mode"] = draw(st.sampled_from(["gru", "rnn_tanh", "rnn_relu"]))
        kw["weights"] = fusedrnn.init_weights(kw["mode"], C0, H0, kw["num_layers"],
                                              kw["bidirectional"], dtype=dtype)
        kw.pop("c0", None)
        if "h0" in kw:  # keep the call otherwise valid
            kw["h0"] = kw["h0"].copy()
    LD = kw["num_layers"] * (2 if kw["bidirectional"] else 1)
    kw["c0"] = np.zeros((LD, N0, H0), dtype)
    return "c0"


def _lengths(kw, draw, base):
    bad = draw(st.sampled_from([
        [T0 + 1, 0], [-1, 1], [T0, 2**40], np.array([1, 2, 3]), np.array([1]), np.array([[1, 2]]),
        np.array([1.0, 2.0]), np.array([np.nan, 1.0]), np.array([True, False]), [[1], [1, 2]],
        np.array(["1", "2"]), np.array([2**64 - 1, 1], np.uint64),
    ]))
    kw["lengths"] = bad
    if "mask" in kw:
        del kw["mask"]


def _mask(kw, draw, base):
    bad = draw(st.sampled_from([
        np.ones((N0, T0), bool), np.ones((T0, N0 + 1), bool), np.ones(T0, bool),
        np.full((T0, N0), 2), np.ones((T0, N0), np.float32), [[1], [1, 0]],
        np.full((T0, N0), None),
    ]))
    kw["mask"] = bad
    kw.pop("lengths", None)


def _option(kw, draw, base):
    name, value = draw(st.sampled_from([
        ("mode", "LSTM"), ("mode", "rnn"), ("mode", None), ("mode", 3),
        ("hidden_size", 0), ("hidden_size", -1), ("hidden_size", 2.0), ("hidden_size", True),
        ("hidden_size", 2**40), ("hidden_size", 2**64), ("hidden_size", "5"),
        ("hidden_size", float("nan")),
        ("num_layers", 0), ("num_layers", 1.0), ("num_layers", None),
        ("bidirectional", 1), ("bidirectional", "no"), ("batch_first", 0), ("training", None),
        ("activation", "gelu"), ("activation", 1), ("recurrent_activation", "Tanh"),
        ("executor", "fast"), ("executor", None), ("dropout", 1.0), ("dropout", -0.1),
        ("dropout", float("nan")), ("dropout", "0.1"), ("recurrent_dropout", float("inf")),
        ("zoneout_states", 1.5), ("zoneout_outputs", True), ("seed", -1), ("seed", 1.5),
        ("seed", 2**63), ("proj_size", -1), ("proj_size", H0), ("proj_size", 1.0),
        ("residual", 1), ("zero_masked_output", "yes"), ("dropout_per_gate", None),
    ]))
    kw[name] = value
    return name


CORRUPTIONS = {
    "x_rank": (("x",), _x_rank),
    "x_dtype": (("x",), _x_dtype),
    "x_features": (("x", "weights"), _x_features),
    "w_length": (("weights",), _w_length),
    "w_rank": (("weights",), _w_rank),
    "w_dtype": (("weights",), _w_dtype),
    "state_shape": (None, _state_shape),
    "state_dtype": (None, _state_dtype),
    "c0_not_lstm": (None, _c0_not_lstm),
    "lengths": (("lengths",), _lengths),
    "mask": (("mask",), _mask),
    "option": (None, _option),
}


def _snapshot(values):
    return [(a, a.tobytes(), a.shape, a.dtype) for a in values
            if isinstance(a, np.ndarray) and a.dtype != object]


def _assert_unchanged(snap, ctx):
    for a, data, shape, dtype in snap:
        assert a.shape == shape and a.dtype == dtype and a.tobytes() == data, \
            f"an argument of shape {shape} was modified by a failed call [{ctx}]"


@settings(max_examples=500, **SETTINGS)
@given(data=st.data(), mode=st.sampled_from(MODES), dtype=st.sampled_from([np.float32, np.float64]),
       L=st.integers(1, 2), bi=st.booleans(), with_states=st.booleans(),
       kinds=st.lists(st.sampled_from(sorted(CORRUPTIONS)), min_size=1, max_size=2))
def test_malformed_forward_raises_cleanly(data, mode, dtype, L, bi, with_states, kinds):
    rng = np.random.default_rng(0)
    kw = _valid_call(mode, dtype, L, bi, with_states, rng)
    names = set()
    base = SimpleNamespace(dtype=np.dtype(dtype), n=kw["weights"].size)
    for kind in kinds:
        fixed, corrupt = CORRUPTIONS[kind]
        got = corrupt(kw, data.draw, base)
        names.update(fixed if fixed is not None else (got,))
    snap = _snapshot(kw.values())
    ctx = f"{kinds} {mode} {np.dtype(dtype)} L={L} bi={bi} states={with_states}"
    call = dict(kw)
    with pytest.raises((ValueError, TypeError)) as info:
        fusedrnn.forward(call.pop("x"), call.pop("weights"), **call)
    msg = str(info.value)
    pattern = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    assert re.match(rf"^({pattern})\b", msg), f"message names none of {sorted(names)}: {msg!r} " \
                                              f"[{ctx}]"
    _assert_unchanged(snap, ctx)


def _grad_corruption(draw, name, good, dtype):
    how = draw(st.sampled_from(["shape", "rank", "dtype", "ragged"]))
    if how == "shape":
        s = list(good.shape)
        s[draw(st.integers(0, len(s) - 1))] += draw(st.sampled_from([-1, 1]))
        return np.zeros(s, dtype)
    if how == "rank":
        return np.zeros(good.shape[1:], dtype)
    if how == "dtype":
        return good.astype(draw(st.sampled_from([_other_float(dtype), np.int64, np.float16])))
    return [[1.0], [1.0, 2.0]]


@settings(max_examples=200, **SETTINGS)
@given(data=st.data(), mode=st.sampled_from(MODES), dtype=st.sampled_from([np.float32, np.float64]),
       L=st.integers(1, 2), bi=st.booleans(),
       target=st.sampled_from(["dy", "dhN", "dcN", "dw", "weight_grad"]))
def test_malformed_backward_raises_cleanly(data, mode, dtype, L, bi, target):
    rng = np.random.default_rng(1)
    kw = _valid_call(mode, dtype, L, bi, True, rng)
    call = dict(kw)
    out = fusedrnn.forward(call.pop("x"), call.pop("weights"), **call)
    lstm = mode == "lstm"
    g = dict(dy=rng.standard_normal(out.y.shape).astype(dtype),
             dhN=rng.standard_normal(out.hN.shape).astype(dtype),
             dcN=rng.standard_normal(out.cN.shape).astype(dtype) if lstm else None)
    want = fusedrnn.backward(out.ctx, **g)
    ctx_arrays = [out.ctx.x, out.ctx.weights, out.ctx.h0, out.ctx.c0, out.ctx.reserve]
    if target == "dcN" and not lstm:
        bad, fn = np.zeros(out.hN.shape, dtype), "backward"
    elif target == "weight_grad":
        bad, fn = data.draw(st.sampled_from([1, 0, None, "yes"])), "backward"
    elif target == "dw":
        n = kw["weights"].size
        bad = data.draw(st.sampled_from([
            np.zeros(n - 1, dtype), np.zeros((1, n), dtype), np.zeros(n, _other_float(dtype)),
            np.zeros(2 * n, dtype)[::2], "dw", kw["weights"], out.ctx.x.reshape(-1)[:0],
        ]))
        fn = "backward_weights"
    else:
        good = g[target] if g[target] is not None else out.hN
        bad, fn = _grad_corruption(data.draw, target, good, dtype), "backward"
    snap = _snapshot(list(g.values()) + list(kw.values()) + ctx_arrays + [bad])
    with pytest.raises((ValueError, TypeError), match=rf"^{target}: "):
        if fn == "backward_weights":
            fusedrnn.backward_weights(out.ctx, dw=bad)
        else:
            fusedrnn.backward(out.ctx, **dict(g, **{target: bad}))
    _assert_unchanged(snap, f"{target} {mode} L={L} bi={bi}")
    again = fusedrnn.backward(out.ctx, **g)  # the context is intact
    for a, b in zip(again, want):
        assert (a is None and b is None) or np.array_equal(a, b)
