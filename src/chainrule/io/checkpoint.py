"""Checkpoints: weights in safetensors, configuration in JSON — never pickle.

A model directory holds ``config.json`` (the model name, event shape, num_values and
hyperparameters, plus whatever the caller adds, e.g. the dataset and training settings) and
``model.safetensors``. Loading a checkpoint from a stranger cannot run code: safetensors stores
raw tensors and JSON stores plain values. Rebuilding the model from a checkpoint is
:func:`chainrule.models.registry.load` (``chainrule.load``), which sits above the models; this
module only reads and writes files.

Format versions: 2 (this one) stores the order of a model as the buffer ``order`` and an
ensemble's members under ``orders`` with the model's weights under ``model.``; version-1 files
(chainrule 0.1, where every model held an ``orders`` buffer) are upgraded on load by
:func:`upgrade_state`. A file of a newer format than this chainrule reads is refused with an error
saying so (:func:`check_version`; the trainer's ``trainer_state.json`` has its own version, checked
the same way).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from chainrule._version import __version__
from chainrule.errors import CheckpointError
from chainrule.io.outputs import umask_mode

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 2


def atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder and rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, umask_mode())  # the mode open() would give, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_version(found: Any, supported: int, where: str | Path, what: str = "format") -> int:
    """``found``, the format version a file declares, if this chainrule reads it (``<= supported``);
    otherwise a :class:`CheckpointError` naming ``where``: "written by a newer chainrule ... upgrade"
    for a larger number, "damaged" for something that is no version number."""
    if not isinstance(found, int) or isinstance(found, bool) or found < 0:
        raise CheckpointError(f"{where}: {what} version {found!r} is not a version number; the checkpoint is damaged")
    if found > supported:
        raise CheckpointError(f"{where} was written by a newer chainrule ({what} version {found}, this one reads up "
                              f"to {supported}); upgrade chainrule")
    return found


def link_or_copy_tree(src: str | Path, dst: str | Path) -> Path:
    """Make ``dst`` (which must not exist) a copy of the flat directory ``src``: hard links where the
    filesystem allows (checkpoint files are only ever replaced, never modified in place, so a link
    is as good as a copy and costs no space), copies otherwise."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            try:
                os.link(f, dst / f.name)
            except OSError:  # no hard links here (another filesystem, FAT, some network mounts)
                shutil.copy2(f, dst / f.name)
    return dst


def save_model(model: Any, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (its ``config`` and ``state_dict``) into ``directory`` (created if needed).

    ``extra`` is stored under ``"extra"`` in ``config.json`` (JSON values only).
    """
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    config = {"format": "chainrule", "format_version": FORMAT_VERSION, "chainrule_version": __version__,
              **model.config, "extra": extra or {}}
    text = json.dumps(config, indent=2)
    # safetensors refuses shared or non-contiguous storage: store plain contiguous copies.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    try:
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        atomic_write(directory / CONFIG_FILE, lambda p: Path(p).write_text(text))
    except BaseException:
        if created:  # a failed first save (full disk, read-only) leaves no empty or half checkpoint
            shutil.rmtree(directory, ignore_errors=True)
        raise
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
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({exc}); the checkpoint is damaged") from None
    if isinstance(config, dict) and "model_type" in config and "format" not in config:
        raise CheckpointError(f"{cfg_path} is a Hugging Face config (model_type {config['model_type']!r}), not a chainrule "
                              f"checkpoint; a GPT-2 directory becomes a run with: chainrule import-hf {directory} --out RUN")
    if not isinstance(config, dict) or config.get("format") != "chainrule" or "model" not in config:
        raise CheckpointError(f"{cfg_path} is not a chainrule model config (no 'format': 'chainrule' / 'model' entry)")
    check_version(config.get("format_version", 0), FORMAT_VERSION, directory)
    return config


def read_weights(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` in a checkpoint directory."""
    path = Path(directory) / WEIGHTS_FILE
    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); the checkpoint is damaged") from None


def load_matching_state(module: torch.nn.Module, state: dict[str, torch.Tensor], directory: str | Path) -> None:
    """Load ``state`` into ``module`` when its names and shapes are exactly the module's; a
    :class:`CheckpointError` naming the weights file otherwise."""
    path = Path(directory) / WEIGHTS_FILE
    expected = module.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the config: missing {sorted(missing)[:8]}, "
                              f"unexpected {sorted(unexpected)[:8]}")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match the config ({exc})") from None


def upgrade_state(state: dict[str, torch.Tensor], config: dict[str, Any], model: Any) -> dict[str, torch.Tensor]:
    """Rename the tensors of an older format to the current one (format 1 -> 2)."""
    if config.get("format_version", 1) >= 2:
        return state
    state = dict(state)
    orders = state.pop("orders", None)
    ensemble = getattr(model, "num_members", 1) > 1
    if ensemble:
        state = {f"model.{k}": v for k, v in state.items()}
        state["orders"] = orders
        state["model.order"] = orders[0]
    else:
        # format 1 read sequence models (which had no orders) in flat row-major order
        state["order"] = orders[0] if orders is not None else torch.arange(model.num_groups)
    # tensors that only gained an axis (the histogram's table became one per class)
    current = model.state_dict()
    for k, v in state.items():
        if k in current and v.shape != current[k].shape and v.numel() == current[k].numel():
            state[k] = v.reshape(current[k].shape)
    return state
