"""The ``chainrule`` command line: train, eval, sample, generate, inspect, complete, compress, decompress,
score, detect, probe, models, datasets, quickstart (and the n-gram commands). Each command is a thin layer over the library: the run
pipeline is :func:`chainrule.apps.pipeline.train_run`.

A *run directory* (written by ``chainrule train``) holds ``best/`` (the best model: safetensors +
JSON, including which dataset it was trained on), ``last/``, ``log.csv``, ``results.json``,
``curve.png`` and the samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chainrule._version import __version__
from chainrule.cli.config import (
    HYPERPARAMETERS,
    dumps_train_config,
    load_train_config,
    resolved_train_config,
)
from chainrule.apps.pipeline import (
    check_data_fits_model,
    check_run_dir,
    check_samples_path,
    checkpoint_dir,
    class_columns,
    dataset_of,
    default_samples_name,
    describe_eval,
    is_quickstart_run,
    parse_hyperparameters,
    parse_num_values,
    sample_labels,
    save_samples,
    train_run,
)
from chainrule.data import BINARIZE_CHOICES, Dataset, dataset_info, default_data_dir, load_dataset, read_npy
from chainrule.errors import ChainruleError, InputError
from chainrule.inference.likelihood import EVAL_BATCH_SIZE, bayes_classify, evaluate, evaluate_stream, token_unit
from chainrule.inference.sampling import default_generator
from chainrule.io.checkpoint import read_config
from chainrule.models import AutoregressiveModel, create_model, load
from chainrule.models.registry import check_hyperparameters, get_model_class, list_models
from chainrule.training import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig, Trainer
from chainrule.training import distributed

log = logging.getLogger("chainrule")


def _set_threads(n: int | None) -> None:
    """``--threads``: None keeps torch's default; anything else must be a positive integer."""
    if n is None:
        return
    if n < 1:
        raise InputError(f"--threads must be a positive integer (torch CPU threads), got {n}")
    torch.set_num_threads(n)


def _order_arg(value: str | None) -> Any:
    """``--order``: a name (raster, reversed, random:SEED, snake, planar) or a JSON permutation."""
    if value is None:
        return None
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # JSONDecodeError, an int of > 4300 digits, nesting too deep
            raise InputError(f"--order {value[:60]!r}: a permutation must be a JSON list, e.g. [2,0,1]") from None
    return value


# ---------------------------------------------------------------------- commands
def cmd_models(args: argparse.Namespace) -> int:
    if args.name:
        return _describe_model(args.name)
    for name in list_models():
        cls = get_model_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        kinds = ", ".join(k for k, ok in (("discrete", cls.supports_discrete), ("real", cls.supports_real)) if ok)
        print(f"{name:12s} {doc}  [{kinds}]")
    return 0


def _describe_model(name: str) -> int:
    """``chainrule models NAME``: what the model is, what it supports, its hyperparameters."""
    import inspect as _inspect

    from chainrule.models.registry import hyperparameter_help

    cls = get_model_class(name)
    doc = _inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    module = (_inspect.getmodule(cls).__doc__ or "").strip().split("\n\n")[0]
    print(f"{name}: {' '.join(doc.split())}")
    if module:
        print(f"  {' '.join(module.split())}")
    kinds = [k for k, ok in (("discrete", cls.supports_discrete), ("real-valued", cls.supports_real)) if ok]
    order = ("any order, given at call time" if cls.any_order else
             f"{cls.fixed_order} order only" if cls.fixed_order else "the order it is built with")
    print(f"  data: {', '.join(kinds)}{'; images (C, H, W) only' if cls.image_only else ''}; reads {order}; "
          f"cached sampling step: {'yes' if cls.step is not AutoregressiveModel.step else 'no (full pass per step)'}")
    print("\nhyperparameters (-p NAME=VALUE, JSON values):")
    for hp, default, text in hyperparameter_help(name):
        shown = "required" if default is _inspect.Parameter.empty else json.dumps(default, default=str)
        print(f"  {hp:24s} default {shown:10s} {text}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    for name, desc in dataset_info():
        print(f"{name:16s} {desc}")
    print("\nOr give a path: a .npy / .npz array file, a folder of PNG images, a PCM .wav file (audio),\n"
          "or any other file as text (--level char|byte, --block-size).")
    return 0


#: TrainConfig fields -> the options of `chainrule train` / `quickstart` that set them (for error messages)
_CONFIG_FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
                 "warmup_steps": "--warmup-steps", "grad_clip": "--grad-clip", "max_seconds": "--max-seconds",
                 "seed": "--seed", "steps_per_epoch": "--steps-per-epoch", "max_steps": "--max-steps",
                 "betas": "--beta1/--beta2", "min_lr": "--min-lr", "val_components": "--val-components",
                 "save_every": "--save-every", "keep_last": "--keep-last"}


def _checked_config(**kwargs: Any) -> TrainConfig:
    """``TrainConfig(**kwargs)`` with its errors naming the command-line option instead of the field."""
    try:
        return TrainConfig(**kwargs)
    except InputError as exc:
        msg = str(exc)
        name = msg.split(" ", 1)[0]
        if name not in _CONFIG_FLAGS:
            raise
        msg = _CONFIG_FLAGS[name] + msg[len(name):].replace("(or None: ", "(or leave the option out: ")
        raise InputError(msg) from None


def _train_config(args: argparse.Namespace) -> TrainConfig:
    if args.patience < 0:
        raise InputError(f"--patience must be an integer >= 0 (0: no early stopping), got {args.patience}")
    return _checked_config(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                           weight_decay=args.weight_decay, schedule=args.schedule, warmup_steps=args.warmup_steps,
                           grad_clip=args.grad_clip, patience=None if args.patience == 0 else args.patience,
                           max_seconds=args.max_seconds, seed=args.seed, steps_per_epoch=args.steps_per_epoch,
                           max_steps=args.max_steps, betas=(args.beta1, args.beta2), min_lr=args.min_lr,
                           val_components=args.val_components, precision=args.precision,
                           save_every=getattr(args, "save_every", None), keep_last=getattr(args, "keep_last", 1),
                           tensorboard=False if getattr(args, "no_tensorboard", False) else None)


def cmd_train(args: argparse.Namespace) -> int:
    """``chainrule train``; under ``torchrun`` (``WORLD_SIZE`` > 1) one data-parallel rank of the run
    (see :mod:`chainrule.training.distributed`): every rank trains, rank 0 alone writes the run
    directory, evaluates on the test split and draws the samples."""
    _set_threads(args.threads)
    device = distributed.init_from_env(_device(args), args.threads)
    try:
        return _train_command(args, device)
    finally:
        distributed.destroy()


def _train_command(args: argparse.Namespace, device: Any) -> int:
    for name, what in (("model", "the model: `chainrule train MODEL`"), ("dataset", "--dataset")):
        if not getattr(args, name, None):
            raise InputError(f"no {name}: give {what} or `{name} = \"...\"` in a --config file")
    # -p on the command line adds to / replaces the --config file's [hyperparameters] name by name
    hparams = {**getattr(args, "config_hyperparameters", {}), **parse_hyperparameters(args.param)}
    resolved = resolved_train_config(args, hparams, subparser(build_parser(), "train"))  # RUN/config.toml
    if args.order:
        hparams["order"] = _order_arg(args.order)
    check_hyperparameters(args.model, hparams)  # unknown names fail before the data is loaded
    config = _train_config(args)  # so do bad training options
    ranks = distributed.world_size()
    if config.batch_size % ranks:
        raise InputError(f"--batch-size {config.batch_size} is the global batch, split over {ranks} ranks: "
                         f"it must be a multiple of {ranks}")
    if args.out:  # an existing run in --out: refused before the data is loaded (unless --resume / --force)
        check_run_dir(args.out, args.resume, args.force)
    num_values = parse_num_values(getattr(args, "num_values", None))  # None, K or "real"
    ds = load_dataset(args.dataset, args.data_dir, download=args.download, binarize=args.binarize,
                      dequantize=args.dequantize, seed=args.data_seed, block_size=args.block_size, level=args.level,
                      num_values=num_values if isinstance(num_values, int) else None)
    if ds.values is not None and distributed.is_main():  # how K was read from the values: never silently
        print(ds.values.line())
    check_data_fits_model(args.model, ds, real_values=num_values == "real")
    out = Path(args.out or f"runs/{args.model}-{Path(ds.name).stem}")
    torch.manual_seed(args.seed)
    # where the data came from, as later commands (eval, sample, complete, ...) must find it again:
    # a file's absolute path, and the data folder even when it was given by $CHAINRULE_DATA
    data_dir = args.data_dir or default_data_dir()
    dataset = str(Path(args.dataset).resolve()) if Path(args.dataset).exists() else args.dataset
    extra = {"dataset": dataset, "binarize": args.binarize, "dequantize": args.dequantize, "data_seed": args.data_seed,
             "data_dir": str(data_dir) if data_dir else None, "command": sys.argv,
             "block_size": args.block_size, "level": args.level, "num_values": num_values,
             # the data's K before binarize / dequantize: eval, score, ... read other data with it
             "data_num_values": ds.values.num_values if ds.values is not None else
             num_values if isinstance(num_values, int) else None}
    if ds.tokenizer is not None:
        extra["tokenizer"] = ds.tokenizer.to_dict()
    if ds.sample_rate is not None:
        extra["sample_rate"] = ds.sample_rate
    if ds.class_names is not None:
        extra["class_names"] = list(ds.class_names)
    extra["run_config"] = resolved  # the options as RUN/config.toml holds them (train_config: the TrainConfig)
    if not distributed.is_main():  # a rank > 0: train only; rank 0 writes, evaluates and samples
        _train_follower(args, ds, out, hparams, config, extra, device)
        return 0
    if ranks > 1:
        print(f"DDP: {ranks} ranks x {config.batch_size // ranks} = global batch {config.batch_size} "
              f"({torch.distributed.get_backend()})")
    train_run(args.model, ds, out, hparams, config, extra, not args.no_progress, args.num_samples,
              resume=args.resume, conditional=args.class_conditional, device=device, report=print,
              force=args.force)
    _store_train_config(out, resolved)
    return 0


def _train_follower(args: argparse.Namespace, ds: Dataset, out: Path, hparams: dict[str, Any], config: TrainConfig,
                    extra: dict[str, Any], device: Any) -> None:
    """The training part of :func:`train_run` on a rank > 0 of a distributed run (the same model and
    ``fit`` call; the Trainer writes nothing on these ranks)."""
    hp, train_y, val_y = dict(hparams), None, None
    if args.class_conditional:
        if ds.num_classes is None:
            raise InputError(f"dataset {ds.name!r} has no labels: a class-conditional model needs labelled data")
        hp["num_classes"] = ds.num_classes
        train_y, val_y = ds.train_labels, ds.val_labels
    model = create_model(args.model, ds.shape, ds.num_values, **hp)
    trainer = Trainer(model, config, out_dir=out, extra={**extra, "conditional": args.class_conditional},
                      progress=False, device=device)
    has_val = len(ds.val) > 0
    trainer.fit(ds.train, ds.val if has_val else None, train_transform=ds.train_transform, resume=args.resume,
                train_context=train_y, val_context=val_y if has_val else None)


def _store_train_config(out: Path, resolved: dict[str, Any]) -> None:
    """Write the resolved configuration to ``out/config.toml`` once the run is done (a run that is
    refused or fails leaves its directory as it was; an interrupted run has it in
    ``last/config.json``'s ``extra.run_config``); a value TOML cannot hold (``-p NAME=null``) only warns."""
    try:
        text = dumps_train_config(resolved)
    except ValueError as exc:
        log.warning("not writing %s: %s", out / "config.toml", exc)
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(text, encoding="utf-8")


def _model_and_split(args: argparse.Namespace) -> tuple[Any, Dataset, Any, Any]:
    """The run's model, its dataset, the split ``args.split`` (training data as the model saw it:
    dynamic binarization / dequantization drawn once with seed 0) and the split's labels when the
    model is class-conditional."""
    ckpt, model = _load_run(args)
    ds = dataset_of(ckpt, getattr(args, "dataset", None), args.data_dir, args.download,
                    getattr(args, "binarize", None), args.dequantize)
    data, labels = ds.split(args.split)
    if ds.train_transform is not None and args.split == "train":
        data = ds.train_transform(data, torch.Generator().manual_seed(0))
    if model.conditional and labels is None:
        raise InputError(f"{ckpt} is class-conditional but the {args.split} split of {ds.name!r} has no labels")
    return model, ds, data, labels if model.conditional else None


def _device(args: argparse.Namespace) -> str:
    d = getattr(args, "device", None) or "auto"
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return d


def cmd_eval(args: argparse.Namespace) -> int:
    model, ds, data, labels = _model_and_split(args)
    if args.stride is not None:
        if not hasattr(data, "stream"):
            raise InputError("--stride applies to text and audio datasets (a token stream)")
        sres = evaluate_stream(model, data.stream, args.stride, progress=not args.no_progress, unit=token_unit(ds))
        print(f"{args.split}: {sres}")
        if args.json:
            print(json.dumps({"split": args.split, **sres.as_dict()}))
        return 0
    if args.bayes:
        if not model.num_classes:
            raise InputError("--bayes needs a class-conditional run (trained with --class-conditional)")
        if labels is None:
            raise InputError(f"--bayes: the {args.split} split of {ds.name!r} has no labels")
        prior = torch.bincount(torch.as_tensor(ds.train_labels).long(), minlength=model.num_classes).double()
        cls = bayes_classify(model, data, labels, prior, args.batch_size, progress=not args.no_progress)
        print(f"{args.split}: NLL given the true label {cls.nll_given_label_nats:.4f} nats/example | marginal NLL "
              f"-log sum_y p(x|y)p(y) {cls.nll_marginal_nats:.4f} nats/example | Bayes classifier accuracy "
              f"{100 * cls.accuracy:.2f}% | {cls.num_examples} examples, {cls.num_classes} classes, prior = training frequencies")
        if args.json:
            print(json.dumps({"split": args.split, **cls.as_dict()}))
        return 0
    res = evaluate(model, data, labels, args.batch_size, progress=not args.no_progress, unit=token_unit(ds))
    for line in describe_eval(args.split, res, ds):  # text / audio: per token (bits/char) first
        print(line)
    if args.json:
        print(json.dumps({"split": args.split, **res.as_dict()}))
    return 0


def _tokenizer_of(ckpt: Path) -> Any:
    spec = read_config(ckpt).get("extra", {}).get("tokenizer")
    if spec is None:
        return None
    from chainrule.text.tokenizers import tokenizer_from_dict

    return tokenizer_from_dict(spec)


def cmd_sample(args: argparse.Namespace) -> int:
    ckpt, model = _load_run(args)
    tok = _tokenizer_of(ckpt)
    is_image = len(model.shape) == 3 and model.shape[0] in (1, 3)
    labels = ncol = None
    if args.label is not None:
        if not model.conditional:
            raise InputError(f"--class: {ckpt} is not class-conditional (trained without --class-conditional)")
        labels = args.label
    elif model.conditional:
        labels = sample_labels(model.num_classes, args.n)  # every class in turn
        ncol = class_columns(model.num_classes, args.n)
    rate = read_config(ckpt).get("extra", {}).get("sample_rate")
    # the file asked for, or the run's default; an extension this run cannot be written as fails before sampling
    out = Path(args.out or (Path(args.run) / default_samples_name(is_image, tok, rate)))
    if args.out or tok is None:
        try:
            check_samples_path(out, is_image, tok, rate)
        except InputError as exc:
            raise InputError(f"--out {exc}") from None
    x = model.sample(args.n, labels, generator=default_generator(model, args.seed), temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p)
    if tok is not None and not args.out:
        for row in x:
            print(tok.decode(row.tolist()))
            print("----------")
        return 0
    out = save_samples(x, out, model.num_values, is_image, tok, rate, ncol)
    print(f"wrote {args.n} samples to {out}" + (f" (one column per class, 0..{ncol - 1})" if ncol and is_image else ""))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Continue a text prompt with a sequence model trained on text."""
    from chainrule.inference.beam import generate_beam
    from chainrule.inference.sampling import generate

    _set_threads(args.threads)
    if args.beam is not None and args.beam < 1:
        raise InputError(f"--beam must be an integer >= 1 (the beam width; leave it out to sample), got {args.beam}")
    ckpt, model = _load_run(args, threads=False)
    tok = _tokenizer_of(ckpt)
    if tok is None:
        raise InputError(f"{ckpt} was not trained on text (no tokenizer in its config); use `chainrule sample`")
    prompt = tok.encode(args.prompt)
    if args.beam is not None:
        hyps = generate_beam(model, prompt, args.max_new_tokens, args.beam, length_penalty=args.length_penalty)
        for h in hyps:
            print(f"[log p = {h.log_prob:.3f} nats, score {h.score:.4f}] {args.prompt}{tok.decode(h.tokens)}")
        return 0
    out = generate(model, prompt, args.max_new_tokens, num_samples=args.n, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, generator=default_generator(model, args.seed),
                   sliding=args.sliding_window)
    for row in out:
        print(tok.decode(row.tolist()))
        if args.n > 1:
            print("----------")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Per-variable conditionals of one example as a figure (the NADE paper's conditional maps)."""
    from chainrule.apps.inspection import inspect_example, plot_inspection

    if args.text is not None:  # a text of the user's: the run's tokenizer is enough, no dataset needed
        ckpt, model = _load_run(args)
        tok = _tokenizer_of(ckpt)
        if tok is None:
            raise InputError(f"--text: {ckpt} was not trained on text (no tokenizer in its config)")
        return _inspect_text(args, model, tok, args.text, None, "text", Path(args.run) / "inspect-text.png")
    model, ds, data, labels = _model_and_split(args)
    if not 0 <= args.index < len(data):
        raise InputError(f"--index {args.index} is outside the {args.split} split (0..{len(data) - 1})")
    x = data[args.index]
    if ds.tokenizer is not None:  # text: the characters themselves, not their ids as grey levels
        return _inspect_text(args, model, ds.tokenizer, x, None if labels is None else labels[args.index],
                             f"{args.split} example {args.index}",
                             Path(args.run) / f"inspect-{args.split}-{args.index}.png")
    ins = inspect_example(model, x, None if labels is None else labels[args.index])
    out = Path(args.out or Path(args.run) / f"inspect-{args.split}-{args.index}.png")
    plot_inspection(ins, out, model.num_values, title=f"{model.name}: {args.split} example {args.index}")
    worst = ins.nll.reshape(-1).topk(min(5, model.dim))
    print(f"{args.split} example {args.index}: NLL {ins.total_nll_nats:.3f} nats; most surprising variables "
          + ", ".join(f"{int(i)} ({float(v):.2f} nats)" for v, i in zip(worst.values, worst.indices)))
    print(f"wrote {out}")
    return 0


def _inspect_text(args: argparse.Namespace, model: Any, tok: Any, text: Any, label: Any, what: str,
                  default_out: Path) -> int:
    """``inspect`` of a text run: the text coloured by surprisal, a PNG or (``--out X.html``) a page."""
    from chainrule.apps.inspection import inspect_text, plot_text_surprisal, write_text_surprisal_html

    ins = inspect_text(model, tok, text, label)
    out = Path(args.out or default_out)
    title = f"{model.name}: {what}"
    if out.suffix.lower() in (".html", ".htm"):
        write_text_surprisal_html(ins, out, title)
    else:
        plot_text_surprisal(ins, out, title=title)
    print(ins.summary(what))
    print(f"wrote {out}")
    return 0


def _completion_inputs(args: argparse.Namespace, ckpt: Path, model: Any, whole_split: bool = False) -> tuple[torch.Tensor, str]:
    """``--input``: image files, one ``.npy`` array ``(N, *shape)`` or ``(*shape)``, or a dataset
    (a name or path; the run's preprocessing) with ``--split`` and ``--index``. Returns the batch
    and a short description of where it came from."""
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
            x = x[_checked_index(args.index, len(x), src)]
        return x, src
    ds = dataset_of(ckpt, src, args.data_dir, args.download)
    data, _ = ds.split(args.split)
    if args.index is None and whole_split:
        x, where = data, f"the {args.split} split of {ds.name} ({len(data)} examples)"
    else:
        index = args.index if args.index is not None else list(range(min(4, len(data))))
        x = data[_checked_index(index, len(data), f"the {args.split} split of {ds.name!r}")]
        where = f"{ds.name} {args.split} examples {', '.join(map(str, index))}"
    if ds.train_transform is not None and args.split == "train":  # dynamic binarization, drawn once
        x = ds.train_transform(x, torch.Generator().manual_seed(0))
    return x, where


def _checked_index(index: list[int], n: int, what: str) -> list[int]:
    bad = [i for i in index if not 0 <= i < n]
    if bad:
        raise InputError(f"--index {bad[0]} is outside {what} (0..{n - 1})")
    return index


def _load_run(args: argparse.Namespace, threads: bool = True) -> tuple[Path, Any]:
    """``--threads`` applied (unless the caller did), and the run's checkpoint directory and model on ``--device``."""
    if threads:
        _set_threads(args.threads)
    ckpt = checkpoint_dir(args.run)
    return ckpt, load(ckpt, _device(args))


def _run_and_labels(args: argparse.Namespace, per_example: str, api: str) -> tuple[Path, Any, Any]:
    """Threads, the run's checkpoint and model, and the ``--class`` labels a command needs: required
    for a class-conditional run, refused for an unconditional one; a context-tensor run is pointed
    to the API (``api``)."""
    ckpt, model = _load_run(args)
    labels = None
    if args.label is not None:
        if not model.conditional:
            raise InputError(f"--class: {ckpt} is not class-conditional (trained without --class-conditional)")
        labels = args.label[0] if len(args.label) == 1 else args.label
    elif model.num_classes:
        raise InputError(f"{ckpt} is class-conditional: pass --class Y (a label in 0..{model.num_classes - 1}, "
                         f"{per_example})")
    elif model.conditional:
        raise InputError(f"{ckpt} is conditioned on a context tensor; use the Python API: {api}")
    return ckpt, model, labels


def cmd_complete(args: argparse.Namespace) -> int:
    """Complete partially observed inputs: a PNG figure (images) and the completions as .npy."""
    from chainrule.apps.completion import complete, is_prefix_of_order, load_mask
    from chainrule.apps.plotting import plot_completions

    ckpt, model, labels = _run_and_labels(args, "or one per input", "chainrule.apps.completion.complete(model, x, mask, context=...)")
    x, source = _completion_inputs(args, ckpt, model)
    mask = load_mask(args.mask, model.shape, args.seed)
    comp = complete(model, x, mask, args.num, labels, default_generator(model, args.seed), args.temperature)
    n, shape = comp.shape[0], tuple(model.shape)
    full_mask = mask.expand(n, *shape).to(comp.device)  # check_mask already accepted the shape
    observed = int(full_mask[0].sum())
    print(f"{model.name}: {n} input(s) from {source}; mask {args.mask}: {observed} of {model.dim} variables "
          f"observed{' (example 0)' if tuple(mask.shape) != shape else ''}; {args.num} completions each")
    if model.any_order and getattr(model, "num_members", 1) == 1 and not is_prefix_of_order(model, full_mask):
        print(f"note: {model.name} was trained in one order; this mask conditions it in an order it never saw, "
              "so completions may be poor (an order-agnostic ensemble, -p num_orders=K, is trained for this)")
    is_image = len(shape) == 3 and shape[0] in (1, 3)
    out = Path(args.out or Path(args.run) / ("completions.png" if is_image else "completions.npy"))
    out.parent.mkdir(parents=True, exist_ok=True)
    npy = out.with_suffix(".npy")
    np.save(npy, comp.cpu().numpy())
    print(f"wrote completions {tuple(comp.shape)} (inputs, completions, *shape) to {npy}")
    if is_image and out.suffix.lower() == ".png":
        try:  # the original as given; placeholders at hidden positions (-1, NaN) shown as 0
            xin, _ = model.validate(x)
        except InputError:
            xin, _ = model.validate(torch.where(full_mask.cpu(), x.reshape(n, *shape), torch.zeros((), dtype=x.dtype)))
        plot_completions(xin, full_mask, comp, out, model.num_values, title=f"{model.name}: completions, mask {args.mask}")
        print(f"wrote figure {out}")
    if is_image:
        return 0
    tok = _tokenizer_of(ckpt)
    for i in range(n):
        print(f"example {i}:")
        if tok is not None:  # the observed tokens, '_' where hidden
            seen = full_mask[i].reshape(-1).tolist()
            print("  observed: " + "".join(tok.decode([t]) if o else "_" for t, o in zip(comp[i, 0].reshape(-1).tolist(), seen)))
        for j in range(args.num):
            row = comp[i, j].reshape(-1).tolist()
            print(f"  {j + 1}: " + (tok.decode(row) if tok is not None else np.array2string(np.asarray(row), max_line_width=200)))
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    """Lossless compression by range coding with the run's model (:mod:`chainrule.apps.compression`)."""
    from chainrule.apps.compression import compress_file

    ckpt, model, labels = _run_and_labels(args, "or one per example; it is stored in the compressed file",
                                          "chainrule.apps.compression.compress(model, x, context=...)")
    source: Any = args.input
    description = None
    if not Path(args.input).exists():  # a dataset name: the whole --split, or the examples --index picks
        ns = argparse.Namespace(input=[args.input], index=args.index, split=args.split, data_dir=args.data_dir,
                                download=args.download)
        source, description = _completion_inputs(ns, ckpt, model, whole_split=True)
    elif args.index is not None:
        raise InputError("--index applies to dataset inputs; for a file, compress the whole file")
    report = compress_file(model, source, args.output, labels, _tokenizer_of(ckpt), member=args.member,
                           description=description)
    for line in report.lines():
        print(line)
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    """Decode a file written by ``chainrule compress`` with the same run."""
    from chainrule.apps.compression import decompress_file

    ckpt, model = _load_run(args)
    paths = decompress_file(model, args.input, args.output, _tokenizer_of(ckpt))
    print(f"decompressed {args.input} (checksum verified) to {', '.join(map(str, paths))}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Linear probes of a run's features, layer by layer, against raw pixels (:mod:`chainrule.apps.probe`)."""
    from chainrule.apps.probe import probe

    ckpt, model = _load_run(args)
    ds = dataset_of(ckpt, args.dataset, args.data_dir, args.download, args.binarize, args.dequantize)
    res = probe(model, ds, args.layer, args.max_train, args.batch_size, pool=args.pool, seed=args.seed,
                progress=not args.no_progress,
                report=log.info)
    for line in res.lines():
        print(line)
    out = Path(args.out or Path(args.run) / "probe.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": str(args.run), **res.as_dict()}, indent=2) + "\n")
    print(f"wrote {out}")
    if not args.no_plot and len(res.rows) > 1:
        from chainrule.apps.plotting import plot_probe

        fig = plot_probe([r.layer for r in res.rows], [r.val_accuracy for r in res.rows],
                         [r.test_accuracy for r in res.rows], out.with_suffix(".png"), res.baseline.test_accuracy,
                         title=f"{res.model} on {res.dataset}: linear probes")
        print(f"wrote figure {fig}")
    return 0


# ---------------------------------------------------------------------- anomaly / OOD detection
def _file_label(name: str) -> str:
    """A dataset name or path as a piece of a file name (``fashion-mnist``, ``x`` for ``x.npy``)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).stem or name).strip("-") or "input"


def _anomaly_data(src: list[str], ckpt: Path, model: Any, args: argparse.Namespace, what: str) -> tuple[torch.Tensor, str]:
    """INPUT of ``score`` and ``--in`` / ``--out`` of ``detect``: image files, one ``.npy`` array
    ``(N, *shape)`` or ``(*shape)``, or a dataset name/path, preprocessed as the run's data were (its
    recorded binarize / dequantize, unless ``--binarize``), split ``--split``, first ``--limit``.
    Returns the validated batch and a short label of where it came from."""
    from chainrule.apps.completion import is_image_path, read_images
    from chainrule.errors import DataError

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be a positive integer, got {args.limit}")
    if all(is_image_path(p) for p in src):
        try:
            x = read_images(src, model.shape, model.num_values)
        except InputError as exc:
            raise InputError(f"{what}: {exc}") from None
        label = _file_label(src[0]) if len(src) == 1 else f"{len(src)}-images"
    elif len(src) != 1:
        raise InputError(f"{what}: give one .npy file or dataset name, or one or more image files")
    elif src[0].lower().endswith(".npy"):
        try:
            x = torch.from_numpy(read_npy(src[0], InputError))
        except InputError as exc:
            raise InputError(f"{what} {exc}") from None
        if tuple(x.shape) == tuple(model.shape):
            x = x.unsqueeze(0)
        label = _file_label(src[0])
    else:
        try:
            ds = dataset_of(ckpt, src[0], args.data_dir, args.download, args.binarize)
        except DataError as exc:
            raise DataError(f"{what} {src[0]}: {exc}") from None
        if tuple(ds.shape) != tuple(model.shape) or ds.num_values != model.num_values:
            hint = " (pass --binarize threshold or dynamic)" if model.num_values == 2 and ds.num_values == 256 else ""
            raise InputError(f"{what} {src[0]}: its examples have shape {tuple(ds.shape)} with num_values={ds.num_values}; "
                             f"the run models shape {tuple(model.shape)} with num_values={model.num_values}{hint}")
        x, _ = ds.split(args.split)
        if ds.train_transform is not None and args.split == "train":  # dynamic binarization, drawn once
            x = ds.train_transform(x, torch.Generator().manual_seed(0))
        label = _file_label(ds.name)
    if args.limit is not None:
        x = x[: args.limit]
    if len(x) == 0:
        raise InputError(f"{what} {' '.join(src)}: no examples")
    try:
        x, _ = model.validate(x)
    except InputError as exc:
        raise InputError(f"{what} {' '.join(src)}: {exc}") from None
    return x, label


def _refuse_conditional(model: Any, ckpt: Path, command: str) -> None:
    if model.conditional:
        raise InputError(f"{ckpt} is conditional: `chainrule {command}` scores unconditional runs; from Python, "
                         "pass context= to chainrule.apps.anomaly.compute_score")


def _background_model(args: argparse.Namespace, ckpt: Path, model: Any) -> Any:
    """The background model of the likelihood-ratio score: ``--background DIR``, or one trained now
    with ``--train-background RATE`` into ``RUN/background/``, or the one already there."""
    from chainrule.apps.anomaly import check_compatible, train_background
    from chainrule.apps.pipeline import clear_run_dir, run_files
    from chainrule.io.checkpoint import CONFIG_FILE

    own = Path(args.run) / "background"
    if args.background and args.train_background is not None:
        raise InputError("--background uses a trained background model and --train-background trains one: pass one of them")
    if args.train_background is not None:
        rate = args.train_background
        if not 0 < rate <= 1:
            raise InputError(f"--train-background is the perturbation rate, a number in (0, 1] (e.g. 0.2), got {rate}")
        if args.background_epochs < 1:
            raise InputError(f"--background-epochs must be a positive integer, got {args.background_epochs}")
        steps = args.background_steps_per_epoch
        if steps is not None and steps < 1:
            raise InputError(f"--background-steps-per-epoch must be a positive integer, got {steps}")
        extra = read_config(ckpt).get("extra", {})
        ds = dataset_of(ckpt, None, args.data_dir, args.download)  # the run's training data, as it saw them
        fields = TrainConfig.__dataclass_fields__
        tc = {k: v for k, v in (extra.get("train_config") or {}).items() if k in fields}
        tc.update(epochs=args.background_epochs, max_steps=None, max_seconds=None)
        if steps is not None:
            tc["steps_per_epoch"] = steps
        if args.background_weight_decay is not None:
            if not args.background_weight_decay >= 0:
                raise InputError(f"--background-weight-decay must be a number >= 0, got {args.background_weight_decay}")
            tc["weight_decay"] = args.background_weight_decay
        if "betas" in tc:
            tc["betas"] = tuple(tc["betas"])
        config = TrainConfig(**tc)
        if run_files(own):
            clear_run_dir(own)
        per_epoch = f" of {config.steps_per_epoch} steps" if config.steps_per_epoch else ""
        print(f"training a background model ({model.name}, the run's configuration) for {config.epochs} epoch(s){per_epoch} on "
              f"the training split of {ds.name}, each value replaced w.p. {rate} (Ren et al. 2019) -> {own}")
        keep = ("dataset", "binarize", "dequantize", "data_seed", "data_dir", "block_size", "level")
        bg = train_background(model.config, ds.train, rate, config, val_data=ds.val if len(ds.val) else None,
                              train_transform=ds.train_transform, out_dir=own,
                              extra={**{k: extra[k] for k in keep if k in extra}, "background_of": str(ckpt)},
                              progress=not args.no_progress, device=_device(args))
        return bg
    path = args.background
    if path is None:
        if not (own / "best" / CONFIG_FILE).is_file():
            raise InputError("--score likelihood-ratio needs a background model: --background DIR (a run trained on "
                             "perturbed data) or --train-background RATE (trains one into RUN/background/)")
        path = str(own)
        print(f"using the background model in {own}")
    bg = load(checkpoint_dir(path), _device(args))
    check_compatible(model, bg, f"--background {path}")
    return bg


def _score_options(args: argparse.Namespace, ckpt: Path, model: Any) -> tuple[dict[str, Any], np.ndarray | None]:
    """The options of ``compute_score`` for ``--score`` (and, for typicality, the validation NLLs)."""
    from chainrule.apps.anomaly import nll_bits_per_dim

    opts: dict[str, Any] = {"batch_size": args.batch_size, "progress": not args.no_progress}
    ref = None
    if args.score == "input-complexity":
        opts["compressor"] = args.compressor
    elif args.score == "likelihood-ratio":
        opts["background"] = _background_model(args, ckpt, model)
    elif args.score == "typicality":
        if not read_config(ckpt).get("extra", {}).get("dataset"):
            raise InputError(f"--score typicality needs the run's validation split; {ckpt} records no dataset")
        ds = dataset_of(ckpt, None, args.data_dir, args.download)
        if len(ds.val) == 0:
            raise InputError(f"--score typicality needs held-out data: the validation split of {ds.name!r} is empty")
        ref = nll_bits_per_dim(model, ds.val, None, args.batch_size, not args.no_progress)
        opts["reference"] = float(ref.mean())
        print(f"typicality: Ĥ = {ref.mean():.4f} bits/dim, the mean NLL of the {len(ref)} validation examples of {ds.name}")
    return opts, ref


def cmd_score(args: argparse.Namespace) -> int:
    """Per-example anomaly scores of some inputs (:mod:`chainrule.apps.anomaly`), as a CSV."""
    import csv

    from chainrule.apps.anomaly import SCORES, compute_score, nll_map, summary_statistics

    ckpt, model = _load_run(args)
    _refuse_conditional(model, ckpt, "score")
    is_image = len(model.shape) == 3 and model.shape[0] in (1, 3)
    if args.maps and not is_image:
        raise InputError(f"--maps draws images; this run models shape {tuple(model.shape)} (not images)")
    x, label = _anomaly_data(args.input, ckpt, model, args, "INPUT")
    opts, _ = _score_options(args, ckpt, model)
    s = compute_score(args.score, model, x, **opts)
    st = summary_statistics(s)
    print(f"{args.score} of {len(s)} input(s) from {label} ({SCORES[args.score].description}):")
    print(f"  mean {st['mean']:.4f} | std {st['std']:.4f} | min {st['min']:.4f} | 25% {st['q25']:.4f} | "
          f"median {st['median']:.4f} | 75% {st['q75']:.4f} | max {st['max']:.4f}")
    top = np.argsort(-s, kind="stable")
    print("  most anomalous: " + ", ".join(f"#{i} ({s[i]:.4f})" for i in top[:5]))
    out = Path(args.out or Path(args.run) / f"scores-{label}-{args.score}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "score"])
        w.writerows((i, repr(float(v))) for i, v in enumerate(s))
    print(f"wrote {len(s)} scores to {out}")
    if args.maps:
        from chainrule.apps.plotting import plot_nll_maps

        idx = torch.as_tensor(top[: max(1, args.num_maps)].copy())
        maps = nll_map(model, x[idx.to(x.device)], batch_size=args.batch_size)
        fig = plot_nll_maps(x[idx.to(x.device)].cpu(), maps, args.maps, model.num_values,
                            labels=[f"#{int(i)}: {s[int(i)]:.3f}" for i in idx],
                            title=f"{model.name}: the {len(idx)} highest {args.score} scores of {label}")
        print(f"wrote NLL maps of the {len(idx)} most anomalous inputs to {fig}")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    """How well a score tells in-distribution inputs from OOD ones: AUROC, AUPR, FPR@95%TPR."""
    from chainrule.apps.anomaly import compute_score, detection_metrics, nll_bits_per_dim, typicality_test_from_nll
    from chainrule.apps.plotting import plot_score_histograms

    ckpt, model = _load_run(args)
    _refuse_conditional(model, ckpt, "detect")
    if args.group_size is not None and args.score != "typicality":
        raise InputError("--group-size is the typicality test on groups of M inputs: use it with --score typicality")
    if args.bootstrap < 1:
        raise InputError(f"--bootstrap must be a positive integer (resamples), got {args.bootstrap}")
    src_in = args.inputs_in
    if src_in is None:
        recorded = read_config(ckpt).get("extra", {}).get("dataset")
        if not recorded:
            raise InputError(f"{ckpt} records no dataset: pass --in (the in-distribution inputs)")
        src_in = [recorded]
    x_in, in_label = _anomaly_data(src_in, ckpt, model, args, "--in")
    x_out, out_label = _anomaly_data(args.inputs_out, ckpt, model, args, "--out")
    opts, ref = _score_options(args, ckpt, model)
    name = args.score
    if args.group_size is not None:
        nll_in = nll_bits_per_dim(model, x_in, None, args.batch_size, not args.no_progress)
        nll_out = nll_bits_per_dim(model, x_out, None, args.batch_size, not args.no_progress)
        t_in = typicality_test_from_nll(nll_in, ref, args.group_size, args.alpha, args.bootstrap, args.seed)
        t_out = typicality_test_from_nll(nll_out, ref, args.group_size, args.alpha, args.bootstrap, args.seed)
        s_in, s_out = t_in.statistic, t_out.statistic
        name = f"typicality-M{args.group_size}"
        print(f"typicality test on groups of {args.group_size}: threshold {t_in.threshold:.4f} bits/dim (alpha "
              f"{args.alpha}); flagged {100 * t_in.is_ood.mean():.1f}% of {len(s_in)} in-distribution groups and "
              f"{100 * t_out.is_ood.mean():.1f}% of {len(s_out)} OOD groups")
    else:
        s_in = compute_score(name, model, x_in, **opts)
        s_out = compute_score(name, model, x_out, **opts)
    res = detection_metrics(s_in, s_out, args.bootstrap, seed=args.seed, score=name)
    print(f"{name}: in {in_label} ({len(s_in)}; mean {s_in.mean():.4f}) vs out {out_label} "
          f"({len(s_out)}; mean {s_out.mean():.4f}), bits/dim")
    for line in res.lines():
        print(line)
    if res["auroc"].value < 0.5:
        others = " or ".join(s for s in ("input-complexity", "likelihood-ratio", "typicality") if s != args.score)
        print("note: AUROC below 0.5 — the OOD inputs look *less* anomalous than the in-distribution ones"
              + (", the failure of raw likelihood of Nalisnick et al. (2019)" if args.score == "nll" else "")
              + f"; try --score {others}")
    out = Path(args.report or Path(args.run) / f"detect-{in_label}-vs-{out_label}-{name}.png")
    fig = plot_score_histograms(s_in, s_out, out, f"in: {in_label}", f"out: {out_label}", f"{name} (bits/dim)",
                                title=f"{model.name}: {in_label} vs {out_label}",
                                note=f"AUROC {res['auroc']}\nFPR@95%TPR {res['fpr_at_95_tpr']}")
    print(f"wrote {fig}")
    if args.json:
        print(json.dumps({"in": in_label, "out": out_label, **res.as_dict()}))
    return 0


#: The quick start's two recipes on the 8x8 digits (measured in BENCHMARKS.md, "The quick start").
QUICKSTART_OUT = "runs/quickstart"  # the quick start's own directory: its previous run there is replaced
QUICKSTART = {
    # 2-D masked convolutions see a pixel's neighbourhood above and to the left: 81.6 nats in 100 s
    "gated_pixelcnn": ("a Gated PixelCNN (van den Oord et al. 2016)",
                       {"channels": 32, "num_layers": 5, "head_channels": 32, "first_kernel_size": 5},
                       {"lr": 3e-3, "optimizer": "adam", "patience": 10}),
    # the book's configuration: 1-D causal convolutions over the raster sequence, 85.2 nats in ~7 min
    "causalconv": ("the causal-convolution ARM of 'Deep Generative Modeling' (Tomczak, ch. 2)", {},
                   {"lr": 1e-3, "optimizer": "adamax", "patience": 20}),
}


def cmd_report(args: argparse.Namespace) -> int:
    """Write one self-contained HTML page for a run, or a comparison of several runs."""
    from chainrule.apps.report import write_report

    path = write_report(args.runs, args.out, args.title)
    print(f"wrote {path}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Train an image model on the bundled 8x8 digits: under two minutes on a laptop CPU.

    Its output directory is its own: a previous quickstart run there (the default runs/quickstart,
    or any run marked as quickstart's) is replaced without asking; another run is refused unless --force."""
    _set_threads(args.threads)
    what, hparams, opt = QUICKSTART[args.model]
    config = _checked_config(epochs=args.epochs, batch_size=64, max_seconds=args.max_seconds, seed=args.seed, **opt)
    out = Path(args.out)
    own = out == Path(QUICKSTART_OUT) or is_quickstart_run(out)
    check_run_dir(out, force=args.force or own)
    ds = load_dataset("digits")
    print(f"chainrule quickstart: {what} on scikit-learn's 8x8 digits (17 grey levels)")
    extra = {"dataset": "digits", "command": sys.argv, "quickstart": True}
    summary = train_run(args.model, ds, out, hparams, config, extra, not args.no_progress, 64, report=print,
                        force=args.force or own)
    t = summary["test"]
    print(f"\nTest NLL: {t['nll_nats']:.2f} nats per image = {t['bits_per_dim']:.4f} bits/dim "
          f"(uniform guessing: {64 * np.log(17):.1f} nats)")
    print(f"Next: chainrule sample {out} -n 64   |   chainrule eval {out} --split test   |   "
          f"chainrule complete {out} --input digits --mask top-half")
    return 0


# ---------------------------------------------------------------------- parser
class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after an option's help, except when there is nothing to show (a
    ``None`` / ``False`` / ``[]`` default) or the help already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == [] \
                or action.default == argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The subcommand ``name``'s parser of ``parser`` (e.g. ``train``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; for ``train --config FILE``, parse again with the file's values as the
    defaults of ``train``, so the command line overrides the file (defaults < file < command line)."""
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "train" and getattr(args, "config", None):
        train = subparser(parser, "train")
        values = load_train_config(args.config, train)
        hyperparameters = values.pop(HYPERPARAMETERS, {})
        train.set_defaults(**values)
        args = parser.parse_args(argv)
        args.config_hyperparameters = hyperparameters
    return args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chainrule", description="Autoregressive generative models: train, evaluate, sample.")
    p.add_argument("--version", action="version", version=f"chainrule {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data-dir", help="folder with the dataset files (default: $CHAINRULE_DATA)")
        sp.add_argument("--download", action="store_true", help="download missing files from the official mirror (checksummed)")
        sp.add_argument("--binarize", choices=[c for c in BINARIZE_CHOICES if c], help="binarize grey images")
        sp.add_argument("--block-size", type=int, default=256, help="text: window length in tokens (the context)")
        sp.add_argument("--level", choices=["char", "byte"], default="char", help="text: character or byte tokens")
        sp.add_argument("--dequantize", action="store_true",
                        help="uniform dequantization (x + u) / K, for real-valued models (rnade, Gaussian heads)")

    def decoding_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
        sp.add_argument("--top-k", type=int, default=None)
        sp.add_argument("--top-p", type=float, default=None)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--threads", type=int, help="torch CPU threads")
        sp.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when there is one)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")

    m = sub.add_parser("models", help="list the registered models, or describe one (its hyperparameters)")
    m.add_argument("name", nargs="?", help="a model name: show what it is and its hyperparameters with defaults")
    m.set_defaults(func=cmd_models)
    sub.add_parser("datasets", help="list the named datasets").set_defaults(func=cmd_datasets)

    t = sub.add_parser("train", help="train a model by maximum likelihood",
                       description="Example: chainrule train made --dataset binarized-mnist -p hidden_sizes=[500] --epochs 200. "
                                   "Every option can come from a TOML file (--config); the command line overrides it.",
                       formatter_class=_DefaultsHelpFormatter)
    t.add_argument("model", nargs="?", default=None, help="model name (see `chainrule models`); or `model` in --config")
    t.add_argument("--config", metavar="FILE.toml",
                   help="TOML file of train options (keys: the option names, e.g. batch-size = 32; model; "
                        "a [hyperparameters] table for -p); the command line overrides it. The resolved "
                        "configuration is written to RUN/config.toml")
    t.add_argument("--dataset", help="dataset name (see `chainrule datasets`) or a .npy/.npz/PNG-folder path")
    data_args(t)
    t.add_argument("--data-seed", type=int, default=0, help="seed of data splits / dynamic binarization of val and test")
    t.add_argument("--num-values", metavar="K",
                   help="number of discrete values K of the data, instead of the K inferred from the values "
                        "(must exceed the largest value; a larger K is allowed); 'real': real-valued data for a "
                        "model that is discrete by default (fvsbn, nade, made, ...)")
    t.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="model hyperparameter, value in JSON (repeatable), e.g. -p hidden_sizes=[500,500]")
    t.add_argument("--order", help="ordering: raster (pixel-major on images), planar, reversed, random:SEED, snake, "
                                  "or a permutation as a JSON list, e.g. [2,0,1]")
    t.add_argument("--class-conditional", action="store_true",
                   help="train p(x | label) on the dataset's labels (the model gets num_classes)")
    t.add_argument("--out", help="run directory (default runs/MODEL-DATASET)")
    t.add_argument("--epochs", type=int, default=100, help="maximum epochs")
    t.add_argument("--batch-size", type=int, default=64, help="examples per optimizer step")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    t.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adam", help="optimizer")
    t.add_argument("--weight-decay", type=float, default=0.0, help="weight decay")
    t.add_argument("--schedule", choices=list(SCHEDULES), default="constant", help="learning-rate schedule")
    t.add_argument("--warmup-steps", type=int, default=0, help="steps of linear learning-rate warm-up")
    t.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this")
    t.add_argument("--patience", type=int, default=20, help="early-stopping patience in epochs (0: off)")
    t.add_argument("--max-seconds", type=float, default=None,
                   help="wall-clock budget for training, checked after each epoch; with --resume it counts from "
                        "the resume (log.csv's seconds are the whole run's)")
    t.add_argument("--steps-per-epoch", type=int, default=None,
                   help="batches of random examples per epoch (validation after each); default: one pass")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    t.add_argument("--save-every", type=int, default=None,
                   help="also write RUN/last/ every N optimizer steps, so that --resume continues mid-epoch "
                        "(default: only after every epoch; SIGINT/SIGTERM always save before stopping)")
    t.add_argument("--keep-last", type=int, default=1, metavar="K",
                   help="also keep the K most recent checkpoints as RUN/checkpoints/step-N/ (1: only RUN/last/)")
    t.add_argument("--no-tensorboard", action="store_true",
                   help="no TensorBoard event files (by default written to RUN/tensorboard/ when the tensorboard "
                        "package is installed)")
    t.add_argument("--beta1", type=float, default=0.9, help="Adam beta1")
    t.add_argument("--beta2", type=float, default=0.999, help="Adam beta2")
    t.add_argument("--min-lr", type=float, default=0.0, help="floor of the cosine schedule")
    t.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its last/ checkpoint (same model and data; "
                        "raise --epochs or give a new --max-seconds to train longer; other changed options are "
                        "listed in a warning, and refused where they cannot continue the run)")
    t.add_argument("--force", action="store_true",
                   help="--out already holds a run: replace it (removes only the files chainrule writes: best/, "
                        "last/, log.csv, curve.png, results.json, samples.*; other files stay)")
    t.add_argument("--val-components", type=int, default=None,
                   help="ensembles: validate each epoch with the first N orderings/masks (default: all)")
    t.add_argument("--seed", type=int, default=0, help="seed of initialization, batches and samples")
    t.add_argument("--precision", choices=list(PRECISIONS), default="auto",
                   help="arithmetic of the training pass: auto (bfloat16 autocast for convolutional models on a "
                        "CPU with AMX or a GPU with bf16, else float32), float32, bfloat16, float16; the "
                        "likelihood and loss stay float32")
    t.add_argument("--num-samples", type=int, default=64, help="samples drawn after training")
    common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="exact NLL of a trained model (nats, bits/dim, perplexity)")
    e.add_argument("run", help="run directory or checkpoint directory")
    e.add_argument("--split", choices=["train", "val", "test"], default="test")
    e.add_argument("--dataset", help="evaluate on another dataset than the one trained on")
    data_args(e)
    e.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE, help="examples per forward pass (default: %(default)s)")
    e.add_argument("--json", action="store_true", help="also print the result as JSON")
    e.add_argument("--bayes", action="store_true",
                   help="class-conditional runs: classify by argmax_y p(x|y)p(y) (one pass per class) and report "
                        "the accuracy, the NLL given the label and the marginal NLL")
    e.add_argument("--stride", type=int, default=None,
                   help="text/audio: score the whole stream with windows every STRIDE tokens (each token once, "
                        "with at least window - stride tokens of context)")
    common(e)
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("sample", help="draw samples: a PNG grid (images), text (text runs), WAV (audio), else .npy")
    s.add_argument("run", help="run directory or checkpoint directory")
    s.add_argument("-n", type=int, default=64, help="number of samples")
    s.add_argument("--out", help="output file, written as its extension says: image runs .png, .jpg, .jpeg (a grid) "
                                 "or .npy; text runs .txt or .npy (token ids); audio runs .wav or .npy (mu-law codes); "
                                 "others .npy. Default RUN/samples.png, .wav or .npy (text runs: printed)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--class", dest="label", type=int, default=None,
                   help="class-conditional models: sample this class (default: every class in turn)")
    decoding_args(s)
    common(s)
    s.set_defaults(func=cmd_sample)

    gen = sub.add_parser("generate", help="continue a text prompt (sequence models trained on text)")
    gen.add_argument("run", help="run directory or checkpoint directory")
    gen.add_argument("--prompt", default="", help="text to continue (its characters must be in the vocabulary)")
    gen.add_argument("--max-new-tokens", type=int, default=200)
    gen.add_argument("-n", type=int, default=1, help="number of continuations")
    gen.add_argument("--seed", type=int, default=0)
    decoding_args(gen)
    gen.add_argument("--beam", type=int, default=None,
                     help="beam search with this width (>= 1) instead of sampling")
    gen.add_argument("--length-penalty", type=float, default=0.0, help="beam score = log p / length**penalty")
    gen.add_argument("--sliding-window", action="store_true",
                     help="allow prompt + new tokens beyond the model's context window (older tokens drop out of view)")
    common(gen)
    gen.set_defaults(func=cmd_generate)

    i = sub.add_parser("inspect", help="figure of one example's per-variable conditionals and NLL "
                                       "(text runs: the text, each character coloured by its surprisal in bits)")
    i.add_argument("run", help="run directory or checkpoint directory")
    i.add_argument("--split", choices=["train", "val", "test"], default="test")
    i.add_argument("--index", type=int, default=0, help="which example of the split")
    i.add_argument("--dataset", help="take the example from another dataset than the one trained on")
    i.add_argument("--text", help="text runs: score this text instead of an example of the split (one longer than "
                                  "the model's window is scored window by window, each token once)")
    data_args(i)
    i.add_argument("--out", help="output PNG (default RUN/inspect-SPLIT-INDEX.png, or RUN/inspect-text.png); "
                                 "text runs also .html: a page whose characters show their bits on hover")
    common(i)
    i.set_defaults(func=cmd_inspect)

    c = sub.add_parser("complete", help="complete partially observed inputs (a mask of observed variables)",
                       description="Example: chainrule complete runs/nade-digits --input digits --index 0 1 2 "
                                   "--mask center --num 6. Any-order models (nade, made, fvsbn, ...) take any mask; "
                                   "fixed-order ones (transformer, rnn, ...) a prefix of their order (top-half).")
    c.add_argument("run", help="run directory or checkpoint directory")
    c.add_argument("--input", nargs="+", required=True,
                   help="a .npy array (N, *shape) or (*shape), image file(s), or a dataset name/path (see --split, --index)")
    c.add_argument("--index", type=int, nargs="+", default=None,
                   help="which examples of the dataset (default 0 1 2 3) or rows of the .npy")
    c.add_argument("--split", choices=["train", "val", "test"], default="test", help="dataset split of --input")
    c.add_argument("--mask", required=True,
                   help="observed variables: top-half, bottom-half, left-half, right-half (that half observed), "
                        "center (a centred square hidden), random:P (each pixel observed with probability P), "
                        "a .npy (bool or 0/1, event shape or (N, *shape)) or a PNG (non-zero = observed)")
    c.add_argument("--num", type=int, default=4, help="completions per input")
    c.add_argument("--seed", type=int, default=0, help="seed of the draws (and of random:P masks)")
    c.add_argument("--class", dest="label", type=int, nargs="+", default=None,
                   help="class-conditional runs (required there): the label, or one per input")
    c.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    c.add_argument("--out", help="output PNG (images) or .npy; default RUN/completions.png; the .npy goes next to it")
    c.add_argument("--data-dir", help="folder with the dataset files (default: $CHAINRULE_DATA)")
    c.add_argument("--download", action="store_true", help="download missing dataset files (checksummed)")
    common(c)
    c.set_defaults(func=cmd_complete)

    z = sub.add_parser("compress", help="compress data losslessly with a run's model (range coding)",
                       description="Example: chainrule compress runs/nade-digits x.npy x.crz. INPUT: a .npy array "
                                   "(N, *shape) or (*shape), an image file or folder of images, a text file (runs "
                                   "trained on text), or a dataset name (see --split, --index).")
    z.add_argument("run", help="run directory or checkpoint directory")
    z.add_argument("input", help=".npy, image file, folder of images, text file, or a dataset name")
    z.add_argument("output", help="the compressed file to write")
    z.add_argument("--class", dest="label", type=int, nargs="+", default=None,
                   help="class-conditional runs (required there): the label, or one per example (stored in the file)")
    z.add_argument("--index", type=int, nargs="+", default=None, help="dataset inputs: which examples (default: the whole split)")
    z.add_argument("--split", choices=["train", "val", "test"], default="test", help="dataset split of a dataset input")
    z.add_argument("--member", type=int, default=None, help="ensembles: code with this member")
    z.add_argument("--data-dir", help="folder with the dataset files (default: $CHAINRULE_DATA)")
    z.add_argument("--download", action="store_true", help="download missing dataset files (checksummed)")
    common(z)
    z.set_defaults(func=cmd_compress)

    u = sub.add_parser("decompress", help="decompress a file written by `chainrule compress` (same run)")
    u.add_argument("run", help="run directory or checkpoint directory (the one that compressed the file)")
    u.add_argument("input", help="the compressed file")
    u.add_argument("output", help="where to write: .npy (arrays), .png (image models), or the text file")
    common(u)
    u.set_defaults(func=cmd_decompress)

    pr = sub.add_parser("probe", help="linear probes of a run's features, layer by layer, against raw pixels (iGPT)",
                        description="Example: chainrule probe runs/quickstart. For every layer of the model's features "
                                    "(mean-pooled over the groups, or --pool grid:S), a logistic regression on the training split's "
                                    "labels (C chosen on the validation split), its validation and test accuracy, "
                                    "and the same probe on the raw pixels (Chen et al. 2020).")
    pr.add_argument("run", help="run directory or checkpoint directory")
    pr.add_argument("--dataset", help="a labelled dataset of the model's shape (default: the one the run trained on)")
    data_args(pr)
    pr.add_argument("--layer", type=int, nargs="+", default=None,
                    help="the layers to probe (default: all; negative ones count from the end)")
    pr.add_argument("--max-train", type=int, default=None,
                    help="probe on a random subset of this many training examples (seeded by --seed; default all)")
    pr.add_argument("--batch-size", type=int, default=256, help="examples per forward pass")
    pr.add_argument("--pool", default="mean",
                    help="how per-pixel features become one vector: mean, max, or grid:S (the mean over each of "
                         "S x S image regions, concatenated; keeps where a feature fired) (default: mean)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the --max-train subset and the solver")
    pr.add_argument("--out", help="JSON of the results (default RUN/probe.json); the plot goes next to it as .png")
    pr.add_argument("--no-plot", action="store_true", help="no accuracy-vs-layer plot")
    common(pr)
    pr.set_defaults(func=cmd_probe)

    from chainrule.apps.anomaly import COMPRESSORS, SCORES

    def anomaly_args(sp: argparse.ArgumentParser) -> None:
        """The options `score` and `detect` share: the score, where dataset inputs come from, the background."""
        sp.add_argument("--score", choices=list(SCORES), default="nll",
                        help="nll (bits/dim), likelihood-ratio (Ren et al. 2019; needs a background model), "
                             "input-complexity (NLL minus a compressor's code length, Serra et al. 2020), "
                             "typicality (|NLL - mean validation NLL|, Nalisnick et al. 2019b)")
        sp.add_argument("--split", choices=["train", "val", "test"], default="test", help="split of dataset inputs")
        sp.add_argument("--limit", type=int, default=None, help="only the first N examples of each input")
        sp.add_argument("--compressor", choices=list(COMPRESSORS), default="png",
                        help="input-complexity: png (images) or xz / bz2 on the raw bytes")
        sp.add_argument("--background", help="likelihood-ratio: a run trained on perturbed data (default RUN/background "
                                             "when it exists)")
        sp.add_argument("--train-background", type=float, default=None, metavar="RATE",
                        help="likelihood-ratio: first train a background model with the run's configuration on its "
                             "training data, each value replaced w.p. RATE (e.g. 0.2), into RUN/background/")
        sp.add_argument("--background-epochs", type=int, default=3, help="epochs of --train-background")
        sp.add_argument("--background-steps-per-epoch", type=int, default=None, metavar="N",
                        help="--train-background: N steps per epoch instead of the run's (a shorter background)")
        sp.add_argument("--background-weight-decay", type=float, default=None, metavar="L2",
                        help="--train-background: the optimizer's weight decay (an L2 penalty; Ren et al. 2019 "
                             "regularize the background so) instead of the run's")
        sp.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help="examples per forward pass (default: %(default)s)")
        sp.add_argument("--data-dir", help="folder with the dataset files (default: $CHAINRULE_DATA)")
        sp.add_argument("--download", action="store_true", help="download missing dataset files (checksummed)")
        sp.add_argument("--binarize", choices=[c for c in BINARIZE_CHOICES if c],
                        help="binarize dataset inputs (default: as the run's training data were)")
        common(sp)

    sc = sub.add_parser("score", help="per-example anomaly scores (higher = more anomalous) as a CSV",
                        description="Example: chainrule score runs/nade-mnist fashion-mnist --score input-complexity "
                                    "--maps maps.png. INPUT: a .npy array (N, *shape) or (*shape), image file(s), or "
                                    "a dataset name/path (the run's preprocessing; see --split, --limit).")
    sc.add_argument("run", help="run directory or checkpoint directory")
    sc.add_argument("input", nargs="+", help=".npy, image file(s), or a dataset name/path")
    sc.add_argument("--out", help="CSV of index,score (default RUN/scores-INPUT-SCORE.csv)")
    sc.add_argument("--maps", help="PNG of the most anomalous inputs next to their per-variable NLL maps")
    sc.add_argument("--num-maps", type=int, default=8, help="how many inputs --maps shows")
    anomaly_args(sc)
    sc.set_defaults(func=cmd_score)

    de = sub.add_parser("detect", help="OOD detection: AUROC, AUPR, FPR at 95%% TPR of a score, in vs out",
                        description="Example: chainrule detect runs/nade-fashion --in fashion-mnist --out mnist "
                                    "--score input-complexity. IN / OUT: dataset names/paths (the run's "
                                    "preprocessing), .npy arrays or image files. In-distribution = negatives.")
    de.add_argument("run", help="run directory or checkpoint directory")
    de.add_argument("--in", dest="inputs_in", nargs="+", default=None,
                    help="in-distribution inputs (default: the run's own dataset)")
    de.add_argument("--out", dest="inputs_out", nargs="+", required=True, help="out-of-distribution inputs")
    de.add_argument("--report", help="histogram PNG of the two score distributions "
                                     "(default RUN/detect-IN-vs-OUT-SCORE.png)")
    de.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the 95%% intervals")
    de.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    de.add_argument("--group-size", type=int, default=None, metavar="M",
                    help="typicality: the batch test on groups of M inputs (Nalisnick et al. 2019b)")
    de.add_argument("--alpha", type=float, default=0.01, help="--group-size: level of the typicality test")
    de.add_argument("--json", action="store_true", help="also print the result as JSON")
    anomaly_args(de)
    de.set_defaults(func=cmd_detect)

    from chainrule.cli.ngram import register_cli as register_ngram_cli  # the n-gram commands

    register_ngram_cli(sub)

    rp = sub.add_parser("report", help="one self-contained HTML page of a run, or a comparison of several runs",
                        description="Example: chainrule report runs/made runs/nade --out compare.html. Images and CSS are "
                                    "inline (one file, no network); pieces a run does not have yet are shown as '—'.")
    rp.add_argument("runs", nargs="+", metavar="RUN", help="run directories (written by `chainrule train`)")
    rp.add_argument("--out", help="the HTML file (default: RUN/report.html for one run, ./report.html for several)")
    rp.add_argument("--title", help="the page's title")
    rp.set_defaults(func=cmd_report)

    q = sub.add_parser("quickstart", help="train a Gated PixelCNN on the bundled 8x8 digits (under two minutes)")
    q.add_argument("--out", default=QUICKSTART_OUT,
                   help=f"run directory (default {QUICKSTART_OUT}); a previous quickstart run there is replaced")
    q.add_argument("--model", choices=list(QUICKSTART), default="gated_pixelcnn",
                   help="gated_pixelcnn (default, ~82 nats in 100 s) or causalconv (the book's ARM, ~85 nats, minutes)")
    q.add_argument("--epochs", type=int, default=1000, help="maximum epochs (early stopping usually ends sooner)")
    q.add_argument("--max-seconds", type=float, default=90, help="wall-clock budget for training")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--force", action="store_true",
                   help="--out holds a run that quickstart did not write: replace it (only chainrule's files)")
    common(q)
    # one thread: a model this small gains little from two, and two threads on a busy 2-core
    # machine ran 40x slower (73 s per epoch instead of 1.8 s, measured), so the default is safe
    q.set_defaults(func=cmd_quickstart, threads=1)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = _parse(parser, argv)  # a bad --config file: exit 2 with its error, as bad options do
    except ChainruleError as exc:
        print(f"chainrule: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ChainruleError as exc:
        print(f"chainrule: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        code = getattr(exc, "exit_code", None)  # a TrainingInterrupted: its line (what was saved) is printed
        if code is None:
            print("chainrule: interrupted", file=sys.stderr)
        return code or 130


if __name__ == "__main__":
    sys.exit(main())
