"""Text-sequence input helpers in pure NumPy: MXNet 1.9.1's ``mx.rnn.encode_sentences`` and
``mx.rnn.BucketSentenceIter``, and Keras 3's ``keras.utils.pad_sequences``.

Each function keeps the semantics of its original, quirks included (the docstrings list them), so
that code written against MXNet or Keras gives the same numbers here; they differ only where the
original would accept a nonsensical argument (those are refused with a ValueError or TypeError
naming the argument). Shape letters: T time, N batch.
"""

from __future__ import annotations

import operator
import warnings
from collections import namedtuple
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import _checks as chk

__all__ = [
    "BucketSentenceIter",
    "DataBatch",
    "DataDesc",
    "UnknownTokenError",
    "encode_sentences",
    "pad_sequences",
]


def _integer(name: str, value) -> int:
    """A Python int from any integer (bools and floats are refused)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name}: expected an integer, got {type(value).__name__} {value!r}"
        ) from None


def _string(name: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a string, got {type(value).__name__} {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# encode_sentences
# --------------------------------------------------------------------------------------------------


class UnknownTokenError(ValueError, AssertionError):
    """A token missing from a fixed vocabulary (MXNet raises AssertionError there: this is both)."""


def encode_sentences(
    sentences,
    vocab=None,
    invalid_label=-1,
    invalid_key="\n",
    start_label=0,
    unknown_token=None,
):
    """Encode tokenized sentences as integer ids, building or extending a vocabulary, exactly as
    MXNet 1.9.1's ``mx.rnn.encode_sentences``.

    Parameters
    ----------
    sentences : iterable of iterables of hashable tokens
        Each sentence is iterated token by token (so a plain string is encoded character by
        character, as in MXNet).
    vocab : None or dict token -> int
        None builds a new vocabulary ``{invalid_key: invalid_label}`` and gives every new token the
        next id. A dict is a *fixed* vocabulary: a token missing from it raises
        :class:`UnknownTokenError` unless ``unknown_token`` is given. The dict is updated in place
        and returned, as in MXNet.
    invalid_label : int
        The id of ``invalid_key`` in a new vocabulary; new ids skip it.
    invalid_key : hashable
        The token of ``invalid_label`` (end of sentence by default).
    start_label : int
        The first id handed out.
    unknown_token : hashable or None
        Used when a token is missing from the vocabulary (only if truthy, as in MXNet).

    Returns
    -------
    (encoded, vocab) : list of lists of int, dict

    Notes
    -----
    MXNet's rules, kept here: a counter starts at ``start_label`` and, each time a token is missing
    from the vocabulary, is stepped over ``invalid_label`` if equal to it, assigned, then
    incremented. With ``unknown_token`` the *unknown token's* entry is (re)assigned that counter
    value at every missing token, so the id of ``unknown_token`` changes with each unknown word,
    overrides any id it had in a given vocabulary, and can collide with ids already in it (the
    counter restarts at ``start_label`` on every call). With ``vocab=None`` and ``unknown_token``
    given, every word is "missing": each occurrence gets a fresh id and the words themselves never
    enter the vocabulary.
    """
    invalid_label = _integer("invalid_label", invalid_label)
    start_label = _integer("start_label", start_label)
    if vocab is None:
        vocab = {invalid_key: invalid_label}
        fixed = False
    elif isinstance(vocab, Mapping):
        fixed = True
    else:
        raise TypeError(f"vocab: expected None or a dict token -> id, got {type(vocab).__name__}")
    try:
        sentences = iter(sentences)
    except TypeError:
        raise TypeError(
            f"sentences: expected an iterable of token sequences, got {type(sentences).__name__}"
        ) from None

    idx = start_label
    encoded = []
    for i, sentence in enumerate(sentences):
        try:
            tokens = iter(sentence)
        except TypeError:
            raise TypeError(
                f"sentences[{i}]: expected a sequence of tokens, got {type(sentence).__name__}"
            ) from None
        coded = []
        for j, word in enumerate(tokens):
            if word not in vocab:
                if fixed and not unknown_token:
                    raise UnknownTokenError(
                        f"sentences[{i}][{j}]: unknown token {word!r} is not in the fixed vocab "
                        f"(pass unknown_token= to map unknown tokens, or vocab=None to build one)"
                    )
                if idx == invalid_label:
                    idx += 1
                if unknown_token:
                    word = unknown_token
                vocab[word] = idx
                idx += 1
            coded.append(vocab[word])
        encoded.append(coded)
    return encoded, vocab


# --------------------------------------------------------------------------------------------------
# BucketSentenceIter
# --------------------------------------------------------------------------------------------------


class DataDesc(namedtuple("DataDesc", ["name", "shape"])):
    """MXNet's ``mx.io.DataDesc``: a ``(name, shape)`` tuple with ``dtype`` and ``layout``
    attributes (equality and unpacking see only name and shape, as in MXNet)."""

    def __new__(cls, name, shape, dtype=np.float32, layout="NCHW"):
        desc = super().__new__(cls, name, tuple(shape))
        desc.dtype = dtype
        desc.layout = layout
        return desc

    def __repr__(self):
        return f"DataDesc[{self.name},{self.shape},{self.dtype},{self.layout}]"


@dataclass
class DataBatch:
    """MXNet's ``mx.io.DataBatch`` with NumPy arrays: ``data`` and ``label`` are lists of arrays."""

    data: list
    label: list | None = None
    pad: int | None = None
    index: np.ndarray | None = None
    bucket_key: int | None = None
    provide_data: list | None = None
    provide_label: list | None = None


_NUMERIC_KINDS = "biuf"


class BucketSentenceIter:
    """Bucketing iterator for language models, with the semantics of MXNet 1.9.1's
    ``mx.rnn.BucketSentenceIter``; batches hold NumPy arrays.

    Each sentence (a sequence of token ids) goes to the smallest bucket at least as long as it and
    is padded at the end with ``invalid_label``; the label is the data shifted left by one step,
    ending with ``invalid_label``. Every batch comes from a single bucket, shape (N, T) for layout
    ``'NT'`` or (T, N) for ``'TN'``, with T the bucket length and N ``batch_size``.

    Parameters
    ----------
    sentences : iterable of sequences of numbers
        Encoded sentences (see :func:`encode_sentences`).
    batch_size : int
    buckets : list of int or None
        Bucket lengths. None (or an empty list) makes one bucket for every sentence length that
        occurs at least ``batch_size`` times.
    invalid_label : int
        Padding value, and the label of the last step.
    data_name, label_name : str
        Names in ``provide_data`` / ``provide_label``.
    dtype : numeric dtype
        Of data and label.
    layout : 'NT' or 'TN'
    shuffle : bool
        (Not in MXNet, which always shuffles.) False keeps the batches in bucket order and the
        sentences in input order, every epoch.
    seed : None, int, SeedSequence, BitGenerator or Generator
        (Not in MXNet, which uses the global ``random`` and ``np.random`` state.) Seeds the
        ``np.random.default_rng`` used by :meth:`reset`.

    MXNet's rules, kept here
    ------------------------
    * Automatic buckets contain only lengths that occur ``batch_size`` times or more, so a rarer
      length is padded up to the next bucket, and sentences longer than the longest such length are
      discarded.
    * Sentences longer than the largest bucket are discarded, with a warning (MXNet prints one).
    * Buckets that receive no sentence are dropped from ``buckets``; a bucket that receives fewer
      than ``batch_size`` sentences stays but yields no batch. ``default_bucket_key`` is the
      largest remaining bucket.
    * Each bucket yields ``len(bucket) // batch_size`` batches; the leftover sentences of a
      bucket (after the shuffle) are not used in that epoch.
    * ``reset()`` (also run by the constructor) shuffles the order of the batches, then the
      sentences within each bucket.

    Differences from MXNet
    ----------------------
    * Bucket lengths below 1 are refused (MXNet ignores them unless a sentence lands in one, and
      then fails with an IndexError); so are automatic buckets of length 0 (at least
      ``batch_size`` empty sentences), on which MXNet fails the same way.
    * ``provide_data`` / ``provide_label`` carry the real dtype (MXNet always says float32).
    * The caller's ``buckets`` list is not sorted in place; batches are copies, not views.
    """

    def __init__(
        self,
        sentences,
        batch_size,
        buckets=None,
        invalid_label=-1,
        data_name="data",
        label_name="softmax_label",
        dtype="float32",
        layout="NT",
        *,
        shuffle=True,
        seed=None,
    ):
        batch_size = chk.size("batch_size", batch_size)
        invalid_label = _integer("invalid_label", invalid_label)
        data_name = _string("data_name", data_name)
        label_name = _string("label_name", label_name)
        layout = _string("layout", layout)
        if layout not in ("NT", "TN"):
            raise ValueError(
                f"layout: expected 'NT' (batch major) or 'TN' (time major), got {layout!r}"
            )
        shuffle = chk.flag("shuffle", shuffle)
        try:
            dtype = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"dtype: not a NumPy dtype: {dtype!r}") from exc
        if dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"dtype: expected a numeric dtype, got {dtype}")
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            if not info.min <= invalid_label <= info.max:
                raise ValueError(f"invalid_label: {invalid_label} does not fit in dtype {dtype}")
        if dtype.kind == "b" and invalid_label not in (0, 1):
            raise ValueError(f"invalid_label: {invalid_label} does not fit in dtype {dtype}")
        try:
            self._rng = np.random.default_rng(seed)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"seed: {exc}") from exc

        sentences = self._check_sentences(sentences)
        lengths = np.array([len(s) for s in sentences], dtype=np.int64)

        if buckets is not None:
            buckets = self._check_buckets(buckets)
        auto = not buckets  # None or empty, as MXNet's `if not buckets`
        if auto:
            counts = np.bincount(lengths) if len(lengths) else np.zeros(0, np.int64)
            buckets = [int(n) for n in np.flatnonzero(counts >= batch_size)]
            if buckets and buckets[0] == 0:
                raise ValueError(
                    f"sentences: {int(counts[0])} empty sentences make an automatic bucket of "
                    f"length 0 (MXNet fails on it too); drop them or pass buckets="
                )

        # bisect_left: the smallest bucket >= the length; len(buckets) means "too long"
        where = np.searchsorted(np.asarray(buckets, dtype=np.int64), lengths, side="left")
        ndiscard = int(np.count_nonzero(where == len(buckets)))
        if ndiscard:
            warnings.warn(
                f"BucketSentenceIter: discarded {ndiscard} sentences longer than the largest "
                f"bucket ({max(buckets) if buckets else 'no bucket'})",
                stacklevel=2,
            )
        used = [int(b) for b in np.unique(where[where < len(buckets)])]
        if not used:
            if not len(lengths):
                why = "there are no sentences"
            elif not buckets:
                why = f"no sentence length occurs batch_size={batch_size} times or more"
            else:
                why = "every sentence is longer than the largest bucket"
            raise ValueError(f"sentences: no bucket holds a sentence: {why}")
        self.data = []
        for b in used:
            members = np.flatnonzero(where == b)
            arr = np.full((len(members), buckets[b]), invalid_label, dtype=dtype)
            for row, k in enumerate(members):
                arr[row, : lengths[k]] = sentences[k]
            self.data.append(arr)
        buckets = [buckets[b] for b in used]

        self.ndiscard = ndiscard
        self.batch_size = batch_size
        self.buckets = buckets
        self.data_name = data_name
        self.label_name = label_name
        self.dtype = dtype
        self.invalid_label = invalid_label
        self.layout = layout
        self.major_axis = layout.find("N")
        self.shuffle = shuffle
        self.default_bucket_key = max(buckets)
        shape = self._shape(batch_size, self.default_bucket_key)
        self.provide_data = [DataDesc(data_name, shape, dtype.type, layout)]
        self.provide_label = [DataDesc(label_name, shape, dtype.type, layout)]

        # (bucket index, first row) of every full batch, in bucket order
        self.idx = [
            (i, j)
            for i, arr in enumerate(self.data)
            for j in range(0, len(arr) - batch_size + 1, batch_size)
        ]
        self.curr_idx = 0
        self.reset()

    @staticmethod
    def _check_sentences(sentences) -> list:
        try:
            sentences = list(sentences)
        except TypeError:
            raise TypeError(
                "sentences: expected an iterable of token-id sequences, "
                f"got {type(sentences).__name__}"
            ) from None
        out = []
        for i, s in enumerate(sentences):
            if isinstance(s, (str, bytes)):
                raise TypeError(
                    f"sentences[{i}]: expected a sequence of token ids, got a string "
                    f"(encode the sentences first, e.g. with encode_sentences)"
                )
            try:
                arr = np.asarray(s)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"sentences[{i}]: expected a sequence of token ids ({exc})"
                ) from None
            if arr.ndim != 1:
                raise ValueError(
                    f"sentences[{i}]: expected a 1-D sequence of token ids, got shape {arr.shape}"
                )
            if arr.size and arr.dtype.kind not in _NUMERIC_KINDS:
                raise TypeError(
                    f"sentences[{i}]: expected numeric token ids, got dtype {arr.dtype} "
                    f"(encode the sentences first, e.g. with encode_sentences)"
                )
            out.append(arr)
        return out

    @staticmethod
    def _check_buckets(buckets) -> list:
        try:
            items = list(buckets)
        except TypeError:
            raise TypeError(
                f"buckets: expected None or a list of integers, got {type(buckets).__name__}"
            ) from None
        out = []
        for b in items:
            b = _integer("buckets", b)
            if b < 1:
                raise ValueError(f"buckets: expected lengths >= 1, got {b}")
            out.append(b)
        return sorted(set(out))

    def _shape(self, n: int, t: int) -> tuple:
        return (n, t) if self.major_axis == 0 else (t, n)

    def reset(self):
        """Rewind to the first batch; with shuffle, reorder the batches, then the sentences within
        each bucket (MXNet's order of the two shuffles)."""
        self.curr_idx = 0
        if self.shuffle:
            order = self._rng.permutation(len(self.idx))
            self.idx = [self.idx[k] for k in order]
            for arr in self.data:
                self._rng.shuffle(arr, axis=0)

    def __iter__(self):
        return self

    def __next__(self) -> DataBatch:
        return self.next()

    def next(self) -> DataBatch:
        """The next batch; StopIteration at the end of the epoch (until :meth:`reset`)."""
        if self.curr_idx == len(self.idx):
            raise StopIteration
        i, j = self.idx[self.curr_idx]
        self.curr_idx += 1
        data = self.data[i][j : j + self.batch_size]
        label = np.empty_like(data)
        label[:, :-1] = data[:, 1:]
        label[:, -1] = self.invalid_label
        if self.major_axis == 1:
            data, label = data.T, label.T
        data, label = np.array(data, order="C"), np.array(label, order="C")  # copies
        return DataBatch(
            [data],
            [label],
            pad=0,
            bucket_key=self.buckets[i],
            provide_data=[DataDesc(self.data_name, data.shape, self.dtype.type, self.layout)],
            provide_label=[DataDesc(self.label_name, label.shape, self.dtype.type, self.layout)],
        )


# --------------------------------------------------------------------------------------------------
# pad_sequences
# --------------------------------------------------------------------------------------------------


def _pre_or_post(name: str, value) -> str:
    # ValueError for any bad value, a non-string included, as Keras
    if not isinstance(value, str) or value not in ("pre", "post"):
        raise ValueError(f"{name}: expected 'pre' or 'post', got {value!r}")
    return str(value)


def _named(name, what, fn, *args, **kw):
    """fn(*args, **kw); NumPy's conversion errors re-raised as ValueError or TypeError (their kind,
    as Keras raises them) with a message naming ``name``."""
    try:
        return fn(*args, **kw)
    except (TypeError, ValueError) as exc:
        first = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        kind = ValueError if isinstance(exc, ValueError) else TypeError
        raise kind(f"{name}: expected {what} ({first})") from exc


def pad_sequences(
    sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre", value=0.0
):
    """Pad (or truncate) sequences to one length: an (N, T, ...) array, exactly as Keras 3's
    ``keras.utils.pad_sequences``.

    Parameters
    ----------
    sequences : list of sequences
        Each item is a sequence of scalars or of equally shaped sub-arrays; the shape of the first
        non-empty item's elements (``np.asarray(item).shape[1:]``) is the sample shape, and every
        other item must match it after truncation.
    maxlen : int or None
        T; None takes the longest sequence.
    dtype : dtype
        Of the result (``object`` for variable-length strings).
    padding, truncating : 'pre' or 'post'
        Where padding is added / where values of longer sequences are removed.
    value : scalar
        The padding value (a string needs a string dtype or exactly ``dtype=object``).

    Returns
    -------
    ndarray of shape (N, T) + sample shape

    Notes
    -----
    Keras's behaviour, kept here: values are cast to ``dtype`` (floats truncated to integers,
    ``value`` included); empty sequences are all padding; ``maxlen=0`` with ``truncating='pre'``
    fails for a sequence longer than 1 (``s[-0:]`` keeps all of it). Unlike Keras, a bad ``padding``
    or ``truncating`` is refused even when every sequence is empty.
    """
    padding = _pre_or_post("padding", padding)
    truncating = _pre_or_post("truncating", truncating)
    if not hasattr(sequences, "__len__"):
        raise ValueError(
            f"sequences: expected a list of sequences, got {type(sequences).__name__} (no len())"
        )
    if maxlen is not None:
        maxlen = _integer("maxlen", maxlen)
        if maxlen < 0:
            raise ValueError(f"maxlen: expected None or an integer >= 0, got {maxlen}")

    lengths = []
    sample_shape = None  # from the first non-empty sequence
    for i, s in enumerate(sequences):
        try:
            lengths.append(len(s))
            if sample_shape is None and len(s):
                sample_shape = _named("sequences[%d]" % i, "an array", np.asarray, s).shape[1:]
        except TypeError as exc:
            if str(exc).startswith("sequences["):
                raise
            raise ValueError(
                f"sequences[{i}]: expected a sequence, got non-iterable {type(s).__name__} {s!r}"
            ) from exc
    if sample_shape is None:
        sample_shape = ()
    if maxlen is None:
        if not lengths:
            raise ValueError("sequences: empty, so maxlen must be given")
        maxlen = max(lengths)

    try:
        string_dtype = np.issubdtype(dtype, np.str_) or np.issubdtype(dtype, np.bytes_)
    except TypeError as exc:
        raise TypeError(f"dtype: not a NumPy dtype: {dtype!r}") from exc
    if isinstance(value, str) and dtype is not object and not string_dtype:
        raise ValueError(
            f"value: a string {value!r} needs dtype=object or a string dtype, got dtype {dtype!r}"
        )

    shape = (len(sequences), maxlen) + sample_shape
    try:
        out = np.full(shape, value, dtype=dtype)
    except (ValueError, MemoryError) as exc:  # the type NumPy (so Keras) raises, with the names
        if isinstance(exc, ValueError) and "too big" not in str(exc):
            raise ValueError(f"value: {value!r} cannot fill a {np.dtype(dtype)} array: {exc}") \
                from exc
        kind = ValueError if isinstance(exc, ValueError) else MemoryError
        raise kind(f"maxlen: the padded array of shape {shape} ({np.dtype(dtype)}) cannot be "
                   f"allocated ({str(exc).splitlines()[0][:100]})") from exc
    except TypeError as exc:
        raise TypeError(f"value: {value!r} cannot fill a {np.dtype(dtype)} array: {exc}") from exc
    for i, s in enumerate(sequences):
        if not len(s):
            continue
        kept = s[-maxlen:] if truncating == "pre" else s[:maxlen]
        kept = _named(f"sequences[{i}]", f"values convertible to {np.dtype(dtype)}",
                      np.asarray, kept, dtype=dtype)
        if kept.shape[1:] != sample_shape:
            raise ValueError(
                f"sequences[{i}]: elements of shape {kept.shape[1:]}, expected {sample_shape} "
                f"(the shape in the first non-empty sequence)"
            )
        n = len(kept)
        if n > maxlen:  # only maxlen == 0 with truncating='pre'
            if n == 1:  # Keras's assignment broadcasts one step onto the zero-width row
                continue
            raise ValueError(
                f"maxlen: 0 with truncating='pre' keeps all of sequences[{i}] "
                f"(s[-0:]), as in Keras, which then fails; use truncating='post'"
            )
        if padding == "post":
            out[i, :n] = kept
        else:
            out[i, maxlen - n :] = kept
    return out
