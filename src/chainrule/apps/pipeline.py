"""The run pipeline: train -> evaluate -> samples -> results, as one library function that the
command line and the benchmarks call (:func:`train_run`), plus the helpers around a run directory.

A *run directory* holds ``best/`` (the best model: safetensors + JSON, including which dataset it
was trained on), ``last/`` (for resuming), ``log.csv``, ``results.json``, ``curve.png`` and the
samples (``samples.png`` for images, ``samples.txt`` for text, ``samples.wav`` for audio, else
``samples.npy``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chainrule.apps.plotting import image_grid, plot_training_curve, save_image_grid
from chainrule.data import Dataset, load_dataset, mu_law_decode, write_wav
from chainrule.errors import CheckpointError, InputError
from chainrule.inference.likelihood import EvalResult, evaluate
from chainrule.inference.sampling import default_generator
from chainrule.io.checkpoint import CONFIG_FILE, read_config
from chainrule.models import create_model
from chainrule.training import TrainConfig, Trainer

log = logging.getLogger(__name__)

_LOOKS_LIKE_JSON = re.compile(r"^\s*([\[{\"]|-?\d|true$|false$|null$)")


def parse_hyperparameters(pairs: list[str]) -> dict[str, Any]:
    """``["hidden_sizes=[500,500]", "order=reversed"]`` -> dict.

    Values are JSON; a bare word (``reversed``, ``relu``) is taken as a string. A value that looks
    like JSON but is not (``[500``, ``1e``) is an error, not silently a string.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"hyperparameter {pair!r} must look like name=value (value in JSON, e.g. hidden_sizes=[500])")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError as exc:
            if _LOOKS_LIKE_JSON.match(value):
                raise InputError(f"hyperparameter {key}: {value!r} is not valid JSON ({exc.msg}); e.g. "
                                 f"{key}=[500,500], {key}=0.1, {key}=true, {key}='\"text\"'") from None
            out[key.replace("-", "_")] = value
    return out


def checkpoint_dir(run: str | Path) -> Path:
    """Accept either a run directory (with ``best/``) or a checkpoint directory itself."""
    run = Path(run)
    if (run / "best" / CONFIG_FILE).is_file():
        return run / "best"
    return run


def dataset_of(ckpt: Path, dataset: str | None = None, data_dir: str | Path | None = None, download: bool = False,
               binarize: str | None = None, dequantize: bool = False) -> Dataset:
    """The dataset a checkpoint was trained on (as its config records it), or ``dataset``."""
    extra = read_config(ckpt).get("extra", {})
    name = dataset or extra.get("dataset")
    if not name:
        raise InputError(f"{ckpt} does not record a dataset; pass --dataset")
    return load_dataset(name, data_dir or extra.get("data_dir"), download=download,
                        binarize=binarize or extra.get("binarize"),
                        dequantize=dequantize or bool(extra.get("dequantize")), seed=extra.get("data_seed", 0),
                        block_size=extra.get("block_size", 256), level=extra.get("level", "char"))


def describe_eval(split: str, res: EvalResult, ds: Dataset) -> list[str]:
    """The lines a person reads for an evaluation (units in every number)."""
    line = f"{split}: NLL {res.nll_nats:.4f} nats/example | {res.bits_per_dim:.4f} bits/dim"
    if not ds.is_image:
        line += f" | {res.nll_nats / res.dim:.4f} nats/token | perplexity {res.perplexity:.4f} per token"
    lines = [line + f" | {res.num_examples} examples"]
    if ds.dequantized_from:
        disc = res.nll_nats + ds.discrete_nll_offset_nats()
        lines.append(f"{split}: as discrete data ({ds.dequantized_from} values; -log p(y) + D log K, an upper bound): "
                     f"NLL {disc:.4f} nats/example | {disc / (res.dim * math.log(2)):.4f} bits/dim")
    return lines


def samples_formats(is_image: bool, tokenizer: Any = None, sample_rate: int | None = None) -> tuple[str, ...]:
    """The file extensions samples of a run can be written as, the default first: text runs
    ``.txt`` (decoded) or ``.npy`` (token ids); audio runs ``.wav`` or ``.npy`` (mu-law codes);
    image runs ``.png``, ``.jpg``, ``.jpeg`` (a grid, Pillow) or ``.npy``; anything else ``.npy``."""
    if tokenizer is not None:
        return (".txt", ".npy")
    if sample_rate is not None:
        return (".wav", ".npy")
    if is_image:
        return (".png", ".jpg", ".jpeg", ".npy")
    return (".npy",)


def default_samples_name(is_image: bool, tokenizer: Any = None, sample_rate: int | None = None) -> str:
    """``samples.png`` (images), ``samples.txt`` (text), ``samples.wav`` (audio), else ``samples.npy``."""
    return "samples" + samples_formats(is_image, tokenizer, sample_rate)[0]


def check_samples_path(out: str | Path, is_image: bool, tokenizer: Any = None, sample_rate: int | None = None) -> Path:
    """``out`` if samples of this kind of run can be written as its extension says, else an InputError
    that lists the extensions accepted (nothing is ever written under another name than ``out``)."""
    out = Path(out)
    formats = samples_formats(is_image, tokenizer, sample_rate)
    if out.suffix.lower() not in formats:
        kind = "a text run" if tokenizer is not None else "an audio run" if sample_rate is not None else \
            "an image run" if is_image else "this run (not images, text or audio)"
        got = f"{out.suffix!r}" if out.suffix else "no extension"
        raise InputError(f"{out}: the samples of {kind} can be written as {' or '.join(formats)} only; got {got}")
    if out.is_dir():
        raise InputError(f"{out} is a directory: give a file name ending in {', '.join(formats)}")
    return out


def save_samples(x: torch.Tensor, out: Path, num_values: int | None, is_image: bool,
                 tokenizer: Any = None, sample_rate: int | None = None) -> Path:
    """Write samples to exactly ``out``, in the format its extension names (see :func:`samples_formats`):
    decoded text, a WAV, a PNG/JPEG grid, or the array as .npy. Returns ``out``."""
    out = check_samples_path(out, is_image, tokenizer, sample_rate)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".npy":
        with open(out, "wb") as f:  # np.save(path) would append .npy to a name ending in .NPY
            np.save(f, x.cpu().numpy())
    elif suffix == ".txt":  # text: decoded samples, separated by a rule
        out.write_text("\n\n----------\n\n".join(tokenizer.decode(row.tolist()) for row in x))
    elif suffix == ".wav":  # audio: one after another, 0.25 s of silence between
        gap = torch.zeros(sample_rate // 4)
        write_wav(out, torch.cat([torch.cat([mu_law_decode(r.cpu()), gap]) for r in x]), sample_rate)
    elif suffix == ".png":
        save_image_grid(x, out, num_values)
    else:  # .jpg / .jpeg
        image_grid(x, num_values).save(out, format="JPEG", quality=95)
    return out


#: What a run directory holds that chainrule wrote (``--force`` removes these, and only these).
RUN_DIRS = ("best", "last", "last.tmp", "last.old")
RUN_FILES = ("log.csv", "curve.png", "results.json", "config.toml")
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy", ".txt", ".wav")


def run_files(out: str | Path) -> list[Path]:
    """The entries of ``out`` that a previous run wrote: ``best/``, ``last/`` (and its ``.tmp`` /
    ``.old`` while being swapped), ``log.csv``, ``curve.png``, ``results.json``, ``samples.*``."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [out / d for d in RUN_DIRS if (out / d).is_dir() or (out / d).is_symlink()]
    found += [out / f for f in RUN_FILES if (out / f).is_file()]
    found += sorted(p for p in out.glob("samples.*") if p.suffix.lower() in SAMPLE_SUFFIXES and p.is_file())
    return found


def holds_run(out: str | Path) -> bool:
    """True when ``out`` holds a training run (a ``best/``, ``last/`` or ``log.csv``)."""
    out = Path(out)
    return (any((out / d).is_dir() for d in ("best", "last", "last.old")) or (out / "log.csv").is_file())


def check_run_dir(out: str | Path, resume: bool = False, force: bool = False) -> None:
    """Refuse to train into ``out`` when it already holds a run, unless ``resume`` (continue it) or
    ``force`` (replace it: :func:`clear_run_dir`). Writes nothing."""
    out = Path(out)
    if resume and force:
        raise InputError("--resume continues the run in the directory and --force replaces it: pass one of them")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a run directory: give a directory for the run")
    if not resume and not force and holds_run(out):
        raise InputError(f"{out} already holds a run: pass --resume to continue it or --force to replace it")


def clear_run_dir(out: str | Path) -> list[Path]:
    """Remove what a previous run wrote in ``out`` (:func:`run_files`); every other file stays.
    Returns the removed paths."""
    import shutil

    removed = run_files(out)
    for p in removed:
        if p.is_symlink() or p.is_file():
            p.unlink()
        else:
            shutil.rmtree(p)
    return removed


def is_quickstart_run(out: str | Path) -> bool:
    """True when the run in ``out`` was written by ``chainrule quickstart`` (marked in its config)."""
    for sub in ("best", "last"):
        try:
            if read_config(Path(out) / sub).get("extra", {}).get("quickstart"):
                return True
        except CheckpointError:  # no checkpoint there, or a damaged one: not quickstart's
            continue
    return False


def sample_labels(num_classes: int, n: int) -> torch.Tensor:
    """Labels 0, 1, ..., num_classes-1, 0, 1, ... for ``n`` samples of a class-conditional model."""
    return torch.arange(n) % num_classes


def train_run(model_name: str, ds: Dataset, out: str | Path, hyperparameters: dict[str, Any] | None = None,
              config: TrainConfig | None = None, extra: dict[str, Any] | None = None, progress: bool = True,
              num_samples: int = 64, resume: bool = False, conditional: bool = False,
              device: str | torch.device | None = None,
              report: Callable[[str], None] = log.info, force: bool = False) -> dict[str, Any]:
    """Build ``model_name`` for ``ds``, train it, evaluate it on the test split, draw samples and
    write the run directory ``out``; returns the summary also written to ``results.json``.

    ``conditional=True`` trains a class-conditional model on the dataset's labels (the model gets
    ``num_classes``; evaluation is given the true labels; samples cycle through the classes).
    ``report`` receives the progress lines (the CLI prints them).

    An ``out`` that already holds a run (``best/``, ``last/`` or ``log.csv``) is refused unless
    ``resume`` (continue it) or ``force``: replace it, removing the previous run's files (only
    those chainrule writes, see :func:`run_files`) once the model has been built.
    """
    out = Path(out)
    check_run_dir(out, resume, force)
    config = config or TrainConfig()
    hp = dict(hyperparameters or {})
    train_y = val_y = test_y = None
    if conditional:
        if ds.num_classes is None:
            raise InputError(f"dataset {ds.name!r} has no labels: a class-conditional model needs labelled data")
        hp["num_classes"] = ds.num_classes
        train_y, val_y, test_y = ds.train_labels, ds.val_labels, ds.test_labels
    torch.manual_seed(config.seed)  # the initial weights too: the same --seed, the same run
    model = create_model(model_name, ds.shape, ds.num_values, **hp)
    report(f"model {model_name}: {model.num_parameters():,} parameters; data {ds.name}: "
           f"{len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test, shape {ds.shape}, num_values {ds.num_values}"
           + (f", {ds.num_classes} classes (conditional)" if conditional else ""))
    trainer = Trainer(model, config, out_dir=out, extra={**(extra or {}), "conditional": conditional},
                      progress=progress, device=device)
    if resume:
        report(f"resuming from {out / 'last'}")
    elif force and run_files(out):
        removed = clear_run_dir(out)
        report(f"replacing the previous run in {out}: removed {', '.join(p.name for p in removed)}")
    has_val = len(ds.val) > 0
    result = trainer.fit(ds.train, ds.val if has_val else None, train_transform=ds.train_transform, resume=resume,
                         train_context=train_y, val_context=val_y if has_val else None)
    note = ""
    if result.stopped_early:
        note = f" (early stop; best epoch {result.best_epoch + 1})"
    elif result.stopped_by_time:
        note = f" (time budget of {config.max_seconds:.0f} s reached; best epoch {result.best_epoch + 1})"
    report(f"trained {result.epochs_run} epochs in {result.train_seconds:.1f} s{note}")
    t0 = time.perf_counter()
    test = evaluate(model, ds.test, test_y, config.eval_batch_size)
    for line in describe_eval("test", test, ds):
        report(line)
    plot_training_curve(out / "log.csv", out / "curve.png", title=f"{model_name} on {ds.name}")
    labels = sample_labels(ds.num_classes, num_samples) if conditional else None
    x = model.sample(num_samples, labels, generator=default_generator(model, config.seed))
    samples = save_samples(x, out / default_samples_name(ds.is_image, ds.tokenizer, ds.sample_rate), model.num_values,
                           ds.is_image, ds.tokenizer, ds.sample_rate)
    summary = {"model": model_name, "dataset": ds.name, "parameters": model.num_parameters(),
               "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "train_seconds": result.train_seconds, "best_val_nll_nats": result.best_val_nll_nats,
               "test": test.as_dict(), "eval_seconds": time.perf_counter() - t0,
               "torch_threads": torch.get_num_threads(), "conditional": conditional,
               "examples_per_second": result.examples_per_second}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    report(f"wrote {out / 'best'}, {out / 'log.csv'}, {out / 'curve.png'}, {samples}")
    return summary
