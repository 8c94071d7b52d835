"""Calls from many Python threads at once: the bindings release the GIL around the kernels
(csrc/bindings/module.cpp, py::gil_scoped_release in forward / backward_data / backward_weights), so
calls really run concurrently, on shared weights and shared (immutable) plans, each with its own
workspace and reserve. Concurrent results must be bitwise those of the same calls made one after
another: for both executors (the unrolled one's lanes are one process-wide pool, one run at a time,
which also sets the GEMM thread count to one while it runs; neither changes a result), with lengths,
masks and dropout; through the plan cache while other threads add and evict plans; through the
Keras-style layers, the MXNet-style cells and fusedrnn.torch. And the GIL really is released: a
Python thread makes progress while another thread is inside a long fusedrnn call.

Small shapes only (the whole file runs in a few seconds; tools/sanitize.sh runs it under ASan)."""

import threading
import time

import numpy as np
import pytest
import torch

import fusedrnn
import fusedrnn.torch as ftorch
from fusedrnn import _C
from fusedrnn import functional
from fusedrnn import rnn_cell as rnn

THREADS = 8


def _in_threads(fn, n=THREADS, timeout=120.0):
    """Runs fn(i) on n threads released together by a barrier; returns [fn(0), ..., fn(n-1)] and
    re-raises the first exception a thread raised."""
    barrier = threading.Barrier(n)
    results = [None] * n
    errors = []

    def body(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 (re-raised below, on the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads still running: a deadlock?"
    if errors:
        raise errors[0]
    return results


def _same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


# (mode, T, N, C, H, layers, bidirectional, dtype, extra forward options); with "lengths" a
# length per sample is drawn, with "mask" a (T, N) mask.
CASES = [
    ("lstm", 6, 5, 4, 8, 2, True, np.float32, {"lengths": True}),
    ("gru", 7, 4, 3, 6, 1, False, np.float32, {"reset_after": False, "lengths": True}),
    ("rnn_tanh", 5, 3, 5, 7, 3, False, np.float64, {}),
    ("lstm", 4, 3, 6, 5, 1, True, np.float32, {"dropout": 0.25, "recurrent_dropout": 0.3,
                                                "seed": 11}),
    ("gru", 6, 4, 4, 5, 2, False, np.float64, {"mask": True}),
    # large enough that the loop executor splits its GEMMs over the OpenMP threads
    ("lstm", 3, 64, 64, 64, 1, False, np.float32, {}),
]


class _Problem:
    def __init__(self, k, case, executor):
        mode, T, N, C, H, L, bi, dtype, extra = case
        rng = np.random.default_rng(100 + k)
        D = 2 if bi else 1
        self.kw = dict(mode=mode, hidden_size=H, num_layers=L, bidirectional=bi, training=True,
                       executor=executor)
        for name, value in extra.items():
            if name == "lengths":
                lengths = rng.integers(0, T + 1, N)
                lengths[0] = T
                self.kw["lengths"] = lengths
            elif name == "mask":
                self.kw["mask"] = rng.random((T, N)) < 0.7
            else:
                self.kw[name] = value
        self.w = rng.uniform(-0.4, 0.4, fusedrnn.param_size(mode, C, H, L, bi)).astype(dtype)
        self.x = rng.standard_normal((T, N, C)).astype(dtype)
        self.h0 = rng.standard_normal((L * D, N, H)).astype(dtype)
        self.c0 = rng.standard_normal((L * D, N, H)).astype(dtype) if mode == "lstm" else None
        self.dy = rng.standard_normal((T, N, D * H)).astype(dtype)
        self.dhN = rng.standard_normal((L * D, N, H)).astype(dtype)

    def run(self):
        res = fusedrnn.forward(self.x, self.w, h0=self.h0, c0=self.c0, **self.kw)
        inf = fusedrnn.forward(self.x, self.w, h0=self.h0, c0=self.c0,
                               **dict(self.kw, training=False))
        g = fusedrnn.backward(res.ctx, dy=self.dy, dhN=self.dhN)
        return [res.y, res.hN, res.cN, inf.y, inf.hN, g.dx, g.dh0, g.dc0, g.dw]


@pytest.mark.parametrize("executor", ["loop", "unrolled"])
def test_threads_on_shared_weights_match_sequential(executor):
    problems = [_Problem(k, case, executor) for k, case in enumerate(CASES)]
    want = [p.run() for p in problems]

    def work(i):
        order = np.random.default_rng(i).permutation(len(problems))
        got = {}
        for _ in range(2):
            for k in order:
                out = problems[k].run()
                if k in got:  # the same thread, the same call: the same bits
                    _same(out, got[k])
                got[k] = out
        return got

    for got in _in_threads(work):
        for k in range(len(problems)):
            _same(got[k], want[k])


def test_both_executors_at_once():
    """Loop calls (OpenMP-split GEMMs) while unrolled calls hold the lane pool and set the GEMM
    thread count to one: neither disturbs the other's results."""
    case = ("lstm", 5, 32, 48, 64, 2, True, np.float32, {"lengths": True})
    probs = {ex: _Problem(0, case, ex) for ex in ("loop", "unrolled")}
    want = {ex: p.run() for ex, p in probs.items()}
    threads_before = _C.get_num_threads()

    def work(i):
        ex = "loop" if i % 2 else "unrolled"
        return ex, [probs[ex].run() for _ in range(3)]

    for ex, outs in _in_threads(work):
        for out in outs:
            _same(out, want[ex])
    assert _C.get_num_threads() == threads_before  # the lanes restored it


def test_plan_cache_under_concurrent_shapes():
    """Every thread its own shapes (and length profiles), more distinct plans than the cache holds,
    so threads add and evict plans while others use them."""
    functional.clear_plan_cache()
    per_thread = functional.PLAN_CACHE_SIZE // THREADS + 4

    def shapes(i):
        for j in range(per_thread):
            T, N = 2 + j % 5, 1 + (i * per_thread + j) % 11
            mode = ("lstm", "gru", "rnn_relu")[j % 3]
            yield mode, T, N, j % 2 == 0

    def one(i, j, mode, T, N, varlen):
        rng = np.random.default_rng(1000 * i + j)
        C, H = 3, 4
        w = rng.uniform(-0.5, 0.5, fusedrnn.param_size(mode, C, H, 1, False)).astype(np.float32)
        x = rng.standard_normal((T, N, C)).astype(np.float32)
        lengths = rng.integers(0, T + 1, N) if varlen else None
        res = fusedrnn.forward(x, w, mode=mode, hidden_size=H, training=True, lengths=lengths,
                               executor="unrolled" if j % 4 == 1 else "loop")
        g = fusedrnn.backward(res.ctx, dy=np.ones_like(res.y))
        return [res.y, res.hN, g.dx, g.dw]

    want = [[one(i, j, *s) for j, s in enumerate(shapes(i))] for i in range(THREADS)]
    functional.clear_plan_cache()
    got = _in_threads(lambda i: [one(i, j, *s) for j, s in enumerate(shapes(i))])
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            _same(a, b)
    info = functional.plan_cache_info()
    assert info.currsize <= functional.PLAN_CACHE_SIZE
    assert info.hits + info.misses >= THREADS * per_thread


def test_keras_layers_and_mxnet_cells_from_threads():
    rng = np.random.default_rng(5)
    N, T, C, U = 3, 6, 4, 5
    x = rng.standard_normal((N, T, C)).astype(np.float32)
    dy = rng.standard_normal((N, T, U)).astype(np.float32)
    flat = {cls: rng.uniform(-0.4, 0.4, fusedrnn.param_size(mode, C, U, 1, False)).astype(np.float32)
            for cls, mode in ((fusedrnn.LSTM, "lstm"), (fusedrnn.GRU, "gru"))}

    def keras(cls):
        layer = cls(U, return_sequences=True, seed=0)
        layer.build((None, None, C))
        layer.flat_weights = flat[cls]
        y = layer(x, training=True)
        dx = layer.backward(dy)
        return [y, dx, layer.flat_grad.copy()]

    template = rnn.LSTMCell(U, prefix="l_")
    template.unroll(T, x)  # creates the parameters
    for name, arr in template.params.arrays().items():
        template.params[name] = rng.uniform(-0.4, 0.4, arr.shape).astype(arr.dtype)
    weights = template.params.arrays()

    def mxnet():
        cell = rnn.LSTMCell(U, prefix="l_")
        cell.unroll(T, x)
        cell.params.load(weights)
        out, states = cell.unroll(T, x, layout="NTC", merge_outputs=True, training=True)
        d_in, _ = cell.backward(dy)
        grads = cell.params.grads
        return [out, *states, d_in] + [grads[k] for k in sorted(grads)]

    def work(i):
        return [keras(fusedrnn.LSTM), keras(fusedrnn.GRU), mxnet()]

    want = work(0)
    for got in _in_threads(work):
        for a, b in zip(got, want):
            _same(a, b)


def test_torch_lstm_from_threads():
    """One fusedrnn.torch.LSTM shared by the threads, each on its own inputs; torch.autograd.grad,
    so the threads do not accumulate into the shared parameters' .grad."""
    torch.manual_seed(0)
    lstm = ftorch.LSTM(5, 7, num_layers=2, bidirectional=True)
    params = list(lstm.parameters())
    rng = np.random.default_rng(9)
    inputs = [torch.from_numpy(rng.standard_normal((4 + i % 3, 3, 5)).astype(np.float32))
              for i in range(THREADS)]

    def run(i):
        x = inputs[i].clone().requires_grad_(True)
        y, (h, c) = lstm(x)
        loss = (y * y).sum() + h.sum() + 2 * c.sum()
        grads = torch.autograd.grad(loss, [x] + params)
        return [t.detach().numpy().copy() for t in (y, h, c, *grads)]

    want = [run(i) for i in range(THREADS)]
    for i, got in enumerate(_in_threads(lambda i: [run(i) for _ in range(2)])):
        for out in got:
            _same(out, want[i])


@pytest.fixture
def one_gemm_thread():
    # the long call's GEMMs on one thread, so a core is left for the Python thread
    before = _C.get_num_threads()
    _C.set_num_threads(1)
    yield
    _C.set_num_threads(0 if before == fusedrnn.build_info()["openmp_max_threads"] else before)


def _long_call():
    """One inference call of roughly 0.05-0.5 s, almost all of it inside _C.forward."""
    rng = np.random.default_rng(0)
    T, N, C, H = 150, 32, 256, 256
    w = rng.uniform(-0.05, 0.05, fusedrnn.param_size("lstm", C, H, 1, False)).astype(np.float32)
    x = rng.standard_normal((T, N, C)).astype(np.float32)
    return lambda: fusedrnn.forward(x, w, mode="lstm", hidden_size=H, executor="loop")


def test_gil_released_during_calls(one_gemm_thread):
    """A Python thread counting while another thread is inside a fusedrnn call keeps counting:
    progress is recorded in the middle half of the call, which a call holding the GIL (5 ms switch
    interval aside) would not allow."""
    call = _long_call()
    call()  # plan and warm-up
    stamps = []
    stop = threading.Event()
    started = threading.Event()

    def counter():
        n = 0
        started.set()
        while not stop.is_set():
            n += 1
            if n % 64 == 0:
                stamps.append(time.perf_counter())

    t = threading.Thread(target=counter, daemon=True)
    t.start()
    started.wait()
    try:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
    finally:
        stop.set()
        t.join()
    lo, hi = t0 + 0.25 * (t1 - t0), t0 + 0.75 * (t1 - t0)
    inside = sum(lo <= s <= hi for s in stamps)
    # A Python loop runs millions of iterations a second: 10 stamps (640 iterations) in the middle
    # half of a >= 50 ms call is a very generous margin, even on a loaded machine.
    assert t1 - t0 > 0.02, f"the call took {t1 - t0:.4f} s: too short to tell"
    assert inside >= 10, (f"{inside} progress stamps in the middle half of a {t1 - t0:.3f} s "
                          f"call ({len(stamps)} in all): is the GIL held?")

