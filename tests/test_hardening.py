"""Hardening (issue 8): malformed calls of the public Python entry points that tests/test_errors.py
does not cover, one test per gap found by the audit. The rule is test_errors.py's: ValueError for
wrong values and shapes, TypeError for wrong types and dtypes, the message names the argument, the
process never crashes and a failed call changes nothing (not the caller's arrays, not the state a
later call needs: a context, a cell's training record, a layer's states).

Covered here: output buffers aliasing the inputs (``backward_weights(dw=)``), ragged nested lists
(NumPy's own error names no argument), non-string option values, dtype/seed arguments NumPy would
reject with its own words, sizes too large for the core in the layers and the torch modules (were
MemoryError / torch's allocation RuntimeError), failed backward calls of the MXNet-style cells
(consumed the training record), ``do_rnn_checkpoint(period=)`` (OverflowError), and T = 0 / N = 0
through the layers, cells and torch modules.
"""

import re
import warnings

import numpy as np
import pytest

import fusedrnn
from fusedrnn import checkpoint as ck
from fusedrnn import rnn_cell as rc

T, N, C, H = 3, 2, 4, 5
RAGGED = [[1.0], [1.0, 2.0]]


def snapshot(*arrays):
    return [(a, a.tobytes()) for a in arrays if isinstance(a, np.ndarray)]


def assert_unchanged(snap):
    for i, (a, before) in enumerate(snap):
        assert a.tobytes() == before, f"argument #{i} (shape {a.shape}) was modified"


def problem(mode="lstm", dtype=np.float64, L=1, bi=False, seed=0):
    rng = np.random.default_rng(seed)
    D = 2 if bi else 1
    s = (L * D, N, H)
    return dict(x=rng.standard_normal((T, N, C)).astype(dtype),
                weights=fusedrnn.init_weights(mode, C, H, L, bi, dtype=dtype, seed=seed),
                h0=rng.standard_normal(s).astype(dtype),
                c0=rng.standard_normal(s).astype(dtype) if mode == "lstm" else None,
                dy=rng.standard_normal((T, N, D * H)).astype(dtype))


def run(p, mode="lstm", L=1, bi=False, **kw):
    return fusedrnn.forward(p["x"], p["weights"], mode=mode, hidden_size=H, num_layers=L,
                            bidirectional=bi, h0=p["h0"], c0=p["c0"], **kw)


# --------------------------------------------------------------------------------------------------
# backward_weights(dw=): an output buffer that aliases what the forward kept
# --------------------------------------------------------------------------------------------------

def _views_into(arr, n):
    """A flat writable view of n elements into arr's memory (arr must hold at least n)."""
    flat = arr.reshape(-1)
    assert np.shares_memory(flat, arr) and flat.size >= n
    return flat[:n]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("target", ["weights", "x", "h0", "c0", "reserve"])
def test_backward_weights_dw_aliasing_inputs(target, dtype):
    # Accumulating into memory the forward kept would overwrite the caller's weights / x / states
    # (or the reserve a later backward reads): refused, naming dw and what it aliases.
    rng = np.random.default_rng(1)
    n = fusedrnn.param_size("lstm", C, H)
    # inputs allocated large enough that a flat dw of n elements fits inside each of them
    big = {k: rng.standard_normal(n + 7).astype(dtype) for k in ("x", "h0", "c0")}
    x = big["x"][:T * N * C].reshape(T, N, C)
    h0 = big["h0"][:N * H].reshape(1, N, H)
    c0 = big["c0"][:N * H].reshape(1, N, H)
    w = fusedrnn.init_weights("lstm", C, H, dtype=dtype, seed=1)
    out = fusedrnn.forward(x, w, mode="lstm", hidden_size=H, h0=h0, c0=c0, training=True)
    fusedrnn.backward_data(out.ctx, dy=np.ones_like(out.y))
    ref = fusedrnn.backward_weights(out.ctx)
    if target == "reserve":
        if dtype != np.float64:
            pytest.skip("the reserve is float64 storage: a float32 dw cannot view it")
        dw = _views_into(out.ctx.reserve, n)
    elif target == "weights":
        dw = w
    else:
        dw = big[target][:n]
    name = "the reserve" if target == "reserve" else target
    snap = snapshot(x, w, h0, c0, out.ctx.reserve, big["x"], big["h0"], big["c0"])
    with pytest.raises(ValueError, match=rf"^dw: .*shares memory with {name}"):
        fusedrnn.backward_weights(out.ctx, dw=dw)
    assert_unchanged(snap)
    # the context is intact: the same gradient as before
    np.testing.assert_array_equal(fusedrnn.backward_weights(out.ctx), ref)


def test_backward_weights_dw_own_buffer_still_accumulates():
    p = problem()
    out = run(p, training=True)
    fusedrnn.backward_data(out.ctx, dy=p["dy"])
    g = fusedrnn.backward_weights(out.ctx)
    acc = np.full_like(g, 0.5)
    assert fusedrnn.backward_weights(out.ctx, dw=acc) is acc
    np.testing.assert_allclose(acc, g + 0.5, rtol=1e-14, atol=1e-15)  # added in the GEMMs
    # a dw next to (not inside) the weights in one buffer is fine
    buf = np.zeros(2 * g.size)
    buf[:g.size] = p["weights"]
    w = buf[:g.size]
    out2 = fusedrnn.forward(p["x"], w, mode="lstm", hidden_size=H, h0=p["h0"], c0=p["c0"],
                            training=True)
    fusedrnn.backward_data(out2.ctx, dy=p["dy"])
    dw = buf[g.size:]
    assert fusedrnn.backward_weights(out2.ctx, dw=dw) is dw
    np.testing.assert_array_equal(dw, g)


# --------------------------------------------------------------------------------------------------
# Ragged nested lists and objects NumPy cannot convert: TypeError naming the argument
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lengths", "mask"])
def test_forward_ragged_lengths_or_mask(name):
    p = problem()
    snap = snapshot(*[v for v in p.values() if v is not None])
    with pytest.raises(TypeError, match=rf"^{name}: expected an array, got list"):
        run(p, **{name: RAGGED})
    assert_unchanged(snap)


def test_memory_ragged_lengths():
    with pytest.raises(TypeError, match=r"^lengths: expected an array, got list"):
        fusedrnn.memory("gru", C, H, T, N, lengths=RAGGED)


@pytest.mark.parametrize("bad", [[np.nan, 1], np.array([np.inf, 1.0]), [1.0, 2.0],
                                 np.array([True, False]), [object(), 1], [2**70, 1]],
                         ids=["nan", "inf", "float", "bool", "object", "beyond-int64"])
def test_forward_lengths_not_integers(bad):
    with pytest.raises(TypeError, match=r"^lengths: expected integers, got dtype"):
        run(problem(), lengths=bad)


def test_forward_lengths_unsorted_are_valid():
    # any order is valid (a per-call stable sort): the same as the sorted batch, permuted back
    p = problem()
    lengths = np.array([1, 3])
    got = run(p, lengths=lengths)
    order = np.array([1, 0])
    q = dict(x=p["x"][:, order], weights=p["weights"], h0=p["h0"][:, order],
             c0=p["c0"][:, order])
    want = run(q, lengths=lengths[order])
    np.testing.assert_array_equal(got.y, want.y[:, order])
    np.testing.assert_array_equal(got.hN, want.hN[:, order])


# --------------------------------------------------------------------------------------------------
# Option values of the wrong type: TypeError (a wrong string stays a ValueError)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [None, 1, ["loop"], b"loop"],
                         ids=["None", "int", "list", "bytes"])
def test_executor_not_a_string(value):
    pattern = rf"^executor: expected one of .*got {re.escape(repr(value))}"
    with pytest.raises(TypeError, match=pattern):
        run(problem(), executor=value)
    with pytest.raises(TypeError, match=pattern):
        fusedrnn.memory("lstm", C, H, T, N, executor=value)
    with pytest.raises(ValueError, match=r"^executor: "):
        run(problem(), executor="Loop")


@pytest.mark.parametrize("fn", ["memory", "init_weights"])
@pytest.mark.parametrize("value", ["foo", "float", object(), [1, 2]], ids=["foo", "float-name",
                                                                           "object", "list"])
def test_dtype_argument_not_a_float_dtype(fn, value):
    # np.dtype's own errors ("data type 'foo' not understood") named no argument
    call = {"memory": lambda: fusedrnn.memory("lstm", C, H, T, N, dtype=value),
            "init_weights": lambda: fusedrnn.init_weights("lstm", C, H, dtype=value)}[fn]
    if value == "float":  # np.dtype("float") is float64: valid
        call()
        return
    with pytest.raises(TypeError, match=r"^dtype: expected float32 or float64, got"):
        call()


@pytest.mark.parametrize("seed, exc", [(-1, ValueError), ("a", TypeError), (1.5, TypeError),
                                       (True, TypeError)])
def test_init_weights_bad_seed(seed, exc):
    with pytest.raises(exc, match=r"^seed: expected None or a non-negative integer"):
        fusedrnn.init_weights("gru", C, H, seed=seed)


def test_init_weights_seeds_still_accepted():
    a = fusedrnn.init_weights("gru", C, H, seed=3)
    np.testing.assert_array_equal(a, fusedrnn.init_weights("gru", C, H, seed=np.int64(3)))
    assert fusedrnn.init_weights("gru", C, H, seed=None).shape == a.shape


# --------------------------------------------------------------------------------------------------
# Sizes whose byte counts the core cannot hold
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(hidden_size=2**40), dict(T=2**40, N=2**30),
                                dict(input_size=2**62)], ids=["H", "T*N", "C"])
def test_memory_too_large(kw):
    args = dict(mode="lstm", input_size=C, hidden_size=H, T=T, N=N)
    args.update(kw)
    with pytest.raises(ValueError, match=rf"^({'|'.join(map(re.escape, kw))}|T\*N)"):
        fusedrnn.memory(**args)


@pytest.mark.parametrize("T_, N_", [(0, 0), (0, 3), (3, 0)])
def test_memory_empty(T_, N_):
    m = fusedrnn.memory("gru", C, H, T_, N_, training=True)
    assert m.workspace_bytes >= 0 and m.reserve_bytes >= 0


@pytest.mark.parametrize("layer", ["LSTM", "GRU", "SimpleRNN"])
def test_layer_units_too_large(layer):
    # was numpy's MemoryError ("Unable to allocate 128. TiB") from the initializers
    with pytest.raises(ValueError, match=r"^hidden_size: expected an integer in"):
        getattr(fusedrnn, layer)(2**40)(np.zeros((N, T, C), np.float32))
    with pytest.raises(ValueError, match=r"^input_size: expected an integer in"):
        getattr(fusedrnn, layer)(3).build((None, None, 2**40))


@pytest.mark.parametrize("cls, kw", [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("LSTMCell", {}),
                                     ("GRUCell", {}), ("RNNCell", {})])
def test_torch_module_sizes_too_large(cls, kw):
    ft = pytest.importorskip("fusedrnn.torch")
    # was torch's allocator RuntimeError (after trying to allocate 64 TiB)
    with pytest.raises(ValueError, match=r"^hidden_size: "):
        getattr(ft, cls)(C, 2**40, **kw)
    with pytest.raises(ValueError, match=r"^input_size: "):
        getattr(ft, cls)(2**40, H, **kw)


# --------------------------------------------------------------------------------------------------
# Keras-style layers
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def x_ntc():
    return np.random.default_rng(2).standard_normal((N, T, C)).astype(np.float32)


def test_layer_ragged_arguments(x_ntc):
    layer = fusedrnn.LSTM(3, return_sequences=True)
    with pytest.raises(TypeError, match=r"^inputs: expected an array, got list"):
        layer(RAGGED)
    with pytest.raises(TypeError, match=r"^mask: expected an array, got list"):
        layer(x_ntc, mask=RAGGED)
    with pytest.raises(TypeError, match=r"^initial_state\[0\]: expected an array, got list"):
        layer(x_ntc, initial_state=[RAGGED, np.zeros((N, 3))])
    with pytest.raises(TypeError, match=r"^weights\[0\]: expected an array, got list"):
        layer.set_weights([RAGGED, np.zeros((3, 12)), np.zeros(12)])
    layer(x_ntc, training=True)
    with pytest.raises(TypeError, match=r"^d_output: expected an array, got list"):
        layer.backward(RAGGED)
    with pytest.raises(TypeError, match=r"^d_states\[0\]: expected an array, got list"):
        layer.backward(None, [RAGGED, None])
    # the record survives the failed calls
    assert layer.backward(np.ones((N, T, 3), np.float32)).shape == x_ntc.shape


def test_rnn_wrapper_ragged_mask(x_ntc):
    r = fusedrnn.RNN(fusedrnn.GRUCell(3))
    with pytest.raises(TypeError, match=r"^mask: expected an array, got list"):
        r(x_ntc, mask=RAGGED)


@pytest.mark.parametrize("make", [
    lambda: fusedrnn.LSTM(3, return_sequences=True),
    lambda: fusedrnn.SimpleRNN(3, return_sequences=True, unroll=True),
    lambda: fusedrnn.RNN(fusedrnn.GRUCell(3), return_sequences=True),
    lambda: fusedrnn.Bidirectional(fusedrnn.GRU(3, return_sequences=True)),
], ids=["LSTM", "SimpleRNN-unrolled", "RNN(GRUCell)", "Bidirectional"])
def test_layer_nan_mask_is_refused(make, x_ntc):
    layer = make()
    m = np.ones((N, T), np.float32)
    m[N - 1, 1] = 0.0
    want = layer(x_ntc, mask=m.astype(bool))
    np.testing.assert_array_equal(layer(x_ntc, mask=m), want)  # 0/1 numbers: bools, as in Keras
    m[N - 1, T - 1] = np.nan  # neither True nor False (NumPy's bool(nan) would say True)
    with pytest.raises(ValueError, match=rf"^mask: .* NaN at \({N - 1}, {T - 1}\)"):
        layer(x_ntc, mask=m)


def test_stateful_layer_wrong_batch(x_ntc):
    layer = fusedrnn.GRU(3, stateful=True)
    layer(x_ntc)
    before = layer.states
    with pytest.raises(ValueError, match=rf"^inputs: a stateful layer keeps the batch size .*"
                                         rf"\({N}\), got batch size {N + 1}"):
        layer(np.zeros((N + 1, T, C), np.float32))
    with pytest.raises(ValueError, match=rf"^states\[0\]: expected shape \({N}, 3\)"):
        layer.reset_states([np.zeros((N + 1, 3))])
    with pytest.raises(ValueError, match=rf"^initial_state\[0\]: expected shape \({N}, 3\)"):
        layer(x_ntc, initial_state=[np.zeros((N + 1, 3))])
    for a, b in zip(layer.states, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layer", ["LSTM", "GRU", "SimpleRNN"])
def test_layer_empty_batch(layer, x_ntc):
    lay = getattr(fusedrnn, layer)(3, return_sequences=True, return_state=True)
    out = lay(np.zeros((0, T, C), np.float32), training=True)
    assert out[0].shape == (0, T, 3) and all(s.shape == (0, 3) for s in out[1:])
    assert lay.backward(np.zeros((0, T, 3), np.float32)).shape == (0, T, C)
    assert not lay.flat_grad.any()


# --------------------------------------------------------------------------------------------------
# MXNet-style cells: a failed backward consumes nothing
# --------------------------------------------------------------------------------------------------

def _cell_grads(cell):
    return {k: v.copy() for k, v in cell.params.grads.items()}


@pytest.mark.parametrize("make", [
    lambda: rc.LSTMCell(H, prefix="l_"),
    lambda: rc.GRUCell(H, prefix="g_"),
    lambda: rc.FusedRNNCell(H, num_layers=2, mode="gru", bidirectional=True,
                            get_next_state=True),
    lambda: rc.FusedRNNCell(H, num_layers=2, mode="lstm", dropout=0.5, get_next_state=True),
], ids=["LSTMCell", "GRUCell", "FusedRNNCell", "FusedRNNCell-dropout"])
def test_cell_failed_backward_can_be_retried(make):
    cell = make()
    x = np.random.default_rng(4).standard_normal((N, T, C))
    out, states = cell.unroll(T, x, layout="NTC", merge_outputs=True, training=True)
    cell.params.zero_grad()
    d_out = np.ones_like(out)
    good_states = [np.ones_like(s) for s in states]
    bad = [
        dict(d_outputs=np.ones(out.shape[:-1] + (out.shape[-1] + 1,))),
        dict(d_outputs=RAGGED),
        dict(d_outputs=np.full(out.shape, "a")),
        dict(d_outputs=d_out, d_states=[np.ones((9,) + s.shape[1:]) for s in states]),
    ]
    for kw in bad:
        with pytest.raises((ValueError, TypeError), match=r"^(\w+\.backward: )?d_"):
            cell.backward(**kw)
        assert all(not g.any() for g in cell.params.grads.values()), kw
    dx, _ = cell.backward(d_out, good_states)
    assert dx.shape == x.shape
    with pytest.raises(RuntimeError, match="nothing to differentiate"):
        cell.backward(d_out)


def test_cell_failed_step_backward_can_be_retried():
    cell = rc.RNNCell(H, prefix="r_")
    x = np.random.default_rng(5).standard_normal((N, C))
    h, states = cell(x, cell.begin_state(batch_size=N, dtype=np.float64), training=True)
    with pytest.raises(ValueError, match=r"^d_output: expected shape"):
        cell.backward(np.ones((N, H + 1)))
    dx, _ = cell.backward(np.ones((N, H)))
    assert dx.shape == x.shape


def _seq(*cells):
    s = rc.SequentialRNNCell()
    for c in cells:
        s.add(c)
    return s


def _p(prefix):
    return rc.RNNParams(prefix, seed=len(prefix) + ord(prefix[0]))


# Each composite cell, and a backward call that fails only after an inner cell has consumed its
# record and added its gradients (the second state gradient has the wrong batch size).
COMPOSITES = {
    "Sequential": lambda: _seq(rc.LSTMCell(H, prefix="a_", params=_p("a_")),
                               rc.GRUCell(H, prefix="b_", params=_p("b_"))),
    "Bidirectional": lambda: rc.BidirectionalCell(rc.LSTMCell(H, prefix="l_", params=_p("l_")),
                                                  rc.GRUCell(H, prefix="r_", params=_p("r_"))),
    # not fusable: stepped in Python, each step consuming the inner cells' step records
    "Zoneout(Sequential)": lambda: rc.ZoneoutCell(
        _seq(rc.GRUCell(H, prefix="a_", params=_p("a_")),
             rc.RNNCell(H, prefix="b_", params=_p("b_"))), 0.3, 0.4, rng=1),
    "Residual(Sequential)": lambda: rc.ResidualCell(
        _seq(rc.LSTMCell(C, prefix="a_", params=_p("a_")),
             rc.LSTMCell(C, prefix="b_", params=_p("b_")))),
    "Sequential(Dropout, Zoneout)": lambda: _seq(
        rc.DropoutCell(0.5, rng=2),
        rc.ZoneoutCell(rc.LSTMCell(H, prefix="z_", params=_p("z_")), 0.5, 0.5, rng=3),
        rc.GRUCell(H, prefix="g_", params=_p("g_"))),
}


def _run_composite(name, dtype=np.float64):
    cell = COMPOSITES[name]()
    x = np.random.default_rng(6).standard_normal((N, T, C)).astype(dtype)
    out, states = cell.unroll(T, x, layout="NTC", merge_outputs=True, training=True)
    cell.params.zero_grad()
    return cell, x, out, rc._flatten(states)


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_composite_failed_backward_is_undone(name):
    cell, x, out, states = _run_composite(name)
    d_out = np.linspace(-1, 1, out.size).reshape(out.shape)
    d_states = [np.full_like(s, 0.5) for s in states]
    tapes = [(c, list(c._tape)) for c in rc._subtree(cell)]
    for i in range(len(states)):  # wrong batch size in state gradient i
        bad = list(d_states)
        bad[i] = np.ones((N + 2,) + states[i].shape[1:])
        with pytest.raises(ValueError, match=r"d_states|states\[\d\]|expected shape"):
            cell.backward(d_out, bad)
        assert all(not g.any() for g in cell.params.grads.values()), (name, i)
        for c, tape in tapes:
            assert c._tape == tape, (name, i, type(c).__name__)
    dx, d_begin = cell.backward(d_out, d_states)
    got = {k: v.copy() for k, v in cell.params.grads.items()}
    # the same cell built afresh, run once, differentiated once: the same gradients
    ref, _, out2, _ = _run_composite(name)
    np.testing.assert_array_equal(out2, out)
    dx2, d_begin2 = ref.backward(d_out, d_states)
    np.testing.assert_array_equal(dx, dx2)
    for a, b in zip(rc._flatten(d_begin), rc._flatten(d_begin2)):
        np.testing.assert_array_equal(a, b)
    assert got.keys() == ref.params.grads.keys()
    for k, v in ref.params.grads.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert any(v.any() for v in got.values())
    with pytest.raises(RuntimeError, match="nothing to differentiate"):
        cell.backward(d_out, d_states)


@pytest.mark.parametrize("bad, match", [
    (lambda o: np.ones(o.shape[:-1] + (o.shape[-1] + 1,)), r"^d_outputs: expected shape"),
    (lambda o: np.full(o.shape, {}, object), r"^d_outputs: expected an array"),
    (lambda o: "abc", r"^d_outputs: expected an array"),
    (lambda o: [np.ones(o.shape[::2])] * (T - 1) + [np.ones((N, 1))], r"^d_outputs\[\d+\]: "),
    (lambda o: [np.ones(o.shape[::2])] * (T - 1) + [RAGGED], r"^d_outputs\[\d+\]: "),
])
@pytest.mark.parametrize("name", ["Zoneout(Sequential)", "Sequential(Dropout, Zoneout)"])
def test_stepped_cell_bad_output_gradient_is_named(name, bad, match):
    cell, x, out, states = _run_composite(name)
    with pytest.raises((ValueError, TypeError), match=match):
        cell.backward(bad(out))
    assert all(not g.any() for g in cell.params.grads.values())
    dx, _ = cell.backward(np.ones_like(out))
    assert dx.shape == x.shape


@pytest.mark.parametrize("bad, match", [
    (lambda w: np.ones((N, w + 1)), r"^d_output: expected shape"),
    (lambda w: np.ones((N,)), r"^d_output: expected shape"),
    (lambda w: RAGGED, r"^d_output: expected an array"),
    (lambda w: "x", r"^d_output: expected an array"),
])
@pytest.mark.parametrize("make", [
    lambda: rc.DropoutCell(0.5, rng=0),
    lambda: rc.ZoneoutCell(rc.LSTMCell(H, prefix="z_"), 0.3, 0.3, rng=0),
], ids=["Dropout", "Zoneout"])
def test_step_backward_bad_output_gradient_is_named(make, bad, match):
    cell = make()
    x = np.random.default_rng(7).standard_normal((N, C))
    width = C if isinstance(cell, rc.DropoutCell) else H
    states = cell.begin_state(batch_size=N, dtype=np.float64) if cell.state_info else []
    cell(x, states, training=True)
    with pytest.raises((ValueError, TypeError), match=match):
        cell.backward(bad(width))
    dx, _ = cell.backward(np.ones((N, width)))
    assert dx.shape == x.shape


def test_zoneout_step_bad_state_gradient_is_named():
    cell = rc.ZoneoutCell(rc.LSTMCell(H, prefix="z_"), 0.3, 0.3, rng=0)
    x = np.random.default_rng(8).standard_normal((N, C))
    cell(x, cell.begin_state(batch_size=N, dtype=np.float64), training=True)
    with pytest.raises(ValueError, match=r"^d_states\[1\]: expected shape"):
        cell.backward(None, [np.ones((N, H)), np.ones((N, H - 1))])
    dx, _ = cell.backward(None, [np.ones((N, H)), np.ones((N, H))])
    assert dx.shape == x.shape


@pytest.mark.parametrize("bad, exc", [(RAGGED, TypeError), ([T + 1, 0], ValueError),
                                      ([1.5, 1.0], TypeError), ([-1, 1], ValueError)])
def test_cell_valid_length(bad, exc):
    cell = rc.LSTMCell(H)
    x = np.zeros((N, T, C))
    with pytest.raises(exc, match=r"^lengths: "):
        cell.unroll(T, x, valid_length=bad)


# --------------------------------------------------------------------------------------------------
# torch modules: T = 0, N = 0 forward and backward
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, N, C), (T, 0, C), (0, 0, C)])
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_torch_empty_sequence_or_batch(cls, shape):
    torch = pytest.importorskip("torch")
    import fusedrnn.torch as ft

    m = getattr(ft, cls)(C, H, num_layers=2, bidirectional=True).double()
    x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    y, h = m(x)
    h = h[0] if cls == "LSTM" else h
    assert y.shape == shape[:2] + (2 * H,) and h.shape == (4, shape[1], H)
    (y.sum() + h.sum()).backward()
    assert x.grad.shape == shape
    assert all(p.grad is None or not p.grad.any() for p in m.parameters())


def test_torch_cell_empty_batch():
    torch = pytest.importorskip("torch")
    import fusedrnn.torch as ft

    c = ft.GRUCell(C, H)
    x = torch.zeros(0, C, requires_grad=True)
    h = c(x)
    assert h.shape == (0, H)
    h.sum().backward()
    assert x.grad.shape == (0, C)


# --------------------------------------------------------------------------------------------------
# checkpoint: do_rnn_checkpoint(period=)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("period, exc", [("a", TypeError), (None, TypeError), (True, TypeError),
                                         (float("inf"), ValueError), (float("nan"), ValueError)])
def test_do_rnn_checkpoint_bad_period(tmp_path, period, exc):
    # float('inf') was an OverflowError from int(); a string a bare TypeError from max()
    with pytest.raises(exc, match=r"^period: "):
        ck.do_rnn_checkpoint(rc.LSTMCell(H), str(tmp_path / "p"), period=period)


def test_do_rnn_checkpoint_period_as_mxnet(tmp_path):
    cell = rc.LSTMCell(H, prefix="l_")
    cell.unroll(T, np.zeros((N, T, C), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cb = ck.do_rnn_checkpoint(cell, str(tmp_path / "p"), period=2.5)  # int(max(1, 2.5)) = 2
    cb(0, arg=cell.params.arrays())
    assert not list(tmp_path.iterdir())
    cb(1, arg=cell.params.arrays())
    assert [p.name for p in tmp_path.iterdir()] == ["p-0002.npz"]


# --------------------------------------------------------------------------------------------------
# Read-only inputs are inputs: accepted, never written (only dw, an output, must be writable)
# --------------------------------------------------------------------------------------------------

def test_read_only_inputs_accepted():
    p = problem("lstm", L=2, bi=True)
    ref = run(p, L=2, bi=True, training=True)
    gref = fusedrnn.backward(ref.ctx, dy=p["dy"])
    ro = {k: (None if v is None else v.copy()) for k, v in p.items()}
    for v in ro.values():
        if v is not None:
            v.flags.writeable = False
    out = run(ro, L=2, bi=True, training=True)
    g = fusedrnn.backward(out.ctx, dy=ro["dy"])
    for a, b in zip(out[:3] + tuple(g), ref[:3] + tuple(gref)):
        np.testing.assert_array_equal(a, b)
