"""Keras-style recurrent layers on the fused kernels: ``LSTM``, ``GRU``, ``SimpleRNN`` and
``Bidirectional``, NumPy in and out, with an explicit ``backward``.

The layers follow Keras 3 (``keras.layers.LSTM`` / ``GRU`` / ``SimpleRNN`` / ``Bidirectional``):
the same argument names and defaults, batch-major inputs ``(N, T, C)``, the same return structure,
masks, ``go_backwards``, ``stateful`` and initial states, and ``get_weights`` / ``set_weights`` in
Keras's list layout, so a real Keras layer's weights load and give the same outputs::

    import numpy as np, fusedrnn
    lstm = fusedrnn.LSTM(16, return_sequences=True, return_state=True, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 10, 8)).astype(np.float32)   # (N, T, C)
    y, h, c = lstm(x, training=True)                # y (4, 10, 16), h and c (4, 16)
    dx = lstm.backward(np.ones_like(y))             # gradient of sum(y) w.r.t. x
    lstm.grads                                      # weight gradients, Keras list layout

Weights: each layer keeps ONE flat vector in fusedrnn's layout (``flat_weights``), built lazily on
the first call (or by ``build``) from the input's feature size. ``get_weights`` / ``set_weights``
convert to and from Keras's list (``kernel (C, G*U)``, ``recurrent_kernel (U, G*U)``, ``bias``) with
``fusedrnn.converters``. Where Keras has one bias vector (LSTM, SimpleRNN, GRU with
``reset_after=False``) and the flat vector two (``b_ih``, ``b_hh``), the Keras bias lives in
``b_ih`` and ``b_hh`` stays zero: ``flat_grad`` reports zero for ``b_hh`` (so that an update
``flat -= lr * flat_grad`` is exactly Keras's update and ``b_hh`` stays zero), and
``count_params`` counts what Keras counts. With ``use_bias=False`` both biases are zero and their
gradients exactly zero.

Training and backward: ``layer(x, training=True)`` keeps what ``backward`` needs (the context of
the functional API); ``layer.backward(d_output, d_states=None)`` differentiates that call (the most
recent call with ``training=True``, whatever inference calls came after it). It returns the
gradient w.r.t. the inputs, or ``(dx, d_initial_state)`` when that call was given an
``initial_state``, and stores the weight gradient as ``layer.grads`` (Keras list layout) and
``layer.flat_grad`` (flat layout). As with the functional API, the forward call keeps references:
do not modify the inputs or the weights in place between the forward call and ``backward``
(``set_weights`` and the ``flat_weights`` setter install new arrays and are safe).

Keras behaviours kept (checked against Keras 3.15.1): with ``return_state`` the result is a tuple
``(output, *states)``; ``go_backwards`` outputs the sequence in the order it was processed
(reversed); the last output (``return_sequences=False``) is the output of the last step processed,
which is the final state, except with ``zero_output_for_mask=True`` where a masked last step
(e.g. left padding read backwards) makes it zero; ``Bidirectional`` sets ``zero_output_for_mask``
to ``return_sequences`` on both of its layers.

Keras's generic RNN API is here too: ``LSTMCell``, ``GRUCell`` and ``SimpleRNNCell`` (one step on
the fused core, T = 1; each keeps a layer of its kind as its core, so weights, initializers and
get_weights / set_weights are the layers'), ``StackedRNNCells`` and ``RNN(cell)``: built-in cells
and stacks of them run whole sequences fused (one core call per cell, through the layers above);
any other cell following Keras's protocol (``state_size``, ``call(inputs, states)``) runs in a
Python loop over time, nested inputs and states included, differentiable when the cell has a
``vjp``. See ``RNN``.

Differences from Keras, on purpose:
- ``unroll`` picks the core's executor: False the while-loop executor, True the fully unrolled
  one (its schedule fixed per shape, the directions of a Bidirectional layer side by side). Both
  give the same results, those of Keras's default ``unroll=False`` path, which differs from its
  ``unroll=True`` path only at masked first steps (there Keras's unrolled path outputs zeros).
- A right-padded mask with ``zero_output_for_mask`` (``Bidirectional`` with
  ``return_sequences``) runs as per-sample lengths: the batch shrinks as samples end.
- ``seed`` also seeds the NumPy generator that the built-in initializers draw from (Keras seeds
  only dropout with it), so two layers made with the same seed get the same weights. Built-in
  initializers follow Keras's distributions (not Keras's random streams).
- ``dropout`` / ``recurrent_dropout`` must lie in [0, 1) (Keras clamps silently). They apply in
  training calls only, through the fused kernel's variational dropout, as Keras: one input mask
  (N, C) per sequence, scaled by 1/(1 - rate), and, with ``recurrent_dropout > 0`` (where Keras'
  LSTM and GRU switch to ``implementation=1``), one input mask and one recurrent mask (N, U) per
  gate (4 or 3 of each); new masks every call, drawn from the layer's ``seed`` (layers with the
  same seed draw the same masks). Masks are random in both, so the semantics agree, not the
  values.
- ``set_weights`` on an unbuilt layer builds it from the kernel's shape (Keras refuses).
- Regularizers and constraints are accepted only as None.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence

import numpy as np

from . import _checks as chk
from . import converters as cv
from . import functional
from .layout import param_layout, param_size

__all__ = ["LSTM", "GRU", "SimpleRNN", "Bidirectional", "LSTMCell", "GRUCell", "SimpleRNNCell",
           "StackedRNNCells", "RNN"]


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------

_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def _check_dtype(value) -> np.dtype:
    if value is None:
        return _DTYPES["float32"]
    try:
        dt = np.dtype(value)
    except TypeError:
        raise TypeError(f"dtype: expected 'float32' or 'float64', got {value!r}") from None
    if dt not in chk.FLOAT_DTYPES:
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {value!r}")
    return dt


def _check_rate(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float in [0, 1), got {value!r}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1), got {value!r}")
    return value


def _check_seed(value):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"seed: expected None or a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"seed: expected None or a non-negative integer, got {value!r}")
    return int(value)


# Keras' names of the kernels' activations (softplus is MXNet's softrelu).
_KERAS_ACTIVATIONS = {"tanh": "tanh", "sigmoid": "sigmoid", "hard_sigmoid": "hard_sigmoid",
                      "relu": "relu", "linear": "linear", "softplus": "softrelu",
                      "softsign": "softsign"}


def _activation_name(argname: str, value) -> str:
    """An activation as the kernel names it, from a Keras name (_KERAS_ACTIVATIONS), None (Keras:
    linear), or a function of such a name (keras.activations.tanh, jnp.tanh, ...)."""
    names = ", ".join(map(repr, _KERAS_ACTIVATIONS))
    if value is None:
        return "linear"
    if isinstance(value, str):
        if value in _KERAS_ACTIVATIONS:
            return _KERAS_ACTIVATIONS[value]
        raise ValueError(f"{argname}: expected one of {names} (or a function of that name), "
                         f"got {value!r}")
    name = getattr(value, "__name__", None)
    if callable(value) and name in _KERAS_ACTIVATIONS:
        return _KERAS_ACTIVATIONS[name]
    raise TypeError(f"{argname}: expected one of {names} (or a function of that name), got "
                    f"{value!r}")


# --------------------------------------------------------------------------------------------------
# Initializers (Keras's distributions, drawn from a NumPy generator)
# --------------------------------------------------------------------------------------------------


def _fans(shape):
    if len(shape) == 1:
        return shape[0], shape[0]
    return shape[0], shape[1]


def _truncated_normal(rng, shape, stddev):
    """Normal(0, stddev) truncated to two standard deviations (Keras's truncated_normal)."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * stddev


def _variance_scaling(scale, mode, distribution):
    def init(shape, rng):
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[mode]
        s = scale / max(1.0, n)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * s)
            return rng.uniform(-limit, limit, shape)
        return _truncated_normal(rng, shape, math.sqrt(s) / 0.87962566103423978)
    return init


def _orthogonal(shape, rng):
    if len(shape) < 2:
        raise ValueError(f"orthogonal: needs a 2-D shape, got {tuple(shape)}")
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return q.reshape(shape)


def _identity(shape, rng):
    if len(shape) != 2:
        raise ValueError(f"identity: needs a 2-D shape, got {tuple(shape)}")
    return np.eye(*shape)


_INITIALIZERS = {
    "zeros": lambda shape, rng: np.zeros(shape),
    "ones": lambda shape, rng: np.ones(shape),
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": _variance_scaling(2.0, "fan_in", "normal"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "normal"),
    "orthogonal": _orthogonal,
    "identity": _identity,
    "random_uniform": lambda shape, rng: rng.uniform(-0.05, 0.05, shape),
    "random_normal": lambda shape, rng: rng.normal(0.0, 0.05, shape),
    "truncated_normal": lambda shape, rng: _truncated_normal(rng, shape, 0.05),
}
_ALIASES = {  # Keras's other spellings
    "zero": "zeros", "one": "ones", "uniform": "random_uniform", "normal": "random_normal",
    "glorotuniform": "glorot_uniform", "glorotnormal": "glorot_normal",
    "heuniform": "he_uniform", "henormal": "he_normal", "lecununiform": "lecun_uniform",
    "lecunnormal": "lecun_normal", "randomuniform": "random_uniform",
    "randomnormal": "random_normal", "truncatednormal": "truncated_normal",
}


def _check_initializer(argname: str, value):
    """A known initializer name (canonical spelling) or a callable ``init(shape, dtype=None)``."""
    if isinstance(value, str):
        key = value.lower()
        key = _ALIASES.get(key, key)
        if key in _INITIALIZERS:
            return key
        raise ValueError(f"{argname}: expected one of {', '.join(map(repr, _INITIALIZERS))} or a "
                         f"callable init(shape, dtype=None), got {value!r}")
    if callable(value):
        return value
    raise TypeError(f"{argname}: expected an initializer name or a callable init(shape, "
                    f"dtype=None), got {value!r}")


@functools.lru_cache(maxsize=256)
def _pieces_of(mode: str, input_dim: int, units: int) -> dict:
    """The flat vector's pieces of a one-layer network by (kind, part), computed once per shape."""
    return {(p.kind, p.part): p for p in param_layout(mode, input_dim, units)}


def _takes_dtype(fn) -> bool:
    return chk.accepts_keyword(fn, "dtype", unknown=True)


def _draw(argname: str, init, shape, dtype, rng) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    if isinstance(init, str):
        value = _INITIALIZERS[init](shape, rng)
    else:
        value = init(shape, dtype=str(dtype)) if _takes_dtype(init) else init(shape)
    value = np.asarray(value, dtype=dtype)
    if value.shape != shape:
        raise ValueError(
            f"{argname}: the initializer returned shape {value.shape}, expected {shape}")
    return value


_CALL_KEYWORDS_NONE = ("kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
                       "activity_regularizer", "kernel_constraint", "recurrent_constraint",
                       "bias_constraint")


def _bool_mask(mask, N, T):
    """mask -> (N, T) bools, or None. Numbers count as True when non-zero, as in Keras; a NaN,
    which is neither, is refused."""
    if mask is None:
        return None
    m = chk.array("mask", mask)
    if m.dtype != np.bool_:
        if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
            raise TypeError(f"mask: expected bools (N, T), got dtype {m.dtype}")
        if m.dtype.kind == "f" and np.isnan(m).any():
            where = tuple(int(i) for i in np.argwhere(np.isnan(m))[0])
            raise ValueError(f"mask: expected bools (or numbers, non-zero meaning True), got NaN "
                             f"at {where}")
        m = m != 0
    chk.shape("mask", m, (N, T), "(N, T)")
    return m


# --------------------------------------------------------------------------------------------------
# The single-direction layers
# --------------------------------------------------------------------------------------------------



class _TrainRecord:
    """What backward needs from the last training call."""

    __slots__ = ("ctx", "N", "T", "had_initial_state", "output_via_dhN")

    def __init__(self, ctx, N, T, had_initial_state, output_via_dhN):
        self.ctx, self.N, self.T = ctx, N, T
        self.had_initial_state, self.output_via_dhN = had_initial_state, output_via_dhN


class _RNN:
    """Shared machinery of LSTM, GRU and SimpleRNN (see the module docstring)."""

    _KIND = ""  # "lstm", "gru" or "rnn"
    _N_STATES = 1

    def __init__(self, units, *, activation, recurrent_activation, use_bias, kernel_initializer,
                 recurrent_initializer, bias_initializer, unit_forget_bias, reset_after, dropout,
                 recurrent_dropout, seed, return_sequences, return_state, go_backwards, stateful,
                 unroll, zero_output_for_mask, dtype, name, extra):
        cls = type(self).__name__
        for key, value in extra.items():
            if key in _CALL_KEYWORDS_NONE:
                if value is not None:
                    raise NotImplementedError(f"{key}: {cls} supports only None, got {value!r}")
            elif key == "use_cudnn":
                if value not in ("auto", True, False):
                    raise ValueError(f"use_cudnn: expected 'auto', True or False, got {value!r}")
            elif key == "implementation":
                if value not in (1, 2):
                    raise ValueError(f"implementation: expected 1 or 2, got {value!r}")
            else:
                raise TypeError(f"{cls}: unexpected keyword argument {key!r}")
        self._extra = dict(extra)
        self.units = chk.size("units", units)
        self.activation = _activation_name("activation", activation)
        self.recurrent_activation = (None if recurrent_activation is None and self._KIND == "rnn"
                                     else _activation_name("recurrent_activation",
                                                           recurrent_activation))
        self.use_bias = chk.flag("use_bias", use_bias)
        self.kernel_initializer = _check_initializer("kernel_initializer", kernel_initializer)
        self.recurrent_initializer = _check_initializer("recurrent_initializer",
                                                        recurrent_initializer)
        self.bias_initializer = _check_initializer("bias_initializer", bias_initializer)
        self.unit_forget_bias = chk.flag("unit_forget_bias", unit_forget_bias)
        self.reset_after = chk.flag("reset_after", reset_after)
        self.dropout = _check_rate("dropout", dropout)
        self.recurrent_dropout = _check_rate("recurrent_dropout", recurrent_dropout)
        self.seed = _check_seed(seed)
        self.return_sequences = chk.flag("return_sequences", return_sequences)
        self.return_state = chk.flag("return_state", return_state)
        self.go_backwards = chk.flag("go_backwards", go_backwards)
        self.stateful = chk.flag("stateful", stateful)
        self.unroll = chk.flag("unroll", unroll)
        self.zero_output_for_mask = chk.flag("zero_output_for_mask", zero_output_for_mask)
        self.dtype = _check_dtype(dtype)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name: expected a string or None, got {name!r}")
        self.name = name if name is not None else cls.lower()
        self._stream = 0  # Bidirectional gives its backward copy stream 1 (other random draws)
        self._mode = "rnn_tanh" if self._KIND == "rnn" else self._KIND
        self.input_dim = None
        self._flat = None
        self._states = None
        self._batch_size = None
        self._record = None
        self._dropout_rng = None
        self.grads = None
        self.flat_grad = None

    # ----- configuration ------------------------------------------------------------------------

    def get_config(self) -> dict:
        """The constructor arguments (initializers and activations as given, checked)."""
        config = dict(
            units=self.units, activation=self.activation, use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            recurrent_initializer=self.recurrent_initializer,
            bias_initializer=self.bias_initializer, dropout=self.dropout,
            recurrent_dropout=self.recurrent_dropout, seed=self.seed,
            return_sequences=self.return_sequences, return_state=self.return_state,
            go_backwards=self.go_backwards, stateful=self.stateful, unroll=self.unroll,
            zero_output_for_mask=self.zero_output_for_mask, dtype=str(self.dtype), name=self.name)
        if self._KIND != "rnn":
            config["recurrent_activation"] = self.recurrent_activation
        if self._KIND == "lstm":
            config["unit_forget_bias"] = self.unit_forget_bias
        if self._KIND == "gru":
            config["reset_after"] = self.reset_after
        config.update(self._extra)
        return config

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        built = f"input_dim={self.input_dim}" if self.built else "not built"
        return f"{type(self).__name__}(units={self.units}, name={self.name!r}, {built})"

    # ----- weights ------------------------------------------------------------------------------

    @property
    def built(self) -> bool:
        return self._flat is not None

    def _conv_kw(self) -> dict:
        return dict(reset_after=self.reset_after, use_bias=self.use_bias)

    def _keras_shapes(self, input_dim) -> list:
        return cv.keras_weight_shapes(self._mode, input_dim, self.units, **self._conv_kw())

    def build(self, input_shape) -> None:
        """Creates the weights for inputs of shape ``(N, T, C)`` (N and T may be None); only C
        matters. Draws them from the initializers (Keras's shapes, Keras's order: kernel,
        recurrent_kernel, bias). A built layer is left as it is."""
        if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or \
                len(input_shape) != 3:
            raise ValueError(f"input_shape: expected (N, T, C) (N and T may be None), got "
                             f"{input_shape!r}")
        C = chk.size("input_shape[-1]", input_shape[-1])
        if self.built:
            return
        param_size(self._mode, C, self.units)  # too large for the core: ValueError, not MemoryError
        rng = np.random.default_rng(None if self.seed is None else [self.seed, self._stream, 0])
        U, dt = self.units, self.dtype
        shapes = self._keras_shapes(C)
        weights = [_draw("kernel_initializer", self.kernel_initializer, shapes[0], dt, rng),
                   _draw("recurrent_initializer", self.recurrent_initializer, shapes[1], dt, rng)]
        if self.use_bias:
            if self._KIND == "lstm" and self.unit_forget_bias:
                b = self.bias_initializer
                bias = np.concatenate([_draw("bias_initializer", b, (U,), dt, rng),
                                       np.ones(U, dt),
                                       _draw("bias_initializer", b, (2 * U,), dt, rng)])
            else:
                bias = _draw("bias_initializer", self.bias_initializer, shapes[2], dt, rng)
            weights.append(bias)
        self._install(cv.keras_to_flat(weights, self._mode, C, U, **self._conv_kw()), C)

    def _install(self, flat, C) -> None:
        self.input_dim = C
        self._flat = np.ascontiguousarray(flat, dtype=self.dtype)

    def get_weights(self) -> list:
        """Keras's list: kernel (C, G*U), recurrent_kernel (U, G*U), bias (if use_bias), in
        Keras's gate order. [] before the layer is built (as Keras)."""
        if not self.built:
            return []
        return cv.flat_to_keras(self._flat, self._mode, self.input_dim, self.units,
                                **self._conv_kw())

    def set_weights(self, weights) -> None:
        """Loads Keras's list (as ``keras_layer.get_weights()`` gives it), cast to the layer's
        dtype. An unbuilt layer is built from the kernel's shape."""
        if isinstance(weights, (str, bytes, np.ndarray)) or not isinstance(weights, Sequence):
            raise TypeError(f"weights: expected a list of arrays as get_weights() returns, got "
                            f"{type(weights).__name__}")
        arrays = [chk.float_array(f"weights[{i}]", chk.array(f"weights[{i}]", w)
                                  ).astype(self.dtype, copy=False)
                  for i, w in enumerate(weights)]
        if self.built:
            C = self.input_dim
        else:
            if not arrays or arrays[0].ndim != 2:
                raise ValueError("weights: the layer is not built and weights[0] is not a 2-D "
                                 "kernel (C, G*units) to build it from")
            C = int(arrays[0].shape[0])
        shapes = self._keras_shapes(C)
        if len(arrays) != len(shapes):
            raise ValueError(f"weights: {type(self).__name__} expects {len(shapes)} arrays with "
                             f"shapes {shapes}, got {len(arrays)}")
        for i, (a, s) in enumerate(zip(arrays, shapes)):
            if a.shape != tuple(s):
                raise ValueError(f"weights[{i}]: expected shape {tuple(s)}, got {a.shape}")
        self._install(cv.keras_to_flat(arrays, self._mode, C, self.units, **self._conv_kw()), C)

    @property
    def flat_weights(self) -> np.ndarray:
        """The weights as one flat vector in fusedrnn's layout (``param_layout``); None before
        build. Setting it installs a copy (checked: shape, and zero biases if not use_bias)."""
        return self._flat

    @flat_weights.setter
    def flat_weights(self, value) -> None:
        if not self.built:
            raise RuntimeError("flat_weights: build the layer first (build(input_shape) or a call)")
        value = chk.float_array("flat_weights", value).astype(self.dtype)
        chk.shape("flat_weights", value, self._flat.shape,
                  f"for {type(self).__name__}(units={self.units}) on {self.input_dim} features")
        if not self.use_bias and np.any(value[self._bias_slice()]):
            raise ValueError("flat_weights: use_bias=False, but the biases are not zero")
        self._flat = np.ascontiguousarray(value)

    def _pieces(self):
        return _pieces_of(self._mode, self.input_dim, self.units)

    def _bias_slice(self) -> slice:
        pieces = self._pieces()
        start = pieces[("bias", "i2h")].offset
        h2h = pieces[("bias", "h2h")]
        return slice(start, h2h.offset + h2h.size)

    def _extra_bias_slice(self):
        """The flat vector's h2h bias where Keras has none of its own, else None."""
        if self._KIND == "gru" and self.reset_after:
            return None
        p = self._pieces()[("bias", "h2h")]
        return slice(p.offset, p.offset + p.size)

    def count_params(self) -> int:
        """As Keras counts them (the flat vector's extra h2h bias is not counted)."""
        if not self.built:
            raise ValueError(f"count_params: {type(self).__name__} {self.name!r} is not built yet; "
                             "call it or build(input_shape) first")
        return int(sum(int(np.prod(s)) for s in self._keras_shapes(self.input_dim)))

    # ----- states -------------------------------------------------------------------------------

    @property
    def states(self):
        """The carried states of a stateful layer ([h, c] for LSTM, [h] otherwise; copies); None
        for a layer that is not stateful or has not seen a batch yet."""
        if not self.stateful or self._states is None:
            return None
        return [s.copy() for s in self._states]

    def _check_states(self, argname, states, N=None) -> list:
        """A list of _N_STATES (N, units) arrays of the layer's dtype (N from the first if None)."""
        if isinstance(states, np.ndarray) and self._N_STATES == 1:
            states = [states]
        if isinstance(states, (str, bytes)) or not isinstance(states, Sequence):
            raise TypeError(f"{argname}: expected a list of {self._N_STATES} arrays (N, "
                            f"{self.units}), got {type(states).__name__}")
        if len(states) != self._N_STATES:
            what = "[h, c]" if self._N_STATES == 2 else "[h]"
            raise ValueError(f"{argname}: {type(self).__name__} has {self._N_STATES} state(s) "
                             f"{what}, got {len(states)} arrays")
        out = []
        for i, s in enumerate(states):
            a = chk.array(f"{argname}[{i}]", s)
            if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise TypeError(f"{argname}[{i}]: expected a float array, got dtype {a.dtype}")
            if N is None and a.ndim == 2:
                N = a.shape[0]
            chk.shape(f"{argname}[{i}]", a, (N, self.units), "(N, units)")
            out.append(np.ascontiguousarray(a, dtype=self.dtype))
        return out

    def reset_states(self, states=None) -> None:
        """Stateful layers: sets the carried states to zeros (``states=None``) or to ``states``
        ([h, c] for LSTM, [h] otherwise, each (N, units)). A layer that is not stateful ignores a
        reset to zeros (as Keras 3) and refuses states."""
        if not self.stateful:
            if states is not None:
                raise ValueError(f"states: {type(self).__name__} {self.name!r} is not stateful")
            return
        if states is None:
            if self._batch_size is not None:
                self._states = [np.zeros((self._batch_size, self.units), self.dtype)
                                for _ in range(self._N_STATES)]
            return
        new = self._check_states("states", states, self._batch_size)
        self._states, self._batch_size = new, new[0].shape[0]

    def reset_state(self) -> None:
        """Keras 3's name: ``reset_states()``."""
        self.reset_states()

    # ----- forward ------------------------------------------------------------------------------

    def _check_inputs(self, inputs) -> np.ndarray:
        x = chk.array("inputs", inputs)
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"inputs: expected a float array (N, T, C), got dtype {x.dtype}")
        if x.ndim != 3:
            raise ValueError(f"inputs: expected a 3-D array (N, T, C), got shape {x.shape}")
        if x.shape[1] < 1 or x.shape[2] < 1:
            raise ValueError(f"inputs: expected at least one time step and one feature, got shape "
                             f"{x.shape}")
        return x.astype(self.dtype, copy=False)

    def _check_mask(self, mask, N, T):
        return _bool_mask(mask, N, T)

    def _training(self, training) -> bool:
        return False if training is None else chk.flag("training", training)

    def _sequence_kw(self, m) -> dict:
        """How the core sees the mask, and the executor ``unroll`` picks ('unrolled' for True,
        'loop' for False). A right-padded mask (every row a prefix of Trues) with
        zero_output_for_mask becomes per-sample lengths: the same results, with the work
        proportional to the sum of the lengths (the batch shrinks as samples end); any other mask
        (left-padded, gaps, or outputs that keep the state) is a per-step blend in the kernel."""
        kw = dict(executor="unrolled" if self.unroll else "loop")
        if m is None:
            return kw
        lengths = m.sum(axis=1)
        prefix = np.arange(m.shape[1])[None, :] < lengths[:, None]
        if self.zero_output_for_mask and np.array_equal(m, prefix):
            return dict(kw, lengths=lengths)
        return dict(kw, mask=m, zero_masked_output=self.zero_output_for_mask)

    def _dropout_kw(self, training) -> dict:
        if not training or (self.dropout == 0.0 and self.recurrent_dropout == 0.0):
            return {}
        if self._dropout_rng is None:
            self._dropout_rng = np.random.default_rng(
                None if self.seed is None else [self.seed, self._stream, 1])
        seed = int(self._dropout_rng.integers(0, 2**62))
        return dict(dropout=self.dropout, recurrent_dropout=self.recurrent_dropout, seed=seed,
                    dropout_per_gate=self.recurrent_dropout > 0)

    def _cell_kw(self) -> dict:
        kw = dict(activation=self.activation)
        if self._KIND != "rnn":
            kw["recurrent_activation"] = self.recurrent_activation
        if self._KIND == "gru":
            kw["reset_after"] = self.reset_after
        return kw

    def __call__(self, inputs, initial_state=None, mask=None, training=None):
        """Runs the layer over ``inputs`` (N, T, C).

        initial_state: [h, c] (LSTM) or [h], each (N, units); zeros (or a stateful layer's carried
        states) when None. mask: (N, T) bools, False masks a step (the state is kept; the output
        there is the kept state, or zero with zero_output_for_mask). training: True keeps what
        ``backward`` needs (and applies dropout); None means False.

        Returns Keras's structure: the output ((N, T, units) with return_sequences, else the last
        output (N, units)), and with return_state the tuple (output, *states).
        """
        x = self._check_inputs(inputs)
        N, T, C = x.shape
        training = self._training(training)
        if not self.built:
            self.build(x.shape)
        if C != self.input_dim:
            raise ValueError(f"inputs: {type(self).__name__} {self.name!r} was built for "
                             f"{self.input_dim} features, got shape {x.shape}")
        m = self._check_mask(mask, N, T)
        had_initial_state = initial_state is not None
        if had_initial_state:
            init = self._check_states("initial_state", initial_state, N)
        else:
            init = None
        if self.stateful:
            if self._batch_size is not None and N != self._batch_size:
                raise ValueError(f"inputs: a stateful layer keeps the batch size of its states "
                                 f"({self._batch_size}), got batch size {N}")
            if init is None:
                if self._states is None:
                    self._batch_size = N
                    self.reset_states()
                init = self._states
        drop_kw = self._dropout_kw(training)

        if self.go_backwards:  # Keras: read the sequence (and mask) reversed, output in that order
            x = x[:, ::-1]
            m = None if m is None else np.ascontiguousarray(m[:, ::-1])
        lstm = self._KIND == "lstm"
        res = functional.forward(
            x, self._flat, mode=self._mode, hidden_size=self.units, batch_first=True,
            h0=None if init is None else init[0][None],
            c0=init[1][None] if (init is not None and lstm) else None,
            training=training, **self._sequence_kw(m), **self._cell_kw(), **drop_kw)
        states = [res.hN[0], res.cN[0]] if lstm else [res.hN[0]]
        if self.stateful:
            self._states = [s.copy() for s in states]
            self._batch_size = N
        # Keras's last output is the output of the last step processed: the final state, except
        # with zero_output_for_mask where a masked last step outputs zero.
        output_via_dhN = m is None or not self.zero_output_for_mask
        if training:
            self._record = _TrainRecord(res.ctx, N, T, had_initial_state, output_via_dhN)
        output = res.y if self.return_sequences else res.y[:, -1].copy()
        if self.return_state:
            return (output, *states)
        return output

    # ----- backward -----------------------------------------------------------------------------

    def _grad_array(self, name, value, shape):
        a = chk.float_array(name, chk.array(name, value))
        chk.shape(name, a, shape)
        return a.astype(self.dtype, copy=False)

    def _keras_grads(self, flat_grad) -> list:
        return cv.flat_to_keras(flat_grad, self._mode, self.input_dim, self.units,
                                **self._conv_kw())

    def backward(self, d_output=None, d_states=None):
        """Differentiates the last training call.

        d_output: the gradient of the output (the shape of the output: (N, T, units) with
        return_sequences, else (N, units)); None means zero. d_states: gradients of the returned
        states ([dh, dc] for LSTM, [dh] otherwise; entries may be None). Returns dx (N, T, C), or
        ``(dx, d_initial_state)`` when that call was given an ``initial_state`` (a list like it).
        Stores ``grads`` (Keras list layout) and ``flat_grad`` (flat layout; zero for biases Keras
        does not have)."""
        rec = self._record
        if rec is None:
            raise RuntimeError(f"{type(self).__name__}.backward: no training forward to "
                               "differentiate; call the layer with training=True first")
        N, T, U = rec.N, rec.T, self.units
        lstm = self._KIND == "lstm"
        dy = dhN = dcN = None
        if d_output is not None:
            if self.return_sequences:
                dy = self._grad_array("d_output", d_output, (N, T, U))
            else:
                d = self._grad_array("d_output", d_output, (N, U))
                if rec.output_via_dhN:
                    dhN = d[None].copy()
                else:
                    dy = np.zeros((N, T, U), self.dtype)
                    dy[:, -1] = d
        if d_states is not None:
            if isinstance(d_states, np.ndarray) and self._N_STATES == 1:
                d_states = [d_states]
            if isinstance(d_states, (str, bytes)) or not isinstance(d_states, Sequence) or \
                    len(d_states) != self._N_STATES:
                raise ValueError(f"d_states: expected a list of {self._N_STATES} arrays (N, "
                                 f"units) or None, got {d_states!r:.80}")
            dh = d_states[0]
            if dh is not None:
                dh = self._grad_array("d_states[0]", dh, (N, U))[None]
                dhN = dh.copy() if dhN is None else dhN + dh
            if lstm and d_states[1] is not None:
                dcN = self._grad_array("d_states[1]", d_states[1], (N, U))[None].copy()
        g = functional.backward(rec.ctx, dy=dy, dhN=dhN, dcN=dcN)
        self._set_grads(g.dw)
        dx = np.ascontiguousarray(g.dx[:, ::-1]) if self.go_backwards else g.dx
        if rec.had_initial_state:
            return dx, ([g.dh0[0], g.dc0[0]] if lstm else [g.dh0[0]])
        return dx

    def _clean_flat_grad(self, flat_grad) -> np.ndarray:
        """A copy of a flat weight gradient with zeros for the biases Keras does not have (both
        biases without use_bias, the extra h2h bias otherwise)."""
        flat_grad = np.array(flat_grad, dtype=self.dtype)
        if not self.use_bias:
            flat_grad[self._bias_slice()] = 0
        else:
            extra = self._extra_bias_slice()
            if extra is not None:
                flat_grad[extra] = 0
        return flat_grad

    def _set_grads(self, flat_grad) -> None:
        flat_grad = self._clean_flat_grad(flat_grad)
        self.flat_grad = flat_grad
        self.grads = self._keras_grads(flat_grad)


class LSTM(_RNN):
    """Long short-term memory layer, as ``keras.layers.LSTM`` (Keras 3), on the fused kernel.

    Weights in Keras's layout: kernel (C, 4U), recurrent_kernel (U, 4U), bias (4U,), gates i, f,
    c, o. ``unit_forget_bias`` sets the forget gate's initial bias to one. States [h, c]. See the
    module docstring for training, backward and the differences from Keras."""

    _KIND = "lstm"
    _N_STATES = 2

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, zero_output_for_mask=False,
                 dtype=None, name=None, **kwargs):
        super().__init__(
            units, activation=activation, recurrent_activation=recurrent_activation,
            use_bias=use_bias, kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
            unit_forget_bias=unit_forget_bias, reset_after=True, dropout=dropout,
            recurrent_dropout=recurrent_dropout, seed=seed, return_sequences=return_sequences,
            return_state=return_state, go_backwards=go_backwards, stateful=stateful,
            unroll=unroll, zero_output_for_mask=zero_output_for_mask, dtype=dtype, name=name,
            extra=kwargs)


class GRU(_RNN):
    """Gated recurrent unit layer, as ``keras.layers.GRU`` (Keras 3), on the fused kernel.

    ``reset_after=True`` (default, cuDNN's form): bias (2, 3U) [input, recurrent];
    ``reset_after=False``: the reset gate applies before the recurrent product, bias (3U,).
    Kernel (C, 3U), recurrent_kernel (U, 3U), gates z, r, h. State [h]."""

    _KIND = "gru"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0, seed=None,
                 return_sequences=False, return_state=False, go_backwards=False, stateful=False,
                 unroll=False, reset_after=True, zero_output_for_mask=False, dtype=None,
                 name=None, **kwargs):
        super().__init__(
            units, activation=activation, recurrent_activation=recurrent_activation,
            use_bias=use_bias, kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
            unit_forget_bias=False, reset_after=reset_after, dropout=dropout,
            recurrent_dropout=recurrent_dropout, seed=seed, return_sequences=return_sequences,
            return_state=return_state, go_backwards=go_backwards, stateful=stateful,
            unroll=unroll, zero_output_for_mask=zero_output_for_mask, dtype=dtype, name=name,
            extra=kwargs)


class SimpleRNN(_RNN):
    """Fully connected recurrent layer, as ``keras.layers.SimpleRNN`` (Keras 3):
    ``h' = activation(x W + h R + b)``. Kernel (C, U), recurrent_kernel (U, U), bias (U,). State
    [h]."""

    _KIND = "rnn"

    def __init__(self, units, activation="tanh", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0, seed=None,
                 return_sequences=False, return_state=False, go_backwards=False, stateful=False,
                 unroll=False, zero_output_for_mask=False, dtype=None, name=None, **kwargs):
        super().__init__(
            units, activation=activation, recurrent_activation=None, use_bias=use_bias,
            kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer, unit_forget_bias=False, reset_after=True,
            dropout=dropout, recurrent_dropout=recurrent_dropout, seed=seed,
            return_sequences=return_sequences, return_state=return_state,
            go_backwards=go_backwards, stateful=stateful, unroll=unroll,
            zero_output_for_mask=zero_output_for_mask, dtype=dtype, name=name, extra=kwargs)


# --------------------------------------------------------------------------------------------------
# Bidirectional
# --------------------------------------------------------------------------------------------------

_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _bi_pieces(mode, C, U):
    """Per direction: [(slice of the bidirectional flat vector, slice of that direction's own
    one-direction flat vector)], one pair per weight or bias piece (slice copies, no index
    arrays)."""
    uni = {(p.kind, p.part): p for p in param_layout(mode, C, U)}
    pieces = ([], [])
    for p in param_layout(mode, C, U, 1, True):
        q = uni[(p.kind, p.part)]
        pieces[p.direction].append((slice(p.offset, p.offset + p.size),
                                    slice(q.offset, q.offset + q.size)))
    return pieces


class Bidirectional:
    """Runs a recurrent layer forward and a copy backward over the sequence and merges the
    outputs, as ``keras.layers.Bidirectional`` (Keras 3).

    ``layer``: an LSTM, GRU or SimpleRNN of this module; as in Keras, it serves as a configuration:
    the forward layer is a new layer from its config (fresh weights), the backward layer a new one
    with ``go_backwards=True``, unless ``backward_layer`` is given (used as it is; it must differ
    from the forward layer in go_backwards and agree in stateful, return_sequences and
    return_state). ``merge_mode``: 'concat' (default), 'sum', 'mul', 'ave' or None (a tuple of the
    two outputs). As Keras, both layers get ``zero_output_for_mask = return_sequences``.

    When the two layers share their options (the default case) both directions run as ONE fused
    bidirectional call; otherwise two calls. Returns, like Keras, the merged output and with
    return_state ``(output, *forward_states, *backward_states)`` (merge_mode None:
    ``(y_forward, y_backward, *states)``). ``initial_state``: the forward layer's states then the
    backward layer's. ``backward(d_output, d_states=None)`` as the single layers (d_output a pair
    for merge_mode None); ``grads``: the forward layer's Keras list then the backward layer's
    (each layer's own ``grads`` / ``flat_grad`` are set too). ``get_weights`` / ``set_weights``:
    forward layer's list then backward layer's, as Keras's Bidirectional.
    """

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, name=None):
        if not isinstance(layer, _RNN):
            raise TypeError(f"layer: expected a fusedrnn LSTM, GRU or SimpleRNN layer, got "
                            f"{type(layer).__name__}")
        if backward_layer is not None and not isinstance(backward_layer, _RNN):
            raise TypeError(f"backward_layer: expected a fusedrnn LSTM, GRU or SimpleRNN layer, "
                            f"got {type(backward_layer).__name__}")
        if not (merge_mode is None or isinstance(merge_mode, str)) or \
                merge_mode not in _MERGE_MODES:
            raise ValueError(f"merge_mode: expected one of {_MERGE_MODES}, got {merge_mode!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name: expected a string or None, got {name!r}")
        self.name = name if name is not None else f"bidirectional_{layer.name}"
        config = layer.get_config()
        self.forward_layer = type(layer).from_config(dict(config, name=f"forward_{layer.name}"))
        if backward_layer is None:
            self.backward_layer = type(layer).from_config(
                dict(config, go_backwards=True, name=f"backward_{layer.name}"))
            self.backward_layer._stream = 1  # other random draws than the forward copy
        else:
            self.backward_layer = backward_layer
        fw, bw = self.forward_layer, self.backward_layer
        if fw.go_backwards == bw.go_backwards:
            raise ValueError("backward_layer: the forward and backward layers must differ in "
                             f"go_backwards, got {fw.go_backwards} for both")
        for attr in ("stateful", "return_sequences", "return_state"):
            if getattr(fw, attr) != getattr(bw, attr):
                raise ValueError(f"backward_layer: {attr} must agree with the forward layer's: "
                                 f"got {getattr(fw, attr)} and {getattr(bw, attr)}")
        for sub in (fw, bw):  # Keras forces this on both
            sub.zero_output_for_mask = sub.return_sequences
        self.merge_mode = merge_mode
        self.stateful = fw.stateful
        self.return_sequences = fw.return_sequences
        self.return_state = fw.return_state
        self._initial_weights = weights
        self._bi_cache = None
        self._record = None
        self.grads = None

    # ----- weights ------------------------------------------------------------------------------

    @property
    def built(self) -> bool:
        return self.forward_layer.built and self.backward_layer.built

    def build(self, input_shape) -> None:
        self.forward_layer.build(input_shape)
        self.backward_layer.build(input_shape)
        if self._initial_weights is not None:
            weights, self._initial_weights = self._initial_weights, None
            self.set_weights(weights)

    def get_weights(self) -> list:
        return self.forward_layer.get_weights() + self.backward_layer.get_weights()

    def set_weights(self, weights) -> None:
        """The forward layer's Keras list, then the backward layer's (as
        ``keras.layers.Bidirectional.get_weights()``)."""
        if isinstance(weights, (str, bytes, np.ndarray)) or not isinstance(weights, Sequence):
            raise TypeError(f"weights: expected a list of arrays as get_weights() returns, got "
                            f"{type(weights).__name__}")
        fw = self.forward_layer
        if fw.built:
            nf = len(fw._keras_shapes(fw.input_dim))
        else:
            nf = 2 + (1 if fw.use_bias else 0)
        if len(weights) <= nf:
            raise ValueError(f"weights: expected the forward layer's {nf} arrays and then the "
                             f"backward layer's, got {len(weights)} arrays")
        fw.set_weights(list(weights[:nf]))
        self.backward_layer.set_weights(list(weights[nf:]))

    def count_params(self) -> int:
        return self.forward_layer.count_params() + self.backward_layer.count_params()

    # ----- states -------------------------------------------------------------------------------

    @property
    def states(self):
        fs, bs = self.forward_layer.states, self.backward_layer.states
        if fs is None or bs is None:
            return None
        return fs + bs

    def reset_states(self, states=None) -> None:
        """Stateful only (as Keras 3): zeros, or the forward layer's states then the backward
        layer's."""
        if not self.stateful:  # as Keras 3
            raise AttributeError(f"reset_states: Bidirectional {self.name!r} is not stateful")
        if states is None:
            self.forward_layer.reset_states()
            self.backward_layer.reset_states()
            return
        nf = self.forward_layer._N_STATES
        states = self._split_states("states", states)
        self.forward_layer.reset_states(states[:nf])
        self.backward_layer.reset_states(states[nf:])

    def reset_state(self) -> None:
        self.reset_states()

    def _split_states(self, argname, states) -> list:
        n = self.forward_layer._N_STATES + self.backward_layer._N_STATES
        if isinstance(states, (str, bytes, np.ndarray)) or not isinstance(states, Sequence):
            raise TypeError(f"{argname}: expected a list of {n} arrays (the forward layer's "
                            f"states, then the backward layer's), got {type(states).__name__}")
        if len(states) != n:
            raise ValueError(f"{argname}: expected {n} arrays (the forward layer's states, then "
                             f"the backward layer's), got {len(states)}")
        return list(states)

    # ----- forward ------------------------------------------------------------------------------

    def _fusable(self) -> bool:
        fw, bw = self.forward_layer, self.backward_layer
        if type(fw) is not type(bw) or fw.go_backwards or not bw.go_backwards:
            return False
        same = ("units", "activation", "recurrent_activation", "use_bias", "reset_after",
                "dtype", "input_dim", "zero_output_for_mask", "dropout", "recurrent_dropout")
        return all(getattr(fw, a) == getattr(bw, a) for a in same)

    def _bi_pieces(self):
        fw = self.forward_layer
        key = (fw._mode, fw.input_dim, fw.units)
        if self._bi_cache is None or self._bi_cache[0] != key:
            self._bi_cache = (key, _bi_pieces(*key))
        return self._bi_cache[1]

    def _bi_flat(self) -> np.ndarray:
        """The two layers' flat vectors as one bidirectional flat vector (a new array every call:
        the layers' weights may have changed in place since the last one)."""
        fw, bw = self.forward_layer, self.backward_layer
        flat = np.empty(2 * fw._flat.size, fw.dtype)
        for layer, pieces in zip((fw, bw), self._bi_pieces()):
            for whole, own in pieces:
                flat[whole] = layer._flat[own]
        return flat

    def _bi_split(self, dw) -> tuple:
        """The bidirectional flat gradient as the two layers' own flat gradients."""
        out = []
        for pieces in self._bi_pieces():
            g = np.empty(dw.size // 2, dw.dtype)
            for whole, own in pieces:
                g[own] = dw[whole]
            out.append(g)
        return tuple(out)

    def _merge(self, y, y_rev):
        mode = self.merge_mode
        if mode == "concat":
            return np.concatenate([y, y_rev], axis=-1)
        if mode == "sum":
            return y + y_rev
        if mode == "ave":
            return (y + y_rev) / 2
        if mode == "mul":
            return y * y_rev
        return (y, y_rev)

    def __call__(self, inputs, initial_state=None, mask=None, training=None):
        """As Keras's Bidirectional: see the class docstring."""
        fw = self.forward_layer
        x = fw._check_inputs(inputs)
        training = fw._training(training)
        if not self.built or self._initial_weights is not None:
            self.build(x.shape)
        fs = bs = None
        if initial_state is not None:
            states = self._split_states("initial_state", initial_state)
            fs, bs = states[:fw._N_STATES], states[fw._N_STATES:]
        if self._fusable():
            out, states, merge_inputs = self._call_fused(x, fs, bs, mask, training)
        else:
            out, states, merge_inputs = self._call_two(x, fs, bs, mask, training)
        if training:
            self._record = (self._record_path, merge_inputs, initial_state is not None)
        if self.return_state:
            if self.merge_mode is None:
                return (*out, *states)
            return (out, *states)
        return out

    def _call_fused(self, x, fs, bs, mask, training):
        fw, bw = self.forward_layer, self.backward_layer
        N, T, C = x.shape
        if C != fw.input_dim or C != bw.input_dim:
            raise ValueError(f"inputs: Bidirectional {self.name!r} was built for {fw.input_dim} "
                             f"features, got shape {x.shape}")
        m = fw._check_mask(mask, N, T)
        if fs is not None:
            fs = fw._check_states("initial_state", fs, N)
            bs = bw._check_states("initial_state", bs, N)
        if self.stateful:
            for sub in (fw, bw):
                if sub._batch_size is not None and N != sub._batch_size:
                    raise ValueError(f"inputs: a stateful layer keeps the batch size of its "
                                     f"states ({sub._batch_size}), got batch size {N}")
            if fs is None:
                for sub in (fw, bw):
                    if sub._states is None:
                        sub._batch_size = N
                        sub.reset_states()
                fs, bs = fw._states, bw._states
        lstm = fw._KIND == "lstm"
        h0 = None if fs is None else np.stack([fs[0], bs[0]])
        c0 = np.stack([fs[1], bs[1]]) if (fs is not None and lstm) else None
        res = functional.forward(
            x, self._bi_flat(), mode=fw._mode, hidden_size=fw.units, bidirectional=True,
            batch_first=True, h0=h0, c0=c0, training=training, **fw._sequence_kw(m),
            **fw._cell_kw(), **fw._dropout_kw(training))  # the kernel draws masks per direction
        U = fw.units
        if self.return_sequences:
            y, y_rev = res.y[..., :U], res.y[..., U:]
        else:  # Keras: each layer's last output; zero_output_for_mask is off here, so = hN
            y, y_rev = res.hN[0].copy(), res.hN[1].copy()
        fstates = [res.hN[0], res.cN[0]] if lstm else [res.hN[0]]
        bstates = [res.hN[1], res.cN[1]] if lstm else [res.hN[1]]
        if self.stateful:
            for sub, st in ((fw, fstates), (bw, bstates)):
                sub._states, sub._batch_size = [s.copy() for s in st], N
        self._record_path = ("fused", res.ctx, N, T)
        return self._merge(y, y_rev), fstates + bstates, (y, y_rev)

    def _call_two(self, x, fs, bs, mask, training):
        fw, bw = self.forward_layer, self.backward_layer
        outs = []
        for sub, st in ((fw, fs), (bw, bs)):
            o = sub(x, initial_state=st, mask=mask, training=training)
            outs.append((o[0], list(o[1:])) if self.return_state else (o, []))
        (y, fstates), (y_rev, bstates) = outs
        if self.return_sequences:
            y_rev = y_rev[:, ::-1]
        self._record_path = ("two",)
        return self._merge(y, y_rev), fstates + bstates, (y, y_rev)

    # ----- backward -----------------------------------------------------------------------------

    def _unmerge(self, d_output, y, y_rev):
        mode = self.merge_mode
        if mode is None:
            if isinstance(d_output, (str, bytes)) or not isinstance(d_output, Sequence) or \
                    len(d_output) != 2:
                raise ValueError("d_output: merge_mode=None: expected a pair (d_forward, "
                                 "d_backward)")
            d = [None if a is None else
                 self.forward_layer._grad_array(f"d_output[{i}]", a, y.shape)
                 for i, a in enumerate(d_output)]
            return d[0], d[1]
        shape = y.shape[:-1] + (2 * y.shape[-1],) if mode == "concat" else y.shape
        d = self.forward_layer._grad_array("d_output", d_output, shape)
        if mode == "concat":
            U = y.shape[-1]
            return d[..., :U], d[..., U:]
        if mode == "sum":
            return d, d
        if mode == "ave":
            return d / 2, d / 2
        return d * y_rev, d * y  # mul

    def backward(self, d_output=None, d_states=None):
        """Differentiates the last training call: see the class docstring. Returns dx, or
        ``(dx, d_initial_state)`` when that call had an initial_state (forward layer's states then
        the backward layer's)."""
        if self._record is None:
            raise RuntimeError("Bidirectional.backward: no training forward to differentiate; "
                               "call the layer with training=True first")
        path, (y, y_rev), had_initial_state = self._record
        fw, bw = self.forward_layer, self.backward_layer
        nf, nb = fw._N_STATES, bw._N_STATES
        d_f = d_b = None
        if d_output is not None:
            d_f, d_b = self._unmerge(d_output, y, y_rev)
        ds_f = ds_b = None
        if d_states is not None:
            d_states = list(d_states) if isinstance(d_states, Sequence) and \
                not isinstance(d_states, (str, bytes)) else d_states
            if not isinstance(d_states, list) or len(d_states) != nf + nb:
                raise ValueError(f"d_states: expected a list of {nf + nb} arrays or None (the "
                                 "forward layer's states, then the backward layer's)")
            ds_f, ds_b = d_states[:nf], d_states[nf:]
        if path[0] == "two":
            if d_b is not None and self.return_sequences:
                d_b = d_b[:, ::-1]
            rf = fw.backward(d_f, ds_f)
            rb = bw.backward(d_b, ds_b)
            if had_initial_state:
                (dx_f, di_f), (dx_b, di_b) = rf, rb
                result = (dx_f + dx_b, di_f + di_b)
            else:
                result = rf + rb
        else:
            result = self._backward_fused(path, d_f, d_b, ds_f, ds_b, had_initial_state)
        self.grads = fw.grads + bw.grads
        return result

    def _backward_fused(self, path, d_f, d_b, ds_f, ds_b, had_initial_state):
        _, ctx, N, T = path
        fw, bw = self.forward_layer, self.backward_layer
        U, dt, lstm = fw.units, fw.dtype, fw._KIND == "lstm"
        dy = None
        dhN = np.zeros((2, N, U), dt)
        dcN = np.zeros((2, N, U), dt) if lstm else None
        if self.return_sequences:
            if d_f is not None or d_b is not None:
                dy = np.zeros((N, T, 2 * U), dt)
                if d_f is not None:
                    dy[..., :U] = d_f
                if d_b is not None:
                    dy[..., U:] = d_b
        else:
            if d_f is not None:
                dhN[0] += d_f
            if d_b is not None:
                dhN[1] += d_b
        for d, ds in enumerate((ds_f, ds_b)):
            if ds is None:
                continue
            if ds[0] is not None:
                dhN[d] += fw._grad_array("d_states", ds[0], (N, U))
            if lstm and ds[1] is not None:
                dcN[d] += fw._grad_array("d_states", ds[1], (N, U))
        g = functional.backward(ctx, dy=dy, dhN=dhN, dcN=dcN)
        dw_f, dw_b = self._bi_split(g.dw)
        fw._set_grads(dw_f)
        bw._set_grads(dw_b)
        if had_initial_state:
            if lstm:
                return g.dx, [g.dh0[0], g.dc0[0], g.dh0[1], g.dc0[1]]
            return g.dx, [g.dh0[0], g.dh0[1]]
        return g.dx


# --------------------------------------------------------------------------------------------------
# Keras's generic RNN API: LSTMCell, GRUCell, SimpleRNNCell, StackedRNNCells and RNN
# --------------------------------------------------------------------------------------------------

# ----- nested structures (lists, tuples and dicts of arrays) ----------------------------------------


def _is_nested(x) -> bool:
    return isinstance(x, (list, tuple, dict))


def _rebuild(like, items):
    """A list or tuple (namedtuples kept) like ``like`` with ``items``."""
    if isinstance(like, tuple):
        return type(like)(*items) if hasattr(like, "_fields") else tuple(items)
    return list(items)


def _describe(x) -> str:
    if isinstance(x, dict):
        return f"a dict with keys {sorted(map(str, x))}"
    if isinstance(x, (list, tuple)):
        return f"a {type(x).__name__} of {len(x)} entries"
    shape = getattr(x, "shape", None)
    return f"{type(x).__name__} of shape {tuple(shape)}" if shape is not None else \
        f"{type(x).__name__} {x!r:.60}"


def _tree_map(fn, tree, *rest, where="structure"):
    """``fn`` over the leaves of ``tree`` and the matching leaves of ``rest`` (lists and tuples match
    each other by position, dicts match by key; anything else is a leaf). The result has ``tree``'s
    structure. A mismatch raises ValueError naming ``where`` and the path."""
    if isinstance(tree, dict):
        for r in rest:
            if not isinstance(r, dict) or set(r) != set(tree):
                raise ValueError(f"{where}: expected a dict with keys {sorted(map(str, tree))}, got "
                                 f"{_describe(r)}")
        return {k: _tree_map(fn, v, *(r[k] for r in rest), where=f"{where}[{k!r}]")
                for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        for r in rest:
            if not isinstance(r, (list, tuple)) or len(r) != len(tree):
                raise ValueError(f"{where}: expected a list or tuple of {len(tree)} entries, got "
                                 f"{_describe(r)}")
        return _rebuild(tree, [_tree_map(fn, *z, where=f"{where}[{i}]")
                               for i, z in enumerate(zip(tree, *rest))])
    for r in rest:
        if _is_nested(r):
            raise ValueError(f"{where}: expected an array, got {_describe(r)}")
    return fn(tree, *rest)


def _leaves(tree) -> list:
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    if isinstance(tree, (list, tuple)):
        return [leaf for v in tree for leaf in _leaves(v)]
    return [tree]


def _float_leaf(name, value) -> np.ndarray:
    """An array of floats (integers and bools become float32, as Keras casts them)."""
    a = np.asarray(value)
    if np.issubdtype(a.dtype, np.floating):
        return a
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        return a.astype(np.float32)
    raise TypeError(f"{name}: expected a float array, got dtype {a.dtype}")


def _fill(name, value, template, shape_of=lambda t: t.shape):
    """``value`` checked against the structure of ``template``: its arrays must have the shapes
    ``shape_of(template leaf)``; None (anywhere) stands for zeros."""
    if value is None:
        return _tree_map(lambda t: np.zeros(shape_of(t), t.dtype), template)
    if isinstance(template, dict):
        if not isinstance(value, dict) or set(value) != set(template):
            raise ValueError(f"{name}: expected a dict with keys {sorted(map(str, template))}, got "
                             f"{_describe(value)}")
        return {k: _fill(f"{name}[{k!r}]", value[k], t, shape_of) for k, t in template.items()}
    if isinstance(template, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(template):
            raise ValueError(f"{name}: expected a list or tuple of {len(template)} entries, got "
                             f"{_describe(value)}")
        return _rebuild(template, [_fill(f"{name}[{i}]", v, t, shape_of)
                                   for i, (v, t) in enumerate(zip(value, template))])
    if _is_nested(value):
        raise ValueError(f"{name}: expected an array, got {_describe(value)}")
    a = _float_leaf(name, value)
    chk.shape(name, a, shape_of(template))
    return a


def _add_at(tree, path, value):
    """``tree`` with ``value`` added to the leaf at ``path`` (positions in lists/tuples)."""
    if not path:
        return tree + value
    items = list(tree)
    items[path[0]] = _add_at(items[path[0]], path[1:], value)
    return _rebuild(tree, items)


def _get_at(tree, path):
    for i in path:
        tree = tree[i]
    return tree


def _prev_output_paths(states) -> list:
    """Where Keras's scan loop takes the previous output at a masked step, in order: ``states[0]``,
    else (stacked cells) the last cell's first state, ``states[-1][0]`` (or ``states[-1]`` when that
    cell's state is a bare array, which Keras indexes by mistake). The caller takes the first one
    that is an array shaped like the output."""
    if not isinstance(states, (list, tuple)) or not states:
        return []
    paths = [(0,)] if not _is_nested(states[0]) else []
    last = states[-1]
    if len(states) > 1 and not _is_nested(last):
        paths.append((len(states) - 1,))
    elif isinstance(last, (list, tuple)) and last and not _is_nested(last[0]):
        paths.append((len(states) - 1, 0))
    return paths


# ----- the cell protocol ------------------------------------------------------------------------


def _accepts(fn, name) -> bool:
    return chk.accepts_keyword(fn, name)


def _step_fn(cell):
    """What a step calls (as Keras's StackedRNNCells): the cell itself when callable (a Keras
    Layer's ``__call__``, which builds it), else its ``call``."""
    return cell if callable(cell) else cell.call


def _run_step(fn, inputs, states, training, what):
    kw = {"training": training} if _accepts(fn, "training") else {}
    result = fn(inputs, states, **kw)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise TypeError(f"{what}: expected (output, new_states) from the cell, got "
                        f"{_describe(result)}")
    return result


def _run_vjp(cell, inputs, states, training, what):
    kw = {"training": training} if _accepts(cell.vjp, "training") else {}
    result = cell.vjp(inputs, states, **kw)
    if not isinstance(result, (tuple, list)) or len(result) != 3 or not callable(result[2]):
        raise TypeError(f"{what}: expected (output, new_states, pullback) from the cell's vjp, got "
                        f"{_describe(result)}")
    return result


def _unpack_pullback(result, what):
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        raise TypeError(f"{what}: the pullback must return (d_inputs, d_states) or (d_inputs, "
                        f"d_states, d_weights), got {_describe(result)}")
    return result[0], result[1], (result[2] if len(result) == 3 else None)


def _check_cell(argname, cell) -> None:
    if not callable(getattr(cell, "call", None)):
        raise TypeError(f"{argname}: expected an RNN cell (an object with call(inputs, states) and "
                        f"state_size), got {type(cell).__name__} without a call method")
    if not hasattr(cell, "state_size"):
        raise TypeError(f"{argname}: expected an RNN cell (an object with call(inputs, states) and "
                        f"state_size), got {type(cell).__name__} without state_size")
    size = cell.state_size
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (numbers.Integral, list, tuple)):
        raise TypeError(f"{argname}: state_size must be an integer or a list/tuple (one entry per "
                        f"state), got {size!r}")


def _is_builtin_cell(cell) -> bool:
    """A cell of this module whose step is ours (so a sequence can run fused)."""
    return (isinstance(cell, _Cell) and type(cell).call is _Cell.call
            and type(cell).__call__ is _Cell.__call__)


def _has_vjp(cell) -> bool:
    if isinstance(cell, StackedRNNCells) and type(cell).vjp is StackedRNNCells.vjp:
        return type(cell).call is StackedRNNCells.call and all(_has_vjp(c) for c in cell.cells)
    if isinstance(cell, _Cell) and type(cell).vjp is _Cell.vjp:
        return _is_builtin_cell(cell)
    return callable(getattr(cell, "vjp", None))


def _zeros_state(size, N, dtype, where):
    if isinstance(size, numbers.Integral) and not isinstance(size, (bool, np.bool_)):
        return np.zeros((N, int(size)), dtype)
    if isinstance(size, (list, tuple)):
        return [_zeros_state(s, N, dtype, where) for s in size]
    if isinstance(size, dict):
        return {k: _zeros_state(s, N, dtype, where) for k, s in size.items()}
    raise TypeError(f"{where}: cannot make a zero state of size {size!r}; give the cell a "
                    f"get_initial_state(batch_size) or pass initial_state")


def _cell_initial_state(cell, N, dtype):
    """The cell's initial state for a batch of N: its get_initial_state(batch_size=N) when it has one
    (a stack asks each cell), else zeros (N, size) for each entry of state_size."""
    if isinstance(cell, StackedRNNCells) and \
            type(cell).get_initial_state is StackedRNNCells.get_initial_state:
        return [_cell_initial_state(c, N, dtype) for c in cell.cells]
    fn = getattr(cell, "get_initial_state", None)
    if callable(fn):
        return _tree_map(np.asarray, fn(batch_size=N))
    return _zeros_state(cell.state_size, N, dtype, f"{type(cell).__name__}.state_size")


def _output_size(cell):
    size = getattr(cell, "output_size", None)
    if size is not None:
        return size
    state_size = cell.state_size
    return state_size[0] if isinstance(state_size, (list, tuple)) else state_size


def _build_cell(cell, input_shape) -> None:
    """Keras's RNN.build for a cell: ``build(step_input_shape)`` if it has one and is not built."""
    build = getattr(cell, "build", None)
    if not callable(build) or getattr(cell, "built", False):
        return
    build(input_shape)
    try:
        cell.built = True
    except AttributeError:  # a read-only property (the cells of this module)
        pass


def _reset_dropout(cell) -> None:
    for name in ("reset_dropout_mask", "reset_recurrent_dropout_mask"):
        fn = getattr(cell, name, None)
        if callable(fn):
            fn()


def _n_weights(cell) -> int:
    if isinstance(cell, _Cell):
        return 3 if cell.use_bias else 2
    if isinstance(cell, StackedRNNCells):
        return sum(_n_weights(c) for c in cell.cells)
    fn = getattr(cell, "get_weights", None)
    return len(fn()) if callable(fn) else 0


def _zero_weight_grads(cell) -> list:
    fn = getattr(cell, "get_weights", None)
    return [np.zeros_like(np.asarray(w)) for w in fn()] if callable(fn) else []


# ----- the built-in cells -----------------------------------------------------------------------

_CELL_LAYER_ONLY = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll",
                    "zero_output_for_mask")


def _option(name: str):
    return property(lambda self: getattr(self._core, name),
                    doc=f"``{name}`` as given to the constructor (checked); read-only.")


class _Cell:
    """Shared machinery of LSTMCell, GRUCell and SimpleRNNCell (see ``RNN``).

    A cell keeps a layer of the same kind (``LSTM`` / ``GRU`` / ``SimpleRNN``) as its core: the
    weights (one flat vector), initializers, get_weights / set_weights and the dropout stream are
    that layer's. A step is one fused call with T = 1; an ``RNN`` of built-in cells runs the whole
    sequence through layers that share these weights."""

    _LAYER: type = _RNN
    _NAME = ""

    def _setup(self, units, options: dict, kwargs: dict) -> None:
        cls = type(self).__name__
        allowed = set(_CALL_KEYWORDS_NONE)
        if self._LAYER is not SimpleRNN:
            allowed.add("implementation")
        for key in kwargs:
            if key not in allowed:
                raise TypeError(f"{cls}: unexpected keyword argument {key!r}")
        name = options.pop("name")
        if name is None:
            name = self._NAME
        self._core = self._LAYER(units, **options, name=name, **kwargs)
        self._mask_seed = None  # Keras caches a cell's dropout masks until reset_dropout_mask()
        self.grads = None
        self.flat_grad = None

    units = _option("units")
    activation = _option("activation")
    use_bias = _option("use_bias")
    kernel_initializer = _option("kernel_initializer")
    recurrent_initializer = _option("recurrent_initializer")
    bias_initializer = _option("bias_initializer")
    dropout = _option("dropout")
    recurrent_dropout = _option("recurrent_dropout")
    seed = _option("seed")
    dtype = _option("dtype")
    name = _option("name")
    input_dim = _option("input_dim")

    @property
    def state_size(self):
        return self.units

    @property
    def output_size(self) -> int:
        return self.units

    def __repr__(self) -> str:
        built = f"input_dim={self.input_dim}" if self.built else "not built"
        return f"{type(self).__name__}(units={self.units}, name={self.name!r}, {built})"

    # ----- configuration and weights ------------------------------------------------------------

    def get_config(self) -> dict:
        config = self._core.get_config()
        for key in _CELL_LAYER_ONLY:
            config.pop(key, None)
        return config

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    @property
    def built(self) -> bool:
        return self._core.built

    def build(self, input_shape) -> None:
        """Creates the weights for step inputs of shape ``(N, C)`` (N may be None; only C matters),
        from the initializers, as the layer of the same kind does. A built cell is left as it is."""
        if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or \
                len(input_shape) < 1:
            raise ValueError(f"input_shape: expected (N, C) (N may be None), got {input_shape!r}")
        self._core.build((None, None, input_shape[-1]))

    def get_weights(self) -> list:
        """Keras's list: kernel, recurrent_kernel, bias (if use_bias); [] before build."""
        return self._core.get_weights()

    def set_weights(self, weights) -> None:
        """Loads Keras's list (``keras_cell.get_weights()``); an unbuilt cell is built from it."""
        self._core.set_weights(weights)

    def count_params(self) -> int:
        return self._core.count_params()

    @property
    def flat_weights(self):
        """The weights as one flat vector in fusedrnn's layout (as the layers' ``flat_weights``)."""
        return self._core.flat_weights

    @flat_weights.setter
    def flat_weights(self, value) -> None:
        self._core.flat_weights = value

    def _weight(self, i):
        weights = self.get_weights()
        return weights[i] if i < len(weights) else None

    kernel = property(lambda self: self._weight(0), doc="A copy of the kernel (C, G*units).")
    recurrent_kernel = property(lambda self: self._weight(1),
                                doc="A copy of the recurrent kernel (units, G*units).")
    bias = property(lambda self: self._weight(2) if self.use_bias else None,
                    doc="A copy of the bias (None without use_bias).")

    # ----- a step -------------------------------------------------------------------------------

    def get_initial_state(self, batch_size=None) -> list:
        """Zeros: ``[h, c]`` (LSTMCell) or ``[h]``, each (batch_size, units), of the cell's dtype."""
        N = chk.size("batch_size", batch_size, 0)
        return [np.zeros((N, self.units), self.dtype) for _ in range(self._core._N_STATES)]

    def reset_dropout_mask(self) -> None:
        """Forgets the cached dropout masks (the next training step draws new ones), as Keras."""
        self._mask_seed = None

    def reset_recurrent_dropout_mask(self) -> None:
        self._mask_seed = None

    def _step_args(self, inputs, states):
        core, cls = self._core, type(self).__name__
        x = np.asarray(inputs)
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"inputs: expected a float array (N, C), got dtype {x.dtype}")
        if x.ndim != 2 or x.shape[1] < 1:
            raise ValueError(f"inputs: expected a 2-D array (N, C) (one time step), got shape "
                             f"{x.shape}")
        x = x.astype(core.dtype, copy=False)
        if not core.built:
            self.build(x.shape)
        elif x.shape[1] != core.input_dim:
            raise ValueError(f"inputs: {cls} {self.name!r} was built for {core.input_dim} features, "
                             f"got shape {x.shape}")
        nested = isinstance(states, (list, tuple))
        init = core._check_states("states", list(states) if nested else [states], x.shape[0])
        return x, init, nested

    def _step_dropout_kw(self, training) -> dict:
        core = self._core
        if not training or (core.dropout == 0.0 and core.recurrent_dropout == 0.0):
            return {}
        if self._mask_seed is None:  # the kernel's masks are a function of the seed: one mask set
            self._mask_seed = core._dropout_kw(True)["seed"]
        return dict(dropout=core.dropout, recurrent_dropout=core.recurrent_dropout,
                    seed=self._mask_seed, dropout_per_gate=core.recurrent_dropout > 0)

    def _step(self, x, init, training, keep):
        core = self._core
        lstm = core._KIND == "lstm"
        return functional.forward(
            x[:, None], core._flat, mode=core._mode, hidden_size=core.units, batch_first=True,
            h0=init[0][None], c0=init[1][None] if lstm else None, training=training or keep,
            **core._cell_kw(), **self._step_dropout_kw(training))

    def _step_result(self, res, nested):
        y = res.y[:, 0]
        if self._core._KIND == "lstm":
            return y, [res.hN[0], res.cN[0]]
        return y, ([res.hN[0]] if nested else res.hN[0])

    def __call__(self, inputs, states, training=False):
        """One step (builds the cell on the first call): see ``call``."""
        return self.call(inputs, states, training=training)

    def call(self, inputs, states, training=False):
        """One time step on the fused core (T = 1), as Keras's cell: ``inputs`` (N, C), ``states``
        ``[h, c]`` (LSTMCell) or ``[h]`` / ``h``. Returns ``(output, new_states)``: ``(h, [h, c])``
        for LSTMCell, ``(h, [h])`` (or ``(h, h)`` when ``states`` was an array) otherwise.
        ``training`` applies dropout with masks cached across steps until ``reset_dropout_mask``
        (RNN resets them around every call), as Keras."""
        training = False if training is None else chk.flag("training", training)
        x, init, nested = self._step_args(inputs, states)
        return self._step_result(self._step(x, init, training, keep=False), nested)

    def vjp(self, inputs, states, training=False):
        """``call`` plus its pullback: returns ``(output, new_states, pullback)``, where
        ``pullback(d_output, d_new_states)`` returns ``(d_inputs, d_states, d_weights)`` (d_states
        like ``states``, d_weights a Keras list like ``get_weights()``; None gradients are zeros).
        This is the protocol RNN uses to differentiate a Python loop over time."""
        training = False if training is None else chk.flag("training", training)
        core, lstm = self._core, self._core._KIND == "lstm"
        x, init, nested = self._step_args(inputs, states)
        res = self._step(x, init, training, keep=True)
        output, new_states = self._step_result(res, nested)
        N, U = x.shape[0], core.units

        def pullback(d_output, d_new_states):
            dy = None if d_output is None else \
                core._grad_array("d_output", d_output, (N, U))[:, None]
            ds = d_new_states
            if ds is not None and not isinstance(ds, (list, tuple)):
                ds = [ds]
            if ds is not None and len(ds) != core._N_STATES:
                raise ValueError(f"d_new_states: expected {core._N_STATES} arrays (N, units), got "
                                 f"{len(ds)}")
            dhN = dcN = None
            if ds is not None and ds[0] is not None:
                dhN = core._grad_array("d_new_states[0]", ds[0], (N, U))[None]
            if lstm and ds is not None and ds[1] is not None:
                dcN = core._grad_array("d_new_states[1]", ds[1], (N, U))[None]
            g = functional.backward(res.ctx, dy=dy, dhN=dhN, dcN=dcN)
            if lstm:
                d_states = [g.dh0[0], g.dc0[0]]
            else:
                d_states = [g.dh0[0]] if nested else g.dh0[0]
            return g.dx[:, 0], d_states, core._keras_grads(core._clean_flat_grad(g.dw))

        return output, new_states, pullback


class LSTMCell(_Cell):
    """The cell of ``LSTM``, as ``keras.layers.LSTMCell`` (Keras 3): ``state_size`` [units, units],
    ``output_size`` units, states ``[h, c]``. Weights, initializers and options as ``LSTM`` (see
    the module docstring and ``RNN``)."""

    _LAYER = LSTM
    _NAME = "lstm_cell"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, dtype=None, name=None, **kwargs):
        self._setup(units, dict(
            activation=activation, recurrent_activation=recurrent_activation, use_bias=use_bias,
            kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer, unit_forget_bias=unit_forget_bias, dropout=dropout,
            recurrent_dropout=recurrent_dropout, seed=seed, dtype=dtype, name=name), kwargs)

    recurrent_activation = _option("recurrent_activation")
    unit_forget_bias = _option("unit_forget_bias")

    @property
    def state_size(self) -> list:
        return [self.units, self.units]


class GRUCell(_Cell):
    """The cell of ``GRU``, as ``keras.layers.GRUCell`` (Keras 3): ``state_size`` units, state
    ``[h]`` (or ``h``), ``reset_after`` as GRU."""

    _LAYER = GRU
    _NAME = "gru_cell"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0, reset_after=True,
                 seed=None, dtype=None, name=None, **kwargs):
        self._setup(units, dict(
            activation=activation, recurrent_activation=recurrent_activation, use_bias=use_bias,
            kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer, dropout=dropout,
            recurrent_dropout=recurrent_dropout, reset_after=reset_after, seed=seed, dtype=dtype,
            name=name), kwargs)

    recurrent_activation = _option("recurrent_activation")
    reset_after = _option("reset_after")


class SimpleRNNCell(_Cell):
    """The cell of ``SimpleRNN``, as ``keras.layers.SimpleRNNCell`` (Keras 3): ``state_size``
    units, state ``[h]`` (or ``h``)."""

    _LAYER = SimpleRNN
    _NAME = "simple_rnn_cell"

    def __init__(self, units, activation="tanh", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0, seed=None,
                 dtype=None, name=None, **kwargs):
        self._setup(units, dict(
            activation=activation, use_bias=use_bias, kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
            dropout=dropout, recurrent_dropout=recurrent_dropout, seed=seed, dtype=dtype,
            name=name), kwargs)


# ----- StackedRNNCells ----------------------------------------------------------------------------


class StackedRNNCells:
    """A stack of cells that behaves as one cell, as ``keras.layers.StackedRNNCells`` (Keras 3):
    ``state_size`` is the list of the cells' state sizes, states are one entry per cell (each in its
    cell's form: ``[h, c]``, ``[h]`` or ``h``), and ``call`` runs the cells in order, each one's
    output being the next one's input. The cells may be built-in cells or any Keras-protocol cells.
    ``vjp`` chains the cells' ``vjp`` (when all have one). An ``RNN`` of a stack of built-in cells
    runs each cell's whole sequence as one fused call."""

    def __init__(self, cells, name=None, **kwargs):
        if kwargs:
            raise TypeError(f"StackedRNNCells: unexpected keyword argument {next(iter(kwargs))!r}")
        if isinstance(cells, (str, bytes)) or not isinstance(cells, Sequence):
            raise TypeError(f"cells: expected a list of RNN cells, got {type(cells).__name__}")
        cells = list(cells)
        if not cells:
            raise ValueError("cells: expected at least one cell, got an empty list")
        for i, cell in enumerate(cells):
            _check_cell(f"cells[{i}]", cell)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name: expected a string or None, got {name!r}")
        self.cells = cells
        self.name = name if name is not None else "stacked_rnn_cells"

    def __repr__(self) -> str:
        return f"StackedRNNCells({self.cells!r})"

    @property
    def state_size(self) -> list:
        return [c.state_size for c in self.cells]

    @property
    def output_size(self):
        return _output_size(self.cells[-1])

    def get_initial_state(self, batch_size=None) -> list:
        """One entry per cell: the cell's get_initial_state, or zeros from its state_size (float32;
        an RNN makes them in its input's dtype)."""
        N = chk.size("batch_size", batch_size, 0)
        return [_cell_initial_state(c, N, np.float32) for c in self.cells]

    @property
    def built(self) -> bool:
        return all(getattr(c, "built", True) for c in self.cells)

    def build(self, input_shape) -> None:
        """Builds each cell in turn, the next one for (batch, output_size of the previous)."""
        for cell in self.cells:
            _build_cell(cell, input_shape)
            out = _output_size(cell)
            if not isinstance(out, numbers.Integral):
                break  # nested outputs: the later cells build on their first call, if they can
            batch = input_shape
            while isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], (list, tuple)):
                batch = batch[0]
            input_shape = (batch[0] if isinstance(batch, (list, tuple)) and batch else None,
                           int(out))

    def get_weights(self) -> list:
        weights = []
        for cell in self.cells:
            fn = getattr(cell, "get_weights", None)
            if callable(fn):
                weights += list(fn())
        return weights

    def set_weights(self, weights) -> None:
        """The cells' lists one after the other (as ``get_weights``)."""
        if isinstance(weights, (str, bytes, np.ndarray)) or not isinstance(weights, Sequence):
            raise TypeError(f"weights: expected a list of arrays as get_weights() returns, got "
                            f"{type(weights).__name__}")
        weights, start = list(weights), 0
        for cell in self.cells:
            n = _n_weights(cell)
            if n:
                cell.set_weights(weights[start:start + n])
            start += n
        if start != len(weights):
            raise ValueError(f"weights: the cells take {start} arrays, got {len(weights)}")

    def count_params(self) -> int:
        return int(sum(np.asarray(w).size for w in self.get_weights()))

    def reset_dropout_mask(self) -> None:
        for cell in self.cells:
            _reset_dropout(cell)

    def reset_recurrent_dropout_mask(self) -> None:
        self.reset_dropout_mask()

    def _check_states(self, states) -> list:
        n = len(self.cells)
        if not isinstance(states, (list, tuple)) or len(states) != n:
            raise ValueError(f"states: expected a list of {n} entries (one per cell), got "
                             f"{_describe(states)}")
        return list(states)

    def __call__(self, inputs, states, training=False):
        return self.call(inputs, states, training=training)

    def call(self, inputs, states, training=False):
        """Runs the cells in order (Keras's StackedRNNCells.call): returns ``(output of the last
        cell, [new states of each cell])``; a cell given a bare array state gets it back bare."""
        new_states = []
        for i, (cell, s) in enumerate(zip(self.cells, self._check_states(states))):
            is_list = isinstance(s, (list, tuple))
            inputs, ns = _run_step(_step_fn(cell), inputs, list(s) if is_list else [s], training,
                                   f"cells[{i}]")
            ns = ns if isinstance(ns, (list, tuple)) else [ns]
            new_states.append(ns[0] if len(ns) == 1 and not is_list else ns)
        return inputs, new_states

    def vjp(self, inputs, states, training=False):
        """``call`` plus its pullback, chaining the cells' ``vjp`` (see ``RNN``); d_weights is the
        cells' lists one after the other (zeros for cells whose pullback gives none)."""
        missing = [i for i, c in enumerate(self.cells) if not _has_vjp(c)]
        if missing:
            raise NotImplementedError(f"StackedRNNCells.vjp: cells {missing} have no vjp")
        steps, new_states = [], []
        for i, (cell, s) in enumerate(zip(self.cells, self._check_states(states))):
            is_list = isinstance(s, (list, tuple))
            inputs, ns, pullback = _run_vjp(cell, inputs, list(s) if is_list else [s], training,
                                            f"cells[{i}]")
            bare = not isinstance(ns, (list, tuple))
            ns_list = [ns] if bare else ns
            unwrap = len(ns_list) == 1 and not is_list
            new_states.append(ns_list[0] if unwrap else ns_list)
            steps.append((cell, pullback, is_list, bare, unwrap))

        def pullback(d_output, d_new_states):
            n = len(steps)
            if d_new_states is not None and (not isinstance(d_new_states, (list, tuple)) or
                                             len(d_new_states) != n):
                raise ValueError(f"d_new_states: expected a list of {n} entries (one per cell), "
                                 f"got {_describe(d_new_states)}")
            d, d_states, d_weights = d_output, [None] * n, [None] * n
            for i in reversed(range(n)):
                cell, pb, is_list, bare, unwrap = steps[i]
                ds = None if d_new_states is None else d_new_states[i]
                if ds is not None:  # back to the structure the cell returned
                    if bare and not unwrap:
                        ds = ds[0]
                    elif unwrap and not bare:
                        ds = [ds]
                d, dsi, dw = _unpack_pullback(pb(d, ds), f"cells[{i}].vjp")
                d_states[i] = dsi[0] if (not is_list and isinstance(dsi, (list, tuple))) else dsi
                d_weights[i] = list(dw) if dw is not None else _zero_weight_grads(cell)
            return d, d_states, [w for dw in d_weights for w in dw]

        return inputs, new_states, pullback


# ----- RNN --------------------------------------------------------------------------------------


class _LoopRecord:
    """What RNN.backward needs from a training call of the Python loop."""

    __slots__ = ("N", "T", "cell_name", "final_tmpl", "go_backwards", "had_initial_state",
                 "out_tmpl", "state_tmpl", "tapes", "x_tmpl")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


class RNN:
    """Keras 3's generic recurrent layer (``keras.layers.RNN``) on NumPy arrays, with an explicit
    ``backward``::

        rnn = fusedrnn.RNN(fusedrnn.LSTMCell(16), return_sequences=True)      # one fused call
        rnn = fusedrnn.RNN([fusedrnn.GRUCell(16), fusedrnn.LSTMCell(8)])       # one per cell
        rnn = fusedrnn.RNN(MyCell(16))                                         # a Python loop

    ``cell``: a built-in cell (``LSTMCell``, ``GRUCell``, ``SimpleRNNCell``), a ``StackedRNNCells``
    (or a list of cells, stacked as Keras does), or any object following Keras's cell protocol: a
    ``state_size`` (an int, or a list/tuple with one entry per state) and ``call(inputs, states)``
    (with ``training=`` if it takes one; a callable cell is called itself, as a Keras Layer) returning
    ``(output, new_states)``; optional ``get_initial_state(batch_size)``, ``build(step_shape)``,
    ``get_weights`` / ``set_weights``, ``output_size``.

    How it runs:

    - A built-in cell, or a stack of built-in cells (any kinds): the whole sequence runs fused,
      ONE call of the core per cell, through an ``LSTM`` / ``GRU`` / ``SimpleRNN`` layer that
      shares the cell's weights (so masks, ``go_backwards``, ``stateful``, ``initial_state``,
      ``training`` and dropout are exactly the layers'; with ``go_backwards`` the first cell reads the
      sequence reversed and the later ones its output, in processed order, as Keras's loop does).
    - Any other cell (or a stack containing one): a Python loop over time with Keras's semantics,
      arrays in and out (what the cell returns is converted with ``np.asarray``). Inputs may be one
      array (N, T, ...) or a nested structure (lists, tuples, dicts) of such arrays, states and
      outputs nested structures too; each step gets ``inputs[:, t]`` mapped over the structure.
      Masks (N, T): at a masked step the cell still runs, but the states are kept and the output
      is zeros with ``zero_output_for_mask``, else the previous output as Keras's default (scan)
      loop takes it from the carried states: ``states[0]``, or for stacks the last cell's first
      state (Keras: ``states[-1][0]``), whichever is an array shaped like the output; when none is
      (nested outputs, outputs unlike the states), the previous output itself (zeros before the
      first step). Built-in cells inside such a loop run one fused step (T = 1) each, with their
      dropout masks fixed for the call (Keras's cached masks).

    Call: ``rnn(inputs, initial_state=None, mask=None, training=None)``. Returns Keras's structure:
    the output ((N, T, ...) with return_sequences, else the last output), and with return_state
    ``(output, *states)`` (stacks: one entry per cell). ``initial_state``: a list like
    ``get_initial_state`` (a stack: one entry per cell, ``[h, c]``, ``[h]`` or ``h``).

    Backward: ``rnn.backward(d_output=None, d_states=None)`` differentiates the last call with
    ``training=True`` and returns dx (in the structure of the inputs), or ``(dx, d_initial_state)``
    when that call had an ``initial_state``; ``rnn.grads`` is the weight gradient as a list like
    ``get_weights()``. Built-in cells: the layers' backward (each cell also gets ``grads`` and
    ``flat_grad``). Other cells: possible only if the cell provides ``vjp(inputs, states,
    training=False)`` returning ``(output, new_states, pullback)``, with ``pullback(d_output,
    d_new_states)`` returning ``(d_inputs, d_states)`` or ``(d_inputs, d_states, d_weights)``
    (gradients in the structures of the corresponding values; RNN passes arrays, zeros where no
    gradient flows, and sums d_weights over time into ``rnn.grads``). The training call then runs the
    steps through ``vjp``. Built-in cells and ``StackedRNNCells`` (of cells with a vjp) have one.
    Without it, ``backward`` raises NotImplementedError.

    Differences from Keras: ``unroll`` is recorded but every path follows Keras's default (scan)
    loop (its unrolled path outputs zeros at a masked first step); where that loop cannot take the
    previous output from the states (nested outputs, or an output unlike the first state) the
    previous output itself is used (zeros before the first step), as in Keras's unrolled loop; nested
    inputs work (Keras 3's RNN layer refuses them); a stack of one cell works (Keras unwraps its
    states and fails); with masks over a stack whose states are bare arrays (``h`` instead of
    ``[h]``) Keras takes the previous output from the wrong array (``states[0]``: the first cell's
    state; ``states[-1][0]``: one row of the last cell's), this takes the last cell's state;
    dropout is the layers' (one variational mask pair per sequence, see the module docstring);
    the cell (and a stack's list of cells) and its options are read when the RNN is made (its
    weights at every call).
    """

    def __init__(self, cell, return_sequences=False, return_state=False, go_backwards=False,
                 stateful=False, unroll=False, zero_output_for_mask=False, name=None, **kwargs):
        if kwargs:
            raise TypeError(f"RNN: unexpected keyword argument {next(iter(kwargs))!r}")
        if isinstance(cell, (list, tuple)):
            cell = StackedRNNCells(cell)
        _check_cell("cell", cell)
        self.cell = cell
        self.return_sequences = chk.flag("return_sequences", return_sequences)
        self.return_state = chk.flag("return_state", return_state)
        self.go_backwards = chk.flag("go_backwards", go_backwards)
        self.stateful = chk.flag("stateful", stateful)
        self.unroll = chk.flag("unroll", unroll)
        self.zero_output_for_mask = chk.flag("zero_output_for_mask", zero_output_for_mask)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name: expected a string or None, got {name!r}")
        self.name = name if name is not None else "rnn"
        self._stacked = isinstance(cell, StackedRNNCells)
        self._fused = self._fusable_cells(cell)
        self._layers = None if self._fused is None else self._make_layers(self._fused)
        self._states = None  # the loop's carried states (stateful)
        self._batch_size = None
        self._dtype = None
        self._cell_built = False
        self._record = None
        self.grads = None

    def __repr__(self) -> str:
        path = "fused" if self._fused is not None else "loop"
        return f"RNN({self.cell!r}, name={self.name!r}, {path})"

    @staticmethod
    def _fusable_cells(cell):
        if _is_builtin_cell(cell):
            return [cell]
        if isinstance(cell, StackedRNNCells) and type(cell).call is StackedRNNCells.call and \
                all(_is_builtin_cell(c) for c in cell.cells):
            return list(cell.cells)
        return None

    def _make_layers(self, cells) -> list:
        n, layers = len(cells), []
        for i, cell in enumerate(cells):
            config = dict(cell._core.get_config(),
                          return_sequences=self.return_sequences or i < n - 1, return_state=True,
                          go_backwards=self.go_backwards and i == 0, stateful=self.stateful,
                          unroll=self.unroll, zero_output_for_mask=self.zero_output_for_mask,
                          name=f"{self.name}/{cell.name}")
            layers.append(type(cell._core).from_config(config))
        return layers

    @property
    def state_size(self) -> list:
        size = self.cell.state_size
        return list(size) if isinstance(size, (list, tuple)) else [size]

    # ----- weights ------------------------------------------------------------------------------

    def build(self, input_shape) -> None:
        """Builds the cell for sequences of shape ``(N, T, C)`` (or a nested structure of shapes
        for a user cell that takes nested inputs); a built cell is left as it is."""
        if self._fused is not None:
            if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or \
                    len(input_shape) != 3:
                raise ValueError(f"input_shape: expected (N, T, C) (N and T may be None), got "
                                 f"{input_shape!r}")
            self._build_fused(chk.size("input_shape[-1]", input_shape[-1]))
            return

        def is_shape(s):
            return isinstance(s, (list, tuple)) and all(
                e is None or isinstance(e, numbers.Integral) for e in s)

        def step(s):
            if is_shape(s):
                if len(s) < 3:
                    raise ValueError(f"input_shape: expected (N, T, ...) shapes, got {s!r}")
                return (s[0],) + tuple(s[2:])
            if isinstance(s, dict):
                return {k: step(v) for k, v in s.items()}
            if isinstance(s, (list, tuple)):
                return _rebuild(s, [step(v) for v in s])
            raise ValueError(f"input_shape: expected (N, T, ...) shapes, got {s!r}")

        self._build_loop_cell(step(input_shape))

    def _build_fused(self, C) -> None:
        for i, cell in enumerate(self._fused):
            if not cell.built:
                cell.build((None, C))
            elif cell.input_dim != C:
                what = "inputs" if i == 0 else "cell"
                raise ValueError(f"{what}: {type(cell).__name__} {cell.name!r} (cell {i}) was built "
                                 f"for {cell.input_dim} input features, but receives {C}")
            C = cell.units

    def _build_loop_cell(self, step_shape) -> None:
        if not self._cell_built:
            _build_cell(self.cell, step_shape)
            self._cell_built = True

    @property
    def built(self) -> bool:
        return bool(getattr(self.cell, "built", self._cell_built))

    def get_weights(self) -> list:
        """The cell's weights (a stack's cells one after the other), as Keras's RNN."""
        fn = getattr(self.cell, "get_weights", None)
        return list(fn()) if callable(fn) else []

    def set_weights(self, weights) -> None:
        fn = getattr(self.cell, "set_weights", None)
        if not callable(fn):
            raise TypeError(f"set_weights: the cell {type(self.cell).__name__} has no set_weights")
        fn(weights)

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(f"count_params: RNN {self.name!r} is not built yet; call it or "
                             "build(input_shape) first")
        return int(sum(np.asarray(w).size for w in self.get_weights()))

    # ----- states -------------------------------------------------------------------------------

    def get_initial_state(self, batch_size) -> list:
        """The states a call starts from without initial_state (as Keras's RNN): a list."""
        N = chk.size("batch_size", batch_size, 0)
        return self._initial_state(N, self._dtype or np.float32)

    def _initial_state(self, N, dtype) -> list:
        states = _cell_initial_state(self.cell, N, dtype)
        return list(states) if isinstance(states, (list, tuple)) else [states]

    @property
    def states(self):
        """The carried states of a stateful RNN (copies, structured as the returned states); None
        when not stateful or before the first call."""
        if not self.stateful:
            return None
        if self._fused is not None:
            states = [layer.states for layer in self._layers]
            if any(s is None for s in states):
                return None
            return states if self._stacked else states[0]
        return None if self._states is None else _tree_map(np.copy, self._states)

    def reset_states(self, states=None) -> None:
        """Stateful RNNs: the carried states to zeros (the cell's initial state), or to ``states``
        (structured as ``initial_state``). An RNN that is not stateful ignores a reset to zeros and
        refuses states (as the layers)."""
        if not self.stateful:
            if states is not None:
                raise ValueError(f"states: RNN {self.name!r} is not stateful")
            return
        if self._fused is not None:
            if states is None:
                for layer in self._layers:
                    layer.reset_states()
            elif not self._stacked:
                self._layers[0].reset_states(states)
            else:
                inits, _ = self._fused_initial_state(states, "states")
                for layer, s in zip(self._layers, inits):
                    layer.reset_states(s)
            return
        if states is None:
            if self._batch_size is not None:
                self._states = self._initial_state(self._batch_size, self._dtype)
            return
        states = list(states) if isinstance(states, (list, tuple)) else [states]
        states = _tree_map(lambda a: _float_leaf("states", a).copy(), states, where="states")
        leaves = _leaves(states)
        self._states, self._batch_size = states, (leaves[0].shape[0] if leaves else None)

    def reset_state(self) -> None:
        """Keras 3's name: ``reset_states()``."""
        self.reset_states()

    # ----- forward ------------------------------------------------------------------------------

    def __call__(self, inputs, initial_state=None, mask=None, training=None):
        """Runs the RNN over ``inputs``: see the class docstring."""
        training = False if training is None else chk.flag("training", training)
        if self._fused is not None:
            return self._call_fused(inputs, initial_state, mask, training)
        return self._call_loop(inputs, initial_state, mask, training)

    def _fused_initial_state(self, initial_state, argname="initial_state"):
        """Per-cell state lists, and per cell whether its entry was a list (Keras returns the new
        states in the same form)."""
        n = len(self._fused)
        if initial_state is None:
            return None, [True] * n
        if not self._stacked:
            st = initial_state
            return [list(st) if isinstance(st, (list, tuple)) else [st]], [True]
        if not isinstance(initial_state, (list, tuple)) or len(initial_state) != n:
            raise ValueError(f"{argname}: the stack has {n} cells: expected a list of {n} entries, "
                             f"one per cell ([h, c] for an LSTMCell, h or [h] otherwise), got "
                             f"{_describe(initial_state)}")
        inits, forms = [], []
        for i, (cell, s) in enumerate(zip(self._fused, initial_state)):
            is_list = isinstance(s, (list, tuple))
            s = list(s) if is_list else [s]
            if len(s) != cell._core._N_STATES:
                raise ValueError(f"{argname}[{i}]: {type(cell).__name__} has "
                                 f"{cell._core._N_STATES} state(s), got {len(s)} arrays")
            inits.append(s)
            forms.append(is_list)
        return inits, forms

    def _call_fused(self, inputs, initial_state, mask, training):
        layers, cells = self._layers, self._fused
        if _is_nested(inputs):
            raise TypeError(f"inputs: {type(cells[0]).__name__} takes one array (N, T, C), got "
                            f"{_describe(inputs)}")
        x = layers[0]._check_inputs(inputs)
        self._build_fused(x.shape[-1])
        inits, forms = self._fused_initial_state(initial_state)
        later_mask = mask
        if mask is not None and self.go_backwards and len(layers) > 1:
            # the later cells read the first one's output, in processed (reversed) order
            m = layers[0]._check_mask(mask, x.shape[0], x.shape[1])
            later_mask = np.ascontiguousarray(m[:, ::-1])
        h, per_cell = x, []
        for i, (layer, cell) in enumerate(zip(layers, cells)):
            layer._flat, layer.input_dim = cell._core._flat, cell._core.input_dim  # shared weights
            out = layer(h, initial_state=None if inits is None else inits[i],
                        mask=mask if i == 0 else later_mask, training=training)
            h, states = out[0], list(out[1:])
            per_cell.append(states)
        if training:
            self._record = ("fused", inits is not None, forms)
        if not self.return_state:
            return h
        if not self._stacked:
            return (h, *per_cell[0])
        return (h, *[st if forms[i] else st[0] for i, st in enumerate(per_cell)])

    def _check_loop_mask(self, mask, N, T):
        return _bool_mask(mask, N, T)

    def _call_loop(self, inputs, initial_state, mask, training):
        cell, cname = self.cell, type(self.cell).__name__
        x = _tree_map(lambda a: _float_leaf("inputs", a), inputs, where="inputs")
        leaves = _leaves(x)
        if not leaves:
            raise ValueError("inputs: expected an array (N, T, ...) or a structure of them, got an "
                             "empty structure")
        for a in leaves:
            if a.ndim < 3:
                raise ValueError(f"inputs: expected arrays (N, T, features...), got shape {a.shape}")
        N, T = leaves[0].shape[:2]
        for a in leaves:
            if a.shape[:2] != (N, T):
                raise ValueError(f"inputs: all arrays must share (N, T) = {(N, T)}, got shape "
                                 f"{a.shape}")
        if T < 1:
            raise ValueError(f"inputs: expected at least one time step, got shape {leaves[0].shape}")
        dtype = leaves[0].dtype
        m = self._check_loop_mask(mask, N, T)
        self._build_loop_cell(_tree_map(lambda a: (a.shape[0],) + a.shape[2:], x))
        if self.stateful and self._batch_size is not None and N != self._batch_size:
            raise ValueError(f"inputs: a stateful RNN keeps the batch size of its states "
                             f"({self._batch_size}), got batch size {N}")
        had_initial_state = initial_state is not None
        if had_initial_state:
            states = initial_state if isinstance(initial_state, (list, tuple)) else [initial_state]
            states = _tree_map(lambda a: _float_leaf("initial_state", a), list(states),
                               where="initial_state")
            for a in _leaves(states):
                if a.ndim < 1 or a.shape[0] != N:
                    raise ValueError(f"initial_state: expected arrays with batch size {N}, got "
                                     f"shape {a.shape}")
        elif self.stateful and self._states is not None:
            states = self._states
        else:
            states = self._initial_state(N, dtype)
        self._dtype = dtype

        use_vjp = record = training and _has_vjp(cell)
        fn = cell.vjp if use_vjp else _step_fn(cell)
        what = f"{cname}.vjp" if use_vjp else f"{cname}.call"
        kw_training = _accepts(fn, "training")
        order = range(T - 1, -1, -1) if self.go_backwards else range(T)
        state_tmpl = _tree_map(np.zeros_like, states) if record else None
        tapes, outs, prev_out, out_tmpl = [], [], None, None
        _reset_dropout(cell)  # new dropout masks for this call
        try:
            for t in order:
                xt = _tree_map(lambda a, t=t: a[:, t], x)
                result = fn(xt, states, training=training) if kw_training else fn(xt, states)
                n_out = 3 if use_vjp else 2
                if not isinstance(result, (tuple, list)) or len(result) != n_out:
                    want = "(output, new_states, pullback)" if use_vjp else "(output, new_states)"
                    raise TypeError(f"{what}: expected {want}, got {_describe(result)}")
                out = _tree_map(np.asarray, result[0])
                wrapped = not isinstance(result[1], (list, tuple))
                new = _tree_map(np.asarray, [result[1]] if wrapped else result[1])
                keep = None if m is None else m[:, t]
                if keep is not None and keep.all():
                    keep = None
                rule = None
                if keep is not None:
                    def kb(a, keep=keep):
                        return keep.reshape((N,) + (1,) * (a.ndim - 1))
                    new = _tree_map(lambda n_, s_: np.where(kb(n_), n_, s_), new, states,
                                    where=f"{what}: new_states (against states)")
                    if self.zero_output_for_mask:
                        out = _tree_map(lambda o: np.where(kb(o), o, np.zeros_like(o)), out)
                        rule = ("zero",)
                    else:
                        path = None if _is_nested(out) else next(
                            (p for p in _prev_output_paths(states)
                             if np.shape(_get_at(states, p)) == out.shape), None)
                        if path is not None:
                            out = np.where(kb(out), out, _get_at(states, path))
                            rule = ("state", path)
                        else:
                            prev = prev_out if prev_out is not None else \
                                _tree_map(np.zeros_like, out)
                            out = _tree_map(lambda o, p: np.where(kb(o), o, p), out, prev,
                                            where=f"{what}: output (against the previous output)")
                            rule = ("prev",)
                if record:
                    tapes.append((result[2], keep, rule, wrapped))
                    if out_tmpl is None:
                        out_tmpl = _tree_map(np.zeros_like, out)
                states, prev_out = new, out
                if self.return_sequences:
                    outs.append(out)
        finally:
            _reset_dropout(cell)
        output = _tree_map(lambda *o: np.stack(o, axis=1), *outs) if self.return_sequences \
            else prev_out
        if self.stateful:
            self._states, self._batch_size = _tree_map(np.copy, states), N
        if training:
            if record:
                self._record = ("loop", _LoopRecord(
                    tapes=tapes, N=N, T=T, had_initial_state=had_initial_state,
                    go_backwards=self.go_backwards,
                    x_tmpl=_tree_map(lambda a: np.zeros(a.shape[:1] + a.shape[2:], a.dtype), x),
                    state_tmpl=state_tmpl, out_tmpl=out_tmpl,
                    final_tmpl=_tree_map(np.zeros_like, states), cell_name=cname))
            else:
                self._record = ("no-vjp", cname)
        if self.return_state:
            return (output, *states)
        return output

    # ----- backward -----------------------------------------------------------------------------

    def backward(self, d_output=None, d_states=None):
        """Differentiates the last call with ``training=True``: see the class docstring. d_output:
        the gradient of the output (its structure and shape; None means zero). d_states: gradients
        of the returned states (a list like them; entries may be None). Returns dx, or
        ``(dx, d_initial_state)`` when that call had an initial_state. Sets ``grads``."""
        if self._record is None:
            raise RuntimeError("RNN.backward: no training forward to differentiate; call the RNN "
                               "with training=True first")
        kind = self._record[0]
        if kind == "no-vjp":
            raise NotImplementedError(
                f"RNN.backward: the cell {self._record[1]} has no vjp(inputs, states, "
                "training=False) method, so its Python loop over time cannot be differentiated; "
                "give the cell a vjp returning (output, new_states, pullback) (see RNN's "
                "docstring), or use LSTMCell, GRUCell or SimpleRNNCell")
        if kind == "fused":
            return self._backward_fused(d_output, d_states)
        return self._backward_loop(d_output, d_states)

    def _backward_fused(self, d_output, d_states):
        _, had_initial_state, forms = self._record
        layers, n = self._layers, len(self._layers)
        if d_states is None:
            per_cell = [None] * n
        elif not self._stacked:
            per_cell = [d_states]
        else:
            if not isinstance(d_states, (list, tuple)) or len(d_states) != n:
                raise ValueError(f"d_states: expected a list of {n} entries (one per cell, like the "
                                 f"returned states) or None, got {_describe(d_states)}")
            per_cell = list(d_states)
        d, d_init = d_output, [None] * n
        for i in reversed(range(n)):
            result = layers[i].backward(d, per_cell[i])
            d, d_init[i] = result if had_initial_state else (result, None)
        grads = []
        for layer, cell in zip(layers, self._fused):
            cell.grads, cell.flat_grad = layer.grads, layer.flat_grad
            grads += layer.grads
        self.grads = grads
        if not had_initial_state:
            return d
        if not self._stacked:
            return d, d_init[0]
        return d, [di if forms[i] else di[0] for i, di in enumerate(d_init)]

    def _backward_loop(self, d_output, d_states):
        rec = self._record[1]
        N, T = rec.N, rec.T
        what = f"{rec.cell_name}.vjp"
        zeros_out = _tree_map(np.zeros_like, rec.out_tmpl)
        if d_output is None:
            def d_step(k):
                return zeros_out
        elif self.return_sequences:
            d_seq = _fill("d_output", d_output, rec.out_tmpl,
                          lambda t: (N, T) + t.shape[1:])

            def d_step(k):
                return _tree_map(lambda a: a[:, k], d_seq)
        else:
            d_last = _fill("d_output", d_output, rec.out_tmpl)

            def d_step(k):
                return d_last if k == T - 1 else zeros_out
        ds = _fill("d_states", None if d_states is None else list(d_states)
                   if isinstance(d_states, (list, tuple)) else d_states, rec.final_tmpl)
        carry, dx_steps, d_weights = None, [None] * T, None
        for k in reversed(range(T)):
            pullback, keep, rule, wrapped = rec.tapes[k]
            do = d_step(k)
            if carry is not None:
                do, carry = _tree_map(np.add, do, carry), None
            ds_pass = d_prev = None
            if keep is None:
                d_out, d_new = do, ds
            else:
                def kb(a, keep=keep):
                    return keep.reshape((N,) + (1,) * (a.ndim - 1))
                d_new = _tree_map(lambda g: np.where(kb(g), g, np.zeros_like(g)), ds)
                ds_pass = _tree_map(lambda g: np.where(kb(g), np.zeros_like(g), g), ds)
                d_out = _tree_map(lambda g: np.where(kb(g), g, np.zeros_like(g)), do)
                if rule[0] != "zero":
                    d_prev = _tree_map(lambda g: np.where(kb(g), np.zeros_like(g), g), do)
            dx_k, ds_in, dw = _unpack_pullback(pullback(d_out, d_new[0] if wrapped else d_new),
                                               what)
            dx_steps[k] = _fill(f"{what} pullback: d_inputs", dx_k, rec.x_tmpl)
            ds = _fill(f"{what} pullback: d_states", ds_in, rec.state_tmpl)
            if ds_pass is not None:
                ds = _tree_map(np.add, ds, ds_pass)
            if d_prev is not None:
                if rule[0] == "state":
                    ds = _add_at(ds, rule[1], d_prev)
                elif k > 0:
                    carry = d_prev  # into the previous step's output
            if dw is not None:
                dw = [np.asarray(w) for w in dw]
                d_weights = dw if d_weights is None else [a + b for a, b in zip(d_weights, dw)]
        dx = _tree_map(lambda *a: np.stack(a, axis=1), *dx_steps)
        if rec.go_backwards:
            dx = _tree_map(lambda a: np.ascontiguousarray(a[:, ::-1]), dx)
        self.grads = d_weights
        if rec.had_initial_state:
            return dx, list(ds) if isinstance(ds, (list, tuple)) else ds
        return dx
