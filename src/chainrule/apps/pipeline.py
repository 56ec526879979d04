"""The run pipeline: train -> evaluate -> samples -> results, as one library function that the
command line and the benchmarks call (:func:`train_run`), plus the helpers around a run directory.

A *run directory* holds ``best/`` (the best model: safetensors + JSON, including which dataset it
was trained on), ``last/`` (for resuming), ``log.csv``, ``results.json``, ``curve.png`` and the
samples (``samples.png`` for images, ``samples.txt`` for text, ``samples.wav`` for audio, else
``samples.npy``).
"""

from __future__ import annotations

import dataclasses
import inspect
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

from chainrule.contract import ARModel
from chainrule.apps.plotting import image_grid, plot_training_curve, save_image_grid
from chainrule.data import Dataset, Standardization, ValueRangeError, load_dataset, mu_law_decode, write_wav
from chainrule.errors import CheckpointError, DataError, InputError
from chainrule.inference.likelihood import EvalResult, evaluate, token_unit
from chainrule.inference.sampling import default_generator
from chainrule.io.checkpoint import CONFIG_FILE, read_config
from chainrule.io.outputs import output_file
from chainrule.models import create_model
from chainrule.models.registry import get_model_class
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
            parsed = json.loads(value)  # NaN / Infinity too: each model checks its own values
        except json.JSONDecodeError as exc:
            if _LOOKS_LIKE_JSON.match(value):
                raise InputError(f"hyperparameter {key}: {value!r} is not valid JSON ({exc.msg}); e.g. "
                                 f"{key}=[500,500], {key}=0.1, {key}=true, {key}='\"text\"'") from None
            parsed = value
        except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits, lists nested too deep
            raise InputError(f"hyperparameter {key}: {value[:40]!r}{'...' if len(value) > 40 else ''} cannot be "
                             f"read ({type(exc).__name__}: {str(exc)[:80]})") from None
        try:  # what cannot be written as UTF-8 could not be stored in the run's config
            json.dumps({key: parsed}, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"hyperparameter {key!r}: name or value is not valid Unicode text") from None
        out[key.replace("-", "_")] = parsed
    return out


def checkpoint_dir(run: str | Path) -> Path:
    """Accept either a run directory (with ``best/``) or a checkpoint directory itself."""
    run = Path(run)
    if (run / "best" / CONFIG_FILE).is_file():
        return run / "best"
    return run


#: ``--num-values real``: the data are real-valued and the model is to fit real values (see
#: :func:`check_data_fits_model`).
REAL = "real"


def parse_num_values(value: Any) -> int | str | None:
    """``--num-values``: None (infer K), an integer K >= 2, or ``"real"`` (real-valued data for a
    model that is discrete by default); anything else is an InputError."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == REAL:
            return REAL
        try:
            value = int(text)
        except ValueError:
            raise InputError(f"--num-values must be an integer K >= 2 (the number of discrete values) or 'real', "
                             f"got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise InputError(f"--num-values must be an integer K >= 2 (the number of discrete values) or 'real', "
                         f"got {value!r}")
    return value


def _data_words(ds: Dataset) -> str:
    """What ``ds`` holds, for errors: its value summary, or its K."""
    if ds.values is not None:
        return ds.values.what
    if ds.dequantized_from is not None:
        return f"dequantized values in [0, 1) (from K={ds.dequantized_from})"
    return "real values" if ds.num_values is None else f"integers 0..{ds.num_values - 1}"


def _default_num_values(cls: Any) -> int | None:
    """The ``num_values`` a model class gets when none is given (FVSBN: 2, RNADE: None)."""
    param = inspect.signature(cls.__init__).parameters.get("num_values")
    if param is None or param.default is inspect.Parameter.empty:
        return 2  # required: the image models, which are discrete only
    return param.default


def check_data_fits_model(model_name: str, ds: Dataset, *, real_values: bool = False,
                          require_real_flag: bool = True) -> None:
    """Refuse, with an InputError naming the model, the data and the fix, data that ``model_name``
    cannot model as they are, before anything is built or written.

    - real-valued data for a model that is discrete only (pixelcnn, histogram, ...), or discrete by
      default (fvsbn, nade, made, ...: the ``num_values`` of their class defaults to a K, e.g.
      ``FVSBN(shape)`` is binary) unless ``real_values`` (``--num-values real``), the data were
      dequantized on purpose, or not ``require_real_flag`` (the API: a Dataset with
      ``num_values=None`` says real values already);
    - discrete data for a real-valued-only model (rnade): ``--dequantize``;
    - ``real_values`` for discrete data (a density on integers is degenerate): ``--dequantize``.
    """
    cls = get_model_class(model_name)
    data = f"{ds.name} holds {_data_words(ds)}"
    if ds.num_values is None:
        intensities = ds.values is not None and ds.values.kind == "intensities" and ds.dequantized_from is None
        discrete = "pass --binarize threshold (x >= 0.5) or dynamic for binary data" if intensities else \
            "quantize them to integers 0..K-1 for discrete data"
        if not cls.supports_real:
            raise InputError(f"{model_name} models discrete data only, but {data} (real-valued, K=None): {discrete}, "
                             "or train a model that takes real values (rnade; fvsbn, nade, made, mlp with "
                             "--num-values real)")
        default = _default_num_values(cls)
        if default is not None and require_real_flag and not real_values and ds.dequantized_from is None:
            raise InputError(f"{model_name} is a discrete model by default (num_values={default}), but {data} "
                             f"(real-valued, K=None): {discrete}, pass --num-values real to fit {model_name}'s "
                             "real-valued (Gaussian) conditionals, or train a real-valued model such as rnade")
        return
    if real_values:
        raise InputError(f"--num-values real: {data}, discrete data (K={ds.num_values}); a density on integer "
                         "values is degenerate: pass --dequantize to model them as continuous, or leave "
                         "--num-values out")
    if not cls.supports_discrete:
        raise InputError(f"{model_name} models real values only, but {data}, discrete data (K={ds.num_values}): "
                         "pass --dequantize (uniform dequantization, (x + u) / K), or train a discrete model")


def _run_data_num_values(config: dict[str, Any], binarize: str | None, dequantize: bool) -> int | None:
    """The K of the data as the run read them (before binarize / dequantize), to read other data
    alike; None to infer it (text and audio: their K is fixed)."""
    extra = config.get("extra", {})
    if extra.get("tokenizer") is not None or extra.get("sample_rate") is not None:
        return None
    if "data_num_values" in extra:
        k = extra["data_num_values"]
        return k if isinstance(k, int) and not isinstance(k, bool) else None
    # a run written before the data's K was recorded: the model's, unless a transform changed it
    k = config.get("num_values")
    if binarize or dequantize or not isinstance(k, int) or isinstance(k, bool):
        return None
    return k


def _check_run_values(ckpt: Path, config: dict[str, Any], ds: Dataset) -> None:
    """Data the run's model cannot score: another event shape, values >= its K, or real / discrete
    mismatch."""
    if ds.is_text or ds.is_audio:
        return
    k = config.get("num_values")
    run = f"the run {ckpt}"
    shape = tuple(config.get("shape") or ds.shape)
    if tuple(ds.shape) != shape:
        raise DataError(f"{ds.name}: its examples have shape {tuple(ds.shape)} with num_values={ds.num_values}; "
                        f"{run} models shape {shape} with num_values={k}")
    if k is None and ds.num_values is not None:
        raise DataError(f"{ds.name}: holds {_data_words(ds)}, discrete data (K={ds.num_values}), but {run} models "
                        "real values (num_values=None): pass --dequantize if it was trained on dequantized data")
    if k is not None and ds.num_values is None:
        intensities = ds.values is not None and ds.values.kind == "intensities"
        hint = " (pass --binarize threshold or dynamic for 0/1 data)" if intensities else ""
        raise DataError(f"{ds.name}: holds {_data_words(ds)} (real-valued), but {run} models K={k} discrete "
                        f"values{hint}")
    if k is None:
        return
    splits = [x for s, x in (("train", ds.train), ("val", ds.val), ("test", ds.test))
              if x.numel() and not (s == "train" and ds.train_transform is not None)]
    high = max((int(x.max()) for x in splits), default=0)
    if high >= k:
        raise DataError(f"{ds.name}: holds the value {high}, but {run} models K={k} values (0..{k - 1}); a model of "
                        f"{k} values cannot score it: train a run on these data")


def dataset_of(ckpt: Path, dataset: str | None = None, data_dir: str | Path | None = None, download: bool = False,
               binarize: str | None = None, dequantize: bool = False) -> Dataset:
    """The dataset a checkpoint was trained on (as its config records it), or ``dataset``, read as the
    run read its data: the same binarize / dequantize and the same K (the run's, not one inferred
    anew from other data); data with values the run's model cannot score are a DataError."""
    config = read_config(ckpt)
    extra = config.get("extra", {})
    name = dataset or extra.get("dataset")
    if not name:
        raise InputError(f"{ckpt} does not record a dataset; pass --dataset")
    binarize = binarize or extra.get("binarize")
    dequantize = dequantize or bool(extra.get("dequantize"))
    k = _run_data_num_values(config, binarize, dequantize)

    def load(num_values: int | None) -> Dataset:
        return load_dataset(name, data_dir or extra.get("data_dir"), download=download, binarize=binarize,
                            dequantize=dequantize, seed=extra.get("data_seed", 0),
                            block_size=extra.get("block_size", 256), level=extra.get("level", "char"),
                            num_values=num_values)

    try:
        ds = load(k)
    except ValueRangeError as exc:
        _check_run_values(ckpt, config, load(None))  # another shape is the first thing to say
        if exc.value is None:
            raise DataError(f"{name}: holds {exc.data} (real-valued), but the run {ckpt} was trained on discrete "
                            f"data of K={exc.num_values} values") from None
        raise DataError(f"{name}: holds the value {exc.value}, outside the K={exc.num_values} values "
                        f"0..{exc.num_values - 1} of the data the run {ckpt} was trained on; its model cannot score "
                        "it: train a run on these data") from None
    _check_run_values(ckpt, config, ds)
    if extra.get(STANDARDIZE) is not None:  # the run's model reads standardized data: as it was trained
        ds = Standardization.from_dict(extra[STANDARDIZE]).dataset(ds)
    return ds


def describe_eval(split: str, res: EvalResult, ds: Dataset) -> list[str]:
    """The lines a person reads for an evaluation (units in every number): text and audio (a result
    with a ``unit``) per character / byte / token first, images and vectors per example."""
    if res.unit is not None:  # sequence data: per token first (bits/char), the window's total last
        lines = [f"{split}: {res}"]
    else:  # images and vectors: per example and per dimension (a vector's coordinates are no tokens)
        line = f"{split}: NLL {res.nll_nats:.4f} nats/example | {res.bits_per_dim:.4f} bits/dim"
        if not ds.is_image:
            line += f" | {res.nll_nats / res.dim:.4f} nats/dim"
            if ds.num_values is not None:  # a density's exp(nats/dim) is no perplexity
                line += f" | perplexity {res.perplexity:.4f} per dim"
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
                 tokenizer: Any = None, sample_rate: int | None = None, ncol: int | None = None) -> Path:
    """Write samples to exactly ``out``, in the format its extension names (see :func:`samples_formats`):
    decoded text, a WAV, a PNG/JPEG grid (``ncol`` columns, default about square), or the array as
    .npy. Returns ``out``."""
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
        save_image_grid(x, out, num_values, ncol)
    else:  # .jpg / .jpeg
        image_grid(x, num_values, ncol).save(out, format="JPEG", quality=95)
    return out


#: What a run directory holds that chainrule wrote (``--force`` removes these, and only these).
RUN_DIRS = ("best", "last", "last.tmp", "last.old", "checkpoints", "tensorboard")
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


#: Where ``--force`` moves the run it replaces until the new run has written its first checkpoint.
REPLACED_DIR = ".replaced"


def holds_run(out: str | Path) -> bool:
    """True when ``out`` holds a training run: a checkpoint (``best/``, or ``last/`` / ``last.old/`` /
    a complete ``last.tmp/`` of an interrupted write). A run killed before its first checkpoint (a
    ``log.csv`` and nothing else) holds nothing to keep: it is simply started again."""
    from chainrule.training.trainer import _complete_checkpoint

    out = Path(out)
    return (any((out / d).is_dir() for d in ("best", "last", "last.old"))
            or _complete_checkpoint(out / "last.tmp"))


def started_run(out: str | Path) -> bool:
    """True when ``out`` shows a run was started there (``log.csv``, ``tensorboard/``, a lock file)."""
    from chainrule.io.lock import LOCK_FILE

    out = Path(out)
    return any((out / f).exists() for f in ("log.csv", "tensorboard", LOCK_FILE, "last.tmp"))


def check_run_dir(out: str | Path, resume: bool = False, force: bool = False, check_lock: bool = True) -> None:
    """Refuse to train into ``out`` when it already holds a run, unless ``resume`` (continue it) or
    ``force`` (replace it, once the new run has its first checkpoint), or while another process
    trains in it (its lock; ``check_lock=False`` on the ranks > 0 of a distributed run, whose rank 0
    holds it). Writes nothing."""
    from chainrule.io.lock import lock_holder
    from chainrule.io.outputs import _in_checkpoint

    out = Path(out)
    if resume and force:
        raise InputError("--resume continues the run in the directory and --force replaces it: pass one of them")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a run directory: give a directory for the run")
    ckpt = _in_checkpoint(out.resolve())
    if ckpt is not None:
        raise InputError(f"{out} is inside the checkpoint directory {ckpt}: give a run directory of its own")
    holder = lock_holder(out) if check_lock else None
    if holder is not None:
        who = f"PID {holder}" if holder > 0 else "another process"
        raise InputError(f"{out} is in use: {who} is training in it; wait for it to finish or stop it, or give "
                         "another --out")
    if not resume and not force and holds_run(out):
        raise InputError(f"{out} already holds a run: pass --resume to continue it or --force to replace it")


class RunReplacement:
    """What a (non-resumed) run does to the directory it trains in, so that nothing is lost:

    - ``begin``: with ``force``, the previous run's files (:func:`run_files`) are moved into
      ``RUN/.replaced/`` (renames: nothing is deleted);
    - ``commit`` (the trainer's first checkpoint): ``.replaced/`` is removed;
    - ``rollback`` (the new run failed before its first checkpoint: NaN loss, full disk, an
      interrupt): what the new run wrote is removed and the previous run moved back; a directory
      the run created is removed again when it is left empty.

    A process killed between ``begin`` and ``commit`` leaves ``.replaced/``: :func:`finish_replacement`
    completes or undoes it the next time a run starts there."""

    def __init__(self, out: Path, force: bool, created: bool) -> None:
        self.out, self.force, self.created = out, force, created
        self.saved = out / REPLACED_DIR
        self.committed = False

    def begin(self) -> list[Path]:
        moved = run_files(self.out) if self.force else []
        if moved:
            self.saved.mkdir()
            done = []
            try:
                for p in moved:
                    p.rename(self.saved / p.name)
                    done.append(p)
            except BaseException:  # a rename refused half-way: everything back where it was
                for p in done:
                    (self.saved / p.name).rename(p)
                self.saved.rmdir()
                raise
        return moved

    def commit(self) -> None:
        if self.committed:
            return
        self.committed = True
        if self.saved.is_dir():
            import shutil

            shutil.rmtree(self.saved)

    def rollback(self) -> None:
        if self.committed:
            return
        _undo_replacement(self.out)
        if self.created:
            from chainrule.io.lock import LOCK_FILE

            leftovers = [p for p in self.out.iterdir() if p.name != LOCK_FILE] if self.out.is_dir() else []
            if not leftovers:
                (self.out / LOCK_FILE).unlink(missing_ok=True)
                self.out.rmdir()


def _undo_replacement(out: Path) -> None:
    """Remove what a run that never wrote a checkpoint left in ``out`` and move the run it was
    replacing (``.replaced/``) back."""
    for p in run_files(out):
        clear = p.is_symlink() or p.is_file()
        if clear:
            p.unlink()
        else:
            import shutil

            shutil.rmtree(p)
    saved = out / REPLACED_DIR
    if saved.is_dir():
        for p in saved.iterdir():
            p.rename(out / p.name)
        saved.rmdir()


def finish_replacement(out: str | Path, report: Callable[[str], None] = log.info) -> None:
    """A ``--force`` run killed before :class:`RunReplacement` could commit or roll back left
    ``RUN/.replaced/``: when the new run had written a checkpoint, the replaced run is removed;
    otherwise the new run's traces go and the replaced run comes back."""
    out = Path(out)
    saved = out / REPLACED_DIR
    if not saved.is_dir():
        return
    if holds_run(out):
        import shutil

        shutil.rmtree(saved)
        report(f"{out}: removed the run replaced by the previous --force run (which had written its checkpoint)")
    else:
        _undo_replacement(out)
        report(f"{out}: the previous --force run was stopped before its first checkpoint; the run it was "
               "replacing is back")


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


def class_columns(num_classes: int | None, n: int) -> int | None:
    """Grid columns for ``n`` samples drawn every class in turn (:func:`sample_labels`): one column
    per class, so each column shows one class, when there are at least two rows of them."""
    return num_classes if num_classes and n >= 2 * num_classes else None


def sample_labels(num_classes: int, n: int) -> torch.Tensor:
    """Labels 0, 1, ..., num_classes-1, 0, 1, ... for ``n`` samples of a class-conditional model."""
    return torch.arange(n) % num_classes


#: The key of a run's config (``extra``) that holds its :class:`Standardization` (``--standardize``).
STANDARDIZE = "standardize"


def run_standardization(ckpt: Path) -> Standardization | None:
    """The standardization a run was trained with (``train --standardize``), or None."""
    spec = read_config(ckpt).get("extra", {}).get(STANDARDIZE)
    return None if spec is None else Standardization.from_dict(spec)


def in_data_units(res: EvalResult, offset: float) -> EvalResult:
    """An evaluation of standardized data as the NLL of the data themselves: ``offset`` (``sum_d
    log std_d``, the log-Jacobian of x -> z) added per example, bits/dim and perplexity with it."""
    if not offset:
        return res
    nll = res.nll_nats + offset
    return dataclasses.replace(res, nll_nats=nll, bits_per_dim=nll / (res.dim * math.log(2)),
                               perplexity=math.exp(nll / res.dim) if nll / res.dim < 709 else math.inf)


def sampling_cost_examples(model: ARModel, n: int) -> int:
    """About how many examples' evaluation drawing ``n`` samples costs: ``n`` with a cached step
    (each step computes one group's share), ``n x G`` for a model whose step is a full pass."""
    from chainrule.models import AutoregressiveModel

    inner = getattr(model, "model", model)  # an ensemble's network
    cached = type(inner).step is not AutoregressiveModel.step
    return n if cached else n * model.num_groups


def train_run(model_name: str, ds: Dataset, out: str | Path, hyperparameters: dict[str, Any] | None = None,
              config: TrainConfig | None = None, extra: dict[str, Any] | None = None, progress: bool = True,
              num_samples: int = 64, resume: bool = False, conditional: bool = False,
              device: str | torch.device | None = None,
              report: Callable[[str], None] = log.info, force: bool = False,
              started: float | None = None, standardization: Standardization | None = None) -> dict[str, Any]:
    """Build ``model_name`` for ``ds``, train it, evaluate it on the test split, draw samples and
    write the run directory ``out``; returns the summary also written to ``results.json``.

    ``conditional=True`` trains a class-conditional model on the dataset's labels (the model gets
    ``num_classes``; evaluation is given the true labels; samples cycle through the classes).
    ``report`` receives the progress lines (the CLI prints them).

    An ``out`` that already holds a run (``best/``, ``last/`` or ``log.csv``) is refused unless
    ``resume`` (continue it) or ``force``: replace it, removing the previous run's files (only
    those chainrule writes, see :func:`run_files`) once the model has been built.

    ``config.max_seconds`` is the budget of the whole call (from ``started``, a ``time.perf_counter()``
    value such as the command's start; default: now): checked after every training step, it stops
    training early enough for the closing validation, the test evaluation and the samples to fit
    (their cost estimated from the validations' measured speed). ``progress``: bars for training,
    validation, the test evaluation and the sampling.

    ``standardization`` (real-valued data; fitted on the training split, e.g.
    ``Standardization.fit(ds.train)``): the model is trained on the standardized data, the run
    records the statistics (later commands apply and invert them), every NLL reported is the
    data's own (the model's plus ``sum_d log std_d``) and the samples are in the data's units.
    """
    from chainrule.io.lock import RunLock

    started = time.perf_counter() if started is None else started
    out = Path(out)
    if standardization is not None:
        ds = standardization.dataset(ds)
        extra = {**(extra or {}), STANDARDIZE: standardization.to_dict()}
    check_run_dir(out, resume, force)
    created = not out.exists()
    was_started = started_run(out)  # before our own lock file exists
    with RunLock(out):  # one process trains in a run directory at a time
        try:
            finish_replacement(out, report)  # a --force run killed before its first checkpoint
            check_run_dir(out, resume, force)  # again, under the lock
            if resume and not holds_run(out) and was_started:  # killed before its first checkpoint
                report(f"{out}: the run was stopped before its first checkpoint: nothing to resume, starting it again")
                resume = False
            return _train_run(model_name, ds, out, hyperparameters, config, extra, progress, num_samples, resume,
                              conditional, device, report, force, created, started, standardization)
        except BaseException:
            if created and out.is_dir() and not any(p.name != ".lock" for p in out.iterdir()):
                (out / ".lock").unlink(missing_ok=True)
                out.rmdir()
            raise


def _train_run(model_name: str, ds: Dataset, out: Path, hyperparameters: dict[str, Any] | None,
               config: TrainConfig | None, extra: dict[str, Any] | None, progress: bool, num_samples: int,
               resume: bool, conditional: bool, device: str | torch.device | None,
               report: Callable[[str], None], force: bool, created: bool, started: float,
               standardization: Standardization | None) -> dict[str, Any]:
    """:func:`train_run` inside the run directory's lock."""
    config = config or TrainConfig()
    hp = dict(hyperparameters or {})
    check_data_fits_model(model_name, ds, require_real_flag=False)  # a Dataset's num_values=None is explicit
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
    offset = standardization.log_det if standardization is not None else 0.0
    replacement = None if resume else RunReplacement(out, force, created)
    trainer = Trainer(model, config, out_dir=out, extra={**(extra or {}), "conditional": conditional},
                      progress=progress, device=device,
                      unit=token_unit(ds),  # text: the bars show the loss per character / token
                      nll_offset=offset, budget_start=started,
                      reserve_examples=len(ds.test) + sampling_cost_examples(model, num_samples),
                      on_checkpoint=replacement.commit if replacement is not None else None)
    if resume:
        report(f"resuming from {out / 'last'}")
    else:
        # the previous run (with --force) is moved aside, and removed only once this one has written
        # its first checkpoint; a failure before that puts it back (and removes this run's traces)
        assert replacement is not None
        moved = replacement.begin()
        if moved:
            report(f"replacing the previous run in {out} ({', '.join(p.name for p in moved)}): removed once "
                   "this run has written its first checkpoint")
    has_val = len(ds.val) > 0
    try:
        result = trainer.fit(ds.train, ds.val if has_val else None, train_transform=ds.train_transform, resume=resume,
                             train_context=train_y, val_context=val_y if has_val else None)
    except BaseException:
        if replacement is not None:
            replacement.rollback()
        raise
    if replacement is not None:
        replacement.commit()
    note = ""
    if result.stopped_early:
        note = f" (early stop; best epoch {result.best_epoch})"
    elif result.stopped_by_time:
        note = f" (time budget of {config.max_seconds:g} s reached; best epoch {result.best_epoch:g})"
    done = result.history[-1]["epoch"] if result.history else result.epochs_run
    report(f"trained {done:g} epochs in {result.train_seconds:.1f} s{note}")
    t0 = time.perf_counter()
    test = in_data_units(evaluate(model, ds.test, test_y, config.eval_batch_size, progress=progress,
                                  unit=token_unit(ds), desc="test"), offset)
    for line in describe_eval("test", test, ds):
        report(line)
    with output_file(out / "curve.png") as tmp:  # each output written whole or not at all (a full disk)
        plot_training_curve(out / "log.csv", tmp, title=f"{model_name} on {ds.name}")
    labels = sample_labels(ds.num_classes, num_samples) if conditional else None
    x = model.sample(num_samples, labels, generator=default_generator(model, config.seed), progress=progress)
    if standardization is not None:  # samples in the data's units
        x = standardization.invert(x)
    samples = out / default_samples_name(ds.is_image, ds.tokenizer, ds.sample_rate)
    with output_file(samples) as tmp:
        save_samples(x, tmp, model.num_values, ds.is_image, ds.tokenizer, ds.sample_rate,
                     class_columns(ds.num_classes, num_samples) if conditional else None)
    summary = {"model": model_name, "dataset": ds.name, "parameters": model.num_parameters(),
               "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "train_seconds": result.train_seconds, "best_val_nll_nats": result.best_val_nll_nats,
               "test": test.as_dict(), "eval_seconds": time.perf_counter() - t0,
               "command_seconds": time.perf_counter() - started,
               "torch_threads": torch.get_num_threads(), "conditional": conditional,
               "examples_per_second": result.examples_per_second}
    with output_file(out / "results.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    report(f"wrote {out / 'best'}, {out / 'log.csv'}, {out / 'curve.png'}, {samples}")
    return summary
