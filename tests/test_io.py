"""fusedrnn.io against the originals: pad_sequences against keras.utils.pad_sequences (Keras 3, JAX
backend), encode_sentences and BucketSentenceIter against real MXNet 1.9.1 run in its own venv
(tests/mxnet_env.py; skipped when it cannot be installed).

MXNet's iterator shuffles with the global ``random`` / ``np.random`` state in ``reset()``, so the
exact comparison runs MXNet with both shuffles patched out and fusedrnn with ``shuffle=False``:
batch by batch, (bucket_key, data, label, descs) must be identical. With shuffling on, what does not
depend on the permutation is compared: the multiset of bucket keys per epoch, batch shapes, every
batch row being a row of its bucket, and, for a corpus whose bucket sizes are multiples of the batch
size (so that every sentence is used in every epoch), the multiset of (bucket, data row, label row).
"""

import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from fusedrnn.io import (  # noqa: E402
    BucketSentenceIter,
    DataBatch,
    DataDesc,
    UnknownTokenError,
    encode_sentences,
    pad_sequences,
)
from mxnet_env import run_mxnet  # noqa: E402

# ==================================================================================================
# pad_sequences vs Keras
# ==================================================================================================


@pytest.fixture(scope="module")
def keras_pad():
    import keras

    return keras.utils.pad_sequences


def _outcome(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. NaN cast to int: both warn alike
        try:
            return fn(*args, **kw), None
        except Exception as exc:  # noqa: BLE001 - compared below
            return None, exc


def _same_as_keras(keras_pad, seqs, **kw):
    want, want_exc = _outcome(keras_pad, seqs, **kw)
    got, got_exc = _outcome(pad_sequences, seqs, **kw)
    if want_exc is not None:
        assert got_exc is not None, f"keras raised {want_exc!r}, fusedrnn returned {got!r} for {kw}"
        assert type(got_exc) is type(want_exc), (kw, want_exc, got_exc)
        return "error"
    assert got_exc is None, f"fusedrnn raised {got_exc!r}, keras returned {want!r} for {kw}"
    assert got.dtype == want.dtype and got.shape == want.shape, (kw, got.dtype, want.dtype)
    if want.dtype.kind == "f":
        np.testing.assert_array_equal(got, want)  # NaN == NaN here
    else:
        assert (got == want).all(), (kw, got, want)
    return "ok"


_rng = np.random.default_rng(1234)
PAD_SEQS = {
    "keras_doc": [[1], [2, 3], [4, 5, 6]],
    "with_empty": [[], [1, 2], [], [3, 4, 5, 6, 7]],
    "floats": [[1.5, -2.7], [3.2], [0.1, 0.2, 0.3, 0.4]],
    "ndarrays": [_rng.integers(-50, 50, size=n) for n in (4, 0, 7, 1, 3)],
    "tuples": [(9,), (8, 7), (), (6, 5, 4, 3)],
    "items_2d": [np.arange(6.0).reshape(3, 2), np.arange(2.0).reshape(1, 2), [], [[7, 8]] * 4],
    "items_2d_lists": [[[1, 2], [3, 4]], [[5, 6]], [], [[7, 8], [9, 10], [11, 12]]],
    "all_empty": [[], []],
    "no_sequences": [],
    "one": [[42]],
}


@pytest.mark.parametrize("name", list(PAD_SEQS))
def test_pad_sequences_grid_matches_keras(keras_pad, name):
    seqs = PAD_SEQS[name]
    counts = {"ok": 0, "error": 0}
    for maxlen in (None, 0, 1, 2, 3, 10):
        for padding in ("pre", "post"):
            for truncating in ("pre", "post"):
                for dtype in ("int32", "float32", "float64", "int64"):
                    for value in (0.0, -1, 2.5, np.nan):
                        kw = dict(
                            maxlen=maxlen,
                            dtype=dtype,
                            padding=padding,
                            truncating=truncating,
                            value=value,
                        )
                        counts[_same_as_keras(keras_pad, seqs, **kw)] += 1
    if name != "no_sequences":  # only maxlen=None fails there
        assert counts["ok"] > counts["error"], counts


@pytest.mark.parametrize(
    "seqs,kw",
    [
        ([["a", "b"], ["c"]], dict(dtype=object, value="<pad>")),
        ([["a", "b"], ["c"]], dict(dtype="U5", value="-", padding="post")),
        ([["ab", "b"], [], ["c", "d", "e"]], dict(dtype=object, value=None, maxlen=2)),
        ([[1, 2, 3]], dict(dtype="uint8", value=7)),
        ([[1, 2, 3]], dict(dtype="bool")),
        ([[1, 2, 3]], dict(dtype=None, maxlen=np.int64(2))),
        (np.arange(12).reshape(3, 4), dict(maxlen=3, truncating="post")),
        ([[1, 2], [3]], dict(maxlen=0, truncating="post")),
        ([[], []], dict(maxlen=0, truncating="pre")),
    ],
)
def test_pad_sequences_special_cases_match_keras(keras_pad, seqs, kw):
    assert _same_as_keras(keras_pad, seqs, **kw) == "ok"


@pytest.mark.parametrize(
    "seqs,kw,argname",
    [
        ([[1, 2]], dict(padding="middle"), "padding"),
        ([[1, 2]], dict(padding=None), "padding"),
        ([[1, 2]], dict(truncating="end"), "truncating"),
        (5, {}, "sequences"),
        ((x for x in [[1]]), {}, "sequences"),
        ([1, 2], {}, "sequences[0]"),
        ([[1, 2], [[1, 2]]], {}, "sequences[1]"),
        ([[[1, 2]], [[1, 2, 3]]], {}, "sequences[1]"),
        ([], {}, "sequences"),
        ([[1]], dict(value="x"), "value"),
        ([[1]], dict(value="x", dtype=np.dtype(object)), "value"),  # Keras wants exactly `object`
        ([[1]], dict(maxlen=-1), "maxlen"),
        ([[1]], dict(maxlen=2.0), "maxlen"),
        ([[1]], dict(dtype="not-a-dtype"), "dtype"),
        ([[1, 2]], dict(maxlen=0), "maxlen"),  # s[-0:] keeps everything
        ([[1], [2]], dict(maxlen=2**62), "maxlen"),  # more bytes than an array can have
        ([[1, "a"], [3]], {}, "sequences[0]"),
        ([[3], [object()]], {}, "sequences[1]"),
        ([[3], [{}]], dict(dtype="float32"), "sequences[1]"),
        ([[1]], dict(value=None), "value"),
        ([[1]], dict(value=[1, 2]), "value"),
    ],
)
def test_pad_sequences_errors_match_keras(keras_pad, seqs, kw, argname):
    assert _same_as_keras(keras_pad, seqs, **kw) == "error"
    with pytest.raises((ValueError, TypeError)) as info:
        pad_sequences(seqs, **kw)
    assert argname in str(info.value)


def test_pad_sequences_deviations():
    # refused even with nothing to pad (Keras checks lazily, per non-empty sequence)
    with pytest.raises(ValueError, match="padding"):
        pad_sequences([[], []], padding="middle")
    with pytest.raises(TypeError, match="maxlen"):
        pad_sequences([[1]], maxlen=True)  # Keras reads True as 1


# ==================================================================================================
# encode_sentences and BucketSentenceIter vs MXNet 1.9.1
# ==================================================================================================

# fmt: off
_WORDS = [
    "the", "a", "cat", "dog", "sat", "on", "mat", "and",
    "ran", "far", "away", "from", "home", "today", "again",
]
# fmt: on


def _corpus(seed, n, lo, hi):
    rng = np.random.default_rng(seed)
    return [
        [_WORDS[k] for k in rng.integers(0, len(_WORDS), size=rng.integers(lo, hi + 1))]
        for _ in range(n)
    ]


SMALL = [["the", "cat", "sat"], ["the", "dog"], [], ["a", "cat", "\n", "sat"], ["dog", "dog"]]
RANDOM = _corpus(0, 25, 0, 8)
EOS = [["the", "cat", "<eos>"], ["<eos>"], ["dog", "<eos>", "the"]]
VOCAB = {"\n": -1, "the": 0, "cat": 1, "sat": 2, "dog": 3}

# (name, sentences, vocab as [key, id] pairs or None, kwargs)
ENCODE_CASES = [
    ("default", SMALL, None, {}),
    ("random", RANDOM, None, {}),
    ("invalid_label_0", SMALL, None, dict(invalid_label=0)),
    ("invalid_label_2", RANDOM, None, dict(invalid_label=2)),
    ("start_label_5", SMALL, None, dict(start_label=5)),
    ("start_eq_invalid", SMALL, None, dict(start_label=-1, invalid_label=-1)),
    ("start_3_invalid_3", RANDOM, None, dict(start_label=3, invalid_label=3)),
    ("invalid_key_eos", EOS, None, dict(invalid_key="<eos>")),
    ("pad_key", EOS, None, dict(invalid_key="<pad>", invalid_label=0, start_label=1)),
    ("characters", ["abc", "bca", "", "zz"], None, {}),
    ("int_tokens", [[5, 7], [7, 9, 5], []], None, dict(start_label=1)),
    ("fixed_known", SMALL[:2], list(VOCAB.items()), {}),
    ("fixed_unknown", SMALL, list(VOCAB.items()), {}),
    ("fixed_empty", SMALL, [], {}),
    ("fixed_unknown_token", RANDOM, list(VOCAB.items()), dict(unknown_token="<unk>")),
    (
        "fixed_unk_present",
        SMALL,
        list(VOCAB.items()) + [["<unk>", 9]],
        dict(unknown_token="<unk>", start_label=4),
    ),
    ("fixed_unknown_token_falsy", SMALL, list(VOCAB.items()), dict(unknown_token="")),
    ("new_vocab_unknown_token", SMALL, None, dict(unknown_token="<unk>")),
]


def _int_corpus(seed, n, lengths, vocab=30):
    rng = np.random.default_rng(seed)
    return [
        [int(t) for t in rng.integers(1, vocab, size=int(rng.choice(lengths)))] for _ in range(n)
    ]


ITER_RANDOM = _int_corpus(1, 70, list(range(13)) + [3, 3, 4, 4, 5, 5, 5, 7, 7, 7, 7])
NONEMPTY = [
    s for s in ITER_RANDOM if s
]  # ITER_RANDOM has 2 empty sentences: bucket 0 at batch <= 2
SAME_LEN = _int_corpus(2, 10, [6])
# bucket sizes 8, 4, 12 at lengths 3, 5, 7: every sentence is used in every epoch with batch 4
MULTIPLE = [s for n, k in ((3, 8), (5, 4), (7, 12)) for s in _int_corpus(n, k, [n])]

# (name, sentences, kwargs); sentences are encoded ids
ITER_CASES = [
    ("auto_nt", ITER_RANDOM, dict(batch_size=4)),
    ("auto_tn", ITER_RANDOM, dict(batch_size=4, layout="TN")),
    ("auto_b3_int32_inv0", ITER_RANDOM, dict(batch_size=3, dtype="int32", invalid_label=0)),
    ("auto_empty_list", ITER_RANDOM, dict(batch_size=5, buckets=[])),
    ("explicit_unsorted_f64", ITER_RANDOM, dict(batch_size=4, buckets=[10, 3, 6], dtype="float64")),
    ("explicit_dupes_empty_top", ITER_RANDOM, dict(batch_size=4, buckets=[3, 3, 6, 40, 100])),
    ("few_per_bucket", ITER_RANDOM, dict(batch_size=7, buckets=[2, 5, 8, 12])),
    (
        "names_tn",
        NONEMPTY,
        dict(
            batch_size=2,
            layout="TN",
            data_name="x",
            label_name="y",
            invalid_label=-5,
            dtype="float64",
        ),
    ),
    ("batch_1", NONEMPTY[:20], dict(batch_size=1)),
    ("batch_1_tn", ITER_RANDOM[:20], dict(batch_size=1, layout="TN", buckets=[4, 8])),
    ("empty_sentences_explicit", ITER_RANDOM, dict(batch_size=2, buckets=[1, 5, 9])),
    ("same_length", SAME_LEN, dict(batch_size=3)),
    ("same_length_big_bucket", SAME_LEN, dict(batch_size=5, buckets=[9])),
    ("multiple", MULTIPLE, dict(batch_size=4)),
    ("one_batch", [[1, 2], [3]], dict(batch_size=2, buckets=[2])),
    # MXNet fails on these (fusedrnn: ValueError)
    ("err_no_bucket", [[1, 2], [3, 4, 5]], dict(batch_size=2)),
    ("err_all_discarded", [[1, 2, 3], [3, 4, 5]], dict(batch_size=1, buckets=[2])),
    ("err_empty_bucket", [[], [], [1]], dict(batch_size=2)),
    ("err_empty_bucket_random", ITER_RANDOM, dict(batch_size=2)),
    ("err_no_sentences", [], dict(batch_size=1)),
    ("err_layout", [[1, 2], [3, 4]], dict(batch_size=1, layout="CT")),
]
SHUFFLED_CASES = ["auto_nt", "auto_tn", "explicit_dupes_empty_top", "multiple"]

MXNET_SCRIPT = r"""
import contextlib, io, random, types
import numpy as np
import mxnet as mx
import mxnet.rnn.io as mio

def error(exc):
    return {"error": type(exc).__name__, "message": str(exc)}

def encode(sentences, vocab, kwargs):
    if vocab is not None:
        vocab = {k: v for k, v in vocab}
    try:
        res, voc = mx.rnn.encode_sentences(sentences, vocab=vocab, **kwargs)
    except Exception as exc:
        return error(exc)
    return {"encoded": res, "vocab": [[k, v] for k, v in voc.items()]}

def desc(d):
    return [d.name, list(d.shape), d.layout]

def run_iter(sentences, kwargs, epochs):
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            it = mx.rnn.BucketSentenceIter(sentences, **kwargs)
    except Exception as exc:
        return dict(error(exc), stdout=buf.getvalue())
    out = {"stdout": buf.getvalue(), "buckets": [int(b) for b in it.buckets],
           "default_bucket_key": int(it.default_bucket_key),
           "provide_data": [desc(d) for d in it.provide_data],
           "provide_label": [desc(d) for d in it.provide_label],
           "rows": [b for b in it.data], "epochs": []}
    for _ in range(epochs):
        batches = [{"bucket_key": int(b.bucket_key), "data": b.data[0], "label": b.label[0],
                    "pad": b.pad, "provide_data": [desc(d) for d in b.provide_data],
                    "provide_label": [desc(d) for d in b.provide_label]} for b in it]
        try:
            it.next()
            ended = False
        except StopIteration:
            ended = True
        out["epochs"].append({"batches": batches, "stays_ended": ended})
        it.reset()
    return out

# run_mxnet's transport: arrays keep dtype and shape, NDArrays come back as arrays
outputs["echo"] = {"arrays": echo, "nd": mx.nd.array(echo[0]), "scalar": np.float32(1.5)}

outputs["encode"] = {name: encode(s, v, kw) for name, s, v, kw in encode_cases}

# exact comparison: both shuffles of reset() patched out
real_random, real_shuffle = mio.random, np.random.shuffle
mio.random = types.SimpleNamespace(shuffle=lambda x: None)
np.random.shuffle = lambda x: None
outputs["iter"] = {name: run_iter(s, kw, 2) for name, s, kw in iter_cases}
mio.random, np.random.shuffle = real_random, real_shuffle

random.seed(0)
np.random.seed(0)
outputs["shuffled"] = {name: run_iter(s, kw, 3) for name, s, kw in iter_cases if name in shuffled}
"""


ECHO = [np.arange(6, dtype=np.int16).reshape(2, 3), {"x": np.array([1.5, np.nan])}, "text", None]


@pytest.fixture(scope="module")
def mx_results():
    """Every MXNet result of this module, from one subprocess (importing mxnet takes ~1.5 s)."""
    return run_mxnet(
        MXNET_SCRIPT,
        encode_cases=[[n, s, v, kw] for n, s, v, kw in ENCODE_CASES],
        iter_cases=[[n, s, kw] for n, s, kw in ITER_CASES],
        shuffled=SHUFFLED_CASES,
        echo=ECHO,
    )


# -------------------------------------------------------------------------------- encode_sentences


@pytest.mark.parametrize("case", ENCODE_CASES, ids=[c[0] for c in ENCODE_CASES])
def test_encode_sentences_matches_mxnet(mx_results, case):
    name, sentences, vocab_pairs, kwargs = case
    want = mx_results["encode"][name]
    vocab = None if vocab_pairs is None else {k: v for k, v in vocab_pairs}
    if "error" in want:
        assert want["error"] == "AssertionError", want
        with pytest.raises(UnknownTokenError) as info:
            encode_sentences(sentences, vocab=vocab, **kwargs)
        assert isinstance(info.value, AssertionError) and isinstance(info.value, ValueError)
        assert "sentences[" in str(info.value)
        return
    encoded, got_vocab = encode_sentences(sentences, vocab=vocab, **kwargs)
    assert encoded == want["encoded"]
    assert [[k, v] for k, v in got_vocab.items()] == want["vocab"]  # insertion order too
    if vocab is not None:
        assert got_vocab is vocab  # updated in place and returned, as in MXNet


def test_encode_sentences_iterables():
    # generators of generators: only iteration is needed
    encoded, vocab = encode_sentences(iter(s) for s in SMALL)
    assert encoded == encode_sentences(SMALL)[0]
    assert vocab == encode_sentences(SMALL)[1]


@pytest.mark.parametrize(
    "kwargs,exc,argname",
    [
        (dict(sentences=5), TypeError, "sentences"),
        (dict(sentences=[["a"], 5]), TypeError, "sentences[1]"),
        (dict(sentences=SMALL, vocab=["the", "cat"]), TypeError, "vocab"),
        (dict(sentences=SMALL, invalid_label="x"), TypeError, "invalid_label"),
        (dict(sentences=SMALL, invalid_label=True), TypeError, "invalid_label"),
        (dict(sentences=SMALL, start_label=1.5), TypeError, "start_label"),
        (dict(sentences=[["the", "zebra"]], vocab=dict(VOCAB)), ValueError, "sentences[0][1]"),
    ],
)
def test_encode_sentences_errors(kwargs, exc, argname):
    with pytest.raises(exc) as info:
        encode_sentences(**kwargs)
    assert argname in str(info.value)


# ------------------------------------------------------------------------------ BucketSentenceIter


def _desc(d):
    return [d.name, list(d.shape), d.layout]


def _make(sentences, kwargs, **extra):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        it = BucketSentenceIter(sentences, **kwargs, **extra)
    return it, [str(w.message) for w in caught]


def _epoch(it):
    return list(it)


def _mx_discarded(stdout):
    line = [ln for ln in stdout.splitlines() if "discarded" in ln]
    assert len(line) == 1, stdout
    return int(line[0].split("discarded ")[1].split()[0])


@pytest.mark.parametrize("case", ITER_CASES, ids=[c[0] for c in ITER_CASES])
def test_bucket_iter_matches_mxnet_unshuffled(mx_results, case):
    name, sentences, kwargs = case
    want = mx_results["iter"][name]
    if "error" in want:
        with pytest.raises(ValueError) as info:
            _make(sentences, kwargs, shuffle=False)
        print(f"MXNet: {want['error']}: {want['message']}; fusedrnn: {info.value}")
        assert any(a in str(info.value) for a in ("sentences", "layout"))
        return
    it, warned = _make(sentences, kwargs, shuffle=False)
    ndiscard = _mx_discarded(want["stdout"])
    assert it.ndiscard == ndiscard
    assert len(warned) == (1 if ndiscard else 0) and all(
        f"discarded {ndiscard}" in w for w in warned
    )
    assert it.buckets == want["buckets"]
    assert it.default_bucket_key == want["default_bucket_key"]
    assert [_desc(d) for d in it.provide_data] == want["provide_data"]
    assert [_desc(d) for d in it.provide_label] == want["provide_label"]
    dtype = np.dtype(kwargs.get("dtype", "float32"))
    assert len(it.data) == len(want["rows"])
    for mine, theirs in zip(it.data, want["rows"]):
        assert mine.dtype == theirs.dtype == dtype
        np.testing.assert_array_equal(mine, theirs)
    for epoch in want["epochs"]:
        got = _epoch(it)
        assert len(got) == len(epoch["batches"])
        for g, w in zip(got, epoch["batches"]):
            assert isinstance(g, DataBatch)
            assert g.bucket_key == w["bucket_key"]
            assert g.pad == w["pad"] == 0 and g.index is None
            for mine, theirs in ((g.data[0], w["data"]), (g.label[0], w["label"])):
                assert mine.dtype == theirs.dtype == dtype and mine.shape == theirs.shape
                np.testing.assert_array_equal(mine, theirs)
            assert [_desc(d) for d in g.provide_data] == w["provide_data"]
            assert [_desc(d) for d in g.provide_label] == w["provide_label"]
            assert g.provide_data[0].dtype is dtype.type
        assert epoch["stays_ended"]
        with pytest.raises(StopIteration):
            it.next()
        with pytest.raises(StopIteration):
            next(it)
        it.reset()


def _row_set(arrays):
    return {tuple(r) for a in arrays for r in np.asarray(a).reshape(-1, a.shape[-1])}


@pytest.mark.parametrize("name", SHUFFLED_CASES)
def test_bucket_iter_shuffled_invariants_match_mxnet(mx_results, name):
    sentences, kwargs = {n: (s, kw) for n, s, kw in ITER_CASES}[name]
    want = mx_results["shuffled"][name]
    plain = mx_results["iter"][name]
    it, _ = _make(sentences, kwargs, seed=7)
    tn = kwargs.get("layout") == "TN"
    bucket_rows = dict(zip(plain["buckets"], (_row_set([r]) for r in plain["rows"])))
    orders = []
    for epoch in want["epochs"]:
        got = _epoch(it)
        mx_keys = sorted(b["bucket_key"] for b in epoch["batches"])
        assert sorted(g.bucket_key for g in got) == mx_keys
        assert sorted(b.data[0].shape for b in got) == sorted(
            b["data"].shape for b in epoch["batches"]
        )
        for g in got:
            data = g.data[0].T if tn else g.data[0]
            label = g.label[0].T if tn else g.label[0]
            assert _row_set([data]) <= bucket_rows[g.bucket_key]
            assert len(_row_set([data])) == len(data) or len(set(map(tuple, sentences))) < len(
                sentences
            )
            np.testing.assert_array_equal(label[:, :-1], data[:, 1:])
            assert (label[:, -1] == it.invalid_label).all()
        if name == "multiple":  # every sentence every epoch: the multisets must agree exactly

            def rows(batches, key, data, label):
                out = []
                for b in batches:
                    d, lab = (data(b).T, label(b).T) if tn else (data(b), label(b))
                    out += [(key(b), tuple(x), tuple(y)) for x, y in zip(d, lab)]
                return sorted(out)

            mine = rows(got, lambda b: b.bucket_key, lambda b: b.data[0], lambda b: b.label[0])
            theirs = rows(
                epoch["batches"],
                lambda b: b["bucket_key"],
                lambda b: b["data"],
                lambda b: b["label"],
            )
            assert mine == theirs
        orders.append([(g.bucket_key, g.data[0].tobytes()) for g in got])
        it.reset()
    assert orders[0] != orders[1] or orders[1] != orders[2]  # it does shuffle


def test_bucket_iter_seed_reproducible():
    a = BucketSentenceIter(ITER_RANDOM, 3, seed=11)
    b = BucketSentenceIter(ITER_RANDOM, 3, seed=np.random.default_rng(11))
    c = BucketSentenceIter(ITER_RANDOM, 3, seed=12)
    for _ in range(2):
        ea, eb, ec = _epoch(a), _epoch(b), _epoch(c)
        assert [x.bucket_key for x in ea] == [x.bucket_key for x in eb]
        for x, y in zip(ea, eb):
            np.testing.assert_array_equal(x.data[0], y.data[0])
        assert any(
            x.bucket_key != y.bucket_key or not np.array_equal(x.data[0], y.data[0])
            for x, y in zip(ea, ec)
        )
        for it in (a, b, c):
            it.reset()


def test_bucket_iter_reset_shuffles_within_buckets():
    plain = BucketSentenceIter(NONEMPTY, 4, shuffle=False)
    it = BucketSentenceIter(NONEMPTY, 4, seed=3)
    for _ in range(2):
        assert it.buckets == plain.buckets
        for mine, ref in zip(it.data, plain.data):  # a permutation of the rows...
            np.testing.assert_array_equal(np.unique(mine, axis=0), np.unique(ref, axis=0))
        # ... and not the identity (the largest bucket has 20+ rows)
        assert any(not np.array_equal(mine, ref) for mine, ref in zip(it.data, plain.data))
        it.reset()


def test_bucket_iter_layouts_transpose_and_copy():
    nt = BucketSentenceIter(ITER_RANDOM, 4, shuffle=False)
    tn = BucketSentenceIter(ITER_RANDOM, 4, shuffle=False, layout="TN")
    for x, y in zip(nt, tn):
        np.testing.assert_array_equal(x.data[0], y.data[0].T)
        np.testing.assert_array_equal(x.label[0], y.label[0].T)
        assert y.data[0].flags.c_contiguous
        x.data[0][...] = -99  # batches are copies: the next epoch is unharmed
    nt.reset()
    assert all((b.data[0] != -99).all() for b in nt)


def test_bucket_iter_padding_and_labels():
    with pytest.warns(UserWarning, match="discarded 1 sentences"):
        it = BucketSentenceIter(
            [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]],
            2,
            buckets=[4],
            invalid_label=-7,
            dtype="int32",
            shuffle=False,
        )
    assert it.ndiscard == 1
    (batch,) = list(it)
    np.testing.assert_array_equal(batch.data[0], [[1, 2, 3, -7], [4, 5, -7, -7]])
    np.testing.assert_array_equal(batch.label[0], [[2, 3, -7, -7], [5, -7, -7, -7]])
    assert batch.provide_data == [("data", (2, 4))] and batch.provide_label == [
        ("softmax_label", (2, 4))
    ]
    assert it.provide_data[0] == DataDesc("data", (2, 4)) and it.provide_data[0].layout == "NT"


def test_bucket_iter_warns_on_discard():
    with pytest.warns(UserWarning, match="discarded 2 sentences"):
        BucketSentenceIter([[1], [2], [1, 2, 3], [1, 2, 3, 4]], 1, buckets=[2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BucketSentenceIter([[1], [2]], 1)  # nothing discarded, nothing said


def test_bucket_iter_inputs():
    # arrays, tuples and generators of sentences; the caller's bucket list is left alone
    buckets = [5, 2]
    a = BucketSentenceIter(np.arange(12).reshape(6, 2), 2, buckets=buckets, shuffle=False)
    b = BucketSentenceIter(
        (tuple(r) for r in np.arange(12).reshape(6, 2)), 2, buckets=buckets, shuffle=False
    )
    assert buckets == [5, 2] and a.buckets == b.buckets == [2]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.data[0], y.data[0])


@pytest.mark.parametrize(
    "args,kwargs,exc,argname",
    [
        ((ITER_RANDOM, 0), {}, ValueError, "batch_size"),
        ((ITER_RANDOM, 2.5), {}, TypeError, "batch_size"),
        ((ITER_RANDOM, True), {}, TypeError, "batch_size"),
        ((ITER_RANDOM, 2), dict(buckets=[0, 3]), ValueError, "buckets"),
        ((ITER_RANDOM, 2), dict(buckets=[-4, 3]), ValueError, "buckets"),
        ((ITER_RANDOM, 2), dict(buckets=[2.5]), TypeError, "buckets"),
        ((ITER_RANDOM, 2), dict(buckets=5), TypeError, "buckets"),
        ((ITER_RANDOM, 2), dict(layout="NTC"), ValueError, "layout"),
        ((ITER_RANDOM, 2), dict(layout=0), TypeError, "layout"),
        ((ITER_RANDOM, 2), dict(dtype="U3"), TypeError, "dtype"),
        ((ITER_RANDOM, 2), dict(dtype="not-a-dtype"), TypeError, "dtype"),
        ((ITER_RANDOM, 2), dict(invalid_label=1.5), TypeError, "invalid_label"),
        ((ITER_RANDOM, 2), dict(invalid_label=-1, dtype="uint8"), ValueError, "invalid_label"),
        ((ITER_RANDOM, 2), dict(data_name=3), TypeError, "data_name"),
        ((ITER_RANDOM, 2), dict(label_name=None), TypeError, "label_name"),
        ((ITER_RANDOM, 2), dict(shuffle=1), TypeError, "shuffle"),
        ((ITER_RANDOM, 2), dict(seed="x"), TypeError, "seed"),
        ((ITER_RANDOM, 2), dict(seed=-1), ValueError, "seed"),
        ((5, 2), {}, TypeError, "sentences"),
        (([[1, 2], ["a", "b"]], 2), {}, TypeError, "sentences[1]"),
        (([[1, 2], "ab"], 2), {}, TypeError, "sentences[1]"),
        (([[1, 2], [[1, 2]]], 2), {}, ValueError, "sentences[1]"),
        (([[1, 2], 7], 2), {}, ValueError, "sentences[1]"),
    ],
)
def test_bucket_iter_errors(args, kwargs, exc, argname):
    with pytest.raises(exc) as info:
        BucketSentenceIter(*args, **kwargs)
    assert argname in str(info.value)


# ----------------------------------------------------------------------------- the MXNet harness


def test_run_mxnet_transport(mx_results):
    echo = mx_results["echo"]
    arr, nested, text, none = echo["arrays"]
    assert arr.dtype == np.int16 and arr.shape == (2, 3)
    np.testing.assert_array_equal(arr, ECHO[0])
    np.testing.assert_array_equal(nested["x"], ECHO[1]["x"])
    assert (text, none) == ("text", None)
    assert echo["nd"].dtype == np.float32  # mx.nd.array's default dtype
    np.testing.assert_array_equal(echo["nd"], ECHO[0])
    assert echo["scalar"] == 1.5


def test_run_mxnet_script_error_fails_loudly():
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        run_mxnet("import mxnet\nx = 1 / zero", zero=0)
