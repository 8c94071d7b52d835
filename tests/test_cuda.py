"""The CUDA backend (fusedrnn._cuda and fusedrnn.torch on CUDA tensors), checked against the CPU
backend in float64 (itself checked against the float64 reference everywhere else), against
torch.nn (cuDNN) on converted weights, and with poisoned outputs (every element must be written).

Marked ``cuda``: skipped with the reason when this build has no CUDA backend or no device is present.
Both forward algorithms run: the per-step path and the persistent kernel (float32 only).
"""

import numpy as np
import pytest
import torch

import fusedrnn
import fusedrnn.torch as ft
from conftest import rng_for

try:
    from fusedrnn import _cuda as ext
    _OK, _WHY = ext.available()
except ImportError as e:  # the CPU-only build
    ext, _OK, _WHY = None, False, f"this build has no CUDA backend ({e})"

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not _OK, reason=_WHY)]

MODES = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
DEV = "cuda"


@pytest.fixture(params=["step", "persistent"])
def algo(request, monkeypatch):
    from fusedrnn.torch import _cuda
    monkeypatch.setattr(_cuda, "ALGO", request.param)
    return request.param


def _weights(rng, mode, C, H, L, bidirectional, dtype):
    n = fusedrnn.param_size(mode, C, H, L, bidirectional)
    return (rng.standard_normal(n) * 0.4).astype(dtype)


def _rank_rows(T, lengths):
    """(t, sample) of every packed row in rank order (longest first, stable)."""
    order = np.argsort(-lengths, kind="stable")
    srt = lengths[order]
    t_idx, n_idx = [], []
    for t in range(T):
        b = int((srt > t).sum())
        t_idx += [t] * b
        n_idx += list(order[:b])
    return np.array(t_idx, dtype=np.int64), np.array(n_idx, dtype=np.int64), order


def cuda_run(mode, x, w, h0, c0, dy, dhN, dcN, *, H, L=1, bidirectional=False, lengths=None,
             activation=None, recurrent_activation="sigmoid", reset_after=True, algo="step",
             proj_size=0):
    """forward(training) + backward_data + backward_weights through fusedrnn._cuda on padded
    (T, N, C) NumPy data; returns NumPy results in the caller's sample order, padding zero."""
    T, N, C = x.shape
    D = 2 if bidirectional else 1
    S = proj_size or H
    dt = torch.float32 if x.dtype == np.float32 else torch.float64
    if lengths is None:
        t_idx = np.repeat(np.arange(T), N)
        n_idx = np.tile(np.arange(N), T)
        order = np.arange(N)
        srt = None
    else:
        t_idx, n_idx, order = _rank_rows(T, lengths)
        srt = sorted(lengths.tolist(), reverse=True)
    p = ext.Plan(mode, C, H, L, bidirectional, "float32" if dt == torch.float32 else "float64",
                 T, N, True, srt, activation=activation,
                 recurrent_activation=recurrent_activation, reset_after=reset_after, algo=algo,
                 proj_size=proj_size)
    g = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(DEV)  # noqa: E731
    nan = lambda shape: torch.full(shape, float("nan"), dtype=dt, device=DEV)  # noqa: E731
    xr = g(x[t_idx, n_idx])
    wt = g(w)
    st = lambda a: None if a is None else g(a[:, order])  # noqa: E731
    y = nan((p.rows, D * S))
    hN, cN = nan((L * D, N, S)), nan((L * D, N, H))
    ws = torch.empty(p.workspace_bytes, dtype=torch.uint8, device=DEV).fill_(0xFF)
    rs = torch.empty(max(p.reserve_bytes, 1), dtype=torch.uint8, device=DEV).fill_(0xFF)
    P = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    h0t, c0t = st(h0), st(c0 if mode == "lstm" else None)
    stream = torch.cuda.current_stream().cuda_stream
    ext.forward(p, P(xr), P(wt), P(h0t), P(c0t), P(y), P(hN), P(cN if mode == "lstm" else None),
                P(ws), P(rs), stream)
    dyr = g(dy[t_idx, n_idx])
    dhNt, dcNt = st(dhN), st(dcN if mode == "lstm" else None)
    dx, dh0, dc0 = nan((p.rows, C)), nan((L * D, N, S)), nan((L * D, N, H))
    ext.backward_data(p, P(dyr), P(dhNt), P(dcNt if mode == "lstm" else None), P(wt), P(dx),
                      P(dh0), P(dc0 if mode == "lstm" else None), P(ws), P(rs), stream)
    dw = torch.zeros(w.size, dtype=dt, device=DEV)
    ext.backward_weights(p, P(xr), P(dw), P(ws), P(rs), stream)
    torch.cuda.synchronize()
    inv = np.argsort(order)

    def pad(rows, width):
        out = np.zeros((T, N, width), dtype=x.dtype)
        out[t_idx, n_idx] = rows.cpu().numpy()
        return out

    res = dict(y=pad(y, D * S), hN=hN.cpu().numpy()[:, inv], dx=pad(dx, C),
               dh0=dh0.cpu().numpy()[:, inv], dw=dw.cpu().numpy())
    if mode == "lstm":
        res.update(cN=cN.cpu().numpy()[:, inv], dc0=dc0.cpu().numpy()[:, inv])
    return res


def cpu_run(mode, x, w, h0, c0, dy, dhN, dcN, *, H, L=1, bidirectional=False, lengths=None,
            activation=None, recurrent_activation="sigmoid", reset_after=True, proj_size=0):
    c0 = c0 if mode == "lstm" else None
    r = fusedrnn.forward(x, w, mode=mode, hidden_size=H, num_layers=L, bidirectional=bidirectional,
                         h0=h0, c0=c0, training=True, lengths=lengths, activation=activation,
                         recurrent_activation=recurrent_activation, reset_after=reset_after,
                         proj_size=proj_size)
    b = fusedrnn.backward(r.ctx, dy=dy, dhN=dhN, dcN=dcN if mode == "lstm" else None)
    res = dict(y=r.y, hN=r.hN, dx=b.dx, dh0=b.dh0, dw=b.dw)
    if mode == "lstm":
        res.update(cN=r.cN, dc0=b.dc0)
    return res


def problem(key, mode, T, N, C, H, L, bidirectional, dtype, lengths=None):
    rng = rng_for(*key)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((T, N, C)).astype(dtype)
    w = _weights(rng, mode, C, H, L, bidirectional, dtype)
    h0 = (rng.standard_normal((L * D, N, H)) * 0.5).astype(dtype)
    c0 = (rng.standard_normal((L * D, N, H)) * 0.5).astype(dtype)
    dy = rng.standard_normal((T, N, D * H)).astype(dtype)
    if lengths is not None:
        dy = dy * (np.arange(T)[:, None] < lengths[None, :])[:, :, None]
    dhN = rng.standard_normal((L * D, N, H)).astype(dtype)
    dcN = rng.standard_normal((L * D, N, H)).astype(dtype)
    return x, w, h0, c0, dy, dhN, dcN


def assert_close(got, want, rtol, what):
    for k in want:
        a, b = np.asarray(got[k], np.float64), np.asarray(want[k], np.float64)
        assert not np.isnan(a).any(), f"{what}: {k} has unwritten (NaN) elements"
        err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
        assert err <= rtol, f"{what}: {k} relative error {err:.3g} > {rtol}"


# ---- the backend against the CPU backend ------------------------------------------------------------

GRID = [  # (T, N, C, H, L, bidirectional)
    (1, 1, 1, 1, 1, False),
    (5, 3, 7, 97, 1, False),
    (7, 7, 3, 33, 2, True),
    (3, 1, 5, 257, 1, True),
    (4, 16, 8, 64, 3, False),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", GRID, ids=lambda s: "T{}N{}C{}H{}L{}{}".format(*s[:5], "bi" if s[5] else ""))
def test_float64_matches_cpu(mode, shape):
    T, N, C, H, L, bi = shape
    args = problem(("f64", mode, shape), mode, T, N, C, H, L, bi, np.float64)
    got = cuda_run(mode, *args, H=H, L=L, bidirectional=bi)
    want = cpu_run(mode, *args, H=H, L=L, bidirectional=bi)
    assert_close(got, want, 1e-10, f"{mode} {shape}")


@pytest.mark.parametrize("algo_name", ["step", "persistent"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", GRID, ids=lambda s: "T{}N{}C{}H{}L{}{}".format(*s[:5], "bi" if s[5] else ""))
def test_float32_matches_cpu(mode, shape, algo_name):
    T, N, C, H, L, bi = shape
    args = problem(("f32", mode, shape), mode, T, N, C, H, L, bi, np.float32)
    got = cuda_run(mode, *args, H=H, L=L, bidirectional=bi, algo=algo_name)
    want = cpu_run(mode, *[a.astype(np.float64) for a in args], H=H, L=L, bidirectional=bi)
    assert_close(got, want, 2e-5, f"{mode} {shape} {algo_name}")


@pytest.mark.parametrize("algo_name", ["step", "persistent"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bi", [False, True])
def test_lengths_match_cpu(mode, bi, algo_name):
    T, N, C, H, L = 9, 7, 5, 33, 2
    lengths = np.array([3, 9, 0, 1, 9, 5, 2], dtype=np.int64)
    dtype = np.float32 if algo_name == "persistent" else np.float64
    args = problem(("len", mode, bi), mode, T, N, C, H, L, bi, dtype, lengths)
    got = cuda_run(mode, *args, H=H, L=L, bidirectional=bi, lengths=lengths, algo=algo_name)
    want = cpu_run(mode, *[a.astype(np.float64) for a in args], H=H, L=L, bidirectional=bi,
                   lengths=lengths)
    assert_close(got, want, 1e-10 if dtype == np.float64 else 2e-5, f"{mode} lengths")


@pytest.mark.parametrize("activation, recurrent", [("relu", "hard_sigmoid"), ("softsign", "tanh"),
                                                   ("softrelu", "sigmoid"), ("linear", "sigmoid")])
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_activations_match_cpu(mode, activation, recurrent):
    T, N, C, H = 4, 3, 5, 7
    args = problem(("act", mode, activation), mode, T, N, C, H, 1, False, np.float64)
    kw = dict(H=H, activation=activation, recurrent_activation=recurrent)
    assert_close(cuda_run(mode, *args, **kw), cpu_run(mode, *args, **kw), 1e-10, activation)


@pytest.mark.parametrize("bi", [False, True])
def test_gru_reset_before_matches_cpu(bi):
    T, N, C, H, L = 6, 5, 4, 97, 2
    lengths = np.array([6, 2, 5, 0, 6], dtype=np.int64)
    args = problem(("rb", bi), "gru", T, N, C, H, L, bi, np.float64, lengths)
    kw = dict(H=H, L=L, bidirectional=bi, reset_after=False, lengths=lengths)
    assert_close(cuda_run("gru", *args, **kw), cpu_run("gru", *args, **kw), 1e-10, "reset_before")


@pytest.mark.parametrize("bi", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_projection_matches_cpu(bi, with_lengths):
    T, N, C, H, P, L = 6, 5, 4, 9, 3, 2
    D = 2 if bi else 1
    lengths = np.array([6, 2, 5, 0, 6], dtype=np.int64) if with_lengths else None
    rng = rng_for("proj", bi, with_lengths)
    x = rng.standard_normal((T, N, C))
    w = rng.standard_normal(fusedrnn.param_size("lstm", C, H, L, bi, P)) * 0.4
    h0, c0 = rng.standard_normal((L * D, N, P)), rng.standard_normal((L * D, N, H))
    dy = rng.standard_normal((T, N, D * P))
    if lengths is not None:
        dy = dy * (np.arange(T)[:, None] < lengths[None, :])[:, :, None]
    dhN, dcN = rng.standard_normal((L * D, N, P)), rng.standard_normal((L * D, N, H))
    args = (x, w, h0, c0, dy, dhN, dcN)
    kw = dict(H=H, L=L, bidirectional=bi, lengths=lengths, proj_size=P)
    assert_close(cuda_run("lstm", *args, **kw), cpu_run("lstm", *args, **kw), 1e-10, "proj")
    got32 = cuda_run("lstm", *[a.astype(np.float32) for a in args], **kw)
    assert_close(got32, cpu_run("lstm", *args, **kw), 2e-5, "proj float32")


def test_persistent_runs_where_auto_picks_it():
    p = ext.Plan("lstm", 256, 256, 1, False, "float32", 10, 4, False)
    assert p.algo == "persistent" and p.persistent_blocks > 0
    assert ext.Plan("lstm", 256, 256, 1, False, "float32", 10, 128, False).algo == "persistent"
    assert ext.Plan("lstm", 256, 256, 1, False, "float32", 10, 129, False).algo == "step"
    assert ext.Plan("lstm", 8, 8, 1, False, "float64", 10, 4, False).algo == "step"
    with pytest.raises(ValueError, match="algo"):
        ext.Plan("gru", 8, 8, 1, False, "float32", 3, 2, False, reset_after=False,
                 algo="persistent")
    assert ext.Plan("lstm", 8, 8, 1, False, "float32", 3, 2, False, proj_size=4).algo == "step"


def test_unsupported_options_are_refused():
    with pytest.raises(ValueError, match="algo"):
        ext.Plan("lstm", 8, 8, algo="fastest")
    with pytest.raises(ValueError, match="lengths"):
        ext.Plan("lstm", 8, 8, 1, False, "float32", 3, 2, False, [1, 4])


# ---- fusedrnn.torch on CUDA tensors ----------------------------------------------------------------

TORCH = {"lstm": (ft.LSTM, torch.nn.LSTM), "gru": (ft.GRU, torch.nn.GRU),
         "rnn_tanh": (ft.RNN, torch.nn.RNN)}


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _pair(mode, C, H, L, bi, batch_first=False, dtype=torch.float32):
    torch.manual_seed(0)
    ours_cls, theirs_cls = TORCH[mode]
    ours = ours_cls(C, H, num_layers=L, bidirectional=bi, batch_first=batch_first).to(DEV, dtype)
    theirs = theirs_cls(C, H, num_layers=L, bidirectional=bi, batch_first=batch_first)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs.to(DEV, dtype)


def _grads(module):
    return {n: p.grad.detach().clone() for n, p in module.named_parameters()}


def _rel(a, b):
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("bi", [False, True])
def test_torch_module_matches_cudnn(mode, bi, algo):
    C, H, L, T, N = 7, 33, 2, 6, 5
    ours, theirs = _pair(mode, C, H, L, bi)
    x = torch.randn(T, N, C, device=DEV)
    outs = []
    for m in (ours, theirs):
        xi = x.clone().requires_grad_(True)
        y, h = m(xi)
        hN = h[0] if mode == "lstm" else h
        (y.square().sum() + hN.sum()).backward()
        outs.append((y.detach(), hN.detach(), xi.grad, _grads(m)))
    (y1, h1, dx1, g1), (y2, h2, dx2, g2) = outs
    assert _rel(y1, y2) < 1e-5 and _rel(h1, h2) < 1e-5 and _rel(dx1, dx2) < 1e-4
    for n in g2:
        assert _rel(g1[n], g2[n]) < 1e-4, n


def test_torch_lstm_projection_matches_cudnn():
    torch.manual_seed(3)
    ours = ft.LSTM(6, 12, num_layers=2, proj_size=5, bidirectional=True).to(DEV)
    theirs = torch.nn.LSTM(6, 12, num_layers=2, proj_size=5, bidirectional=True)
    theirs.load_state_dict(ours.state_dict())
    theirs = theirs.to(DEV)
    x = torch.randn(7, 4, 6, device=DEV)
    outs = []
    for m in (ours, theirs):
        xi = x.clone().requires_grad_(True)
        y, (h, c) = m(xi)
        (y.square().sum() + h.sum() + c.sum()).backward()
        outs.append((y.detach(), h.detach(), c.detach(), xi.grad, _grads(m)))
    for a, b in zip(outs[0][:4], outs[1][:4]):
        assert _rel(a, b) < 1e-4
    for n in outs[1][4]:
        assert _rel(outs[0][4][n], outs[1][4][n]) < 1e-4, n


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_torch_packed_sequence_and_batch_first(mode, algo):
    from torch.nn.utils.rnn import pack_padded_sequence
    C, H, T, N = 5, 17, 8, 6
    ours, theirs = _pair(mode, C, H, 1, True, batch_first=True)
    x = torch.randn(N, T, C, device=DEV)
    lengths = torch.tensor([3, 8, 1, 5, 8, 2])
    results = []
    for m in (ours, theirs):
        xi = x.clone().requires_grad_(True)
        packed = pack_padded_sequence(xi, lengths, batch_first=True, enforce_sorted=False)
        y, h = m(packed)
        hN = h[0] if mode == "lstm" else h
        (y.data.square().sum() + hN.sum()).backward()
        results.append((y.data.detach(), hN.detach(), xi.grad))
    for a, b in zip(*results):
        assert _rel(a, b) < 1e-4


def test_torch_module_float64_matches_cpu_module():
    C, H, T, N = 4, 9, 5, 3
    torch.manual_seed(1)
    cpu = ft.LSTM(C, H, num_layers=2).double()
    gpu = ft.LSTM(C, H, num_layers=2).double().to(DEV)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(T, N, C, dtype=torch.float64)
    y1, (h1, c1) = cpu(x)
    y2, (h2, c2) = gpu(x.to(DEV))
    for a, b in ((y1, y2), (h1, h2), (c1, c2)):
        assert _rel(b.cpu(), a) < 1e-12


def test_torch_cells_on_cuda():
    torch.manual_seed(2)
    ours = ft.GRUCell(6, 11).to(DEV)
    theirs = torch.nn.GRUCell(6, 11).to(DEV)
    theirs.load_state_dict(ours.state_dict())
    x, h = torch.randn(4, 6, device=DEV), torch.randn(4, 11, device=DEV)
    assert _rel(ours(x, h), theirs(x, h)) < 1e-5


def test_torch_device_mismatch_is_named():
    m = ft.LSTM(3, 4).to(DEV)
    with pytest.raises(ValueError, match="input: expected a tensor on cuda"):
        m(torch.randn(2, 1, 3))
    with pytest.raises(ValueError, match=r"hx\[0\]"):
        m(torch.randn(2, 1, 3, device=DEV), (torch.zeros(1, 1, 4), torch.zeros(1, 1, 4)))


def test_runs_on_the_current_stream():
    """The input is written on a side stream behind a long GPU sleep and the call is made under
    that stream without any synchronisation: work queued on another stream would read the input
    before it is written."""
    ours, theirs = _pair("lstm", 8, 16, 1, False)
    base = torch.randn(5, 2, 8, device=DEV)
    want, _ = theirs(base * 2.0)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(200_000_000)  # hundreds of ms of GPU time on s
        x = base * 2.0
        got, _ = ours(x)
    s.synchronize()
    assert _rel(got, want) < 1e-5


def test_tf32_follows_cudnn_flag(monkeypatch):
    from fusedrnn.torch import _cuda
    monkeypatch.setattr(_cuda, "ALGO", "step")
    ours, theirs = _pair("lstm", 64, 128, 1, False)
    x = torch.randn(20, 64, 64, device=DEV)
    strict, _ = ours(x)
    torch.backends.cudnn.allow_tf32 = True
    fast, _ = ours(x)
    plans = [p for k, p in _cuda._PLANS.items() if k[6] == 20 and k[7] == 64]
    assert {p.tf32 for p in plans} == {False, True}
    assert 0 < _rel(fast, strict) < 1e-2


def test_persistent_backward_geometry():
    for mode, H, N in (("lstm", 1024, 8), ("gru", 1024, 16), ("rnn_tanh", 97, 3), ("lstm", 1, 1)):
        p = ext.Plan(mode, 64, H, 1, False, "float32", 5, N, True, algo="persistent")
        assert p.algo == "persistent" and p.persistent_backward, (mode, H, N)
