"""The MXNet-style cell API (fusedrnn.rnn_cell) against real MXNet 1.9.1, the float64 reference and
finite differences.

Real MXNet runs once per session in its own venv (tests/mxnet_env.py): one script computes every
MXNet reference (cells unrolled as symbols and differentiated by the executor, mx.nd.RNN on the CPU
with autograd for FusedRNNCell, unfuse/unpack/pack, the initializers); the tests that need it skip
with the reason when MXNet cannot be installed here.
"""

import numpy as np
import pytest

import fusedrnn
from fusedrnn import rnn_cell as rnn

import reference as ref
from conftest import check_finite_differences, rng_for
from mxnet_env import run_mxnet

N, T, C, H = 3, 5, 4, 6
F32 = dict(rtol=2e-5, atol=2e-5)
F64 = dict(rtol=1e-10, atol=1e-10)
# rnn_<act>: RNNCell(activation=<act>), every MXNet act_type the fused kernels run
RNN_KINDS = ("rnn_tanh", "rnn_relu", "rnn_sigmoid", "rnn_softrelu", "rnn_softsign")
G = {"lstm": 4, "gru": 3, **{k: 1 for k in RNN_KINDS}}
PREFIX = {"lstm": "lstm_", "gru": "gru_", **{k: "rnn_" for k in RNN_KINDS}}


def _rng(*key):
    return rng_for("rnn_cell", *key)


def make_cell(kind, hidden, prefix=None, **kw):
    prefix = PREFIX[kind] if prefix is None else prefix
    if kind == "lstm":
        return rnn.LSTMCell(hidden, prefix=prefix, **kw)
    if kind == "gru":
        return rnn.GRUCell(hidden, prefix=prefix, **kw)
    return rnn.RNNCell(hidden, activation=kind.split("_")[1], prefix=prefix, **kw)


def cell_weights(kind, c_in, hidden, prefix, rng, scale=0.5, dtype=np.float32):
    g = G[kind] * hidden
    shapes = {"i2h_weight": (g, c_in), "i2h_bias": (g,), "h2h_weight": (g, hidden),
              "h2h_bias": (g,)}
    return {prefix + k: rng.uniform(-scale, scale, s).astype(dtype) for k, s in shapes.items()}


def randomize(cell, rng, scale=0.5):
    """Every existing parameter of the cell set to uniform(-scale, scale)."""
    for name, arr in cell.params.arrays().items():
        cell.params[name] = rng.uniform(-scale, scale, arr.shape).astype(arr.dtype)


def flat(states):
    return rnn._flatten(states)


# --------------------------------------------------------------------------------------------------
# Problems shared with the MXNet script
# --------------------------------------------------------------------------------------------------


def single_case(kind):
    rng = _rng("single", kind)
    n = 2 if kind == "lstm" else 1
    return dict(
        H=H, T=T, prefix=PREFIX[kind], layout="NTC",
        x=rng.standard_normal((N, T, C)).astype(np.float32),
        weights=cell_weights(kind, C, H, PREFIX[kind], rng),
        begin=[rng.standard_normal((N, H)).astype(np.float32) * 0.5 for _ in range(n)],
        dy=rng.standard_normal((N, T, H)).astype(np.float32),
        dstates=[rng.standard_normal((N, H)).astype(np.float32) for _ in range(n)],
    )


FL, FH = 2, 5  # FusedRNNCell case: LSTM, 2 layers, bidirectional, TNC


def fused_case():
    rng = _rng("fused")
    n = fusedrnn.param_size("lstm", C, FH, FL, True)
    return dict(
        H=FH, L=FL, T=T,
        x=rng.standard_normal((T, N, C)).astype(np.float32),
        flat=rng.uniform(-0.4, 0.4, n).astype(np.float32),
        h0=rng.standard_normal((2 * FL, N, FH)).astype(np.float32) * 0.5,
        c0=rng.standard_normal((2 * FL, N, FH)).astype(np.float32) * 0.5,
        dy=rng.standard_normal((T, N, 2 * FH)).astype(np.float32),
        dhN=rng.standard_normal((2 * FL, N, FH)).astype(np.float32),
        dcN=rng.standard_normal((2 * FL, N, FH)).astype(np.float32),
        sizes={m: fusedrnn.param_size(m, C, FH, FL, True) for m in ("gru", "rnn_relu")},
    )


def build_composite(rng=None):
    """Sequential[Bi(LSTM 5, GRU 7), Residual(LSTM 12), Dropout(0), Zoneout(GRU 8, 0, 0),
    RNN relu 4], the same structure as the MXNet script builds."""
    seq = rnn.SequentialRNNCell()
    seq.add(rnn.BidirectionalCell(rnn.LSTMCell(5, prefix="bl_"), rnn.GRUCell(7, prefix="br_"),
                                  output_prefix="bi_"))
    seq.add(rnn.ResidualCell(rnn.LSTMCell(12, prefix="res_")))
    seq.add(rnn.DropoutCell(0.0))
    seq.add(rnn.ZoneoutCell(rnn.GRUCell(8, prefix="z_"), 0.0, 0.0))
    seq.add(rnn.RNNCell(4, activation="relu", prefix="top_"))
    return seq


def composite_case():
    rng = _rng("composite")
    seq = build_composite()
    x = rng.standard_normal((N, T, 3)).astype(np.float32)
    seq.unroll(T, x)  # creates the parameters
    randomize(seq, rng)
    begin = [rng.standard_normal(s.shape).astype(np.float32) * 0.5
             for s in seq.begin_state(batch_size=N)]
    return dict(x=x, weights=seq.params.arrays(), begin=begin,
                dy=rng.standard_normal((N, T, 4)).astype(np.float32),
                dstates=[rng.standard_normal(b.shape).astype(np.float32) for b in begin])


MX_SCRIPT = r"""
import mxnet as mx
import numpy as np

def run_sym(net, arrays, out_grads):
    names = net.list_arguments()
    missing = [n for n in names if n not in arrays]
    assert not missing, missing
    args = {n: mx.nd.array(arrays[n], dtype=arrays[n].dtype) for n in names}
    grads = {n: mx.nd.zeros(args[n].shape, dtype=args[n].dtype) for n in names}
    ex = net.bind(mx.cpu(), args=args, args_grad=grads, grad_req='write')
    ex.forward(is_train=True)
    outs = [o.asnumpy() for o in ex.outputs]
    ex.backward([mx.nd.array(g) for g in out_grads])
    return dict(outs=outs, grads={n: g.asnumpy() for n, g in grads.items()}, names=names)

def flatten(states):
    out = []
    for s in states:
        out.extend(flatten(s) if isinstance(s, (list, tuple)) else [s])
    return out

def make_cell(kind, H, prefix):
    if kind == 'lstm': return mx.rnn.LSTMCell(H, prefix=prefix)
    if kind == 'gru': return mx.rnn.GRUCell(H, prefix=prefix)
    return mx.rnn.RNNCell(H, activation=kind.split('_')[1], prefix=prefix)

# A. one-layer cells unrolled (NTC, merged), forward and backward
single = {}
for kind, case in single_cases.items():
    cell = make_cell(kind, case['H'], case['prefix'])
    begin = [mx.sym.Variable('s%d' % i) for i in range(len(cell.state_info))]
    out, states = cell.unroll(case['T'], mx.sym.Variable('data'), begin_state=begin,
                              layout=case['layout'], merge_outputs=True)
    arrays = dict(case['weights'], data=case['x'])
    arrays.update({'s%d' % i: s for i, s in enumerate(case['begin'])})
    res = run_sym(mx.sym.Group([out] + list(states)), arrays, [case['dy']] + case['dstates'])
    nd_weights = {k: mx.nd.array(v) for k, v in case['weights'].items()}
    res['unpacked'] = cell.unpack_weights(nd_weights)
    res['repacked'] = cell.pack_weights(cell.unpack_weights(nd_weights))
    single[kind] = res
outputs['single'] = single

# B. FusedRNNCell LSTM 2 layers bidirectional: mx.nd.RNN on the CPU (autograd), unpack/pack, unfuse
fz = fused
x, p = mx.nd.array(fz['x']), mx.nd.array(fz['flat'])
h0, c0 = mx.nd.array(fz['h0']), mx.nd.array(fz['c0'])
for a in (x, p, h0, c0):
    a.attach_grad()
with mx.autograd.record():
    y, hN, cN = mx.nd.RNN(x, p, h0, c0, state_size=fz['H'], num_layers=fz['L'], bidirectional=True,
                          mode='lstm', state_outputs=True)
mx.autograd.backward([y, hN, cN], [mx.nd.array(fz['dy']), mx.nd.array(fz['dhN']),
                                   mx.nd.array(fz['dcN'])])
res = dict(y=y, hN=hN, cN=cN, dx=x.grad, dflat=p.grad, dh0=h0.grad, dc0=c0.grad)
cell = mx.rnn.FusedRNNCell(fz['H'], fz['L'], 'lstm', True, get_next_state=True)
args = cell.unpack_weights({'lstm_parameters': p})
res['unpacked'] = args
res['repacked'] = cell.pack_weights(args)['lstm_parameters']
stack = cell.unfuse()
sargs = stack.pack_weights(args)
begin = [mx.sym.Variable('b%d' % i) for i in range(len(stack.state_info))]
out, states = stack.unroll(fz['T'], mx.sym.Variable('data'), begin_state=begin, layout='TNC',
                           merge_outputs=True)
arrays = {k: v.asnumpy() for k, v in sargs.items()}
arrays['data'] = fz['x']
for i in range(len(begin)):  # per layer: l cell (h, c), r cell (h, c)
    layer, j = divmod(i, 4)
    d, kind = divmod(j, 2)
    arrays['b%d' % i] = (fz['c0'] if kind else fz['h0'])[layer * 2 + d]
unfused = run_sym(mx.sym.Group([out] + flatten(states)), arrays,
                  [np.zeros(fz['dy'].shape, np.float32)]
                  + [np.zeros(fz['h0'][0].shape, np.float32)] * 8)
res['unfused_outs'] = unfused['outs']
res['stack_arg_names'] = sorted(sargs)
res['names'] = {}
for mode, size in fz['sizes'].items():
    c = mx.rnn.FusedRNNCell(fz['H'], fz['L'], mode, True)
    res['names'][mode] = {k: list(v.shape) for k, v in
                          c.unpack_weights({mode + '_parameters': mx.nd.zeros((size,))}).items()}
outputs['fused'] = res

# C. the cell guide's BidirectionalCell(LSTMCell(50), GRUCell(75)) and a composite stack
bi = mx.rnn.BidirectionalCell(mx.rnn.LSTMCell(num_hidden=50), mx.rnn.GRUCell(num_hidden=75))
out, states = bi.unroll(7, mx.sym.Variable('data'), merge_outputs=True)
_, out_shapes, _ = out.infer_shape(data=(2, 7, 9))
outputs['guide'] = dict(shape=list(out_shapes[0]), args=out.list_arguments(),
                        n_states=[len(s) for s in states])
seq = mx.rnn.SequentialRNNCell()
seq.add(mx.rnn.BidirectionalCell(mx.rnn.LSTMCell(5, prefix='bl_'), mx.rnn.GRUCell(7, prefix='br_'),
                                 output_prefix='bi_'))
seq.add(mx.rnn.ResidualCell(mx.rnn.LSTMCell(12, prefix='res_')))
seq.add(mx.rnn.DropoutCell(0.0))
seq.add(mx.rnn.ZoneoutCell(mx.rnn.GRUCell(8, prefix='z_'), 0.0, 0.0))
seq.add(mx.rnn.RNNCell(4, activation='relu', prefix='top_'))
try:  # MXNet 1.9.1: a ZoneoutCell child breaks SequentialRNNCell.begin_state(func=...)
    seq.begin_state(func=mx.sym.Variable)
    outputs['begin_state_func_error'] = None
except TypeError as e:
    outputs['begin_state_func_error'] = str(e)
cp = composite
begin = [mx.sym.Variable('b%d' % i) for i in range(len(seq.state_info))]
out, states = seq.unroll(cp['x'].shape[1], mx.sym.Variable('data'), begin_state=begin,
                         layout='NTC', merge_outputs=True)
arrays = dict(cp['weights'], data=cp['x'])
arrays.update({'b%d' % i: b for i, b in enumerate(cp['begin'])})
comp = run_sym(mx.sym.Group([out] + flatten(states)), arrays, [cp['dy']] + cp['dstates'])
comp['state_structure'] = [len(s) if isinstance(s, (list, tuple)) else 0 for s in states]
nd_w = {k: mx.nd.array(v) for k, v in cp['weights'].items()}
comp['unpacked_names'] = sorted(seq.unpack_weights(nd_w))
outputs['composite'] = comp

# D. initial values: FusedRNN initializer (LSTM) and LSTMCell's LSTMBias via Module.init_params
arr = mx.nd.zeros((fz['sizes_lstm1'],))
mx.init.FusedRNN(None, fz['H'], 1, 'lstm', False, 1.0)._init_weight(
    mx.init.InitDesc('lstm_parameters', global_init=mx.init.Uniform(0.07)), arr)
outputs['fused_init'] = arr
c = mx.rnn.LSTMCell(fz['H'], prefix='lstm_')
o, _ = c.unroll(3, mx.sym.Variable('data'), merge_outputs=True)
m = mx.mod.Module(o, data_names=['data'], label_names=None)
m.bind(data_shapes=[('data', (2, 3, 4))])
m.init_params(initializer=mx.init.Uniform(0.07))
outputs['cell_init'] = m.get_params()[0]
"""


@pytest.fixture(scope="module")
def mx():
    fz = fused_case()
    fz["sizes_lstm1"] = fusedrnn.param_size("lstm", 4, FH, 1, False)
    return run_mxnet(
        MX_SCRIPT,
        single_cases={k: single_case(k) for k in ("lstm", "gru") + RNN_KINDS},
        fused=fz,
        composite=composite_case(),
    )


def close(actual, expected, what, **tol):
    tol = tol or F32
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), err_msg=what, **tol)


# --------------------------------------------------------------------------------------------------
# Against real MXNet
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ("lstm", "gru") + RNN_KINDS)
def test_cell_unroll_and_grads_match_mxnet(mx, kind):
    case, want = single_case(kind), mx["single"][kind]
    cell = make_cell(kind, H)
    cell.params.load(case["weights"])
    out, states = cell.unroll(T, case["x"], begin_state=case["begin"], layout="NTC",
                              merge_outputs=True, training=True)
    close(out, want["outs"][0], "outputs")
    for i, s in enumerate(states):
        close(s, want["outs"][1 + i], f"states[{i}]")
    dx, dbegin = cell.backward(case["dy"], case["dstates"])
    close(dx, want["grads"]["data"], "d inputs")
    for i, d in enumerate(dbegin):
        close(d, want["grads"][f"s{i}"], f"d begin_state[{i}]")
    grads = cell.params.grads
    assert set(grads) == set(case["weights"])
    for name in case["weights"]:
        close(grads[name], want["grads"][name], name)
    # unpack/pack: MXNet's per-gate names and values
    unpacked = cell.unpack_weights(case["weights"])
    assert sorted(unpacked) == sorted(want["unpacked"])
    for name, v in unpacked.items():
        np.testing.assert_array_equal(v, want["unpacked"][name], err_msg=name)
    repacked = cell.pack_weights(unpacked)
    assert sorted(repacked) == sorted(want["repacked"])
    for name, v in repacked.items():
        np.testing.assert_array_equal(v, case["weights"][name], err_msg=name)


def test_fused_lstm_2_layers_bidirectional_matches_mxnet_rnn_on_cpu(mx):
    fz, want = fused_case(), mx["fused"]
    cell = rnn.FusedRNNCell(FH, num_layers=FL, mode="lstm", bidirectional=True, get_next_state=True)
    cell.params["lstm_parameters"] = fz["flat"]
    out, states = cell.unroll(T, fz["x"], begin_state=[fz["h0"], fz["c0"]], layout="TNC",
                              merge_outputs=True, training=True)
    close(out, want["y"], "y")
    close(states[0], want["hN"], "hN")
    close(states[1], want["cN"], "cN")
    dx, (dh0, dc0) = cell.backward(fz["dy"], [fz["dhN"], fz["dcN"]])
    close(dx, want["dx"], "dx")
    close(dh0, want["dh0"], "dh0")
    close(dc0, want["dc0"], "dc0")
    close(cell.params.grads["lstm_parameters"], want["dflat"], "d lstm_parameters", rtol=1e-4,
          atol=1e-4)
    # unpack_weights / pack_weights: MXNet's names, order and values
    unpacked = cell.unpack_weights({"lstm_parameters": fz["flat"]})
    assert list(unpacked) == list(want["unpacked"])
    for name, v in unpacked.items():
        np.testing.assert_array_equal(v, want["unpacked"][name], err_msg=name)
    np.testing.assert_array_equal(cell.pack_weights(unpacked)["lstm_parameters"], want["repacked"])
    np.testing.assert_array_equal(want["repacked"], fz["flat"])
    for mode in ("gru", "rnn_relu"):
        c = rnn.FusedRNNCell(FH, FL, mode, True)
        got = c.unpack_weights({f"{mode}_parameters": np.zeros(fz["sizes"][mode], np.float32)})
        assert {k: list(v.shape) for k, v in got.items()} == want["names"][mode]
        assert list(got) == list(want["names"][mode])


def test_unfuse_matches_mxnet_unfused_cells(mx):
    fz, want = fused_case(), mx["fused"]
    cell = rnn.FusedRNNCell(FH, num_layers=FL, mode="lstm", bidirectional=True, get_next_state=True)
    cell.params["lstm_parameters"] = fz["flat"]
    stack = cell.unfuse()
    assert isinstance(stack, rnn.SequentialRNNCell)
    assert all(isinstance(c, rnn.BidirectionalCell) for c in stack._cells)
    assert sorted(stack.params.arrays()) == want["stack_arg_names"]
    begin = []
    for layer in range(FL):
        for d in range(2):
            begin += [fz["h0"][2 * layer + d], fz["c0"][2 * layer + d]]
    out, states = stack.unroll(T, fz["x"], begin_state=begin, layout="TNC", merge_outputs=True)
    close(out, want["unfused_outs"][0], "unfused outputs")
    for i, s in enumerate(flat(states)):
        close(s, want["unfused_outs"][1 + i], f"unfused states[{i}]")
    # and the unfused stack gives what the fused cell gives
    y, (hN, cN) = cell.unroll(T, fz["x"], begin_state=[fz["h0"], fz["c0"]], layout="TNC")
    close(out, y, "unfused vs fused")
    close(np.stack(flat(states)[0::2]), hN, "unfused vs fused hN")
    close(np.stack(flat(states)[1::2]), cN, "unfused vs fused cN")


def test_guide_shapes_and_composite_stack_match_mxnet(mx):
    # the cell guide's example: BidirectionalCell(LSTMCell(50), GRUCell(75)) -> width 125
    bi = rnn.BidirectionalCell(rnn.LSTMCell(num_hidden=50), rnn.GRUCell(num_hidden=75))
    out, states = bi.unroll(7, np.zeros((2, 7, 9), np.float32), merge_outputs=True)
    assert list(out.shape) == mx["guide"]["shape"] == [2, 7, 125]
    assert [len(s) for s in states] == mx["guide"]["n_states"] == [2, 1]
    assert set(bi.params.arrays()) == set(mx["guide"]["args"]) - {"data"}

    cp, want = composite_case(), mx["composite"]
    seq = build_composite()
    seq.params.load(cp["weights"])
    out, states = seq.unroll(T, cp["x"], begin_state=cp["begin"], layout="NTC",
                             merge_outputs=True, training=True)
    close(out, want["outs"][0], "composite outputs")
    assert [len(s) if isinstance(s, list) else 0 for s in states] == want["state_structure"]
    for i, s in enumerate(flat(states)):
        close(s, want["outs"][1 + i], f"composite states[{i}]")
    dx, dbegin = seq.backward(cp["dy"], cp["dstates"])
    close(dx, want["grads"]["data"], "composite d inputs")
    for i, d in enumerate(dbegin):
        close(d, want["grads"][f"b{i}"], f"composite d begin_state[{i}]")
    for name, g in seq.params.grads.items():
        close(g, want["grads"][name], name)
    assert sorted(seq.unpack_weights(cp["weights"])) == want["unpacked_names"]
    # MXNet 1.9.1 cannot make begin states for this stack with a func (ZoneoutCell's begin_state
    # takes it as init_sym); ours can
    assert "multiple values" in mx["begin_state_func_error"]
    assert len(seq.begin_state(func=np.ones, batch_size=2)) == 7


def test_initial_values_match_mxnet_initializers(mx):
    # FusedRNN: forget biases 1 on i2h AND h2h; LSTMCell's LSTMBias: 1 on i2h only
    cell = rnn.FusedRNNCell(FH, mode="lstm")
    cell.unroll(3, np.zeros((2, 3, 4), np.float32))
    ours = cell.unpack_weights(cell.params.arrays())
    theirs = cell.unpack_weights({"lstm_parameters": mx["fused_init"]})
    for name in ours:
        if name.endswith("bias"):
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
            assert np.all(ours[name] == (1.0 if name.endswith("_f_bias") else 0.0))
        else:
            assert np.abs(ours[name]).max() <= 0.07 and np.abs(theirs[name]).max() <= 0.07
    lstm = rnn.LSTMCell(FH, prefix="lstm_")
    lstm.unroll(3, np.zeros((2, 3, 4), np.float32))
    for name in ("lstm_i2h_bias", "lstm_h2h_bias"):
        np.testing.assert_array_equal(lstm.params[name], mx["cell_init"][name], err_msg=name)
    assert lstm.params["lstm_i2h_weight"].shape == mx["cell_init"]["lstm_i2h_weight"].shape


# --------------------------------------------------------------------------------------------------
# Against the float64 reference and finite differences
# --------------------------------------------------------------------------------------------------


def _cell_flat(cell, C_in):
    """The one-layer flat vector of a built-in cell's parameters."""
    kind = cell._mode
    p = cell._prefix
    torch_named = {"weight_ih_l0": cell.params[p + "i2h_weight"],
                   "weight_hh_l0": cell.params[p + "h2h_weight"],
                   "bias_ih_l0": cell.params[p + "i2h_bias"],
                   "bias_hh_l0": cell.params[p + "h2h_bias"]}
    return ref.pack(torch_named, kind, C_in, cell._num_hidden)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
@pytest.mark.parametrize("layout", ["NTC", "TNC"])
def test_cell_gradients_match_reference_float64(kind, layout):
    rng = _rng("ref", kind, layout)
    cell = make_cell(kind, H)
    x = rng.standard_normal((N, T, C) if layout == "NTC" else (T, N, C))
    cell.unroll(T, x, layout=layout)
    randomize(cell, rng)
    begin = [rng.standard_normal((N, H)) for _ in cell.state_info]
    out, states = cell.unroll(T, x, begin_state=begin, layout=layout, merge_outputs=False,
                              training=True)
    assert isinstance(out, list) and len(out) == T
    dy = [rng.standard_normal((N, H)) for _ in range(T)]
    ds = [rng.standard_normal((N, H)) for _ in states]
    dx, dbegin = cell.backward(dy, ds)

    xt = x.swapaxes(0, 1) if layout == "NTC" else x
    lstm = kind == "lstm"
    y, hN, cN, cache = ref.forward(xt, _cell_flat(cell, C), kind, H, h0=begin[0][None],
                                   c0=begin[1][None] if lstm else None)
    rdx, rdh0, rdc0, rdw = ref.backward(cache, np.stack(dy), ds[0][None],
                                        ds[1][None] if lstm else None)
    np.testing.assert_allclose(np.stack(out), y, **F64)
    np.testing.assert_allclose(states[0], hN[0], **F64)
    np.testing.assert_allclose(dx, rdx.swapaxes(0, 1) if layout == "NTC" else rdx, **F64)
    np.testing.assert_allclose(dbegin[0], rdh0[0], **F64)
    if lstm:
        np.testing.assert_allclose(states[1], cN[0], **F64)
        np.testing.assert_allclose(dbegin[1], rdc0[0], **F64)
    grads = {k[len(cell._prefix):]: v for k, v in cell.params.grads.items()}
    rgrads = ref.unpack(rdw, kind, C, H)
    for ours, theirs in (("i2h_weight", "weight_ih_l0"), ("h2h_weight", "weight_hh_l0"),
                         ("i2h_bias", "bias_ih_l0"), ("h2h_bias", "bias_hh_l0")):
        np.testing.assert_allclose(grads[ours], rgrads[theirs], err_msg=ours, **F64)


def test_fused_cell_gradients_match_reference_float64():
    rng = _rng("fused ref")
    L, D = 2, 2
    cell = rnn.FusedRNNCell(H, num_layers=L, mode="gru", bidirectional=True, get_next_state=True)
    w = rng.uniform(-0.5, 0.5, fusedrnn.param_size("gru", C, H, L, True))
    cell.params["gru_parameters"] = w
    x = rng.standard_normal((T, N, C))
    h0 = rng.standard_normal((L * D, N, H))
    out, (hN,) = cell.unroll(T, x, begin_state=[h0], layout="TNC", training=True)
    dy, dhN = rng.standard_normal(out.shape), rng.standard_normal(hN.shape)
    dx, (dh0,) = cell.backward(dy, [dhN])
    y, rhN, _, cache = ref.forward(x, w, "gru", H, L, True, h0=h0)
    rdx, rdh0, _, rdw = ref.backward(cache, dy, dhN)
    for a, b in ((out, y), (hN, rhN), (dx, rdx), (dh0, rdh0),
                 (cell.params.grads["gru_parameters"], rdw)):
        np.testing.assert_allclose(a, b, **F64)
    # gradients accumulate
    cell.unroll(T, x, begin_state=[h0], layout="TNC", training=True)
    cell.backward(dy, [dhN])
    np.testing.assert_allclose(cell.params.grads["gru_parameters"], 2 * rdw, **F64)


def test_finite_differences_through_zoneout_dropout_residual():
    """A tiny float64 stack of the Python-level cells, masks fixed by re-seeding."""
    rng = _rng("fd")
    Tn, Nn, Cn, Hn = 3, 2, 2, 3
    seq = rnn.SequentialRNNCell()
    zone = rnn.ZoneoutCell(rnn.LSTMCell(Hn, prefix="a_"), 0.5, 0.5)
    drop = rnn.DropoutCell(0.3)
    seq.add(zone)
    seq.add(drop)
    seq.add(rnn.ResidualCell(rnn.GRUCell(Hn, prefix="b_")))
    x = rng.standard_normal((Nn, Tn, Cn))
    seq.unroll(Tn, x)
    randomize(seq, rng, scale=0.8)
    begin = [rng.standard_normal((Nn, Hn)) for _ in range(3)]
    dy = rng.standard_normal((Nn, Tn, Hn))
    ds = [rng.standard_normal((Nn, Hn)) for _ in range(3)]
    arrays = dict(x=x, **{f"s{i}": b for i, b in enumerate(begin)})
    params = seq.params.arrays()

    def run(train):
        zone.rng, drop.rng = np.random.default_rng(1), np.random.default_rng(2)
        return seq.unroll(Tn, x, begin_state=begin, merge_outputs=True, training=train)

    def loss():
        out, states = run(True)
        seq.clear_tape()
        return float(np.sum(out * dy) + sum(np.sum(s * d) for s, d in zip(flat(states), ds)))

    out, _ = run(True)
    dx, dbegin = seq.backward(dy, ds)
    analytic = dict(x=dx, **{f"s{i}": d for i, d in enumerate(dbegin)})
    analytic.update(seq.params.grads)
    arrays.update(params)
    check_finite_differences(loss, arrays, analytic, eps=1e-6, tol=1e-6, ctx="zoneout stack")
    # the masks did something: training differs from inference
    assert not np.allclose(out, seq.unroll(Tn, x, begin_state=begin, merge_outputs=True)[0])


def test_fused_dropout_between_layers_equals_unfused_stack(monkeypatch):
    """MXNet's FusedRNNCell dropout (between layers, per element and step) equals its unfuse()
    stack with DropoutCells drawing from the same generator, forward and backward."""
    rng = _rng("fused dropout")
    L = 3
    cell = rnn.FusedRNNCell(H, num_layers=L, mode="gru", bidirectional=True, dropout=0.4,
                            get_next_state=True)
    x = rng.standard_normal((N, T, C))
    cell.unroll(T, x)
    randomize(cell, rng)
    stack = cell.unfuse()
    drops = [c for c in stack._cells if isinstance(c, rnn.DropoutCell)]
    assert len(drops) == L - 1 and drops[0].dropout == 0.4
    h0 = rng.standard_normal((2 * L, N, H))
    calls = _Counting(monkeypatch)
    cell.rng = np.random.default_rng(7)
    y, (hN,) = cell.unroll(T, x, begin_state=[h0], training=True)
    assert calls.lengths == [T] * L  # one fused call per layer
    shared = np.random.default_rng(7)
    for d in drops:
        d.rng = shared
    y2, st2 = stack.unroll(T, x, begin_state=list(h0), training=True)
    np.testing.assert_allclose(y, y2, **F64)
    np.testing.assert_allclose(hN, np.stack(flat(st2)), **F64)
    y_inf = cell.unroll(T, x, begin_state=[h0])[0]
    assert not np.allclose(y, y_inf)  # dropout acted in training only
    np.testing.assert_allclose(y_inf, stack.unroll(T, x, begin_state=list(h0))[0], **F64)
    dy, dhN = rng.standard_normal(y.shape), rng.standard_normal(hN.shape)
    dx, (dh0,) = cell.backward(dy, [dhN])
    dx2, db2 = stack.backward(dy, list(dhN))
    np.testing.assert_allclose(dx, dx2, **F64)
    np.testing.assert_allclose(dh0, np.stack(db2), **F64)
    g2 = cell.pack_weights(stack.unpack_weights(stack.params.grads))["gru_parameters"]
    np.testing.assert_allclose(cell.params.grads["gru_parameters"], g2, **F64)


# --------------------------------------------------------------------------------------------------
# Stepping, unrolling, fused calls, custom cells
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_stepping_equals_unrolling_forward_and_backward(kind):
    rng = _rng("step", kind)
    cell = make_cell(kind, H)
    x = rng.standard_normal((T, N, C))
    cell.unroll(T, x, layout="TNC")
    randomize(cell, rng)
    begin = [rng.standard_normal((N, H)) for _ in cell.state_info]
    dy = rng.standard_normal((T, N, H))
    ds = [rng.standard_normal((N, H)) for _ in cell.state_info]

    out_u, states_u = cell.unroll(T, x, begin_state=begin, layout="TNC", training=True)
    dx_u, db_u = cell.backward(dy, ds)
    g_u = {k: v.copy() for k, v in cell.params.grads.items()}
    cell.params.zero_grad()

    states, outs = begin, []
    for t in range(T):
        o, states = cell(x[t], states, training=True)
        outs.append(o)
    np.testing.assert_allclose(np.stack(outs), out_u, rtol=1e-12, atol=1e-12)
    for a, b in zip(states, states_u):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    d_st, dxs = ds, [None] * T
    for t in range(T - 1, -1, -1):
        dxs[t], d_st = cell.backward(dy[t], d_st)
    np.testing.assert_allclose(np.stack(dxs), dx_u, rtol=1e-11, atol=1e-12)
    for a, b in zip(d_st, db_u):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    for k, v in cell.params.grads.items():
        np.testing.assert_allclose(v, g_u[k], rtol=1e-11, atol=1e-12, err_msg=k)


def test_sequential_stepping_equals_unrolling():
    rng = _rng("seq step")
    seq = rnn.SequentialRNNCell()
    seq.add(rnn.LSTMCell(H, prefix="l0_"))
    seq.add(rnn.GRUCell(H, prefix="l1_"))
    seq.add(rnn.ResidualCell(rnn.RNNCell(H, prefix="l2_")))
    x = rng.standard_normal((N, T, C))
    begin = [rng.standard_normal((N, H)) for _ in seq.state_info]
    out_u, _ = seq.unroll(T, x, begin_state=begin, training=True)
    dy = rng.standard_normal(out_u.shape)
    dx_u, db_u = seq.backward(dy)
    g_u = {k: v.copy() for k, v in seq.params.grads.items()}
    seq.params.zero_grad()
    states, outs = begin, []
    for t in range(T):
        o, states = seq(x[:, t], states, training=True)
        outs.append(o)
    np.testing.assert_allclose(np.stack(outs, axis=1), out_u, rtol=1e-12, atol=1e-12)
    d_st, dxs = None, [None] * T
    for t in range(T - 1, -1, -1):
        dxs[t], d_st = seq.backward(dy[:, t], d_st)
    np.testing.assert_allclose(np.stack(dxs, axis=1), dx_u, rtol=1e-11, atol=1e-12)
    for a, b in zip(d_st, db_u):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    for k, v in seq.params.grads.items():
        np.testing.assert_allclose(v, g_u[k], rtol=1e-11, atol=1e-12, err_msg=k)


class _Counting:
    """Counts fusedrnn.functional.forward calls and their sequence lengths."""

    def __init__(self, monkeypatch):
        self.lengths = []
        real = fusedrnn.functional.forward

        def counted(x, *a, **kw):
            self.lengths.append(x.shape[1] if kw.get("batch_first") else x.shape[0])
            return real(x, *a, **kw)

        monkeypatch.setattr(fusedrnn.functional, "forward", counted)


class ScaledGRU(rnn.BaseRNNCell):
    """A user-written cell that implements only __call__ (and step_backward, to train): 2 * a GRU's
    output, the GRU's states."""

    def __init__(self, hidden, prefix="scaled_"):
        super().__init__(prefix=prefix)
        self.inner = rnn.GRUCell(hidden, prefix=prefix, params=self.params)
        self.calls = 0

    @property
    def state_info(self):
        return self.inner.state_info

    def __call__(self, inputs, states, training=False):
        self.calls += 1
        out, states = self.inner(inputs, states, training=training)
        return 2 * out, states

    def step_backward(self, d_output, d_states):
        return self.inner.backward(None if d_output is None else 2 * d_output, d_states)


class Accumulator(rnn.BaseRNNCell):
    """The simplest user cell: no training keyword, no backward."""

    @property
    def state_info(self):
        return [{"shape": (0, 2), "__layout__": "NC"}]

    def __call__(self, inputs, states):
        s = states[0] + inputs[:, :2]
        return s, [s]


def test_unroll_is_one_fused_call_and_custom_cells_loop(monkeypatch):
    calls = _Counting(monkeypatch)
    rng = _rng("calls")
    x = rng.standard_normal((N, 7, C)).astype(np.float32)
    rnn.LSTMCell(H).unroll(7, x)
    assert calls.lengths == [7]
    calls.lengths.clear()
    rnn.FusedRNNCell(H, num_layers=3, bidirectional=True).unroll(7, x)
    assert calls.lengths == [7]
    calls.lengths.clear()
    seq = rnn.SequentialRNNCell()
    for i in range(3):
        seq.add(rnn.GRUCell(H, prefix=f"g{i}_"))
    seq.unroll(7, list(x.swapaxes(0, 1)))
    assert calls.lengths == [7, 7, 7]
    calls.lengths.clear()
    rnn.BidirectionalCell(rnn.LSTMCell(H, prefix="a_"), rnn.LSTMCell(H, prefix="b_")).unroll(7, x)
    assert calls.lengths == [7, 7]
    calls.lengths.clear()
    # a user cell: Python loop of T = 1 fused steps
    custom = ScaledGRU(H)
    out, states = custom.unroll(7, x, training=True)
    assert calls.lengths == [1] * 7 and custom.calls == 7
    gru = rnn.GRUCell(H, prefix="scaled_", params=custom.params)  # the same parameters
    ref_out, ref_states = gru.unroll(7, x, training=True)
    np.testing.assert_allclose(out, 2 * ref_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states[0], ref_states[0], rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    dx_ref, ds_ref = gru.backward(2 * dy)
    g_ref = {k: v.copy() for k, v in custom.params.grads.items()}
    custom.params.zero_grad()
    dx, ds = custom.backward(dy)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ds[0], ds_ref[0], rtol=1e-4, atol=1e-5)
    for k, v in custom.params.grads.items():
        np.testing.assert_allclose(v, g_ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
    # a user cell with no training keyword and no backward: unrolls, and says why it cannot train
    acc = Accumulator()
    out, states = acc.unroll(7, x, merge_outputs=False)
    assert len(out) == 7
    np.testing.assert_allclose(states[0], x[:, :, :2].sum(axis=1), rtol=1e-5)
    acc.unroll(7, x, training=True)
    with pytest.raises(NotImplementedError, match="step_backward"):
        acc.backward(np.ones((N, 7, 2), np.float32))


def test_merge_outputs_forms_and_layouts():
    rng = _rng("forms")
    cell = rnn.LSTMCell(H)
    x = rng.standard_normal((N, T, C)).astype(np.float32)
    steps = [x[:, t] for t in range(T)]
    y, _ = cell.unroll(T, x)
    assert isinstance(y, np.ndarray) and y.shape == (N, T, H)
    y_list, _ = cell.unroll(T, steps)
    assert isinstance(y_list, list) and len(y_list) == T and y_list[0].shape == (N, H)
    np.testing.assert_array_equal(np.stack(y_list, axis=1), y)
    assert isinstance(cell.unroll(T, x, merge_outputs=False)[0], list)
    assert cell.unroll(T, steps, merge_outputs=True)[0].shape == (N, T, H)
    y_tnc, _ = cell.unroll(T, x.swapaxes(0, 1), layout="TNC")
    np.testing.assert_allclose(y_tnc, y.swapaxes(0, 1), rtol=1e-6, atol=1e-7)
    # backward gives d_inputs in the inputs' form
    cell.unroll(T, steps, training=True)
    dx, _ = cell.backward([np.ones((N, H), np.float32)] * T)
    assert isinstance(dx, list) and dx[0].shape == (N, C)
    # begin_state: MXNet's state_info, the batch size given as batch_size
    assert cell.state_info == [{"shape": (0, H), "__layout__": "NC"}] * 2
    s = cell.begin_state(func=np.full, batch_size=2, fill_value=0.5)
    assert [a.shape for a in s] == [(2, H)] * 2 and s[0].dtype == np.float32 and s[0][0, 0] == 0.5
    names = []
    cell.reset()
    cell.begin_state(func=lambda shape, name: names.append(name) or np.zeros(shape), batch_size=1)
    assert names == ["lstm_begin_state_0", "lstm_begin_state_1"]
    fused = rnn.FusedRNNCell(H, num_layers=2, bidirectional=True)
    assert [a.shape for a in fused.begin_state(batch_size=3)] == [(4, 3, H)] * 2
    # FusedRNNCell returns no states unless get_next_state (as MXNet)
    assert fused.unroll(T, x)[1] == []


def test_zoneout_and_dropout_semantics():
    rng = _rng("zoneout")
    x = rng.standard_normal((N, T, C))
    base = rnn.GRUCell(H)
    z = rnn.ZoneoutCell(base, zoneout_outputs=1.0, zoneout_states=1.0)
    begin = [rng.standard_normal((N, H))]
    out, states = z.unroll(T, x, begin_state=begin, training=True)
    np.testing.assert_array_equal(out, 0.0)  # outputs always keep the previous (initially zero) one
    np.testing.assert_array_equal(states[0], begin[0])  # states never change
    out_inf, _ = z.unroll(T, x, begin_state=begin)  # inference: no zoneout
    base._modified = False
    np.testing.assert_allclose(out_inf, base.unroll(T, x, begin_state=begin)[0], rtol=1e-12)
    d = rnn.DropoutCell(0.25, rng=0)
    y, st = d.unroll(T, np.ones((N, T, 400)), training=True)
    assert st == [] and set(np.unique(y)) == {0.0, 1 / 0.75}
    assert abs((y == 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(d.unroll(T, np.ones((N, T, 4)))[0], 1.0)


def _chain_reference(gate, x_tnc, begin, seed, p_out, p_state, residual, dy, ds):
    """The float64 reference of a fused chain around gate cell ``gate`` with fusedrnn's masks."""
    from test_zoneout import zoneout_masks_like_fusedrnn
    Tn, Nn, Cn = x_tnc.shape
    Hn, mode = gate._num_hidden, gate._mode
    w = gate._weights(Cn, np.dtype(np.float64))[0].astype(np.float64)
    masks = zoneout_masks_like_fusedrnn(seed, 1, 1, Tn, Nn, Hn, p_out, p_state, mode == "lstm")
    h0 = begin[0][None]
    c0 = begin[1][None] if mode == "lstm" else None
    y, hN, cN, cache = ref.forward(x_tnc, w, mode, Hn, h0=h0, c0=c0, zoneout_masks=masks,
                                   residual=residual, activation=gate._fused_activation)
    g = ref.backward(cache, dy, ds[0][None], None if cN is None else ds[1][None])
    return y, [hN[0]] + ([cN[0]] if cN is not None else []), g


@pytest.mark.parametrize("kind,p_out,p_state,residual,outer_residual", [
    ("lstm", 0.3, 0.4, False, False), ("gru", 0.0, 0.5, True, True),
    ("rnn_tanh", 0.4, 0.0, True, True), ("lstm", 0.0, 0.3, True, False)])
def test_zoneout_and_residual_run_in_one_fused_call(monkeypatch, kind, p_out, p_state, residual,
                                                    outer_residual):
    """ZoneoutCell / ResidualCell around a built-in cell: unroll is one fused call whose zoneout
    masks come from (seed drawn from the ZoneoutCell's rng, position), matching the float64
    reference run with those masks, forward and backward; outer_residual: Residual(Zoneout(cell)),
    else Zoneout(Residual(cell)) (fusable when only the states are zoned)."""
    rng = _rng("chain", kind, p_out, p_state, residual)
    Hn = 7
    gate = make_cell(kind, Hn)
    cell = rnn.ZoneoutCell(gate, p_out, p_state, rng=11) if not residual else None
    if residual:
        cell = (rnn.ResidualCell(rnn.ZoneoutCell(gate, p_out, p_state, rng=11)) if outer_residual
                else rnn.ZoneoutCell(rnn.ResidualCell(gate), p_out, p_state, rng=11))
    x = rng.standard_normal((N, T, Hn))
    cell.unroll(T, x)
    randomize(cell, rng)
    begin = [rng.standard_normal((N, Hn)) for _ in range(2 if kind == "lstm" else 1)]
    calls = _Counting(monkeypatch)
    y, states = cell.unroll(T, x, begin_state=begin, merge_outputs=True, training=True)
    assert calls.lengths == [T]  # one fused call for the whole chain
    dy = rng.standard_normal(y.shape)
    ds = [rng.standard_normal((N, Hn)) for _ in begin]
    dx, dbegin = cell.backward(dy, ds)
    seed = int(np.random.default_rng(11).integers(0, 2**62))
    want_y, want_s, g = _chain_reference(gate, x.swapaxes(0, 1), begin, seed, p_out, p_state,
                                         residual, dy.swapaxes(0, 1), ds)
    np.testing.assert_allclose(y, want_y.swapaxes(0, 1), **F64)
    for a, b in zip(states, want_s):
        np.testing.assert_allclose(a, b, **F64)
    np.testing.assert_allclose(dx, g[0].swapaxes(0, 1), **F64)
    for a, b in zip(dbegin, [g[1][0]] + ([g[2][0]] if kind == "lstm" else [])):
        np.testing.assert_allclose(a, b, **F64)
    pieces = gate._weights(Hn, np.dtype(np.float64))[1]
    for prm, q in zip(gate._param_list(), pieces):
        np.testing.assert_allclose(prm.grad.reshape(-1), g[3][q.offset:q.offset + q.size], **F64)
    # the masks did something, and inference has no zoneout
    inf, _ = cell.unroll(T, x, begin_state=begin, merge_outputs=True)
    assert not np.allclose(inf, y)
    gate._modified = False
    base_y = gate.unroll(T, x, begin_state=begin, merge_outputs=True)[0]
    gate._modified = True
    np.testing.assert_allclose(inf, base_y + (x if residual else 0), **F64)


def test_zoneout_of_a_residual_sum_steps_in_python(monkeypatch):
    """ZoneoutCell(ResidualCell(cell)) with output zoneout zones the sum: not the kernel's order
    (zoneout, then the sum), so it unrolls by Python-level steps, as MXNet does."""
    cell = rnn.ZoneoutCell(rnn.ResidualCell(rnn.GRUCell(H)), zoneout_outputs=0.3, rng=1)
    x = _rng("zr").standard_normal((N, T, H))
    calls = _Counting(monkeypatch)
    y, _ = cell.unroll(T, x, training=True)
    assert calls.lengths == [1] * T
    dx, _ = cell.backward(np.ones_like(y))
    assert dx.shape == x.shape


def test_param_sharing_and_names():
    shared = rnn.RNNParams("shared_")
    a = rnn.LSTMCell(H, prefix="a_", params=shared)
    b = rnn.LSTMCell(H, prefix="b_", params=shared)
    x = _rng("share").standard_normal((N, T, C)).astype(np.float32)
    ya, _ = a.unroll(T, x, training=True)
    yb, _ = b.unroll(T, x, training=True)
    np.testing.assert_array_equal(ya, yb)
    assert sorted(shared.arrays()) == ["shared_h2h_bias", "shared_h2h_weight", "shared_i2h_bias",
                                       "shared_i2h_weight"]
    b.backward(np.ones_like(yb))
    g1 = shared.grads["shared_i2h_weight"].copy()
    a.backward(np.ones_like(ya))
    np.testing.assert_allclose(shared.grads["shared_i2h_weight"], 2 * g1, rtol=1e-6)
    # setting a parameter in place is seen by the next run
    shared["shared_h2h_bias"] = np.full(4 * H, 0.3, np.float32)
    assert not np.allclose(a.unroll(T, x)[0], ya)
    np.testing.assert_array_equal(a.unroll(T, x)[0], b.unroll(T, x)[0])


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_errors():
    x = np.zeros((N, T, C), np.float32)
    msg = "FusedRNNCell cannot be stepped. Please use unroll"
    with pytest.raises(NotImplementedError, match=msg):
        rnn.FusedRNNCell(H)(x[:, 0], [np.zeros((1, N, H), np.float32)] * 2)
    bi = rnn.BidirectionalCell(rnn.LSTMCell(H, prefix="l_"), rnn.LSTMCell(H, prefix="r_"))
    with pytest.raises(NotImplementedError, match="Bidirectional cannot be stepped"):
        bi(x[:, 0], bi.begin_state(batch_size=N))
    seq = rnn.SequentialRNNCell()
    seq.add(bi)
    with pytest.raises(NotImplementedError, match="Bidirectional cannot be stepped"):
        seq(x[:, 0], seq.begin_state(batch_size=N))
    cell = rnn.LSTMCell(H)
    with pytest.raises(ValueError, match="2-D array"):
        cell(x, cell.begin_state(batch_size=N))
    with pytest.raises(ValueError, match="3-D array"):
        cell.unroll(T, x[0])
    with pytest.raises(ValueError, match="length=4"):
        cell.unroll(4, x)
    with pytest.raises(ValueError, match="layout"):
        cell.unroll(T, x, layout="NCT")
    with pytest.raises(ValueError, match=r"states\[0\]: expected shape \(3, 6\)"):
        cell(x[:, 0], [np.zeros((N, H + 1), np.float32)] * 2)
    with pytest.raises(ValueError, match="expected 2 state"):
        cell(x[:, 0], [np.zeros((N, H), np.float32)])
    cell.unroll(T, x)
    with pytest.raises(ValueError, match="lstm_i2h_weight: expected shape"):
        cell.unroll(T, np.zeros((N, T, C + 1), np.float32))
    with pytest.raises(TypeError, match="float32 but the input is float64"):
        cell.unroll(T, x.astype(np.float64))
    with pytest.raises(ValueError, match="batch_size"):
        cell.begin_state()
    with pytest.raises(RuntimeError, match="nothing to differentiate"):
        cell.backward(np.zeros((N, T, H), np.float32))
    with pytest.raises(ValueError, match="d_outputs"):
        cell.unroll(T, x, training=True)
        cell.backward(np.zeros((N, T, H + 1), np.float32))
    z = rnn.ZoneoutCell(rnn.GRUCell(H))
    with pytest.raises(RuntimeError, match="modifier cell"):
        z.base_cell.begin_state(batch_size=N)
    with pytest.raises(ValueError, match="unfuse"):
        rnn.ZoneoutCell(rnn.FusedRNNCell(H))
    with pytest.raises(ValueError, match="BidirectionalCell doesn't support zoneout"):
        rnn.ZoneoutCell(bi)
    with pytest.raises(ValueError, match="Bidirectional SequentialRNNCell"):
        rnn.ZoneoutCell(seq)
    with pytest.raises(ValueError, match="output width"):
        rnn.ResidualCell(rnn.GRUCell(H)).unroll(T, x)
    with pytest.raises(ValueError, match="dropout"):
        rnn.FusedRNNCell(H, num_layers=2, dropout=1.0)
    with pytest.raises(ValueError, match="activation"):
        rnn.RNNCell(H, activation="softmax")
    with pytest.raises(KeyError, match="no such parameter"):
        cell.params["lstm_nope"]
    with pytest.raises(ValueError, match="not created yet"):
        rnn.GRUCell(H).params["gru_i2h_weight"]
    with pytest.raises(ValueError, match="not both"):
        s = rnn.SequentialRNNCell(params=rnn.RNNParams("x_"))
        c = rnn.LSTMCell(H)
        c.params  # noqa: B018 - reading params marks them shared, as in MXNet
        s.add(c)


def test_errors_name_the_user_argument():
    with pytest.raises(TypeError, match="activation: expected a string"):
        rnn.RNNCell(4, activation=["tanh"])
    cell = rnn.FusedRNNCell(3, num_layers=2, mode="gru", get_next_state=True, prefix="f_")
    x = np.zeros((2, 5, 4), np.float32)
    out, states = cell.unroll(5, x, layout="NTC", merge_outputs=True, training=True)
    with pytest.raises(ValueError, match=r"d_states\[0\]: expected shape \(2, 2, 3\)"):
        cell.backward(np.ones_like(out), [np.ones((1, 2, 3), np.float32)])
