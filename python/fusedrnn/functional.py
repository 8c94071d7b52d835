"""The functional API: forward and backward of a whole (multi-layer, bi-directional) RNN on NumPy arrays.

Shapes: x (T, N, C), or (N, T, C) with ``batch_first``; y (T, N, D*H) or (N, T, D*H); states
(L*D, N, H), indexed ``layer * D + direction``. The flat weight vector is laid out as ``param_layout``
describes. Backward follows cuDNN's split: ``backward_data`` gives dx, dh0, dc0 from dy, dhN, dcN and
``backward_weights`` the weight gradient, so a caller that needs no weight gradient skips its cost.
``backward`` does both.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import numpy as np

from . import _C
from . import _checks as chk
from .layout import check_activation, check_mode, param_size


def _cell_options(mode, activation, recurrent_activation, reset_after) -> dict:
    """The plan keywords for the cell options, checked; defaults: tanh (relu for rnn_relu), sigmoid."""
    reset_after = chk.flag("reset_after", reset_after)
    if not reset_after and mode != "gru":
        raise ValueError(f"reset_after: only mode='gru' has a reset gate, got mode={mode!r}")
    return dict(
        activation=check_activation("activation", activation, "relu" if mode == "rnn_relu" else "tanh"),
        recurrent_activation=check_activation("recurrent_activation", recurrent_activation, "sigmoid"),
        reset_after=reset_after,
    )


class ForwardResult(NamedTuple):
    y: np.ndarray  # (T, N, D*H), or (N, T, D*H) with batch_first
    hN: np.ndarray  # (L*D, N, H) final hidden states
    cN: Optional[np.ndarray]  # (L*D, N, H) final cell states, LSTM only
    ctx: Optional["Context"]  # what backward needs; None unless training


class BackwardResult(NamedTuple):
    dx: np.ndarray  # like x
    dh0: np.ndarray  # (L*D, N, H)
    dc0: Optional[np.ndarray]  # (L*D, N, H), LSTM only
    dw: Optional[np.ndarray]  # like the weights; None when weight_grad=False


class Memory(NamedTuple):
    workspace_bytes: int  # scratch for one call; not kept between calls
    reserve_bytes: int  # kept from a training forward to its backward (0 when not training)


def memory(
    mode: str,
    input_size: int,
    hidden_size: int,
    T: int,
    N: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dtype=np.float32,
    training: bool = False,
    reset_after: bool = True,
    zero_masked_output: bool = False,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    zoneout_outputs: float = 0.0,
    zoneout_states: float = 0.0,
    residual: bool = False,
    proj_size: int = 0,
    dropout_per_gate: bool = False,
    lengths=None,
    executor: str = "auto",
) -> Memory:
    """Bytes of scratch and reserve that forward (and backward) of this shape and these options
    use, known up front (the options that change them: training, reset_after, zero_masked_output,
    dropout, recurrent_dropout, zoneout_outputs, zoneout_states, residual, proj_size, lengths: the
    buffers then hold sum(lengths) rows instead of T*N, and executor: the loop executor's
    one-layer inference workspace does not grow with T, the unrolled one's does)."""
    check_mode(mode)
    dtype = chk.float_dtype("dtype", dtype)
    plan = _plan(
        mode,
        chk.size("input_size", input_size),
        chk.size("hidden_size", hidden_size),
        chk.size("num_layers", num_layers),
        chk.flag("bidirectional", bidirectional),
        str(dtype),
        chk.size("T", T, 0),
        chk.size("N", N, 0),
        chk.flag("training", training),
        zero_masked_output=chk.flag("zero_masked_output", zero_masked_output),
        dropout=_rate("dropout", dropout),
        recurrent_dropout=_rate("recurrent_dropout", recurrent_dropout),
        **_zone_options(zoneout_outputs, zoneout_states, residual),
        **_cell_options(mode, None, None, reset_after),
        proj_size=chk.size("proj_size", proj_size, 0),
        dropout_per_gate=chk.flag("dropout_per_gate", dropout_per_gate),
        lengths=_lengths(lengths, chk.size("T", T, 0), chk.size("N", N, 0)),
        executor=_executor(executor, mode, hidden_size, T, N, num_layers, bidirectional,
                           training),
    )
    return Memory(int(plan.workspace_bytes), int(plan.reserve_bytes))


EXECUTORS = ("loop", "unrolled", "auto")


# 'auto' picks the unrolled executor for inference up to this many (t, n) rows: its inference
# workspace keeps every layer's output and the input projection of whole tasks (63 MiB for W7 at
# T*N = 3200); in training its scratch is the loop's plus a lane per stream.
AUTO_UNROLLED_MAX_ROWS = 8192


def choose_executor(mode: str, hidden_size: int, T: int, N: int, num_layers: int = 1,
                    bidirectional: bool = False, training: bool = False) -> str:
    """The executor ``executor='auto'`` picks: 'unrolled' for a network with independent streams
    to overlap (a bidirectional layer, or a stack of layers) on at least two cores, in inference
    only up to T*N = AUTO_UNROLLED_MAX_ROWS (its workspace grows with T); 'loop' otherwise (one
    stream: both do the same work, and the loop's inference scratch does not grow with T).
    Measured on 2 cores (bench/executors.py, median of 5 interleaved, see docs/architecture.md):
    W7 (2 bidirectional layers) train 338 vs 406 ms, forward 140 vs 157 ms; 4 stacked layers
    train 351 vs 440 ms, forward 102 vs 130 ms."""
    if (bidirectional or num_layers >= 2) and _C.lane_count() >= 2 and (
            training or T * N <= AUTO_UNROLLED_MAX_ROWS):
        return "unrolled"
    return "loop"


def _executor(executor, mode, hidden_size, T, N, num_layers, bidirectional, training) -> str:
    if not isinstance(executor, str) or executor not in EXECUTORS:
        exc = ValueError if isinstance(executor, str) else TypeError
        raise exc(f"executor: expected one of {EXECUTORS}, got {executor!r}")
    if executor == "auto":
        return choose_executor(mode, hidden_size, T, N, num_layers, bidirectional, training)
    return executor


def _lengths(lengths, T: int, N: int) -> Optional[np.ndarray]:
    """Per-sample lengths as an (N,) int64 array with values in [0, T], or None."""
    if lengths is None:
        return None
    arr = chk.array("lengths", lengths)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.shape != (N,):
        raise ValueError(f"lengths: expected shape ({N},) (one length per sample), got "
                         f"{tuple(arr.shape)}")
    if arr.size and (arr.min() < 0 or arr.max() > T):
        bad = arr[(arr < 0) | (arr > T)][0]
        raise ValueError(f"lengths: expected values in [0, T] = [0, {T}], got {bad}")
    return np.ascontiguousarray(arr, dtype=np.int64)


class Context:
    """What backward needs from a training forward: the plan, references to the inputs and the
    reserve. It keeps references, not copies: do not modify x, weights, h0 or c0 in place before
    backward. It can be used for any number of backward calls."""

    __slots__ = ("plan", "x", "weights", "h0", "c0", "reserve", "batch_first", "mask", "seed",
                 "lengths", "_has_grads")

    def __init__(self, plan, x, weights, h0, c0, reserve, batch_first, mask, seed, lengths=None):
        self.plan, self.x, self.weights, self.h0, self.c0 = plan, x, weights, h0, c0
        self.reserve, self.batch_first, self.mask, self.seed = reserve, batch_first, mask, seed
        self.lengths = lengths
        self._has_grads = False

    @property
    def reserve_bytes(self) -> int:
        return int(self.plan.reserve_bytes)


# Plans are immutable and cheap to keep: the last PLAN_CACHE_SIZE distinct ones are reused (least
# recently used dropped), keyed by every argument, with lengths by their profile (sorted): a plan
# depends on the multiset of lengths, not on which sample has which.
PLAN_CACHE_SIZE = 128


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def _cached_plan(args: tuple, options: tuple, profile: Optional[tuple]):
    return _C.Plan(*args, **dict(options), lengths=None if profile is None else list(profile))


def _plan(*args, lengths=None, **options):
    """The core's plan for these arguments, from the plan cache."""
    profile = None if lengths is None else tuple(np.sort(lengths).tolist())
    return _cached_plan(args, tuple(sorted(options.items())), profile)


def plan_cache_info():
    """Hits, misses, size and bound (PLAN_CACHE_SIZE) of the plan cache."""
    return _cached_plan.cache_info()


def clear_plan_cache() -> None:
    _cached_plan.cache_clear()


def _workspace(plan) -> np.ndarray:
    return np.empty((int(plan.workspace_bytes) + 7) // 8, dtype=np.float64)


def _time_major(arr: np.ndarray, batch_first: bool) -> np.ndarray:
    return arr.swapaxes(0, 1) if batch_first else arr


def _state(name: str, value, dtype, shape, width="hidden_size") -> Optional[np.ndarray]:
    if value is None:
        return None
    arr = chk.float_array(name, value, dtype)
    chk.shape(name, arr, shape, f"(num_layers * directions, N, {width})")
    return chk.dense(arr)


def forward(
    x,
    weights,
    *,
    mode: str,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    h0=None,
    c0=None,
    batch_first: bool = False,
    training: bool = False,
    activation: Optional[str] = None,
    recurrent_activation: Optional[str] = None,
    reset_after: bool = True,
    mask=None,
    zero_masked_output: bool = False,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    zoneout_outputs: float = 0.0,
    zoneout_states: float = 0.0,
    residual: bool = False,
    proj_size: int = 0,
    dropout_per_gate: bool = False,
    seed: Optional[int] = None,
    lengths=None,
    executor: str = "auto",
    lstm_state_clip_min: Optional[float] = None,
    lstm_state_clip_max: Optional[float] = None,
    lstm_state_clip_nan: bool = False,
) -> ForwardResult:
    """Runs the network over a sequence.

    x: (T, N, C) float32 or float64 ((N, T, C) when ``batch_first``); weights: the flat vector of
    ``param_size(mode, C, hidden_size, num_layers, bidirectional)`` elements, x's dtype; h0, c0:
    optional (L*D, N, H) initial states (c0 for LSTM only), zeros when absent. With ``training`` the
    result carries a context for ``backward``.

    Cell options: ``activation`` (LSTM g and c, GRU n, RNN h; default tanh, relu for rnn_relu) and
    ``recurrent_activation`` (LSTM i, f, o; GRU r, z; default sigmoid), each one of 'tanh',
    'sigmoid', 'hard_sigmoid' (Keras 3: clip(x/6 + 1/2, 0, 1)), 'relu', 'linear', 'softrelu'
    (MXNet: log(1 + e^x)), 'softsign' (x / (1 + |x|)); ``reset_after``
    (GRU: False applies the reset gate before the recurrent product, as Keras reset_after=False and
    ONNX do).

    mask: optional (T, N) ((N, T) with ``batch_first``, as Keras masks are) of bools or 0/1: a
    False entry masks that step of that sample, which then keeps its previous state (any pattern:
    left-padded, right-padded, gaps). The output at a masked step is the kept state (Keras'
    default) or, with ``zero_masked_output``, zero (Keras ``zero_output_for_mask=True``).

    dropout, recurrent_dropout: rates in [0, 1) of variational dropout, applied when ``training``
    only (Keras semantics): one mask per sequence on each layer's input (N, C_in) and one on the
    state before the recurrent product (N, H), per layer and direction, scaled by 1/(1 - rate). The
    masks are a pure function of ``seed`` and position (same seed, same masks, whatever the thread
    count); ``seed=None`` draws one. ``dropout_per_gate``: one input mask and one recurrent mask per
    gate instead of one for all gates (what Keras 3's LSTM and GRU do when recurrent_dropout > 0:
    implementation=1), each gate's weight block seeing its own masked input and state.

    zoneout_outputs, zoneout_states: probabilities in [0, 1] of zoneout (MXNet ZoneoutCell), in
    ``training`` only: per step and element, the state (h, and c independently) keeps its previous
    value with probability ``zoneout_states``, and the output keeps the previous step's output (zero
    before the first) with probability ``zoneout_outputs``; otherwise the output is the cell's new h
    (before state zoneout). Masks come from ``seed`` like dropout's. residual: each layer's output
    is its output plus its input (MXNet ResidualCell; needs input features == directions *
    hidden_size). Both run inside the fused step; neither combines with ``mask``.

    proj_size: LSTM projection (PyTorch's ``proj_size``, LSTMP): 0 for none, else P in
    [1, hidden_size); h = W_hr (o * act(c)) is P wide, so y is (T, N, D*P), h0 and hN are
    (L*D, N, P), c0 and cN stay (L*D, N, H); the weights gain an h2r block (P, H) per layer and
    direction (``param_layout(..., proj_size=P)``). Not combined with zoneout, residual or
    recurrent_dropout.

    lengths: optional (N,) integers in [0, T], each sample's valid length (x padded after it).
    Samples are processed sorted by length and the batch shrinks as they end, so the work is
    proportional to sum(lengths), not T*N. y is zero past each length; hN and cN are each sample's
    states at its own last step (h0 and c0 for length 0); the reverse direction of a bidirectional
    layer reverses each sample within its own length; backward gives zero dx at padded positions
    and ignores dy there. The same results as ``mask`` right-padded with ``zero_masked_output``,
    and as running each sample alone. Not combined with mask, zoneout or residual.

    executor: 'loop' (the while-loop executor: streams of (layer, direction) one after another, a
    run-time loop over steps; one-layer inference scratch independent of T), 'unrolled' (the whole
    schedule fixed in the plan; the two directions of a bidirectional layer, and the layers of a
    stack as a wavefront, run concurrently on the machine's cores; scratch grows with T) or 'auto'
    (``choose_executor``). Both give the same results: bitwise in float64 (and float32 with one
    stream), to about one float32 ulp where lanes run their GEMMs single-threaded.

    lstm_state_clip_min, lstm_state_clip_max, lstm_state_clip_nan: LSTM state clipping, as MXNet's
    RNN operator (and cuDNN's RNN clip): given both bounds, every step's new cell state is clipped
    to [min, max] before h = o * act(c) is computed from it and before it carries on; the gradient
    passes only where the unclipped state lay inside. NaN propagates unless
    ``lstm_state_clip_nan``, which turns a NaN cell state into ``lstm_state_clip_min`` (as
    fmin(fmax(c, min), max) would). CPU only for now.
    """
    check_mode(mode)
    options = _cell_options(mode, activation, recurrent_activation, reset_after)
    options.update(_clip_options(lstm_state_clip_min, lstm_state_clip_max, lstm_state_clip_nan))
    H = chk.size("hidden_size", hidden_size)
    L = chk.size("num_layers", num_layers)
    bidirectional = chk.flag("bidirectional", bidirectional)
    batch_first = chk.flag("batch_first", batch_first)
    training = chk.flag("training", training)
    x = chk.float_array("x", x)
    if x.ndim != 3:
        layout = "(N, T, C)" if batch_first else "(T, N, C)"
        raise ValueError(f"x: expected a 3-D array {layout}, got shape {tuple(x.shape)}")
    dtype = x.dtype
    xt = chk.grid_view(_time_major(x, batch_first))
    T, N, C = xt.shape
    if C < 1:
        raise ValueError(f"x: expected at least one input feature (C >= 1), got shape {tuple(x.shape)}")
    D = 2 if bidirectional else 1
    P = chk.size("proj_size", proj_size, 0)
    if P and mode != "lstm":
        raise ValueError(f"proj_size: only mode='lstm' has a projection, got mode={mode!r}")
    if P >= H:
        raise ValueError(f"proj_size: expected 0 (none) or an integer in [1, hidden_size) = "
                         f"[1, {H}), got {P}")
    S = P or H  # the width of h
    weights = chk.float_array("weights", weights, dtype)
    n = param_size(mode, C, H, L, bidirectional, P)
    chk.shape(
        "weights",
        weights,
        (n,),
        f"for mode={mode!r}, input_size={C}, hidden_size={H}, num_layers={L}, "
        f"bidirectional={bidirectional}" + (f", proj_size={P}" if P else ""),
    )
    weights = chk.dense(weights)
    state_shape = (L * D, N, S)
    cell_shape = (L * D, N, H)
    h0 = _state("h0", h0, dtype, state_shape, "proj_size" if P else "hidden_size")
    if c0 is not None and mode != "lstm":
        raise ValueError(f"c0: only mode='lstm' has a cell state, got mode={mode!r}")
    c0 = _state("c0", c0, dtype, cell_shape)

    zero_masked_output = chk.flag("zero_masked_output", zero_masked_output)
    rates = {name: _rate(name, value) for name, value in
             (("dropout", dropout), ("recurrent_dropout", recurrent_dropout))}
    zone = _zone_options(zoneout_outputs, zoneout_states, residual)
    zoning = zone["zoneout_outputs"] > 0 or zone["zoneout_states"] > 0
    if P and (zone["residual"] or zoning or rates["recurrent_dropout"] > 0):
        raise ValueError("proj_size: not supported together with zoneout, residual or "
                         "recurrent_dropout")
    if zone["residual"] and C != D * H:
        raise ValueError(f"residual: the input is added to the output, so x needs directions * "
                         f"hidden_size = {D * H} features, got {C}")
    if (zone["residual"] or zoning) and mask is not None:
        raise ValueError("mask: not supported together with zoneout or residual")
    lengths = _lengths(lengths, T, N)
    if lengths is not None and mask is not None:
        raise ValueError("lengths: not supported together with mask (pass one of them)")
    if lengths is not None and (zone["residual"] or zoning):
        raise ValueError("lengths: not supported together with zoneout or residual")
    executor = _executor(executor, mode, H, T, N, L, bidirectional, training)
    if seed is not None:
        seed = chk.size("seed", seed, 0)
    elif training and (rates["dropout"] > 0 or rates["recurrent_dropout"] > 0 or zoning):
        seed = int(np.random.default_rng().integers(0, 2**63))
    else:
        seed = 0  # no masks are drawn
    mask_t = None
    if mask is not None:
        m = chk.array("mask", mask)
        if m.dtype != np.bool_ and not np.issubdtype(m.dtype, np.integer):
            raise TypeError(f"mask: expected dtype bool (or 0/1 integers), got {m.dtype}")
        want = (N, T) if batch_first else (T, N)
        chk.shape("mask", m, want, "(N, T)" if batch_first else "(T, N)")
        if m.dtype != np.bool_:
            if m.size and not np.all((m == 0) | (m == 1)):
                raise ValueError("mask: expected only 0 and 1 values")
            m = m.astype(np.bool_)
        mask_t = _time_major(m, batch_first).view(np.uint8)
    plan = _plan(mode, C, H, L, bidirectional, str(dtype), T, N, training,
                   zero_masked_output=zero_masked_output, proj_size=P,
                   dropout_per_gate=chk.flag("dropout_per_gate", dropout_per_gate), **rates,
                   **zone, **options, lengths=lengths, executor=executor)
    y = np.empty((N, T, D * S) if batch_first else (T, N, D * S), dtype=dtype)
    hN = np.empty(state_shape, dtype=dtype)
    cN = np.empty(cell_shape, dtype=dtype) if mode == "lstm" else None
    reserve = np.empty((int(plan.reserve_bytes) + 7) // 8, dtype=np.float64) if training else None
    _C.forward(plan, xt, weights, h0, c0, _time_major(y, batch_first), hN, cN, _workspace(plan), reserve,
               mask_t, seed, lengths=lengths)
    ctx = (Context(plan, xt, weights, h0, c0, reserve, batch_first, mask_t, seed, lengths)
           if training else None)
    return ForwardResult(y, hN, cN, ctx)


def _clip_options(clip_min, clip_max, clip_nan) -> dict:
    """LSTM state clipping as the plan's options; the core checks the rest (both bounds or none,
    min <= max, mode 'lstm')."""
    out = {}
    for name, value in (("lstm_state_clip_min", clip_min), ("lstm_state_clip_max", clip_max)):
        if value is not None:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"{name}: expected a float or None, got {type(value).__name__}")
            value = float(value)
            if not np.isfinite(value):
                raise ValueError(f"{name}: expected a finite float, got {value}")
        out[name] = value
    out["lstm_state_clip_nan"] = chk.flag("lstm_state_clip_nan", clip_nan)
    return out


def _rate(name: str, value, closed: bool = False) -> float:
    """A dropout rate in [0, 1), or with ``closed`` a probability in [0, 1] (zoneout)."""
    interval = "[0, 1]" if closed else "[0, 1)"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a float in {interval}, got {value!r}")
    value = float(value)
    if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        what = "a probability" if closed else "a rate"
        raise ValueError(f"{name}: expected {what} in {interval}, got {value}")
    return value


def _zone_options(zoneout_outputs, zoneout_states, residual) -> dict:
    return dict(zoneout_outputs=_rate("zoneout_outputs", zoneout_outputs, closed=True),
                zoneout_states=_rate("zoneout_states", zoneout_states, closed=True),
                residual=chk.flag("residual", residual))


def _check_ctx(ctx) -> Context:
    if not isinstance(ctx, Context):
        raise TypeError(
            f"ctx: expected the ctx of forward(..., training=True), got {type(ctx).__name__}"
        )
    return ctx


def backward_data(ctx: Context, dy=None, dhN=None, dcN=None):
    """Gradients of the inputs: returns (dx, dh0, dc0) from the gradients of y, hN and cN (None
    means zero). dx is shaped like x, dh0 and dc0 like the states (dc0 is None unless LSTM)."""
    ctx = _check_ctx(ctx)
    plan = ctx.plan
    dtype = np.dtype(plan.dtype)
    T, N, C = ctx.x.shape
    H, D = int(plan.proj_size) or int(plan.hidden_size), 2 if plan.bidirectional else 1
    state_shape = (int(plan.num_layers) * D, N, H)
    cell_shape = (int(plan.num_layers) * D, N, int(plan.hidden_size))
    lstm = plan.mode == "lstm"
    dyt = None
    if dy is not None:
        dy = chk.float_array("dy", dy, dtype)
        y_shape = (N, T, D * H) if ctx.batch_first else (T, N, D * H)
        chk.shape("dy", dy, y_shape, "(the shape of y)")
        dyt = chk.grid_view(_time_major(dy, ctx.batch_first))
    dhN = _state("dhN", dhN, dtype, state_shape, "proj_size" if plan.proj_size else "hidden_size")
    if dcN is not None and not lstm:
        raise ValueError(f"dcN: only mode='lstm' has a cell state, got mode={plan.mode!r}")
    dcN = _state("dcN", dcN, dtype, cell_shape)

    dx = np.empty((N, T, C) if ctx.batch_first else (T, N, C), dtype=dtype)
    dh0 = np.empty(state_shape, dtype=dtype)
    dc0 = np.empty(cell_shape, dtype=dtype) if lstm else None
    _C.backward_data(
        plan, dyt, dhN, dcN, ctx.weights, ctx.h0, ctx.c0, _time_major(dx, ctx.batch_first), dh0,
        dc0, _workspace(plan), ctx.reserve, ctx.mask, ctx.seed, lengths=ctx.lengths,
    )
    ctx._has_grads = True
    return dx, dh0, dc0


def backward_weights(ctx: Context, dw=None) -> np.ndarray:
    """Gradient of the flat weights, after ``backward_data`` on the same ctx. With ``dw`` given
    (a flat array of the weights' dtype and size) the gradient is added into it and it is returned."""
    ctx = _check_ctx(ctx)
    if not ctx._has_grads:
        raise RuntimeError("backward_weights: call backward_data(ctx, ...) first")
    if dw is None:
        dw = np.zeros_like(ctx.weights)
    else:
        dw = chk.float_array("dw", dw, ctx.weights.dtype)
        chk.shape("dw", dw, ctx.weights.shape, "(the shape of the weights)")
        if not (dw.flags.c_contiguous and dw.flags.aligned and dw.flags.writeable):
            raise ValueError("dw: expected a writable, aligned, C-contiguous array to accumulate into")
        for name, other in (("x", ctx.x), ("weights", ctx.weights), ("h0", ctx.h0),
                            ("c0", ctx.c0), ("the reserve", ctx.reserve)):
            if other is not None and _overlap(dw, other):
                raise ValueError(f"dw: expected an array of its own to accumulate into, got one "
                                 f"that shares memory with {name} of the forward call (the "
                                 f"gradient would overwrite it)")
    _C.backward_weights(ctx.plan, ctx.x, ctx.h0, dw, _workspace(ctx.plan), ctx.reserve, ctx.seed,
                        lengths=ctx.lengths)
    return dw


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a and b share memory (exactly; when that is too hard to decide, their bounds)."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=10**6))
    except getattr(np, "exceptions", np).TooHardError:  # np.TooHardError before NumPy 1.25
        return True


def backward(ctx: Context, dy=None, dhN=None, dcN=None, weight_grad: bool = True) -> BackwardResult:
    """backward_data and (unless ``weight_grad=False``) backward_weights in one call."""
    weight_grad = chk.flag("weight_grad", weight_grad)
    dx, dh0, dc0 = backward_data(ctx, dy, dhN, dcN)
    dw = backward_weights(ctx) if weight_grad else None
    return BackwardResult(dx, dh0, dc0, dw)
