"""A training run's directory on disk: ``last/`` (what a resume continues from), the kept
``checkpoints/step-N/``, and what a fresh run clears. Files only: what goes into them is
:mod:`chainrule.training.state`'s, the loop that writes them :class:`chainrule.training.Trainer`.

``RUN/last/`` holds a model checkpoint (``config.json`` + ``model.safetensors``, as ``best/``) and
the trainer's state: ``trainer_state.safetensors`` (the optimizer's tensors as
``optimizer.<param>.<name>``, the best weights so far as ``best.<name>``, the random-number
generators as ``rng.*``) and ``trainer_state.json`` (the format ``version``, the counters, the
optimizer's param groups and scalars, the history). It is written into ``last.tmp/``
(``trainer_state.json`` last, atomically: its presence marks a complete checkpoint), then swapped in
by renames (:func:`write_last`), so that a process killed anywhere leaves a state
:func:`recover_last` brings back. With ``keep_last = K > 1`` the K most recent ones are also kept as
``RUN/checkpoints/step-000123/`` (:func:`keep_checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from chainrule.errors import CheckpointError
from chainrule.io.checkpoint import atomic_write, check_version, link_or_copy_tree, read_config, save_model

LAST_DIR = "last"
CHECKPOINTS_DIR = "checkpoints"  # RUN/checkpoints/step-000123/ with keep_last > 1
TENSORBOARD_DIR = "tensorboard"
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
#: The version of ``trainer_state.json``: 1 (no ``version`` key) counted epochs from 0 in the
#: history and ``best_epoch``; 2 counts them from 1 (upgraded on load).
STATE_VERSION = 2
_STEP_DIR = re.compile(r"step-(\d+)")


def complete_checkpoint(d: Path) -> bool:
    """True when ``d`` holds every file of a ``last/`` checkpoint; ``trainer_state.json`` is written
    last (and atomically), so its presence means the others were written before it."""
    return all((d / f).is_file() for f in (STATE_JSON, STATE_TENSORS, "config.json", "model.safetensors"))


def recover_last(out_dir: str | Path) -> Path | None:
    """Bring ``out_dir/last/`` back after a write of it was interrupted; returns it, or None when
    the run has no complete checkpoint to resume.

    :func:`write_last` writes ``last.tmp/`` (``trainer_state.json`` last), then renames ``last/``
    to ``last.old/`` and ``last.tmp/`` to ``last/``, then removes ``last.old/``. A process killed
    anywhere leaves one of these states, each recovered here:

    1. ``last/`` complete (with or without a partial or complete ``last.tmp/``, a ``last.old/``):
       ``last/`` is the checkpoint; the others are removed.
    2. no ``last/``, ``last.tmp/`` complete (killed between the two renames; or, after a resume from
       ``last.old/``, killed again once ``last.old/`` was removed): ``last.tmp/`` is the newest
       checkpoint and becomes ``last/``.
    3. no ``last/``, ``last.tmp/`` partial or absent, ``last.old/`` complete: ``last.old/`` becomes
       ``last/``.
    4. nothing complete (killed before the first checkpoint was written): None; the run starts again.
    """
    out_dir = Path(out_dir)
    last, tmp, old = out_dir / LAST_DIR, out_dir / f"{LAST_DIR}.tmp", out_dir / f"{LAST_DIR}.old"
    if complete_checkpoint(last):
        for d in (tmp, old):
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d, ignore_errors=True)
        return last
    for chosen in (tmp, old):
        if chosen.is_dir() and not chosen.is_symlink() and complete_checkpoint(chosen):
            if last.is_dir() and not last.is_symlink():  # a damaged last/ (never left by the protocol)
                shutil.rmtree(last)
            chosen.rename(last)
            for d in (tmp, old):
                if d.is_dir() and not d.is_symlink():
                    shutil.rmtree(d, ignore_errors=True)
            return last
    return None


def optimizer_files(opt: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's ``state_dict()`` as files: its tensors (``optimizer.<param>.<name>``, for the
    safetensors file) and the rest (``param_groups`` and the per-parameter ``scalars``, for JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt["state"].items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optimizer.{idx}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": opt["param_groups"], "scalars": scalars}


def optimizer_state(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> dict[str, Any]:
    """The optimizer ``state_dict`` that :func:`optimizer_files` stored (``saved``: its JSON part)."""
    opt_state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = v
    for idx, sc in saved["scalars"].items():
        opt_state.setdefault(int(idx), {}).update(sc)
    return {"state": opt_state, "param_groups": saved["param_groups"]}


def write_last(out_dir: Path, model: Any, extra: dict[str, Any], tensors: dict[str, torch.Tensor],
               state: dict[str, Any]) -> Path:
    """Write ``out_dir/last/``: the model (``extra`` in its ``config.json``), ``tensors`` as
    ``trainer_state.safetensors`` and ``state`` (JSON values; the format version is added) as
    ``trainer_state.json``. Written into ``last.tmp/`` and swapped in by renames, so an
    interruption while writing leaves the previous ``last/`` (or ``last.old/``) intact."""
    tmp = out_dir / f"{LAST_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, extra=extra)
    atomic_write(tmp / STATE_TENSORS, lambda p: save_file(tensors, p))
    state_json = {"version": STATE_VERSION, **state}
    # written last and atomically: its presence marks a complete checkpoint (recover_last)
    atomic_write(tmp / STATE_JSON, lambda p: Path(p).write_text(json.dumps(state_json, indent=1)))
    last, old = out_dir / LAST_DIR, out_dir / f"{LAST_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if last.exists():
        last.rename(old)
    tmp.rename(last)
    shutil.rmtree(old, ignore_errors=True)
    return last


def read_last_state(out_dir: Path, model_config: dict[str, Any],
                    current_names: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                    ) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """``out_dir/last/``'s ``config.json`` and ``trainer_state.json`` (upgraded to the current
    version), checked before anything is used: the same model as ``model_config`` describes, a
    version this chainrule reads, sound counters. ``current_names`` maps a saved config's
    hyperparameters to their current spelling before the comparison (a run saved before a rename is
    the same model). Returns ``(last, saved config, state)``."""
    last = out_dir / LAST_DIR
    if not (last / STATE_JSON).is_file():
        raise CheckpointError(f"nothing to resume in {out_dir}: no {LAST_DIR}/{STATE_JSON} "
                              "(written after every epoch by runs with save_last=True)")
    saved = read_config(last)
    if current_names is not None:
        saved = current_names(saved)
    for key in ("model", "shape", "num_values", "hyperparameters"):
        if json_roundtrip(saved.get(key)) != json_roundtrip(model_config.get(key)):
            raise CheckpointError(f"{last} holds a different model ({key}: {saved.get(key)!r}, "
                                  f"this trainer's: {model_config.get(key)!r}); resume with the same model")
    try:
        state = json.loads((last / STATE_JSON).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{last} is damaged ({exc}); cannot resume from it") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{last / STATE_JSON} is damaged (not a JSON object); cannot resume from it")
    # before anything else is read: a newer layout may mean anything
    version = check_version(state.get("version", 1), STATE_VERSION, last / STATE_JSON, "trainer state")
    _check_counters(state, last / STATE_JSON)
    if version < 2:  # version 1 counted epochs from 0 (best_epoch -1: none yet)
        res = state["result"]
        res["history"] = [{**row, "epoch": row["epoch"] + 1} for row in res["history"]]
        res["best_epoch"] += 1
    return last, saved, state


def read_last_tensors(last: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``last/``'s trainer-state tensors and model weights (a damaged file: a :class:`CheckpointError`)."""
    try:
        return load_file(str(last / STATE_TENSORS)), load_file(str(last / "model.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{last} is damaged ({exc}); cannot resume from it") from None


def _check_counters(state: dict[str, Any], where: Path) -> None:
    """The counters of a ``trainer_state.json``, checked before they are used: a forged or damaged
    file (a negative step, an epoch count that is not an integer) is refused, never continued."""
    def bad(key: str, expected: str) -> CheckpointError:
        return CheckpointError(f"{where}: {key} {state.get(key)!r} is not {expected}; the checkpoint is damaged")

    for key in ("epochs_done", "step", "bad_epochs", "batch", "epoch_count"):
        v = state.get(key, 0)
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0:
            raise bad(key, "an integer >= 0")
    for key in ("lr_scale", "epoch_nll_sum"):
        v = state.get(key, 0.0 if key == "epoch_nll_sum" else 1.0)
        if (not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v)
                or (key == "lr_scale" and v <= 0)):
            raise bad(key, "a finite number" + (" > 0" if key == "lr_scale" else ""))
    if not isinstance(state.get("optimizer"), dict) or not isinstance(state.get("result"), dict):
        raise CheckpointError(f"{where}: no optimizer / result entry; the checkpoint is damaged")


def checkpoint_dirs(root: Path) -> list[tuple[Path, int]]:
    """The checkpoints chainrule wrote in ``root`` (``step-N/`` with a chainrule ``config.json``
    and a ``trainer_state.json``) with their steps, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = _STEP_DIR.fullmatch(path.name)
        if m is None or path.is_symlink() or not path.is_dir() or not (path / STATE_JSON).is_file():
            continue
        try:
            read_config(path)
        except CheckpointError:  # not chainrule's: left alone
            continue
        found.append((path, int(m.group(1))))
    return sorted(found, key=lambda pair: pair[1])


def keep_checkpoint(out_dir: Path, step: int, keep_last: int) -> None:
    """Copy the ``last/`` just written to ``checkpoints/step-<step>/`` (hard links where possible;
    into a temporary directory, then renamed) and delete the older ones beyond ``keep_last``.

    Kept: the ``keep_last`` highest steps up to ``step``. A checkpoint of a *later* step (left by
    a run that went further before ``last/`` was replaced by hand) is not this run's past and
    is left alone."""
    root = out_dir / CHECKPOINTS_DIR
    root.mkdir(exist_ok=True)
    remove_stale_temporaries(root)  # a previous write killed half-way
    name = f"step-{step:06d}"
    tmp, dst, old = root / f".{name}.tmp", root / name, root / f".{name}.old"
    link_or_copy_tree(out_dir / LAST_DIR, tmp)
    if dst.exists():  # the same step again (a resumed run re-saving it): replaced
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    past = [path for path, s in checkpoint_dirs(root) if s <= step]
    for path in past[:max(0, len(past) - keep_last)]:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_temporaries(root: Path) -> None:
    """The ``.step-N.tmp`` / ``.step-N.old`` directories of ``checkpoints/`` that a write killed
    half-way left behind."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        if (path.name.startswith(".step-") and path.name.endswith((".tmp", ".old")) and path.is_dir()
                and not path.is_symlink()):
            shutil.rmtree(path, ignore_errors=True)


def clear_previous_outputs(out_dir: Path) -> None:
    """A fresh (not resumed) run replaces what a previous run in ``out_dir`` left that it would
    otherwise mix with its own (``best/``, ``last/`` and ``log.csv`` are overwritten anyway): the
    checkpoints in ``checkpoints/`` and the event files in ``tensorboard/`` — only those, only
    chainrule's (``step-N`` checkpoint directories, ``events.out.tfevents.*`` files)."""
    root = out_dir / CHECKPOINTS_DIR
    for path, _ in checkpoint_dirs(root):
        shutil.rmtree(path, ignore_errors=True)
    remove_stale_temporaries(root)
    tb = out_dir / TENSORBOARD_DIR
    if tb.is_dir():
        for f in tb.glob("events.out.tfevents.*"):
            if f.is_file():
                f.unlink()
    for d in (root, tb):
        with contextlib.suppress(OSError):  # only when empty: anything else there stays
            d.rmdir()


def json_roundtrip(v: Any) -> Any:
    """``v`` as JSON would store it (tuples become lists), to compare a saved config with a live one."""
    return json.loads(json.dumps(v))
