"""NaN and Inf inputs propagate as IEEE arithmetic does (docs/guarantees.md): a NaN in one sample's
input reaches that sample's outputs and states, and the gradients that depend on it, and no other
sample's; +-Inf inputs give the float64 reference's IEEE results; nothing hangs or crashes. Every mode, both executors,
float32 and float64, training and inference."""

import numpy as np
import pytest

import fusedrnn
import reference as ref

MODES = ("lstm", "gru", "rnn_tanh", "rnn_relu")


@pytest.mark.parametrize("executor", ["loop", "unrolled"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES)
def test_nan_stays_in_its_sample(mode, dtype, executor):
    T, N, C, H = 5, 3, 4, 7
    rng = np.random.default_rng(0)
    w = (0.3 * rng.standard_normal(fusedrnn.param_size(mode, C, H, 2, True))).astype(dtype)
    x = rng.standard_normal((T, N, C)).astype(dtype)
    x[2, 1, 3] = np.nan  # sample 1, step 2
    res = fusedrnn.forward(x, w, mode=mode, hidden_size=H, num_layers=2, bidirectional=True,
                           training=True, executor=executor)
    assert np.isnan(res.y[2, 1]).any()
    assert np.isnan(res.hN[:, 1]).all()  # every layer and direction's final state of sample 1
    others = [0, 2]
    assert np.isfinite(res.y[:, others]).all() and np.isfinite(res.hN[:, others]).all()
    g = fusedrnn.backward(res.ctx, dy=np.ones_like(res.y))
    # relu's derivative is taken from its output as (y > 0), which is 0 at a NaN (torch's relu
    # backward lets the gradient through there instead): so in rnn_relu no NaN flows back into dx
    assert np.isnan(g.dx[:, 1]).any() == (mode != "rnn_relu")
    assert np.isfinite(g.dx[:, others]).all()
    assert np.isnan(g.dw).any()  # the weight gradients sum over samples, sample 1 included


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES)
def test_infinite_inputs(mode, dtype):
    T, N, C, H = 4, 2, 3, 5
    rng = np.random.default_rng(1)
    w = (0.3 * rng.standard_normal(fusedrnn.param_size(mode, C, H))).astype(dtype)
    x = rng.standard_normal((T, N, C)).astype(dtype)
    x[1, 0, :] = np.inf
    x[1, 1, :] = -np.inf
    res = fusedrnn.forward(x, w, mode=mode, hidden_size=H)
    with np.errstate(all="ignore"):
        want, _, _, _ = ref.forward(x.astype(np.float64), w.astype(np.float64), mode, H)
    # the float64 reference's IEEE results: finite where it is finite, NaN where it is NaN
    np.testing.assert_array_equal(np.isnan(res.y), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(res.y), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(res.y[finite], want[finite], rtol=1e-5, atol=1e-5)
    if mode != "rnn_relu":  # saturating cells stay finite: +-inf pre-activations hit 0/1/+-1
        x0 = x.copy()
        x0[1] = np.where(np.isinf(x0[1]), np.sign(x0[1]) * 1e30, x0[1])
        big = fusedrnn.forward(x0, w, mode=mode, hidden_size=H)
        assert np.isfinite(big.y).all()
