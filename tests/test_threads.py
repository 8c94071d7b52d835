"""fusedrnn's threads: the GEMMs are split over OpenMP threads (OpenBLAS runs single-threaded), the
count follows OpenMP unless pinned, and the split never changes a result: every GEMM cuts C into
blocks and each element is summed over K in the same order whatever the block, so outputs and
gradients are bitwise identical on 1 and 2 threads (both split directions: per-step products split
by columns, the input projection and the gradients by rows or columns)."""

import numpy as np
import pytest

import fusedrnn
import reference as ref
from fusedrnn import _C


@pytest.fixture
def restore_threads():
    yield
    _C.set_num_threads(0)


def test_count_follows_openmp_unless_pinned(restore_threads):
    default = fusedrnn.build_info()["openmp_max_threads"]
    _C.set_num_threads(0)
    assert _C.get_num_threads() == default
    _C.set_num_threads(1)
    assert _C.get_num_threads() == 1
    _C.set_num_threads(3)
    assert _C.get_num_threads() == 3
    _C.set_num_threads(0)
    assert _C.get_num_threads() == default
    with pytest.raises(ValueError, match=r"n: expected a thread count >= 0 \(0: follow OpenMP\), "
                                         r"got -1"):
        _C.set_num_threads(-1)
    assert _C.get_num_threads() == default


def _train(mode, T, N, C, H, L, bi, dtype, executor, lengths=None):
    rng = np.random.default_rng(7)
    D = 2 if bi else 1
    flat = rng.uniform(-0.3, 0.3, ref.param_size(mode, C, H, L, bi)).astype(dtype)
    x = rng.standard_normal((T, N, C)).astype(dtype)
    dy = rng.standard_normal((T, N, D * H)).astype(dtype)
    res = fusedrnn.forward(x, flat, mode=mode, hidden_size=H, num_layers=L, bidirectional=bi,
                           training=True, lengths=lengths, executor=executor)
    g = fusedrnn.backward(res.ctx, dy=dy)
    return res.y, res.hN, g.dx, g.dh0, g.dw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode,T,N,C,H,L,bi,executor,varlen", [
    ("lstm", 7, 97, 33, 257, 1, False, "loop", False),   # per-step 97 x 1028 x 257: split by columns
    ("gru", 5, 257, 97, 7, 1, False, "loop", False),     # T*N = 1285 rows: input products split by rows
    ("lstm", 9, 33, 97, 97, 2, True, "unrolled", False),  # the lanes: single-threaded GEMMs inside
    ("rnn_tanh", 11, 97, 3, 257, 1, True, "loop", True),  # lengths: shrinking per-step batches
    ("lstm", 100, 1, 257, 257, 1, False, "loop", False),  # batch 1: the GEMV, split by columns
])
def test_bitwise_identical_on_1_and_2_threads(restore_threads, dtype, mode, T, N, C, H, L, bi,
                                              executor, varlen):
    lengths = None
    if varlen:
        lengths = np.random.default_rng(3).integers(0, T + 1, N)
    out = {}
    for n in (1, 2):
        _C.set_num_threads(n)
        out[n] = _train(mode, T, N, C, H, L, bi, dtype, executor, lengths)
    for a, b in zip(out[1], out[2]):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)
    # and right: the float64 result against the reference
    if dtype == np.float64 and not varlen:
        rng = np.random.default_rng(7)
        D = 2 if bi else 1
        flat = rng.uniform(-0.3, 0.3, ref.param_size(mode, C, H, L, bi))
        x = rng.standard_normal((T, N, C))
        dy = rng.standard_normal((T, N, D * H))
        y, hN, _, cache = ref.forward(x, flat, mode, H, L, bi)
        dx, _, _, dw = ref.backward(cache, dy=dy)
        np.testing.assert_allclose(out[2][0], y, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(out[2][2], dx, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(out[2][4], dw, rtol=1e-9, atol=1e-9)
