"""The run pipeline: one training run, described by a :class:`TrainSpec`, checked once, trained,
evaluated, sampled and written to its run directory by :func:`train_run` (what ``chainrule train``,
``chainrule quickstart``, the benchmarks and the Python API call), plus the helpers around a run's
data and samples.

A *run directory* holds ``best/`` (the best model: safetensors + JSON, including which dataset it
was trained on), ``last/`` (for resuming), ``log.csv``, ``results.json``, ``curve.png``,
``config.toml`` and the samples (``samples.png`` for images, ``samples.txt`` for text,
``samples.wav`` for audio, else ``samples.npy``); :mod:`chainrule.apps.rundir` holds its helpers
(re-exported here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chainrule.apps.plotting import image_grid, plot_training_curve, save_image_grid
from chainrule.apps.rundir import (  # noqa: F401 - re-exported: the run directory's helpers lived here
    QUICKSTART_OUT,
    REPLACED_DIR,
    RUN_DIRS,
    RUN_FILES,
    SAMPLE_SUFFIXES,
    RunClaim,
    RunReplacement,
    replacing,
    _undo_replacement,
    check_run_dir,
    check_run_path,
    check_run_state,
    checkpoint_dir,
    claim_run_dir,
    clear_run_dir,
    finish_replacement,
    holds_run,
    is_quickstart_run,
    run_files,
    started_run,
)
from chainrule.contract import ARModel
from chainrule.data import (
    LATENTS_PREFIX,
    Dataset,
    Standardization,
    ValueRangeError,
    default_data_dir,
    load_dataset,
    mu_law_decode,
    write_wav,
)
from chainrule.errors import DataError, InputError
from chainrule.inference.likelihood import EvalResult, evaluate, token_unit
from chainrule.inference.sampling import default_generator
from chainrule.io.checkpoint import read_config
from chainrule.io.outputs import output_file
from chainrule.models import create_model
from chainrule.models.registry import check_hyperparameters, get_model_class
from chainrule.training import TrainConfig, Trainer, distributed

log = logging.getLogger(__name__)

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


def standardize_hint(ds: Dataset) -> str | None:
    """A line saying when ``--standardize`` would help: real-valued data (not intensities in [0, 1],
    not dequantized) whose coordinates' standard deviations are far from 1 or from each other, or
    whose means are far from 0 on their scale. None otherwise."""
    if ds.num_values is not None or ds.dequantized_from is not None or ds.is_text or ds.is_audio or len(ds.train) < 2:
        return None
    if ds.values is not None and ds.values.kind == "intensities":
        return None
    x = ds.train.reshape(len(ds.train), -1).to(torch.float64)
    std, mean = x.std(0), x.mean(0)
    live = std > 0
    if not live.any():
        return None
    low, high = float(std[live].min()), float(std[live].max())
    offset = float((mean[live].abs() / std[live]).max())
    if 0.2 <= low and high <= 5 and high / low <= 5 and offset <= 5:
        return None
    return (f"note: the data's coordinates have standard deviations {low:.3g}..{high:.3g} and means up to "
            f"{offset:.3g} of them from 0; the models' initializations and learning rates assume values of order "
            "1: --standardize trains on (x - mean) / std (NLLs stay the data's own)")


#: The model name of the VQ-VAE: not an autoregressive model, :mod:`chainrule.apps.latent` trains it.
VQVAE = "vqvae"


@dataclasses.dataclass
class TrainSpec:
    """One training run, as ``chainrule train`` / ``chainrule quickstart`` parse it from the command
    line and as Python code describes it; :func:`train_run` checks it (once), trains, evaluates,
    samples and writes the run directory.

    ``dataset``: a :class:`~chainrule.data.Dataset` (taken as it is: ``num_values=None`` says real
    values) or a name / path read with the data options below (as ``chainrule train --dataset``;
    the run records where they came from, so that later commands find them again).
    ``num_values``: ``--num-values``, an integer K, ``"real"`` or None (its text is accepted too).
    ``standardize``: True fits a :class:`~chainrule.data.Standardization` on the training split, or
    give one. ``out``: default ``runs/MODEL-DATASET``. ``quickstart``: the run is quickstart's
    (marked in its config): a previous quickstart run in ``out``, or any run in
    :data:`~chainrule.apps.rundir.QUICKSTART_OUT`, is replaced without ``force``. ``threads``: the
    torch threads ``--threads`` asked for (None: the process's setting; under ``torchrun`` each
    rank's share of the free cores). ``started``: the ``time.perf_counter()`` value the time budget
    (``config.max_seconds``) counts from (default: the call). ``extra``: more entries for the run's
    config (``command``, ``run_config``, ...). ``config_toml``: the text written to
    ``RUN/config.toml`` once the run is done. ``title``: a line reported once the run directory is
    accepted. ``report`` receives the progress lines (the command line prints them).
    """

    model: str
    dataset: str | Path | Dataset
    out: str | Path | None = None
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    conditional: bool = False
    standardize: bool | Standardization = False
    # reading a dataset given by name or path
    data_dir: str | Path | None = None
    download: bool = False
    binarize: str | None = None
    dequantize: bool = False
    data_seed: int = 0
    block_size: int = 256
    level: str = "char"
    num_values: int | str | None = None
    limit: int | None = None
    # the run directory
    resume: bool = False
    force: bool = False
    quickstart: bool = False
    # the process
    device: str | torch.device | None = None
    threads: int | None = None
    progress: bool = True
    num_samples: int = 64
    report: Callable[[str], None] = log.info
    started: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    config_toml: str | None = None
    title: str | None = None


def _spec_of(model_name: str, ds: Dataset, out: str | Path, hyperparameters: dict[str, Any] | None = None,
             config: TrainConfig | None = None, extra: dict[str, Any] | None = None, progress: bool = True,
             num_samples: int = 64, resume: bool = False, conditional: bool = False,
             device: str | torch.device | None = None, report: Callable[[str], None] = log.info,
             force: bool = False, started: float | None = None,
             standardization: Standardization | None = None) -> TrainSpec:
    """The :class:`TrainSpec` of :func:`train_run`'s positional form (its signature before the spec)."""
    return TrainSpec(model=model_name, dataset=ds, out=out, hyperparameters=dict(hyperparameters or {}),
                     config=config or TrainConfig(), extra=dict(extra or {}), progress=progress,
                     num_samples=num_samples, resume=resume, conditional=conditional, device=device, report=report,
                     force=force, started=started,
                     standardize=standardization if standardization is not None else False)


def train_run(spec: TrainSpec | str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run ``spec`` (a :class:`TrainSpec`): build the model for its data, train it, evaluate it on the
    test split, draw samples and write the run directory; returns the summary also written to
    ``results.json``. The positional form of before the spec still works:
    ``train_run(model_name, ds, out, hyperparameters, config, extra, progress, num_samples, resume=,
    conditional=, device=, report=, force=, started=, standardization=)``.

    Every check of the run is made here, once, and before the work it guards: the model's
    hyperparameters and the global batch against the ranks before the data are read; the run
    directory (:func:`~chainrule.apps.rundir.claim_run_dir`: refused when it holds a run, unless
    ``resume`` continues it or ``force`` replaces it, removing the previous run's files only once the
    new run has its first checkpoint; held by its lock) before the data are read when ``out`` is
    given; the data against the model (:func:`check_data_fits_model`) before anything is built. The
    seed (``config.seed``) is set once, before the model is built: the same seed, the same run.

    ``conditional=True`` trains a class-conditional model on the dataset's labels (the model gets
    ``num_classes``; evaluation is given the true labels; samples cycle through the classes).
    ``config.max_seconds`` is the budget of the whole call (from ``started``): checked after every
    training step, it stops training early enough for the closing validation, the test evaluation
    and the samples to fit. ``standardize`` (real-valued data): the model is trained on the
    standardized data, the run records the statistics (later commands apply and invert them), every
    NLL reported is the data's own (the model's plus ``sum_d log std_d``) and the samples are in the
    data's units.

    Under ``torchrun`` (``WORLD_SIZE`` > 1; see :mod:`chainrule.training.distributed`) every rank
    calls this: the process group is joined here (and left again) unless the caller joined it;
    every rank makes the checks that need no directory; rank 0 alone claims the run directory and
    tells the others its verdict; every rank trains, and rank 0 alone writes, evaluates and draws
    the samples (the others return ``{}``).
    """
    if not isinstance(spec, TrainSpec):
        spec = _spec_of(spec, *args, **kwargs)
    elif args or kwargs:
        raise TypeError("train_run(spec): a TrainSpec holds the whole run; give no other arguments")
    joined = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    device = distributed.init_from_env(spec.device, spec.threads) if joined else spec.device
    try:
        return _run(spec, device)
    finally:
        if joined:
            distributed.destroy()


def check_global_batch(batch_size: int, ranks: int) -> None:
    """``batch_size`` is the global batch of a distributed run: it must split evenly over the ranks."""
    if batch_size % ranks:
        raise InputError(f"--batch-size {batch_size} is the global batch, split over {ranks} ranks: "
                         f"it must be a multiple of {ranks}")


def _check_without_data(spec: TrainSpec, hp: dict[str, Any]) -> int | str | None:
    """The checks of ``spec`` that need no data (unknown hyperparameters, the global batch, options a
    VQ-VAE does not take, ``limit``); returns ``num_values`` read (None, K or "real")."""
    ranks = distributed.world_size()
    if spec.model == VQVAE:
        from chainrule.apps.vqvae import check_vqvae_hyperparameters

        if "order" in hp or spec.conditional:
            raise InputError("vqvae: --order and --class-conditional apply to the prior over its codes, not to the VQ-VAE")
        if spec.standardize is not False:
            raise InputError("vqvae: --standardize is for real-valued data; the VQ-VAE models discrete pixels")
        if ranks > 1:
            raise InputError("vqvae trains in one process (its codebook updates are not synchronized across ranks); "
                             "run it without torchrun")
        check_vqvae_hyperparameters(hp)
    else:
        check_hyperparameters(spec.model, hp)  # unknown names fail before the data are read
    check_global_batch(spec.config.batch_size, ranks)
    if spec.limit is not None and (isinstance(spec.limit, bool) or not isinstance(spec.limit, int) or spec.limit < 1):
        raise InputError(f"--limit must be a positive integer (examples per split), got {spec.limit}")
    return parse_num_values(spec.num_values)


def _read_data(spec: TrainSpec, num_values: int | str | None, report: Callable[[str], None]) -> Dataset:
    """``spec.dataset`` as the run trains on it (read when a name or path; ``limit`` applied)."""
    ds = spec.dataset
    if not isinstance(ds, Dataset):
        ds = load_dataset(ds, spec.data_dir, download=spec.download, binarize=spec.binarize,
                          dequantize=spec.dequantize, seed=spec.data_seed, block_size=spec.block_size,
                          level=spec.level, num_values=num_values if isinstance(num_values, int) else None)
        if ds.values is not None:  # how K was read from the values: never silently
            report(ds.values.line())
    if spec.limit is not None:
        ds = ds.limited(spec.limit)
    return ds


def _provenance(spec: TrainSpec, ds: Dataset, num_values: int | str | None) -> dict[str, Any]:
    """Where the data came from, as later commands (eval, sample, complete, ...) must find them again:
    a file's absolute path, and the data folder even when it was given by ``$CHAINRULE_DATA``; for a
    Dataset given as it is, nothing (its caller records what it wants in ``extra``)."""
    if isinstance(spec.dataset, Dataset):
        return {}
    name = str(spec.dataset)
    data_dir = spec.data_dir or default_data_dir()
    dataset = str(Path(name).resolve()) if Path(name).exists() else name
    if name.startswith(LATENTS_PREFIX):  # a VQ-VAE run's codes: its absolute path too
        dataset = LATENTS_PREFIX + str(Path(name[len(LATENTS_PREFIX):]).resolve())
    out = {"dataset": dataset, "binarize": spec.binarize, "dequantize": spec.dequantize, "data_seed": spec.data_seed,
           "data_dir": str(data_dir) if data_dir else None, "block_size": spec.block_size, "level": spec.level,
           "num_values": num_values,
           # the data's K before binarize / dequantize: eval, score, ... read other data with it
           "data_num_values": ds.values.num_values if ds.values is not None else
           num_values if isinstance(num_values, int) else None}
    if ds.tokenizer is not None:
        out["tokenizer"] = ds.tokenizer.to_dict()
    if ds.sample_rate is not None:
        out["sample_rate"] = ds.sample_rate
    if ds.class_names is not None:
        out["class_names"] = list(ds.class_names)
    return out


def _agreed(resume: bool | None) -> bool | None:
    """Rank 0's verdict on the run directory on every rank: ``resume`` as it turned out, or None for
    a directory it refused (in a single process: ``resume`` itself)."""
    if not distributed.is_distributed():
        return resume
    flag = distributed.broadcast(torch.tensor([-1 if resume is None else int(resume)]))
    return None if int(flag) < 0 else bool(int(flag))


def _claim(stack: contextlib.ExitStack, spec: TrainSpec, out: Path, report: Callable[[str], None]) -> RunClaim:
    """The run directory ``out``, checked once and held for the run (rank 0), or rank 0's verdict on
    it (the other ranks of a distributed run, which write nothing)."""
    force = spec.force or (spec.quickstart and out == Path(QUICKSTART_OUT))
    if not distributed.is_main():
        resume = _agreed(None)
        if resume is None:
            raise InputError(f"{out}: rank 0 refused the run directory (its error says why)")
        return RunClaim(out, resume, force, created=False)
    try:
        claim = stack.enter_context(claim_run_dir(out, spec.resume, force, report, quickstart=spec.quickstart))
    except BaseException:
        _agreed(None)  # the other ranks stop too
        raise
    _agreed(claim.resume)
    return claim


def _run(spec: TrainSpec, device: str | torch.device | None) -> dict[str, Any]:
    """:func:`train_run` in its process group."""
    started = time.perf_counter() if spec.started is None else spec.started
    main = distributed.is_main()
    report = spec.report if main else (lambda line: None)  # rank 0 alone prints
    hp = dict(spec.hyperparameters)
    num_values = _check_without_data(spec, hp)
    with contextlib.ExitStack() as stack:
        claim = _claim(stack, spec, Path(spec.out), report) if spec.out is not None else None
        if claim is not None and spec.title:
            report(spec.title)
        ds = _read_data(spec, num_values, report)
        if claim is None:  # the default directory is named after the data
            claim = _claim(stack, spec, Path(f"runs/{spec.model}-{Path(ds.name).stem}"), report)
            if spec.title:
                report(spec.title)
        if spec.model == VQVAE:
            from chainrule.apps.vqvae import check_data_fits_vqvae

            check_data_fits_vqvae(ds)
        else:  # a Dataset given as it is says real values with num_values=None; a name or path needs "real"
            check_data_fits_model(spec.model, ds, real_values=num_values == REAL,
                                  require_real_flag=not isinstance(spec.dataset, Dataset))
        standardization = spec.standardize if isinstance(spec.standardize, Standardization) else None
        if spec.standardize is True:
            standardization = Standardization.fit(ds.train)  # the training split's statistics only
        if standardization is not None:
            report(f"standardizing: z = (x - mean) / std per dimension, from the {len(ds.train)} training examples "
                   f"(std {float(standardization.std.min()):.4g}..{float(standardization.std.max()):.4g}); NLLs are "
                   "reported for x (log p(x) = log p(z) - sum log std)")
        elif main and spec.model != VQVAE:
            hint = standardize_hint(ds)
            if hint:
                report(hint)
        extra = {**_provenance(spec, ds, num_values), **spec.extra}
        if spec.quickstart:
            extra["quickstart"] = True
        ranks = distributed.world_size()
        if ranks > 1:
            report(f"DDP: {ranks} ranks x {spec.config.batch_size // ranks} = global batch {spec.config.batch_size} "
                   f"({torch.distributed.get_backend()})")
        torch.manual_seed(spec.config.seed)  # the initial weights too: the same --seed, the same run
        if spec.model == VQVAE:
            from chainrule.apps.vqvae import fit_vqvae_run

            summary = fit_vqvae_run(ds, claim.out, hp, spec.config, extra, spec.progress, resume=claim.resume,
                                    device=device, report=report, force=claim.force, created=claim.created)
        else:
            summary = _train_run(spec.model, ds, claim.out, hp, spec.config, extra, spec.progress, spec.num_samples,
                                 claim.resume, spec.conditional, device, report, claim.force, claim.created, started,
                                 standardization, main)
        if main and spec.config_toml is not None:
            with output_file(claim.out / "config.toml") as tmp:
                tmp.write_text(spec.config_toml, encoding="utf-8")
        return summary


def _train_run(model_name: str, ds: Dataset, out: Path, hyperparameters: dict[str, Any],
               config: TrainConfig, extra: dict[str, Any], progress: bool, num_samples: int,
               resume: bool, conditional: bool, device: str | torch.device | None,
               report: Callable[[str], None], force: bool, created: bool, started: float,
               standardization: Standardization | None, main: bool) -> dict[str, Any]:
    """:func:`train_run` once its checks are made, inside the run directory's lock: the model built
    and trained (every rank), evaluated, sampled and written (rank 0; the others return ``{}``)."""
    hp = dict(hyperparameters)
    if standardization is not None:
        ds = standardization.dataset(ds)
        extra = {**extra, STANDARDIZE: standardization.to_dict()}
    train_y = val_y = test_y = None
    if conditional:
        if ds.num_classes is None:
            raise InputError(f"dataset {ds.name!r} has no labels: a class-conditional model needs labelled data")
        hp["num_classes"] = ds.num_classes
        train_y, val_y, test_y = ds.train_labels, ds.val_labels, ds.test_labels
    model = create_model(model_name, ds.shape, ds.num_values, **hp)
    report(f"model {model_name}: {model.num_parameters():,} parameters; data {ds.name}: "
           f"{len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test, shape {ds.shape}, num_values {ds.num_values}"
           + (f", {ds.num_classes} classes (conditional)" if conditional else ""))
    offset = standardization.log_det if standardization is not None else 0.0
    # rank 0 alone replaces a previous run (and undoes it on failure): the other ranks write nothing
    replacement = RunReplacement(out, force, created) if main and not resume else None
    trainer = Trainer(model, config, out_dir=out, extra={**(extra or {}), "conditional": conditional},
                      progress=progress, device=device,
                      unit=token_unit(ds),  # text: the bars show the loss per character / token
                      nll_offset=offset, budget_start=started,
                      reserve_examples=len(ds.test) + sampling_cost_examples(model, num_samples),
                      on_checkpoint=replacement.commit if replacement is not None else None)
    if resume:
        report(f"resuming from {out / 'last'}")
    elif main:  # the other ranks of a distributed run write nothing
        # the previous run (with --force) is moved aside, and removed only once this one has written
        # its first checkpoint; a failure before that puts it back (and removes this run's traces)
        assert replacement is not None
        replacement.begin(report)
    has_val = len(ds.val) > 0
    with replacing(replacement):
        result = trainer.fit(ds.train, ds.val if has_val else None, train_transform=ds.train_transform, resume=resume,
                             train_context=train_y, val_context=val_y if has_val else None)
    if not main:
        return {}
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
