"""Checkpoints: weights in safetensors, configuration in JSON — never pickle.

A model directory holds ``config.json`` (the model name, event shape, num_values and
hyperparameters, plus whatever the caller adds, e.g. the dataset and training settings) and
``model.safetensors``. Loading a checkpoint from a stranger cannot run code: safetensors stores
raw tensors and JSON stores plain values.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from chainrule import __version__
from chainrule.errors import CheckpointError
from chainrule.models.base import AutoregressiveModel
from chainrule.models.registry import create_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder and rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: AutoregressiveModel, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` into ``directory`` (created if needed); returns the directory path.

    ``extra`` is stored under ``"extra"`` in ``config.json`` (JSON values only).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"format": "chainrule", "format_version": FORMAT_VERSION, "chainrule_version": __version__,
              **model.config, "extra": extra or {}}
    text = json.dumps(config, indent=2)
    # safetensors refuses shared or non-contiguous storage: store plain contiguous copies.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    _atomic_write(directory / CONFIG_FILE, lambda p: Path(p).write_text(text))
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint directory, checked to be one of chainrule's."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; expected a chainrule checkpoint directory "
                              f"containing {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not cfg_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{directory} is not a chainrule checkpoint: expected {CONFIG_FILE} and {WEIGHTS_FILE} in it")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({exc}); the checkpoint is damaged") from None
    if not isinstance(config, dict) or config.get("format") != "chainrule" or "model" not in config:
        raise CheckpointError(f"{cfg_path} is not a chainrule model config (no 'format': 'chainrule' / 'model' entry)")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{directory} was written by a newer chainrule (format {config['format_version']}); upgrade chainrule")
    return config


def load(directory: str | Path, map_location: str | torch.device = "cpu") -> AutoregressiveModel:
    """Load a model saved by :meth:`AutoregressiveModel.save` (or the trainer) from ``directory``."""
    directory = Path(directory)
    config = read_config(directory)
    try:
        model = create_model(config["model"], tuple(config["shape"]), config.get("num_values"),
                             **config.get("hyperparameters", {}))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: cannot rebuild the model ({exc})") from None
    try:
        state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} is not a readable safetensors file ({exc}); the checkpoint is damaged") from None
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} does not match the config: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} does not match the config ({exc})") from None
    return model.to(map_location).eval()
