"""LSTM with a projection (PyTorch's proj_size, LSTMP): h = W_hr (o * tanh(c)), P wide, in the fused
core, forward and backward. Checked against the float64 reference (itself checked by finite
differences), against torch.nn.LSTM(proj_size=P) on converted weights, with masks, and the layout."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fusedrnn
import reference as ref
from conftest import check_finite_differences, compare_with_yardstick, rng_for


def problem(T, N, C, H, P, L=1, bi=False, seed=0, f32_exact=True):
    rng = rng_for("proj", T, N, C, H, P, L, bi, seed)
    D = 2 if bi else 1
    q = SimpleNamespace(T=T, N=N, C=C, H=H, P=P, L=L, bi=bi, D=D)
    k = 1 / np.sqrt(H)
    q.flat = rng.uniform(-k, k, ref.param_size("lstm", C, H, L, bi, P))
    q.x = rng.standard_normal((T, N, C))
    q.h0 = 0.5 * rng.standard_normal((L * D, N, P))
    q.c0 = rng.standard_normal((L * D, N, H))
    q.dy = rng.standard_normal((T, N, D * P))
    q.dhN = rng.standard_normal((L * D, N, P))
    q.dcN = rng.standard_normal((L * D, N, H))
    if f32_exact:
        for name in ("flat", "x", "h0", "c0", "dy", "dhN", "dcN"):
            setattr(q, name, getattr(q, name).astype(np.float32).astype(np.float64))
    return q


def ref_dict(q, dtype=np.float64, **opt):
    y, hN, cN, cache = ref.forward(q.x, q.flat, "lstm", q.H, q.L, q.bi, q.h0, q.c0, dtype=dtype,
                                   proj_size=q.P, **opt)
    dx, dh0, dc0, dw = ref.backward(cache, q.dy, q.dhN, q.dcN)
    return dict(y=y, hN=hN, cN=cN, dx=dx, dh0=dh0, dc0=dc0, dw=dw)


def fused_dict(q, dtype, **opt):
    c = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
    r = fusedrnn.forward(c(q.x), c(q.flat), mode="lstm", hidden_size=q.H, num_layers=q.L,
                         bidirectional=q.bi, h0=c(q.h0), c0=c(q.c0), training=True,
                         proj_size=q.P, **opt)
    g = fusedrnn.backward(r.ctx, dy=c(q.dy), dhN=c(q.dhN), dcN=c(q.dcN))
    return dict(y=r.y, hN=r.hN, cN=r.cN, dx=g.dx, dh0=g.dh0, dc0=g.dc0, dw=g.dw)


GRID = [(5, 3, 4, 7, 3, 2, True), (1, 1, 1, 2, 1, 1, False), (7, 4, 5, 9, 4, 3, False),
        (3, 2, 3, 5, 1, 1, True)]


@pytest.mark.parametrize("T,N,C,H,P,L,bi", GRID)
def test_matches_reference(T, N, C, H, P, L, bi):
    q = problem(T, N, C, H, P, L, bi)
    want, yard = ref_dict(q), ref_dict(q, np.float32)
    for dtype in (np.float64, np.float32):
        compare_with_yardstick(fused_dict(q, dtype), want, dtype, f"[{T, N, C, H, P, L, bi}]", yard)


@pytest.mark.parametrize("kind", ["left", "gaps"])
@pytest.mark.parametrize("zero", [False, True])
def test_masks(kind, zero):
    q = problem(6, 4, 3, 7, 3, 2, True, seed=1)
    mask = np.ones((6, 4), bool)
    if kind == "left":
        mask[:2, 1] = mask[:4, 2] = False
    else:
        mask[1, 0] = mask[3:5, 3] = mask[5, 1] = False
    opt = dict(mask=mask, zero_masked_output=zero)
    want, yard = ref_dict(q, **opt), ref_dict(q, np.float32, **opt)
    for dtype in (np.float64, np.float32):
        compare_with_yardstick(fused_dict(q, dtype, **opt), want, dtype, f"[{kind} {zero}]", yard)


def test_finite_differences():
    q = problem(3, 2, 3, 4, 2, 2, True, f32_exact=False)
    got = fused_dict(q, np.float64)

    def loss():
        r = fusedrnn.forward(q.x, q.flat, mode="lstm", hidden_size=q.H, num_layers=q.L,
                             bidirectional=True, h0=q.h0, c0=q.c0, proj_size=q.P)
        return ref.loss(r.y, r.hN, r.cN, q.dy, q.dhN, q.dcN)

    check_finite_differences(loss, {"x": q.x, "h0": q.h0, "c0": q.c0, "weights": q.flat},
                             {"x": got["dx"], "h0": got["dh0"], "c0": got["dc0"],
                              "weights": got["dw"]})


@pytest.mark.parametrize("L,bi", [(1, False), (2, True)])
def test_matches_torch(L, bi):
    T, N, C, H, P = 6, 3, 5, 8, 3
    q = problem(T, N, C, H, P, L, bi, seed=2)
    m = torch.nn.LSTM(C, H, num_layers=L, bidirectional=bi, proj_size=P).double()
    state = fusedrnn.converters.flat_to_torch(q.flat, "lstm", C, H, L, bi, proj_size=P)
    assert set(state) == set(m.state_dict())
    m.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x = torch.tensor(q.x, requires_grad=True)
    h0 = torch.tensor(q.h0, requires_grad=True)
    c0 = torch.tensor(q.c0, requires_grad=True)
    y, (hN, cN) = m(x, (h0, c0))
    (y * torch.from_numpy(q.dy)).sum().add((hN * torch.from_numpy(q.dhN)).sum()).add(
        (cN * torch.from_numpy(q.dcN)).sum()).backward()
    got = fused_dict(q, np.float64)
    tol = dict(rtol=1e-10, atol=1e-12)
    for name, t in (("y", y), ("hN", hN), ("cN", cN), ("dx", x.grad), ("dh0", h0.grad),
                    ("dc0", c0.grad)):
        np.testing.assert_allclose(got[name], t.detach().numpy(), err_msg=name, **tol)
    tgrads = {k: p.grad.numpy() for k, p in m.named_parameters()}
    np.testing.assert_allclose(
        got["dw"], fusedrnn.converters.torch_to_flat(tgrads, "lstm", C, H, L, bi, proj_size=P),
        **tol)


def test_layout_and_sizes():
    pieces = fusedrnn.param_layout("lstm", 5, 8, 2, True, proj_size=3)
    names = [p.torch_name for p in pieces]
    assert names[:3] == ["weight_ih_l0", "weight_hh_l0", "weight_hr_l0"]
    by = {p.torch_name: p for p in pieces}
    assert by["weight_hh_l0"].shape == (32, 3) and by["weight_hr_l0_reverse"].shape == (3, 8)
    assert by["weight_ih_l1"].shape == (32, 6) and by["weight_hr_l1"].part == "h2r"
    m = torch.nn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3)
    assert fusedrnn.param_size("lstm", 5, 8, 2, True, proj_size=3) == sum(
        p.numel() for p in m.parameters())
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
        p.torch_name: p.shape for p in pieces}
    # memory: the reserve gains the projection's rows (o*act(c) (T, N, H) and dh (T, N, P)) and
    # its layer output shrinks from H to P wide: + 4 * T*N*2P bytes, up to 64-byte alignment
    T, N, P = 10, 3, 3
    a = fusedrnn.memory("lstm", 5, 8, T, N, training=True, proj_size=P).reserve_bytes
    b = fusedrnn.memory("lstm", 5, 8, T, N, training=True).reserve_bytes
    assert abs((a - b) - 4 * T * N * 2 * P) <= 3 * 64


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(mode="gru", proj_size=2), ValueError, "proj_size: only mode='lstm' has a projection"),
    (dict(proj_size=8), ValueError, "proj_size: expected 0 (none) or an integer in [1, hidden_size)"),
    (dict(proj_size=-1), ValueError, "proj_size"),
    (dict(proj_size=2, recurrent_dropout=0.2), ValueError, "proj_size: not supported together"),
    (dict(proj_size=2, h0=np.zeros((1, 2, 8), np.float32)), ValueError,
     "h0: expected shape (1, 2, 2) (num_layers * directions, N, proj_size)"),
])
def test_errors(kw, exc, msg):
    kw = dict(dict(mode="lstm"), **kw)
    x = np.zeros((3, 2, 4), np.float32)
    n = fusedrnn.param_size("lstm", 4, 8, proj_size=2)
    with pytest.raises(exc) as e:
        fusedrnn.forward(x, np.zeros(n, np.float32), hidden_size=8, training=True, **kw)
    assert msg in str(e.value)
