"""Inputs that used to be accepted silently: each now fails with a one-line error naming the
problem (an InputError; on the command line exit code 2 and ``chainrule: error: ...``), and
writes nothing."""

from __future__ import annotations

import math
import wave

import numpy as np
import pytest
import torch

import chainrule
from chainrule.cli import main
from chainrule.errors import InputError
from chainrule.training import TrainConfig

NAN, INF = math.nan, math.inf


def _toy_npy(path, n=120, d=6, seed=0, image=False):
    """Tiny binary data (x_j copies x_{j-1} with probability 0.9), as a .npy file."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, d, dtype=torch.long)
    x[:, 0] = torch.randint(2, (n,), generator=g)
    for j in range(1, d):
        flip = torch.rand(n, generator=g) < 0.1
        x[:, j] = torch.where(flip, 1 - x[:, j - 1], x[:, j - 1])
    arr = x.numpy()
    if image:
        arr = arr[:, :4].reshape(n, 1, 2, 2)
    np.save(path, arr)
    return path


def _train(data, out, *extra):
    return main(["train", "fvsbn", "--dataset", str(data), "--epochs", "1", "--out", str(out), "--no-progress",
                 "--num-samples", "4", *extra])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("chainrule: error: ") and "\n" not in err, err
    return err


# ---------------------------------------------------------------------- 1. TrainConfig
@pytest.mark.parametrize("field, value", [
    ("grad_clip", -1.0), ("grad_clip", 0.0), ("grad_clip", NAN), ("grad_clip", INF),
    ("weight_decay", -1.0), ("weight_decay", NAN), ("weight_decay", INF),
    ("warmup_steps", -5), ("steps_per_epoch", 0), ("steps_per_epoch", -1),
    ("max_steps", 0), ("max_steps", -3), ("max_seconds", 0.0), ("max_seconds", -1.0), ("max_seconds", NAN),
    ("patience", -1), ("min_lr", -1e-4), ("min_lr", 0.5), ("min_lr", NAN), ("eval_batch_size", 0),
    ("betas", (0.9, 1.0)), ("betas", (-0.1, 0.999)), ("betas", (0.9,)), ("betas", (NAN, 0.999)),
    ("lr", NAN), ("lr", INF), ("lr", 0.0), ("epochs", 0), ("batch_size", 0),
    ("epochs", True), ("batch_size", True), ("patience", False), ("max_steps", 2.5), ("val_components", 0),
])
def test_train_config_refuses(field, value):
    with pytest.raises(InputError, match=field) as info:
        TrainConfig(**{field: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs", [
    {}, {"grad_clip": None}, {"grad_clip": 1.0}, {"patience": None}, {"patience": 0}, {"max_seconds": INF},
    {"min_lr": 1e-3}, {"betas": [0.0, 0.5]}, {"steps_per_epoch": 1, "max_steps": 1}, {"weight_decay": 0.1},
])
def test_train_config_still_accepts(kwargs):
    TrainConfig(**kwargs)


@pytest.mark.parametrize("option, value, named", [
    ("--grad-clip", "-1", "--grad-clip"), ("--grad-clip", "0", "--grad-clip"), ("--grad-clip", "nan", "--grad-clip"),
    ("--weight-decay", "-1", "--weight-decay"), ("--warmup-steps", "-5", "--warmup-steps"),
    ("--steps-per-epoch", "0", "--steps-per-epoch"), ("--max-steps", "0", "--max-steps"),
    ("--max-seconds", "nan", "--max-seconds"), ("--patience", "-1", "--patience"),
    ("--min-lr", "1", "--min-lr"), ("--beta2", "1.0", "--beta1/--beta2"), ("--lr", "inf", "--lr"),
])
def test_cli_train_options_refused_before_anything_is_written(tmp_path, capsys, option, value, named):
    data = _toy_npy(tmp_path / "toy.npy")
    run = tmp_path / "run"
    assert _train(data, run, f"{option}={value}") == 2
    assert named in _error(capsys)
    assert not run.exists()


def test_cli_patience_zero_still_means_off(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(_toy_npy(tmp_path / "toy.npy"), run, "--patience", "0") == 0
    assert chainrule.load(run / "best").name == "fvsbn"


# ---------------------------------------------------------------------- 2. --threads
@pytest.mark.parametrize("argv", [
    ["train", "fvsbn", "--dataset", "digits", "--threads", "0"],
    ["eval", "RUN", "--threads", "-2"],
    ["sample", "RUN", "--threads", "0"],
    ["generate", "RUN", "--threads", "0"],
    ["quickstart", "--threads", "0"],
])
def test_threads_must_be_positive(tmp_path, capsys, argv):
    argv = [str(tmp_path / "nothing") if a == "RUN" else a for a in argv]
    if argv[0] == "quickstart":
        argv += ["--out", str(tmp_path / "qs")]
    n = torch.get_num_threads()
    assert main(argv) == 2
    assert "--threads must be a positive integer" in _error(capsys)
    assert torch.get_num_threads() == n
    assert not (tmp_path / "qs").exists()


# ---------------------------------------------------------------------- 3. --beam
@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    (root / "tiny.txt").write_text("abcabcabd abcab cabcab abcabc " * 20)
    run = root / "run"
    assert main(["train", "fvsbn", "--dataset", str(root / "tiny.txt"), "--block-size", "8", "--epochs", "1",
                 "--out", str(run), "--no-progress", "--num-samples", "2"]) == 0
    assert (run / "samples.txt").is_file() and not (run / "samples.png").exists()
    return run


@pytest.mark.parametrize("beam", ["0", "-1"])
def test_generate_beam_must_be_at_least_one(text_run, capsys, beam):
    assert main(["generate", str(text_run), "--prompt", "ab", "--max-new-tokens", "3", "--beam", beam]) == 2
    assert "--beam must be an integer >= 1" in _error(capsys)
    assert main(["generate", str(text_run), "--prompt", "ab", "--max-new-tokens", "3", "--beam", "1"]) == 0
    assert "log p =" in capsys.readouterr().out  # width 1 is beam search (greedy), not sampling


# ---------------------------------------------------------------------- 4. transformer hyperparameters
@pytest.mark.parametrize("param, named", [
    ("embed_dim=0", "embed_dim"), ("num_layers=0", "num_layers"), ("num_heads=0", "num_heads"),
    ("embed_dim=10", "divisible by num_heads"), ("embed_dim=true", "embed_dim"),
])
def test_transformer_hyperparameters(tmp_path, capsys, param, named):
    data = _toy_npy(tmp_path / "toy.npy")
    run = tmp_path / "run"
    assert main(["train", "transformer", "--dataset", str(data), "--epochs", "1", "--out", str(run),
                 "--no-progress", "-p", param]) == 2
    assert named in _error(capsys)
    assert not run.exists()
    key, value = param.split("=")
    with pytest.raises(InputError, match=named):
        chainrule.create_model("transformer", (6,), 2, **{key: {"true": True}.get(value) or int(value)})


# ---------------------------------------------------------------------- 5. histogram alpha
@pytest.mark.parametrize("alpha", [NAN, -1.0, INF, True, "nan"])
def test_histogram_alpha(alpha):
    with pytest.raises(InputError, match="alpha must be a finite number >= 0"):
        chainrule.create_model("histogram", (4,), 2, alpha=alpha)


def test_cli_histogram_alpha(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "histogram", "--dataset", str(_toy_npy(tmp_path / "toy.npy")), "--out", str(run),
                 "--no-progress", "-p", "alpha=NaN"]) == 2
    assert "alpha must be a finite number >= 0" in _error(capsys)
    assert not run.exists()


# ---------------------------------------------------------------------- 6. sample --out
@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("image")
    run = root / "run"
    assert _train(_toy_npy(root / "img.npy", image=True), run) == 0
    assert (run / "samples.png").is_file()
    return run


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vector")
    run = root / "run"
    assert _train(_toy_npy(root / "toy.npy"), run) == 0
    return run


def _listing(d):
    return sorted(p.name for p in d.iterdir())


@pytest.mark.parametrize("name, fmt", [("s.png", "PNG"), ("s.jpg", "JPEG"), ("s.JPEG", "JPEG"), ("s.npy", None)])
def test_sample_writes_the_file_asked_for_image(image_run, tmp_path, capsys, name, fmt):
    from PIL import Image

    assert main(["sample", str(image_run), "-n", "4", "--out", str(tmp_path / name)]) == 0
    assert _listing(tmp_path) == [name]
    if fmt is None:
        assert np.load(tmp_path / name).shape == (4, 1, 2, 2)
    else:
        assert Image.open(tmp_path / name).format == fmt


def test_sample_text_and_audio_formats(text_run, tmp_path, capsys):
    assert main(["sample", str(text_run), "-n", "2", "--out", str(tmp_path / "s.txt")]) == 0
    assert "----------" in (tmp_path / "s.txt").read_text()
    assert main(["sample", str(text_run), "-n", "2", "--out", str(tmp_path / "ids.npy")]) == 0
    assert np.load(tmp_path / "ids.npy").shape == (2, 8)
    assert _listing(tmp_path) == ["ids.npy", "s.txt"]
    capsys.readouterr()  # the sampling bars of the draws above
    assert main(["sample", str(text_run), "-n", "2", "--out", str(tmp_path / "s.png")]) == 2
    err = _error(capsys)
    assert "s.png" in err and ".txt or .npy" in err


def test_sample_audio_writes_wav(tmp_path, capsys):
    from chainrule.data import write_wav

    write_wav(tmp_path / "tone.wav", 0.5 * torch.sin(torch.arange(4000) * 0.05), 8000)
    run = tmp_path / "run"
    assert main(["train", "fvsbn", "--dataset", str(tmp_path / "tone.wav"), "--block-size", "8", "--epochs", "1",
                 "--steps-per-epoch", "2", "--out", str(run), "--no-progress", "--num-samples", "2"]) == 0
    assert (run / "samples.wav").is_file()
    out = tmp_path / "out"
    assert main(["sample", str(run), "-n", "2", "--out", str(out / "a.wav")]) == 0
    with wave.open(str(out / "a.wav")) as w:
        assert w.getframerate() == 8000
    capsys.readouterr()  # the sampling bar of the draw above
    assert main(["sample", str(run), "-n", "2", "--out", str(out / "a.jpg")]) == 2
    assert ".wav or .npy" in _error(capsys)
    assert _listing(out) == ["a.wav"]


@pytest.mark.parametrize("name", ["samples.jpg", "samples.gif", "samples", "samples.txt"])
def test_sample_refuses_an_extension_the_run_cannot_be_written_as(vector_run, tmp_path, capsys, name):
    assert main(["sample", str(vector_run), "-n", "2", "--out", str(tmp_path / name)]) == 2
    err = _error(capsys)
    assert "--out" in err and name in err and ".npy" in err
    assert _listing(tmp_path) == []


def test_sample_refuses_gif_for_an_image_run(image_run, tmp_path, capsys):
    assert main(["sample", str(image_run), "-n", "2", "--out", str(tmp_path / "s.gif")]) == 2
    assert ".png or .jpg or .jpeg or .npy" in _error(capsys)
    assert _listing(tmp_path) == []


# ---------------------------------------------------------------------- 7. train --out over a run
def _snapshot(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_train_refuses_an_existing_run_and_force_replaces_only_its_files(tmp_path, capsys):
    data = _toy_npy(tmp_path / "toy.npy")
    run = tmp_path / "run"
    assert _train(data, run) == 0
    (run / "notes.md").write_text("mine")
    (run / "extra").mkdir()
    (run / "extra" / "keep.npy").write_bytes(b"x")
    (run / "samples.csv").write_text("not chainrule's")
    before = _snapshot(run)
    capsys.readouterr()
    # refused: exit 2, one line naming the directory and both ways out, nothing touched
    assert _train(data, run, "--seed", "1") == 2
    err = _error(capsys)
    assert f"{run} already holds a run" in err and "--resume" in err and "--force" in err
    assert _snapshot(run) == before
    # a directory with only a log.csv (a run killed before its first checkpoint) holds nothing to keep:
    # the run is simply started again (issue 20)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "log.csv").write_text("epoch\n")
    assert _train(data, partial) == 0 and (partial / "best").is_dir()
    capsys.readouterr()
    # --resume and --force together: refused
    assert _train(data, run, "--resume", "--force") == 2 and "--resume" in _error(capsys)
    # --force: the old run's files are replaced, the user's files survive
    (run / "samples.png").write_bytes(b"stale")  # a samples.* the new (non-image) run does not write
    assert _train(data, run, "--force", "--seed", "1", "--epochs", "2") == 0
    out = capsys.readouterr().out
    assert "replacing the previous run" in out
    assert (run / "notes.md").read_text() == "mine"
    assert (run / "extra" / "keep.npy").read_bytes() == b"x"
    assert (run / "samples.csv").read_text() == "not chainrule's"
    assert not (run / "samples.png").exists()
    assert len((run / "log.csv").read_text().strip().splitlines()) == 1 + 2  # header + the new run's 2 epochs
    assert chainrule.load(run / "best").name == "fvsbn"
    # --force on a fresh directory is fine, --resume still continues
    assert _train(data, tmp_path / "fresh", "--force") == 0
    assert _train(data, run, "--resume", "--epochs", "3") == 0


def test_refused_force_is_checked_before_deleting(tmp_path, capsys):
    """--force with a bad option deletes nothing: the old run is removed only once the model is built."""
    data = _toy_npy(tmp_path / "toy.npy")
    run = tmp_path / "run"
    assert _train(data, run) == 0
    before = _snapshot(run)
    assert _train(data, run, "--force", "--grad-clip", "-1") == 2
    assert main(["train", "transformer", "--dataset", str(data), "--out", str(run), "--force", "--no-progress",
                 "-p", "embed_dim=0"]) == 2
    assert _snapshot(run) == before


def test_train_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert _train(_toy_npy(tmp_path / "toy.npy"), tmp_path / "f") == 2
    assert "is a file" in _error(capsys)
    assert (tmp_path / "f").read_text() == "x"


def test_train_run_api_refuses_too(tmp_path):
    from chainrule.apps.pipeline import train_run
    from chainrule.data import load_dataset

    data = _toy_npy(tmp_path / "toy.npy")
    ds = load_dataset(str(data))
    config = TrainConfig(epochs=1)
    train_run("fvsbn", ds, tmp_path / "run", config=config, progress=False, num_samples=2)
    with pytest.raises(InputError, match="already holds a run"):
        train_run("fvsbn", ds, tmp_path / "run", config=config, progress=False, num_samples=2)
    train_run("fvsbn", ds, tmp_path / "run", config=config, progress=False, num_samples=2, force=True)


def test_quickstart_replaces_its_own_run_but_not_another(tmp_path, capsys, monkeypatch):
    """quickstart's directory is its own: its previous run there is replaced without --force; a run
    that `chainrule train` wrote is refused unless --force."""
    import importlib

    cli = importlib.import_module("chainrule.cli.main")
    monkeypatch.setitem(cli.QUICKSTART, "fvsbn", ("an FVSBN", {}, {"lr": 1e-2, "optimizer": "adam", "patience": 2}))
    qs = tmp_path / "qs"

    def quickstart(*extra, out=qs):
        return main(["quickstart", "--model", "fvsbn", "--out", str(out), "--epochs", "1", "--no-progress", *extra])

    assert quickstart() == 0
    (qs / "mine.txt").write_text("keep")
    assert quickstart() == 0  # its own previous run: replaced
    assert (qs / "mine.txt").read_text() == "keep" and (qs / "log.csv").read_text().count("\n") == 2
    other = tmp_path / "other"
    assert _train(_toy_npy(tmp_path / "toy.npy"), other) == 0
    before = _snapshot(other)
    capsys.readouterr()
    assert quickstart(out=other) == 2
    assert "already holds a run" in _error(capsys) and _snapshot(other) == before
    assert quickstart("--force", out=other) == 0
    assert chainrule.load(other / "best").shape == (1, 8, 8)  # the digits run replaced the toy run
