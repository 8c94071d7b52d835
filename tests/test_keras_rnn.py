"""Keras's generic RNN API (fusedrnn.RNN, LSTMCell, GRUCell, SimpleRNNCell, StackedRNNCells) against
real Keras 3 (JAX backend), same weights.

Built-in cells run fused (one core call per cell for the whole sequence) and must equal both
``keras.layers.RNN(keras cell)`` and fusedrnn's own layers; user-written cells (the Keras guide's
``MinimalRNNCell`` and ``NestedCell``, written in NumPy) run through RNN's Python loop and must
equal Keras running the same cell math. Keras 3's RNN layer refuses nested inputs (keras-io#2142),
so the nested cases drive the loop that layer runs, ``keras.src.backend.rnn``, with the same step
function. Gradients are checked against JAX autodiff of the Keras layer (``stateless_call``).

Tolerance as in test_layers.py: max|ours - Keras| <= 1e-5 * max(1, max|Keras|) in float32 (the
problems are tiny: T = 5, O(1) values; a semantic mistake gives errors of order 0.1). Keras runs op
by op (``jax.disable_jit``) so that its scan is not compiled anew at every call.
"""


import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional
from fusedrnn import layers as L

from keras_support import (  # noqa: F401 (keras_op_by_op: an autouse fixture)
    C, N, T, U, close, ignore_array_warning, jax, jnp, keras, keras_grads, keras_mask,
    keras_op_by_op, needs_keras, rng_for)

pytestmark = ignore_array_warning




def _x(rng, *shape):
    return rng.standard_normal(shape or (N, T, C)).astype(np.float32)




def close_tree(name, got, want):
    """Nested lists/tuples/dicts of arrays; lists and tuples match each other."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{name}: {got!r:.80} vs dict"
        for k in want:
            close_tree(f"{name}[{k!r}]", got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), \
            f"{name}: {type(got).__name__} of {len(got) if hasattr(got, '__len__') else '?'} vs " \
            f"{type(want).__name__} of {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            close_tree(f"{name}[{i}]", g, w)
    else:
        assert not isinstance(got, (list, tuple, dict)), f"{name}: nested, expected an array"
        close(name, got, want)


def _uniform_weights(rng, shapes):
    return [rng.uniform(-0.7, 0.7, s).astype(np.float32) for s in shapes]


# --------------------------------------------------------------------------------------------------
# User-written cells: the Keras guide's MinimalRNNCell and NestedCell, in NumPy and in Keras
# --------------------------------------------------------------------------------------------------


class MinimalRNNCell:
    """The Keras guide's MinimalRNNCell (``output = x K + h R``, state [output]) in NumPy."""

    def __init__(self, units):
        self.units = units
        self.state_size = units
        self.built = False
        self.calls = 0

    def build(self, input_shape):
        rng = np.random.default_rng(0)
        self.kernel = rng.uniform(-0.05, 0.05, (input_shape[-1], self.units)).astype(np.float32)
        self.recurrent_kernel = rng.uniform(-0.05, 0.05, (self.units, self.units)).astype(
            np.float32)
        self.built = True

    def get_weights(self):
        return [self.kernel, self.recurrent_kernel]

    def set_weights(self, weights):
        self.kernel, self.recurrent_kernel = [np.asarray(w, np.float32) for w in weights]
        self.built = True

    def call(self, inputs, states):
        self.calls += 1
        prev_output = states[0]
        output = inputs @ self.kernel + prev_output @ self.recurrent_kernel
        return output, [output]


class MinimalRNNCellVJP(MinimalRNNCell):
    """With the VJP that RNN.backward needs."""

    def vjp(self, inputs, states):
        output, new_states = self.call(inputs, states)

        def pullback(d_output, d_new_states):
            g = d_output + d_new_states[0]
            return (g @ self.kernel.T, [g @ self.recurrent_kernel.T],
                    [inputs.T @ g, states[0].T @ g])

        return output, new_states, pullback


class NestedCell:
    """The Keras guide's NestedCell in NumPy: inputs (x1 (N, i1), x2 (N, i2, i3)), states
    [s1 (N, u1), s2 (N, u2, u3)], outputs (o1, o23) and states (s1 + o1, s2 + o23)."""

    def __init__(self, unit_1, unit_2, unit_3):
        self.unit_1, self.unit_2, self.unit_3 = unit_1, unit_2, unit_3
        self.state_size = [unit_1, (unit_2, unit_3)]
        self.output_size = [unit_1, (unit_2, unit_3)]

    def build(self, input_shapes):  # [(batch, i1), (batch, i2, i3)], as the guide expects
        i1 = input_shapes[0][1]
        i2, i3 = input_shapes[1][1], input_shapes[1][2]
        rng = np.random.default_rng(1)
        self.kernel_1 = rng.uniform(-0.05, 0.05, (i1, self.unit_1)).astype(np.float32)
        self.kernel_2_3 = rng.uniform(-0.05, 0.05, (i2, i3, self.unit_2, self.unit_3)).astype(
            np.float32)

    def get_initial_state(self, batch_size):
        return [np.zeros((batch_size, self.unit_1), np.float32),
                np.zeros((batch_size, self.unit_2, self.unit_3), np.float32)]

    def get_weights(self):
        return [self.kernel_1, self.kernel_2_3]

    def set_weights(self, weights):
        self.kernel_1, self.kernel_2_3 = weights

    def call(self, inputs, states):
        input_1, input_2 = inputs
        s1, s2 = states
        output_1 = input_1 @ self.kernel_1
        output_2_3 = np.einsum("bij,ijkl->bkl", input_2, self.kernel_2_3)
        return (output_1, output_2_3), (s1 + output_1, s2 + output_2_3)


class DictStateCell:
    """A cell whose state is a dict: h' = tanh(x W + h R), total' = total + h'; output h'."""

    def __init__(self, units):
        self.units = units
        self.state_size = [{"h": units, "total": units}]

    def call(self, inputs, states):
        s = states[0]
        h = np.tanh(inputs @ self.kernel + s["h"] @ self.recurrent_kernel)
        return h, [{"h": h, "total": s["total"] + h}]


if keras is not None:
    ops = keras.ops

    class KerasMinimalRNNCell(keras.layers.Layer):
        """The guide's MinimalRNNCell, verbatim Keras 3."""

        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.state_size = units

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units),
                                          initializer="uniform", name="kernel")
            self.recurrent_kernel = self.add_weight(shape=(self.units, self.units),
                                                    initializer="uniform", name="recurrent_kernel")

        def call(self, inputs, states):
            prev_output = states[0]
            h = ops.matmul(inputs, self.kernel)
            output = h + ops.matmul(prev_output, self.recurrent_kernel)
            return output, [output]

    class KerasNestedCell(keras.layers.Layer):
        """The guide's NestedCell with keras.ops instead of tf."""

        def __init__(self, unit_1, unit_2, unit_3, **kwargs):
            self.unit_1, self.unit_2, self.unit_3 = unit_1, unit_2, unit_3
            self.state_size = [unit_1, (unit_2, unit_3)]
            self.output_size = [unit_1, (unit_2, unit_3)]
            super().__init__(**kwargs)

        def build(self, input_shapes):
            i1 = input_shapes[0][1]
            i2, i3 = input_shapes[1][1], input_shapes[1][2]
            self.kernel_1 = self.add_weight(shape=(i1, self.unit_1), initializer="uniform",
                                            name="kernel_1")
            self.kernel_2_3 = self.add_weight(shape=(i2, i3, self.unit_2, self.unit_3),
                                              initializer="uniform", name="kernel_2_3")

        def call(self, inputs, states):
            input_1, input_2 = inputs
            s1, s2 = states
            output_1 = ops.matmul(input_1, self.kernel_1)
            output_2_3 = ops.einsum("bij,ijkl->bkl", input_2, self.kernel_2_3)
            return (output_1, output_2_3), (s1 + output_1, s2 + output_2_3)


def _keras_cell(kind, units, **kw):
    if kind == "Minimal":
        return KerasMinimalRNNCell(units)
    return getattr(keras.layers, f"{kind}Cell")(units, kernel_initializer="zeros",
                                                 recurrent_initializer="zeros", **kw)


def _our_cell(kind, units, **kw):
    if kind == "Minimal":
        return MinimalRNNCellVJP(units)
    return getattr(L, f"{kind}Cell")(units, **kw)


def _n_states(kind):
    return 2 if kind == "LSTM" else 1


def keras_pair(specs, rng, stacked=False, as_list=False, **rnn_kw):
    """A built Keras RNN and ours over the same cells (specs: (kind, cell kwargs, units)) with the
    same random weights."""
    kcells = [_keras_cell(k, u, **kw) for k, kw, u in specs]
    ocells = [_our_cell(k, u, **kw) for k, kw, u in specs]
    if stacked:
        kc = kcells if as_list else keras.layers.StackedRNNCells(kcells)
        oc = ocells if as_list else L.StackedRNNCells(ocells)
    else:
        kc, oc = kcells[0], ocells[0]
    k = keras.layers.RNN(kc, **rnn_kw)
    k.build((N, T, C))
    weights = _uniform_weights(rng, [w.shape for w in k.get_weights()])
    k.set_weights(weights)
    ours = L.RNN(oc, **rnn_kw)
    ours.build((N, T, C))  # user cells (as Keras's) know their weights once built
    ours.set_weights(weights)
    return k, ours


def _initial_states(rng, specs, stacked, bare=False):
    """Per cell [h, c] / [h] (or h with ``bare``); a single cell's list when not stacked."""
    per = []
    for kind, _, u in specs:
        s = [rng.standard_normal((N, u)).astype(np.float32) for _ in range(_n_states(kind))]
        per.append(s[0] if bare and len(s) == 1 else s)
    return per if stacked else per[0]


# --------------------------------------------------------------------------------------------------
# Built-in cells: RNN(cell) = keras.layers.RNN(keras cell) = fusedrnn's layer
# --------------------------------------------------------------------------------------------------

BUILTIN_CASES = [
    # kind, cell kwargs, RNN kwargs, mask, initial_state
    ("LSTM", {}, dict(return_sequences=True, return_state=True), None, True),
    ("LSTM", {}, dict(return_state=True, go_backwards=True), "left", False),
    ("LSTM", dict(activation="relu", use_bias=False),
     dict(return_sequences=True, zero_output_for_mask=True), "gaps", True),
    ("GRU", {}, dict(return_sequences=True, return_state=True, go_backwards=True), "gaps", True),
    ("GRU", dict(reset_after=False), dict(return_state=True), "left", False),
    ("SimpleRNN", {}, dict(return_sequences=True, go_backwards=True, zero_output_for_mask=True),
     "left", True),
    ("SimpleRNN", dict(activation="relu"), {}, None, False),
]


@needs_keras
@pytest.mark.parametrize("kind,cell_kw,rnn_kw,mask_kind,init", BUILTIN_CASES)
def test_builtin_cell_rnn_matches_keras_and_layer(kind, cell_kw, rnn_kw, mask_kind, init):
    rng = rng_for("builtin", kind, cell_kw, rnn_kw, mask_kind, init)
    specs = [(kind, cell_kw, U)]
    k, ours = keras_pair(specs, rng, **rnn_kw)
    x, mask = _x(rng), keras_mask(mask_kind)
    state = _initial_states(rng, specs, stacked=False) if init else None
    want = k(x, initial_state=state, mask=mask)
    got = ours(x, initial_state=state, mask=mask)
    assert isinstance(got, tuple) == isinstance(want, tuple)
    close_tree(f"RNN({kind}Cell)", got, want)
    layer = getattr(L, kind)(U, **cell_kw, **rnn_kw)
    layer.set_weights(ours.get_weights())
    close_tree(f"{kind} layer", got, layer(x, initial_state=state, mask=mask))


STACK_CASES = [
    # cells (kind, kwargs, units), RNN kwargs, mask, initial_state (None, "list" or "bare"), as_list
    ([("LSTM", {}, 3), ("LSTM", {}, 2)], dict(return_sequences=True, return_state=True), "left",
     "list", False),
    # bare (array) states: no mask, where Keras's loop takes the wrong previous output
    ([("GRU", {}, 3), ("LSTM", {}, 2)], dict(return_state=True, go_backwards=True), None, "bare",
     True),
    ([("SimpleRNN", {}, 3), ("GRU", dict(reset_after=False), 3), ("LSTM", {}, 3)],
     dict(return_sequences=True, go_backwards=True, zero_output_for_mask=True, return_state=True),
     "gaps", None, False),
]


@needs_keras
@pytest.mark.parametrize("specs,rnn_kw,mask_kind,init,as_list", STACK_CASES)
def test_stacked_builtin_cells_match_keras(specs, rnn_kw, mask_kind, init, as_list):
    rng = rng_for("stack", specs, rnn_kw, mask_kind, init)
    k, ours = keras_pair(specs, rng, stacked=True, as_list=as_list, **rnn_kw)
    assert ours._fused is not None and len(ours._layers) == len(specs)
    x, mask = _x(rng), keras_mask(mask_kind)
    state = _initial_states(rng, specs, True, bare=init == "bare") if init else None
    want = k(x, initial_state=state, mask=mask)
    got = ours(x, initial_state=state, mask=mask)
    close_tree("RNN(StackedRNNCells)", got, want)
    if init == "bare":  # Keras returns each state in the form it was given
        assert not isinstance(got[1], list) and isinstance(got[2], list)


def _flat_leaves(tree):
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _flat_leaves(v)]
    if isinstance(tree, (list, tuple)):
        return [leaf for v in tree for leaf in _flat_leaves(v)]
    return [tree]


GRAD_CASES = [
    # cells, RNN kwargs, mask, initial_state; built-in stacks run fused, the others loop
    ([("LSTM", {}, 3), ("GRU", {}, 3)], dict(return_sequences=True, return_state=True,
                                             go_backwards=True), "left", True),
    ([("Minimal", {}, 3)], dict(return_sequences=True, return_state=True, go_backwards=True),
     "gaps", True),
    # no mask: Keras's loop fails on masks over the bare zero states it makes for this stack
    ([("Minimal", {}, 3), ("Minimal", {}, 3)], dict(return_state=True), None, False),
    ([("LSTM", {}, 3), ("Minimal", {}, 3)], dict(return_sequences=True, return_state=True,
                                                 zero_output_for_mask=True), "gaps", True),
]


@needs_keras
@pytest.mark.parametrize("specs,rnn_kw,mask_kind,init", GRAD_CASES)
def test_backward_matches_jax_autodiff(specs, rnn_kw, mask_kind, init):
    rng = rng_for("grad", specs, rnn_kw, mask_kind, init)
    stacked = len(specs) > 1
    k, ours = keras_pair(specs, rng, stacked=stacked, **rnn_kw)
    fused = all(kind != "Minimal" for kind, _, _ in specs)
    assert (ours._fused is not None) == fused
    x, mask = _x(rng), keras_mask(mask_kind)
    state = _initial_states(rng, specs, stacked) if init else None
    outs = ours(x, initial_state=state, mask=mask, training=True)
    want = k(x, initial_state=state, mask=mask)
    close_tree("forward", outs, want)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    cot_tree = [jax.tree_util.tree_map(
        lambda o: rng.standard_normal(np.shape(o)).astype(np.float32), o) for o in outs]
    w_want, dx_want, dinit_want = keras_grads(k, x, state, mask, _flat_leaves(cot_tree))
    got = ours.backward(cot_tree[0], cot_tree[1:] if len(cot_tree) > 1 else None)
    close("dx", got[0] if init else got, dx_want)
    if init:
        close_tree("d_initial_state", got[1], dinit_want)
    close_tree("weight grads", ours.grads, w_want)


# --------------------------------------------------------------------------------------------------
# Cells on their own
# --------------------------------------------------------------------------------------------------


@needs_keras
@pytest.mark.parametrize("kind,kw", [("LSTM", {}), ("GRU", {}), ("GRU", dict(reset_after=False)),
                                     ("SimpleRNN", dict(activation="relu"))])
def test_cell_step_matches_keras_cell(kind, kw):
    rng = rng_for("step", kind, kw)
    kc, oc = _keras_cell(kind, U, **kw), _our_cell(kind, U, **kw)
    kc.build((N, C))
    weights = _uniform_weights(rng, [w.shape for w in kc.get_weights()])
    kc.set_weights(weights)
    assert not oc.built and oc.get_weights() == []
    oc.set_weights(weights)
    assert oc.built and oc.input_dim == C and oc.count_params() == kc.count_params()
    assert oc.state_size == kc.state_size and oc.output_size == kc.output_size
    init = oc.get_initial_state(N)
    assert len(init) == _n_states(kind) and all(s.shape == (N, U) and not s.any() for s in init)
    x = _x(rng, N, C)
    states = [rng.standard_normal((N, U)).astype(np.float32) for _ in range(_n_states(kind))]
    forms = [states] if kind == "LSTM" else [states, states[0], tuple(states)]
    for st in forms:  # list, bare array and tuple states: Keras's return forms
        want = kc(x, st)
        got = oc(x, st, training=True)  # no dropout: training changes nothing
        close_tree(f"{kind}Cell step", got, want)
        assert isinstance(got[1], list) == isinstance(want[1], (list, tuple))
    # get_config / from_config round trip; the cell's kernel views
    again = type(oc).from_config(oc.get_config())
    assert again.get_config() == oc.get_config() and again.units == U
    np.testing.assert_array_equal(oc.kernel, weights[0])
    # the vjp of a step against JAX's of the Keras cell
    _, _, pullback = oc.vjp(x, states)
    d_out = rng.standard_normal((N, U)).astype(np.float32)
    d_new = [rng.standard_normal((N, U)).astype(np.float32) for _ in states]
    dx, ds, dw = pullback(d_out, d_new)
    tv = [v.value for v in kc.trainable_variables]
    ntv = [v.value for v in kc.non_trainable_variables]  # the dropout seed

    def f(tv, x, st):
        o, ns = kc.stateless_call(tv, ntv, x, st)[0]
        return sum(jnp.sum(a * b) for a, b in zip([o, *ns], [d_out, *d_new]))

    g = jax.grad(f, argnums=(0, 1, 2))(tv, jnp.asarray(x), [jnp.asarray(s) for s in states])
    close("step dx", dx, g[1])
    close_tree("step d_states", ds, [np.asarray(a) for a in g[2]])
    close_tree("step d_weights", dw, [np.asarray(a) for a in g[0]])


def test_cell_dropout_masks_are_cached_like_keras():
    """A cell's training steps reuse one set of dropout masks until reset_dropout_mask (Keras's
    DropoutRNNCell); RNN resets them around each call."""
    rng = rng_for("cell-dropout")
    cell = L.GRUCell(U, dropout=0.5, recurrent_dropout=0.5, seed=3)
    x, h = _x(rng, N, C), rng.standard_normal((N, U)).astype(np.float32)
    a = cell(x, [h], training=True)[0]
    np.testing.assert_array_equal(cell(x, [h], training=True)[0], a)  # cached masks
    assert not np.allclose(cell(x, [h])[0], a)                          # inference: none
    cell.reset_dropout_mask()
    assert not np.array_equal(cell(x, [h], training=True)[0], a)      # new masks


# --------------------------------------------------------------------------------------------------
# User-written cells: the Python loop
# --------------------------------------------------------------------------------------------------

USER_CASES = [
    # cells, RNN kwargs, mask, initial_state, as_list
    ([("Minimal", {}, 3)], dict(return_sequences=True, return_state=True), "left", True, False),
    ([("Minimal", {}, 3)], dict(return_sequences=True, go_backwards=True), "gaps", False, False),
    ([("Minimal", {}, 3)], dict(return_state=True, go_backwards=True, zero_output_for_mask=True),
     "left", True, False),
    ([("Minimal", {}, 3)], dict(return_sequences=True, zero_output_for_mask=True), "gaps", False,
     False),
    ([("Minimal", {}, 3), ("Minimal", {}, 3)], dict(return_sequences=True, return_state=True,
                                                    go_backwards=True), "gaps", True, True),
    ([("GRU", {}, 3), ("Minimal", {}, 2)], dict(return_state=True), "left", False, False),
]


@needs_keras
@pytest.mark.parametrize("specs,rnn_kw,mask_kind,init,as_list", USER_CASES)
def test_user_cell_loop_matches_keras(specs, rnn_kw, mask_kind, init, as_list):
    rng = rng_for("user", specs, rnn_kw, mask_kind, init)
    stacked = len(specs) > 1
    k, ours = keras_pair(specs, rng, stacked=stacked, as_list=as_list, **rnn_kw)
    assert ours._fused is None
    x, mask = _x(rng), keras_mask(mask_kind)
    state = _initial_states(rng, specs, stacked) if init else None
    want = k(x, initial_state=state, mask=mask)
    got = ours(x, initial_state=state, mask=mask)
    close_tree("RNN(user cell)", got, want)
    if not stacked:  # the Keras cell object itself runs in our loop too (its arrays converted)
        mine = L.RNN(k.cell, **rnn_kw)
        got2 = mine(x, initial_state=state, mask=mask)
        assert all(isinstance(a, np.ndarray) for a in _flat_leaves(got2))
        close_tree("RNN(keras cell)", got2, want)


@needs_keras
def test_nested_cell_matches_keras():
    """The guide's NestedCell: nested inputs, states and outputs, against the loop Keras's RNN runs
    (keras.src.backend.rnn; keras.layers.RNN itself refuses nested inputs)."""
    from keras.src import backend as kbackend

    rng = rng_for("nested")
    u1, u2, u3, i1, i2, i3 = 2, 3, 2, 4, 3, 2
    x1, x2 = _x(rng, N, T, i1), _x(rng, N, T, i2, i3)
    kcell = KerasNestedCell(u1, u2, u3)
    kcell.build(((N, i1), (N, i2, i3)))
    weights = _uniform_weights(rng, [w.shape for w in kcell.get_weights()])
    kcell.set_weights(weights)
    cell = NestedCell(u1, u2, u3)
    rnn = L.RNN(cell, return_sequences=True, return_state=True)
    rnn.build(((N, T, i1), (N, T, i2, i3)))  # builds the cell with [(N, i1), (N, i2, i3)]
    assert cell.kernel_2_3.shape == (i2, i3, u2, u3)
    cell.set_weights(weights)
    init = [rng.standard_normal((N, u1)).astype(np.float32),
            rng.standard_normal((N, u2, u3)).astype(np.float32)]
    for go_backwards in (False, True):
        rnn.go_backwards = go_backwards

        def step(inputs, states):
            out, new = kcell(inputs, list(states))
            return out, list(new)

        # go_backwards: Keras's loop cannot flip nested outputs; it is the loop over the reversed
        # sequence (outputs in processed order)
        xs = (x1[:, ::-1], x2[:, ::-1]) if go_backwards else (x1, x2)
        _, k_outs, k_states = kbackend.rnn(step, xs, init)
        out, s1, s2 = rnn((x1, x2), initial_state=init)
        assert isinstance(out, tuple) and out[1].shape == (N, T, u2, u3)
        close_tree(f"outputs (go_backwards={go_backwards})", out, k_outs)
        close_tree("states", [s1, s2], k_states)
    # the last output, and the default initial state (the cell's get_initial_state)
    last = L.RNN(cell)((x1, x2))
    close_tree("last output", last, tuple(o[:, -1] for o in L.RNN(cell, return_sequences=True)(
        (x1, x2))))


@needs_keras
def test_nested_cell_masks():
    """Masks over nested outputs (Keras has no path for them): states kept at masked steps, the
    output there the previous output (zeros before the first step) or zeros; a left-padded sample
    ends where the same sequence without the padding ends."""
    rng = rng_for("nested-mask")
    cell = NestedCell(2, 3, 2)
    x1, x2 = _x(rng, N, T, 4), _x(rng, N, T, 3, 2)
    for kind, zero in (("gaps", False), ("left", False), ("gaps", True)):
        mask = keras_mask(kind)
        out, s1, s2 = L.RNN(cell, return_sequences=True, return_state=True,
                            zero_output_for_mask=zero)((x1, x2), mask=mask)
        plain = L.RNN(cell, return_sequences=True, return_state=True)
        for n in range(N):
            keep = mask[n]
            o_n, t1, t2 = plain((x1[n:n + 1, keep], x2[n:n + 1, keep]))
            close(f"{kind}: final s1[{n}]", s1[n:n + 1], t1)
            close(f"{kind}: final s2[{n}]", s2[n:n + 1], t2)
            last = np.zeros_like(out[0][n, 0]), np.zeros_like(out[1][n, 0])
            j = 0
            for t in range(T):
                if keep[t]:
                    last = o_n[0][0, j], o_n[1][0, j]
                    j += 1
                    want = last
                else:
                    want = last if not zero else (0 * last[0], 0 * last[1])
                close(f"{kind}: out[0][{n}, {t}]", out[0][n, t], want[0])
                close(f"{kind}: out[1][{n}, {t}]", out[1][n, t], want[1])


@needs_keras
def test_dict_states_match_keras():
    """States as a dict inside the state list, with a mask, go_backwards and zero_output_for_mask
    (the masked path Keras's loop has for them), against keras.src.backend.rnn."""
    from keras.src import backend as kbackend

    rng = rng_for("dict")
    cell = DictStateCell(U)
    cell.kernel, cell.recurrent_kernel = _uniform_weights(rng, [(C, U), (U, U)])
    x, mask = _x(rng), keras_mask("gaps")
    init = [{"h": rng.standard_normal((N, U)).astype(np.float32),
             "total": rng.standard_normal((N, U)).astype(np.float32)}]

    def step(inputs, states):
        s = states[0]
        h = jnp.tanh(inputs @ cell.kernel + s["h"] @ cell.recurrent_kernel)
        return h, [{"h": h, "total": s["total"] + h}]

    last, outs, states = kbackend.rnn(step, x, init, go_backwards=True, mask=mask,
                                      zero_output_for_mask=True)
    rnn = L.RNN(cell, return_sequences=True, return_state=True, go_backwards=True,
                zero_output_for_mask=True)
    out, st = rnn(x, initial_state=init, mask=mask)
    close("outputs", out, outs)
    close_tree("states", [st], states)
    close("last output", L.RNN(cell, go_backwards=True, zero_output_for_mask=True)(
        x, initial_state=init, mask=mask), last)
    default = L.RNN(cell, return_state=True)(x)  # zeros from state_size [{"h": U, "total": U}]
    close_tree("zero initial state", default, L.RNN(cell, return_state=True)(
        x, initial_state=[{"h": np.zeros((N, U)), "total": np.zeros((N, U))}]))


# --------------------------------------------------------------------------------------------------
# Fused vs loop: one core call per cell; the loop steps a built-in cell and agrees with the fused run
# --------------------------------------------------------------------------------------------------


def test_builtin_path_makes_one_fused_call_per_cell(monkeypatch):
    calls = []
    forward = functional.forward

    def counting(x, *args, **kw):
        calls.append(x.shape)
        return forward(x, *args, **kw)

    monkeypatch.setattr(functional, "forward", counting)
    rng = rng_for("calls")
    x = _x(rng)
    fusedrnn.RNN(fusedrnn.LSTMCell(U), return_sequences=True)(x)
    assert calls == [(N, T, C)]  # the whole sequence in one call
    calls.clear()
    fusedrnn.RNN([fusedrnn.LSTMCell(U), fusedrnn.GRUCell(2)], go_backwards=True)(x,
                                                                                mask=keras_mask("left"))
    assert calls == [(N, T, C), (N, T, U)]  # one per cell
    calls.clear()
    user = MinimalRNNCell(2)
    fusedrnn.RNN([fusedrnn.LSTMCell(U), user])(x)  # a user cell in the stack: the Python loop
    assert calls == [(N, 1, C)] * T and user.calls == T
    calls.clear()
    user = MinimalRNNCell(2)
    fusedrnn.RNN(user, return_sequences=True)(x)
    assert calls == [] and user.calls == T


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_loop_over_builtin_cells_equals_fused(dropout, monkeypatch):
    """The same RNN forced onto the Python loop (steps of T = 1, each cell's vjp) gives the fused
    run's outputs, states, input/state gradients and weight gradients -- with dropout too (the
    loop's first mask seed is the layer's first one, and the kernel's masks depend on the seed
    only)."""
    rng = rng_for("loop-vs-fused", dropout)
    x, mask = _x(rng), keras_mask("gaps")

    def make():
        cells = [L.LSTMCell(U, seed=1, dropout=dropout, recurrent_dropout=dropout),
                 L.GRUCell(2, seed=2, reset_after=False, dropout=dropout)]
        return L.RNN(cells, return_sequences=True, return_state=True, go_backwards=True)

    fused = make()
    fused.build((N, T, C))
    weights = fused.get_weights()
    state = [[rng.standard_normal((N, U)).astype(np.float32) for _ in range(2)],
             rng.standard_normal((N, 2)).astype(np.float32)]
    out_f = fused(x, initial_state=state, mask=mask, training=True)
    cot = [rng.standard_normal(np.shape(o)).astype(np.float32) for o in _flat_leaves(out_f)]
    d_out, d_states = cot[0], [cot[1:3], cot[3]]
    back_f = fused.backward(d_out, d_states)
    monkeypatch.setattr(L.RNN, "_fusable_cells", staticmethod(lambda cell: None))
    loop = make()
    assert loop._fused is None
    loop.set_weights(weights)
    out_l = loop(x, initial_state=state, mask=mask, training=True)
    close_tree("outputs", out_l, out_f)
    back_l = loop.backward(d_out, d_states)
    close_tree("dx, d_initial_state", back_l, back_f)
    close_tree("weight grads", loop.grads, fused.grads)
    if dropout:
        assert not np.allclose(out_f[0], make()(x, initial_state=state, mask=mask)[0])


class ProjectionCell:
    """h' = tanh(x W + h R), output h' P: the output is unlike the state, so at a masked step the
    loop outputs the previous output (Keras's loop has no rule for it). With a vjp."""

    def __init__(self, rng, units=3, out=2):
        self.state_size = units
        self.W, self.R, self.P = [rng.uniform(-0.8, 0.8, s) for s in
                                  [(C, units), (units, units), (units, out)]]

    def get_weights(self):
        return [self.W, self.R, self.P]

    def call(self, x, states):
        h = np.tanh(x @ self.W + states[0] @ self.R)
        return h @ self.P, [h]

    def vjp(self, x, states):
        out, (h,) = self.call(x, states)

        def pullback(d_out, d_new):
            ga = (d_out @ self.P.T + d_new[0]) * (1 - h * h)
            return ga @ self.W.T, [ga @ self.R.T], [x.T @ ga, states[0].T @ ga, h.T @ d_out]

        return out, [h], pullback


@pytest.mark.parametrize("go_backwards,zero", [(False, False), (True, False), (True, True)])
def test_loop_backward_matches_finite_differences(go_backwards, zero):
    """The loop's backward through masked steps, where the output is the previous output (or zero):
    directional derivatives in float64 against central differences."""
    rng = rng_for("fd", go_backwards, zero)
    cell = ProjectionCell(rng)
    kw = dict(return_sequences=True, return_state=True, go_backwards=go_backwards,
              zero_output_for_mask=zero)
    x, h0, mask = rng.standard_normal((N, T, C)), rng.standard_normal((N, 3)), keras_mask("gaps")
    dy, dh = rng.standard_normal((N, T, 2)), rng.standard_normal((N, 3))

    def f(x, h0):
        y, h = L.RNN(cell, **kw)(x, initial_state=[h0], mask=mask)
        return float(np.sum(y * dy) + np.sum(h * dh))

    rnn = L.RNN(cell, **kw)
    y, _ = rnn(x, initial_state=[h0], mask=mask, training=True)
    assert y.dtype == np.float64
    dx, (dh0,) = rnn.backward(dy, [dh])
    vx, vh = rng.standard_normal(x.shape), rng.standard_normal(h0.shape)
    eps = 1e-6
    num = (f(x + eps * vx, h0 + eps * vh) - f(x - eps * vx, h0 - eps * vh)) / (2 * eps)
    np.testing.assert_allclose(np.sum(dx * vx) + np.sum(dh0 * vh), num, rtol=1e-6)
    for i, w in enumerate(cell.get_weights()):
        v = rng.standard_normal(w.shape)
        w += eps * v
        up = f(x, h0)
        w -= 2 * eps * v
        down = f(x, h0)
        w += eps * v
        np.testing.assert_allclose(np.sum(rnn.grads[i] * v), (up - down) / (2 * eps), rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Stateful, training records, errors
# --------------------------------------------------------------------------------------------------


@needs_keras
@pytest.mark.parametrize("kind", ["LSTM", "Minimal"])
def test_stateful_matches_keras(kind):
    rng = rng_for("stateful", kind)
    specs = [(kind, {}, U)]
    k, ours = keras_pair(specs, rng, stateful=True, return_sequences=True)
    x1, x2 = _x(rng), _x(rng)
    assert ours.states is None
    for i, x in enumerate((x1, x2)):
        close(f"call {i}", ours(x), k(x))
        close_tree(f"states after call {i}", ours.states, [v.value for v in k.states])
    ours.reset_states()
    k.reset_states()
    close("after reset", ours(x2), k(x2))
    states = _initial_states(rng, specs, stacked=False)
    ours.reset_states(states)
    fresh = L.RNN(_our_cell(kind, U), return_sequences=True)
    fresh.set_weights(ours.get_weights())
    close("reset to states", ours(x1), fresh(x1, initial_state=states))
    with pytest.raises(ValueError, match="batch size"):
        ours(x1[:2])


def test_backward_records_and_errors():
    rng = rng_for("records")
    x = _x(rng)
    rnn = L.RNN(MinimalRNNCell(U), return_sequences=True)
    rnn.build((N, T, C))
    with pytest.raises(RuntimeError, match="training=True"):
        rnn.backward(np.ones((N, T, U), np.float32))
    rnn(x, training=True)
    with pytest.raises(NotImplementedError, match="MinimalRNNCell has no vjp"):
        rnn.backward(np.ones((N, T, U), np.float32))
    # a cell with a vjp: an inference call in between keeps the training record (as the layers)
    rnn = L.RNN(MinimalRNNCellVJP(U), return_sequences=True)
    y = rnn(x, training=True)
    dx = rnn.backward(np.ones_like(y))
    rnn(_x(rng))
    np.testing.assert_array_equal(rnn.backward(np.ones_like(y)), dx)
    with pytest.raises(ValueError, match=r"d_output: expected shape"):
        rnn.backward(np.ones((N, U), np.float32))
    # built-in cells get their own gradients too
    cells = [L.LSTMCell(U), L.SimpleRNNCell(2)]
    stack = L.RNN(L.StackedRNNCells(cells))
    y = stack(x, training=True)
    stack.backward(np.ones_like(y))
    assert len(stack.grads) == 6 and cells[1].grads[0].shape == (U, 2)
    assert stack.count_params() == sum(c.count_params() for c in cells)


BAD = [
    (lambda: L.RNN(object()), TypeError, "cell"),
    (lambda: L.RNN(L.LSTMCell(2), return_sequences=1), TypeError, "return_sequences"),
    (lambda: L.RNN(L.LSTMCell(2), go_backwards="yes"), TypeError, "go_backwards"),
    (lambda: L.RNN(L.LSTMCell(2), no_such_argument=1), TypeError, "no_such_argument"),
    (lambda: L.StackedRNNCells([]), ValueError, "cells"),
    (lambda: L.StackedRNNCells(L.LSTMCell(2)), TypeError, "cells"),
    (lambda: L.StackedRNNCells([L.LSTMCell(2), 3]), TypeError, r"cells\[1\]"),
    (lambda: L.LSTMCell(0), ValueError, "units"),
    (lambda: L.GRUCell(2, reset_after=None), TypeError, "reset_after"),
    (lambda: L.SimpleRNNCell(2, dropout=1.5), ValueError, "dropout"),
    (lambda: L.LSTMCell(2, return_sequences=True), TypeError, "return_sequences"),
    (lambda: L.SimpleRNNCell(2, implementation=2), TypeError, "implementation"),
]


@pytest.mark.parametrize("make,exc,match", BAD)
def test_bad_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_calls():
    rng = rng_for("bad")
    x = _x(rng)
    cell = L.LSTMCell(U)
    with pytest.raises(ValueError, match="inputs: expected a 2-D array"):
        cell(x, cell.get_initial_state(N))
    h = np.zeros((N, U), np.float32)
    with pytest.raises(ValueError, match="states: LSTM has 2 state"):
        cell(x[:, 0], [h])
    cell(x[:, 0], [h, h])
    with pytest.raises(ValueError, match="inputs: LSTMCell 'lstm_cell' was built for 4 features"):
        cell(x[:, 0, :2], [h, h])
    with pytest.raises(TypeError, match="batch_size"):
        cell.get_initial_state(None)
    rnn = L.RNN([L.LSTMCell(U), L.GRUCell(2)])
    with pytest.raises(TypeError, match="inputs: LSTMCell takes one array"):
        rnn((x, x))
    with pytest.raises(ValueError, match="initial_state: the stack has 2 cells"):
        rnn(x, initial_state=[h, h, h])
    with pytest.raises(ValueError, match=r"initial_state\[0\]: LSTMCell has 2 state"):
        rnn(x, initial_state=[[h], np.zeros((N, 2))])
    with pytest.raises(ValueError, match="mask: expected shape"):
        rnn(x, mask=np.ones((N, T + 1), bool))
    with pytest.raises(TypeError, match="training"):
        rnn(x, training="yes")
    user = L.RNN(MinimalRNNCell(U))
    with pytest.raises(ValueError, match="mask: expected shape"):
        user(x, mask=np.ones((N, 2), bool))
    with pytest.raises(ValueError, match="inputs: expected arrays"):
        user(x[0])
    with pytest.raises(ValueError, match="inputs: all arrays must share"):
        L.RNN(NestedCell(2, 3, 2))((x, _x(rng, N, T + 1, 3, 2)))
    with pytest.raises(ValueError, match="states: RNN 'rnn' is not stateful"):
        user.reset_states([h])

    class BadCell:
        state_size = U

        def call(self, inputs, states):
            return inputs[:, :U]  # no states

    with pytest.raises(TypeError, match=r"BadCell.call: expected \(output, new_states\)"):
        L.RNN(BadCell())(x)
    with pytest.raises(TypeError, match="state_size"):
        L.RNN(type("C", (), {"state_size": "3", "call": lambda self, i, s: (i, s)})())
