"""Character-level language model: an LSTM (or GRU) trained with PyTorch and fusedrnn on the CPU.

The task (the classic Keras text-generation example, done with a sequence-to-sequence loss): read
``--seq-len`` characters (40) and predict, at every position t, the character at position t + 1,
that is the next character after each prefix of the window. The loss is the mean cross-entropy
(nats per character) over all predicted positions of the batch, so every character of a window is
a training target, not only the one after its end as in the Keras example.

The model: one-hot characters (no embedding) -> ``fusedrnn.torch.LSTM`` (``--cell gru``:
``fusedrnn.torch.GRU``; ``--hidden`` 128, ``--layers`` 1) -> ``torch.nn.Linear`` to the vocabulary,
trained with PyTorch autograd and Adam (``--optimizer rmsprop`` as in Keras' example), gradients
clipped to norm ``--clip``. ``--backend torch`` trains the identical model (same initial weights:
the torch.nn module loads the fusedrnn module's state dict, whose names are torch.nn's) with
``torch.nn.LSTM`` / ``GRU``; ``--compare`` trains both on the same batches and reports their speed.

The corpus needs no download: the docstrings of the Python standard library's own modules, read
with ``ast`` from the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` (without
site-packages and the test suites) in sorted path order, each docstring once, in source order
within a file, tabs expanded and characters outside printable ASCII dropped, up to
``--corpus-chars`` characters (1,000,000; the whole library gives about 1.8 MB). It therefore
depends on the Python version. The last 5 % is held out: the validation loss is computed on
fixed windows of it. Training windows of ``--seq-len + 1`` characters are drawn epoch by epoch:
each epoch cuts the training text into windows at a random phase and visits them in a random
order. ``--bucket`` trains on sequences of a few lengths instead (``--bucket`` alone: a quarter,
half, three quarters and all of ``--seq-len``; or ``--bucket 10,20,40``): each sample of a batch
gets one of the lengths at random, and the batch goes to the recurrent layer as a PackedSequence
(fusedrnn.torch takes it natively: the batch shrinks as samples end); the loss then covers the
valid positions only.

Outputs, in ``--out`` (``charlm_out/`` in the current directory):

- ``loss.png``: the training loss per step (and its moving average, and the validation loss);
  ``--compare`` writes ``loss_compare.png`` with both backends' curves instead;
- ``checkpoint.pt``: the model and optimizer states, the step, the losses so far, the torch RNG
  state and the data sampler's state (its NumPy generator and its position in the epoch), written
  every ``--save-every`` steps and at the end, atomically (a temporary file, then ``os.replace``).
  ``--resume`` continues from it: the resumed run computes exactly the losses that the
  uninterrupted run would have (same options needed, except ``--steps``, ``--backend``,
  ``--sample-every``, ``--save-every``). It is read with ``torch.load(weights_only=True)``, which
  never executes code from the file;
- on stdout, generated text at the end for each of ``--temperatures`` (0.2, 0.5, 1.0), starting
  from a slice of the held-out text; ``--sample-every N`` also prints a short sample and the
  validation loss every N steps.

A progress bar (tqdm when installed, otherwise a line every 5 % of the steps) shows the loss and the
characters per second (predicted characters per second of training step: forward, backward and
optimizer step). ``--threads`` sets torch's thread count, which fusedrnn.torch follows; on a machine
whose cores are busy with other work, ``--threads 1`` can be several times faster than one thread
per core (the threads of a parallel region wait for each other). A fixed ``--seed`` gives the same
run every time (the global NumPy random state is not used; sampling text uses a generator of its
own, so ``--sample-every`` changes nothing in training).

    python -m fusedrnn.examples.charlm                 # about 3 minutes on 2 cores
    python -m fusedrnn.examples.charlm --steps 6000 --resume
    python -m fusedrnn.examples.charlm --cell gru --hidden 256 --bucket
    python -m fusedrnn.examples.charlm --compare --steps 300

Needs PyTorch (and matplotlib for the PNG, tqdm for the bar): ``pip install 'fusedrnn[examples]'``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import math
import os
import pathlib
import sysconfig
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fusedrnn.examples.charlm needs PyTorch: pip install 'fusedrnn[examples]'"
                      ) from exc

import fusedrnn
import fusedrnn.torch

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "fusedrnn.examples.charlm/1"
VAL_FRACTION = 0.05  # the held-out tail of the corpus
VAL_WINDOWS = 256  # at most this many held-out windows per validation
DEFAULT_LR = {"adam": 2e-3, "rmsprop": 1e-2}
# options a resumed run must share with the checkpoint (the others may change between runs)
RESUME_FIXED = ("cell", "hidden", "layers", "seq_len", "batch", "lr", "optimizer", "clip", "seed",
                "bucket", "corpus_chars")


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass
class Config:
    """What a training run does (the command-line options, resolved)."""

    hidden: int = 128
    layers: int = 1
    cell: str = "lstm"  # "lstm" or "gru"
    seq_len: int = 40
    batch: int = 128
    steps: int = 3000  # total steps, counted from the start of training (also when resuming)
    lr: float = DEFAULT_LR["adam"]
    optimizer: str = "adam"  # "adam" or "rmsprop"
    clip: float = 5.0  # gradient norm clipping; 0 turns it off
    seed: int = 0
    bucket: tuple | None = None  # sequence lengths to sample from; None: all of seq_len
    corpus_chars: int = 1_000_000
    backend: str = "fusedrnn"  # "fusedrnn" or "torch"
    sample_every: int = 0  # print a sample and the validation loss every N steps; 0: never
    save_every: int = 500  # write the checkpoint every N steps (and at the end); 0: at the end


def default_buckets(seq_len: int) -> tuple:
    """``--bucket`` without lengths: a quarter, half, three quarters and all of seq_len."""
    return tuple(sorted({max(1, seq_len * k // 4) for k in range(1, 5)}))


# --------------------------------------------------------------------------------------------------
# The corpus: the standard library's docstrings

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def _stdlib_files(root: pathlib.Path) -> list:
    """The standard library's .py files, without third-party packages and test suites, sorted."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        files.extend(pathlib.Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _docstrings(tree: ast.AST):
    """The docstrings of a module, its classes and functions, in source order."""
    if isinstance(tree, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(tree, clean=True)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(tree):
        yield from _docstrings(child)


def _printable(text: str) -> str:
    """Tabs expanded; carriage returns and anything else outside printable ASCII and newline
    dropped."""
    text = text.expandtabs(4)
    return "".join(ch for ch in text if ch == "\n" or " " <= ch <= "~")


def stdlib_corpus(max_chars: int, stdlib: str | None = None) -> str:
    """The docstrings of the standard library at ``stdlib`` (default: this Python's), each once,
    separated by blank lines, cut at ``max_chars`` characters. Deterministic for a given library;
    reads only as many files as it needs (the whole library takes about 3 s)."""
    root = pathlib.Path(stdlib or sysconfig.get_paths()["stdlib"])
    seen, parts, size = set(), [], 0
    for path in _stdlib_files(root):
        try:
            with warnings.catch_warnings():  # invalid escapes in old files: SyntaxWarning
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue
        for doc in _docstrings(tree):
            doc = _printable(doc).strip()
            if doc and doc not in seen:
                seen.add(doc)
                parts.append(doc + "\n\n")
                size += len(parts[-1])
        if size >= max_chars:
            break
    return "".join(parts)[:max_chars]


# --------------------------------------------------------------------------------------------------
# Data: the encoded corpus and the window sampler


class Corpus:
    """The text, its vocabulary (sorted characters) and the training / held-out split."""

    def __init__(self, text: str):
        if not text:
            raise ValueError("the corpus is empty")
        self.text = text
        self.vocab = "".join(sorted(set(text)))
        lookup = np.zeros(max(map(ord, self.vocab)) + 1, dtype=np.int64)
        lookup[[ord(c) for c in self.vocab]] = np.arange(len(self.vocab))
        self.ids = lookup[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
        self.n_train = len(text) - int(len(text) * VAL_FRACTION)
        self.sha256 = hashlib.sha256(text.encode("ascii")).hexdigest()

    @property
    def train_ids(self) -> np.ndarray:
        return self.ids[:self.n_train]

    @property
    def val_ids(self) -> np.ndarray:
        return self.ids[self.n_train:]

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.vocab.index(c) for c in text], dtype=torch.int64)


class WindowSampler:
    """Batches of training windows (start positions, and lengths with buckets), epoch by epoch.

    A window is ``seq_len + 1`` characters: the input and, shifted by one, the targets. Each epoch
    cuts the training text into consecutive windows (``seq_len`` apart) from a random phase in
    ``[0, seq_len)`` and visits them in a random order; a batch that runs past the end of an epoch
    continues in the next. With buckets, each sample also gets one of the bucket lengths at random
    (its first ``length + 1`` characters are used). All randomness comes from one NumPy generator,
    whose state and the position in the epoch are the sampler's state (``state_dict``).
    """

    def __init__(self, n_chars: int, seq_len: int, batch: int, seed: int,
                 buckets: Sequence[int] | None = None):
        if n_chars < seq_len + 1:
            raise ValueError(f"the training text has {n_chars} characters, fewer than one window "
                             f"of seq_len + 1 = {seq_len + 1}")
        self.n_chars, self.seq_len, self.batch = n_chars, seq_len, batch
        self.buckets = np.asarray(buckets, dtype=np.int64) if buckets else None
        self.rng = np.random.default_rng(seed)
        self.epoch, self.cursor = 0, 0
        self.order = self._new_epoch()

    def _new_epoch(self) -> np.ndarray:
        last = self.n_chars - (self.seq_len + 1)  # the last valid start
        phase = int(self.rng.integers(min(self.seq_len, last + 1)))
        return self.rng.permutation(np.arange(phase, last + 1, self.seq_len, dtype=np.int64))

    def next_batch(self) -> tuple:
        """(starts, lengths): int64 arrays of the batch size; lengths is None without buckets."""
        parts, need = [], self.batch
        while need:
            if self.cursor == len(self.order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self.order = self._new_epoch()
            take = self.order[self.cursor:self.cursor + need]
            parts.append(take)
            self.cursor += len(take)
            need -= len(take)
        starts = np.concatenate(parts)
        lengths = None if self.buckets is None else self.rng.choice(self.buckets, size=self.batch)
        return starts, lengths

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "epoch": self.epoch, "cursor": self.cursor,
                "order": torch.from_numpy(self.order.copy())}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.order = state["order"].numpy().astype(np.int64)


def make_batch(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray | None, seq_len: int):
    """Inputs and targets, time-major: (T, N) int64 tensors, or PackedSequences with lengths."""
    T = seq_len if lengths is None else int(lengths.max())
    windows = torch.from_numpy(ids[starts[:, None] + np.arange(T + 1)].T.copy())  # (T + 1, N)
    x, y = windows[:-1], windows[1:]
    if lengths is None:
        return x, y
    lens = torch.from_numpy(lengths)
    return (pack_padded_sequence(x, lens, enforce_sorted=False),
            pack_padded_sequence(y, lens, enforce_sorted=False))


# --------------------------------------------------------------------------------------------------
# The model

_RNNS = {("fusedrnn", "lstm"): fusedrnn.torch.LSTM, ("fusedrnn", "gru"): fusedrnn.torch.GRU,
         ("torch", "lstm"): nn.LSTM, ("torch", "gru"): nn.GRU}


class CharLM(nn.Module):
    """One-hot characters -> LSTM or GRU -> Linear to logits over the vocabulary."""

    def __init__(self, vocab_size: int, hidden: int, layers: int = 1, cell: str = "lstm",
                 backend: str = "fusedrnn"):
        super().__init__()
        self.vocab_size = vocab_size
        self.rnn = _RNNS[backend, cell](vocab_size, hidden, num_layers=layers)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x, state=None):
        """x: (T, N) character ids or a PackedSequence of them. Returns the logits, (T, N, V) or
        (sum of lengths, V) in the packed order, and the final recurrent state."""
        if isinstance(x, PackedSequence):
            onehot = PackedSequence(F.one_hot(x.data, self.vocab_size).float(), x.batch_sizes,
                                    x.sorted_indices, x.unsorted_indices)
            out, state = self.rnn(onehot, state)
            return self.head(out.data), state
        out, state = self.rnn(F.one_hot(x, self.vocab_size).float(), state)
        return self.head(out), state


def build_model(vocab_size: int, cfg: Config, backend: str | None = None) -> CharLM:
    """The model with the initial weights of ``cfg.seed``, the same for either backend: the
    fusedrnn model is built under the seed (``torch.manual_seed``: this seeds torch's global
    generator) and the torch.nn one loads its state dict."""
    backend = backend or cfg.backend
    torch.manual_seed(cfg.seed)
    model = CharLM(vocab_size, cfg.hidden, cfg.layers, cfg.cell, "fusedrnn")
    if backend != "fusedrnn":
        reference, model = model, CharLM(vocab_size, cfg.hidden, cfg.layers, cfg.cell, backend)
        model.load_state_dict(reference.state_dict())
    return model


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.RMSprop(model.parameters(), lr=cfg.lr)


@torch.no_grad()
def validation_loss(model: CharLM, corpus: Corpus, seq_len: int) -> float | None:
    """Mean cross-entropy over up to VAL_WINDOWS fixed windows of the held-out text (None when it
    is shorter than one window)."""
    val = corpus.val_ids
    starts = np.arange(0, len(val) - seq_len, seq_len, dtype=np.int64)[:VAL_WINDOWS]
    if len(starts) == 0:
        return None
    model.eval()
    total = 0.0
    for i in range(0, len(starts), 128):
        x, y = make_batch(val, starts[i:i + 128], None, seq_len)
        logits, _ = model(x)
        total += float(F.cross_entropy(logits.reshape(-1, model.vocab_size), y.reshape(-1),
                                       reduction="sum"))
    model.train()
    return total / (len(starts) * seq_len)


@torch.no_grad()
def generate(model: CharLM, corpus: Corpus, prime: str, length: int, temperature: float,
             generator: torch.Generator) -> str:
    """``length`` characters sampled after ``prime`` (fed first), one step at a time, from the
    softmax of the logits divided by ``temperature``."""
    model.eval()
    logits, state = model(corpus.encode(prime)[:, None])
    out = []
    for _ in range(length):
        probs = torch.softmax(logits[-1, 0].double() / temperature, dim=0)
        nxt = torch.multinomial(probs, 1, generator=generator)
        out.append(corpus.vocab[int(nxt)])
        logits, state = model(nxt.view(1, 1), state)
    model.train()
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Progress: tqdm when installed, a plain line every 5 % of the steps otherwise


class Progress:
    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True):
        self.total, self.enabled = total, enabled
        self.every = max(1, total // 20)
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step",
                                dynamic_ncols=True)
        self.desc = desc

    def update(self, step: int, loss: float, chars_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.3f}, {chars_per_s:,.0f} chars/s", refresh=False)
            self.bar.update(1)
        elif self.enabled and (step % self.every == 0 or step == self.total):
            print(f"{self.desc} step {step}/{self.total}  loss {loss:.4f}  "
                  f"{chars_per_s:,.0f} chars/s", flush=True)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass
class TrainResult:
    model: CharLM
    corpus: Corpus
    losses: list  # the loss of every step since step 1 (also the resumed ones)
    val_losses: list  # (step, validation loss) pairs
    start_step: int  # the step this run started from (0, or the checkpoint's)
    chars_per_s: float  # predicted characters per second of training step in this run
    seconds: float  # time in training steps in this run


def save_checkpoint(path: pathlib.Path, state: dict) -> None:
    """torch.save to a temporary file in the same directory, then an atomic os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    """A checkpoint, read without executing code (weights_only); checked to be one of ours."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint of fusedrnn.examples.charlm")
    return state


def resume_mismatch(cfg: Config, state: dict, corpus: Corpus) -> str | None:
    """Why ``cfg`` cannot continue the checkpoint ``state`` (None if it can)."""
    saved = state["config"]
    diffs = []
    for key in RESUME_FIXED:
        ours = getattr(cfg, key)
        ours = list(ours) if isinstance(ours, tuple) else ours
        if saved[key] != ours:
            diffs.append(f"--{key.replace('_', '-')} {saved[key]!r} (this run: {ours!r})")
    if diffs:
        return "the checkpoint was trained with " + ", ".join(diffs) + "; pass the same options"
    if state["corpus_sha256"] != corpus.sha256:
        return ("the corpus differs from the checkpoint's (another Python version's standard "
                "library?)")
    if state["step"] > cfg.steps:
        return f"the checkpoint is at step {state['step']}, past --steps {cfg.steps}"
    return None


def train(cfg: Config, text: str | None = None, *, out=None, resume=None,
          progress: bool = True, log: Callable[[str], None] = print) -> TrainResult:
    """Trains ``cfg.steps`` steps (from the checkpoint's step with ``resume``) and returns the
    model and the losses.

    text: the corpus (default: ``stdlib_corpus(cfg.corpus_chars)``). out: a directory to write
    the checkpoint into every ``cfg.save_every`` steps and at the end (None: none written).
    resume: a checkpoint path to continue from (ValueError if it does not match ``cfg``).
    """
    corpus = Corpus(stdlib_corpus(cfg.corpus_chars) if text is None else text)
    sampler = WindowSampler(corpus.n_train, cfg.seq_len, cfg.batch, cfg.seed, cfg.bucket)
    model = build_model(len(corpus.vocab), cfg)
    optimizer = make_optimizer(model, cfg)
    losses, val_losses, step = [], [], 0
    if resume is not None:
        state = load_checkpoint(resume)
        problem = resume_mismatch(cfg, state, corpus)
        if problem:
            raise ValueError(f"cannot resume from {resume}: {problem}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        losses, val_losses = list(state["losses"]), [tuple(v) for v in state["val_losses"]]
        step = int(state["step"])
    start_step = step
    ckpt_path = None if out is None else pathlib.Path(out) / CHECKPOINT

    def checkpoint():
        save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "config": _config_dict(cfg), "vocab": corpus.vocab,
            "corpus_sha256": corpus.sha256, "step": step, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
            "torch_rng": torch.get_rng_state(), "losses": losses,
            "val_losses": [list(v) for v in val_losses]})

    bar = Progress(cfg.steps, step, f"{cfg.backend} {cfg.cell}", enabled=progress)
    sample_gen = torch.Generator()
    seconds, chars, warm_seconds, warm_chars = 0.0, 0, 0.0, 0
    model.train()
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            starts, lengths = sampler.next_batch()
            x, y = make_batch(corpus.train_ids, starts, lengths, cfg.seq_len)
            logits, _ = model(x)
            target = y.data if isinstance(y, PackedSequence) else y.reshape(-1)
            loss = F.cross_entropy(logits.reshape(-1, len(corpus.vocab)), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            value = loss.item()
            dt = time.perf_counter() - t0
            step += 1
            losses.append(value)
            n_chars = target.numel()
            if step > start_step + 1:  # the first step of a run warms up: not in the speed
                warm_seconds, warm_chars = warm_seconds + dt, warm_chars + n_chars
            seconds, chars = seconds + dt, chars + n_chars
            speed = warm_chars / warm_seconds if warm_seconds else chars / seconds
            bar.update(step, value, speed)
            if cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.steps:
                val = validation_loss(model, corpus, cfg.seq_len)
                if val is not None:
                    val_losses.append((step, val))
                sample_gen.manual_seed(cfg.seed * 1_000_003 + step)
                prime = _prime(corpus, cfg.seq_len)
                text_out = generate(model, corpus, prime, 200, 0.5, sample_gen)
                bar.write(f"--- step {step}: validation loss "
                          f"{'n/a' if val is None else f'{val:.4f}'}; sample at temperature 0.5:\n"
                          f"{prime}|{text_out}\n---")
            if (ckpt_path is not None and cfg.save_every and step % cfg.save_every == 0
                    and step < cfg.steps):  # the last step's checkpoint is written below
                checkpoint()
    finally:
        bar.close()
    val = validation_loss(model, corpus, cfg.seq_len)
    if val is not None and (not val_losses or val_losses[-1][0] != step):
        val_losses.append((step, val))
    if ckpt_path is not None:
        checkpoint()
    speed = warm_chars / warm_seconds if warm_seconds else (chars / seconds if seconds else 0.0)
    return TrainResult(model, corpus, losses, val_losses, start_step, speed, seconds)


def _config_dict(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)
    d["bucket"] = None if cfg.bucket is None else list(cfg.bucket)
    return d


def _prime(corpus: Corpus, seq_len: int) -> str:
    """The text that starts the samples: seq_len characters of the held-out text (of the whole
    text if that is too short), from the start of its first full line when there is room."""
    held_out = corpus.text[corpus.n_train:]
    text = held_out if len(held_out) >= seq_len else corpus.text
    start = text.find("\n") + 1
    while 0 < start < len(text) and text[start] == "\n":
        start += 1
    if start == 0 or len(text) - start < seq_len:
        start = 0
    return text[start:start + seq_len]


# --------------------------------------------------------------------------------------------------
# Outputs


def plot_losses(path, curves: dict, val: dict | None = None, title: str = "") -> bool:
    """Writes the loss curves ({label: losses per step}) and validation points ({label: [(step,
    loss)]}) to a PNG with matplotlib's Agg canvas. False (nothing written) without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (label, losses) in enumerate(curves.items()):
        color = f"C{i}"
        steps = np.arange(1, len(losses) + 1)
        ax.plot(steps, losses, color=color, alpha=0.3, linewidth=0.8)
        # trailing mean over the last `window` steps (fewer at the start)
        window = max(1, min(50, len(losses) // 10))
        total = np.concatenate([[0.0], np.cumsum(losses)])
        lo = np.maximum(steps - window, 0)
        smooth = (total[steps] - total[lo]) / (steps - lo)
        ax.plot(steps, smooth, color=color, linestyle="-" if i == 0 else "--",
                label=f"{label} (mean of the last {window})")
        for s, v in (val or {}).get(label, []):
            ax.plot([s], [v], "o", color=color, markersize=4)
    if val and any(val.values()):
        ax.plot([], [], "o", color="gray", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / character)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def compare(cfg: Config, text: str, out: pathlib.Path, progress: bool = True) -> dict:
    """Trains the same model on the same batches with fusedrnn.torch and with torch.nn, prints the
    speed of each and their ratio, writes both loss curves to ``out/loss_compare.png`` and returns
    {backend: TrainResult}."""
    results = {}
    for backend in ("fusedrnn", "torch"):
        results[backend] = train(dataclasses.replace(cfg, backend=backend), text,
                                 progress=progress)
    f, t = results["fusedrnn"], results["torch"]
    n = min(len(f.losses), len(t.losses))
    diff = float(np.max(np.abs(np.subtract(f.losses[:n], t.losses[:n])))) if n else 0.0
    print(f"fusedrnn.torch: {f.chars_per_s:,.0f} chars/s ({f.seconds:.1f} s in steps); "
          f"torch.nn: {t.chars_per_s:,.0f} chars/s ({t.seconds:.1f} s)")
    print(f"speed ratio fusedrnn / torch.nn: {f.chars_per_s / t.chars_per_s:.2f}x; "
          f"final loss {f.losses[-1]:.4f} vs {t.losses[-1]:.4f} "
          f"(largest per-step difference {diff:.2e})")
    out.mkdir(parents=True, exist_ok=True)
    png = out / "loss_compare.png"
    if plot_losses(png, {"fusedrnn.torch": f.losses, "torch.nn": t.losses},
                   {"fusedrnn.torch": f.val_losses, "torch.nn": t.val_losses},
                   title=f"{cfg.cell.upper()} {cfg.hidden}: fusedrnn.torch "
                         f"{f.chars_per_s:,.0f} vs torch.nn {t.chars_per_s:,.0f} chars/s"):
        print(f"wrote {png}")
    return results


# --------------------------------------------------------------------------------------------------
# Command line


def _int_at_least(lo: int, what: str):
    """An argparse type: an integer >= lo."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            v = lo - 1
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer >= 0")


def _float_at_least(low: float, strict: bool):
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not math.isfinite(v) or v < low or (strict and v == low):
            raise argparse.ArgumentTypeError(
                f"expected a number {'>' if strict else '>='} {low:g}, got {s!r}")
        return v
    return parse


def _list_of(convert, ok, example: str, what: str):
    """An argparse type: comma-separated values, each converted and checked by ``ok``."""
    def parse(s: str) -> tuple:
        try:
            values = tuple(convert(v) for v in s.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what} such as {example}, got {s!r}") from None
        if not all(ok(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return values
    return parse


_lengths_list = _list_of(int, lambda v: v >= 1, "10,20,40", "positive integers")
_float_list = _list_of(float, lambda v: v > 0 and math.isfinite(v), "0.2,0.5,1.0",
                       "positive numbers")


def _int_list(s: str) -> tuple:
    """Bucket lengths: positive integers, sorted and deduplicated."""
    return tuple(sorted(set(_lengths_list(s))))


def build_parser() -> argparse.ArgumentParser:
    c = Config()
    ap = argparse.ArgumentParser(
        prog="python -m fusedrnn.examples.charlm", description=__doc__.splitlines()[0],
        epilog="The module docstring (python -m pydoc fusedrnn.examples.charlm) explains the "
               "task, the corpus and the outputs.")
    ap.add_argument("--cell", choices=("lstm", "gru"), default=c.cell, help="recurrent cell")
    ap.add_argument("--hidden", type=_positive_int, default=c.hidden, help="hidden units")
    ap.add_argument("--layers", type=_positive_int, default=c.layers, help="recurrent layers")
    ap.add_argument("--seq-len", type=_positive_int, default=c.seq_len,
                    help="characters per training sequence (maxlen)")
    ap.add_argument("--batch", type=_positive_int, default=c.batch, help="sequences per batch")
    ap.add_argument("--steps", type=_positive_int, default=c.steps,
                    help="training steps in all (a resumed run continues up to this step)")
    ap.add_argument("--optimizer", choices=("adam", "rmsprop"), default=c.optimizer)
    ap.add_argument("--lr", type=_float_at_least(0.0, strict=True), default=None,
                    help="learning rate (default: 0.002 with Adam, 0.01 with RMSprop)")
    ap.add_argument("--clip", type=_float_at_least(0.0, strict=False), default=c.clip,
                    help="clip the gradient norm to this (0: no clipping)")
    ap.add_argument("--seed", type=_nonnegative_int, default=c.seed,
                    help="seed of the initial weights and the batches")
    ap.add_argument("--bucket", type=_int_list, nargs="?", const=(), default=None,
                    metavar="LENGTHS",
                    help="train on sequences of a few lengths (comma-separated, at most "
                         "--seq-len; alone: a quarter, half, three quarters and all of "
                         "--seq-len), fed as PackedSequences")
    ap.add_argument("--corpus-chars", type=_positive_int, default=c.corpus_chars,
                    help="characters of standard-library docstrings to train on")
    ap.add_argument("--backend", choices=("fusedrnn", "torch"), default=c.backend,
                    help="the recurrent layer: fusedrnn.torch or torch.nn")
    ap.add_argument("--compare", action="store_true",
                    help="train with both backends on the same batches and report their speed")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("charlm_out"),
                    help="output directory (loss curve, checkpoint)")
    ap.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                    help=f"continue from a checkpoint (default: --out/{CHECKPOINT})")
    ap.add_argument("--save-every", type=_nonnegative_int, default=c.save_every,
                    help="write the checkpoint every N steps, and at the end (0: at the end)")
    ap.add_argument("--sample-every", type=_nonnegative_int, default=c.sample_every,
                    help="print a sample and the validation loss every N steps (0: never)")
    ap.add_argument("--temperatures", type=_float_list, default=(0.2, 0.5, 1.0),
                    help="sampling temperatures of the final samples (comma-separated)")
    ap.add_argument("--sample-len", type=_nonnegative_int, default=300,
                    help="characters per final sample")
    ap.add_argument("--threads", type=_positive_int, default=None,
                    help="torch's (and so fusedrnn's) thread count (default: torch's, one per "
                         "core); on a busy machine 1 can be much faster")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    return ap


def _config_from_args(ap: argparse.ArgumentParser, args) -> Config:
    bucket = args.bucket
    if bucket is not None:
        bucket = bucket or default_buckets(args.seq_len)
        if max(bucket) > args.seq_len:
            ap.error(f"argument --bucket: lengths must be at most --seq-len {args.seq_len}, got "
                     f"{','.join(map(str, bucket))}")
    if args.compare and args.resume is not None:
        ap.error("argument --compare: not allowed with --resume (a comparison starts from "
                 "scratch)")
    if args.compare and args.backend != "fusedrnn":
        ap.error("argument --compare: runs both backends; leave out --backend")
    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    return Config(hidden=args.hidden, layers=args.layers, cell=args.cell, seq_len=args.seq_len,
                  batch=args.batch, steps=args.steps, lr=lr, optimizer=args.optimizer,
                  clip=args.clip, seed=args.seed, bucket=bucket, corpus_chars=args.corpus_chars,
                  backend=args.backend, sample_every=args.sample_every,
                  save_every=args.save_every)


def main(argv=None) -> TrainResult | None:
    ap = build_parser()
    args = ap.parse_args(argv)
    cfg = _config_from_args(ap, args)
    out: pathlib.Path = args.out
    resume = None
    if args.resume is not None:
        resume = pathlib.Path(args.resume) if args.resume else out / CHECKPOINT
        if not resume.is_file():
            ap.error(f"argument --resume: no checkpoint at {resume}")

    if args.threads:
        torch.set_num_threads(args.threads)
    info, threads = fusedrnn.build_info(), torch.get_num_threads()
    print(f"fusedrnn {info['version']} ({info['blas']}, SIMD {info['simd']}), torch "
          f"{torch.__version__}, {threads} thread{'s' if threads != 1 else ''}")
    t0 = time.perf_counter()
    text = stdlib_corpus(cfg.corpus_chars)
    if len(text) - int(len(text) * VAL_FRACTION) < cfg.seq_len + 1:
        ap.error(f"argument --corpus-chars: the corpus has {len(text)} characters, too few for "
                 f"--seq-len {cfg.seq_len}")
    corpus_info = (f"corpus: {len(text):,} characters of standard-library docstrings, "
                   f"{len(set(text))} distinct ({time.perf_counter() - t0:.1f} s)")
    print(corpus_info)
    if args.compare:
        compare(cfg, text, out, progress=not args.no_progress)
        return None

    print(f"model: one-hot -> {cfg.backend} {cfg.cell.upper()} x{cfg.layers} ({cfg.hidden}) -> "
          f"Linear; {cfg.optimizer} lr {cfg.lr:g}, batch {cfg.batch}, seq-len {cfg.seq_len}"
          + (f", buckets {','.join(map(str, cfg.bucket))}" if cfg.bucket else ""))
    if resume is not None:
        try:
            problem = resume_mismatch(cfg, load_checkpoint(resume), Corpus(text))
        except (ValueError, RuntimeError, KeyError) as exc:  # not a (readable) checkpoint of ours
            problem = str(exc)
        if problem:
            ap.error(f"argument --resume: cannot continue {resume}: {problem}")
    result = train(cfg, text, out=out, resume=resume, progress=not args.no_progress)
    done = len(result.losses) - result.start_step
    first = result.losses[result.start_step]
    print(f"{done} steps{f' (from step {result.start_step})' if result.start_step else ''} in "
          f"{result.seconds:.1f} s, {result.chars_per_s:,.0f} chars/s; "
          f"loss {first:.4f} -> {result.losses[-1]:.4f}"
          + (f", validation {result.val_losses[-1][1]:.4f}" if result.val_losses else ""))
    print(f"wrote {out / CHECKPOINT}")
    png = out / "loss.png"
    if plot_losses(png, {cfg.backend: result.losses}, {cfg.backend: result.val_losses},
                   title=f"{cfg.cell.upper()} {cfg.hidden} x{cfg.layers} on stdlib docstrings"):
        print(f"wrote {png}")
    else:
        print("matplotlib is not installed: no loss curve (pip install matplotlib)")
    prime = _prime(result.corpus, cfg.seq_len)
    gen = torch.Generator()
    for temperature in args.temperatures:
        gen.manual_seed(cfg.seed)
        sample = generate(result.model, result.corpus, prime, args.sample_len, temperature, gen)
        print(f"\n--- temperature {temperature:g} ---\n{prime}|{sample}")
    return result


if __name__ == "__main__":
    main()
