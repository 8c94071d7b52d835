"""The character-level language model example (fusedrnn.examples.charlm): runs end to end, learns,
resumes exactly, and runs with torch.nn, --compare and --bucket. Small sizes: the file takes
seconds. The progress output is tested both with tqdm and with the plain fallback lines."""

import dataclasses
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fusedrnn.examples import charlm

SMOKE = ["--hidden", "16", "--seq-len", "12", "--batch", "8", "--corpus-chars", "20000",
         "--sample-len", "30", "--steps", "6"]


@pytest.fixture(scope="module")
def text():
    return charlm.stdlib_corpus(30000)


@pytest.fixture(params=["tqdm", "plain"])
def progress_kind(request, monkeypatch):
    """Runs a test with tqdm (when installed) and with the plain fallback (tqdm unimportable)."""
    if request.param == "tqdm":
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)
    return request.param


def test_corpus_is_deterministic_and_capped():
    a, b = charlm.stdlib_corpus(5000), charlm.stdlib_corpus(5000)
    assert a == b and len(a) == 5000
    assert all(c == "\n" or " " <= c <= "~" for c in a)


def test_smoke_end_to_end(tmp_path, capsys, progress_kind):
    result = charlm.main(SMOKE + ["--out", str(tmp_path), "--sample-every", "3"])
    assert len(result.losses) == 6 and np.all(np.isfinite(result.losses))
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file
    ckpt = charlm.load_checkpoint(tmp_path / charlm.CHECKPOINT)
    assert ckpt["step"] == 6 and ckpt["losses"] == result.losses
    out = capsys.readouterr()
    for t in ("0.2", "0.5", "1"):
        assert f"--- temperature {t} ---" in out.out
    assert "--- step 3: validation loss" in out.out + out.err
    if progress_kind == "plain":
        assert "step 6/6" in out.out and "chars/s" in out.out


def test_loss_decreases(text):
    cfg = charlm.Config(hidden=32, seq_len=20, batch=16, steps=200, seed=1, lr=0.01)
    losses = charlm.train(cfg, text, progress=False).losses
    assert len(losses) == 200 and np.all(np.isfinite(losses))
    # uniform guessing over the ~90 characters is ln(90) = 4.5; 200 steps reach about 2.6
    assert np.mean(losses[-20:]) < 0.75 * np.mean(losses[:5])


@pytest.mark.parametrize("bucket", [None, (4, 8, 12)], ids=["fixed", "bucket"])
def test_resume_gives_the_uninterrupted_losses(tmp_path, text, bucket):
    cfg = charlm.Config(hidden=16, seq_len=12, batch=8, steps=10, seed=3, bucket=bucket,
                        save_every=0)
    full = charlm.train(cfg, text, progress=False).losses
    again = charlm.train(cfg, text, progress=False).losses
    assert again == full  # a fixed seed reproduces the run
    charlm.train(dataclasses.replace(cfg, steps=4), text, out=tmp_path, progress=False)
    resumed = charlm.train(cfg, text, out=tmp_path, resume=tmp_path / charlm.CHECKPOINT,
                           progress=False)
    assert resumed.start_step == 4
    assert resumed.losses[:4] == full[:4]  # restored from the checkpoint
    np.testing.assert_allclose(resumed.losses[4:], full[4:], rtol=0, atol=1e-6)


def test_resume_through_main(tmp_path, capsys):
    charlm.main(SMOKE + ["--out", str(tmp_path), "--steps", "3", "--no-progress"])
    result = charlm.main(SMOKE + ["--out", str(tmp_path), "--resume", "--no-progress"])
    assert result.start_step == 3 and len(result.losses) == 6
    assert "(from step 3)" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # another model than the checkpoint's
        charlm.main(SMOKE + ["--out", str(tmp_path), "--resume", "--hidden", "8", "--steps", "9"])
    assert "--hidden 16 (this run: 8)" in capsys.readouterr().err


def test_torch_backend_and_compare(tmp_path, capsys):
    result = charlm.main(SMOKE + ["--out", str(tmp_path), "--backend", "torch", "--cell", "gru",
                                  "--no-progress"])
    assert isinstance(result.model.rnn, torch.nn.GRU)
    assert (tmp_path / "loss.png").exists() and (tmp_path / charlm.CHECKPOINT).exists()
    charlm.main(SMOKE + ["--out", str(tmp_path), "--compare", "--no-progress"])
    out = capsys.readouterr().out
    assert "speed ratio fusedrnn / torch.nn:" in out
    assert (tmp_path / "loss_compare.png").stat().st_size > 0


def test_backends_start_from_the_same_weights(text):
    cfg = charlm.Config(hidden=16, seq_len=12, batch=8, steps=3)
    a = charlm.build_model(50, cfg, "fusedrnn").state_dict()
    b = charlm.build_model(50, cfg, "torch").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    f = charlm.train(cfg, text, progress=False).losses
    t = charlm.train(dataclasses.replace(cfg, backend="torch"), text, progress=False).losses
    np.testing.assert_allclose(f, t, rtol=1e-5)


def test_bucket_smoke(tmp_path, capsys):
    result = charlm.main(SMOKE + ["--out", str(tmp_path), "--bucket", "--no-progress"])
    assert np.all(np.isfinite(result.losses)) and (tmp_path / "loss.png").exists()
    assert "buckets 3,6,9,12" in capsys.readouterr().out
    sampler = charlm.WindowSampler(1000, 12, 64, seed=0, buckets=(3, 6, 12))
    starts, lengths = sampler.next_batch()
    assert set(lengths.tolist()) == {3, 6, 12} and starts.max() <= 1000 - 13


@pytest.mark.parametrize("args, message", [
    (["--hidden", "0"], "argument --hidden: expected a positive integer, got '0'"),
    (["--lr", "-1"], "argument --lr: expected a number > 0"),
    (["--cell", "rnn"], "argument --cell: invalid choice"),
    (["--bucket", "5,50"], "argument --bucket: lengths must be at most --seq-len 12"),
    (["--bucket", "a,b"], "argument --bucket: expected comma-separated positive integers"),
    (["--compare", "--resume"], "argument --compare: not allowed with --resume"),
    (["--resume", "nowhere.pt"], "argument --resume: no checkpoint at nowhere.pt"),
    (["--corpus-chars", "10"], "argument --corpus-chars: the corpus has 10 characters"),
])
def test_bad_options(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        charlm.main(SMOKE + args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
