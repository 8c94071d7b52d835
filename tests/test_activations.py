"""The vectorised float32 activations of the pointwise kernels: error bounds over the whole float
range against float64, NaN and infinity handling, and the same numbers from both kernel builds."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fusedrnn
from fusedrnn import _C

# The documented bounds (csrc/cpu/cell_impl.h): absolute error and units in the last place.
SIGMOID_ABS, SIGMOID_ULP = 1e-7, 3.0
TANH_ABS, TANH_ULP = 1e-7, 2.0


def _all_floats_sample():
    # Every float32 bit pattern with a stride: covers all exponents, both signs, denormals, and
    # dense sampling of the interesting range.
    bits = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    dense = np.linspace(-12, 12, 1_000_001, dtype=np.float32)
    return np.concatenate([x, dense, np.float32([0.0, -0.0, 0.625, -0.625, 88.0, -87.0, 89.0, -104.0])])


def _ulps(actual, exact):
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return np.abs(actual.astype(np.float64) - exact) / spacing


def test_error_bounds_over_float_range():
    x = _all_floats_sample()
    sig, th = _C._activations(x)
    xd = x.astype(np.float64)
    with np.errstate(over="ignore"):
        sig_exact = 1.0 / (1.0 + np.exp(-xd))
    th_exact = np.tanh(xd)
    assert np.max(np.abs(sig - sig_exact)) <= SIGMOID_ABS
    assert np.max(np.abs(th - th_exact)) <= TANH_ABS
    # ulp bounds where the result is a normal float32 (below that only the absolute bound applies)
    normal = np.abs(sig_exact) >= np.finfo(np.float32).tiny
    assert np.max(_ulps(sig[normal], sig_exact[normal])) <= SIGMOID_ULP
    normal = np.abs(th_exact) >= np.finfo(np.float32).tiny
    assert np.max(_ulps(th[normal], th_exact[normal])) <= TANH_ULP
    # odd symmetry of tanh and saturation
    np.testing.assert_array_equal(_C._activations(-x)[1], -th)
    assert np.all((sig >= 0) & (sig <= 1)) and np.all(np.abs(th) <= 1)


def test_special_values():
    x = np.float32([np.nan, np.inf, -np.inf, 1e30, -1e30])
    sig, th = _C._activations(x)
    assert np.isnan(sig[0]) and np.isnan(th[0])
    np.testing.assert_array_equal(sig[1:], [1, 0, 1, 0])
    np.testing.assert_array_equal(th[1:], [1, -1, 1, -1])


def test_nan_input_propagates_through_forward():
    w = fusedrnn.init_weights("lstm", 3, 4, seed=0)
    x = np.zeros((3, 2, 3), np.float32)
    x[1, 0, 0] = np.nan
    y = fusedrnn.forward(x, w, mode="lstm", hidden_size=4).y
    assert np.all(np.isfinite(y[0])) and np.all(np.isfinite(y[:, 1]))
    assert np.all(np.isnan(y[1:, 0]))


_BASELINE_SCRIPT = r"""
import numpy as np, fusedrnn
from fusedrnn import _C
assert fusedrnn.build_info()["simd"] == "baseline", fusedrnn.build_info()["simd"]
x = np.linspace(-12, 12, 100001, dtype=np.float32)
np.save(OUT + "/act.npy", np.stack(_C._activations(x)))
w = fusedrnn.init_weights(MODE, 5, 7, 2, True, seed=0)
xs = np.random.default_rng(0).standard_normal((6, 3, 5)).astype(np.float32)
o = fusedrnn.forward(xs, w, mode=MODE, hidden_size=7, num_layers=2, bidirectional=True, training=True)
g = fusedrnn.backward(o.ctx, dy=np.ones_like(o.y))
np.save(OUT + "/run.npy", np.concatenate([o.y.ravel(), g.dx.ravel(), g.dw.ravel()]))
"""


@pytest.mark.skipif(fusedrnn.build_info()["simd"] != "avx2+fma", reason="no AVX2 kernels to compare")
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_baseline_kernels_match_avx2(mode, tmp_path):
    env = dict(os.environ, FUSEDRNN_FORCE_BASELINE="1")
    script = f"OUT = {str(tmp_path)!r}; MODE = {mode!r}\n" + _BASELINE_SCRIPT
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    x = np.linspace(-12, 12, 100001, dtype=np.float32)
    base = np.load(tmp_path / "act.npy")
    avx = np.stack(_C._activations(x))
    # same formulas; FMA contraction may change the last bit or two
    assert np.max(np.abs(base - avx)) <= 2.5e-7
    w = fusedrnn.init_weights(mode, 5, 7, 2, True, seed=0)
    xs = np.random.default_rng(0).standard_normal((6, 3, 5)).astype(np.float32)
    o = fusedrnn.forward(xs, w, mode=mode, hidden_size=7, num_layers=2, bidirectional=True, training=True)
    g = fusedrnn.backward(o.ctx, dy=np.ones_like(o.y))
    mine = np.concatenate([o.y.ravel(), g.dx.ravel(), g.dw.ravel()])
    np.testing.assert_allclose(np.load(tmp_path / "run.npy"), mine, rtol=0, atol=2e-5)
