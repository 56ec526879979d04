"""One training path: ``chainrule train`` and ``chainrule quickstart`` only parse their options into a
:class:`~chainrule.apps.pipeline.TrainSpec`; :func:`~chainrule.apps.pipeline.train_run` makes each
check of the run once (hyperparameters, the global batch, the run directory, the data against the
model) and sets the seed once. Each check is counted here by wrapping the function that makes it.
(The ranks of a distributed run: ``tests/test_distributed.py``.)"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import chainrule.apps.pipeline as pipeline
import chainrule.apps.rundir as rundir
import chainrule.apps.vqvae as vqvae
from chainrule.apps.pipeline import TrainSpec, train_run
from chainrule.cli import main
from chainrule.errors import InputError
from chainrule.training import TrainConfig

#: module -> the functions of it that check a training run
CHECKS = {pipeline: ["check_hyperparameters", "check_global_batch", "check_data_fits_model", "parse_num_values"],
          rundir: ["check_run_path", "check_run_state"],
          vqvae: ["check_vqvae_hyperparameters", "check_data_fits_vqvae"]}


@pytest.fixture
def calls(monkeypatch):
    """Counts of the checks made and of ``torch.manual_seed`` calls by the module that made them."""
    counts: Counter = Counter()
    for module, names in CHECKS.items():
        for name in names:
            def counted(*args, _f=getattr(module, name), _name=name, **kwargs):
                counts[_name] += 1
                return _f(*args, **kwargs)

            monkeypatch.setattr(module, name, counted)
    seed = torch.manual_seed

    def manual_seed(s):
        caller = Path(sys._getframe(1).f_code.co_filename)
        counts["seed:" + ("training" if caller.parent.name == "training" else caller.name)] += 1
        return seed(s)

    monkeypatch.setattr(torch, "manual_seed", manual_seed)
    return counts


def _bits(path: Path, n: int = 40, d: int = 5) -> Path:
    np.save(path, (np.random.default_rng(0).random((n, d)) < 0.5).astype(np.uint8))
    return path


def _once(calls: Counter, *names: str) -> None:
    assert {n: calls[n] for n in names} == {n: 1 for n in names}, dict(calls)


def test_chainrule_train_checks_each_thing_once(tmp_path, calls, capsys):
    out = tmp_path / "run"
    argv = ["train", "fvsbn", "--dataset", str(_bits(tmp_path / "bits.npy")), "--out", str(out), "--epochs", "1",
            "--max-steps", "1", "--batch-size", "8", "--no-progress", "--num-samples", "2", "--threads", "1", "--precision", "float32",
            "--no-tensorboard"]
    assert main(argv) == 0, capsys.readouterr().err
    _once(calls, "check_hyperparameters", "check_global_batch", "check_data_fits_model", "parse_num_values",
          "check_run_path", "check_run_state")
    # the seed: once by the run (before the model is built); the Trainer's fit sets its own for the loop
    assert calls["seed:pipeline.py"] == 1 and calls["seed:train.py"] == 0, dict(calls)
    assert {k for k in calls if k.startswith("seed:")} <= {"seed:pipeline.py", "seed:training"}, dict(calls)
    assert (out / "best").is_dir() and (out / "config.toml").is_file() and (out / "results.json").is_file()
    # --resume of the finished run: again one check of each
    calls.clear()
    assert main([*argv, "--resume", "--max-steps", "2"]) == 0, capsys.readouterr().err
    _once(calls, "check_hyperparameters", "check_global_batch", "check_data_fits_model", "check_run_path",
          "check_run_state")


def test_default_out_is_claimed_once_after_the_data_name_it(tmp_path, calls, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _bits(tmp_path / "bits.npy")
    assert main(["train", "fvsbn", "--dataset", str(data), "--epochs", "1", "--max-steps", "1", "--no-progress",
                 "--num-samples", "2", "--threads", "1"]) == 0, capsys.readouterr().err
    _once(calls, "check_run_path", "check_run_state", "check_data_fits_model")
    assert (tmp_path / "runs" / "fvsbn-bits" / "best").is_dir()


def test_refusals_come_before_the_data_are_read(tmp_path, calls, capsys, monkeypatch):
    """A run directory that holds a run, an unknown hyperparameter: refused once, nothing read."""
    def no_data(*args, **kwargs):
        raise AssertionError("the data were read before the refusal")

    out = tmp_path / "run"
    data = _bits(tmp_path / "bits.npy")
    train = ["train", "fvsbn", "--dataset", str(data), "--out", str(out), "--epochs", "1", "--max-steps", "1",
             "--no-progress", "--num-samples", "2", "--threads", "1"]
    assert main(train) == 0
    monkeypatch.setattr(pipeline, "load_dataset", no_data)
    calls.clear()
    capsys.readouterr()
    assert main(train) == 2
    assert "already holds a run" in capsys.readouterr().err
    _once(calls, "check_run_path", "check_run_state")
    assert main([*train, "--force", "-p", "bogus=1"]) == 2
    assert "has no hyperparameter(s) bogus" in capsys.readouterr().err


def test_quickstart_is_the_same_path(tmp_path, calls, capsys, monkeypatch):
    import importlib

    cli = importlib.import_module("chainrule.cli.main")
    monkeypatch.setitem(cli.QUICKSTART, "fvsbn", ("an FVSBN", {}, {"lr": 1e-2, "optimizer": "adam", "patience": 2}))
    out = tmp_path / "qs"
    assert main(["quickstart", "--model", "fvsbn", "--out", str(out), "--epochs", "1", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("chainrule quickstart: an FVSBN on scikit-learn's 8x8 digits"), text[:200]
    _once(calls, "check_hyperparameters", "check_global_batch", "check_data_fits_model", "check_run_path",
          "check_run_state", "seed:pipeline.py")
    assert rundir.is_quickstart_run(out)


def test_vqvae_goes_through_train_run(tmp_path, calls, capsys):
    out = tmp_path / "vq"
    assert main(["train", "vqvae", "--dataset", "digits", "--limit", "40", "--out", str(out), "--epochs", "1",
                 "--max-steps", "1", "--batch-size", "8", "--no-progress", "--threads", "1",
                 "-p", "codebook_size=8", "-p", "code_dim=4", "-p", "channels=8", "-p", "num_res_blocks=0"]) == 0, capsys.readouterr().err
    _once(calls, "check_vqvae_hyperparameters", "check_data_fits_vqvae", "check_global_batch", "check_run_path",
          "check_run_state", "seed:pipeline.py")
    assert calls["check_hyperparameters"] == calls["check_data_fits_model"] == 0
    assert (out / "codes" / "test.npy").is_file() and (out / "config.toml").is_file()
    assert main(["train", "vqvae", "--dataset", "digits", "--out", str(tmp_path / "vq2"), "--standardize"]) == 2
    assert "--standardize" in capsys.readouterr().err and not (tmp_path / "vq2").exists()


def test_train_run_spec_and_positional_forms(tmp_path):
    from chainrule.data import load_dataset

    ds = load_dataset(str(_bits(tmp_path / "bits.npy")))
    config = TrainConfig(epochs=1, max_steps=1, batch_size=8)
    a = train_run(TrainSpec("fvsbn", ds, tmp_path / "a", config=config, progress=False, num_samples=2))
    b = train_run("fvsbn", ds, tmp_path / "b", None, config, None, False, 2)
    assert a["test"] == b["test"]  # the same seed, the same run
    with pytest.raises(TypeError, match="TrainSpec holds the whole run"):
        train_run(TrainSpec("fvsbn", ds, tmp_path / "c"), config)
    with pytest.raises(InputError, match="already holds a run"):
        train_run(TrainSpec("fvsbn", str(tmp_path / "bits.npy"), tmp_path / "a", config=config, progress=False))
