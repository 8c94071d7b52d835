"""Converters to and from Keras 3 weight lists and MXNet (FusedRNNCell) names.

Keras checks run real Keras 3 layers (JAX backend) on the same weights as fusedrnn.forward and
compare sequences and final states. Tolerance: max|fusedrnn - Keras| <= rtol * max(1, scale),
scale = max|Keras result|, rtol = 1e-5 for float32 and 1e-12 for float64. The problems are tiny
(T = 4 steps, dot products of C + H = 7 terms, weights uniform in +-0.8, states O(1)): each step
rounds to a few ulp (float32 eps = 6e-8) and 4 steps through tanh/sigmoid (slopes <= 1) do not
amplify that much, so two float32 implementations differ by about 1e-7 (observed: at most 1.8e-7);
1e-5 leaves a wide margin, while a layout mistake (a swapped gate, a missing transpose, a misplaced
bias) gives errors of order 0.1. Float64 differences are ~1e-16 (observed: at most 3.3e-16).

Keras 3.15.1 computes its tanh in float32 even in a float64 layer (keras.ops.tanh returns float32
for a float64 input under JAX, ~1e-7 errors; for SimpleRNN it even breaks the default lax.scan path
with a carry dtype mismatch), so the float64 cases pass activation=jnp.tanh; all else is Keras's
own.

Keras runs with unroll=True for speed: its eager JAX ops are compiled once per shape and reused by
every later layer, where lax.scan would recompile for each layer (the math of the step is the same
code; one case runs the default scan path too).
"""

import os

import numpy as np
import pytest

import fusedrnn
import reference as ref
from conftest import seed_of
from fusedrnn import converters as cv

os.environ["KERAS_BACKEND"] = "jax"
try:
    import jax

    jax.config.update("jax_enable_x64", True)  # Keras float64 layers need 64-bit JAX
    import keras

    if keras.backend.backend() != "jax":  # keras imported earlier with another backend
        keras = None
except ImportError:
    keras = None

if keras is not None:

    @keras.saving.register_keras_serializable(package="fusedrnn_tests")
    def tanh64(x):
        """tanh that keeps float64 (see the module docstring)."""
        return jax.numpy.tanh(x)

# Keras's Variable.__array__ predates NumPy 2's copy keyword; get_weights() warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
needs_keras = pytest.mark.skipif(keras is None, reason="needs keras 3 with the JAX backend")

MODES = fusedrnn.MODES
G = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
KERAS_LAYER = {
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
    "rnn_tanh": ("SimpleRNN", {"activation": "tanh"}),
    "rnn_relu": ("SimpleRNN", {"activation": "relu"}),
}
# Keras forms: (mode, reset_after); reset_after only differs for the GRU.
FORMS = [("lstm", True), ("gru", True), ("gru", False), ("rnn_tanh", True), ("rnn_relu", True)]


def make_keras(mode, C, H, *, bidirectional, use_bias=True, reset_after=True, dtype="float32",
               return_sequences=True, unroll=True):
    cls, kw = KERAS_LAYER[mode]
    if mode == "gru":
        kw = dict(kw, reset_after=reset_after)
    if dtype == "float64" and mode != "rnn_relu":
        # Keras 3.15.1's tanh (keras.ops.tanh) returns float32 for a float64 input under JAX, so a
        # float64 layer would be only float32-accurate; jnp.tanh keeps float64.
        kw = dict(kw, activation=tanh64)
    # zeros initialisers: the tests set the weights, and Keras's orthogonal initialiser is slow
    layer = getattr(keras.layers, cls)(H, use_bias=use_bias, return_sequences=return_sequences,
                                       return_state=True, unroll=unroll, dtype=dtype,
                                       kernel_initializer="zeros", recurrent_initializer="zeros",
                                       **kw)
    if bidirectional:
        layer = keras.layers.Bidirectional(layer, merge_mode="concat", dtype=dtype)
    layer.build((None, None, C))
    return layer


def random_keras_weights(mode, C, H, rng, *, bidirectional, use_bias=True, reset_after=True,
                         dtype=np.float32):
    shapes = cv.keras_weight_shapes(mode, C, H, bidirectional=bidirectional, use_bias=use_bias,
                                    reset_after=reset_after)
    return [rng.uniform(-0.8, 0.8, s).astype(dtype) for s in shapes]


def random_flat(mode, C, H, rng, *, bidirectional, dtype=np.float32):
    n = fusedrnn.param_size(mode, C, H, 1, bidirectional)
    return rng.uniform(-1, 1, n).astype(dtype)


def assert_close(name, actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    rtol = 1e-5 if expected.dtype == np.float32 else 1e-12
    scale = max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    assert err <= rtol * scale, f"{name}: max abs err {err:.3g} > {rtol * scale:.3g}"


# --------------------------------------------------------------------------------------------------
# Keras: the same weights give the same results
# --------------------------------------------------------------------------------------------------

N, T, C, H = 2, 4, 3, 4
KERAS_CASES = (
    [(m, bi, ub, "float32", True, True)
     for m in MODES for bi in (False, True) for ub in (True, False)]
    + [(m, True, True, "float64", True, True) for m in MODES]
    + [("rnn_tanh", False, False, "float64", True, True)]
    + [("lstm", True, True, "float32", False, True),  # return_sequences=False: output = hN halves
       ("gru", True, True, "float32", True, False)]  # Keras's default lax.scan path
)


@needs_keras
@pytest.mark.parametrize("mode,bi,use_bias,dtype,return_sequences,unroll", KERAS_CASES)
def test_keras_forward_matches(mode, bi, use_bias, dtype, return_sequences, unroll):
    rng = np.random.default_rng(seed_of(mode, bi, use_bias, dtype))
    D = 2 if bi else 1
    layer = make_keras(mode, C, H, bidirectional=bi, use_bias=use_bias, dtype=dtype,
                       return_sequences=return_sequences, unroll=unroll)
    layer.set_weights(random_keras_weights(mode, C, H, rng, bidirectional=bi, use_bias=use_bias,
                                           dtype=dtype))
    x = rng.standard_normal((N, T, C)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((D, N, H))).astype(dtype)
    c0 = rng.standard_normal((D, N, H)).astype(dtype) if mode == "lstm" else None
    # Keras initial states: per direction [h, c] (LSTM) or [h]; forward layer's first.
    init = [s for d in range(D) for s in ([h0[d], c0[d]] if mode == "lstm" else [h0[d]])]
    out = [np.asarray(o) for o in layer(x, initial_state=init)]

    flat = cv.keras_to_flat(layer.get_weights(), mode, C, H, bidirectional=bi, use_bias=use_bias)
    assert flat.dtype == np.dtype(dtype)
    res = fusedrnn.forward(x, flat, mode=mode, hidden_size=H, bidirectional=bi, h0=h0, c0=c0,
                           batch_first=True)
    # Keras returns (output, states of the forward layer..., states of the backward layer...).
    per_dir = 2 if mode == "lstm" else 1
    assert len(out) == 1 + D * per_dir
    for d in range(D):
        assert_close(f"h[{d}]", res.hN[d], out[1 + d * per_dir])
        if mode == "lstm":
            assert_close(f"c[{d}]", res.cN[d], out[2 + d * per_dir])
    if return_sequences:
        # Bidirectional(concat) flips the backward layer's sequence into the original time order:
        # exactly fusedrnn's (N, T, 2H) y.
        assert_close("y", res.y, out[0])
    else:
        # The last output of each layer: the forward half is y[:, -1]; the backward half is the
        # backward layer's state after reading x[:, 0], i.e. hN[1], not y[:, -1, H:].
        assert_close("output", np.concatenate(list(res.hN), axis=-1), out[0])
        assert not np.allclose(res.y[:, -1, H:], res.hN[1])


@needs_keras
def test_keras_gru_reset_before_matches_reference():
    """GRU(reset_after=False): fusedrnn.forward has no reset-before form yet, so the converted flat
    vector is run through the test's float64 reference (its reset_after=False form, where b_hn sits
    outside the reset like b_in); this checks that one Keras bias -> b_ih, b_hh = 0 is exact."""
    rng = np.random.default_rng(7)
    layer = make_keras("gru", C, H, bidirectional=True, reset_after=False, dtype="float64")
    layer.set_weights(random_keras_weights("gru", C, H, rng, bidirectional=True, reset_after=False,
                                           dtype=np.float64))
    x = rng.standard_normal((N, T, C))
    h0 = 0.5 * rng.standard_normal((2, N, H))
    out = [np.asarray(o) for o in layer(x, initial_state=[h0[0], h0[1]])]
    flat = cv.keras_to_flat(layer.get_weights(), "gru", C, H, bidirectional=True,
                            reset_after=False)
    y, hN, _, _ = ref.forward(x.swapaxes(0, 1), flat, "gru", H, 1, True, h0, reset_after=False)
    assert_close("y", y.swapaxes(0, 1), out[0])
    assert_close("h[0]", hN[0], out[1])
    assert_close("h[1]", hN[1], out[2])
    # ... and reset-before GRU differs from reset-after on the same weights (the flag matters).
    y_after = ref.forward(x.swapaxes(0, 1), flat, "gru", H, 1, True, h0)[0]
    assert not np.allclose(y_after, y)


# --------------------------------------------------------------------------------------------------
# Keras: shapes, round trips, parameter counts
# --------------------------------------------------------------------------------------------------

@needs_keras
@pytest.mark.parametrize("mode,reset_after", FORMS)
@pytest.mark.parametrize("bi", (False, True))
@pytest.mark.parametrize("use_bias", (True, False))
def test_keras_weight_shapes_match_keras(mode, reset_after, bi, use_bias):
    layer = make_keras(mode, 3, 5, bidirectional=bi, use_bias=use_bias, reset_after=reset_after)
    shapes = cv.keras_weight_shapes(mode, 3, 5, bidirectional=bi, use_bias=use_bias,
                                    reset_after=reset_after)
    assert shapes == [tuple(w.shape) for w in layer.get_weights()]
    w = random_flat(mode, 3, 5, np.random.default_rng(0), bidirectional=bi)
    if not use_bias:
        for b in biases(w, mode, 3, 5, bi).values():
            b[...] = 0
    assert [a.shape for a in cv.flat_to_keras(w, mode, 3, 5, bidirectional=bi, use_bias=use_bias,
                                              reset_after=reset_after)] == shapes


def biases(flat, mode, C, H, bi):
    """{(direction, 'i2h'|'h2h'): bias view}."""
    return {(p.direction, p.part): flat[p.offset:p.offset + p.size]
            for p in fusedrnn.param_layout(mode, C, H, 1, bi) if p.kind == "bias"}


@pytest.mark.parametrize("mode,reset_after", FORMS)
@pytest.mark.parametrize("bi", (False, True))
@pytest.mark.parametrize("use_bias", (True, False))
@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_keras_round_trips(mode, reset_after, bi, use_bias, dtype):
    kw = dict(bidirectional=bi, use_bias=use_bias, reset_after=reset_after)
    rng = np.random.default_rng(3)
    D = 2 if bi else 1
    split = mode == "gru" and reset_after

    # keras -> flat -> keras: bit for bit, and the flat vector is in the converter's image.
    kw_list = random_keras_weights(mode, 3, 5, rng, dtype=dtype, **kw)
    flat = cv.keras_to_flat(kw_list, mode, 3, 5, **kw)
    assert flat.dtype == dtype
    back = cv.flat_to_keras(flat, mode, 3, 5, **kw)
    assert len(back) == len(kw_list)
    for a, b in zip(back, kw_list):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    b = biases(flat, mode, 3, 5, bi)
    for d in range(D):
        if not use_bias:
            assert not b[(d, "i2h")].any() and not b[(d, "h2h")].any()
        elif not split:
            assert not b[(d, "h2h")].any()  # one Keras bias -> b_ih, b_hh = 0
    # flat -> keras -> flat: exact for a flat vector in the image.
    np.testing.assert_array_equal(cv.keras_to_flat(back, mode, 3, 5, **kw), flat)

    # A general flat vector: weights exact; where Keras keeps one bias, it gets b_ih + b_hh and
    # comes back as b_ih' = b_ih + b_hh, b_hh' = 0 (the same function).
    if use_bias:
        general = random_flat(mode, 3, 5, rng, bidirectional=bi, dtype=dtype)
        again = cv.keras_to_flat(cv.flat_to_keras(general, mode, 3, 5, **kw), mode, 3, 5, **kw)
        gb, ab = biases(general, mode, 3, 5, bi), biases(again, mode, 3, 5, bi)
        pieces = fusedrnn.param_layout(mode, 3, 5, 1, bi)
        n_weights = min(p.offset for p in pieces if p.kind == "bias")
        np.testing.assert_array_equal(again[:n_weights], general[:n_weights])
        for d in range(D):
            if split:
                np.testing.assert_array_equal(ab[(d, "i2h")], gb[(d, "i2h")])
                np.testing.assert_array_equal(ab[(d, "h2h")], gb[(d, "h2h")])
            else:
                np.testing.assert_array_equal(ab[(d, "i2h")], gb[(d, "i2h")] + gb[(d, "h2h")])
                assert not ab[(d, "h2h")].any()


def test_keras_layout_by_hand():
    """LSTM i,f,c,o = ours, transposed; GRU z,r,h = ours r,z,n with the first two swapped."""
    C_, H_ = 2, 3
    w = np.arange(fusedrnn.param_size("gru", C_, H_), dtype=np.float64)
    sd = cv.flat_to_torch(w, "gru", C_, H_)
    kernel, rec, bias = cv.flat_to_keras(w, "gru", C_, H_)
    r, z, n = (slice(k * H_, (k + 1) * H_) for k in range(3))
    w_ih = sd["weight_ih_l0"]
    np.testing.assert_array_equal(kernel, np.concatenate([w_ih[z], w_ih[r], w_ih[n]]).T)
    np.testing.assert_array_equal(rec[:, :H_], sd["weight_hh_l0"][z].T)
    np.testing.assert_array_equal(bias[0, H_:2 * H_], sd["bias_ih_l0"][r])
    np.testing.assert_array_equal(bias[1, 2 * H_:], sd["bias_hh_l0"][n])
    w = np.arange(fusedrnn.param_size("lstm", C_, H_), dtype=np.float32)
    sd = cv.flat_to_torch(w, "lstm", C_, H_)
    kernel, rec, bias = cv.flat_to_keras(w, "lstm", C_, H_)
    np.testing.assert_array_equal(kernel, sd["weight_ih_l0"].T)
    np.testing.assert_array_equal(rec, sd["weight_hh_l0"].T)
    np.testing.assert_array_equal(bias, sd["bias_ih_l0"] + sd["bias_hh_l0"])


# Keras's documented examples: (layer, input features, Keras params).
PARAM_COUNTS = [
    ("lstm", 64, 128, False, 98_816),
    ("gru", 64, 256, False, 247_296),
    ("rnn_tanh", 256, 128, False, 49_280),
    ("lstm", 10, 64, True, 38_400),
]


@pytest.mark.parametrize("mode,C_,H_,bi,keras_count", PARAM_COUNTS)
def test_param_counts_relate_to_keras(mode, C_, H_, bi, keras_count):
    D = 2 if bi else 1
    shapes = cv.keras_weight_shapes(mode, C_, H_, bidirectional=bi)
    assert sum(int(np.prod(s)) for s in shapes) == keras_count
    ours = fusedrnn.param_size(mode, C_, H_, 1, bi)
    # fusedrnn keeps b_ih and b_hh; Keras one bias, except GRU(reset_after=True), which keeps both.
    extra_bias = 0 if mode == "gru" else D * G[mode] * H_
    assert ours == keras_count + extra_bias
    # without biases Keras has 2 bias vectors per direction fewer than fusedrnn
    nb = cv.keras_weight_shapes(mode, C_, H_, bidirectional=bi, use_bias=False)
    assert ours == sum(int(np.prod(s)) for s in nb) + 2 * D * G[mode] * H_
    if mode == "gru":  # reset_after=False: one bias vector per direction
        rb = cv.keras_weight_shapes(mode, C_, H_, bidirectional=bi, reset_after=False)
        assert ours == sum(int(np.prod(s)) for s in rb) + D * 3 * H_
    if keras is not None:
        layer = make_keras(mode, C_, H_, bidirectional=bi)
        assert layer.count_params() == keras_count


# --------------------------------------------------------------------------------------------------
# MXNet
# --------------------------------------------------------------------------------------------------

def mxnet_slice_weights(arr, mode, li, lh, num_layers, bidirectional, prefix):
    """MXNet 1.x FusedRNNCell._slice_weights, transcribed (rnn_cell.py): the pointer walk over the
    fused vector, as an independent oracle for names, order and shapes."""
    gate_names = {"rnn_relu": [""], "rnn_tanh": [""], "lstm": ["_i", "_f", "_c", "_o"],
                  "gru": ["_r", "_z", "_o"]}[mode]
    directions = ["l", "r"] if bidirectional else ["l"]
    args, b, p = {}, len(directions), 0
    for layer in range(num_layers):
        for direction in directions:
            for gate in gate_names:
                name = "%s%s%d_i2h%s_weight" % (prefix, direction, layer, gate)
                size = b * lh * lh if layer > 0 else li * lh
                args[name] = arr[p:p + size].reshape((lh, b * lh) if layer > 0 else (lh, li))
                p += size
            for gate in gate_names:
                name = "%s%s%d_h2h%s_weight" % (prefix, direction, layer, gate)
                args[name] = arr[p:p + lh * lh].reshape((lh, lh))
                p += lh * lh
    for layer in range(num_layers):
        for direction in directions:
            for group in ("i2h", "h2h"):
                for gate in gate_names:
                    name = "%s%s%d_%s%s_bias" % (prefix, direction, layer, group, gate)
                    args[name] = arr[p:p + lh]
                    p += lh
    assert p == arr.size
    return args


def test_mxnet_names_lstm_2_layers_bidirectional():
    got = cv.mxnet_param_shapes("lstm", 4, 3, 2, True, prefix="lstm_")
    expected = {}
    for layer, c_in in ((0, 4), (1, 6)):
        for d in "lr":
            for part, cols in (("i2h", c_in), ("h2h", 3)):
                for g in "ifco":
                    expected[f"lstm_{d}{layer}_{part}_{g}_weight"] = (3, cols)
    for layer in (0, 1):
        for d in "lr":
            for part in ("i2h", "h2h"):
                for g in "ifco":
                    expected[f"lstm_{d}{layer}_{part}_{g}_bias"] = (3,)
    assert list(got.items()) == list(expected.items())
    assert list(got)[:10] == [
        "lstm_l0_i2h_i_weight", "lstm_l0_i2h_f_weight", "lstm_l0_i2h_c_weight",
        "lstm_l0_i2h_o_weight", "lstm_l0_h2h_i_weight", "lstm_l0_h2h_f_weight",
        "lstm_l0_h2h_c_weight", "lstm_l0_h2h_o_weight", "lstm_r0_i2h_i_weight",
        "lstm_r0_i2h_f_weight",
    ]
    assert len(got) == 64
    assert got["lstm_r1_i2h_c_weight"] == (3, 6) and got["lstm_r1_h2h_o_bias"] == (3,)


def test_mxnet_names_gru_and_rnn():
    assert list(cv.mxnet_param_shapes("gru", 4, 3).items()) == [
        ("l0_i2h_r_weight", (3, 4)), ("l0_i2h_z_weight", (3, 4)), ("l0_i2h_o_weight", (3, 4)),
        ("l0_h2h_r_weight", (3, 3)), ("l0_h2h_z_weight", (3, 3)), ("l0_h2h_o_weight", (3, 3)),
        ("l0_i2h_r_bias", (3,)), ("l0_i2h_z_bias", (3,)), ("l0_i2h_o_bias", (3,)),
        ("l0_h2h_r_bias", (3,)), ("l0_h2h_z_bias", (3,)), ("l0_h2h_o_bias", (3,)),
    ]
    # vanilla RNNs have no gate part in the name
    names = cv.mxnet_param_shapes("rnn_relu", 4, 3, bidirectional=True, prefix="rnn_relu_")
    assert list(names) == [
        "rnn_relu_l0_i2h_weight", "rnn_relu_l0_h2h_weight", "rnn_relu_r0_i2h_weight",
        "rnn_relu_r0_h2h_weight", "rnn_relu_l0_i2h_bias", "rnn_relu_l0_h2h_bias",
        "rnn_relu_r0_i2h_bias", "rnn_relu_r0_h2h_bias",
    ]
    assert cv.mxnet_fused_name("lstm_") == "lstm_parameters"
    assert cv.mxnet_fused_name() == "parameters"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L,bi", ((1, False), (2, True), (3, False)))
@pytest.mark.parametrize("prefix", ("", "gru_"))
def test_mxnet_round_trip_and_oracle(mode, L, bi, prefix):
    C_, H_ = 4, 3
    n = fusedrnn.param_size(mode, C_, H_, L, bi)
    flat = np.random.default_rng(L).uniform(-1, 1, n)
    named = cv.flat_to_mxnet(flat, mode, C_, H_, L, bi, prefix=prefix)
    oracle = mxnet_slice_weights(flat, mode, C_, H_, L, bi, prefix)
    assert list(named) == list(oracle)
    for k in oracle:
        np.testing.assert_array_equal(named[k], oracle[k])
    # gate k of every piece is rows k*H:(k+1)*H of the torch-named block
    sd = cv.flat_to_torch(flat, mode, C_, H_, L, bi)
    suffixes = {"lstm": ["_i", "_f", "_c", "_o"], "gru": ["_r", "_z", "_o"]}.get(mode, [""])
    for p in fusedrnn.param_layout(mode, C_, H_, L, bi):
        for k, sfx in enumerate(suffixes):
            name = prefix + p.name.replace(f"_{p.part}_", f"_{p.part}{sfx}_")
            np.testing.assert_array_equal(named[name], sd[p.torch_name][k * H_:(k + 1) * H_])
    back = cv.mxnet_to_flat(named, mode, C_, H_, L, bi, prefix=prefix)
    assert back.dtype == flat.dtype
    np.testing.assert_array_equal(back, flat)
    named32 = {k: v.astype(np.float32) for k, v in named.items()}
    f32 = cv.mxnet_to_flat(named32, mode, C_, H_, L, bi, prefix=prefix)
    assert f32.dtype == np.float32
    np.testing.assert_array_equal(f32, flat.astype(np.float32))
    first = next(iter(named))
    named[first][0, 0] += 1  # copies, not views
    assert flat[0] == back[0]


# --------------------------------------------------------------------------------------------------
# Rejected input: ValueError for values and shapes, TypeError for types; messages name the argument
# --------------------------------------------------------------------------------------------------

def raises(exc, match, fn, *args, **kw):
    with pytest.raises(exc, match=match):
        fn(*args, **kw)


def test_keras_bad_input():
    k = cv.flat_to_keras(random_flat("lstm", 3, 2, np.random.default_rng(0), bidirectional=True),
                         "lstm", 3, 2, bidirectional=True)
    to_flat = cv.keras_to_flat
    raises(ValueError, r"weights_list: expected 6 arrays", to_flat, k[:3], "lstm", 3, 2,
           bidirectional=True)
    raises(ValueError, r"weights_list: expected 3 arrays", to_flat, k, "lstm", 3, 2)
    raises(ValueError, r"weights_list: expected 4 arrays", to_flat, k[:5], "lstm", 3, 2,
           bidirectional=True, use_bias=False)
    raises(ValueError, r"weights_list\[0\] \(forward kernel\): expected shape \(3, 8\)", to_flat,
           [k[0].T] + k[1:], "lstm", 3, 2, bidirectional=True)
    raises(ValueError, r"weights_list\[5\] \(backward bias\): expected shape \(8,\)", to_flat,
           k[:5] + [k[5][:4]], "lstm", 3, 2, bidirectional=True)
    raises(TypeError, r"weights_list\[4\] \(backward recurrent_kernel\): expected dtype", to_flat,
           k[:4] + [k[4].astype(int)] + k[5:], "lstm", 3, 2, bidirectional=True)
    raises(TypeError, r"weights_list: expected one dtype", to_flat,
           k[:4] + [k[4].astype(np.float64)] + k[5:], "lstm", 3, 2, bidirectional=True)
    raises(TypeError, r"weights_list: expected a list", to_flat, {"kernel": k[0]}, "lstm", 3, 2)
    raises(TypeError, r"weights_list: expected a list", to_flat, k[0], "lstm", 3, 2)
    g = cv.flat_to_keras(random_flat("gru", 3, 2, np.random.default_rng(0), bidirectional=False),
                         "gru", 3, 2)
    raises(ValueError, r"weights_list\[2\] \(forward bias\): expected shape \(6,\)", to_flat, g,
           "gru", 3, 2, reset_after=False)
    raises(ValueError, r"mode", to_flat, g, "GRU", 3, 2)
    raises(TypeError, r"mode", to_flat, g, None, 3, 2)
    raises(ValueError, r"hidden_size", to_flat, g, "gru", 3, 0)
    raises(TypeError, r"input_size", to_flat, g, "gru", 3.0, 2)
    raises(TypeError, r"bidirectional", to_flat, g, "gru", 3, 2, bidirectional="yes")
    raises(TypeError, r"use_bias", to_flat, g, "gru", 3, 2, use_bias=1)
    raises(TypeError, r"reset_after", to_flat, g, "gru", 3, 2, reset_after=None)

    w = random_flat("lstm", 3, 2, np.random.default_rng(0), bidirectional=False)
    raises(ValueError, r"flat: expected shape \(56,\)", cv.flat_to_keras, w[:-1], "lstm", 3, 2)
    raises(ValueError, r"flat: expected shape \(112,\)", cv.flat_to_keras, w, "lstm", 3, 2,
           bidirectional=True)
    raises(TypeError, r"flat: expected dtype", cv.flat_to_keras, w.astype(np.int64), "lstm", 3, 2)
    raises(ValueError, r"flat: use_bias=False drops the biases", cv.flat_to_keras, w, "lstm", 3, 2,
           use_bias=False)
    w[-16:] = 0  # zero biases: fine without them
    assert len(cv.flat_to_keras(w, "lstm", 3, 2, use_bias=False)) == 2


def test_mxnet_bad_input():
    w = random_flat("gru", 4, 3, np.random.default_rng(0), bidirectional=True)
    named = cv.flat_to_mxnet(w, "gru", 4, 3, bidirectional=True)
    to_flat = cv.mxnet_to_flat
    raises(ValueError, r"named: names do not match.*missing \['l0_i2h_r_weight'\]", to_flat,
           {k: v for k, v in named.items() if k != "l0_i2h_r_weight"}, "gru", 4, 3,
           bidirectional=True)
    raises(ValueError, r"unexpected \['l0_i2h_n_weight'\]", to_flat,
           dict(named, l0_i2h_n_weight=named["l0_i2h_o_weight"]), "gru", 4, 3, bidirectional=True)
    raises(ValueError, r"missing \['gru_l0_i2h_r_weight', 'gru_l0_i2h_z_weight'", to_flat, named,
           "gru", 4, 3, bidirectional=True, prefix="gru_")  # a prefix that is not there
    raises(ValueError, r"names do not match", to_flat, named, "gru", 4, 3)  # not bidirectional
    raises(ValueError, r"names do not match", to_flat, named, "lstm", 4, 3, bidirectional=True)
    raises(ValueError, r"named\['r0_h2h_z_weight'\]: expected shape \(3, 3\)", to_flat,
           dict(named, r0_h2h_z_weight=np.zeros((3, 4), np.float32)), "gru", 4, 3,
           bidirectional=True)
    raises(ValueError, r"named\['l0_i2h_o_bias'\]: expected shape \(3,\)", to_flat,
           dict(named, l0_i2h_o_bias=np.zeros((9,), np.float32)), "gru", 4, 3, bidirectional=True)
    raises(TypeError, r"named: expected one dtype", to_flat,
           dict(named, l0_i2h_o_bias=named["l0_i2h_o_bias"].astype(np.float64)), "gru", 4, 3,
           bidirectional=True)
    raises(TypeError, r"named\['l0_i2h_o_bias'\]: expected dtype", to_flat,
           dict(named, l0_i2h_o_bias=np.zeros(3, np.int32)), "gru", 4, 3, bidirectional=True)
    raises(TypeError, r"named: expected a mapping", to_flat, list(named.values()), "gru", 4, 3)
    raises(TypeError, r"prefix: expected a string", to_flat, named, "gru", 4, 3, prefix=None)
    raises(TypeError, r"prefix: expected a string", cv.mxnet_fused_name, 0)
    raises(ValueError, r"flat: expected shape \(162,\)", cv.flat_to_mxnet, w[:-1], "gru", 4, 3,
           bidirectional=True)
    raises(ValueError, r"num_layers", cv.flat_to_mxnet, w, "gru", 4, 3, 0)
    raises(ValueError, r"mode", cv.mxnet_param_shapes, "lstmp", 4, 3)
