"""fusedrnn.torch (the drop-in torch.nn modules) against torch.nn itself.

Parity: the same weights in torch.nn (float32 and float64) and in fusedrnn.torch; float32 outputs
and gradients (input, initial states, every parameter) within 2x torch's own float32 error of
torch's float64 result (conftest.assert_close), float64 within 1e-9 relative. Also gradcheck,
a training run, state dicts, cells, dropout, threads, the weight cache and argument errors.
"""

import math

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fusedrnn
import fusedrnn.torch as ft
from conftest import F64_RTOL, assert_close, seed_of
from fusedrnn.torch import _autograd

KINDS = {  # id -> (torch.nn class, fusedrnn.torch class, extra constructor keywords)
    "lstm": (torch.nn.LSTM, ft.LSTM, {}),
    "gru": (torch.nn.GRU, ft.GRU, {}),
    "rnn_tanh": (torch.nn.RNN, ft.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, ft.RNN, {"nonlinearity": "relu"}),
}
CELLS = {
    "lstm": (torch.nn.LSTMCell, ft.LSTMCell, {}),
    "gru": (torch.nn.GRUCell, ft.GRUCell, {}),
    "rnn_tanh": (torch.nn.RNNCell, ft.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNNCell, ft.RNNCell, {"nonlinearity": "relu"}),
}


def _cotangent(shape, dtype, *key):
    rng = np.random.default_rng(seed_of("cot", tuple(shape), *key))
    return torch.tensor(rng.standard_normal(shape).astype(np.float32), dtype=dtype)


def _copy_of(module, cls, dtype, **kw):
    """A ``cls`` module with ``module``'s configuration and weights, in ``dtype``."""
    m = cls(**kw).to(dtype)
    m.load_state_dict({k: v.to(dtype) for k, v in module.state_dict().items()})
    return m


def _forward_backward(module, x, hx, lengths=None, enforce_sorted=True):
    """Outputs and gradients (w.r.t. x, every state in hx, every parameter) of
    sum(output * cotangent) over all outputs, as {name: float array}. With ``lengths`` x is padded
    and goes in as a PackedSequence (its output's .data is used)."""
    dtype = next(module.parameters()).dtype
    x = x.detach().to(dtype).requires_grad_()
    states = [] if hx is None else [h.detach().to(dtype).requires_grad_()
                                    for h in (hx if isinstance(hx, tuple) else (hx,))]
    arg = x
    if lengths is not None:
        arg = pack_padded_sequence(x, lengths, batch_first=getattr(module, "batch_first", False),
                                   enforce_sorted=enforce_sorted)
    h_arg = None if hx is None else (tuple(states) if isinstance(hx, tuple) else states[0])
    out = module(arg, h_arg)
    if isinstance(module, (torch.nn.RNNCellBase, ft.modules._CellBase)):
        outs = {"h": out} if not isinstance(out, tuple) else {"h": out[0], "c": out[1]}
    else:
        y, st = out
        if lengths is not None:
            assert isinstance(y, PackedSequence)
            y = y.data
        outs = {"y": y}
        outs.update({"h_n": st[0], "c_n": st[1]} if isinstance(st, tuple) else {"h_n": st})
    loss = sum((t * _cotangent(t.shape, dtype, name)).sum() for name, t in outs.items())
    names = ["x"] + [f"hx[{i}]" for i in range(len(states))]
    params = list(module.named_parameters())
    grads = torch.autograd.grad(loss, [x, *states] + [p for _, p in params])
    res = {k: v.detach().numpy() for k, v in outs.items()}
    res.update({"d" + n: g.numpy() for n, g in zip(names + [n for n, _ in params], grads)})
    return res


def _assert_parity(ours32, theirs32, theirs64, ctx, ours64=None):
    assert set(ours32) == set(theirs64), ctx
    for name in theirs64:
        assert ours32[name].dtype == np.float32, (name, ctx)
        assert_close(name, ours32[name], theirs64[name], theirs32[name], ctx=ctx)
        if ours64 is not None:
            assert_close(name, ours64[name], theirs64[name], rtol=F64_RTOL, ctx=ctx)


# (T, N, C, H); packed cases use lengths with the maximum T
CONFIGS = {
    "L1-tm": dict(L=1, bi=False, bf=False, size=(7, 3, 5, 7)),
    "L2-bi-bf": dict(L=2, bi=True, bf=True, size=(5, 3, 7, 3)),
    "L1-bi-nobias-nohx": dict(L=1, bi=True, bf=False, size=(3, 1, 1, 1), bias=False, hx=False),
    "L2-nobias-bf": dict(L=2, bi=False, bf=True, size=(1, 7, 3, 5), bias=False),
    "L2-bi-packed-unsorted": dict(L=2, bi=True, bf=False, size=(7, 4, 3, 5),
                                  lengths=[5, 2, 7, 1], enforce_sorted=False),
    "L1-packed-sorted-bf": dict(L=1, bi=False, bf=True, size=(6, 3, 5, 3),
                                lengths=[6, 4, 1], enforce_sorted=True),
    "L1-bi-packed-equal": dict(L=1, bi=True, bf=False, size=(3, 2, 3, 3), lengths=[3, 3],
                               enforce_sorted=False),
    "L2-bi-unbatched": dict(L=2, bi=True, bf=False, size=(7, None, 3, 5)),
    "L1-unbatched-bf": dict(L=1, bi=False, bf=True, size=(3, None, 1, 7)),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_parity_with_torch_nn(kind, config):
    c = CONFIGS[config]
    theirs_cls, ours_cls, extra = KINDS[kind]
    T, N, C, H = c["size"]
    L, D = c["L"], 2 if c["bi"] else 1
    kw = dict(input_size=C, hidden_size=H, num_layers=L, bias=c.get("bias", True),
              batch_first=c["bf"], bidirectional=c["bi"], **extra)
    ctx = f"[{kind} {config}]"
    torch.manual_seed(seed_of("parity", kind, config) % 2**31)
    ours32 = ours_cls(**kw)
    theirs32 = _copy_of(ours32, theirs_cls, torch.float32, **kw)
    theirs64 = _copy_of(ours32, theirs_cls, torch.float64, **kw)
    ours64 = _copy_of(ours32, ours_cls, torch.float64, **kw)

    g = torch.Generator().manual_seed(seed_of("parity-data", kind, config) % 2**31)
    batch = () if N is None else (N,)
    x = torch.randn(((batch + (T,)) if c["bf"] else ((T,) + batch)) + (C,), generator=g)
    hx = None
    if c.get("hx", True):
        hx = 0.5 * torch.randn((L * D,) + batch + (H,), generator=g)
        if kind == "lstm":
            hx = (hx, torch.randn((L * D,) + batch + (H,), generator=g))
    lengths = c.get("lengths")
    if lengths is not None:  # zero the padding (both sides ignore it; keeps the test honest)
        for n, length in enumerate(lengths):
            (x[n, length:] if c["bf"] else x[length:, n]).zero_()
    run = dict(lengths=lengths, enforce_sorted=c.get("enforce_sorted", True))

    r_ours32 = _forward_backward(ours32, x, hx, **run)
    r_ours64 = _forward_backward(ours64, x, hx, **run)
    r_theirs32 = _forward_backward(theirs32, x, hx, **run)
    r_theirs64 = _forward_backward(theirs64, x, hx, **run)
    _assert_parity(r_ours32, r_theirs32, r_theirs64, ctx, r_ours64)

    if lengths is not None:  # padding positions: zero outputs, zero input gradients
        seq = pack_padded_sequence(x, lengths, batch_first=c["bf"],
                                   enforce_sorted=run["enforce_sorted"])
        y, _ = ours32(seq, hx)
        ref, _ = theirs32(seq, hx)
        assert torch.equal(y.batch_sizes, ref.batch_sizes), ctx
        for a, b in ((y.sorted_indices, ref.sorted_indices),
                     (y.unsorted_indices, ref.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b), ctx
        padded, out_lengths = pad_packed_sequence(y, batch_first=c["bf"])
        assert out_lengths.tolist() == lengths, ctx
        for n, length in enumerate(lengths):
            tail = padded[n, length:] if c["bf"] else padded[length:, n]
            dx_tail = r_ours32["dx"][n, length:] if c["bf"] else r_ours32["dx"][length:, n]
            assert not tail.any() and not dx_tail.any(), ctx


def test_packed_final_states_are_each_samples_last_step():
    """The reverse direction starts at each sample's own last step: a packed bidirectional GRU's
    states and outputs equal one-sample runs on the unpadded sequences."""
    torch.manual_seed(3)
    m = ft.GRU(3, 5, bidirectional=True).double()
    lengths = [2, 5, 1]
    seqs = [torch.randn(n, 3, dtype=torch.float64) for n in lengths]
    packed = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    y, h = m(packed)
    padded, _ = pad_packed_sequence(y)
    for n, s in enumerate(seqs):
        y1, h1 = m(s)  # unbatched: the sample alone
        torch.testing.assert_close(padded[: lengths[n], n], y1, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h[:, n], h1, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", list(CELLS))
def test_cells_match_torch_nn(kind):
    theirs_cls, ours_cls, extra = CELLS[kind]
    for case, (N, C, H, bias, with_hx) in enumerate(
            [(3, 5, 7, True, True), (1, 1, 1, False, True), (None, 3, 7, True, True),
             (4, 7, 3, True, False)]):
        kw = dict(input_size=C, hidden_size=H, bias=bias, **extra)
        ctx = f"[{kind} case {case}: N={N} C={C} H={H} bias={bias} hx={with_hx}]"
        torch.manual_seed(seed_of("cell", kind, case) % 2**31)
        ours32 = ours_cls(**kw)
        theirs32 = _copy_of(ours32, theirs_cls, torch.float32, **kw)
        theirs64 = _copy_of(ours32, theirs_cls, torch.float64, **kw)
        ours64 = _copy_of(ours32, ours_cls, torch.float64, **kw)
        batch = () if N is None else (N,)
        x = torch.randn(batch + (C,))
        hx = None
        if with_hx:
            hx = torch.randn(batch + (H,))
            if kind == "lstm":
                hx = (hx, torch.randn(batch + (H,)))
        results = [_forward_backward(m, x, hx) for m in (ours32, ours64, theirs32, theirs64)]
        _assert_parity(results[0], results[2], results[3], ctx, results[1])


def _as_function(module):
    """f(x, *states, *params) -> the sum of all outputs, for gradcheck over every input."""
    names = [n for n, _ in module.named_parameters()]

    def f(x, *rest):
        n_states = len(rest) - len(names)
        states, params = rest[:n_states], rest[n_states:]
        hx = None if not states else (tuple(states) if len(states) == 2 else states[0])
        out = torch.func.functional_call(module, dict(zip(names, params)), (x, hx))
        y, st = out if isinstance(out, tuple) and not isinstance(module, ft.LSTMCell) else (out,
                                                                                             ())
        if isinstance(module, ft.LSTMCell):
            y, st = out[0], (out[1],)
        if isinstance(y, PackedSequence):
            y = y.data
        st = st if isinstance(st, tuple) else (st,)
        return (y,) + st

    return f


@pytest.mark.parametrize("case", ["lstm-L2-bi-packed", "gru-bf-nobias", "rnn_relu-unbatched",
                                  "lstmcell"])
def test_gradcheck_float64(case):
    torch.manual_seed(seed_of("gradcheck", case) % 2**31)
    dt = torch.float64
    states = []
    if case == "lstm-L2-bi-packed":
        m = ft.LSTM(2, 3, num_layers=2, bidirectional=True).double()
        lengths = torch.tensor([2, 4, 1])
        xp = torch.randn(4, 3, 2, dtype=dt, requires_grad=True)
        states = [torch.randn(4, 3, 3, dtype=dt, requires_grad=True) for _ in range(2)]

        def to_input(x):
            return pack_padded_sequence(x, lengths, enforce_sorted=False)
    elif case == "gru-bf-nobias":
        m = ft.GRU(3, 2, bias=False, batch_first=True).double()
        xp = torch.randn(2, 3, 3, dtype=dt, requires_grad=True)
        states = [torch.randn(1, 2, 2, dtype=dt, requires_grad=True)]
        to_input = None
    elif case == "rnn_relu-unbatched":
        m = ft.RNN(2, 3, num_layers=2, nonlinearity="relu").double()
        xp = torch.randn(3, 2, dtype=dt, requires_grad=True)
        to_input = None
    else:
        m = ft.LSTMCell(3, 2).double()
        xp = torch.randn(2, 3, dtype=dt, requires_grad=True)
        states = [torch.randn(2, 2, dtype=dt, requires_grad=True) for _ in range(2)]
        to_input = None
    f = _as_function(m)
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    wrapped = (lambda x, *r: f(to_input(x), *r)) if to_input else f
    assert torch.autograd.gradcheck(wrapped, (xp, *states, *params), eps=1e-6, atol=1e-7)


def test_training_loss_curve_matches_torch_nn():
    """200 SGD steps of LSTM(2 layers) + Linear on a fixed regression task from the same
    initialisation. float64: the curves agree to 1e-9 relative at every step (the two differ only
    by rounding, and this small SGD run does not amplify it); float32: the error of each step's
    loss against torch's float64 curve is at most 2x the largest error of torch's own float32 curve
    over the run (plus the floor of conftest's rule), the rule of the parity tests applied to the
    loss curve as one array."""
    torch.manual_seed(11)
    C, H, T, N, steps = 3, 8, 6, 5, 200
    x = torch.randn(T, N, C)
    target = torch.randn(N, 1)
    torch.manual_seed(12)
    rnn0, head0 = ft.LSTM(C, H, num_layers=2), torch.nn.Linear(H, 1)

    def curve(rnn_cls, dtype):
        rnn = _copy_of(rnn0, rnn_cls, dtype, input_size=C, hidden_size=H, num_layers=2)
        head = torch.nn.Linear(H, 1).to(dtype)
        head.load_state_dict(head0.state_dict())
        opt = torch.optim.SGD(list(rnn.parameters()) + list(head.parameters()), lr=0.1)
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            y, _ = rnn(x.to(dtype))
            loss = torch.nn.functional.mse_loss(head(y[-1]), target.to(dtype))
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return np.array(losses)

    ours32, ours64 = curve(ft.LSTM, torch.float32), curve(ft.LSTM, torch.float64)
    theirs32, theirs64 = curve(torch.nn.LSTM, torch.float32), curve(torch.nn.LSTM, torch.float64)
    assert theirs64[-1] < 0.5 * theirs64[0]  # it does learn, so the curve says something
    np.testing.assert_allclose(ours64, theirs64, rtol=1e-9, atol=0)
    assert_close("loss curve", ours32.astype(np.float32), theirs64, theirs32)


def test_state_dict_round_trip_and_init():
    for kind, (theirs_cls, ours_cls, extra) in KINDS.items():
        for kw in (dict(num_layers=2, bidirectional=True), dict(bias=False)):
            kw = dict(input_size=3, hidden_size=5, **extra, **kw)
            torch.manual_seed(21)
            theirs = theirs_cls(**kw)
            torch.manual_seed(21)
            ours = ours_cls(**kw)
            # the same names, shapes, order and (the same draws from the same seed) values
            assert [(n, p.shape) for n, p in ours.named_parameters()] == \
                [(n, p.shape) for n, p in theirs.named_parameters()], (kind, kw)
            for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
                assert torch.equal(p, q), (kind, kw, n)
                assert p.abs().max() <= 1 / math.sqrt(5)
            # both directions, strict
            theirs2 = theirs_cls(**kw)
            theirs2.load_state_dict(_copy_of(theirs, ours_cls, torch.float32, **kw).state_dict())
            for p, q in zip(theirs2.parameters(), theirs.parameters()):
                assert torch.equal(p, q), (kind, kw)
            assert repr(ours) == repr(theirs), (kind, kw)
    # proj_size: the parameters exist as torch.nn's, so state dicts load both ways
    torch.manual_seed(4)
    theirs = torch.nn.LSTM(3, 5, num_layers=2, proj_size=2, bidirectional=True)
    torch.manual_seed(4)
    ours = ft.LSTM(3, 5, num_layers=2, proj_size=2, bidirectional=True)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, p.shape) for n, p in theirs.named_parameters()]
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), theirs.parameters()))
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    # the per-layer weight lists, as torch.nn.LSTM.all_weights
    assert [[p.shape for p in ps] for ps in ours.all_weights] == \
        [[p.shape for p in ps] for ps in theirs.all_weights]


@pytest.mark.parametrize("config", ["L1-tm", "L2-bi-bf", "L2-bi-packed-unsorted",
                                    "L2-bi-unbatched"])
def test_parity_with_torch_nn_proj_size(config):
    c = CONFIGS[config]
    T, N, C, H = c["size"]
    L, D, P = c["L"], 2 if c["bi"] else 1, max(1, H // 2)
    kw = dict(input_size=C, hidden_size=H, num_layers=L, batch_first=c["bf"],
              bidirectional=c["bi"], proj_size=P)
    torch.manual_seed(seed_of("proj", config) % 2**31)
    ours32 = ft.LSTM(**kw)
    theirs32 = _copy_of(ours32, torch.nn.LSTM, torch.float32, **kw)
    theirs64 = _copy_of(ours32, torch.nn.LSTM, torch.float64, **kw)
    ours64 = _copy_of(ours32, ft.LSTM, torch.float64, **kw)
    batch = () if N is None else (N,)
    x = torch.randn(((batch + (T,)) if c["bf"] else ((T,) + batch)) + (C,))
    hx = (torch.randn((L * D,) + batch + (P,)), torch.randn((L * D,) + batch + (H,)))
    run = dict(lengths=c.get("lengths"), enforce_sorted=c.get("enforce_sorted", True))
    results = [_forward_backward(m, x, hx, **run) for m in (ours32, ours64, theirs32, theirs64)]
    _assert_parity(results[0], results[2], results[3], f"[proj {config}]", results[1])


def test_proj_size_with_dropout_between_layers_and_gradcheck():
    """The per-layer path (dropout between layers) with a projection: the layer input above layer 0
    is proj_size * D wide; and float64 gradients by gradcheck."""
    torch.manual_seed(3)
    m = ft.LSTM(3, 5, num_layers=2, proj_size=2, bidirectional=True, dropout=0.3).double()
    m.seed = 5
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    y, (h, c) = m(x)
    assert y.shape == (4, 2, 4) and h.shape == (4, 2, 2) and c.shape == (4, 2, 5)
    m.seed = 5
    y2, _ = m(x)
    assert torch.equal(y, y2)
    m.eval()
    assert torch.autograd.gradcheck(lambda inp: m(inp)[0], (x,))


# --------------------------------------------------------------------------------------------------
# Dropout between layers


def _dropout_model(seed=None):
    torch.manual_seed(5)
    m = ft.LSTM(3, 6, num_layers=3, dropout=0.4, bidirectional=True).double()
    if seed is not None:
        m.seed = seed
    return m


def _grads(m, x):
    y, (h, c) = m(x)
    loss = (y * _cotangent(y.shape, y.dtype)).sum() + h.sum() + c.sum()
    return [y, h, c] + list(torch.autograd.grad(loss, list(m.parameters())))


def test_dropout_same_seed_same_results_bitwise():
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    a, b = _dropout_model(seed=7), _dropout_model(seed=7)
    for step in range(2):  # the mask sequence continues identically
        for u, v in zip(_grads(a, x), _grads(b, x)):
            assert torch.equal(u, v), step
    c = _dropout_model(seed=8)
    assert not torch.equal(_grads(c, x)[0], _grads(_dropout_model(seed=7), x)[0])
    # seed=None: the generator is seeded with torch.initial_seed(), so torch.manual_seed decides
    torch.manual_seed(99)
    first = _grads(_dropout_model(), x)[0]
    torch.manual_seed(99)
    assert torch.equal(first, _grads(_dropout_model(), x)[0])
    # setting seed restarts the sequence
    a.seed = 7
    assert torch.equal(_grads(a, x)[0], _grads(_dropout_model(seed=7), x)[0])
    # eval mode: no dropout, one core call, and the result of torch.nn's eval mode
    a.eval()
    ref = _copy_of(a, torch.nn.LSTM, torch.float64, input_size=3, hidden_size=6, num_layers=3,
                   dropout=0.4, bidirectional=True).eval()
    torch.testing.assert_close(a(x)[0], ref(x)[0], rtol=1e-12, atol=1e-12)


def test_dropout_equals_dropout_by_hand():
    """Each layer run alone in torch.nn, with the inter-layer masks drawn as the module draws
    them (its generator, seeded with its seed): outputs and all gradients agree."""
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    ours = _dropout_model(seed=123)
    got = _grads(ours, x)

    gen = torch.Generator().manual_seed(123)
    layers = []
    for layer in range(3):
        single = torch.nn.LSTM(3 if layer == 0 else 12, 6, bidirectional=True).double()
        single.load_state_dict({k.replace(f"_l{layer}", "_l0"): v for k, v in
                                ours.state_dict().items() if f"_l{layer}" in k})
        layers.append(single)
    inp, hs, cs = x, [], []
    for layer, single in enumerate(layers):
        inp, (h, c) = single(inp)
        hs.append(h)
        cs.append(c)
        if layer < 2:
            noise = torch.empty(inp.shape, dtype=inp.dtype).bernoulli_(0.6, generator=gen)
            inp = inp * noise.div_(0.6)
    y, h, c = inp, torch.cat(hs), torch.cat(cs)
    loss = (y * _cotangent(y.shape, y.dtype)).sum() + h.sum() + c.sum()
    params = [p for single in layers for p in single.parameters()]
    want = [y, h, c] + list(torch.autograd.grad(loss, params))
    assert len(got) == len(want)
    for i, (u, v) in enumerate(zip(got, want)):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12, msg=f"item {i}")


def test_dropout_mask_statistics():
    m = _dropout_model(seed=1)
    n, p = 200_000, m.dropout
    noise = m._dropout_noise(torch.empty(n, dtype=torch.float64))
    kept = noise != 0
    assert torch.all(noise[kept] == 1 / (1 - p))  # scaled by 1/(1-p), as torch's dropout
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(int((~kept).sum()) - n * p) < 5 * sigma
    # independent elements: adjacent pairs both dropped about p^2 of the time
    both = int((~kept[:-1] & ~kept[1:]).sum())
    assert abs(both - (n - 1) * p * p) < 5 * math.sqrt(n * p * p)


# --------------------------------------------------------------------------------------------------
# Threads, weight cache, zero copies


def test_blas_threads_follow_torch_unless_pinned():
    from fusedrnn import _C

    m = ft.GRU(3, 4)
    x = torch.randn(2, 1, 3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        m(x)
        assert _C.get_num_threads() == 2 == ft.get_num_threads()
        torch.set_num_threads(1)
        m(x)
        assert _C.get_num_threads() == 1
        ft.set_num_threads(2)
        m(x)
        assert _C.get_num_threads() == 2 == ft.get_num_threads()
        ft.set_num_threads(None)
        m(x)
        assert _C.get_num_threads() == 1 == ft.get_num_threads()
    finally:
        ft.set_num_threads(None)
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match=r"n: expected an integer in \[1, 2\*\*62\], got 0"):
        ft.set_num_threads(0)
    with pytest.raises(TypeError, match=r"n: expected an integer, got str"):
        ft.set_num_threads("2")


def test_parameters_are_the_flat_vector():
    """The parameters live in the core's flat layout, so forward converts nothing and sees every
    change (optimizer steps, load_state_dict, writes through .data); parameters moved out of it
    still give torch.nn's results (copied per call)."""
    kw = dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, bias=False)
    m = ft.LSTM(**kw)
    x = torch.randn(5, 2, 3)
    stack = m._stacks[(0, 2)]
    assert stack.flat(stack.params(m)) is stack._buffer_np  # no copy
    names = [n for n, _ in m.named_parameters()]

    def check(module, ctx):
        ref = _copy_of(module, torch.nn.LSTM, next(module.parameters()).dtype, **kw)
        torch.testing.assert_close(module(x.to(ref.weight_hh_l0.dtype))[0],
                                   ref(x.to(ref.weight_hh_l0.dtype))[0], msg=ctx)

    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(x)[0].sum().backward()
    opt.step()
    check(m, "after an optimizer step")
    m.load_state_dict(ft.LSTM(**kw).state_dict())
    check(m, "after load_state_dict")
    m.weight_ih_l1.data.mul_(2.0)  # .data: no version change, still seen
    check(m, "after a write through .data")
    assert stack.flat(stack.params(m)) is stack._buffer_np
    assert not stack._buffer_np[-1]  # bias=False: the bias pieces of the buffer stay zero
    m.double()
    assert stack.flat(stack.params(m)) is stack._buffer_np and stack._buffer.dtype == torch.float64
    check(m, "after .double()")
    m2 = __import__("copy").deepcopy(m)
    s2 = m2._stacks[(0, 2)]
    assert s2.flat(s2.params(m2)) is s2._buffer_np and s2._buffer_np is not stack._buffer_np
    check(m2, "deepcopy")
    with torch.no_grad():  # a parameter replaced by another tensor: copied per call, still right
        m2.weight_hh_l0 = torch.nn.Parameter(m2.weight_hh_l0 * 3)
    assert s2.flat(s2.params(m2)) is not s2._buffer_np
    check(m2, "a replaced parameter")
    assert [n for n, _ in m2.named_parameters()] == names
    # a parameter modified in place between forward and backward is refused, as torch.nn does
    y = m(x.double())[0]
    with torch.no_grad():
        m.weight_hh_l1.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_zero_copy_in_and_out(monkeypatch):
    calls = []
    real = _autograd.F.forward

    def spy(x, *args, **kwargs):
        res = real(x, *args, **kwargs)
        calls.append((x, res))
        return res

    monkeypatch.setattr(_autograd.F, "forward", spy)
    m = ft.GRU(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3, requires_grad=True)
    y, h = m(x)
    (x_seen, res), = calls
    assert np.shares_memory(x_seen, x.detach().numpy())
    assert y.data_ptr() == res.y.ctypes.data and h.data_ptr() == res.hN.ctypes.data
    xt = torch.randn(2, 5, 3).transpose(0, 1)  # batch-first view of time-major data: no copy
    m(xt)
    assert np.shares_memory(calls[-1][0], xt.numpy())


# --------------------------------------------------------------------------------------------------
# Errors name the argument, with expected and received


def test_errors_name_the_argument():
    lstm, gru = ft.LSTM(3, 4, num_layers=2), ft.GRU(3, 4, batch_first=True)
    with pytest.raises(ValueError, match=r"input: expected a 3-D tensor \(T, N, input_size\) .* "
                                         r"got shape \(3,\)"):
        lstm(torch.randn(3))
    with pytest.raises(ValueError, match=r"input: expected input_size=3 .* got shape \(5, 2, 4\)"):
        lstm(torch.randn(5, 2, 4))
    with pytest.raises(TypeError, match=r"input: expected dtype torch.float32 .* got "
                                        r"torch.float64"):
        lstm(torch.randn(5, 2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"input: expected dtype torch.float32 .* got torch.int64"):
        lstm(torch.ones(5, 2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"input: expected a torch.Tensor, got ndarray"):
        lstm(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(TypeError, match=r"hx: expected a tuple \(h_0, c_0\) for LSTM, got Tensor"):
        lstm(torch.randn(5, 2, 3), torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match=r"hx\[1\]: expected shape \(2, 2, 4\) .* got \(2, 3, 4\)"):
        lstm(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 3, 4)))
    with pytest.raises(ValueError, match=r"hx: expected shape \(1, 2, 4\) .* got \(2, 4\)"):
        gru(torch.randn(2, 5, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"hx: expected shape \(1, 4\) .* for unbatched input, "
                                         r"got \(1, 1, 4\)"):
        gru(torch.randn(5, 3), torch.zeros(1, 1, 4))
    with pytest.raises(TypeError, match=r"hx: expected dtype torch.float32 .* got torch.float64"):
        gru(torch.randn(2, 5, 3), torch.zeros(1, 2, 4, dtype=torch.float64))
    cell = ft.LSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"input: expected a 2-D tensor \(batch, input_size\) .* "
                                         r"got shape \(1, 2, 3\)"):
        cell(torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match=r"hx\[0\]: expected shape \(2, 4\) .* got \(2, 3\)"):
        cell(torch.randn(2, 3), (torch.zeros(2, 3), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match=r"nonlinearity: expected 'tanh' or 'relu', got 'gelu'"):
        ft.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match=r"proj_size: expected less than hidden_size=4, got 4"):
        ft.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match=r"dropout: expected a number in \[0, 1\] .* got 1.5"):
        ft.GRU(3, 4, dropout=1.5)
    with pytest.raises(TypeError, match=r"hidden_size: expected an int, got float 4.0"):
        ft.GRU(3, 4.0)
    # NumPy integers are refused, as torch.nn refuses them
    with pytest.raises(TypeError, match=r"input_size: expected an int, got int64"):
        ft.LSTM(np.int64(3), 4)
    with pytest.raises(TypeError, match=r"input_size should be of type int"):
        torch.nn.LSTM(np.int64(3), 4)
    with pytest.raises(ValueError, match=r"num_layers: expected an int >= 1, got 0"):
        ft.GRU(3, 4, num_layers=0)
    with pytest.raises(TypeError, match=r"parameters: fusedrnn.torch computes in float32 or "
                                        r"float64, got torch.float16"):
        ft.GRU(3, 4).half()(torch.randn(2, 1, 3).half())


def test_torch_nn_signatures():
    import inspect

    for ours, theirs in ((ft.LSTMCell, torch.nn.LSTMCell), (ft.GRUCell, torch.nn.GRUCell),
                         (ft.RNNCell, torch.nn.RNNCell)):
        a = [(p.name, p.default) for p in inspect.signature(ours.__init__).parameters.values()]
        b = [(p.name, p.default) for p in inspect.signature(theirs.__init__).parameters.values()]
        assert a == b, ours
    # torch.nn.LSTM/GRU/RNN take *args: check positional use against torch.nn's documented order
    torch.manual_seed(0)
    theirs = torch.nn.RNN(3, 4, 2, "relu", False, True, 0.0, True)
    torch.manual_seed(0)
    ours = ft.RNN(3, 4, 2, "relu", False, True, 0.0, True)
    assert repr(ours) == repr(theirs) and ours.nonlinearity == "relu"
    theirs, ours = torch.nn.LSTM(3, 4, 2, True, True, 0.0, True, 2), ft.LSTM(3, 4, 2, True, True,
                                                                            0.0, True, 2)
    assert repr(ours) == repr(theirs)
    assert fusedrnn.torch.LSTM is ft.LSTM


def test_runs_under_torch_compile():
    """torch.compile runs the module (the core call is opaque to dynamo: a graph break around the
    autograd Function), with the same outputs and gradients as eager torch.nn."""
    torch.manual_seed(0)
    ours = ft.GRU(4, 6, num_layers=2, bidirectional=True)
    theirs = torch.nn.GRU(4, 6, num_layers=2, bidirectional=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 4)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, ha = torch.compile(ours)(xa)
    yb, hb = theirs(xb)
    (ya.sum() + ha.sum()).backward()
    (yb.sum() + hb.sum()).backward()
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=name)
