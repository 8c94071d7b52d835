"""MXNet's ``mxnet.rnn`` cell API (1.9.1), eager, on NumPy arrays and the fused kernels.

MXNet's cells build symbols; these compute: calling a cell runs one step, ``unroll`` runs a
sequence, and both return NumPy arrays. Names, shapes, gate orders, state layouts, the return
structures of ``unroll`` and ``pack_weights`` / ``unpack_weights`` are MXNet's::

    import numpy as np
    from fusedrnn import rnn_cell as rnn

    cell = rnn.SequentialRNNCell()
    cell.add(rnn.LSTMCell(64, prefix="l0_"))
    cell.add(rnn.LSTMCell(64, prefix="l1_"))
    x = np.random.default_rng(0).standard_normal((8, 20, 32), dtype=np.float32)  # NTC
    outputs, states = cell.unroll(20, x, layout="NTC", merge_outputs=True, training=True)
    d_x, d_begin = cell.backward(np.ones_like(outputs))  # parameter gradients: cell.params.grads

How things run
--------------
* ``RNNCell`` / ``LSTMCell`` / ``GRUCell``: ``unroll`` is ONE fused call over the whole sequence
  (``fusedrnn.forward``, T = length); a step (``cell(x, states)``) is a fused call with T = 1.
* ``FusedRNNCell``: one fused call for all layers and directions (CPU; MXNet's is cuDNN-only);
  one per layer when training with dropout > 0 (MXNet's dropout between layers).
* ``SequentialRNNCell``: one ``unroll`` per child (so one fused call per built-in child);
  ``BidirectionalCell``: one ``unroll`` per direction, on arrays (the reverse direction reads a
  reversed view); ``DropoutCell``: one vectorised op over the sequence.
* ``ZoneoutCell`` and ``ResidualCell`` around a built-in cell (also nested: Residual(Zoneout(cell)))
  unroll as ONE fused call of that cell, zoneout and the residual sum applied in the kernel's step
  (zoneout masks drawn from (a seed from the ZoneoutCell's ``rng``, position)). Around anything
  else -- and ZoneoutCell(ResidualCell(cell)) with output zoneout, which zones the sum -- a
  ResidualCell unrolls its base cell and adds, a ZoneoutCell steps in a Python loop.
* User-written cells that implement only ``__call__`` unroll through a Python loop of steps
  (``BaseRNNCell.unroll``), as MXNet does.

Differences from MXNet (eager NumPy instead of symbols)
-------------------------------------------------------
* Parameters are arrays, created when the cell first sees its input (the input size fixes the
  ``i2h`` shapes) with the dtype of that input (float32 or float64), by the parameter's
  initializer: MXNet's defaults (``LSTMBias`` for ``LSTMCell``'s i2h bias, ``FusedRNN`` for
  ``FusedRNNCell``) and, for the rest, the container's global initializer (``Uniform(0.07)``
  unless ``RNNParams(initializer=...)``; biases zero). Set them with ``cell.params[name] = array``
  (MXNet's arg names) or ``cell.params.load(args)``, e.g. with ``cell.pack_weights(args)``.
* ``begin_state(func=np.zeros, batch_size=None, **kwargs)``: the batch size, which MXNet infers,
  is given as ``batch_size=N``; ``func`` is called as ``func(shape=shape, **kwargs)`` (plus
  ``name=`` when it takes one); np.zeros / ones / empty / full default to float32. ``unroll``
  without ``begin_state`` makes zeros of the input's batch size and dtype.
* ``merge_outputs=None`` means "the form of the inputs": an array in gives one array out, a list of
  per-step arrays gives a list. (MXNet's unfused cells return a list for None whatever the input,
  and its FusedRNNCell a merged output: "whatever is faster".)
* Training: ``unroll(..., training=True)`` and ``cell(x, states, training=True)`` keep what
  backward needs; ``cell.backward(d_outputs, d_states=None)`` consumes the latest such call (a
  stack per cell: after T training steps, T backward calls in reverse order), returns
  ``(d_inputs, d_begin_states)`` -- d_inputs in the structure of the inputs (array or list),
  d_begin_states a flat list like ``begin_state()`` -- and adds the parameter gradients into
  ``cell.params.grads`` (MXNet names; ``cell.params.zero_grad()`` clears them). ``None`` gradients
  are zeros. Dropout and zoneout are active only with ``training=True``.
* ``BidirectionalCell``/``SequentialRNNCell`` return the states in MXNet's structure (a
  BidirectionalCell's are ``[l_states, r_states]``); states and state gradients passed in may be
  nested or flat.
* Errors are exceptions with messages, where MXNet asserts (its messages are kept).
* A cell keeps its parameter arrays as views into one flat vector after its first run (so that a
  step needs no copy): modify them in place or through ``params[name] = ...``; an array obtained
  before the first run is not updated afterwards.

Not supported: callable activations, ConvRNN cells. ``FusedRNNCell(dropout > 0)`` trains with
one fused call per layer (MXNet's dropout between layers is not the kernels' dropout; see
``FusedRNNCell``).
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Mapping

import numpy as np

from . import _checks as chk
from . import converters as _conv
from . import functional as F
from .layout import ACTIVATIONS, check_mode, param_layout, param_size

__all__ = [
    "BaseRNNCell",
    "BidirectionalCell",
    "Constant",
    "DropoutCell",
    "FusedRNN",
    "FusedRNNCell",
    "GRUCell",
    "Initializer",
    "LSTMBias",
    "LSTMCell",
    "ModifierCell",
    "Parameter",
    "RNNCell",
    "RNNParams",
    "ResidualCell",
    "SequentialRNNCell",
    "Uniform",
    "Zero",
    "ZoneoutCell",
]

_LAYOUTS = ("NTC", "TNC")


# --------------------------------------------------------------------------------------------------
# Initializers (MXNet's, for what the cells need)
# --------------------------------------------------------------------------------------------------


class Initializer:
    """Fills a parameter array in place. Used as a container's global initializer it dispatches by
    name as MXNet's do ('...bias' -> zeros, anything else -> ``_init_weight``); given to
    ``RNNParams.get(name, init=...)`` for one parameter, ``_init_weight`` fills it whatever its
    name (MXNet's ``Variable(init=...)``)."""

    def __call__(self, name: str, arr: np.ndarray, rng) -> None:
        if name.endswith("bias"):
            arr[...] = 0
        else:
            self._init_weight(name, arr, rng)

    def fill(self, name: str, arr: np.ndarray, rng, global_init: "Initializer") -> None:
        """As the initializer of this one parameter."""
        self._init_weight(name, arr, rng)

    def _init_weight(self, name, arr, rng):
        raise NotImplementedError(f"{type(self).__name__} does not initialize weights")

    def __repr__(self):
        return f"{type(self).__name__}()"


class Uniform(Initializer):
    """Uniform in (-scale, scale); MXNet's mx.init.Uniform (default scale 0.07)."""

    def __init__(self, scale: float = 0.07):
        self.scale = float(scale)

    def _init_weight(self, name, arr, rng):
        arr[...] = rng.uniform(-self.scale, self.scale, arr.shape)

    def __repr__(self):
        return f"Uniform({self.scale})"


class Zero(Initializer):
    def _init_weight(self, name, arr, rng):
        arr[...] = 0


class Constant(Initializer):
    def __init__(self, value):
        self.value = value

    def _init_weight(self, name, arr, rng):
        arr[...] = self.value


class LSTMBias(Initializer):
    """MXNet's LSTMBias: zeros, except the forget gate (the second of the 4 blocks) = forget_bias.
    LSTMCell puts it on i2h_bias only (h2h_bias starts at zero): an effective forget bias of
    ``forget_bias``."""

    def __init__(self, forget_bias: float = 1.0):
        self.forget_bias = forget_bias

    def _init_weight(self, name, arr, rng):
        arr[...] = 0.0
        h = arr.shape[0] // 4
        arr[h : 2 * h] = self.forget_bias


class FusedRNN(Initializer):
    """MXNet's FusedRNN initializer for FusedRNNCell's flat vector: each per-gate piece (as
    ``unpack_weights`` names them) gets ``init`` (the global initializer when None; biases zero),
    except that for LSTM every piece ending in '_f_bias' -- the i2h AND the h2h forget biases --
    is set to ``forget_bias``, so the effective forget bias of a fresh FusedRNNCell is
    2 * forget_bias (MXNet 1.9.1 does exactly this; its LSTMCell gets 1 * forget_bias)."""

    def __init__(self, init, num_hidden, num_layers, mode, bidirectional=False, forget_bias=1.0):
        self._init = init
        self._num_hidden = num_hidden
        self._num_layers = num_layers
        self._mode = mode
        self._bidirectional = bidirectional
        self._forget_bias = forget_bias

    def fill(self, name, arr, rng, global_init):
        desc = (self._mode, self._num_hidden, self._num_layers, self._bidirectional)
        C = _fused_input_size(arr.size, *desc)
        pieces = _conv.flat_to_mxnet(arr, self._mode, C, self._num_hidden, self._num_layers,
                                     self._bidirectional)
        init = global_init if self._init is None else self._init
        for piece_name, piece in pieces.items():
            if self._mode == "lstm" and piece_name.endswith("_f_bias"):
                piece[...] = self._forget_bias
            else:
                init(piece_name, piece, rng)
        arr[...] = _conv.mxnet_to_flat(pieces, self._mode, C, self._num_hidden, self._num_layers,
                                       self._bidirectional)

    def _init_weight(self, name, arr, rng):
        self.fill(name, arr, rng, Uniform())


def _fused_input_size(n, mode, H, L, bidirectional) -> int:
    """The input size C for which the flat vector has n elements (it is affine in C)."""
    base = param_size(mode, 1, H, L, bidirectional)
    per_c = param_size(mode, 2, H, L, bidirectional) - base
    C, rest = divmod(int(n) - base + per_c, per_c)
    if rest or C < 1:
        raise ValueError(
            f"a flat vector of {n} elements fits no input size for mode={mode!r}, num_hidden={H}, "
            f"num_layers={L}, bidirectional={bidirectional}")
    return C


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------


class Parameter:
    """One named parameter (MXNet's Variable): ``data`` (None until its shape is known), ``grad``
    (the accumulated gradient, same shape) and ``init``."""

    __slots__ = ("name", "init", "data", "grad", "_container")

    def __init__(self, name, init, container):
        self.name, self.init, self._container = name, init, container
        self.data = None
        self.grad = None

    def __repr__(self):
        shape = None if self.data is None else self.data.shape
        return f"Parameter({self.name!r}, shape={shape})"

    def set(self, value) -> None:
        """Sets the value: copied in place when shape and dtype are unchanged (arrays that view it
        stay valid), else replaced by a copy."""
        arr = chk.float_array(self.name, value)
        if self.data is not None and arr.shape == self.data.shape and arr.dtype == self.data.dtype:
            self.data[...] = arr
            return
        self.data = np.array(arr, order="C", copy=True)
        self.grad = np.zeros_like(self.data)

    def ensure(self, shape, dtype, why: str = "") -> np.ndarray:
        """The array, created by the initializer if missing; it must have this shape and dtype."""
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        if self.data is None:
            arr = np.zeros(shape, dtype)
            c = self._container
            if self.init is None:
                c.initializer(self.name, arr, c.rng)
            elif isinstance(self.init, Initializer):
                self.init.fill(self.name, arr, c.rng, c.initializer)
            elif callable(self.init):
                self.init(self.name, arr, c.rng)
            else:
                arr[...] = np.asarray(self.init)
            self.data = arr
        elif self.data.shape != shape:
            hint = f" ({why})" if why else ""
            raise ValueError(f"{self.name}: expected shape {shape}{hint}, but the parameter has "
                             f"shape {self.data.shape}")
        elif self.data.dtype != dtype:
            raise TypeError(f"{self.name}: the parameter is {self.data.dtype} but the input is "
                            f"{dtype}; use inputs of the parameters' dtype (or set the parameters "
                            f"to {dtype} arrays)")
        if self.grad is None or self.grad.shape != shape or self.grad.dtype != dtype:
            self.grad = np.zeros(shape, dtype)
        return self.data


class RNNParams:
    """Container of parameters, shared between cells (MXNet's RNNParams). ``get(name)`` returns
    the ``Parameter`` named prefix + name, creating it if missing.

    Arrays by full name: ``params[name]`` (an error until the parameter exists, i.e. until its cell
    has run or it was set), ``params[name] = array``, ``load(mapping)``, ``arrays()``; gradients:
    ``grads`` (name -> accumulated gradient) and ``zero_grad()``. Not in MXNet: ``initializer``
    (the global initializer, default Uniform(0.07), biases zero) and ``seed`` (of ``rng``, which
    initializers draw from)."""

    def __init__(self, prefix: str = "", *, initializer=None, seed=None):
        if not isinstance(prefix, str):
            raise TypeError(f"prefix: expected a string, got {prefix!r}")
        self._prefix = prefix
        self._params: dict = {}
        self.initializer = Uniform() if initializer is None else initializer
        self.rng = np.random.default_rng(seed)

    @property
    def prefix(self) -> str:
        return self._prefix

    def get(self, name: str, init=None, shape=None, dtype=None) -> Parameter:
        """The parameter prefix + name, created (with ``init``) if missing; with ``shape`` its
        array is created now (``dtype`` default float32)."""
        name = self._prefix + name
        if name not in self._params:
            self._params[name] = Parameter(name, init, self)
        p = self._params[name]
        if shape is not None:
            p.ensure(shape, np.float32 if dtype is None else dtype)
        return p

    def _lookup(self, name) -> Parameter:
        if name not in self._params:
            raise KeyError(f"{name!r}: no such parameter; known: {sorted(self._params)}")
        return self._params[name]

    def __getitem__(self, name) -> np.ndarray:
        p = self._lookup(name)
        if p.data is None:
            raise ValueError(f"{name!r}: not created yet: its shape is known once its cell has run "
                             "(or set it with params[name] = array)")
        return p.data

    def __setitem__(self, name, value) -> None:
        self._lookup(name).set(value)

    def __contains__(self, name) -> bool:
        return name in self._params

    def __iter__(self):
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def keys(self):
        return self._params.keys()

    def load(self, args: Mapping) -> None:
        """Sets every parameter named in ``args`` (MXNet arg names); unknown names are an error."""
        unknown = sorted(set(args) - set(self._params))
        if unknown:
            raise KeyError(f"unknown parameter names {unknown}; known: {sorted(self._params)}")
        for name, value in args.items():
            self._params[name].set(value)

    def arrays(self) -> dict:
        """{name: array} of the parameters that exist (the arrays themselves, not copies)."""
        return {n: p.data for n, p in self._params.items() if p.data is not None}

    @property
    def grads(self) -> dict:
        """{name: accumulated gradient} of the parameters that exist (the arrays themselves)."""
        return {n: p.grad for n, p in self._params.items() if p.grad is not None}

    def zero_grad(self) -> None:
        for p in self._params.values():
            if p.grad is not None:
                p.grad[...] = 0


# --------------------------------------------------------------------------------------------------
# Sequences, states and gradients
# --------------------------------------------------------------------------------------------------


def _check_layout(layout) -> int:
    if layout not in _LAYOUTS:
        raise ValueError(f"layout: expected 'NTC' or 'TNC', got {layout!r}")
    return layout.find("T")


def _check_merge(merge_outputs):
    if merge_outputs is not None and not isinstance(merge_outputs, (bool, np.bool_)):
        raise TypeError(f"merge_outputs: expected None, True or False, got {merge_outputs!r}")
    return merge_outputs


def _float(name, value, dtype=None) -> np.ndarray:
    return chk.float_array(name, value, dtype)


def _seq_to_array(length, inputs, layout, what="inputs"):
    """(x, axis, was_list): the sequence as one 3-D array in ``layout``; axis is the T axis."""
    axis = _check_layout(layout)
    if length is not None:
        length = chk.size("length", length)
    if inputs is None:
        raise ValueError("unroll(inputs=None) has been deprecated. Please create input variables "
                         "outside unroll.")
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise ValueError(f"{what}: expected a non-empty list of per-step arrays")
        if length is not None and len(inputs) != length:
            raise ValueError(f"{what}: expected {length} per-step arrays (length), "
                             f"got {len(inputs)}")
        steps = [_float(f"{what}[{t}]", a) for t, a in enumerate(inputs)]
        first = steps[0]
        for t, a in enumerate(steps):
            if a.ndim != 2:
                raise ValueError(f"{what}[{t}]: expected a 2-D array (batch_size, input_size), "
                                 f"got shape {a.shape}")
            if a.shape != first.shape or a.dtype != first.dtype:
                raise ValueError(f"{what}[{t}]: shape {a.shape} {a.dtype} differs from "
                                 f"{what}[0]'s {first.shape} {first.dtype}")
        return np.stack(steps, axis=axis), axis, True
    x = _float(what, inputs)
    if x.ndim != 3:
        dims = ("(batch_size, length, input_size)" if axis == 1
                else "(length, batch_size, input_size)")
        raise ValueError(f"{what}: expected a 3-D array {dims} for layout={layout!r} (or a list of "
                         f"per-step 2-D arrays), got shape {x.shape}")
    if length is not None and x.shape[axis] != length:
        raise ValueError(f"{what}: length={length} but the array has {x.shape[axis]} steps on the "
                         f"T axis of layout {layout!r} (shape {x.shape})")
    return x, axis, False


def _steps(x, axis) -> list:
    return [x[:, t] if axis == 1 else x[t] for t in range(x.shape[axis])]


def _format(y, axis, merge_outputs, was_list):
    """MXNet's return form: one array (merged) or a list of per-step arrays."""
    merge = (not was_list) if merge_outputs is None else bool(merge_outputs)
    return y if merge else _steps(y, axis)


def _seq_grad(d, shape, axis, dtype, what="d_outputs"):
    """A gradient given as an array or a list of per-step arrays (or None) -> array or None."""
    if d is None:
        return None
    if isinstance(d, (list, tuple)):
        if len(d) != shape[axis]:
            raise ValueError(f"{what}: expected {shape[axis]} per-step arrays, got {len(d)}")
        step_shape = shape[:axis] + shape[axis + 1 :]
        steps = []
        for t, g in enumerate(d):
            g = np.zeros(step_shape, dtype) if g is None else chk.array(f"{what}[{t}]", g, dtype)
            chk.shape(f"{what}[{t}]", g, step_shape)
            steps.append(g)
        return np.stack(steps, axis=axis)
    g = chk.array(what, d, dtype)
    chk.shape(what, g, shape, "(the shape of the outputs)")
    return g


def _grad(name, d, shape, dtype):
    """One gradient (None = zero) as an array of ``shape``, named in any error."""
    if d is None:
        return None
    g = chk.array(name, d, dtype)
    chk.shape(name, g, shape)
    return g


def _flatten(states) -> list:
    """Nested lists of states (as BidirectionalCell returns) -> a flat list."""
    if states is None:
        return []
    if isinstance(states, np.ndarray) or not isinstance(states, (list, tuple)):
        return [states]
    out = []
    for s in states:
        if isinstance(s, (list, tuple)):
            out.extend(_flatten(s))
        else:
            out.append(s)
    return out


def _state_grads(d_states, n, who) -> list:
    """d_states (None, flat or nested) -> a flat list of n entries (None = zero)."""
    if d_states is None:
        return [None] * n
    flat = _flatten(d_states)
    if len(flat) != n:
        raise ValueError(f"{who}.backward: d_states: expected {n} state gradients (or None), "
                         f"got {len(flat)}")
    return flat


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _as_list_like(d, like_list, axis):
    return _steps(d, axis) if like_list else d


def _as_seq_array(seq, axis):
    """An output or gradient sequence given as an array or a list of per-step arrays -> array."""
    return np.stack(seq, axis=axis) if isinstance(seq, (list, tuple)) else np.asarray(seq)


_SIG_CACHE: dict = {}


def _accepts(fn, name) -> bool:
    return chk.accepts_keyword(fn, name)


def _call(cell, inputs, states, training):
    """cell(inputs, states, training=...): user cells whose __call__ takes no ``training`` are
    called without it."""
    if _accepts(type(cell).__call__, "training"):
        return cell(inputs, states, training=training)
    return cell(inputs, states)


def _unroll(cell, length, inputs, begin_state, layout, merge_outputs, training):
    kw = dict(begin_state=begin_state, layout=layout, merge_outputs=merge_outputs)
    if _accepts(type(cell).unroll, "training"):
        kw["training"] = training
    return cell.unroll(length, inputs, **kw)


_NUMPY_CREATORS = (np.zeros, np.ones, np.empty, np.full)


class _Depth(threading.local):
    n = 0


_BWD_DEPTH = _Depth()  # nesting of backward calls in this thread (0: an outermost call)


def _subtree(cell) -> list:
    """cell and every cell inside it (children, base cells), each once."""
    out, seen, todo = [], set(), [cell]
    while todo:
        c = todo.pop()
        if not isinstance(c, BaseRNNCell) or id(c) in seen:
            continue
        seen.add(id(c))
        out.append(c)
        todo.extend(getattr(c, "_cells", ()))
        todo.append(getattr(c, "base_cell", None))
    return out


def _save_backward_state(cell):
    """What a backward of ``cell`` may change: every record list, ZoneoutCell's carried gradient
    and every parameter gradient in its subtree."""
    cells = _subtree(cell)
    tapes = [(c, list(c._tape), c.__dict__.get("_carry")) for c in cells]
    params = {id(p): p for c in cells for p in c._params._params.values()}
    grads = [(p, p.grad, None if p.grad is None else p.grad.copy()) for p in params.values()]
    return tapes, grads


def _restore_backward_state(saved):
    tapes, grads = saved
    for c, tape, carry in tapes:
        c._tape[:] = tape
        if "_carry" in c.__dict__:
            c._carry = carry
    for p, arr, copy in grads:
        if arr is not None:
            arr[...] = copy  # in place: arrays the caller holds from params.grads stay valid
        p.grad = arr


def _make_state(func, name, shape, kwargs):
    kw = dict(kwargs)
    if func in _NUMPY_CREATORS:
        kw.setdefault("dtype", np.float32)
    elif _accepts(func, "name"):
        kw["name"] = name
    if shape is not None:
        kw["shape"] = shape
    return func(**kw)


# --------------------------------------------------------------------------------------------------
# Base cell
# --------------------------------------------------------------------------------------------------


class BaseRNNCell:
    """Abstract base class of the cells (MXNet's BaseRNNCell).

    A user-written cell implements ``state_info`` and ``__call__(inputs, states)`` (one step,
    returning ``(output, new_states)``); ``unroll`` then runs it step by step in a Python loop. To
    train it, its ``__call__`` may take ``training`` and it implements
    ``step_backward(d_output, d_states) -> (d_inputs, d_states_before)`` for one step (called for
    the steps in reverse order by ``backward`` after a training ``unroll``)."""

    def __init__(self, prefix: str = "", params: RNNParams | None = None):
        if params is None:
            params = RNNParams(prefix)
            self._own_params = True
        else:
            if not isinstance(params, RNNParams):
                raise TypeError("params: expected an RNNParams or None, got "
                                f"{type(params).__name__}")
            self._own_params = False
        if not isinstance(prefix, str):
            raise TypeError(f"prefix: expected a string, got {prefix!r}")
        self._prefix = prefix
        self._params = params
        self._modified = False
        self._tape: list = []
        self.reset()

    # ---- MXNet's interface
    def reset(self) -> None:
        """Reset before re-using the cell for another sequence (counters, not training records)."""
        self._init_counter = -1
        self._counter = -1
        for cell in getattr(self, "_cells", ()):
            cell.reset()

    def __call__(self, inputs, states, training: bool = False):
        """One time step: (output, new_states)."""
        raise NotImplementedError()

    @property
    def params(self) -> RNNParams:
        """Parameters of this cell."""
        self._own_params = False
        return self._params

    @property
    def state_info(self) -> list:
        """Shape and layout of the states: [{'shape': (0, H), '__layout__': 'NC'}, ...]; 0 is the
        batch size."""
        raise NotImplementedError()

    @property
    def state_shape(self) -> list:
        return [ele["shape"] for ele in self.state_info]

    @property
    def _gate_names(self):
        return ()

    def begin_state(self, func=np.zeros, batch_size=None, **kwargs) -> list:
        """Initial states: ``func(shape=shape, **kwargs)`` per entry of ``state_info``, the batch
        size (0 in state_info) being ``batch_size``. np.zeros/ones/empty/full default to float32;
        a func with a ``name`` parameter also gets MXNet's state name."""
        if self._modified:
            raise RuntimeError("After applying modifier cells (e.g. DropoutCell) the base cell "
                               "cannot be called directly. Call the modifier cell instead.")
        if batch_size is not None:
            batch_size = chk.size("batch_size", batch_size)
        states = []
        for info in self.state_info:
            self._init_counter += 1
            name = "%sbegin_state_%d" % (self._prefix, self._init_counter)
            shape = None
            if info is not None:
                shape = tuple(info["shape"])
                if 0 in shape:
                    if batch_size is None:
                        raise ValueError(
                            f"begin_state: the state shape {shape} has an unknown batch size (0); "
                            f"give it: begin_state(batch_size=N)")
                    shape = tuple(batch_size if s == 0 else s for s in shape)
            states.append(_make_state(func, name, shape, kwargs))
        return states

    def unpack_weights(self, args) -> dict:
        """MXNet's per-gate names from the cell's own: '{prefix}i2h_weight' (G*H, C) ->
        '{prefix}i2h_i_weight', ... (H, C) (copies). Other entries of ``args`` are kept."""
        args = dict(args)
        if not self._gate_names:
            return args
        h = self._num_hidden
        for group_name in ("i2h", "h2h"):
            weight = np.asarray(args.pop("%s%s_weight" % (self._prefix, group_name)))
            bias = np.asarray(args.pop("%s%s_bias" % (self._prefix, group_name)))
            for j, gate in enumerate(self._gate_names):
                wname = "%s%s%s_weight" % (self._prefix, group_name, gate)
                args[wname] = weight[j * h : (j + 1) * h].copy()
                bname = "%s%s%s_bias" % (self._prefix, group_name, gate)
                args[bname] = bias[j * h : (j + 1) * h].copy()
        return args

    def pack_weights(self, args) -> dict:
        """The inverse of ``unpack_weights``."""
        args = dict(args)
        if not self._gate_names:
            return args
        for group_name in ("i2h", "h2h"):
            weight, bias = [], []
            for gate in self._gate_names:
                wname = "%s%s%s_weight" % (self._prefix, group_name, gate)
                weight.append(np.asarray(args.pop(wname)))
                bname = "%s%s%s_bias" % (self._prefix, group_name, gate)
                bias.append(np.asarray(args.pop(bname)))
            args["%s%s_weight" % (self._prefix, group_name)] = np.concatenate(weight)
            args["%s%s_bias" % (self._prefix, group_name)] = np.concatenate(bias)
        return args

    def unroll(self, length, inputs, begin_state=None, layout="NTC", merge_outputs=None,
               training: bool = False):
        """Runs the cell over a sequence: (outputs, states).

        inputs: one array (N, T, C) for layout 'NTC' or (T, N, C) for 'TNC', or a list of T
        per-step arrays (N, C). outputs: one array in ``layout`` (merge_outputs True, or None with
        an array input) or a list of per-step arrays. This generic version steps ``__call__`` in a
        Python loop; the built-in cells override it with fused calls."""
        self.reset()
        merge_outputs = _check_merge(merge_outputs)
        x, axis, was_list = _seq_to_array(length, inputs, layout)
        if begin_state is None:
            begin_state = self.begin_state(batch_size=x.shape[1 - axis], dtype=x.dtype)
        states = begin_state
        n_before = len(self._tape)
        outputs = []
        for x_t in _steps(x, axis):
            output, states = _call(self, x_t, states, training)
            outputs.append(output)
        if training:
            steps = self._tape[n_before:]
            del self._tape[n_before:]
            self._tape.append(("loop", dict(steps=steps, axis=axis, was_list=was_list,
                                            x_shape=x.shape, dtype=x.dtype,
                                            out_shapes=[np.shape(o) for o in outputs],
                                            out_dtype=np.result_type(*outputs) if outputs
                                            else x.dtype)))
        merge = (not was_list) if merge_outputs is None else merge_outputs
        return (np.stack(outputs, axis=axis) if merge else outputs), states

    # ---- training
    def backward(self, d_outputs=None, d_states=None):
        """Gradients of the latest training ``unroll`` / step of this cell (and the cells inside
        it): returns (d_inputs, d_begin_states) and adds the parameter gradients into
        ``params.grads``. d_outputs: like the outputs (array or list); d_states: like the returned
        states (flat or nested); None means zero."""
        if not self._tape:
            raise RuntimeError(
                f"{type(self).__name__}.backward: nothing to differentiate: run unroll(..., "
                "training=True) or a step with training=True first (each backward consumes the "
                "latest one)")
        entry = self._tape[-1]  # consumed only when backward succeeds: a bad call can be retried
        # A composite cell's children consume their records and add their gradients one by one: if
        # one fails, the outermost backward puts every record and gradient back as it was.
        saved = None
        if _BWD_DEPTH.n == 0 and not isinstance(self, _ATOMIC_BACKWARD):
            saved = _save_backward_state(self)
        _BWD_DEPTH.n += 1
        try:
            result = getattr(self, "_bwd_" + entry[0])(entry[1], d_outputs, d_states)
        except BaseException:
            if saved is not None:
                _restore_backward_state(saved)
            raise
        finally:
            _BWD_DEPTH.n -= 1
        for i in range(len(self._tape) - 1, -1, -1):
            if self._tape[i] is entry:
                del self._tape[i]
                break
        return result

    def step_backward(self, d_output, d_states):
        """Backward of one step of a user-written cell (see the class docstring)."""
        raise NotImplementedError(
            f"{type(self).__name__} implements only __call__, so its unroll has no backward: "
            "implement step_backward(d_output, d_states) -> (d_inputs, d_states_before), or "
            "build it from the built-in cells")

    def clear_tape(self) -> None:
        """Drops the records kept by training calls that were not differentiated."""
        self._tape.clear()
        for cell in getattr(self, "_cells", ()):
            cell.clear_tape()
        if isinstance(getattr(self, "base_cell", None), BaseRNNCell):
            self.base_cell.clear_tape()

    def _bwd_loop(self, rec, d_outputs, d_states):
        axis, T = rec["axis"], rec["x_shape"][rec["axis"]]
        shapes, dt = rec["out_shapes"], rec["out_dtype"]
        if d_outputs is None:
            dys = [None] * T
        elif isinstance(d_outputs, (list, tuple)):
            if len(d_outputs) != T:
                raise ValueError(f"d_outputs: expected {T} per-step arrays, got {len(d_outputs)}")
            dys = [_grad(f"d_outputs[{t}]", d, shapes[t], dt) for t, d in enumerate(d_outputs)]
        else:
            if len(set(shapes)) > 1:
                raise ValueError(f"d_outputs: the steps' outputs have different shapes {shapes}; "
                                 "give a list of per-step gradients")
            stacked = shapes[0][:axis] + (T,) + shapes[0][axis:] if T else None
            g = chk.array("d_outputs", d_outputs, dt)
            if stacked is not None:
                chk.shape("d_outputs", g, stacked, "(the shape of the outputs)")
            dys = _steps(g, axis)
        steps = rec["steps"]
        if steps and len(steps) != T:
            raise RuntimeError(f"{type(self).__name__}.backward: {len(steps)} step records for "
                               f"{T} steps")
        ds = d_states
        dxs = [None] * T
        for t in range(T - 1, -1, -1):
            if steps:
                kind, r = steps[t]
                dx, ds = getattr(self, "_bwd_" + kind)(r, dys[t], ds)
            else:
                dx, ds = self.step_backward(dys[t], ds)
            dxs[t] = dx
        step_shape = tuple(s for i, s in enumerate(rec["x_shape"]) if i != axis)
        dxs = [np.zeros(step_shape, rec["dtype"]) if d is None else d for d in dxs]
        return (dxs if rec["was_list"] else np.stack(dxs, axis=axis)), ds


# --------------------------------------------------------------------------------------------------
# RNNCell, LSTMCell, GRUCell: one layer, one direction, on the fused core
# --------------------------------------------------------------------------------------------------


class _GateCell(BaseRNNCell):
    """A one-layer cell run by the fused core: a step is a call with T = 1, unroll one call."""

    def __init__(self, num_hidden, prefix, params, mode, activation):
        super().__init__(prefix=prefix, params=params)
        self._num_hidden = chk.size("num_hidden", num_hidden)
        self._mode = mode
        self._fused_activation = activation
        self._packed = None  # (flat, views, pieces, C, dtype)

    @property
    def state_info(self):
        n = 2 if self._mode == "lstm" else 1
        return [{"shape": (0, self._num_hidden), "__layout__": "NC"} for _ in range(n)]

    def _param_list(self):
        # in the flat vector's order: i2h weight, h2h weight, i2h bias, h2h bias
        return (self._iW, self._hW, self._iB, self._hB)

    def _weights(self, C, dtype):
        """(flat, pieces): the weights as one flat vector whose pieces the parameters view."""
        ps = self._param_list()
        pk = self._packed
        if (pk is not None and pk[3] == C and pk[4] == dtype
                and all(p.data is v for p, v in zip(ps, pk[1]))):
            return pk[0], pk[2]
        pieces = param_layout(self._mode, C, self._num_hidden)
        order = [("weight", "i2h"), ("weight", "h2h"), ("bias", "i2h"), ("bias", "h2h")]
        by_kind = {(q.kind, q.part): q for q in pieces}
        pieces = [by_kind[k] for k in order]
        for p, q in zip(ps, pieces):
            what = "input size %d, num_hidden %d" % (C, self._num_hidden)
            p.ensure(q.shape, dtype, what)
        n = param_size(self._mode, C, self._num_hidden)
        flat = _common_base([p.data for p in ps], pieces, n, dtype)
        if flat is None:  # adopt: one flat vector, the parameters become views of it
            flat = np.empty(n, dtype)
            for p, q in zip(ps, pieces):
                flat[q.offset : q.offset + q.size] = p.data.reshape(-1)
                p.data = flat[q.offset : q.offset + q.size].reshape(q.shape)
        self._packed = (flat, tuple(p.data for p in ps), pieces, C, dtype)
        return flat, pieces

    def _accumulate(self, pieces, dw):
        for p, q in zip(self._param_list(), pieces):
            p.grad += dw[q.offset : q.offset + q.size].reshape(q.shape)

    def _check_states(self, states, N, dtype, who):
        states = _flatten(states)
        n = len(self.state_info)
        if len(states) != n:
            raise ValueError(f"{who}: expected {n} state array(s) of shape (batch_size, "
                             f"num_hidden), got {len(states)}")
        out = []
        for i, s in enumerate(states):
            s = _float(f"states[{i}]", s, dtype)
            chk.shape(f"states[{i}]", s, (N, self._num_hidden), "(batch_size, num_hidden)")
            out.append(s[None])
        return out

    def _run(self, x, batch_first, states, training, who, core=None):
        C = x.shape[2]
        N = x.shape[0] if batch_first else x.shape[1]
        flat, pieces = self._weights(C, x.dtype)
        st = self._check_states(states, N, x.dtype, who)
        res = F.forward(x, flat, mode=self._mode, hidden_size=self._num_hidden, h0=st[0],
                        c0=st[1] if len(st) > 1 else None, batch_first=batch_first,
                        training=training, activation=self._fused_activation, **(core or {}))
        new_states = [res.hN[0]] + ([res.cN[0]] if res.cN is not None else [])
        return res.y, new_states, res.ctx, pieces

    def __call__(self, inputs, states, training: bool = False):
        self._counter += 1
        x = _float("inputs", inputs)
        if x.ndim != 2:
            raise ValueError(f"inputs: expected a 2-D array (batch_size, input_size) for one step, "
                             f"got shape {x.shape}")
        _, new_states, ctx, pieces = self._run(x[None], False, states, training, "states")
        if training:
            self._tape.append(("step", dict(ctx=ctx, pieces=pieces)))
        return new_states[0], new_states

    def unroll(self, length, inputs, begin_state=None, layout="NTC", merge_outputs=None,
               training: bool = False, valid_length=None, executor: str = "auto"):
        """MXNet's unroll as one fused call. ``valid_length``: optional (batch_size,) per-sample
        lengths (MXNet Gluon's ``valid_length``): outputs past them are zero and the states are
        each sample's at its own last step, with work proportional to their sum. ``executor``:
        the core's 'loop', 'unrolled' or 'auto' (``fusedrnn.forward``)."""
        core = dict(executor=executor)
        if valid_length is not None:
            core["lengths"] = valid_length
        return self._fused_unroll(length, inputs, begin_state, layout, merge_outputs, training,
                                  core=core)

    def _fused_unroll(self, length, inputs, begin_state, layout, merge_outputs, training,
                      core=None, check=None):
        """unroll as one fused call; ``core``: extra options of the core (zoneout, residual, seed)
        from the modifier cells around this one; ``check(x)`` validates the input first."""
        self.reset()
        merge_outputs = _check_merge(merge_outputs)
        x, axis, was_list = _seq_to_array(length, inputs, layout)
        if check is not None:
            check(x)
        if begin_state is None:
            begin_state = self.begin_state(batch_size=x.shape[1 - axis], dtype=x.dtype)
        y, states, ctx, pieces = self._run(x, axis == 1, begin_state, training, "begin_state",
                                           core)
        if training:
            self._tape.append(("unroll", dict(ctx=ctx, pieces=pieces, axis=axis, was_list=was_list,
                                              y_shape=y.shape)))
        return _format(y, axis, merge_outputs, was_list), states

    def _backward_core(self, ctx, pieces, dy, d_states):
        dtype = np.dtype(ctx.plan.dtype)
        n = len(self.state_info)
        ds = _state_grads(d_states, n, type(self).__name__)
        N = ctx.x.shape[1]
        d = []
        for i, g in enumerate(ds):
            if g is not None:
                g = chk.array(f"d_states[{i}]", g, dtype)
                chk.shape(f"d_states[{i}]", g, (N, self._num_hidden), "(batch_size, num_hidden)")
                g = g[None]
            d.append(g)
        dx, dh0, dc0, dw = F.backward(ctx, dy, d[0], d[1] if n > 1 else None)
        self._accumulate(pieces, dw)
        return dx, [dh0[0]] + ([dc0[0]] if dc0 is not None else [])

    def _bwd_step(self, rec, d_output, d_states):
        ctx = rec["ctx"]
        dy = None
        if d_output is not None:
            dy = chk.array("d_output", d_output, ctx.plan.dtype)
            chk.shape("d_output", dy, (ctx.x.shape[1], self._num_hidden),
                      "(batch_size, num_hidden)")
            dy = dy[None]
        dx, ds = self._backward_core(ctx, rec["pieces"], dy, d_states)
        return dx[0], ds

    def _bwd_unroll(self, rec, d_outputs, d_states):
        ctx = rec["ctx"]
        dy = _seq_grad(d_outputs, rec["y_shape"], rec["axis"], np.dtype(ctx.plan.dtype))
        dx, ds = self._backward_core(ctx, rec["pieces"], dy, d_states)
        return _as_list_like(dx, rec["was_list"], rec["axis"]), ds


def _common_base(arrays, pieces, n, dtype):
    """The flat vector of n elements that all ``arrays`` view at the pieces' offsets, or None."""
    base = arrays[0].base
    if (not isinstance(base, np.ndarray) or base.ndim != 1 or base.size != n
            or base.dtype != dtype or not base.flags.c_contiguous or not base.flags.writeable):
        return None
    start = base.__array_interface__["data"][0]
    for a, q in zip(arrays, pieces):
        if (a.base is not base or a.shape != tuple(q.shape) or not a.flags.c_contiguous
                or a.__array_interface__["data"][0] - start != q.offset * base.itemsize):
            return None
    return base


_RNN_ACTIVATIONS = {"tanh": ("rnn_tanh", None), "relu": ("rnn_relu", None)}


class RNNCell(_GateCell):
    """Simple recurrent cell (MXNet's RNNCell): h' = act(x W_i2h^T + b_i2h + h W_h2h^T + b_h2h).

    activation: MXNet's act_types 'tanh' (default), 'relu', 'sigmoid', 'softrelu', 'softsign'
    (also 'hard_sigmoid', 'linear'), all in the fused kernels. Parameters '{prefix}i2h_weight' (H, C), '{prefix}i2h_bias' (H,),
    '{prefix}h2h_weight' (H, H), '{prefix}h2h_bias' (H,)."""

    def __init__(self, num_hidden, activation="tanh", prefix="rnn_", params=None):
        if not isinstance(activation, str):
            raise TypeError(f"activation: expected a string such as 'tanh' or 'relu', got "
                            f"{type(activation).__name__} {activation!r}")
        if activation in _RNN_ACTIVATIONS:
            mode, act = _RNN_ACTIVATIONS[activation]
        elif isinstance(activation, str) and activation in ACTIVATIONS:
            mode, act = "rnn_tanh", activation
        else:
            raise ValueError(f"activation: expected one of {', '.join(map(repr, ACTIVATIONS))} "
                             f"(the fused kernels' activations), got {activation!r}")
        super().__init__(num_hidden, prefix, params, mode, act)
        self._activation = activation
        self._iW = self.params.get("i2h_weight")
        self._iB = self.params.get("i2h_bias")
        self._hW = self.params.get("h2h_weight")
        self._hB = self.params.get("h2h_bias")

    @property
    def _gate_names(self):
        return ("",)


class LSTMCell(_GateCell):
    """LSTM cell (MXNet's LSTMCell). Gates i, f, c, o in blocks of H rows of '{prefix}i2h_weight'
    (4H, C), '{prefix}h2h_weight' (4H, H), '{prefix}i2h_bias' and '{prefix}h2h_bias' (4H,); states
    [h, c]. i2h_bias starts as LSTMBias(forget_bias)."""

    def __init__(self, num_hidden, prefix="lstm_", params=None, forget_bias=1.0):
        super().__init__(num_hidden, prefix, params, "lstm", None)
        self._iW = self.params.get("i2h_weight")
        self._hW = self.params.get("h2h_weight")
        # we add the forget_bias to i2h_bias, this adds the bias to the forget gate activation
        self._iB = self.params.get("i2h_bias", init=LSTMBias(forget_bias=forget_bias))
        self._hB = self.params.get("h2h_bias")

    @property
    def _gate_names(self):
        return ["_i", "_f", "_c", "_o"]


class GRUCell(_GateCell):
    """GRU cell (MXNet's GRUCell, the cuDNN form: the reset gate scales h W_h2h_o^T + b_h2h_o).
    Gates r, z, o (the new gate) in blocks of H rows; parameters as RNNCell's with 3H rows."""

    def __init__(self, num_hidden, prefix="gru_", params=None):
        super().__init__(num_hidden, prefix, params, "gru", None)
        self._iW = self.params.get("i2h_weight")
        self._iB = self.params.get("i2h_bias")
        self._hW = self.params.get("h2h_weight")
        self._hB = self.params.get("h2h_bias")

    @property
    def _gate_names(self):
        return ["_r", "_z", "_o"]


# --------------------------------------------------------------------------------------------------
# FusedRNNCell
# --------------------------------------------------------------------------------------------------


# The built-in gate cells: modifier cells around them run inside their fused call (_fused_chain).
_FUSABLE = (RNNCell, LSTMCell, GRUCell)


class FusedRNNCell(BaseRNNCell):
    """All layers and directions in one fused call (MXNet's FusedRNNCell, which needs cuDNN; this
    one runs on the CPU). One parameter, '{prefix}parameters' (default prefix f'{mode}_'): the flat
    vector in MXNet's layout, initialized as MXNet's FusedRNN initializer does. States (when
    ``get_next_state``; else ``[]``) and begin states: [h (L*D, N, H)] plus [c] for LSTM.

    Cannot be stepped (NotImplementedError, as MXNet); ``unfuse()`` gives the equivalent
    SequentialRNNCell of one-layer cells with the same weights.

    dropout: as MXNet (cuDNN's dropout, and what ``unfuse()`` builds with DropoutCell), in training
    each element of every layer's output except the last is zeroed with probability ``dropout``
    and the rest scaled by 1/(1 - dropout), a fresh mask per step; inference ignores it. The
    kernels' own ``dropout`` is Keras's variational dropout (one mask per sequence, on every
    layer's input including the first), a different function, so training with dropout > 0 and
    num_layers > 1 runs one fused call per layer (all directions of the layer in it) with the
    masks applied between them. ``rng`` (attribute, not in MXNet): the Generator of those masks;
    the masks equal those of the unfused stack's DropoutCells given the same generator state."""

    def __init__(self, num_hidden, num_layers=1, mode="lstm", bidirectional=False, dropout=0.0,
                 get_next_state=False, forget_bias=1.0, prefix=None, params=None):
        check_mode(mode)
        if prefix is None:
            prefix = "%s_" % mode
        super().__init__(prefix=prefix, params=params)
        self._num_hidden = chk.size("num_hidden", num_hidden)
        self._num_layers = chk.size("num_layers", num_layers)
        self._mode = mode
        self._bidirectional = chk.flag("bidirectional", bidirectional)
        if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, numbers.Real) \
                or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout: expected a rate in [0, 1), got {dropout!r}")
        self._dropout = float(dropout)
        self._get_next_state = chk.flag("get_next_state", get_next_state)
        self._directions = ["l", "r"] if self._bidirectional else ["l"]
        initializer = FusedRNN(None, self._num_hidden, self._num_layers, mode,
                               self._bidirectional, forget_bias)
        self._parameter = self.params.get("parameters", init=initializer)
        self.rng = np.random.default_rng()

    @property
    def state_info(self):
        b = self._bidirectional + 1
        n = (self._mode == "lstm") + 1
        return [{"shape": (b * self._num_layers, 0, self._num_hidden), "__layout__": "LNC"}
                for _ in range(n)]

    @property
    def _gate_names(self):
        return {"rnn_relu": [""], "rnn_tanh": [""], "lstm": ["_i", "_f", "_c", "_o"],
                "gru": ["_r", "_z", "_o"]}[self._mode]

    @property
    def _num_gates(self):
        return len(self._gate_names)

    def _desc(self):
        return self._mode, self._num_hidden, self._num_layers, self._bidirectional

    def unpack_weights(self, args) -> dict:
        """'{params prefix}parameters' -> MXNet's per-gate names '{prefix}l0_i2h_i_weight', ..."""
        args = dict(args)
        arr = _float(self._parameter.name, args.pop(self._parameter.name))
        C = _fused_input_size(arr.size, *self._desc())
        mode, H, L, bi = self._desc()
        args.update(_conv.flat_to_mxnet(arr.reshape(-1), mode, C, H, L, bi, prefix=self._prefix))
        return args

    def pack_weights(self, args) -> dict:
        args = dict(args)
        mode, H, L, bi = self._desc()
        first = "%sl0_i2h%s_weight" % (self._prefix, self._gate_names[0])
        if first not in args:
            raise KeyError(f"pack_weights: {first!r} missing")
        C = np.shape(args[first])[1]
        names = _conv.mxnet_param_shapes(mode, C, H, L, bi, prefix=self._prefix)
        missing = [n for n in names if n not in args]
        if missing:
            raise KeyError(f"pack_weights: missing {missing}")
        sub = {n: args.pop(n) for n in names}
        args[self._parameter.name] = _conv.mxnet_to_flat(sub, mode, C, H, L, bi,
                                                         prefix=self._prefix)
        return args

    def __call__(self, inputs, states, training: bool = False):
        raise NotImplementedError("FusedRNNCell cannot be stepped. Please use unroll")

    def unroll(self, length, inputs, begin_state=None, layout="NTC", merge_outputs=None,
               training: bool = False, valid_length=None, executor: str = "auto"):
        """MXNet's FusedRNNCell.unroll (all layers in one fused call); ``valid_length`` (MXNet's
        ``use_sequence_length``) and ``executor`` as the gate cells' ``unroll``."""
        self.reset()
        merge_outputs = _check_merge(merge_outputs)
        training = chk.flag("training", training)
        x, axis, was_list = _seq_to_array(length, inputs, layout)
        if begin_state is None:
            begin_state = self.begin_state(batch_size=x.shape[1 - axis], dtype=x.dtype)
        mode, H, L, bi = self._desc()
        C, N = x.shape[2], x.shape[1 - axis]
        n = param_size(mode, C, H, L, bi)
        flat = self._parameter.ensure(
            (n,), x.dtype, f"mode={mode!r}, input size {C}, num_hidden {H}, num_layers {L}, "
            f"bidirectional={bi}")
        states = _flatten(begin_state)
        want = len(self.state_info)
        if len(states) != want:
            raise ValueError(f"begin_state: expected {want} array(s) of shape (num_layers * "
                             f"directions, batch_size, num_hidden), got {len(states)}")
        shape = (L * (2 if bi else 1), N, H)
        st = []
        for i, s in enumerate(states):
            s = _float(f"begin_state[{i}]", s, x.dtype)
            chk.shape(f"begin_state[{i}]", s, shape,
                      "(num_layers * directions, batch_size, num_hidden)")
            st.append(s)
        h0, c0 = st[0], (st[1] if len(st) > 1 else None)
        if training and self._dropout > 0 and L > 1:
            y, hN, cN = self._unroll_with_dropout(x, axis, was_list, flat, h0, c0,
                                                  valid_length, executor)
        else:
            res = F.forward(x, flat, mode=mode, hidden_size=H, num_layers=L, bidirectional=bi,
                            h0=h0, c0=c0, batch_first=axis == 1, training=training,
                            lengths=valid_length, executor=executor)
            y, hN, cN = res.y, res.hN, res.cN
            if training:
                self._tape.append(("unroll", dict(ctx=res.ctx, axis=axis, was_list=was_list,
                                                  y_shape=y.shape)))
        states = ([hN] + ([cN] if cN is not None else [])) if self._get_next_state else []
        return _format(y, axis, merge_outputs, was_list), states

    def _layer_maps(self, C):
        """Per layer: [(offset in the whole flat vector, offset in the layer's own, size)]."""
        mode, H, L, bi = self._desc()
        whole = {(q.layer, q.direction, q.kind, q.part): q for q in param_layout(mode, C, H, L, bi)}
        maps = []
        for layer in range(L):
            c_in = C if layer == 0 else (2 if bi else 1) * H
            own = param_layout(mode, c_in, H, 1, bi)
            maps.append([(whole[(layer, q.direction, q.kind, q.part)].offset, q.offset, q.size)
                         for q in own])
        return maps

    def _unroll_with_dropout(self, x, axis, was_list, flat, h0, c0, lengths=None,
                             executor="auto"):
        """Training with MXNet's dropout between layers: a fused call per layer, masks between."""
        mode, H, L, bi = self._desc()
        D = 2 if bi else 1
        maps = self._layer_maps(x.shape[2])
        layer_in, layers, hN, cN = x, [], [], []
        for layer, pieces in enumerate(maps):
            w = np.empty(sum(size for _, _, size in pieces), x.dtype)
            for src, dst, size in pieces:
                w[dst : dst + size] = flat[src : src + size]
            sl = slice(layer * D, (layer + 1) * D)
            res = F.forward(layer_in, w, mode=mode, hidden_size=H, bidirectional=bi, h0=h0[sl],
                            c0=None if c0 is None else c0[sl], batch_first=axis == 1,
                            training=True, lengths=lengths, executor=executor)
            hN.append(res.hN)
            if res.cN is not None:
                cN.append(res.cN)
            mask = None
            layer_in = res.y
            if layer < L - 1:
                keep = self.rng.random(res.y.shape) >= self._dropout
                mask = keep.astype(x.dtype) / x.dtype.type(1.0 - self._dropout)
                layer_in = res.y * mask
            layers.append((res.ctx, pieces, mask))
        self._tape.append(("layers", dict(layers=layers, axis=axis, was_list=was_list,
                                          y_shape=layer_in.shape)))
        return layer_in, np.concatenate(hN), (np.concatenate(cN) if cN else None)

    def _bwd_layers(self, rec, d_outputs, d_states):
        mode, H, L, bi = self._desc()
        D = 2 if bi else 1
        layers = rec["layers"]
        dtype = np.dtype(layers[0][0].plan.dtype)
        d = _seq_grad(d_outputs, rec["y_shape"], rec["axis"], dtype)
        n = len(self.state_info) if self._get_next_state else 0
        ds = _state_grads(d_states, n, "FusedRNNCell") + [None, None]
        ds = [None if g is None else chk.array(f"d_states[{i}]", g, dtype)
              for i, g in enumerate(ds)]
        state_shape = (L * D, layers[0][0].x.shape[1], self._num_hidden)
        for i, g in enumerate(ds[:n]):  # before any layer adds its gradient: a bad call adds none
            if g is not None:
                chk.shape(f"d_states[{i}]", g, state_shape,
                          "(num_layers * directions, batch_size, num_hidden)")
        dh0, dc0 = [None] * L, [None] * L
        grad = self._parameter.grad
        for layer in range(L - 1, -1, -1):
            ctx, pieces, mask = layers[layer]
            if mask is not None and d is not None:
                d = d * mask
            sl = slice(layer * D, (layer + 1) * D)
            dhN = None if ds[0] is None else ds[0][sl]
            dcN = None if (mode != "lstm" or ds[1] is None) else ds[1][sl]
            d, dh0[layer], dc0[layer], dw = F.backward(ctx, d, dhN, dcN)
            for src, dst, size in pieces:
                grad[src : src + size] += dw[dst : dst + size]
        d_begin = [np.concatenate(dh0)] + ([np.concatenate(dc0)] if mode == "lstm" else [])
        return _as_list_like(d, rec["was_list"], rec["axis"]), d_begin

    def _bwd_unroll(self, rec, d_outputs, d_states):
        ctx = rec["ctx"]
        dtype = np.dtype(ctx.plan.dtype)
        dy = _seq_grad(d_outputs, rec["y_shape"], rec["axis"], dtype)
        n = len(self.state_info) if self._get_next_state else 0
        ds = _state_grads(d_states, n, "FusedRNNCell") + [None, None]
        ds = [None if g is None else chk.array(f"d_states[{i}]", g, dtype)
              for i, g in enumerate(ds)]
        state_shape = (ctx.plan.num_layers * (2 if ctx.plan.bidirectional else 1), ctx.x.shape[1],
                       self._num_hidden)
        for i, g in enumerate(ds[:n]):
            if g is not None:
                chk.shape(f"d_states[{i}]", g, state_shape,
                          "(num_layers * directions, batch_size, num_hidden)")
        dx, dh0, dc0, dw = F.backward(ctx, dy, ds[0], ds[1] if self._mode == "lstm" else None)
        self._parameter.grad += dw
        d_begin = [dh0] + ([dc0] if dc0 is not None else [])
        return _as_list_like(dx, rec["was_list"], rec["axis"]), d_begin

    def unfuse(self) -> "SequentialRNNCell":
        """The equivalent stack of one-layer cells (MXNet's unfuse: cells prefixed '{prefix}l0_',
        '{prefix}r0_', ...; BidirectionalCell per layer when bidirectional; DropoutCell between
        layers when dropout > 0), holding this cell's weights when it has them."""
        stack = SequentialRNNCell()
        H = self._num_hidden
        get_cell = {
            "rnn_relu": lambda p: RNNCell(H, activation="relu", prefix=p),
            "rnn_tanh": lambda p: RNNCell(H, activation="tanh", prefix=p),
            "lstm": lambda p: LSTMCell(H, prefix=p),
            "gru": lambda p: GRUCell(H, prefix=p),
        }[self._mode]
        for i in range(self._num_layers):
            if self._bidirectional:
                stack.add(BidirectionalCell(get_cell("%sl%d_" % (self._prefix, i)),
                                            get_cell("%sr%d_" % (self._prefix, i)),
                                            output_prefix="%sbi_l%d_" % (self._prefix, i)))
            else:
                stack.add(get_cell("%sl%d_" % (self._prefix, i)))
            if self._dropout > 0 and i != self._num_layers - 1:
                stack.add(DropoutCell(self._dropout, prefix="%s_dropout%d_" % (self._prefix, i)))
        if self._parameter.data is not None:
            args = self.unpack_weights({self._parameter.name: self._parameter.data})
            stack.params.load(stack.pack_weights(args))
        return stack


# --------------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------------


def _cells_state_info(cells):
    return sum([c.state_info for c in cells], [])


def _cells_begin_state(cells, **kwargs):
    return sum([c.begin_state(**kwargs) for c in cells], [])


def _cells_unpack_weights(cells, args):
    for cell in cells:
        args = cell.unpack_weights(args)
    return args


def _cells_pack_weights(cells, args):
    for cell in cells:
        args = cell.pack_weights(args)
    return args


def _check_cell(cell):
    if not isinstance(cell, BaseRNNCell):
        raise TypeError(f"expected an RNN cell (a BaseRNNCell), got {type(cell).__name__}")
    return cell


_ATOMIC_BACKWARD = (_GateCell, FusedRNNCell)  # check everything before changing anything


class SequentialRNNCell(BaseRNNCell):
    """Cells stacked: each one's output is the next one's input (MXNet's SequentialRNNCell).
    ``unroll`` unrolls each child over the whole sequence in turn (one fused call per built-in
    child)."""

    def __init__(self, params=None):
        super().__init__(prefix="", params=params)
        self._override_cell_params = params is not None
        self._cells = []

    def add(self, cell) -> None:
        """Appends a cell to the stack."""
        _check_cell(cell)
        if self._override_cell_params:
            if not cell._own_params:
                raise ValueError("Either specify params for SequentialRNNCell or child cells, "
                                 "not both.")
            cell.params._params.update(self.params._params)
        self._cells.append(cell)
        self.params._params.update(cell.params._params)

    @property
    def state_info(self):
        return _cells_state_info(self._cells)

    def begin_state(self, **kwargs):  # pylint: disable=arguments-differ
        if self._modified:
            raise RuntimeError("After applying modifier cells (e.g. ZoneoutCell) the base cell "
                               "cannot be called directly. Call the modifier cell instead.")
        return _cells_begin_state(self._cells, **kwargs)

    def unpack_weights(self, args):
        return _cells_unpack_weights(self._cells, args)

    def pack_weights(self, args):
        return _cells_pack_weights(self._cells, args)

    def _split(self, states, who):
        states = _flatten(states)
        counts = [len(c.state_info) for c in self._cells]
        if len(states) != sum(counts):
            raise ValueError(f"{who}: expected {sum(counts)} state arrays for the stack "
                             f"({counts} per cell), got {len(states)}")
        out, p = [], 0
        for n in counts:
            out.append(states[p : p + n])
            p += n
        return out

    def __call__(self, inputs, states, training: bool = False):
        self._counter += 1
        for cell in self._cells:
            if isinstance(cell, BidirectionalCell):
                raise NotImplementedError("Bidirectional cannot be stepped. Please use unroll")
        next_states = []
        for cell, state in zip(self._cells, self._split(states, "states")):
            inputs, state = _call(cell, inputs, state, training)
            next_states.append(_flatten(state))
        if training:
            self._tape.append(("seq", dict(counts=[len(s) for s in next_states])))
        return inputs, sum(next_states, [])

    def unroll(self, length, inputs, begin_state=None, layout="NTC", merge_outputs=None,
               training: bool = False):
        self.reset()
        merge_outputs = _check_merge(merge_outputs)
        num_cells = len(self._cells)
        if num_cells == 0:
            raise ValueError("SequentialRNNCell: no cells; add() some first")
        if begin_state is None:
            x, axis, _ = _seq_to_array(length, inputs, layout)
            begin_state = self.begin_state(batch_size=x.shape[1 - axis], dtype=x.dtype)
        next_states, counts = [], []
        split = self._split(begin_state, "begin_state")
        for i, (cell, states) in enumerate(zip(self._cells, split)):
            # inner children hand one merged array on (no split into T arrays and re-stack)
            inputs, states = _unroll(cell, length, inputs, states, layout,
                                     True if i < num_cells - 1 else merge_outputs, training)
            next_states.extend(states)
            counts.append(len(_flatten(states)))
        if training:
            self._tape.append(("seq", dict(counts=counts)))
        return inputs, next_states

    def _bwd_seq(self, rec, d_outputs, d_states):
        counts = rec["counts"]  # the states each child returned
        ds = _state_grads(d_states, sum(counts), "SequentialRNNCell")
        slices, p = [], 0
        for n in counts:
            slices.append(ds[p : p + n])
            p += n
        d = d_outputs
        d_begin = [None] * len(self._cells)
        for i in range(len(self._cells) - 1, -1, -1):
            d, d_begin[i] = self._cells[i].backward(d, slices[i])
        return d, sum([_flatten(s) for s in d_begin], [])


class BidirectionalCell(BaseRNNCell):
    """Runs l_cell forward and r_cell backward in time; outputs concatenated on the feature axis
    (width H_l + H_r); states ``[l_states, r_states]`` (MXNet's BidirectionalCell). Cannot be
    stepped."""

    def __init__(self, l_cell, r_cell, params=None, output_prefix="bi_"):
        super().__init__("", params=params)
        _check_cell(l_cell), _check_cell(r_cell)
        self._output_prefix = output_prefix
        self._override_cell_params = params is not None
        if self._override_cell_params:
            if not (l_cell._own_params and r_cell._own_params):
                raise ValueError("Either specify params for BidirectionalCell or child cells, "
                                 "not both.")
            l_cell.params._params.update(self.params._params)
            r_cell.params._params.update(self.params._params)
        self.params._params.update(l_cell.params._params)
        self.params._params.update(r_cell.params._params)
        self._cells = [l_cell, r_cell]

    def unpack_weights(self, args):
        return _cells_unpack_weights(self._cells, args)

    def pack_weights(self, args):
        return _cells_pack_weights(self._cells, args)

    def __call__(self, inputs, states, training: bool = False):
        raise NotImplementedError("Bidirectional cannot be stepped. Please use unroll")

    @property
    def state_info(self):
        return _cells_state_info(self._cells)

    def begin_state(self, **kwargs):  # pylint: disable=arguments-differ
        if self._modified:
            raise RuntimeError("After applying modifier cells (e.g. DropoutCell) the base cell "
                               "cannot be called directly. Call the modifier cell instead.")
        return _cells_begin_state(self._cells, **kwargs)

    def unroll(self, length, inputs, begin_state=None, layout="NTC", merge_outputs=None,
               training: bool = False):
        self.reset()
        merge_outputs = _check_merge(merge_outputs)
        x, axis, was_list = _seq_to_array(length, inputs, layout)
        T = x.shape[axis]
        if begin_state is None:
            begin_state = self.begin_state(batch_size=x.shape[1 - axis], dtype=x.dtype)
        states = _flatten(begin_state)
        l_cell, r_cell = self._cells
        nl, nr = len(l_cell.state_info), len(r_cell.state_info)
        if len(states) != nl + nr:
            raise ValueError(f"begin_state: expected {nl + nr} state arrays ({nl} for l_cell, "
                             f"{nr} for r_cell), got {len(states)}")
        l_out, l_states = _unroll(l_cell, T, x, states[:nl], layout, True, training)
        r_out, r_states = _unroll(r_cell, T, np.flip(x, axis), states[nl:], layout, True, training)
        l_out = _as_seq_array(l_out, axis)
        r_out = np.flip(_as_seq_array(r_out, axis), axis)
        y = np.concatenate([l_out, r_out], axis=2)
        if training:
            self._tape.append(("bi", dict(axis=axis, was_list=was_list, nl=len(_flatten(l_states)),
                                          nr=len(_flatten(r_states)), hl=l_out.shape[2],
                                          y_shape=y.shape, dtype=y.dtype)))
        return _format(y, axis, merge_outputs, was_list), [l_states, r_states]

    def _bwd_bi(self, rec, d_outputs, d_states):
        axis, hl = rec["axis"], rec["hl"]
        dy = _seq_grad(d_outputs, rec["y_shape"], axis, rec["dtype"])
        dl = None if dy is None else dy[..., :hl]
        dr = None if dy is None else np.flip(dy[..., hl:], axis)
        ds = _state_grads(d_states, rec["nl"] + rec["nr"], "BidirectionalCell")
        l_cell, r_cell = self._cells
        dxr, dsr = r_cell.backward(dr, ds[rec["nl"]:])  # the reverse of the forward order
        dxl, dsl = l_cell.backward(dl, ds[: rec["nl"]])
        dx = _as_seq_array(dxl, axis) + np.flip(_as_seq_array(dxr, axis), axis)
        return _as_list_like(dx, rec["was_list"], axis), _flatten(dsl) + _flatten(dsr)


class DropoutCell(BaseRNNCell):
    """Dropout on the input (MXNet's DropoutCell): in training, each element is zeroed with
    probability ``dropout`` and the rest scaled by 1/(1 - dropout); identity otherwise. No states.
    ``rng`` (not in MXNet): a numpy Generator or seed for the masks."""

    def __init__(self, dropout, prefix="dropout_", params=None, *, rng=None):
        super().__init__(prefix, params)
        if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, numbers.Real):
            raise TypeError("dropout probability must be a number")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.rng = np.random.default_rng(rng)

    @property
    def state_info(self):
        return []

    def _apply(self, x, training):
        x = _float("inputs", x)
        if training and self.dropout > 0:
            keep = self.rng.random(x.shape) >= self.dropout
            mask = keep.astype(x.dtype) / x.dtype.type(1.0 - self.dropout)
            return x * mask, mask
        return x, None

    def __call__(self, inputs, states, training: bool = False):
        out, mask = self._apply(inputs, training)
        if training:
            self._tape.append(("drop", dict(mask=mask, shape=out.shape, dtype=out.dtype,
                                            axis=None, was_list=False)))
        return out, states

    def unroll(self, length, inputs, begin_state=None, layout="NTC", merge_outputs=None,
               training: bool = False):
        self.reset()
        merge_outputs = _check_merge(merge_outputs)
        x, axis, was_list = _seq_to_array(length, inputs, layout)
        out, mask = self._apply(x, training)
        if training:
            self._tape.append(("drop", dict(mask=mask, shape=out.shape, dtype=out.dtype, axis=axis,
                                            was_list=was_list)))
        return _format(out, axis, merge_outputs, was_list), []

    def _bwd_drop(self, rec, d_outputs, d_states):
        axis = rec["axis"]
        if axis is None:
            d = _grad("d_output", d_outputs, rec["shape"], rec["dtype"])  # one step's
            d = np.zeros(rec["shape"], rec["dtype"]) if d is None else d
        else:
            d = _seq_grad(d_outputs, rec["shape"], axis, rec["dtype"])
            d = np.zeros(rec["shape"], rec["dtype"]) if d is None else d
        if rec["mask"] is not None:
            d = d * rec["mask"]
        if axis is not None:
            d = _as_list_like(d, rec["was_list"], axis)
        return d, _flatten(d_states)


class ModifierCell(BaseRNNCell):
    """Base class of the cells that modify a base cell (MXNet's ModifierCell). After wrapping, the
    base cell should not be used directly."""

    def __init__(self, base_cell):
        super().__init__()
        _check_cell(base_cell)
        base_cell._modified = True
        self.base_cell = base_cell

    @property
    def params(self):
        self._own_params = False
        return self.base_cell.params

    @property
    def state_info(self):
        return self.base_cell.state_info

    def begin_state(self, func=np.zeros, **kwargs):  # pylint: disable=arguments-differ
        if self._modified:
            raise RuntimeError("After applying modifier cells (e.g. DropoutCell) the base cell "
                               "cannot be called directly. Call the modifier cell instead.")
        self.base_cell._modified = False
        try:
            return self.base_cell.begin_state(func=func, **kwargs)
        finally:
            self.base_cell._modified = True

    def unpack_weights(self, args):
        return self.base_cell.unpack_weights(args)

    def pack_weights(self, args):
        return self.base_cell.pack_weights(args)

    def reset(self):
        super().reset()
        if hasattr(self, "base_cell"):
            self.base_cell.reset()

    def __call__(self, inputs, states, training: bool = False):
        raise NotImplementedError

    def _bwd_chain(self, rec, d_outputs, d_states):
        return rec["gate"].backward(d_outputs, d_states)


def _fused_chain(cell):
    """(gate_cell, core_options) when ``cell`` -- modifier cells around a built-in gate cell --
    runs as one fused call, else None. The core applies zoneout first, then the residual sum, so a
    ZoneoutCell with output zoneout around a ResidualCell (which zones the sum) is not fusable."""
    if type(cell) in _FUSABLE:
        return cell, {}
    inner = _fused_chain(getattr(cell, "base_cell", None)) if isinstance(cell, ModifierCell) else None
    if inner is None:
        return None
    gate, opts = inner
    if type(cell) is ZoneoutCell:
        if "zoneout_states" in opts or (opts.get("residual") and cell.zoneout_outputs > 0):
            return None
        return gate, dict(opts, zoneout_outputs=cell.zoneout_outputs,
                          zoneout_states=cell.zoneout_states)
    if type(cell) is ResidualCell and not opts.get("residual"):
        return gate, dict(opts, residual=True)
    return None


def _unroll_chain(cell, chain, length, inputs, begin_state, layout, merge_outputs, training,
                  check=None):
    """Runs a fusable chain (``_fused_chain``) as one fused call of its gate cell; ``cell``'s
    backward then goes straight to the gate cell's."""
    gate, opts = chain
    if training and (opts.get("zoneout_outputs", 0) > 0 or opts.get("zoneout_states", 0) > 0):
        opts = dict(opts, seed=int(_zoneout_rng(cell).integers(0, 2**62)))
    gate._modified = False
    try:
        outputs, states = gate._fused_unroll(length, inputs, begin_state, layout, merge_outputs,
                                             training, opts, check)
    finally:
        gate._modified = True
    if training:
        cell._tape.append(("chain", dict(gate=gate)))
    return outputs, states


def _zoneout_rng(cell):
    """The generator of the outermost ZoneoutCell of a chain: it seeds the fused masks."""
    while not isinstance(cell, ZoneoutCell):
        cell = cell.base_cell
    return cell.rng


def _contains_bidirectional(cell) -> bool:
    if isinstance(cell, BidirectionalCell):
        return True
    if isinstance(cell, ModifierCell):
        return _contains_bidirectional(cell.base_cell)
    return any(_contains_bidirectional(c) for c in getattr(cell, "_cells", ()))


class ZoneoutCell(ModifierCell):
    """Zoneout on a base cell (MXNet's ZoneoutCell): in training, each element of the output keeps
    the previous step's output with probability ``zoneout_outputs`` (zero before the first step),
    and each state element keeps its previous value with probability ``zoneout_states``; no
    effect otherwise. Around a built-in cell ``unroll`` is one fused call (masks from a seed drawn
    from ``rng``); steps (``cell(x, states)``) and other base cells draw masks from ``rng`` in
    Python. ``rng`` (not in MXNet): a numpy Generator or seed for the masks."""

    def __init__(self, base_cell, zoneout_outputs=0.0, zoneout_states=0.0, *, rng=None):
        if isinstance(base_cell, FusedRNNCell):
            raise ValueError("FusedRNNCell doesn't support zoneout. Please unfuse first.")
        if isinstance(base_cell, BidirectionalCell):
            raise ValueError("BidirectionalCell doesn't support zoneout since it doesn't support "
                             "step. Please add ZoneoutCell to the cells underneath instead.")
        if _contains_bidirectional(base_cell):
            raise ValueError("Bidirectional SequentialRNNCell doesn't support zoneout. Please add "
                             "ZoneoutCell to the cells underneath instead.")
        for name, p in (("zoneout_outputs", zoneout_outputs), ("zoneout_states", zoneout_states)):
            if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) \
                    or not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {p!r}")
        super().__init__(base_cell)
        self.zoneout_outputs = float(zoneout_outputs)
        self.zoneout_states = float(zoneout_states)
        self.prev_output = None
        self.rng = np.random.default_rng(rng)
        self._carry = None

    def reset(self):
        super().reset()
        self.prev_output = None

    def unroll(self, length, inputs, begin_state=None, layout="NTC", merge_outputs=None,
               training: bool = False):
        chain = _fused_chain(self)
        if chain is None:  # a user-written or composite base cell: Python-level steps
            return super().unroll(length, inputs, begin_state, layout, merge_outputs, training)
        self.reset()
        outputs, states = _unroll_chain(self, chain, length, inputs, begin_state, layout,
                                        merge_outputs, training)
        axis = _check_layout(layout)
        last = outputs[-1] if isinstance(outputs, list) else np.take(outputs, -1, axis=axis)
        self.prev_output = last if length > 0 else None
        return outputs, states

    def __call__(self, inputs, states, training: bool = False):
        cell, p_outputs, p_states = self.base_cell, self.zoneout_outputs, self.zoneout_states
        states = _flatten(states)
        next_output, next_states = _call(cell, inputs, states, training)
        next_states = _flatten(next_states)
        had_prev = self.prev_output is not None
        keep_o, keep_s = None, [None] * len(next_states)
        output = next_output
        if training and p_outputs != 0.0:
            keep_o = self.rng.random(next_output.shape) >= p_outputs  # True: take the new value
            prev = self.prev_output if had_prev else np.zeros_like(next_output)
            output = np.where(keep_o, next_output, prev)
        new_states = next_states
        if training and p_states != 0.0:
            keep_s = [self.rng.random(s.shape) >= p_states for s in next_states]
            new_states = [np.where(k, n, o) for k, n, o in zip(keep_s, next_states, states)]
        self.prev_output = output
        if training:
            self._tape.append(("zone", dict(keep_o=keep_o, keep_s=keep_s, had_prev=had_prev,
                                            shape=np.shape(next_output), dtype=next_output.dtype)))
        return output, new_states

    def _bwd_zone(self, rec, d_output, d_states):
        d_output = _grad("d_output", d_output, rec["shape"], rec["dtype"])
        ds = _state_grads(d_states, len(rec["keep_s"]), "ZoneoutCell")
        ds = [g if k is None else _grad(f"d_states[{i}]", g, k.shape, None)
              for i, (k, g) in enumerate(zip(rec["keep_s"], ds))]
        carry, self._carry = self._carry, None
        d_out = _add(d_output, carry)
        keep_o = rec["keep_o"]
        d_next = d_out
        if keep_o is not None and d_out is not None:
            d_next = np.where(keep_o, d_out, 0)
            if rec["had_prev"]:  # the kept elements came from the previous step's output
                self._carry = np.where(keep_o, 0, d_out)
        d_next_s, d_old_s = [], []
        for k, g in zip(rec["keep_s"], ds):
            if k is None or g is None:
                d_next_s.append(g)
                d_old_s.append(None)
            else:
                d_next_s.append(np.where(k, g, 0))
                d_old_s.append(np.where(k, 0, g))
        d_in, d_before = self.base_cell.backward(d_next, d_next_s)
        d_before = [_add(a, b) for a, b in zip(_flatten(d_before), d_old_s)]
        return d_in, d_before


class ResidualCell(ModifierCell):
    """Output = base cell's output + input (MXNet's ResidualCell, Wu et al. 2016). Around a built-in
    cell (or a ZoneoutCell around one) ``unroll`` is one fused call with the sum in the kernel's
    step; otherwise the base cell's ``unroll`` plus the sum."""

    def __init__(self, base_cell):
        super().__init__(base_cell)

    def _check_width(self, out_width, in_width):
        if out_width != in_width:
            raise ValueError(f"ResidualCell: the base cell's output width {out_width} differs "
                             f"from the input width {in_width}; they must be equal to be added")

    def __call__(self, inputs, states, training: bool = False):
        x = _float("inputs", inputs)
        output, states = _call(self.base_cell, x, states, training)
        self._check_width(np.shape(output)[-1], x.shape[-1])
        if training:
            self._tape.append(("res_step", {}))
        return output + x, states

    def unroll(self, length, inputs, begin_state=None, layout="NTC", merge_outputs=None,
               training: bool = False):
        self.reset()
        chain = _fused_chain(self)
        if chain is not None:  # one fused call: the sum happens in the kernel's step
            gate = chain[0]

            def check(x):
                self._check_width(gate._num_hidden, x.shape[-1])

            return _unroll_chain(self, chain, length, inputs, begin_state, layout, merge_outputs,
                                 training, check)
        merge_outputs = _check_merge(merge_outputs)
        self.base_cell._modified = False
        try:
            outputs, states = _unroll(self.base_cell, length, inputs, begin_state, layout,
                                      merge_outputs, training)
        finally:
            self.base_cell._modified = True
        x, axis, was_list = _seq_to_array(length, inputs, layout)
        merge = isinstance(outputs, np.ndarray) if merge_outputs is None else merge_outputs
        out_arr = _as_seq_array(outputs, axis)
        self._check_width(out_arr.shape[-1], x.shape[-1])
        y = out_arr + x
        if training:
            self._tape.append(("res", dict(axis=axis, was_list=was_list, merge=merge,
                                           y_shape=y.shape, dtype=y.dtype)))
        return (y if merge else _steps(y, axis)), states

    def _bwd_res_step(self, rec, d_output, d_states):
        d_in, d_before = self.base_cell.backward(d_output, d_states)
        return (d_in if d_output is None else d_in + d_output), d_before

    def _bwd_res(self, rec, d_outputs, d_states):
        axis = rec["axis"]
        dy = _seq_grad(d_outputs, rec["y_shape"], axis, rec["dtype"])
        base_dy = None if dy is None else (dy if rec["merge"] else _steps(dy, axis))
        d_in, d_before = self.base_cell.backward(base_dy, d_states)
        d_in = _seq_grad(d_in, rec["y_shape"], axis, rec["dtype"], "d_inputs")
        if dy is not None:
            d_in = d_in + dy
        return _as_list_like(d_in, rec["was_list"], axis), d_before
