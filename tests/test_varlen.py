"""Variable sequence lengths in the fused core: fusedrnn.forward(..., lengths=) on a padded batch.

A sample of length l uses only its first l steps: y is zero from t = l on, hN / cN are its state
at its own last valid step (h0 / c0 for l = 0), the reverse direction of a bidirectional layer
starts at t = l - 1, and backward gives dx = 0 on padding and ignores padded dy. So a batch with
lengths equals running every sample alone on x[:l, n] (then zero-padding y), which the float64
reference does here, and it equals the mask path with a right-padded mask and
zero_masked_output=True. Both executors ("loop", "unrolled") are checked; also memory(): the
reserve follows sum(lengths), and the workspace of the loop executor in inference does not
follow T.
"""

from types import SimpleNamespace

import numpy as np
import pytest

import fusedrnn
import reference as ref
from conftest import compare_with_yardstick, seed_of, uniform01

MODES = ref.MODES
GATES = ref.NUM_GATES

# (T, lengths): all lengths differ; the first includes 1 and T, the second a 0 (and T), the third
# leaves the last steps of every sample padding (T > max(lengths)).
MAIN = (7, [4, 7, 1, 6, 3])
WITH_ZERO = (7, [3, 0, 7, 1, 5])
SHORT = (9, [5, 1, 4, 6, 3])


# --------------------------------------------------------------------------
# Problems and the per-sample oracle
# --------------------------------------------------------------------------

def problem(mode, T, N, C, H, L=1, bi=False, P=0, seed=0):
    """Random float32-representable float64 inputs (so one float64 reference serves both dtypes);
    h0 (and c0 for LSTM) always given; P: LSTM projection."""
    rng = np.random.default_rng(seed)
    D = 2 if bi else 1
    S = P or H
    lstm = mode == "lstm"
    q = SimpleNamespace(mode=mode, T=T, N=N, C=C, H=H, L=L, bi=bi, D=D, P=P, S=S)
    k = 1.0 / np.sqrt(H)
    q.flat = rng.uniform(-k, k, ref.param_size(mode, C, H, L, bi, P))
    q.x = rng.standard_normal((T, N, C))
    q.h0 = 0.5 * rng.standard_normal((L * D, N, S))
    q.c0 = rng.standard_normal((L * D, N, H)) if lstm else None
    q.dy = rng.standard_normal((T, N, D * S))
    q.dhN = rng.standard_normal((L * D, N, S))
    q.dcN = rng.standard_normal((L * D, N, H)) if lstm else None
    for name in ("flat", "x", "h0", "c0", "dy", "dhN", "dcN"):
        a = getattr(q, name)
        if a is not None:
            setattr(q, name, a.astype(np.float32).astype(np.float64))
    return q


def _col(a, n):
    return None if a is None else a[:, n:n + 1]


def per_sample_reference(q, lengths, dtype=np.float64, dropout_masks=None, **opt):
    """Every sample n run alone by the reference on x[:lengths[n], n] with its own h0, c0 (and its
    own rows of the dropout masks), backward with dy[:lengths[n], n], dhN[:, n], dcN[:, n]; y and dx
    zero-padded, dw summed over the samples. opt: the reference's cell options."""
    T, N, L, D, S, H = q.T, q.N, q.L, q.D, q.S, q.H
    lstm = q.mode == "lstm"
    out = dict(y=np.zeros((T, N, D * S)), hN=np.zeros((L * D, N, S)),
               cN=np.zeros((L * D, N, H)) if lstm else None, dx=np.zeros((T, N, q.C)),
               dh0=np.zeros((L * D, N, S)), dc0=np.zeros((L * D, N, H)) if lstm else None,
               dw=np.zeros(q.flat.size))
    for n, ln in enumerate(int(v) for v in lengths):
        masks = None
        if dropout_masks is not None:  # rows of sample n: (N, w) -> (1, w), (G, N, w) -> (G, 1, w)
            masks = {key: tuple(None if m is None else m[..., n:n + 1, :] for m in pair)
                     for key, pair in dropout_masks.items()}
        y, hN, cN, cache = ref.forward(q.x[:ln, n:n + 1], q.flat, q.mode, H, L, q.bi,
                                       _col(q.h0, n), _col(q.c0, n), dtype=dtype,
                                       dropout_masks=masks, proj_size=q.P, **opt)
        dx, dh0, dc0, dw = ref.backward(cache, q.dy[:ln, n:n + 1], _col(q.dhN, n), _col(q.dcN, n))
        out["y"][:ln, n] = y[:, 0]
        out["dx"][:ln, n] = dx[:, 0]
        out["hN"][:, n], out["dh0"][:, n] = hN[:, 0], dh0[:, 0]
        if lstm:
            out["cN"][:, n], out["dc0"][:, n] = cN[:, 0], dc0[:, 0]
        out["dw"] += dw
    return out


def _tm(a, batch_first):
    """Batch-first (N, T, F) -> time-major (T, N, F)."""
    return a.transpose(1, 0, 2) if batch_first else a


def fused(q, dtype, executor="auto", batch_first=False, training=True, **opt):
    """fusedrnn forward (+ backward when training) of problem q, results time-major in a dict.
    opt: forward keywords (lengths=, mask=, dropout=, ...)."""
    c = lambda a: None if a is None else np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
    x = c(_tm(q.x, batch_first))
    r = fusedrnn.forward(x, c(q.flat), mode=q.mode, hidden_size=q.H, num_layers=q.L,
                         bidirectional=q.bi, h0=c(q.h0), c0=c(q.c0), batch_first=batch_first,
                         training=training, proj_size=q.P, executor=executor, **opt)
    out = dict(y=_tm(r.y, batch_first), hN=r.hN, cN=r.cN)
    if training:
        g = fusedrnn.backward(r.ctx, dy=c(_tm(q.dy, batch_first)), dhN=c(q.dhN), dcN=c(q.dcN))
        out.update(dx=_tm(g.dx, batch_first), dh0=g.dh0, dc0=g.dc0, dw=g.dw)
        out["plan_executor"] = r.ctx.plan.executor
    return out


def right_mask(T, lengths):
    """(T, N) bools: mask[t, n] = t < lengths[n]."""
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


def check_padding_exact(got, T, lengths):
    """y and dx exactly zero at padded positions."""
    pad = ~right_mask(T, lengths)
    np.testing.assert_array_equal(got["y"][pad], 0.0, err_msg="y at padded steps")
    if "dx" in got:
        np.testing.assert_array_equal(got["dx"][pad], 0.0, err_msg="dx at padded steps")


def check_vs_reference(q, lengths, executor, dtypes=(np.float64,), batch_first=False, ref_opt=None,
                       **opt):
    """fusedrnn with lengths (training: forward + backward; inference: forward) vs the per-sample
    reference; float32 judged by the suite's yardstick rule (the reference's own float32 error)."""
    ref_opt = {} if ref_opt is None else ref_opt
    want = per_sample_reference(q, lengths, **ref_opt)
    yard = per_sample_reference(q, lengths, np.float32, **ref_opt) if np.float32 in dtypes else None
    ctx = f"[{q.mode} L={q.L} bi={q.bi} H={q.H} P={q.P} T={q.T} lengths={list(lengths)} " \
          f"{executor} bf={batch_first} {opt}]"
    for dtype in dtypes:
        got = fused(q, dtype, executor, batch_first, lengths=lengths, **opt)
        assert got.pop("plan_executor") == executor
        check_padding_exact(got, q.T, lengths)
        compare_with_yardstick(got, want, dtype, f"{ctx} {dtype.__name__}", yard)
        inf = fused(q, dtype, executor, batch_first, training=False, lengths=lengths, **opt)
        check_padding_exact(inf, q.T, lengths)
        compare_with_yardstick(inf, {k: want[k] for k in ("y", "hN", "cN")}, dtype,
                               f"{ctx} inference {dtype.__name__}",
                               None if yard is None else {k: yard[k] for k in ("y", "hN", "cN")})


# --------------------------------------------------------------------------
# Per-sample equivalence
# --------------------------------------------------------------------------

@pytest.mark.parametrize("L,bi", [(1, False), (1, True), (2, False), (2, True)])
@pytest.mark.parametrize("mode", MODES)
def test_matches_each_sample_alone(mode, L, bi, executor):
    T, lengths = MAIN
    q = problem(mode, T, len(lengths), 3, 7, L, bi, seed=seed_of("varlen", mode, L, bi))
    check_vs_reference(q, np.array(lengths), executor)


@pytest.mark.parametrize("mode", MODES)
def test_zero_length_and_padding_beyond_the_longest(mode, executor):
    # a sample of length 0 (int32 lengths); then T > max(lengths), batch_first, a Python list
    T, lengths = WITH_ZERO
    q = problem(mode, T, len(lengths), 3, 7, 2, True, seed=seed_of("varlen0", mode))
    check_vs_reference(q, np.array(lengths, np.int32), executor)
    T, lengths = SHORT
    q = problem(mode, T, len(lengths), 3, 7, 2, True, seed=seed_of("varlen-short", mode))
    check_vs_reference(q, list(lengths), executor, batch_first=True)


def test_wide_hidden(executor):
    T, lengths = MAIN
    q = problem("gru", T, len(lengths), 3, 97, 2, True, seed=seed_of("varlen97"))
    check_vs_reference(q, np.array(lengths), executor, batch_first=True)


@pytest.mark.parametrize("mode", MODES)
def test_float32(mode, executor):
    T, lengths = MAIN
    q = problem(mode, T, len(lengths), 3, 7, 2, True, seed=seed_of("varlen32", mode))
    check_vs_reference(q, np.array(lengths), executor, dtypes=(np.float32,))


def test_all_lengths_zero(executor):
    """No valid step at all: y and dx zero, hN = h0, cN = c0, dh0 = dhN, dc0 = dcN, dw = 0."""
    q = problem("lstm", 4, 3, 3, 5, 2, True, seed=seed_of("varlen-none"))
    lengths = np.zeros(3, np.int64)
    got = fused(q, np.float64, executor, lengths=lengths)
    np.testing.assert_array_equal(got["y"], 0.0)
    np.testing.assert_array_equal(got["dx"], 0.0)
    np.testing.assert_array_equal(got["hN"], q.h0)
    np.testing.assert_array_equal(got["cN"], q.c0)
    np.testing.assert_array_equal(got["dh0"], q.dhN)
    np.testing.assert_array_equal(got["dc0"], q.dcN)
    np.testing.assert_array_equal(got["dw"], 0.0)


# --------------------------------------------------------------------------
# Options with lengths
# --------------------------------------------------------------------------

@pytest.mark.parametrize("mode,opt", [
    ("gru", dict(reset_after=False)),
    ("lstm", dict(activation="softsign", recurrent_activation="hard_sigmoid")),
    ("gru", dict(activation="relu", recurrent_activation="softsign")),
    ("rnn_tanh", dict(activation="softrelu")),
    ("rnn_relu", dict(activation="linear")),
], ids=["gru-reset-before", "lstm-acts", "gru-acts", "rnn-softrelu", "rnn-linear"])
def test_cell_options(mode, opt, executor):
    T, lengths = MAIN
    q = problem(mode, T, len(lengths), 3, 7, 2, True, seed=seed_of("varlen-opt", mode, opt))
    check_vs_reference(q, np.array(lengths), executor, dtypes=(np.float64, np.float32),
                       ref_opt=opt, **opt)


def test_projection(executor):
    T, lengths = MAIN
    q = problem("lstm", T, len(lengths), 3, 7, 2, True, P=3, seed=seed_of("varlen-proj"))
    check_vs_reference(q, np.array(lengths), executor, dtypes=(np.float64, np.float32))
    T, lengths = WITH_ZERO
    q = problem("lstm", T, len(lengths), 3, 7, 1, False, P=3, seed=seed_of("varlen-proj0"))
    check_vs_reference(q, np.array(lengths), executor, batch_first=True)


def dropout_masks(seed, q, rate_x, rate_h, per_gate):
    """{(layer, dir): (mx, mh)} as fusedrnn draws them (fusedrnn/random.h; see test_dropout.py):
    (N, width) each, or (G, N, width) per gate; stream (layer * 2 + dir) * 2 + (0: input,
    1: state)."""
    out = {}
    for layer in range(q.L):
        cin = q.C if layer == 0 else q.D * q.S
        for d in range(q.D):
            pair = []
            for kind, (width, rate) in enumerate(((cin, rate_x), (q.S, rate_h))):
                if rate == 0:
                    pair.append(None)
                    continue
                shape = (GATES[q.mode], q.N, width) if per_gate else (q.N, width)
                u = uniform01(seed, (layer * 2 + d) * 2 + kind, int(np.prod(shape))).reshape(shape)
                pair.append(np.where(u >= rate, 1.0 / (1.0 - rate), 0.0))
            out[(layer, d)] = tuple(pair)
    return out


def _assert_equal_within(got, want, rtol, ctx):
    for name, w in want.items():
        if name == "plan_executor":
            continue
        if w is None:
            assert got[name] is None, (name, ctx)
            continue
        a, w = np.asarray(got[name], np.float64), np.asarray(w, np.float64)
        assert a.shape == w.shape, (name, ctx, a.shape, w.shape)
        err = float(np.max(np.abs(a - w))) if a.size else 0.0
        tol = rtol * max(float(np.max(np.abs(w))) if w.size else 0.0, 1.0)
        assert err <= tol, f"{name} {ctx}: max abs err {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("mode,reset_after", [("lstm", True), ("gru", True), ("gru", False),
                                              ("rnn_tanh", True)])
@pytest.mark.parametrize("per_gate", [False, True])
def test_dropout(mode, reset_after, per_gate, executor):
    """Dropout masks are per (sample, feature), not per step: with the same seed the lengths run
    equals the mask path, and each sample alone with its own rows of the masks."""
    T, lengths = MAIN
    q = problem(mode, T, len(lengths), 3, 7, 2, True, seed=seed_of("varlen-drop", mode))
    seed = 4242
    opt = dict(reset_after=reset_after, dropout=0.3, recurrent_dropout=0.4, seed=seed,
               dropout_per_gate=per_gate)
    ctx = f"[{mode} ra={reset_after} per_gate={per_gate} {executor}]"
    got = fused(q, np.float64, executor, lengths=np.array(lengths), **opt)
    check_padding_exact(got, T, lengths)
    via_mask = fused(q, np.float64, executor, mask=right_mask(T, lengths), zero_masked_output=True,
                     **opt)
    _assert_equal_within(got, via_mask, 1e-12, ctx + " vs mask path")
    want = per_sample_reference(q, lengths, reset_after=reset_after,
                                dropout_masks=dropout_masks(seed, q, 0.3, 0.4, per_gate))
    got.pop("plan_executor")
    compare_with_yardstick(got, want, np.float64, ctx + " vs per-sample reference")


# --------------------------------------------------------------------------
# Equality with the mask path (right-padded mask, zero_masked_output=True)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_equals_mask_path(mode, batch_first, executor):
    for (T, lengths), L, bi in ((MAIN, 2, True), (WITH_ZERO, 1, False), (SHORT, 3, True)):
        q = problem(mode, T, len(lengths), 3, 7, L, bi, seed=seed_of("varlen-mask", mode, T))
        mask = right_mask(T, lengths)
        mask = mask.T if batch_first else mask
        ctx = f"[{mode} T={T} L={L} bi={bi} bf={batch_first} {executor}]"
        for training in (True, False):
            got = fused(q, np.float64, executor, batch_first, training, lengths=np.array(lengths))
            want = fused(q, np.float64, executor, batch_first, training, mask=mask,
                         zero_masked_output=True)
            _assert_equal_within(got, want, 1e-12, ctx + (" training" if training else ""))


def test_full_lengths_equal_no_lengths(executor):
    """lengths all T is the plain run."""
    for mode in MODES:
        q = problem(mode, 5, 3, 3, 7, 2, True, seed=seed_of("varlen-full", mode))
        got = fused(q, np.float64, executor, lengths=np.full(3, 5))
        want = fused(q, np.float64, executor)
        _assert_equal_within(got, want, 1e-12, f"[{mode} {executor}]")


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64,
                                   list, tuple])
def test_any_integer_dtype(dtype):
    T, lengths = MAIN
    q = problem("gru", T, len(lengths), 3, 5, 1, True, seed=seed_of("varlen-dtype"))
    given = dtype(lengths) if dtype in (list, tuple) else np.array(lengths, dtype)
    got = fused(q, np.float64, lengths=given)
    want = fused(q, np.float64, lengths=np.array(lengths, np.int64))
    _assert_equal_within(got, want, 0.0, f"[{dtype}]")


def test_executor_choice_is_visible(executor):
    q = problem("lstm", 4, 2, 3, 5, seed=1)
    kw = dict(mode="lstm", hidden_size=5, h0=q.h0, c0=q.c0, training=True)
    r = fusedrnn.forward(q.x, q.flat, executor=executor, **kw)
    assert r.ctx.plan.executor == executor
    r = fusedrnn.forward(q.x, q.flat, executor=executor, lengths=[4, 2], **kw)
    assert r.ctx.plan.executor == executor
    r = fusedrnn.forward(q.x, q.flat, executor="auto", lengths=[4, 2], **kw)
    assert r.ctx.plan.executor in ("loop", "unrolled")
    r = fusedrnn.forward(q.x, q.flat, lengths=[4, 2], **kw)  # default: auto
    assert r.ctx.plan.executor in ("loop", "unrolled")


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

TE, NE, CE, HE = 5, 3, 4, 4


def _call(**kw):
    x = np.zeros((TE, NE, CE), np.float64)
    kw = dict(dict(mode="gru", hidden_size=HE, training=True), **kw)
    w = np.zeros(fusedrnn.param_size(kw["mode"], CE, HE), np.float64)
    return fusedrnn.forward(x, w, **kw)


@pytest.mark.parametrize("kw", [
    dict(mask=np.ones((TE, NE), bool)),
    dict(zoneout_outputs=0.2, seed=1),
    dict(zoneout_states=0.2, seed=1),
    dict(residual=True),
], ids=["mask", "zoneout_outputs", "zoneout_states", "residual"])
def test_lengths_refuses_combinations(kw):
    with pytest.raises(ValueError, match="lengths"):
        _call(lengths=np.full(NE, TE), **kw)


@pytest.mark.parametrize("bad", [np.full(NE + 1, 2), np.full((NE, 1), 2), np.full((1, NE), 2),
                                 np.int64(2), np.zeros(0, np.int64)],
                         ids=["N+1", "(N,1)", "(1,N)", "scalar", "empty"])
def test_lengths_bad_shape(bad):
    with pytest.raises(ValueError, match="lengths") as e:
        _call(lengths=bad)
    assert f"({NE},)" in str(e.value) or "(N,)" in str(e.value), str(e.value)


@pytest.mark.parametrize("bad", [np.full(NE, 2.0), np.full(NE, 2.0, np.float32), [2.0, 1.0, 3.0],
                                 np.array(["2", "1", "3"])],
                         ids=["float64", "float32", "float-list", "str"])
def test_lengths_bad_dtype(bad):
    with pytest.raises(TypeError, match="lengths"):
        _call(lengths=bad)


@pytest.mark.parametrize("bad", [[TE, -1, 2], [TE + 1, 1, 2], [0, 0, 100]],
                         ids=["negative", "T+1", "huge"])
def test_lengths_out_of_range(bad):
    for training in (True, False):
        with pytest.raises(ValueError, match="lengths"):
            _call(lengths=np.array(bad), training=training)


@pytest.mark.parametrize("bad", ["fast", "unroll", "Loop ", ""])
def test_bad_executor(bad):
    with pytest.raises(ValueError, match="executor"):
        _call(executor=bad)
    with pytest.raises(ValueError, match="executor"):
        fusedrnn.memory("gru", CE, HE, TE, NE, executor=bad)


# --------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------

def test_reserve_follows_the_sum_of_lengths(executor):
    T, N = 100, 8
    half = [100, 0, 50, 50, 25, 75, 60, 40]  # sum 400 = T * N / 2
    assert sum(half) * 2 == T * N
    for mode, L, bi in (("lstm", 1, False), ("gru", 2, True), ("rnn_tanh", 3, False)):
        kw = dict(num_layers=L, bidirectional=bi, training=True, executor=executor)
        plain = fusedrnn.memory(mode, 16, 32, T, N, **kw).reserve_bytes
        full = fusedrnn.memory(mode, 16, 32, T, N, lengths=np.full(N, T), **kw).reserve_bytes
        part = fusedrnn.memory(mode, 16, 32, T, N, lengths=np.array(half), **kw).reserve_bytes
        assert plain > 0
        assert abs(full - plain) <= 4096, (mode, L, bi, full, plain)
        assert part < 0.6 * plain, (mode, L, bi, part, plain)


def test_reserve_of_memory_is_what_forward_uses(executor):
    T, N, C, H = 6, 4, 3, 5
    lengths = [6, 2, 0, 5]
    q = problem("lstm", T, N, C, H, 2, True, seed=3)
    r = fusedrnn.forward(q.x, q.flat, mode="lstm", hidden_size=H, num_layers=2, bidirectional=True,
                         training=True, lengths=lengths, executor=executor)
    m = fusedrnn.memory("lstm", C, H, T, N, num_layers=2, bidirectional=True, dtype=np.float64,
                        training=True, lengths=lengths, executor=r.ctx.plan.executor)
    assert r.ctx.reserve_bytes == m.reserve_bytes


def test_inference_workspace_of_the_executors():
    """The while-loop executor's inference workspace (one layer) does not depend on T; the unrolled
    executor's does."""
    def ws(mode, T, executor):
        return fusedrnn.memory(mode, 16, 32, T, 16, executor=executor).workspace_bytes

    for mode in MODES:
        assert ws(mode, 50, "loop") == ws(mode, 500, "loop"), mode
        assert ws(mode, 500, "unrolled") > ws(mode, 50, "unrolled"), mode


@pytest.mark.parametrize("bi", [False, True])
def test_loop_inference_with_lengths_does_not_grow_with_t(bi):
    # lengths and padded data: the input is gathered per chunk and the states kept in a ring, so
    # one layer's scratch is the same for T = 50 and 500 (lengths all T, and all 1), and results
    # equal the unrolled executor's (which keeps everything)
    def ws(T, lengths):
        return fusedrnn.memory("lstm", 16, 32, T, 16, bidirectional=bi, executor="loop",
                               lengths=lengths).workspace_bytes

    assert ws(50, [50] * 16) == ws(500, [500] * 16) == ws(500, [1] * 16)
    q = problem("lstm", 40, 16, 5, 6, bi=bi, seed=4)
    lengths = np.random.default_rng(1).integers(0, 41, 16)
    kw = dict(mode="lstm", hidden_size=6, bidirectional=bi, h0=q.h0, c0=q.c0, lengths=lengths)
    a = fusedrnn.forward(q.x, q.flat, executor="loop", **kw)
    b = fusedrnn.forward(q.x, q.flat, executor="unrolled", **kw)
    for u, v in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(u, v)
    check_vs_reference(q, list(lengths), "loop")


# --------------------------------------------------------------------------
# The entry points above the core: Keras masks, MXNet cells' valid_length, PyTorch PackedSequence
# --------------------------------------------------------------------------

def forward_calls(monkeypatch):
    """The keyword arguments of every fusedrnn.functional.forward call from here on."""
    from fusedrnn import functional
    calls = []
    real = functional.forward

    def spy(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(functional, "forward", spy)
    return calls


@pytest.mark.parametrize("layer", ["LSTM", "GRU", "Bidirectional"])
def test_keras_right_padded_mask_runs_as_lengths(monkeypatch, layer):
    from fusedrnn import layers

    rng = np.random.default_rng(3)
    N, T, C = 4, 6, 3
    x = rng.standard_normal((N, T, C)).astype(np.float32)
    lengths = np.array([6, 2, 0, 4])
    mask = np.arange(T)[None, :] < lengths[:, None]
    gapped = mask.copy()
    gapped[0, 2] = False

    def make():
        if layer == "Bidirectional":
            return layers.Bidirectional(layers.LSTM(5, return_sequences=True, seed=1))
        return getattr(layers, layer)(5, return_sequences=True, zero_output_for_mask=True, seed=1)

    lay = make()
    calls = forward_calls(monkeypatch)
    got = lay(x, mask=mask, training=True)
    assert "lengths" in calls[-1] and "mask" not in calls[-1]
    np.testing.assert_array_equal(calls[-1]["lengths"], lengths)
    make()(x, mask=gapped)  # not right-padded: the per-step blend
    assert "mask" in calls[-1] and "lengths" not in calls[-1]
    monkeypatch.undo()
    # the layer's result equals the mask path on its weights
    bi = layer == "Bidirectional"
    flat = lay._bi_flat() if bi else lay._flat
    want = fusedrnn.forward(x, flat, mode="gru" if layer == "GRU" else "lstm", hidden_size=5,
                            bidirectional=bi, batch_first=True, mask=mask,
                            zero_masked_output=True).y
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not got[2].any()  # the length-0 sample


@pytest.mark.parametrize("unroll,expected", [(False, "loop"), (True, "unrolled")])
def test_keras_unroll_picks_the_executor(monkeypatch, unroll, expected):
    from fusedrnn import layers
    calls = forward_calls(monkeypatch)
    x = np.ones((2, 3, 4), np.float32)
    layers.GRU(3, unroll=unroll)(x)
    layers.Bidirectional(layers.LSTM(3, unroll=unroll))(x)
    assert [c["executor"] for c in calls] == [expected, expected]


@pytest.mark.parametrize("cell_kind", ["LSTMCell", "GRUCell", "FusedRNNCell"])
@pytest.mark.parametrize("executor", ["loop", "unrolled"])
def test_mxnet_cells_valid_length(cell_kind, executor):
    from fusedrnn import rnn_cell
    rng = np.random.default_rng(5)
    N, T, C, H = 4, 6, 3, 5
    x = rng.standard_normal((N, T, C))
    lengths = np.array([6, 1, 3, 0])
    if cell_kind == "FusedRNNCell":
        cell = rnn_cell.FusedRNNCell(H, num_layers=2, mode="gru", bidirectional=True)
    else:
        cell = getattr(rnn_cell, cell_kind)(H)
    out, states = cell.unroll(T, x, layout="NTC", merge_outputs=True, valid_length=lengths,
                              executor=executor)
    for n in range(N):
        L = lengths[n]
        ref_cell = cell
        if L:
            o1, s1 = ref_cell.unroll(L, x[n:n + 1, :L], layout="NTC", merge_outputs=True,
                                     executor="loop")
            np.testing.assert_allclose(out[n:n + 1, :L], o1, rtol=1e-12, atol=1e-13)
            for a, b in zip(states, s1):
                np.testing.assert_allclose(a[..., n:n + 1, :], b, rtol=1e-12, atol=1e-13)
        assert not np.any(out[n, L:])


def test_torch_packed_sequence_runs_as_lengths(monkeypatch):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence
    import fusedrnn.torch as ftorch
    calls = forward_calls(monkeypatch)
    torch.manual_seed(0)
    m = ftorch.LSTM(3, 4, num_layers=2, bidirectional=True)
    ref_m = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    ref_m.load_state_dict(m.state_dict())
    x = torch.randn(6, 3, 3)
    lengths = torch.tensor([2, 6, 4])
    seq = pack_padded_sequence(x, lengths, enforce_sorted=False)
    y, (h, c) = m(seq)
    assert "mask" not in calls[-1]
    np.testing.assert_array_equal(calls[-1]["lengths"], lengths.numpy())
    y_ref, (h_ref, c_ref) = ref_m(seq)
    torch.testing.assert_close(y.data, y_ref.data, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, c_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("executor", ["loop", "unrolled"])
@pytest.mark.parametrize("mode,L,bi", [("lstm", 2, True), ("gru", 3, False), ("rnn_tanh", 1, True)])
def test_core_packed_form_equals_padded_lengths(mode, L, bi, executor):
    # the core's packed form (PyTorch's PackedSequence layout: step t's rows for the batch[t]
    # longest samples, ranked by `order`) gives the padded-lengths results, rows for rows
    from fusedrnn import _C
    T, lengths = MAIN
    lengths = np.array(lengths)
    q = problem(mode, T, len(lengths), 3, 5, L, bi, seed=11)
    N, D, H = q.N, q.D, q.H
    order = np.argsort(-lengths, kind="stable").astype(np.int64)
    rows = [(t, n) for t in range(T) for n in order if lengths[n] > t]
    t_idx, n_idx = np.array(rows).T
    lstm = mode == "lstm"
    plan = _C.Plan(mode, 3, H, L, bi, "float64", T, N, True, lengths=list(lengths),
                   executor=executor)
    assert plan.batch_sizes == [int((lengths > t).sum()) for t in range(T)]
    ws = np.empty(plan.workspace_bytes // 8 + 1)
    outs = {}
    for form in ("padded", "packed"):
        rs = np.empty(plan.reserve_bytes // 8 + 1)
        hy, cy = np.empty((L * D, N, H)), (np.empty((L * D, N, H)) if lstm else None)
        dhx, dcx = np.empty((L * D, N, H)), (np.empty((L * D, N, H)) if lstm else None)
        dw = np.zeros(q.flat.size)
        c0 = q.c0 if lstm else None
        dcN = q.dcN if lstm else None
        if form == "padded":
            x, dy = q.x, q.dy
            y, dx = np.empty((T, N, D * H)), np.empty((T, N, 3))
            kw = dict(lengths=lengths.astype(np.int64))
        else:
            x, dy = q.x[t_idx, n_idx], q.dy[t_idx, n_idx]
            y, dx = np.empty((len(rows), D * H)), np.empty((len(rows), 3))
            kw = dict(packed=True, order=order)
        _C.forward(plan, x, q.flat, q.h0, c0, y, hy, cy, ws, rs, None, 0, **kw)
        _C.backward_data(plan, dy, q.dhN, dcN, q.flat, q.h0, c0, dx, dhx, dcx, ws, rs, None, 0,
                         **kw)
        _C.backward_weights(plan, x, q.h0, dw, ws, rs, 0, **kw)
        if form == "padded":
            y, dx = y[t_idx, n_idx], dx[t_idx, n_idx]
        outs[form] = (y, hy, cy, dx, dhx, dcx, dw)
    for name, a, b in zip(("y", "hN", "cN", "dx", "dh0", "dc0", "dw"), outs["padded"],
                          outs["packed"]):
        if a is not None:
            np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-14, err_msg=name)
    for bad_value in (N, order[1]):  # out of range, a duplicate
        bad = order.copy()
        bad[0] = bad_value
        with pytest.raises(ValueError, match="order: expected a permutation"):
            _C.forward(plan, q.x[t_idx, n_idx], q.flat, None, None,
                       np.empty((len(rows), D * H)), None, None, ws,
                       np.empty(plan.reserve_bytes // 8 + 1), None, 0, packed=True, order=bad)
    with pytest.raises(ValueError, match="length profile"):
        _C.forward(plan, q.x, q.flat, None, None, np.empty((T, N, D * H)), None, None, ws,
                   np.empty(plan.reserve_bytes // 8 + 1), None, 0,
                   lengths=np.full(N, T, np.int64))


def test_plans_are_cached_by_length_profile():
    from fusedrnn import functional as F
    F.clear_plan_cache()
    q = problem("gru", 7, 5, 3, 4, seed=2)
    kw = dict(mode="gru", hidden_size=4, training=True)
    a = fusedrnn.forward(q.x, q.flat, lengths=[4, 7, 1, 6, 3], **kw).ctx.plan
    b = fusedrnn.forward(q.x, q.flat, lengths=[7, 6, 4, 3, 1], **kw).ctx.plan  # same profile
    c = fusedrnn.forward(q.x, q.flat, lengths=[7, 6, 4, 3, 2], **kw).ctx.plan
    assert a is b and a is not c
    assert list(a.batch_sizes) == [5, 4, 4, 3, 2, 2, 1]
    info = F.plan_cache_info()
    assert info.maxsize == F.PLAN_CACHE_SIZE and info.currsize == 2 and info.hits == 1
