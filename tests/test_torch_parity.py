"""fusedrnn vs torch.nn.LSTM/GRU/RNN with weights converted by fusedrnn.converters.

float32 fusedrnn results must be within 2x torch's own float32 error (plus a tiny
floor) of torch's float64 autograd results, for outputs and every gradient.
"""

import numpy as np
import pytest
import torch

import fusedrnn
import reference as ref
from conftest import MODES, assert_close, rng_for, seed_of, torch_module, torch_run
from fusedrnn import converters

# (T, N, C, H)
PARITY_SHAPES = [(7, 3, 5, 16), (1, 1, 1, 1)]


@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("mode", MODES)
def test_parity_with_torch_float32(mode, L, bi, batch_first):
    D = 2 if bi else 1
    lstm = mode == "lstm"
    for (T, N, C, H) in PARITY_SHAPES:
        ctx = "[%s L=%d %s bf=%s TNCH=%s]" % (mode, L, "bi" if bi else "uni", batch_first,
                                              (T, N, C, H))
        torch.manual_seed(seed_of("parity", mode, L, bi, batch_first, T, N, C, H) % 2**31)
        m32 = torch_module(mode, C, H, L, bi, dtype=torch.float32, batch_first=batch_first)
        sd = m32.state_dict()
        sd_np = {k: v.detach().numpy().copy() for k, v in sd.items()}

        flat = converters.torch_to_flat(sd, mode, C, H, L, bi)
        assert isinstance(flat, np.ndarray) and flat.dtype == np.float32, ctx
        assert flat.shape == (fusedrnn.param_size(mode, C, H, L, bi),), ctx
        np.testing.assert_array_equal(flat, ref.pack(sd_np, mode, C, H, L, bi), err_msg=ctx)
        back = converters.flat_to_torch(flat, mode, C, H, L, bi)
        assert set(back) == set(sd_np), ctx
        for k in sd_np:
            assert isinstance(back[k], np.ndarray) and back[k].dtype == np.float32, (k, ctx)
            np.testing.assert_array_equal(back[k], sd_np[k], err_msg="%s %s" % (k, ctx))

        m64 = torch_module(mode, C, H, L, bi, flat=flat.astype(np.float64),
                           dtype=torch.float64, batch_first=batch_first)

        rng = rng_for("parity-data", mode, L, bi, batch_first, T, N, C, H)
        f32 = np.float32
        x = rng.standard_normal((N, T, C) if batch_first else (T, N, C)).astype(f32)
        h0 = (0.5 * rng.standard_normal((L * D, N, H))).astype(f32)
        c0 = rng.standard_normal((L * D, N, H)).astype(f32) if lstm else None
        dy = rng.standard_normal(x.shape[:2] + (D * H,)).astype(f32)
        dhN = rng.standard_normal((L * D, N, H)).astype(f32)
        dcN = rng.standard_normal((L * D, N, H)).astype(f32) if lstm else None

        t32 = torch_run(m32, mode, x, h0, c0, dy, dhN, dcN)
        t64 = torch_run(m64, mode, x, h0, c0, dy, dhN, dcN)

        res = fusedrnn.forward(x, flat, mode=mode, hidden_size=H, num_layers=L,
                               bidirectional=bi, h0=h0, c0=c0, batch_first=batch_first,
                               training=True)
        assert res.y.dtype == f32, ctx
        assert_close("y", res.y, t64.y, t32.y, ctx=ctx)
        assert_close("hN", res.hN, t64.hN, t32.hN, ctx=ctx)
        if lstm:
            assert_close("cN", res.cN, t64.cN, t32.cN, ctx=ctx)
        else:
            assert res.cN is None, ctx

        g = fusedrnn.backward(res.ctx, dy=dy, dhN=dhN, dcN=dcN)
        assert_close("dx", g.dx, t64.dx, t32.dx, ctx=ctx)
        assert_close("dh0", g.dh0, t64.dh0, t32.dh0, ctx=ctx)
        if lstm:
            assert_close("dc0", g.dc0, t64.dc0, t32.dc0, ctx=ctx)
        else:
            assert g.dc0 is None, ctx
        assert g.dw.dtype == f32 and g.dw.shape == flat.shape, ctx
        dparams = converters.flat_to_torch(g.dw, mode, C, H, L, bi)
        assert set(dparams) == set(t64.dparams), ctx
        for name in t64.dparams:
            assert_close("d" + name, dparams[name], t64.dparams[name], t32.dparams[name],
                         ctx=ctx)


@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode", MODES)
def test_converters_round_trip(mode, bi):
    C, H, L = 5, 3, 3
    D = 2 if bi else 1
    torch.manual_seed(seed_of("conv", mode, bi) % 2**31)
    m = torch_module(mode, C, H, L, bi, dtype=torch.float64)
    sd = m.state_dict()
    sd_np = {k: v.detach().numpy().copy() for k, v in sd.items()}
    n = fusedrnn.param_size(mode, C, H, L, bi)
    for label, src in (("torch", sd), ("numpy", sd_np)):
        flat = converters.torch_to_flat(src, mode, C, H, L, bi)
        assert isinstance(flat, np.ndarray) and flat.dtype == np.float64, label
        assert flat.shape == (n,), label
        np.testing.assert_array_equal(flat, ref.pack(sd_np, mode, C, H, L, bi), err_msg=label)
        back = converters.flat_to_torch(flat, mode, C, H, L, bi)
        assert set(back) == set(sd_np), label
        for k, v in sd_np.items():
            assert back[k].dtype == np.float64 and back[k].shape == v.shape, (label, k)
            np.testing.assert_array_equal(back[k], v, err_msg="%s %s" % (label, k))
    # float32 numpy input -> float32 flat
    sd32 = {k: v.astype(np.float32) for k, v in sd_np.items()}
    flat32 = converters.torch_to_flat(sd32, mode, C, H, L, bi)
    assert flat32.dtype == np.float32
    np.testing.assert_array_equal(flat32, ref.pack(sd32, mode, C, H, L, bi))
    # flat_to_torch of an arbitrary flat vector follows the documented layout
    w = rng_for("conv-flat", mode, bi).standard_normal(n)
    got = converters.flat_to_torch(w, mode, C, H, L, bi)
    expect = ref.unpack(w, mode, C, H, L, bi)
    assert set(got) == set(expect)
    for k in expect:
        np.testing.assert_array_equal(got[k], expect[k], err_msg=k)
    # and loading it into torch works (names and shapes are torch's)
    m.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in got.items()})
    assert len(got) == 4 * L * D
