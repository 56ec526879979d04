"""What the ``chainrule`` commands share: threads, devices, orders, ``-p NAME=VALUE`` hyperparameters, loading a run and the labels of its data."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from chainrule.apps.pipeline import class_columns, dataset_of, sample_labels
from chainrule.apps.rundir import checkpoint_dir
from chainrule.data import Dataset, read_npy
from chainrule.errors import InputError
from chainrule.io.checkpoint import read_config
from chainrule.io.outputs import check_output
from chainrule.models import load
from chainrule.training.threads import apply_default_threads


#: Ceilings of counts given on the command line (a typo such as -n 1e12 fails at once, in one line).
MAX_COUNT = 100_000
MAX_SEED = (1 << 63) - 1  # torch.manual_seed takes 64-bit seeds


#: The bounds of the commands' numeric options, checked right after parsing (:func:`check_ranges`):
#: option -> (low, high or None, what it is). An option a command does not have is skipped.
INT_RANGES: dict[str, tuple[int, int | None, str]] = {
    "n": (1, MAX_COUNT, "the number of samples"),
    "num_samples": (1, MAX_COUNT, "samples drawn after training"),
    "num": (1, MAX_COUNT, "completions per input"),
    "max_new_tokens": (1, 1_000_000, "tokens to generate"),
    "beam": (1, 4096, "the beam width; leave it out to sample"),
    "top_k": (1, None, "the most probable values kept"),
    "threads": (1, 4096, "torch CPU threads"),
    "num_maps": (1, 10_000, "how many inputs --maps shows"),
    "bootstrap": (1, 1_000_000, "bootstrap resamples"),
    "seed": (0, MAX_SEED, "a seed"),
    "data_seed": (0, MAX_SEED, "a seed"),
    "batch_size": (1, 1 << 24, "examples per batch"),
    "block_size": (1, 1 << 24, "tokens per window"),
    "limit": (1, None, "examples per split"),
    "parallel_steps": (1, 1 << 24, "passes of approximate parallel decoding"),
    "burst_window": (1, 1 << 24, "variables drafted per burst"),
}
#: option -> (low, high, what): finite numbers (NaN and inf refused).
FLOAT_RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "temperature": (0.0, None, "0 = greedy"),
    "top_p": (0.0, 1.0, "the nucleus' probability mass"),
    "length_penalty": (None, None, "the exponent of the length in the beam score"),
    "alpha": (0.0, 1.0, "the level of the test"),
}


def check_ranges(args: argparse.Namespace) -> None:
    """Refuse a numeric option outside its range (:data:`INT_RANGES`, :data:`FLOAT_RANGES`) with a
    one-line :class:`InputError` naming the option, before any work: ``-n 1e12``, ``--seed 10**30``,
    ``--length-penalty nan`` never reach an allocation or a silent NaN."""
    for dest, (low, high, what) in INT_RANGES.items():
        v = getattr(args, dest, None)
        if v is None or isinstance(v, bool) or not isinstance(v, int):
            continue
        if v < low or (high is not None and v > high):
            flag = "-n" if dest == "n" else "--" + dest.replace("_", "-")
            kind = "a positive integer" if dest == "threads" else f"an integer >= {low}"
            ceiling = "" if high is None else (" and <= 2**63-1" if high == MAX_SEED else f" and <= {high:,}")
            raise InputError(f"{flag} must be {kind}{ceiling} ({what}), got {v}")
    for dest, (flow, fhigh, what) in FLOAT_RANGES.items():
        v = getattr(args, dest, None)
        if v is None or not isinstance(v, float):
            continue
        if not math.isfinite(v) or (flow is not None and v < flow) or (fhigh is not None and v > fhigh):
            bounds = (f" in [{flow:g}, {fhigh:g}]" if fhigh is not None else f" >= {flow:g}") if flow is not None else ""
            raise InputError(f"--{dest.replace('_', '-')} must be a finite number{bounds} ({what}), got {v}")


def input_paths(args: argparse.Namespace) -> list[str]:
    """The files and folders a command reads (its run, ``input``, ``--input``, ``--in``, ``--out`` of
    detect, ``--mask``, ``runs``): an output may be none of them."""
    found: list[str] = []
    for name in ("run", "runs", "input", "inputs_in", "inputs_out", "mask", "background", "text_file"):
        v = getattr(args, name, None)
        if isinstance(v, str):
            found.append(v)
        elif isinstance(v, (list, tuple)):
            found.extend(x for x in v if isinstance(x, str))
    return found


def output_path(args: argparse.Namespace, explicit: str | Path | None, default: str | Path | None,
                option: str) -> Path:
    """The output of a command, checked by the one policy (:mod:`chainrule.io.outputs`) before any
    work: a path the user gave (``explicit``) may replace an existing file only with ``--force``; the
    ``default`` name chainrule picks inside the run directory (``RUN/samples.png``,
    ``RUN/probe.json``, ...) is the run's own output and is replaced. Neither is ever an input, a
    directory or inside a checkpoint: given a checkpoint directory itself as the run (``RUN/best``,
    a saved model), the default goes beside it."""
    if explicit:
        return check_output(explicit, force=getattr(args, "force", False), inputs=input_paths(args), option=option)
    assert default is not None
    default = Path(default)
    if (default.parent / "config.json").is_file() and (default.parent / "model.safetensors").is_file():
        default = default.parent.parent / default.name  # never inside the checkpoint
    return check_output(default, force=True, inputs=input_paths(args), option=option)


def process_start() -> float:
    """The ``time.perf_counter()`` value at which this process started (from ``/proc`` on Linux: the
    interpreter's start-up and the imports count too), or now where that cannot be read. A command
    run from the shell is its process, so its time budget (``--max-seconds``) counts from here."""
    import os
    import time

    now = time.perf_counter()
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, in clock ticks
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    return now - age if 0 <= age < 86400 else now


def set_threads(n: int | None) -> None:
    """``--threads``: None uses the cores that are free now (the cores minus the load average, at
    least 1: :func:`chainrule.training.threads.free_threads`, said in one log line; under torchrun
    the launcher's ranks share them, see :func:`chainrule.training.distributed.init_from_env`);
    anything else must be a positive integer."""
    if n is None:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            apply_default_threads()
        return
    if n < 1:
        raise InputError(f"--threads must be a positive integer (torch CPU threads), got {n}")
    torch.set_num_threads(n)


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


def order_arg(value: str | None) -> Any:
    """``--order``: a name (raster, reversed, random:SEED, snake, planar) or a JSON permutation."""
    if value is None:
        return None
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # JSONDecodeError, an int of > 4300 digits, nesting too deep
            raise InputError(f"--order {value[:60]!r}: a permutation must be a JSON list, e.g. [2,0,1]") from None
    return value


def device_of(args: argparse.Namespace) -> str:
    """The device of ``--device``: "auto" is a GPU when CUDA has one, else the CPU."""
    d = getattr(args, "device", None) or "auto"
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return d


def load_run(args: argparse.Namespace, threads: bool = True) -> tuple[Path, Any]:
    """``--threads`` applied (unless the caller did), and the run's checkpoint directory and model on ``--device``."""
    if threads:
        set_threads(args.threads)
    ckpt = checkpoint_dir(args.run)
    return ckpt, load(ckpt, device_of(args))


def checked_index(index: list[int], n: int, what: str) -> list[int]:
    """``--index`` values, each checked to lie in 0..n-1 of ``what`` (an error names the first that does not)."""
    bad = [i for i in index if not 0 <= i < n]
    if bad:
        raise InputError(f"--index {bad[0]} is outside {what} (0..{n - 1})")
    return index


def tokenizer_of(ckpt: Path) -> Any:
    """The tokenizer a text run was trained with (stored in its config), or None for other data."""
    spec = read_config(ckpt).get("extra", {}).get("tokenizer")
    if spec is None:
        return None
    from chainrule.text.tokenizers import tokenizer_from_dict

    return tokenizer_from_dict(spec)


def model_and_split(args: argparse.Namespace) -> tuple[Any, Dataset, Any, Any]:
    """The run's model, its dataset, the split ``args.split`` (training data as the model saw it:
    dynamic binarization / dequantization drawn once with seed 0) and the split's labels when the
    model is class-conditional."""
    ckpt, model = load_run(args)
    ds = dataset_of(ckpt, getattr(args, "dataset", None), args.data_dir, args.download,
                    getattr(args, "binarize", None), args.dequantize)
    data, labels = ds.split(args.split)
    if ds.train_transform is not None and args.split == "train":
        data = ds.train_transform(data, torch.Generator().manual_seed(0))
    if model.conditional and labels is None:
        raise InputError(f"{ckpt} is class-conditional but the {args.split} split of {ds.name!r} has no labels")
    return model, ds, data, labels if model.conditional else None


def given_labels(args: argparse.Namespace, ckpt: Path, model: Any) -> Any:
    """``--class``: one label (an int) or one per example (a list); None without it. Refused for a
    run that was trained without ``--class-conditional``."""
    if args.label is None:
        return None
    if not model.conditional:
        raise InputError(f"--class: {ckpt} is not class-conditional (trained without --class-conditional)")
    return args.label[0] if len(args.label) == 1 else args.label


def sampling_labels(args: argparse.Namespace, ckpt: Path, model: Any, n: int) -> tuple[Any, int | None]:
    """The labels of ``n`` samples and the grid's columns: ``--class`` as given, or, for a
    class-conditional run without it, every class in turn with one class per column."""
    if args.label is not None:  # `sample`'s --class: one label (an int) or one per sample, as given
        if not model.conditional:
            raise InputError(f"--class: {ckpt} is not class-conditional (trained without --class-conditional)")
        return args.label, None
    if model.conditional:
        return sample_labels(model.num_classes, n), class_columns(model.num_classes, n)
    return None, None


def run_and_labels(args: argparse.Namespace, per_example: str, api: str,
                   dataset_labels: bool = False) -> tuple[Path, Any, Any]:
    """Threads, the run's checkpoint and model, and the ``--class`` labels a command needs: required
    for a class-conditional run (unless ``dataset_labels``: then None, and the command takes the
    labels of a labelled dataset input, see :func:`completion_inputs`), refused for an
    unconditional one; a context-tensor run is pointed to the API (``api``)."""
    ckpt, model = load_run(args)
    labels = given_labels(args, ckpt, model)
    if labels is None and model.num_classes and not dataset_labels:
        raise InputError(f"{ckpt} is class-conditional: pass --class Y (a label in 0..{model.num_classes - 1}, "
                         f"{per_example})")
    if labels is None and not model.num_classes and model.conditional:
        raise InputError(f"{ckpt} is conditioned on a context tensor; use the Python API: {api}")
    return ckpt, model, labels


def completion_inputs(args: argparse.Namespace, ckpt: Path, model: Any, whole_split: bool = False,
                      labels: list[Any] | None = None) -> tuple[torch.Tensor, str]:
    """``--input``: image files, one ``.npy`` array ``(N, *shape)`` or ``(*shape)``, or a dataset
    (a name or path; the run's preprocessing) with ``--split`` and ``--index``. Returns the batch
    and a short description of where it came from; ``labels``, a list, receives the examples'
    class labels ``(N,)`` when the input is a labelled dataset."""
    from chainrule.apps.completion import is_image_path, read_images

    inputs = args.input
    if all(is_image_path(p) for p in inputs):
        return read_images(inputs, model.shape, model.num_values), f"{len(inputs)} image file(s)"
    if len(inputs) != 1:
        raise InputError("--input: give one .npy file or dataset name, or one or more image files")
    src = inputs[0]
    if src.lower().endswith(".npy"):
        try:
            x = torch.from_numpy(read_npy(src, InputError))
        except InputError as exc:
            raise InputError(f"--input {exc}") from None
        if tuple(x.shape) == tuple(model.shape):
            x = x.unsqueeze(0)
        if args.index is not None:
            x = x[checked_index(args.index, len(x), src)]
        return x, src
    ds = dataset_of(ckpt, src, args.data_dir, args.download)
    data, _ = ds.split(args.split)
    y = ds.labels(args.split)
    if args.index is None and whole_split:
        x, where = data, f"the {args.split} split of {ds.name} ({len(data)} examples)"
    else:
        index = args.index if args.index is not None else list(range(min(4, len(data))))
        x = data[checked_index(index, len(data), f"the {args.split} split of {ds.name!r}")]
        where = f"{ds.name} {args.split} examples {', '.join(map(str, index))}"
        y = None if y is None else y[torch.as_tensor(index)]
    if labels is not None and y is not None:
        labels.append(y)
    if ds.train_transform is not None and args.split == "train":  # dynamic binarization, drawn once
        x = ds.train_transform(x, torch.Generator().manual_seed(0))
    return x, where
