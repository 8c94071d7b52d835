"""The flat parameter layout, names, sizes and initialisation, and what build_info reports."""

import numpy as np
import pytest

import fusedrnn
import reference as ref

MODES = fusedrnn.MODES
CASES = [(m, C, H, L, bi) for m in MODES for (C, H) in ((1, 1), (5, 16), (7, 3)) for L in (1, 2, 3)
         for bi in (False, True)]


@pytest.mark.parametrize("mode,C,H,L,bi", CASES)
def test_layout_matches_reference_order(mode, C, H, L, bi):
    pieces = fusedrnn.param_layout(mode, C, H, L, bi)
    expected = ref.layout(mode, C, H, L, bi)
    assert [(p.torch_name, p.shape) for p in pieces] == [(n, tuple(s)) for n, s in expected]
    offset = 0
    for p in pieces:  # contiguous, in storage order, nothing skipped
        assert p.offset == offset
        offset += p.size
    assert offset == fusedrnn.param_size(mode, C, H, L, bi) == ref.param_size(mode, C, H, L, bi)


def test_mxnet_names_and_order():
    # MXNet FusedRNNCell: all weights (l0 i2h, l0 h2h, r0 i2h, r0 h2h, l1 ...) then all biases.
    names = [p.name for p in fusedrnn.param_layout("gru", 4, 3, 2, True)]
    assert names == [
        "l0_i2h_weight", "l0_h2h_weight", "r0_i2h_weight", "r0_h2h_weight",
        "l1_i2h_weight", "l1_h2h_weight", "r1_i2h_weight", "r1_h2h_weight",
        "l0_i2h_bias", "l0_h2h_bias", "r0_i2h_bias", "r0_h2h_bias",
        "l1_i2h_bias", "l1_h2h_bias", "r1_i2h_bias", "r1_h2h_bias",
    ]
    p = {q.name: q for q in fusedrnn.param_layout("gru", 4, 3, 2, True)}
    assert p["l1_i2h_weight"].shape == (9, 6)  # layer 1 sees both directions: C_in = 2*H
    assert p["r0_h2h_weight"].shape == (9, 3)


@pytest.mark.parametrize("mode", MODES)
def test_param_size_formula(mode):
    G = fusedrnn.num_gates(mode)
    C, H, L = 5, 7, 3
    for D, bi in ((1, False), (2, True)):
        want = D * (G * H * (C + H) + 2 * G * H) + (L - 1) * D * (G * H * (D * H + H) + 2 * G * H)
        assert fusedrnn.param_size(mode, C, H, L, bi) == want


@pytest.mark.parametrize("mode", MODES)
def test_converters_round_trip(mode):
    w = fusedrnn.init_weights(mode, 5, 3, 2, True, seed=1)
    sd = fusedrnn.converters.flat_to_torch(w, mode, 5, 3, 2, True)
    assert set(sd) == {n for n, _ in ref.layout(mode, 5, 3, 2, True)}
    for name, arr in ref.unpack(w, mode, 5, 3, 2, True).items():
        np.testing.assert_array_equal(sd[name], arr)
    back = fusedrnn.converters.torch_to_flat(sd, mode, 5, 3, 2, True)
    assert back.dtype == w.dtype
    np.testing.assert_array_equal(back, w)
    sd["weight_ih_l0"][0, 0] += 1.0  # copies, not views into the flat vector
    assert back[0] == w[0]


def test_init_weights_distribution_and_seed():
    w = fusedrnn.init_weights("lstm", 64, 100, 1, False, seed=3)
    assert w.dtype == np.float32 and w.shape == (fusedrnn.param_size("lstm", 64, 100),)
    assert np.abs(w).max() <= 0.1 and np.abs(w).max() > 0.099  # U(-1/sqrt(H), 1/sqrt(H))
    assert abs(float(w.mean())) < 0.002
    np.testing.assert_array_equal(w, fusedrnn.init_weights("lstm", 64, 100, 1, False, seed=3))
    assert fusedrnn.init_weights("gru", 3, 4, dtype=np.float64, seed=0).dtype == np.float64


def test_build_info():
    info = fusedrnn.build_info()
    assert info["blas"].startswith("OpenBLAS")
    assert "OpenBLAS" in info["blas_config"]
    assert info["openmp"] is True and info["openmp_max_threads"] >= 1
    import importlib.util

    # A build that compiled the CUDA backend installed its module beside _C. The converse does not
    # hold: a _cuda module may come from another build of the same sources (CI's CUDA step pairs a
    # CPU-only wheel's _C with a separately built _cuda), so only this direction is checked.
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert importlib.util.find_spec("fusedrnn._cuda") is not None
    assert info["simd"] in ("avx2+fma", "baseline")
    assert info["compiler"] and "-O" in info["cxx_flags"]
    assert info["version"] == fusedrnn.__version__


def test_plan_reports_memory():
    p = fusedrnn.memory("lstm", 8, 16, 10, 3, num_layers=2, bidirectional=True, training=True)
    # reserve: per layer the output (T, N, D*H), per (layer, dir) gates + gradients (T, N, 4H) and
    # cells (T, N, H), each region rounded up to 64 bytes
    elems = 2 * (10 * 3 * 32) + 4 * (2 * 10 * 3 * 64 + 10 * 3 * 16)
    assert elems * 4 <= p.reserve_bytes <= elems * 4 + 64 * 16
    assert p.workspace_bytes > 0
    inference = fusedrnn.memory("lstm", 8, 16, 1000, 4)
    longer = fusedrnn.memory("lstm", 8, 16, 100000, 4)
    assert inference.reserve_bytes == 0
    # one-layer inference scratch does not grow with T (input projected in chunks)
    assert longer.workspace_bytes == inference.workspace_bytes
    # training keeps what backward needs: grows linearly with T
    t1 = fusedrnn.memory("gru", 8, 16, 100, 4, training=True).reserve_bytes
    t2 = fusedrnn.memory("gru", 8, 16, 200, 4, training=True).reserve_bytes
    assert abs(t2 - 2 * t1) <= 64 * 8
    f64 = fusedrnn.memory("gru", 8, 16, 100, 4, training=True, dtype=np.float64).reserve_bytes
    assert abs(f64 - 2 * t1) <= 64 * 8


def test_memory_matches_the_plan_forward_uses():
    # every option that changes the workspace is an argument of memory()
    for kw in ({}, {"dropout": 0.5}, {"recurrent_dropout": 0.25}, {"zero_masked_output": True}):
        m = fusedrnn.memory("lstm", 32, 64, 10, 8, num_layers=2, bidirectional=True,
                            training=True, executor="loop", **kw)
        plan = fusedrnn._C.Plan("lstm", 32, 64, 2, True, "float32", 10, 8, True, **kw)
        assert (m.workspace_bytes, m.reserve_bytes) == (plan.workspace_bytes, plan.reserve_bytes)
    base = fusedrnn.memory("lstm", 32, 64, 10, 8, training=True).workspace_bytes
    assert fusedrnn.memory("lstm", 32, 64, 10, 8, training=True, dropout=0.5).workspace_bytes > base
    x = np.zeros((10, 8, 32), np.float32)
    w = fusedrnn.init_weights("lstm", 32, 64, 2, True)
    ctx = fusedrnn.forward(x, w, mode="lstm", hidden_size=64, num_layers=2, bidirectional=True,
                           training=True, dropout=0.5, seed=1).ctx
    assert ctx.plan.workspace_bytes == fusedrnn.memory(
        "lstm", 32, 64, 10, 8, num_layers=2, bidirectional=True, training=True,
        dropout=0.5).workspace_bytes
