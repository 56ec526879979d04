"""``chainrule train --config FILE.toml``: options from a TOML file, the command line overriding it,
and the resolved configuration stored in the run directory (``RUN/config.toml``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chainrule.cli.config import dumps_train_config
from chainrule.cli.config import load_train_config as _load
from chainrule.cli.main import build_parser, subparser


def load_train_config(path):  # noqa: ANN001, ANN201
    return _load(path, subparser(build_parser(), "train"))
from chainrule.cli import main
from chainrule.errors import InputError
from chainrule.io.checkpoint import read_config


@pytest.fixture
def toy(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "toy.npy"
    np.save(path, rng.integers(0, 2, size=(120, 6)).astype(np.int64))
    return path


def _write(path, text):
    path.write_text(text)
    return path


def _config_file(tmp_path, toy, extra=""):
    return _write(tmp_path / "run.toml", f"""
model = "made"
dataset = "{toy}"
epochs = 1
lr = 0.02
batch-size = 32
no_progress = true
num-samples = 2
patience = 0
{extra}
[hyperparameters]
hidden_sizes = [7]
num_masks = 2
order_agnostic = true
""")


def _stored(run):
    return load_train_config(run / "config.toml")


def test_config_file_sets_model_dataset_options_and_hyperparameters(tmp_path, toy):
    run = tmp_path / "run"
    assert main(["train", "--config", str(_config_file(tmp_path, toy)), "--out", str(run)]) == 0
    ckpt = read_config(run / "best")
    assert ckpt["model"] == "made"
    assert ckpt["hyperparameters"]["hidden_sizes"] == [7] and ckpt["hyperparameters"]["num_masks"] == 2
    assert ckpt["hyperparameters"]["order_agnostic"] is True
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 1
    stored = _stored(run)
    assert stored["model"] == "made" and stored["dataset"] == str(toy)
    assert stored["epochs"] == 1 and stored["lr"] == 0.02 and stored["batch_size"] == 32
    assert stored["hyperparameters"] == {"hidden_sizes": [7], "num_masks": 2, "order_agnostic": True}
    # the checkpoint's extra holds the same resolved configuration
    assert ckpt["extra"]["run_config"] == stored


def test_command_line_overrides_the_file_and_p_overrides_one_hyperparameter(tmp_path, toy):
    run = tmp_path / "run"
    assert main(["train", "--config", str(_config_file(tmp_path, toy)), "--out", str(run), "--lr", "0.005",
                 "--epochs", "2", "-p", "hidden_sizes=[5]", "-p", "seed=3"]) == 0
    stored = _stored(run)
    assert stored["lr"] == 0.005 and stored["epochs"] == 2 and stored["batch_size"] == 32  # the rest: the file's
    assert stored["hyperparameters"] == {"hidden_sizes": [5], "num_masks": 2, "order_agnostic": True, "seed": 3}
    hp = read_config(run / "best")["hyperparameters"]
    assert hp["hidden_sizes"] == [5] and hp["num_masks"] == 2 and hp["seed"] == 3
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 2


def test_positional_model_overrides_the_file(tmp_path, toy):
    cfg = _write(tmp_path / "c.toml", f'model = "made"\ndataset = "{toy}"\nepochs = 1\nno-progress = true\n'
                                      f'num-samples = 2\n')
    run = tmp_path / "run"
    assert main(["train", "fvsbn", "--config", str(cfg), "--out", str(run)]) == 0
    assert read_config(run / "best")["model"] == "fvsbn" and _stored(run)["model"] == "fvsbn"


def test_stored_config_reproduces_the_run(tmp_path, toy):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", "--config", str(_config_file(tmp_path, toy, 'order = [5, 4, 3, 2, 1, 0]\n')),
                 "--out", str(first), "--seed", "4", "-p", "seed=1"]) == 0
    assert main(["train", "--config", str(first / "config.toml"), "--out", str(second)]) == 0
    a, b = _stored(first), _stored(second)
    assert a.pop("out") == str(first) and b.pop("out") == str(second)
    assert a == b and a["seed"] == 4 and a["order"] == "[5, 4, 3, 2, 1, 0]" and a["hyperparameters"]["seed"] == 1
    ca, cb = read_config(first / "best"), read_config(second / "best")
    assert ca["hyperparameters"] == cb["hyperparameters"] and ca["hyperparameters"]["order"] == [5, 4, 3, 2, 1, 0]
    # the same run: same seeds, same data, same model -> the same test NLL
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (first, second))
    assert ra["test"]["nll_nats"] == pytest.approx(rb["test"]["nll_nats"])
    # without --out the stored config trains into the same directory: refused (it holds a run), file kept
    before = (first / "config.toml").read_text()
    assert main(["train", "--config", str(first / "config.toml")]) == 2
    assert main(["train", "--config", str(first / "config.toml"), "--force", "--grad-clip", "-1"]) == 2
    assert (first / "config.toml").read_text() == before


def test_hyphen_and_underscore_spellings(tmp_path):
    a = load_train_config(_write(tmp_path / "a.toml", "batch-size = 8\nclass-conditional = true\nmax_seconds = 5\n"))
    b = load_train_config(_write(tmp_path / "b.toml", "batch_size = 8\nclass_conditional = true\nmax-seconds = 5\n"))
    assert a == b == {"batch_size": 8, "class_conditional": True, "max_seconds": 5.0}
    assert isinstance(a["max_seconds"], float)
    with pytest.raises(InputError, match="same option"):
        load_train_config(_write(tmp_path / "c.toml", "batch-size = 8\nbatch_size = 9\n"))


def test_unknown_key_exits_2_naming_it(tmp_path, toy, capsys):
    cfg = _write(tmp_path / "c.toml", f'model = "fvsbn"\ndataset = "{toy}"\nepoch = 3\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'epoch'" in err and "did you mean 'epochs'" in err and "batch-size" in err
    assert str(cfg) in err and not (tmp_path / "run").exists()
    cfg = _write(tmp_path / "d.toml", "[hyperparams]\nhidden_sizes = [5]\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "'hyperparams'" in capsys.readouterr().err


@pytest.mark.parametrize("line, match", [
    ('epochs = "3"', "epochs must be an integer"),
    ("epochs = 2.5", "epochs must be an integer"),
    ("lr = true", "lr must be a number"),
    ("no-progress = 1", "no-progress must be a boolean"),
    ("dataset = 3", "dataset must be a string"),
    ('optimizer = "sgd"', "not one of adam"),
    ("hyperparameters = 3", "hyperparameters must be a table"),
    ("[hyperparameters]\nwhen = 1979-05-27", "hyperparameters.when must be"),
])
def test_wrong_type_exits_2(tmp_path, capsys, line, match):
    cfg = _write(tmp_path / "c.toml", f'model = "fvsbn"\n{line}\n')
    assert main(["train", "--config", str(cfg)]) == 2
    assert match in capsys.readouterr().err


def test_missing_unreadable_or_invalid_file_exits_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: no such file" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    bad = _write(tmp_path / "bad.toml", 'model = "made"\nepochs = = 3\n')
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml: invalid TOML" in err and "line 2" in err
    (tmp_path / "latin.toml").write_bytes(b'model = "caf\xe9"\n')
    assert main(["train", "--config", str(tmp_path / "latin.toml")]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_no_model_or_dataset_anywhere_is_a_clear_error(tmp_path, toy, capsys):
    assert main(["train", "--dataset", str(toy)]) == 2
    assert "no model" in capsys.readouterr().err
    cfg = _write(tmp_path / "c.toml", "epochs = 1\n")
    assert main(["train", "--config", str(cfg), "fvsbn"]) == 2
    assert "no dataset" in capsys.readouterr().err


def test_toml_writer_round_trips(tmp_path):
    config = {"model": "made", "dataset": 'we"ird\\pa\tth\x7fé', "lr": 1e-05, "min_lr": 0.0, "grad_clip": 1e20,
              "epochs": 3, "no_progress": True, "hyperparameters": {"hidden_sizes": [500, 500], "act": "relu",
                                                                   "nested": {"a": [1.5, "x"]}, "neg": -2}}
    path = _write(tmp_path / "c.toml", dumps_train_config(config))
    assert load_train_config(path) == config
    with pytest.raises(ValueError, match="None"):
        dumps_train_config({"hyperparameters": {"x": None}})


def test_train_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--config" in out and "(default: 100)" in out and "(default: 0.001)" in out
