"""Float64 NumPy reference implementation (test oracle) of fused multi-layer RNNs.

Modes: "lstm", "gru", "rnn_tanh", "rnn_relu"; the math is PyTorch's/cuDNN's
(GRU in the reset-after form).  Everything here is deliberately simple: plain
Python loops over layers, directions and time steps, vectorised only over the
batch and hidden dimensions inside one step.  The backward pass is hand-written
back-propagation through time (no autograd).

Flat weight layout (MXNet FusedRNNCell order): first all weight matrices, for
layer l, for direction d (forward, then reverse if bidirectional): W_ih
(G*H, C_in_l) row-major, then W_hh (G*H, H) row-major; then all biases in the
same order: b_ih (G*H,), b_hh (G*H,).  C_in_0 = C, C_in_l = D*H for l > 0.
Rows are gate-major: LSTM i,f,g,o; GRU r,z,n.

Tensors are time-major: x (T, N, C), y (T, N, D*H), h0/hN/c0/cN (L*D, N, H)
with index l*D + d.
"""

import numpy as np

MODES = ("lstm", "gru", "rnn_tanh", "rnn_relu")
NUM_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _check_mode(mode):
    if mode not in NUM_GATES:
        raise ValueError("unknown mode %r" % (mode,))


# --------------------------------------------------------------------------
# Flat weight layout
# --------------------------------------------------------------------------

def layout(mode, C, H, L=1, bidirectional=False, P=0):
    """List of (torch_name, shape) in flat-vector order. P: LSTM projection size (0: none)."""
    _check_mode(mode)
    G = NUM_GATES[mode]
    D = 2 if bidirectional else 1
    S = P or H
    weights, biases = [], []
    for l in range(L):
        c_in = C if l == 0 else D * S
        for d in range(D):
            sfx = "l%d%s" % (l, "_reverse" if d == 1 else "")
            weights.append(("weight_ih_" + sfx, (G * H, c_in)))
            weights.append(("weight_hh_" + sfx, (G * H, S)))
            if P:
                weights.append(("weight_hr_" + sfx, (P, H)))
            biases.append(("bias_ih_" + sfx, (G * H,)))
            biases.append(("bias_hh_" + sfx, (G * H,)))
    return weights + biases


def param_size(mode, C, H, L=1, bidirectional=False, P=0):
    return int(sum(int(np.prod(shape)) for _, shape in layout(mode, C, H, L, bidirectional, P)))


def unpack(flat, mode, C, H, L=1, bidirectional=False, P=0):
    """Flat vector -> dict of torch-named arrays (copies, same dtype as flat)."""
    flat = np.asarray(flat)
    if flat.ndim != 1 or flat.size != param_size(mode, C, H, L, bidirectional, P):
        raise ValueError("flat weight vector has wrong shape %r" % (flat.shape,))
    out, off = {}, 0
    for name, shape in layout(mode, C, H, L, bidirectional, P):
        n = int(np.prod(shape))
        out[name] = flat[off:off + n].reshape(shape).copy()
        off += n
    return out


def pack(params, mode, C, H, L=1, bidirectional=False, P=0):
    """Dict of torch-named arrays -> flat vector (dtype of the inputs)."""
    lay = layout(mode, C, H, L, bidirectional, P)
    if set(params) != {name for name, _ in lay}:
        raise ValueError("parameter names do not match the layout")
    parts = []
    for name, shape in lay:
        a = np.asarray(params[name])
        if a.shape != tuple(shape):
            raise ValueError("%s has shape %r, expected %r" % (name, a.shape, shape))
        parts.append(a.reshape(-1))
    return np.concatenate(parts)


def _names(l, d):
    sfx = "l%d%s" % (l, "_reverse" if d == 1 else "")
    return ("weight_ih_" + sfx, "weight_hh_" + sfx, "bias_ih_" + sfx, "bias_hh_" + sfx)


# --------------------------------------------------------------------------
# One time step of one cell: forward returns (h', c', step_cache); backward
# takes the gradients w.r.t. h' and c' and returns those w.r.t. x, h, c,
# accumulating weight gradients into `grads` (dict with keys wih, whh, bih, bhh).
# --------------------------------------------------------------------------

def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


# Activations as (function, derivative with respect to the pre-activation a).
ACTIVATIONS = {
    "tanh": (np.tanh, lambda a: 1.0 - np.tanh(a) ** 2),
    "sigmoid": (_sigmoid, lambda a: _sigmoid(a) * (1.0 - _sigmoid(a))),
    "hard_sigmoid": (lambda a: np.clip(a / 6.0 + 0.5, 0.0, 1.0),
                     lambda a: np.where((a > -3.0) & (a < 3.0), 1.0 / 6.0, 0.0).astype(a.dtype)),
    "relu": (lambda a: np.maximum(a, 0.0), lambda a: (a > 0.0).astype(a.dtype)),
    "linear": (lambda a: a, lambda a: np.ones_like(a)),
    "softrelu": (lambda a: np.logaddexp(0.0, a).astype(a.dtype), lambda a: _sigmoid(a)),
    "softsign": (lambda a: a / (1.0 + np.abs(a)), lambda a: 1.0 / (1.0 + np.abs(a)) ** 2),
}


def default_activation(mode):
    return "relu" if mode == "rnn_relu" else "tanh"


def _per_gate(v, m, G):
    """[v * mask of gate k for k < G]: m None (no dropout), one mask (N, width) for every gate, or
    per-gate masks (G, N, width) (Keras implementation=1)."""
    if m is None:
        return [v] * G
    m = np.asarray(m)
    if m.ndim == 2:
        return [v * m] * G  # one array for all gates: products stay one GEMM
    return [v * m[k] for k in range(G)]


def _product(vs, w, G):
    """[vs[k] @ (gate k's rows of w)^T for k] side by side: one product when all vs are one."""
    if all(v is vs[0] for v in vs):
        return vs[0] @ w.T
    return np.concatenate([vs[k] @ b.T for k, b in enumerate(_blocks(w, G))], axis=1)


def _back_product(d, w, m, G):
    """The gradient through ``_product``: sum over gates of (d_k @ block_k) * mask_k."""
    if m is None or np.asarray(m).ndim == 2:
        return (d @ w) * (1.0 if m is None else m)
    H = w.shape[0] // G
    return sum((d[:, k * H:(k + 1) * H] @ b) * m[k] for k, b in enumerate(_blocks(w, G)))


def _grad_product(grad, d, vs, G):
    """grad (G*H, width) += d^T vs, gate block by gate block when the vs differ."""
    if all(v is vs[0] for v in vs):
        grad += d.T @ vs[0]
        return
    H = grad.shape[0] // G
    for k in range(G):
        grad[k * H:(k + 1) * H] += d[:, k * H:(k + 1) * H].T @ vs[k]


def _mask_of(m, k):
    if m is None:
        return 1.0
    m = np.asarray(m)
    return m[k] if m.ndim == 3 else m


def _blocks(w, G):
    H = w.shape[0] // G
    return [w[k * H:(k + 1) * H] for k in range(G)]


def _clip_state(c, clip):
    """LSTM state clipping (lo, hi, nan_to_lo) or None: the clipped state and where the gradient
    passes (the unclipped value inside [lo, hi]; a NaN only while it propagates)."""
    if clip is None:
        return c, None
    lo, hi, nan_to_lo = clip
    with np.errstate(invalid="ignore"):
        out = np.where(c < lo, lo, np.where(c > hi, hi, c))
        passes = (c >= lo) & (c <= hi) if nan_to_lo else ~((c < lo) | (c > hi))
    if nan_to_lo:
        out = np.where(np.isnan(out), lo, out)
    return out.astype(c.dtype), passes


def _cell_forward(mode, x, h, c, wih, whh, bih, bhh, act, rec, reset_after, mx=None, mh=None,
                  whr=None, clip=None):
    """act, rec: activation names (cell, gates). mx, mh: dropout masks (scaled) on the input and on
    the state as the recurrent product sees it: None, one (N, C) / (N, H) mask for all gates, or
    one per gate (G, N, C) / (G, N, H) (gate k's input-projection block sees x * mx[k], its
    recurrent block h * mh[k]). whr: the LSTM projection (P, H): h' = (o * act(c')) whr^T.
    clip: LSTM state clipping (lo, hi, nan_to_lo), applied to c' before h' is computed from it."""
    G = NUM_GATES[mode]
    H = whh.shape[0] // G
    f_act, f_rec = ACTIVATIONS[act][0], ACTIVATIONS[rec][0]
    xs = _per_gate(x, mx, G)     # what each gate's W_ih block multiplies
    hds = _per_gate(h, mh, G)    # what each gate's W_hh block multiplies
    wh = _blocks(whh, G)
    gi = _product(xs, wih, G) + bih   # (N, G*H)
    cache = dict(xs=xs, h=h, hds=hds, mx=mx, mh=mh)
    if mode == "lstm":
        a = gi + _product(hds, whh, G) + bhh
        ai, af, ag, ao = (a[:, k * H:(k + 1) * H] for k in range(4))
        i, f, g, o = f_rec(ai), f_rec(af), f_act(ag), f_rec(ao)
        c_new, clip_pass = _clip_state(f * c + i * g, clip)
        h_raw = o * f_act(c_new)
        h_new = h_raw if whr is None else h_raw @ whr.T
        return h_new, c_new, dict(cache, c=c, ai=ai, af=af, ag=ag, ao=ao, i=i, f=f, g=g, o=o,
                                  c_new=c_new, h_raw=h_raw, whr=whr, clip_pass=clip_pass)
    if mode == "gru":
        gh_rz = _product(hds[:2], whh[:2 * H], 2) + bhh[:2 * H]
        ar = gi[:, :H] + gh_rz[:, :H]
        az = gi[:, H:2 * H] + gh_rz[:, H:]
        r, z = f_rec(ar), f_rec(az)
        if reset_after:
            ghn = hds[2] @ wh[2].T + bhh[2 * H:]
            an = gi[:, 2 * H:] + r * ghn
            rh = None
        else:
            rh = r * hds[2]
            ghn = rh @ wh[2].T + bhh[2 * H:]
            an = gi[:, 2 * H:] + ghn
        n = f_act(an)
        h_new = (1.0 - z) * n + z * h
        return h_new, None, dict(cache, ar=ar, az=az, an=an, r=r, z=z, n=n, ghn=ghn, rh=rh)
    a = gi + hds[0] @ whh.T + bhh
    return f_act(a), None, dict(cache, a=a)


def _cell_backward(mode, sc, dh_new, dc_new, wih, whh, grads, act, rec, reset_after):
    """Returns (dx, dh, dc)."""
    f_act, d_act = ACTIVATIONS[act]
    d_rec = ACTIVATIONS[rec][1]
    G = NUM_GATES[mode]
    H = whh.shape[0] // G
    wh = _blocks(whh, G)
    hds = sc["hds"]

    def recurrent(dgh, gates):
        """dh_prev through the recurrent blocks of the first ``gates`` gates (each through its
        mask), and their dW_hh."""
        m = sc["mh"]
        m = m if m is None or np.asarray(m).ndim == 2 else np.asarray(m)[:gates]
        rows = slice(0, gates * H)
        _grad_product(grads["whh"][rows], dgh, hds[:gates], gates)
        return _back_product(dgh, whh[rows], m, gates)

    if mode == "lstm":
        i, f, g, o, c_new = sc["i"], sc["f"], sc["g"], sc["o"], sc["c_new"]
        if sc["whr"] is not None:  # projection: h' = h_raw whr^T
            grads["whr"] += dh_new.T @ sc["h_raw"]
            dh_new = dh_new @ sc["whr"]
        dc = dc_new + dh_new * o * d_act(c_new)
        if sc["clip_pass"] is not None:
            dc = np.where(sc["clip_pass"], dc, 0.0)
        do = dh_new * f_act(c_new)
        di = dc * g
        dg = dc * i
        df = dc * sc["c"]
        dc_prev = dc * f
        da = np.concatenate([di * d_rec(sc["ai"]), df * d_rec(sc["af"]), dg * d_act(sc["ag"]),
                             do * d_rec(sc["ao"])], axis=1)
        dgi = dgh = da
        dh_prev = recurrent(dgh, 4)
    elif mode == "gru":
        r, z, n, h = sc["r"], sc["z"], sc["n"], sc["h"]
        dn = dh_new * (1.0 - z)
        dz = dh_new * (h - n)
        dan = dn * d_act(sc["an"])          # grad of n's pre-activation
        daz = dz * d_rec(sc["az"])
        if reset_after:
            dr = dan * sc["ghn"]
            dar = dr * d_rec(sc["ar"])
            dgh = np.concatenate([dar, daz, dan * r], axis=1)
            dh_prev = recurrent(dgh, 3) + dh_new * z
        else:
            drh = dan @ wh[2]
            dr = drh * hds[2]
            dar = dr * d_rec(sc["ar"])
            dgh = np.concatenate([dar, daz, dan], axis=1)
            dh_prev = (recurrent(dgh[:, :2 * H], 2) + drh * r * _mask_of(sc["mh"], 2)
                       + dh_new * z)
            grads["whh"][2 * H:] += dan.T @ sc["rh"]
        dgi = np.concatenate([dar, daz, dan], axis=1)
        dc_prev = None
    else:
        da = dh_new * d_act(sc["a"])
        dgi = dgh = da
        dh_prev = recurrent(dgh, 1)
        dc_prev = None
    dx = _back_product(dgi, wih, sc["mx"], G)
    _grad_product(grads["wih"], dgi, sc["xs"], G)
    grads["bih"] += dgi.sum(axis=0)
    grads["bhh"] += dgh.sum(axis=0)
    return dx, dh_prev, dc_prev


# --------------------------------------------------------------------------
# Full network
# --------------------------------------------------------------------------

def forward(x, flat, mode, H, L=1, bidirectional=False, h0=None, c0=None, activation=None,
            recurrent_activation="sigmoid", reset_after=True, dtype=np.float64, mask=None,
            zero_masked_output=False, dropout_masks=None, zoneout_masks=None, residual=False,
            proj_size=0, lstm_state_clip=None):
    """x (T, N, C) time-major. Returns (y, hN, cN, cache); cN is None unless lstm.

    activation: cell activation (LSTM g and c, GRU n, RNN h), default tanh (relu for rnn_relu);
    recurrent_activation: gate activation (LSTM i, f, o; GRU r, z); reset_after: GRU form.
    dtype: the arithmetic (float64, the oracle; float32 gives a yardstick for float32 error).
    mask: optional (T, N) bools; a masked step keeps the previous h (and c) and outputs it, or zero
    with zero_masked_output (last layer only: inner layers pass the kept state on).
    dropout_masks: optional {(layer, direction): (mx (N, C_in) or None, mh (N, H) or None)}, the
    scaled variational dropout masks on each layer's input and on the state before W_hh.
    zoneout_masks: optional {(layer, direction): (keep_h, keep_c, keep_o)}, each (T, N, H) bools or
    None: True takes the cell's new value. The state h (c) keeps its previous value where keep_h
    (keep_c) is False; the output y_t = where(keep_o, h_new, y_{t-1}), y_{-1} = 0 (MXNet's
    ZoneoutCell). residual: each layer's output is y plus the layer input (direction d adds input
    columns d*H:(d+1)*H; MXNet's ResidualCell). proj_size: LSTM projection P (h, y, h0 and hN are
    P wide). lstm_state_clip: optional (lo, hi, nan_to_lo): each step's new cell state is clipped
    to [lo, hi] before h is computed from it (NaN becomes lo with nan_to_lo); its gradient passes
    only where the unclipped value was inside (MXNet / cuDNN).
    """
    _check_mode(mode)
    act = default_activation(mode) if activation is None else activation
    rec = recurrent_activation
    x = np.asarray(x, dtype=dtype)
    T, N, C = x.shape
    D = 2 if bidirectional else 1
    is_lstm = mode == "lstm"
    P = proj_size
    S = P or H  # the width of h
    params = {k: v.astype(dtype) for k, v in
              unpack(np.asarray(flat), mode, C, H, L, bidirectional, P).items()}
    h0 = np.zeros((L * D, N, S), dtype) if h0 is None else np.asarray(h0, dtype=dtype)
    if is_lstm:
        c0 = np.zeros((L * D, N, H), dtype) if c0 is None else np.asarray(c0, dtype=dtype)
    assert h0.shape == (L * D, N, S)
    assert not is_lstm or c0.shape == (L * D, N, H)

    hN = np.zeros((L * D, N, S), dtype)
    cN = np.zeros((L * D, N, H), dtype) if is_lstm else None
    layer_in = x
    step_caches = {}            # (l, d) -> list indexed by time step t
    for l in range(L):
        layer_out = np.zeros((T, N, D * S), dtype)
        for d in range(D):
            wih, whh, bih, bhh = (params[k] for k in _names(l, d))
            whr = params["weight_hr" + _names(l, d)[0][len("weight_ih"):]] if P else None
            h = h0[l * D + d]
            c = c0[l * D + d] if is_lstm else None
            caches = [None] * T
            times = range(T) if d == 0 else range(T - 1, -1, -1)
            kh, kc, ko = (zoneout_masks or {}).get((l, d), (None, None, None))
            y_prev = np.zeros((N, H), dtype)
            for t in times:
                mx, mh = (dropout_masks or {}).get((l, d), (None, None))
                h_new, c_new, caches[t] = _cell_forward(mode, layer_in[t], h, c, wih, whh, bih,
                                                        bhh, act, rec, reset_after, mx, mh, whr,
                                                        lstm_state_clip)
                m = np.ones((N, 1), bool) if mask is None else np.asarray(mask[t], bool)[:, None]
                y = h_new if ko is None else np.where(ko[t], h_new, y_prev)
                y_prev = y
                h = np.where(m if kh is None else kh[t], h_new, h)
                c = np.where(m if kc is None else kc[t], c_new, c) if is_lstm else None
                if mask is not None:
                    y = h
                zero = zero_masked_output and l == L - 1
                out = np.where(m, y, 0.0) if zero else y
                if residual:
                    out = out + layer_in[t][:, d * H:(d + 1) * H]
                layer_out[t, :, d * S:(d + 1) * S] = out
            step_caches[(l, d)] = caches
            hN[l * D + d] = h
            if is_lstm:
                cN[l * D + d] = c
        layer_in = layer_out
    y = layer_in
    cache = dict(mode=mode, T=T, N=N, C=C, H=H, L=L, D=D, P=P, dtype=dtype, act=act, mask=mask,
                 zoneout_masks=zoneout_masks, residual=residual,
                 zero_masked_output=zero_masked_output, rec=rec, reset_after=reset_after,
                 bidirectional=bidirectional, params=params, steps=step_caches)
    return y, hN, cN, cache


def backward(cache, dy=None, dhN=None, dcN=None):
    """Returns (dx, dh0, dc0, dflat); dc0 is None unless lstm.  None grads mean zero."""
    mode, T, N, C, H, L, D = (cache[k] for k in ("mode", "T", "N", "C", "H", "L", "D"))
    P = cache["P"]
    S = P or H  # the width of h
    is_lstm = mode == "lstm"
    params = cache["params"]
    dtype = cache["dtype"]
    dy = np.zeros((T, N, D * S), dtype) if dy is None else np.asarray(dy, dtype=dtype)
    dhN = np.zeros((L * D, N, S), dtype) if dhN is None else np.asarray(dhN, dtype=dtype)
    if is_lstm:
        dcN = np.zeros((L * D, N, H), dtype) if dcN is None else np.asarray(dcN, dtype=dtype)
    assert dy.shape == (T, N, D * S) and dhN.shape == (L * D, N, S)

    dparams = {k: np.zeros_like(v) for k, v in params.items()}
    dh0 = np.zeros((L * D, N, S), dtype)
    dc0 = np.zeros((L * D, N, H), dtype) if is_lstm else None
    d_out = dy                        # gradient w.r.t. the current layer's output
    for l in range(L - 1, -1, -1):
        c_in = C if l == 0 else D * S
        d_in = np.zeros((T, N, c_in), dtype)
        for d in range(D):
            nwih, nwhh, nbih, nbhh = _names(l, d)
            wih, whh = params[nwih], params[nwhh]
            grads = dict(wih=dparams[nwih], whh=dparams[nwhh],
                         bih=dparams[nbih], bhh=dparams[nbhh])
            if P:
                grads["whr"] = dparams["weight_hr" + nwih[len("weight_ih"):]]
            caches = cache["steps"][(l, d)]
            dh = dhN[l * D + d]
            dc = dcN[l * D + d] if is_lstm else None
            kh, kc, ko = (cache["zoneout_masks"] or {}).get((l, d), (None, None, None))
            carry = np.zeros((N, H), dtype)  # zoneout: gradient of y_t reaching it from later outputs
            # reverse of this direction's processing order
            times = range(T - 1, -1, -1) if d == 0 else range(T)
            for t in times:
                m = np.ones((N, 1), bool) if cache["mask"] is None else \
                    np.asarray(cache["mask"][t], bool)[:, None]
                dy_t = d_out[t, :, d * S:(d + 1) * S]
                if cache["residual"]:
                    d_in[t][:, d * H:(d + 1) * H] += dy_t
                if kh is not None or kc is not None or ko is not None:
                    # zoneout: split the gradients of y, h, c between the new values and the old
                    g = dy_t + carry
                    dy_new = g if ko is None else np.where(ko[t], g, 0.0)
                    carry = np.zeros_like(g) if ko is None else np.where(ko[t], 0.0, g)
                    kh_t = np.ones((N, H), bool) if kh is None else kh[t]
                    dx_t, dh_cell, dc_cell = _cell_backward(
                        mode, caches[t], np.where(kh_t, dh, 0.0) + dy_new,
                        None if dc is None else (dc if kc is None else np.where(kc[t], dc, 0.0)),
                        wih, whh, grads, cache["act"], cache["rec"], cache["reset_after"])
                    dh = dh_cell + np.where(kh_t, 0.0, dh)
                    if is_lstm:
                        dc = dc_cell + (0.0 if kc is None else np.where(kc[t], 0.0, dc))
                    d_in[t] += dx_t
                    continue
                if cache["zero_masked_output"] and l == L - 1:
                    dy_t = np.where(m, dy_t, 0.0)
                dh_total = dh + dy_t
                # a masked step is the identity on (h, c): its gradients pass through unchanged and
                # it contributes nothing else (the cell's backward is linear in dh_total and dc)
                dx_t, dh_cell, dc_cell = _cell_backward(
                    mode, caches[t], dh_total * m, None if dc is None else dc * m, wih, whh, grads,
                    cache["act"], cache["rec"], cache["reset_after"])
                dh = np.where(m, dh_cell, dh_total)
                dc = np.where(m, dc_cell, dc) if is_lstm else None
                d_in[t] += dx_t
            dh0[l * D + d] = dh
            if is_lstm:
                dc0[l * D + d] = dc
        d_out = d_in
    dflat = pack(dparams, mode, C, H, L, D == 2, P)
    return d_out, dh0, dc0, dflat


def loss(y, hN, cN, dy, dhN, dcN):
    """Scalar whose gradient w.r.t. (y, hN, cN) is (dy, dhN, dcN); None terms are skipped."""
    s = 0.0
    for a, g in ((y, dy), (hN, dhN), (cN, dcN)):
        if a is not None and g is not None:
            s += float(np.sum(np.asarray(a, dtype=np.float64) * np.asarray(g, dtype=np.float64)))
    return s
