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

Differences from Keras, on purpose:
- ``unroll`` is accepted and recorded, but both values run the same fused kernel (fusedrnn's
  while-loop executor; mapping ``unroll=True`` to the unrolled executor is left to the core).
  Results are those of Keras's default ``unroll=False`` path, which differs from its
  ``unroll=True`` path only at masked first steps (there Keras's unrolled path outputs zeros).
- ``seed`` also seeds the NumPy generator that the built-in initializers draw from (Keras seeds
  only dropout with it), so two layers made with the same seed get the same weights. Built-in
  initializers follow Keras's distributions (not Keras's random streams).
- ``dropout`` / ``recurrent_dropout`` must lie in [0, 1) (Keras clamps silently). They apply in
  training calls only, through the fused kernel's variational dropout: one input mask (N, C) and
  one recurrent mask (N, U) per sequence, scaled by 1/(1 - rate), new masks every call (drawn from
  the layer's ``seed``: layers with the same seed draw the same masks). Keras does the same, except
  that with ``recurrent_dropout > 0`` its LSTM and GRU switch to ``implementation=1`` and draw one
  mask per gate (4 or 3 input masks and as many recurrent masks). Masks are random in both, so
  only the semantics agree, not the values.
- ``set_weights`` on an unbuilt layer builds it from the kernel's shape (Keras refuses).
- Regularizers and constraints are accepted only as None.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Sequence

import numpy as np

from . import _checks as chk
from . import converters as cv
from . import functional
from .layout import ACTIVATIONS, param_layout, param_size

__all__ = ["LSTM", "GRU", "SimpleRNN", "Bidirectional"]


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


def _activation_name(argname: str, value) -> str:
    """An activation as the kernel names it: a name of ACTIVATIONS, None (Keras: linear), or a
    function whose __name__ is one of those names (keras.activations.tanh, jnp.tanh, ...)."""
    if value is None:
        return "linear"
    if isinstance(value, str):
        if value in ACTIVATIONS:
            return value
        raise ValueError(f"{argname}: expected one of {', '.join(map(repr, ACTIVATIONS))} (or a "
                         f"function of that name), got {value!r}")
    name = getattr(value, "__name__", None)
    if callable(value) and name in ACTIVATIONS:
        return name
    raise TypeError(f"{argname}: expected one of {', '.join(map(repr, ACTIVATIONS))} (or a "
                    f"function of that name), got {value!r}")


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


def _takes_dtype(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "dtype" or p.kind == p.VAR_KEYWORD for p in params)


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
        arrays = [chk.float_array(f"weights[{i}]", np.asarray(w) if not isinstance(w, np.ndarray)
                                  else w).astype(self.dtype, copy=False)
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
        return {(p.kind, p.part): p for p in param_layout(self._mode, self.input_dim, self.units)}

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
            a = np.asarray(s)
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
        x = np.asarray(inputs)
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"inputs: expected a float array (N, T, C), got dtype {x.dtype}")
        if x.ndim != 3:
            raise ValueError(f"inputs: expected a 3-D array (N, T, C), got shape {x.shape}")
        if x.shape[1] < 1 or x.shape[2] < 1:
            raise ValueError(f"inputs: expected at least one time step and one feature, got shape "
                             f"{x.shape}")
        return x.astype(self.dtype, copy=False)

    def _check_mask(self, mask, N, T):
        if mask is None:
            return None
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
                raise TypeError(f"mask: expected bools (N, T), got dtype {m.dtype}")
            m = m != 0
        chk.shape("mask", m, (N, T), "(N, T)")
        return m

    def _training(self, training) -> bool:
        return False if training is None else chk.flag("training", training)

    def _dropout_kw(self, training) -> dict:
        if not training or (self.dropout == 0.0 and self.recurrent_dropout == 0.0):
            return {}
        if self._dropout_rng is None:
            self._dropout_rng = np.random.default_rng(
                None if self.seed is None else [self.seed, self._stream, 1])
        seed = int(self._dropout_rng.integers(0, 2**62))
        return dict(dropout=self.dropout, recurrent_dropout=self.recurrent_dropout, seed=seed)

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
            training=training, mask=m, zero_masked_output=self.zero_output_for_mask,
            **self._cell_kw(), **drop_kw)
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
        a = chk.float_array(name, value if isinstance(value, np.ndarray) else np.asarray(value))
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

    def _set_grads(self, flat_grad) -> None:
        flat_grad = np.array(flat_grad, dtype=self.dtype)
        if not self.use_bias:
            flat_grad[self._bias_slice()] = 0
        else:
            extra = self._extra_bias_slice()
            if extra is not None:
                flat_grad[extra] = 0
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


def _bi_index(mode, C, U):
    """(idx_f, idx_b): positions in the bidirectional flat vector of each entry of the forward and
    backward layers' own (one-direction) flat vectors."""
    uni = {(p.kind, p.part): p for p in param_layout(mode, C, U)}
    n = param_size(mode, C, U)
    idx = [np.empty(n, np.intp), np.empty(n, np.intp)]
    for p in param_layout(mode, C, U, 1, True):
        q = uni[(p.kind, p.part)]
        idx[p.direction][q.offset:q.offset + q.size] = np.arange(p.offset, p.offset + p.size)
    return idx


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

    def _bi_index(self):
        fw = self.forward_layer
        key = (fw._mode, fw.input_dim, fw.units)
        if self._bi_cache is None or self._bi_cache[0] != key:
            self._bi_cache = (key, _bi_index(*key))
        return self._bi_cache[1]

    def _bi_flat(self) -> np.ndarray:
        """The two layers' flat vectors as one bidirectional flat vector (a new array every call:
        the layers' weights may have changed in place since the last one)."""
        fw, bw = self.forward_layer, self.backward_layer
        idx_f, idx_b = self._bi_index()
        flat = np.empty(2 * fw._flat.size, fw.dtype)
        flat[idx_f] = fw._flat
        flat[idx_b] = bw._flat
        return flat

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
        fw, bw = self.forward_layer, self.backward_layer
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
            batch_first=True, h0=h0, c0=c0, training=training, mask=m,
            zero_masked_output=fw.zero_output_for_mask, **fw._cell_kw(),
            **fw._dropout_kw(training))  # the kernel draws masks per direction
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
        idx_f, idx_b = self._bi_index()
        fw._set_grads(g.dw[idx_f])
        bw._set_grads(g.dw[idx_b])
        if had_initial_state:
            if lstm:
                return g.dx, [g.dh0[0], g.dc0[0], g.dh0[1], g.dc0[1]]
            return g.dx, [g.dh0[0], g.dh0[1]]
        return g.dx
