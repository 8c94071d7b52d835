"""fusedrnn.checkpoint: MXNet's .params binary format against real MXNet 1.9.1 (run in its own venv,
tests/mxnet_env.py; skipped only when it cannot be installed), fusedrnn's npz checkpoints, atomic
saves, robustness against damaged and foreign files, and MXNet's rnn checkpoint API.

Real MXNet runs twice for the whole module (each call costs ~1.6 s): once (``mx_written``) to write
.params files of every kind and compute mx.nd.RNN outputs, once (``mx_read``) to read the files
fusedrnn wrote.
"""

import os
import pickle
import struct
import zipfile
from pathlib import Path

import fusedrnn
import numpy as np
import pytest
from fusedrnn import checkpoint as ck
from fusedrnn import converters as cv
from mxnet_env import run_mxnet

C, H, L, T, N = 5, 4, 2, 6, 3  # the RNNs of the MXNet comparisons: 2 layers, bidirectional
NUM_GATES = {"lstm": 4, "gru": 3}


# ==================================================================================================
# Duck-typed cells with MXNet's weight interface (the real fusedrnn.rnn_cell cells are tested below)
# ==================================================================================================


class FusedCell:
    """MXNet FusedRNNCell's unpack_weights / pack_weights (args.pop: KeyError when missing; shapes
    checked by the converters: ValueError)."""

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bidirectional=False,
                 prefix=None):
        self.desc = (mode, input_size, hidden_size, num_layers, bidirectional)
        self._prefix = f"{mode}_" if prefix is None else prefix

    def unpack_weights(self, args):
        args = dict(args)
        flat = args.pop(self._prefix + "parameters")
        args.update(cv.flat_to_mxnet(np.asarray(flat), *self.desc, prefix=self._prefix))
        return args

    def pack_weights(self, args):
        args = dict(args)
        names = cv.mxnet_param_shapes(*self.desc, prefix=self._prefix)
        sub = {n: args.pop(n) for n in names}
        args[self._prefix + "parameters"] = cv.mxnet_to_flat(sub, *self.desc, prefix=self._prefix)
        return args


class GateCell:
    """MXNet BaseRNNCell's unpack_weights / pack_weights (LSTMCell, GRUCell): '{prefix}i2h_weight'
    (G*H, C) <-> per-gate '{prefix}i2h_i_weight' (H, C); pack concatenates without shape checks."""

    GATES = {"lstm": ("_i", "_f", "_c", "_o"), "gru": ("_r", "_z", "_o")}  # noqa: RUF012

    def __init__(self, mode, hidden_size, prefix):
        self._gate_names, self._num_hidden, self._prefix = self.GATES[mode], hidden_size, prefix

    def unpack_weights(self, args):
        args = dict(args)
        h = self._num_hidden
        for group in ("i2h", "h2h"):
            weight = args.pop(f"{self._prefix}{group}_weight")
            bias = args.pop(f"{self._prefix}{group}_bias")
            for j, gate in enumerate(self._gate_names):
                args[f"{self._prefix}{group}{gate}_weight"] = weight[j * h:(j + 1) * h].copy()
                args[f"{self._prefix}{group}{gate}_bias"] = bias[j * h:(j + 1) * h].copy()
        return args

    def pack_weights(self, args):
        args = dict(args)
        for group in ("i2h", "h2h"):
            for kind in ("weight", "bias"):
                parts = [args.pop(f"{self._prefix}{group}{g}_{kind}") for g in self._gate_names]
                args[f"{self._prefix}{group}_{kind}"] = np.concatenate(parts)
        return args


def unfused_cells(mode, prefix):
    """The GateCells of MXNet's FusedRNNCell(...).unfuse() for L layers, bidirectional."""
    return [GateCell(mode, H, f"{prefix}{d}{layer}_") for layer in range(L) for d in "lr"]


def flat_size(mode):
    return fusedrnn.param_size(mode, C, H, L, True)


def same_arrays(got: dict, want: dict):
    """Same names in the same order, and arrays equal in dtype, shape and bits."""
    assert list(got) == list(want)
    for k in want:
        g, w = np.asarray(got[k]), np.asarray(want[k])
        assert g.dtype == w.dtype and g.shape == w.shape, (k, g.dtype, w.dtype, g.shape, w.shape)
        assert g.tobytes() == w.tobytes(), k


# ==================================================================================================
# Real MXNet writes .params files (one subprocess for all of them)
# ==================================================================================================

WRITER = r"""
import os
import numpy as np
import mxnet as mx

d = out_dir
j = lambda name: os.path.join(d, name)
mx.random.seed(11)
rng = np.random.RandomState(7)

arrays = {
    "f32": rng.standard_normal((2, 3)).astype("float32"),
    "f64": rng.standard_normal((4,)),
    "f16": rng.standard_normal((2, 2, 2)).astype("float16"),
    "u8": rng.randint(0, 256, (5,)).astype("uint8"),
    "i8": rng.randint(-128, 128, (3, 1)).astype("int8"),
    "i32": rng.randint(-2**31, 2**31 - 1, (2, 2), dtype="int64").astype("int32"),
    "i64": np.array([-2**62, 2**40 + 3, 0, 7], dtype="int64"),
    "b": np.array([True, False, True]),
    "arg:w": rng.standard_normal((7, 5, 3)).astype("float32"),
    "aux:running_mean": np.array([3.5], "float32"),
    "nd6": rng.standard_normal((1, 2, 1, 2, 1, 2)).astype("float64"),
}
nds = {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()}
mx.nd.save(j("dtypes.params"), nds)
outputs["dtypes"] = {k: v.asnumpy() for k, v in nds.items()}
mx.nd.save(j("list.params"), [nds["f32"], nds["i64"]])
mx.nd.save(j("empty.params"), {})

# unsupported storage types and dtypes, as MXNet writes them
rsp = mx.nd.sparse.row_sparse_array((np.ones((1, 3), "f4"), [1]), shape=(3, 3))
mx.nd.save(j("row_sparse.params"), {"rsp": rsp})
mx.nd.save(j("csr.params"), {"csr": mx.nd.array(np.eye(3)).tostype("csr")})
mx.nd.save(j("bfloat16.params"),
           {"bf": mx.nd.array([1, 2], dtype=np.dtype([("bfloat16", np.uint16)]))})

# FusedRNNCell parameter vectors, mx.nd.RNN outputs on them, and checkpoints of them
mx.random.seed(3)
for mode in ("lstm", "gru"):
    cell = mx.rnn.FusedRNNCell(H, num_layers=L, mode=mode, bidirectional=True, prefix=mode + "_")
    m, b = {"lstm": 4, "gru": 3}[mode], 2
    n = (C + H + 2) * H * m * b + (L - 1) * m * H * (H + b * H + 2) * b
    vec = mx.nd.random.uniform(-0.5, 0.5, shape=(n,))
    x = mx.nd.random.normal(shape=(T, N, C))
    h0 = mx.nd.random.normal(shape=(L * b, N, H))
    c0 = mx.nd.random.normal(shape=(L * b, N, H))
    kw = dict(state_size=H, num_layers=L, bidirectional=True, mode=mode, state_outputs=True)
    if mode == "lstm":
        y, hy, cy = mx.nd.RNN(data=x, parameters=vec, state=h0, state_cell=c0, **kw)
    else:
        y, hy = mx.nd.RNN(data=x, parameters=vec, state=h0, **kw)
        cy = None
    arg = {mode + "_parameters": vec, "fc_weight": mx.nd.array(rng.standard_normal((2, 3)))}
    aux = {"bn_moving_var": mx.nd.array(rng.standard_normal((4,)))}
    mx.model.save_checkpoint(j(mode + "-fused"), 3, None, arg, aux)
    unpacked = cell.unpack_weights({mode + "_parameters": vec})
    per_layer = cell.unfuse().pack_weights(unpacked)   # 'lstm_l0_i2h_weight' (4H, C), ...
    mx.model.save_checkpoint(j(mode + "-unfused"), 3, None, per_layer, {})
    # MXNet's own save_rnn_checkpoint: fused cell, and the unfused stack
    mx.rnn.save_rnn_checkpoint(cell, j(mode + "-rnn"), 5, None, {mode + "_parameters": vec}, aux)
    mx.rnn.save_rnn_checkpoint(cell.unfuse(), j(mode + "-rnnunf"), 2, None, per_layer, {})
    outputs[mode] = dict(vec=vec, x=x, h0=h0, c0=c0, y=y, hy=hy, cy=cy, aux=aux,
                         fc_weight=arg["fc_weight"], unpacked=unpacked, per_layer=per_layer,
                         unpacked_names=list(unpacked), per_layer_names=list(per_layer))

# do_rnn_checkpoint: which epochs each period saves, over iter_no 0..7
cell = mx.rnn.FusedRNNCell(H, num_layers=L, mode="gru", bidirectional=True, prefix="gru_")
saved = {}
for period in periods:
    sub = j("cb%s" % period)
    os.mkdir(sub)
    cb = mx.rnn.do_rnn_checkpoint(cell, os.path.join(sub, "m"), period)
    for it in range(8):
        cb(it, None, {"gru_parameters": outputs["gru"]["vec"]}, {})
    saved[str(period)] = sorted(os.listdir(sub))
outputs["do_rnn_checkpoint"] = saved

# NumPy shape semantics (0-d and empty arrays): only mx.npx.save can write them
mx.npx.set_np()
npa = {"scalar": mx.np.array(3.25), "scalar_i64": mx.np.array(-5, dtype="int64"),
       "empty": mx.np.zeros((0, 3)), "empty3": mx.np.zeros((2, 0, 1), dtype="int8"),
       "v": mx.np.array([1.0, 2.0], dtype="float64")}
mx.npx.save(j("np_shape.params"), npa)
outputs["np_shape"] = {k: v.asnumpy() for k, v in npa.items()}
mx.npx.reset_np()
"""

PERIODS = [1, 3, 0, 2.5]


@pytest.fixture(scope="module")
def mx_written(tmp_path_factory):
    d = tmp_path_factory.mktemp("mxnet_written")
    out = run_mxnet(WRITER, out_dir=str(d), C=C, H=H, L=L, T=T, N=N, periods=PERIODS)
    return d, out


# ==================================================================================================
# load_mxnet_params on files written by real MXNet
# ==================================================================================================


def test_load_mxnet_dtypes_and_shapes(mx_written):
    d, out = mx_written
    got = ck.load_mxnet_params(d / "dtypes.params")
    same_arrays(got, out["dtypes"])
    assert {a.dtype.name for a in got.values()} >= {
        "float32", "float64", "float16", "uint8", "int8", "int32", "int64", "bool"}
    assert all(a.flags.writeable and a.flags.owndata for a in got.values())
    assert ck.load_params(d / "dtypes.params").keys() == got.keys()  # sniffed as MXNet


def test_load_mxnet_list_empty_and_np_shape(mx_written):
    d, out = mx_written
    same_arrays(ck.load_mxnet_params(d / "list.params"),
                {"0": out["dtypes"]["f32"], "1": out["dtypes"]["i64"]})
    assert ck.load_mxnet_params(d / "empty.params") == {}
    got = ck.load_mxnet_params(str(d / "np_shape.params"))  # str or PathLike
    same_arrays(got, out["np_shape"])
    assert got["scalar"].shape == () and got["empty"].shape == (0, 3)
    assert got["empty3"].shape == (2, 0, 1)


@pytest.mark.parametrize("name, what", [
    ("row_sparse.params", r"unsupported storage type row_sparse \(1\)"),
    ("csr.params", r"unsupported storage type csr \(2\)"),
    ("bfloat16.params", r"unsupported dtype bfloat16 \(type flag 12\)"),
])
def test_load_mxnet_unsupported(mx_written, name, what):
    d, _ = mx_written
    with pytest.raises(ValueError, match=what) as info:
        ck.load_mxnet_params(d / name)
    assert str(d / name) in str(info.value)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_load_mxnet_checkpoints_of_rnn_params(mx_written, mode):
    d, out = mx_written
    o = out[mode]
    got = ck.load_mxnet_params(d / f"{mode}-fused-0003.params")
    same_arrays(got, {f"arg:{mode}_parameters": o["vec"], "arg:fc_weight": o["fc_weight"],
                      "aux:bn_moving_var": o["aux"]["bn_moving_var"]})
    got = ck.load_mxnet_params(d / f"{mode}-unfused-0003.params")
    same_arrays(got, {f"arg:{k}": o["per_layer"][k] for k in o["per_layer_names"]})
    # MXNet's unpack_weights names = fusedrnn's converters' names, same arrays
    ours = cv.flat_to_mxnet(o["vec"], mode, C, H, L, True, prefix=f"{mode}_")
    assert sorted(ours) == sorted(o["unpacked_names"])
    for k in ours:
        assert np.array_equal(ours[k], o["unpacked"][k]), k


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_mxnet_params_file_runs_like_mx_nd_rnn(mx_written, mode):
    """The FusedRNNCell vector MXNet saved, run through fusedrnn.forward = mx.nd.RNN's outputs:
    mx.nd.RNN's flat parameter layout is fusedrnn's."""
    d, out = mx_written
    o = out[mode]
    _, arg, _ = ck.load_rnn_checkpoint([], d / f"{mode}-fused", 3, format="mxnet")
    flat = arg[f"{mode}_parameters"]
    assert flat.dtype == np.float32 and flat.shape == (flat_size(mode),)
    res = fusedrnn.forward(o["x"], flat, mode=mode, hidden_size=H, num_layers=L,
                           bidirectional=True, h0=o["h0"], c0=o["c0"] if mode == "lstm" else None)
    np.testing.assert_allclose(res.y, o["y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.hN, o["hy"], rtol=1e-5, atol=1e-5)
    if mode == "lstm":
        np.testing.assert_allclose(res.cN, o["cy"], rtol=1e-5, atol=1e-5)
    assert np.abs(o["y"]).max() > 0.05  # not a degenerate comparison


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_load_rnn_checkpoint_of_mxnet_save_rnn_checkpoint(mx_written, mode):
    d, out = mx_written
    o = out[mode]
    # fused cell: MXNet unpacked on save, we pack back
    sym, arg, aux = ck.load_rnn_checkpoint(FusedCell(mode, C, H, L, True), d / f"{mode}-rnn", 5,
                                           format="mxnet")
    assert sym is None
    same_arrays(arg, {f"{mode}_parameters": o["vec"]})
    same_arrays(aux, o["aux"])
    # the unfused stack (a list of cells): per-layer arrays back
    _, arg, aux = ck.load_rnn_checkpoint(unfused_cells(mode, f"{mode}_"), d / f"{mode}-rnnunf", 2,
                                         format="mxnet")
    assert aux == {}
    assert sorted(arg) == sorted(o["per_layer_names"])
    for k in arg:
        assert np.array_equal(arg[k], o["per_layer"][k]), k


def test_do_rnn_checkpoint_period_like_mxnet(mx_written, tmp_path):
    _, out = mx_written
    flat = out["gru"]["vec"]
    cell = FusedCell("gru", C, H, L, True)
    for period in PERIODS:
        for fmt, ext in (("mxnet", "params"), ("npz", "npz")):
            sub = tmp_path / f"{fmt}{period}"
            sub.mkdir()
            cb = ck.do_rnn_checkpoint(cell, sub / "m", period, format=fmt)
            for it in range(8):
                cb(it, None, {"gru_parameters": flat}, {})
            want = [f.replace(".params", "." + ext)
                    for f in out["do_rnn_checkpoint"][str(period)]]
            assert sorted(os.listdir(sub)) == want, (period, fmt)
    assert out["do_rnn_checkpoint"]["3"] == ["m-0003.params", "m-0006.params"]
    # what the callback saved is the state at that epoch
    sub = tmp_path / "content"
    sub.mkdir()
    cb = ck.do_rnn_checkpoint(cell, str(sub / "m"), 2)
    for it in range(4):
        cb(it, arg={"gru_parameters": flat + it}, aux={"a": np.array([it])})
    for epoch in (2, 4):
        _, arg, aux = ck.load_rnn_checkpoint(cell, sub / "m", epoch)
        np.testing.assert_array_equal(arg["gru_parameters"], flat + (epoch - 1))
        np.testing.assert_array_equal(aux["a"], [epoch - 1])


# ==================================================================================================
# Files fusedrnn writes, read by real MXNet (one subprocess for all of them)
# ==================================================================================================

READER = r"""
import os
import numpy as np
import mxnet as mx

j = lambda name: os.path.join(d, name)
outputs["dtypes"] = {k: v.asnumpy() for k, v in mx.nd.load(j("dtypes.params")).items()}
outputs["list"] = [v.asnumpy() for v in mx.nd.load(j("list.params"))]
outputs["empty_axis"] = {k: v.asnumpy() for k, v in mx.nd.load(j("empty_axis.params")).items()}
# save_rnn_checkpoint(format='mxnet'): MXNet's load_params + FusedRNNCell.pack_weights, and the
# full mx.rnn.load_rnn_checkpoint (it needs a symbol file: write a trivial one)
for mode in ("lstm", "gru"):
    cell = mx.rnn.FusedRNNCell(H, num_layers=L, mode=mode, bidirectional=True, prefix=mode + "_")
    arg, aux = mx.model.load_params(j(mode), 4)
    outputs[mode + "_unpacked_names"] = sorted(arg)
    outputs[mode + "_vec"] = cell.pack_weights(arg)[mode + "_parameters"]
    outputs[mode + "_aux"] = aux
    mx.sym.Variable("data").save(j(mode) + "-symbol.json")
    _, arg2, _ = mx.rnn.load_rnn_checkpoint(cell, j(mode), 4)
    outputs[mode + "_vec2"] = arg2[mode + "_parameters"]
mx.npx.set_np()
outputs["np_shape"] = {k: v.asnumpy() for k, v in mx.npx.load(j("np_shape.params")).items()}
mx.npx.reset_np()
"""


def our_arrays():
    rng = np.random.default_rng(5)
    return {
        "f32": rng.standard_normal((3, 2)).astype(np.float32),
        "f64": rng.standard_normal((2, 1, 2)),
        "f16": rng.standard_normal((5,)).astype(np.float16),
        "u8": np.arange(250, 256, dtype=np.uint8),
        "i8": np.array([[-128, 127]], dtype=np.int8),
        "i32": np.array([-2**31, 2**31 - 1], dtype=np.int32),
        "i64": np.array([-2**63, 2**63 - 1, 1], dtype=np.int64),
        "b": np.array([[True], [False]]),
        "arg:noncontig": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
        "big_endian": np.arange(3, dtype=">f8"),
        "ünïcode name": np.ones((1,), np.float32),
    }


@pytest.fixture(scope="module")
def mx_read(tmp_path_factory):
    d = tmp_path_factory.mktemp("mxnet_read")
    rng = np.random.default_rng(9)
    ck.save_mxnet_params(d / "dtypes.params", our_arrays())
    ck.save_mxnet_params(d / "list.params", [np.ones((2,), np.float32), np.arange(3)])
    ck.save_mxnet_params(d / "empty_axis.params", {"e": np.zeros((0, 3), np.float32),
                                                   "f": np.ones((2,), np.float64)})
    np_shape = {"s": np.array(2.5, np.float32), "e": np.zeros((2, 0), np.int32),
                "v": np.arange(3.0)}
    ck.save_mxnet_params(d / "np_shape.params", np_shape)
    vecs, auxs = {}, {}
    for mode in ("lstm", "gru"):
        vecs[mode] = rng.uniform(-1, 1, flat_size(mode)).astype(np.float32)
        auxs[mode] = {"moving": rng.standard_normal(3).astype(np.float32)}
        path = ck.save_rnn_checkpoint(FusedCell(mode, C, H, L, True), d / mode, 4, None,
                                      {f"{mode}_parameters": vecs[mode]}, auxs[mode],
                                      format="mxnet")
        assert path == str(d / f"{mode}-0004.params")
    out = run_mxnet(READER, d=str(d), H=H, L=L)
    return d, out, {"np_shape": np_shape, "vecs": vecs, "auxs": auxs}


def test_mxnet_reads_save_mxnet_params(mx_read):
    d, out, ours = mx_read
    want = {k: np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("="))
            for k, v in our_arrays().items()}
    same_arrays(out["dtypes"], want)
    same_arrays(dict(enumerate(out["list"])), {0: np.ones((2,), np.float32), 1: np.arange(3)})
    same_arrays(out["empty_axis"], {"e": np.zeros((0, 3), np.float32),
                                    "f": np.ones((2,), np.float64)})
    same_arrays(out["np_shape"], ours["np_shape"])
    # and fusedrnn reads back its own files, version 2 and version 3 alike
    same_arrays(ck.load_mxnet_params(d / "dtypes.params"), want)
    same_arrays(ck.load_mxnet_params(d / "np_shape.params"), ours["np_shape"])
    assert (d / "np_shape.params").read_bytes()[24:28] == struct.pack("<I", 0xF993FACA)
    assert (d / "dtypes.params").read_bytes()[24:28] == struct.pack("<I", 0xF993FAC9)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_mxnet_reads_save_rnn_checkpoint(mx_read, mode):
    _, out, ours = mx_read
    want_names = sorted(cv.mxnet_param_shapes(mode, C, H, L, True, prefix=f"{mode}_"))
    assert out[f"{mode}_unpacked_names"] == want_names  # saved unpacked, per-gate
    same_arrays({"v": out[f"{mode}_vec"]}, {"v": ours["vecs"][mode]})
    same_arrays({"v": out[f"{mode}_vec2"]}, {"v": ours["vecs"][mode]})
    same_arrays(out[f"{mode}_aux"], ours["auxs"][mode])


def test_save_mxnet_params_byte_identical_to_mxnet(mx_written, tmp_path):
    """Loading an MXNet file and saving it again gives MXNet's bytes exactly."""
    d, _ = mx_written
    for name in ("dtypes.params", "empty.params", "np_shape.params", "lstm-fused-0003.params"):
        ck.save_mxnet_params(tmp_path / name, ck.load_mxnet_params(d / name))
        assert (tmp_path / name).read_bytes() == (d / name).read_bytes(), name
    ck.save_mxnet_params(tmp_path / "l", list(ck.load_mxnet_params(d / "list.params").values()))
    assert (tmp_path / "l").read_bytes() == (d / "list.params").read_bytes()


def test_save_mxnet_params_bad_input(tmp_path):
    p = tmp_path / "x.params"
    with pytest.raises(TypeError, match=r"MXNet cannot store dtype int16"):
        ck.save_mxnet_params(p, {"a": np.zeros(2, np.int16)})
    with pytest.raises(TypeError, match=r"numeric array"):
        ck.save_mxnet_params(p, {"a": np.array(["x"])})
    with pytest.raises(TypeError, match=r"numeric array"):
        ck.save_mxnet_params(p, {"a": np.array([{}], dtype=object)})
    with pytest.raises(TypeError, match=r"names must be strings"):
        ck.save_mxnet_params(p, {1: np.zeros(2)})
    with pytest.raises(ValueError, match=r"np_shape=True"):
        ck.save_mxnet_params(p, {"a": np.float32(1.0)}, np_shape=False)
    assert not p.exists()


# ==================================================================================================
# Robustness: damaged and foreign files -> ValueError naming the file, never anything else
# ==================================================================================================


def outcome(fn, path):
    """'ok' or 'ValueError'; any other exception fails the test."""
    try:
        fn(path)
        return "ok"
    except ValueError as exc:
        assert isinstance(exc, ck.CheckpointError), repr(exc)
        where = "mem.params" if isinstance(path, bytes) else str(path)  # parse(bytes) or a file
        assert str(exc).startswith(where + ": "), str(exc)
        return "ValueError"


def parse(data, name="mem.params"):
    """load_mxnet_params on bytes: its parser without the file (writing thousands of files is
    slow here); the file-level checks write a sample of the same cases."""
    return ck._parse_mxnet(data, name)


def test_truncated_at_every_offset(mx_written, tmp_path):
    d, _ = mx_written
    p = tmp_path / "t.params"
    for name in ("dtypes.params", "list.params", "np_shape.params", "gru-fused-0003.params"):
        data = (d / name).read_bytes()
        for n in range(len(data)):
            with pytest.raises(ValueError, match=r"truncated at offset|bad magic") as info:
                parse(data[:n], name)
            assert isinstance(info.value, ck.CheckpointError)
            assert str(info.value).startswith(name + ": ")
            if n >= 8:
                assert f"truncated at offset {n}:" in str(info.value)
        for n in (0, 5, 8, 30, len(data) // 2, len(data) - 1):
            p.write_bytes(data[:n])
            assert outcome(ck.load_mxnet_params, p) == "ValueError"
            assert outcome(ck.load_params, p) == "ValueError"


def test_corrupted_headers(mx_written, tmp_path):
    d, _ = mx_written
    data = bytearray((d / "dtypes.params").read_bytes())
    p = tmp_path / "c.params"

    def load(mutated, match):
        p.write_bytes(bytes(mutated))
        with pytest.raises(ValueError, match=match):
            ck.load_mxnet_params(p)

    for i in range(8):  # the list magic, byte by byte
        bad = bytearray(data)
        bad[i] ^= 0xFF
        load(bad, r"not an MXNet NDArray file: bad magic")
    for i in range(24, 28):  # the first array's magic (the first ndim-like word is accepted as
        bad = bytearray(data)  # a legacy file's ndim only up to 32)
        bad[i] ^= 0x80
        load(bad, r"array #0: bad NDArray magic")
    bad = bytearray(data)
    bad[28:32] = struct.pack("<i", 7)
    load(bad, r"array #0: invalid storage type 7")
    bad = bytearray(data)
    bad[32:36] = struct.pack("<i", 1000)
    load(bad, r"implausible ndim 1000")
    bad = bytearray(data)
    bad[16:24] = struct.pack("<Q", 2**60)  # number of arrays: the names are read as array #11
    load(bad, r"array #11: ")
    load(data + b"\0", r"1 unexpected trailing bytes")
    # dtype flag: the first array is 'f32' (2, 3): magic, stype, ndim, 2 dims, dev type, dev id
    flag_at = 24 + 4 + 4 + 4 + 16 + 4 + 4
    assert struct.unpack_from("<i", data, flag_at)[0] == 0
    for flag, match in ((8, r"unsupported dtype int16"), (12, "unsupported dtype bfloat16"),
                        (99, r"unknown dtype flag 99")):
        bad = bytearray(data)
        bad[flag_at:flag_at + 4] = struct.pack("<i", flag)
        load(bad, match)
    bad = bytearray(data)
    bad[flag_at - 8:flag_at - 4] = struct.pack("<i", 4)
    load(bad, r"invalid device type 4")


def test_random_bytes_and_mutations_only_raise_value_error(mx_written, tmp_path):
    d, _ = mx_written
    rng = np.random.default_rng(1234)
    p = tmp_path / "r.params"
    for n in list(range(12)) + [100, 5000]:
        p.write_bytes(rng.bytes(n))
        assert outcome(ck.load_mxnet_params, p) == "ValueError"
        assert outcome(ck.load_params, p) == "ValueError"
    for n in range(300):
        assert outcome(parse, rng.bytes(n)) == "ValueError"
    # random bytes after a valid list header: still only ValueError
    head = struct.pack("<QQQ", 0x112, 0, 3)
    for n in range(300):
        assert outcome(parse, head + rng.bytes(int(rng.integers(0, 200)))) == "ValueError"
    # mutations of 1-3 bytes of a real file: a dict or a ValueError
    data = (d / "dtypes.params").read_bytes()
    seen = set()
    for _ in range(3000):
        bad = bytearray(data)
        for i in rng.integers(0, len(data), int(rng.integers(1, 4))):
            bad[i] = int(rng.integers(0, 256))
        seen.add(outcome(parse, bytes(bad)))
    assert seen == {"ok", "ValueError"}


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_foreign_files(tmp_path):
    npz = tmp_path / "renamed.params"
    write_npz(npz, a=np.ones(3))
    with pytest.raises(ValueError, match=r"bad magic.*zip archive"):
        ck.load_mxnet_params(npz)
    npy = tmp_path / "a.npy"
    np.save(npy, np.ones(3))
    for path, looks in ((npy, "a single .npy array"), (tmp_path / "e", "an empty file"),
                        (tmp_path / "j", "JSON text")):
        if path.name == "e":
            path.write_bytes(b"")
        if path.name == "j":
            path.write_text('{"nodes": []}')
        with pytest.raises(ValueError, match=looks):
            ck.load_params(path)
    # an MXNet file where an npz checkpoint is expected
    ck.save_mxnet_params(tmp_path / "m-0001.npz", {"arg:a": np.ones(2)})
    with pytest.raises(ValueError, match=r"not an npz file"):
        ck.load_rnn_checkpoint([], tmp_path / "m", 1)
    # an npz (zip) where an MXNet file is expected, by checkpoint name
    write_npz(tmp_path / "z-0001.params", **{"arg:a": np.ones(2)})
    with pytest.raises(ValueError, match=r"zip archive"):
        ck.load_rnn_checkpoint([], tmp_path / "z", 1, format="mxnet")
    # a zip that is not an npz (like a torch .pt): members that are not .npy arrays
    with zipfile.ZipFile(tmp_path / "t-0001.npz", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(ValueError, match=r"is not a .npy array"):
        ck.load_rnn_checkpoint([], tmp_path / "t", 1)
    # an npz without fusedrnn's version entry: not a checkpoint (load_params reads it)
    write_npz(tmp_path / "p-0001.npz", **{"arg:a": np.ones(2)})
    with pytest.raises(ValueError, match=r"not a fusedrnn checkpoint"):
        ck.load_rnn_checkpoint([], tmp_path / "p", 1)
    same_arrays(ck.load_params(tmp_path / "p-0001.npz"), {"arg:a": np.ones(2)})
    # a checkpoint of a future version
    write_npz(tmp_path / "v-0001.npz", __fusedrnn_checkpoint__=np.array(2))
    with pytest.raises(ValueError, match=r"unsupported fusedrnn checkpoint version"):
        ck.load_rnn_checkpoint([], tmp_path / "v", 1)
    # names that are not 'arg:' / 'aux:' entries
    ck.save_params(tmp_path / "n-0001.npz", {"weights": np.ones(2)})
    with pytest.raises(ValueError, match=r"neither 'arg:...' nor 'aux:...'"):
        ck.load_rnn_checkpoint([], tmp_path / "n", 1)


class _Payload:
    """Unpickling this would create the directory ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickles_are_never_loaded(tmp_path):
    marker = str(tmp_path / "pwned")
    payload = pickle.dumps(_Payload(marker), protocol=2)
    for name in ("evil.params", "evil-0001.params", "evil-0001.npz"):
        (tmp_path / name).write_bytes(payload)
    with pytest.raises(ValueError, match=r"Python pickle"):
        ck.load_mxnet_params(tmp_path / "evil.params")
    with pytest.raises(ValueError, match=r"Python pickle"):
        ck.load_params(tmp_path / "evil.params")
    with pytest.raises(ValueError, match=r"Python pickle"):
        ck.load_rnn_checkpoint([], tmp_path / "evil", 1, format="mxnet")
    with pytest.raises(ValueError, match=r"Python pickle"):
        ck.load_rnn_checkpoint([], tmp_path / "evil", 1)
    # an npz holding an object array (a pickle inside the zip)
    obj = np.empty(1, dtype=object)
    obj[0] = _Payload(marker)
    with open(tmp_path / "obj-0001.npz", "wb") as f:
        np.savez(f, **{"__fusedrnn_checkpoint__": np.array(1), "arg:x": obj})
    with pytest.raises(ValueError, match=r"'arg:x' is an object array"):
        ck.load_rnn_checkpoint([], tmp_path / "obj", 1)
    with pytest.raises(ValueError, match=r"object array"):
        ck.load_params(tmp_path / "obj-0001.npz")
    assert not os.path.exists(marker)
    # the payload does run when unpickled: the check above can fail
    pickle.loads(payload)
    assert os.path.isdir(marker)


def test_npz_truncated_and_corrupted(tmp_path):
    cell = FusedCell("lstm", C, H, 1, False)
    flat = fusedrnn.init_weights("lstm", C, H, seed=1)
    path = ck.save_rnn_checkpoint(cell, tmp_path / "a", 1, None, {"lstm_parameters": flat})
    data = Path(path).read_bytes()
    p = tmp_path / "b-0001.npz"
    for n in list(range(0, len(data), len(data) // 15)) + list(range(len(data) - 25, len(data))):
        p.write_bytes(data[:n])
        with pytest.raises(ValueError) as info:
            ck.load_rnn_checkpoint(cell, tmp_path / "b", 1)
        assert isinstance(info.value, ck.CheckpointError) and str(p) in str(info.value)
    # a flipped byte inside an array's data: the zip's CRC catches it
    i = data.index(flat[3:5].tobytes())
    bad = bytearray(data)
    bad[i] ^= 0x01
    p.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"corrupted or truncated npz.*CRC"):
        ck.load_rnn_checkpoint(cell, tmp_path / "b", 1)
    # random mutations: a checkpoint or a ValueError, nothing else
    rng = np.random.default_rng(2)
    for _ in range(60):
        bad = bytearray(data)
        for j in rng.integers(0, len(data), 2):
            bad[j] = int(rng.integers(0, 256))
        p.write_bytes(bytes(bad))
        outcome(lambda q: ck.load_rnn_checkpoint(cell, tmp_path / "b", 1), p)
        outcome(ck.load_params, p)


def test_missing_file(tmp_path):
    for fn in (ck.load_mxnet_params, ck.load_params):
        with pytest.raises(FileNotFoundError) as info:
            fn(tmp_path / "nope.params")
        assert isinstance(info.value, ValueError) and str(tmp_path / "nope.params") in str(info.value)
    for fmt in ("npz", "mxnet"):
        with pytest.raises(ValueError, match=r"not found") as info:
            ck.load_rnn_checkpoint([], tmp_path / "nope", 12, format=fmt)
        assert isinstance(info.value, FileNotFoundError)
        assert info.value.filename == ck.checkpoint_path(tmp_path / "nope", 12, fmt)


def test_legacy_formats_from_mxnet_source(tmp_path):
    """NDArray V1 (magic 0xF993FAC8, u32 ndim, i64 dims, no storage type) and pre-V1 files (no
    magic: u32 ndim, u32 dims), as MXNet's LegacyLoad reads them (hand-built: no MXNet release at
    hand writes them)."""
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    b = np.array([7, 8], dtype=np.int32)
    v1 = struct.pack("<II2q", 0xF993FAC8, 2, 2, 3) + struct.pack("<iii", 1, 0, 1) + a.tobytes()
    pre = struct.pack("<II", 1, 2) + struct.pack("<iii", 2, 1, 4) + b.tobytes()  # on gpu(1)
    data = struct.pack("<QQQ", 0x112, 0, 2) + v1 + pre + struct.pack("<QQ", 2, 1) + b"a" + \
        struct.pack("<Q", 1) + b"b"
    p = tmp_path / "old.params"
    p.write_bytes(data)
    same_arrays(ck.load_mxnet_params(p), {"a": a, "b": b})
    p.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        ck.load_mxnet_params(p)


def test_bad_names_section(tmp_path):
    arr = struct.pack("<IiiqiiI", 0xF993FAC9, 0, 1, 1, 1, 0, 0) + struct.pack("<f", 1.0)
    head = struct.pack("<QQQ", 0x112, 0, 2) + arr + arr
    p = tmp_path / "n.params"
    cases = [
        (struct.pack("<Q", 1) + struct.pack("<Q", 1) + b"a", r"1 names for 2 arrays"),
        (struct.pack("<QQ", 2, 1) + b"a" + struct.pack("<Q", 1) + b"a", r"duplicate name 'a'"),
        (struct.pack("<QQ", 2, 1) + b"\xff" + struct.pack("<Q", 1) + b"a", r"not UTF-8"),
        (struct.pack("<QQ", 2, 1) + b"a" + struct.pack("<Q", 2**63) + b"b", r"truncated"),
    ]
    for tail, match in cases:
        p.write_bytes(head + tail)
        with pytest.raises(ValueError, match=match):
            ck.load_mxnet_params(p)
    p.write_bytes(head + struct.pack("<QQ", 2, 1) + b"a" + struct.pack("<Q", 1) + b"b")
    assert list(ck.load_mxnet_params(p)) == ["a", "b"]
    # uninitialized ("none") arrays: V2 with ndim 0
    p.write_bytes(struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Iii", 0xF993FAC9, 0, 0)
                  + struct.pack("<Q", 0))
    with pytest.raises(ValueError, match=r"uninitialized"):
        ck.load_mxnet_params(p)


# ==================================================================================================
# fusedrnn's npz checkpoints, atomic saves, the MXNet-style API
# ==================================================================================================


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_npz_round_trip(tmp_path, dtype):
    cells = [FusedCell("lstm", C, H, L, True, prefix="enc_"), FusedCell("gru", 2 * H, 3, 1, False)]
    enc = fusedrnn.init_weights("lstm", C, H, L, True, dtype=dtype, seed=1)
    dec = fusedrnn.init_weights("gru", 2 * H, 3, dtype=dtype, seed=2)
    arg = {"enc_parameters": enc, "gru_parameters": dec, "fc_weight": np.ones((2, 3), dtype)}
    aux = {"bn_mean": np.arange(3, dtype=np.int64), "step": np.array(7)}
    path = ck.save_rnn_checkpoint(cells, tmp_path / "model", 12, None, arg, aux)
    assert path == str(tmp_path / "model-0012.npz")
    assert sorted(os.listdir(tmp_path)) == ["model-0012.npz"]
    # a plain npz: every array unpacked per gate, np.load without pickles reads it
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files)
        assert all(z[k].dtype != object for k in z.files)
    want = {f"arg:{k}" for k in cv.mxnet_param_shapes("lstm", C, H, L, True, prefix="enc_")}
    want |= {f"arg:{k}" for k in cv.mxnet_param_shapes("gru", 2 * H, 3, prefix="gru_")}
    want |= {"arg:fc_weight", "aux:bn_mean", "aux:step", "__fusedrnn_checkpoint__"}
    assert names == want
    sym, arg2, aux2 = ck.load_rnn_checkpoint(cells, tmp_path / "model", 12)
    assert sym is None
    assert sorted(arg2) == sorted(arg) and list(aux2) == list(aux)
    for k in arg:
        same_arrays({k: arg2[k]}, {k: arg[k]})
    same_arrays(aux2, aux)
    # load_params sniffs the npz: unpacked names, version entry removed
    assert set(ck.load_params(path)) == want - {"__fusedrnn_checkpoint__"}
    # the same checkpoint in MXNet's format loads to the same arrays
    ck.save_rnn_checkpoint(cells, tmp_path / "model", 12, None, arg, aux, format="mxnet")
    _, arg3, aux3 = ck.load_rnn_checkpoint(cells, tmp_path / "model", 12, format="mxnet")
    for k in arg:
        same_arrays({k: arg3[k]}, {k: arg[k]})
    same_arrays(aux3, aux)


def test_checkpoint_does_not_match_cells(tmp_path):
    cell = FusedCell("lstm", C, H, L, True)
    flat = fusedrnn.init_weights("lstm", C, H, L, True, seed=3)
    ck.save_rnn_checkpoint(cell, tmp_path / "m", 1, None, {"lstm_parameters": flat})
    p = str(tmp_path / "m-0001.npz")
    cases = [
        (FusedCell("lstm", C, H + 1, L, True), r"expected shape"),        # shapes
        (FusedCell("lstm", C, H, L, True, prefix="dec_"), r"missing"),    # names
        (FusedCell("lstm", C, H, L + 1, True), r"missing"),               # more layers
        (FusedCell("gru", C, H, L, True), r"missing"),                    # another mode
        ([cell, FusedCell("gru", C, H, 1, False)], r"cell #1 \(FusedCell prefix 'gru_'\)"),
        ([cell, GateCell("lstm", H, "lstm_l0_")], r"cell #1 .*missing"),  # already packed
    ]
    for cells, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            ck.load_rnn_checkpoint(cells, tmp_path / "m", 1)
        assert isinstance(info.value, ck.CheckpointError) and p in str(info.value)
    # unfused gate cells: wrong shapes that cannot be concatenated
    per_layer = unfused_cells("lstm", "lstm_")[0].unpack_weights(
        {"lstm_l0_i2h_weight": np.ones((4 * H, C)), "lstm_l0_i2h_bias": np.ones(4 * H),
         "lstm_l0_h2h_weight": np.ones((4 * H, H)), "lstm_l0_h2h_bias": np.ones(4 * H)})
    per_layer["lstm_l0_i2h_f_weight"] = np.ones((H, C + 1))
    ck.save_params(tmp_path / "g-0001.npz", {f"arg:{k}": v for k, v in per_layer.items()})
    with pytest.raises(ValueError, match=r"does not match cell #0 \(GateCell prefix 'lstm_l0_'\)"):
        ck.load_rnn_checkpoint(GateCell("lstm", H, "lstm_l0_"), tmp_path / "g", 1)
    # save: the cells' fused vector is missing from arg_params
    with pytest.raises(ValueError, match=r"cannot unpack its weights: missing 'lstm_parameters'"):
        ck.save_rnn_checkpoint(cell, tmp_path / "x", 1, None, {"fc": np.ones(2)})
    assert not (tmp_path / "x-0001.npz").exists()


def test_api_arguments(tmp_path):
    cell = FusedCell("gru", C, H)
    arg = {"gru_parameters": fusedrnn.init_weights("gru", C, H, seed=0)}
    with pytest.raises(TypeError, match=r"symbol: fusedrnn writes no symbol JSON"):
        ck.save_rnn_checkpoint(cell, tmp_path / "m", 1, "{}", arg, {})
    with pytest.raises(ValueError, match=r"format: expected 'npz' or 'mxnet'"):
        ck.save_rnn_checkpoint(cell, tmp_path / "m", 1, None, arg, {}, format="params")
    with pytest.raises(TypeError, match=r"cells: expected a cell"):
        ck.save_rnn_checkpoint(object(), tmp_path / "m", 1, None, arg, {})
    with pytest.raises(TypeError, match=r"epoch: expected an integer"):
        ck.save_rnn_checkpoint(cell, tmp_path / "m", 1.0, None, arg, {})
    with pytest.raises(TypeError, match=r"arg_params: expected a dict"):
        ck.save_rnn_checkpoint(cell, tmp_path / "m", 1, None, [1], {})
    with pytest.raises(ValueError, match=r"reserved"):
        ck.save_params(tmp_path / "r.npz", {"__fusedrnn_checkpoint__": np.ones(1)})
    assert os.listdir(tmp_path) == []
    assert ck.checkpoint_path("a/b", 3) == "a/b-0003.npz"
    assert ck.checkpoint_path("a/b", 12345, "mxnet") == "a/b-12345.params"
    # a tuple of cells, and no cells at all (MXNet accepts both)
    ck.save_rnn_checkpoint((cell,), tmp_path / "m", 0, None, arg)
    ck.save_rnn_checkpoint([], tmp_path / "m", 1, None, arg)
    assert ck.load_params(tmp_path / "m-0001.npz").keys() == {"arg:gru_parameters"}


# ---- atomic saves


def test_atomic_save_keeps_old_checkpoint_on_failure(tmp_path, monkeypatch):
    cell = FusedCell("lstm", C, H)
    old = {"lstm_parameters": fusedrnn.init_weights("lstm", C, H, seed=1)}
    new = {"lstm_parameters": fusedrnn.init_weights("lstm", C, H, seed=2)}
    path = ck.save_rnn_checkpoint(cell, tmp_path / "m", 1, None, old)
    before = Path(path).read_bytes()
    real_write = ck._write_npz

    def failing_write(f, arrays):  # writes most of the archive, then fails
        real_write(f, arrays)
        f.truncate(f.tell() // 2)
        raise OSError(28, "No space left on device (simulated)")

    for exc_type, write in ((OSError, failing_write),
                            (KeyboardInterrupt, lambda f, a: (f.write(b"PK\3\4junk"),
                                                              (_ for _ in ()).throw(
                                                                  KeyboardInterrupt())))):
        monkeypatch.setattr(ck, "_write_npz", write)
        with pytest.raises(exc_type):
            ck.save_rnn_checkpoint(cell, tmp_path / "m", 1, None, new)
        assert Path(path).read_bytes() == before
        assert os.listdir(tmp_path) == ["m-0001.npz"]  # no temporary file left behind
    monkeypatch.setattr(ck, "_write_npz", real_write)
    _, arg, _ = ck.load_rnn_checkpoint(cell, tmp_path / "m", 1)
    np.testing.assert_array_equal(arg["lstm_parameters"], old["lstm_parameters"])

    # MXNet format: a failure at the rename leaves the old file too; fsync comes before it
    mpath = ck.save_rnn_checkpoint(cell, tmp_path / "m", 1, None, old, format="mxnet")
    mbefore = Path(mpath).read_bytes()
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(ck.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))

    def failing_replace(src, dst):
        events.append("replace")
        assert os.path.dirname(src) == os.path.dirname(os.path.abspath(dst))  # same directory
        assert Path(src).read_bytes() != mbefore  # the new data, complete, is in the temp file
        raise OSError(5, "I/O error (simulated)")

    monkeypatch.setattr(ck.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        ck.save_rnn_checkpoint(cell, tmp_path / "m", 1, None, new, format="mxnet")
    assert events == ["fsync", "replace"]
    assert Path(mpath).read_bytes() == mbefore
    assert sorted(os.listdir(tmp_path)) == ["m-0001.npz", "m-0001.params"]
    monkeypatch.setattr(ck.os, "replace", real_replace)
    ck.save_rnn_checkpoint(cell, tmp_path / "m", 1, None, new, format="mxnet")
    _, arg, _ = ck.load_rnn_checkpoint(cell, tmp_path / "m", 1, format="mxnet")
    np.testing.assert_array_equal(arg["lstm_parameters"], new["lstm_parameters"])
    assert sorted(os.listdir(tmp_path)) == ["m-0001.npz", "m-0001.params"]


def test_atomic_save_file_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        ck.save_mxnet_params(tmp_path / "a.params", {"a": np.ones(1)})
        ck.save_params(tmp_path / "b.npz", {"a": np.ones(1)})
    finally:
        os.umask(umask)
    for name in ("a.params", "b.npz"):
        assert (os.stat(tmp_path / name).st_mode & 0o777) == 0o644, name


# ==================================================================================================
# The real cells of fusedrnn.rnn_cell
# ==================================================================================================


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_real_cells_run_mxnet_checkpoints(mx_written, mode):
    """MXNet's save_rnn_checkpoint files -> load_rnn_checkpoint with fusedrnn.rnn_cell's cells ->
    their unroll gives mx.nd.RNN's outputs: the fused cell, and its unfuse() stack with the
    per-layer checkpoint MXNet wrote for the unfused cells."""
    from fusedrnn import rnn_cell as rc

    d, out = mx_written
    o = out[mode]
    cell = rc.FusedRNNCell(H, num_layers=L, mode=mode, bidirectional=True, prefix=f"{mode}_",
                           get_next_state=True)
    _, arg, aux = ck.load_rnn_checkpoint(cell, d / f"{mode}-rnn", 5, format="mxnet")
    same_arrays(arg, {f"{mode}_parameters": o["vec"]})
    same_arrays(aux, o["aux"])
    cell.params.load(arg)
    lstm = mode == "lstm"
    y, states = cell.unroll(T, o["x"], begin_state=[o["h0"]] + ([o["c0"]] if lstm else []),
                            layout="TNC", merge_outputs=True)
    np.testing.assert_allclose(y, o["y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(states[0], o["hy"], rtol=1e-5, atol=1e-5)

    stack = rc.FusedRNNCell(H, num_layers=L, mode=mode, bidirectional=True,
                            prefix=f"{mode}_").unfuse()
    _, arg, _ = ck.load_rnn_checkpoint(stack, d / f"{mode}-rnnunf", 2, format="mxnet")
    assert sorted(arg) == sorted(o["per_layer_names"])
    for k in arg:
        np.testing.assert_array_equal(arg[k], o["per_layer"][k])
    stack.params.load(arg)
    begin = []
    for i in range(2 * L):  # layer by layer, forward then reverse: [h, c] each
        begin += [o["h0"][i]] + ([o["c0"][i]] if lstm else [])
    y, _ = stack.unroll(T, o["x"], begin_state=begin, layout="TNC", merge_outputs=True)
    np.testing.assert_allclose(y, o["y"], rtol=1e-5, atol=1e-5)


def test_real_cells_round_trip_and_mismatch(tmp_path):
    from fusedrnn import rnn_cell as rc

    enc = rc.FusedRNNCell(H, num_layers=L, mode="lstm", bidirectional=True, prefix="enc_")
    dec = rc.GRUCell(3, prefix="dec_")
    arg = {"enc_parameters": fusedrnn.init_weights("lstm", C, H, L, True, seed=4),
           "dec_i2h_weight": np.ones((9, 2 * H), np.float32),
           "dec_h2h_weight": np.full((9, 3), 2, np.float32),
           "dec_i2h_bias": np.arange(9, dtype=np.float32), "dec_h2h_bias": np.zeros(9, np.float32)}
    for fmt in ("npz", "mxnet"):
        ck.save_rnn_checkpoint([enc, dec], tmp_path / "m", 7, None, arg, {}, format=fmt)
        names = set(ck.load_params(ck.checkpoint_path(tmp_path / "m", 7, fmt)))
        assert "arg:dec_i2h_r_weight" in names and "arg:enc_r1_h2h_o_bias" in names
        assert "arg:enc_parameters" not in names and "arg:dec_i2h_weight" not in names
        _, got, _ = ck.load_rnn_checkpoint([enc, dec], tmp_path / "m", 7, format=fmt)
        assert sorted(got) == sorted(arg)
        for k in arg:
            same_arrays({k: got[k]}, {k: arg[k]})
        # a cell of another hidden size or depth refuses the checkpoint
        for other in (rc.FusedRNNCell(H + 1, num_layers=L, mode="lstm", bidirectional=True,
                                      prefix="enc_"),
                      rc.FusedRNNCell(H, num_layers=L + 1, mode="lstm", bidirectional=True,
                                      prefix="enc_")):
            with pytest.raises(ValueError, match=r"does not match cell #0 \(FusedRNNCell prefix"):
                ck.load_rnn_checkpoint([other, dec], tmp_path / "m", 7, format=fmt)


def test_npz_names_that_are_savez_keywords(tmp_path):
    # np.savez(f, **arrays) would swallow 'allow_pickle' as its flag and reject 'file'
    arrays = {"allow_pickle": np.arange(3.0), "file": np.ones((2, 2), np.float32),
              "arg:x": np.zeros(4, np.int64)}
    path = ck.save_params(tmp_path / "kw.npz", arrays)
    back = ck.load_params(path)
    assert sorted(back) == sorted(arrays)
    for name, arr in arrays.items():
        assert back[name].dtype == arr.dtype
        np.testing.assert_array_equal(back[name], arr)
    with np.load(path, allow_pickle=False) as z:  # a plain npz for anyone else
        np.testing.assert_array_equal(z["file"], arrays["file"])
