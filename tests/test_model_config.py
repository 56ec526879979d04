"""Model hyperparameters are declared once per model (``chainrule.models.config``): the constraints
and their messages, ``model.hparams``, and the former spellings of renamed hyperparameters (a call
warns, the command line says so in one line, a saved config loads silently). The per-model checks
over every registered model live in the registry suite (tests/test_registry.py)."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

import chainrule
from chainrule.cli import main
from chainrule.errors import InputError
from chainrule.io.checkpoint import read_config
from chainrule.models.config import (
    ModelConfig,
    centred_kernel,
    flag,
    integer,
    non_negative,
    non_negative_number,
    one_of,
    positive,
    probability,
    seed,
    sizes,
)


@dataclasses.dataclass(frozen=True)
class Everything(ModelConfig):
    layers: int = positive()
    blocks: int = non_negative()
    taps: int = integer(2)
    steps: int | None = positive(optional=True)
    kernel: int = centred_kernel()
    widths: tuple[int, ...] = sizes(example="[8, 8]")
    rate: float = probability()
    alpha: float = non_negative_number()
    bias: bool = flag()
    seed: int = seed()
    act: str = one_of("relu", gelu="exact")

    def check(self) -> None:
        if self.layers < len(self.widths):
            raise InputError(f"layers={self.layers} must be at least len(widths)={len(self.widths)}")


GOOD = dict(layers=2, blocks=0, taps=2, steps=None, kernel=3, widths=[8, 8], rate=0.0, alpha=0, bias=1, seed=7,
            act="gelu")


def test_a_valid_config_keeps_the_validated_values():
    c = Everything(**GOOD)
    assert c.widths == (8, 8) and c.bias is True and c.rate == 0.0 and c.steps is None
    assert Everything.describe()["kernel"] == "a positive integer, odd"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.layers = 3  # type: ignore[misc]


@pytest.mark.parametrize("field,value,message", [
    ("layers", 0, "layers must be a positive integer, got 0"),
    ("layers", True, "layers must be a positive integer, got True"),
    ("layers", 2.0, "layers must be a positive integer, got 2.0"),
    ("blocks", -1, "blocks must be a non-negative integer, got -1"),
    ("taps", 1, "taps must be an integer >= 2, got 1"),
    ("steps", 0, "steps must be a positive integer or None, got 0"),
    ("kernel", 4, r"kernel must be odd \(the kernel is centred on the pixel\), got 4"),
    ("widths", 8, r"widths must be a list of positive integers \(at least one\), e.g. \[8, 8\], got 8"),
    ("widths", [], "widths must be a list"),
    ("widths", "88", "widths must be a list"),
    ("widths", [8, 0], "widths must be a list"),
    ("rate", 1.0, r"rate must be a probability in \[0, 1\), got 1.0"),
    ("rate", float("nan"), "rate must be a probability"),
    ("rate", "0.5", "rate must be a probability"),
    ("alpha", float("inf"), "alpha must be a finite number >= 0, got inf"),
    ("bias", 2, "bias must be true or false, got 2"),
    ("bias", "yes", "bias must be true or false"),
    ("seed", -1, r"seed must be an integer in 0..2\*\*63-1, got -1"),
    ("seed", 1 << 63, r"seed must be an integer in 0..2\*\*63-1"),
    ("act", "tanh", r"act must be one of 'relu', 'gelu' \(exact\), got 'tanh'"),
    ("layers", 1, r"layers=1 must be at least len\(widths\)=2"),  # the rule between fields
])
def test_every_constraint_names_the_hyperparameter_and_what_it_must_be(field, value, message):
    with pytest.raises(InputError, match=f"^{message}"):
        Everything(**{**GOOD, field: value})


def test_the_model_keeps_its_validated_config():
    model = chainrule.create_model("transformer", (6,), 2, num_layers=1, num_heads=2, embed_dim=8)
    assert model.hparams == chainrule.models.transformer.TransformerConfig(
        num_layers=1, num_heads=2, embed_dim=8, dropout=0.0, bias=False, tie_weights=True, activation="gelu")
    assert model.config["hyperparameters"]["num_layers"] == 1  # the checkpoint's JSON description is unchanged
    with pytest.raises(InputError, match="embed_dim=6 must be divisible by num_heads=4"):
        chainrule.create_model("transformer", (6,), 2, embed_dim=6, num_heads=4)
    with pytest.raises(InputError, match="num_masks must be a positive integer, got 0"):
        chainrule.models.made.MADE((4,), 2, num_masks=0)  # the class itself, not only create_model


def test_former_names_are_known_hyperparameters():
    from chainrule.models.registry import check_hyperparameters

    check_hyperparameters("pixelcnn", {"num_blocks": 2})  # accepted for a release ...
    with pytest.raises(InputError, match="no hyperparameter"):
        check_hyperparameters("gated_pixelcnn", {"num_blocks": 2})  # ... by the model that had it only


def test_a_renamed_hyperparameter_warns_at_the_callers_line():
    with pytest.warns(DeprecationWarning, match="num_blocks= of model 'pixelcnn' is deprecated.*use num_layers=") as rec:
        chainrule.create_model("pixelcnn", (1, 3, 3), 2, channels=4, num_blocks=1, head_channels=4, first_kernel_size=3)
    assert rec[0].filename == __file__  # points at the line to change, not inside chainrule


def _binary_images(path, n: int = 40):
    x = (np.random.default_rng(0).random((n, 1, 4, 4)) < 0.3).astype(np.uint8)
    np.save(path, x)
    return path


def test_cli_says_a_former_name_in_one_line_and_records_the_new_one(tmp_path, capsys):
    data = _binary_images(tmp_path / "bits.npy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the CLI maps it before the library sees it
        code = main(["train", "pixelcnn", "--dataset", str(data), "--epochs", "1", "--out", str(tmp_path / "run"),
                     "--no-progress", "--num-samples", "1", "--threads", "1", "-p", "channels=4", "-p",
                     "num_blocks=1", "-p", "head_channels=4", "-p", "first_kernel_size=3"])
    err = capsys.readouterr().err
    assert code == 0, err
    warned = [line for line in err.splitlines() if "deprecated" in line]
    assert warned == ["chainrule: warning: -p num_blocks is deprecated: use -p num_layers (the same hyperparameter)"]
    hp = read_config(tmp_path / "run" / "best")["hyperparameters"]
    assert hp["num_layers"] == 1 and "num_blocks" not in hp
    assert "num_layers = 1" in (tmp_path / "run" / "config.toml").read_text()


def test_a_checkpoint_with_former_names_loads_silently(tmp_path):
    model = chainrule.create_model("pixelcnnpp", (1, 3, 4), 2, channels=4, num_resnets=1, num_resolutions=2)
    model.save(tmp_path / "ck")
    path = tmp_path / "ck" / "config.json"
    cfg = json.loads(path.read_text())
    cfg["hyperparameters"]["filters"] = cfg["hyperparameters"].pop("channels")
    path.write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = chainrule.load(tmp_path / "ck")
    assert loaded.hparams.channels == 4 and loaded.config == model.config


def test_a_run_saved_with_former_names_resumes(tmp_path, capsys):
    """A run whose last/ was written before the rename is the same model: --resume continues it."""
    out = tmp_path / "run"
    args = ["train", "pixelcnn", "--dataset", "digits", "--out", str(out), "-p", "num_layers=1", "-p", "channels=4",
            "--steps-per-epoch", "2", "--no-progress", "--threads", "1", "--num-samples", "1", "--precision", "float32"]
    assert main(args + ["--epochs", "1"]) == 0
    for cfg_path in (out / "last" / "config.json", out / "best" / "config.json"):
        cfg = json.loads(cfg_path.read_text())
        cfg["hyperparameters"]["num_blocks"] = cfg["hyperparameters"].pop("num_layers")
        cfg_path.write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    assert "different model" not in capsys.readouterr().err
    assert read_config(out / "last")["hyperparameters"]["num_layers"] == 1
    assert len((out / "log.csv").read_text().splitlines()) == 3  # header + both epochs


def test_models_help_says_what_each_hyperparameter_takes(capsys):
    from chainrule.models.registry import hyperparameter_help

    rows = {hp: text for hp, _, text in hyperparameter_help("pixelcnn")}
    assert rows["num_layers"].endswith("[a non-negative integer]")
    assert rows["kernel_size"].endswith("[a positive integer, odd]")
    assert not rows["order"].endswith("]")  # the common options are the base's, not the config's
    assert main(["models", "transformer"]) == 0
    assert "[a probability in [0, 1)]" in capsys.readouterr().out


@pytest.mark.parametrize("kw,message", [
    ({"codebook_size": 1}, "codebook_size must be an integer >= 2, got 1"),
    ({"ema_decay": 1.0}, r"ema_decay must be a number in \[0, 1\), got 1.0"),
    ({"beta": float("nan")}, "beta must be a finite number >= 0"),
    ({"codebook": "kmeans"}, "codebook must be one of 'ema', 'loss', got 'kmeans'"),
    ({"num_res_blocks": -1}, "num_res_blocks must be a non-negative integer, got -1"),
])
def test_the_vqvae_declares_its_hyperparameters_the_same_way(kw, message):
    from chainrule.latent.vqvae import VQVAE

    assert VQVAE((1, 4, 4), 2, channels=4, code_dim=2, codebook_size=4).hparams.codebook_size == 4
    with pytest.raises(InputError, match=f"^{message}"):
        VQVAE((1, 4, 4), 2, **kw)


def test_an_ensemble_shows_its_models_config():
    e = chainrule.create_model("nade", (4,), 2, hidden_size=4, num_orders=3)
    assert e.num_members == 3 and e.hparams.num_orders == 3 and e.hparams is e.base_model.hparams
