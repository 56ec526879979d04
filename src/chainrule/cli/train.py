"""``chainrule train`` and ``chainrule quickstart``: their options parsed into one
:class:`~chainrule.apps.pipeline.TrainSpec` (with a :class:`~chainrule.training.TrainConfig`), which
:func:`chainrule.apps.pipeline.train_run` checks and runs (under ``torchrun``, on every rank)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from chainrule.apps.pipeline import QUICKSTART_OUT, TrainSpec, train_run
from chainrule.cli.common import device_of, order_arg, parse_hyperparameters, set_threads
from chainrule.cli.config import dumps_train_config, resolved_train_config
from chainrule.errors import InputError
from chainrule.models.registry import deprecated_hyperparameters, upgrade_hyperparameters
from chainrule.training import TrainConfig, distributed

log = logging.getLogger("chainrule")

__all__ = ["QUICKSTART", "QUICKSTART_OUT", "checked_config", "cmd_quickstart", "cmd_train", "train_config",
           "train_spec"]


#: TrainConfig fields -> the options of `chainrule train` / `quickstart` that set them (for error messages)
_CONFIG_FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
                 "warmup_steps": "--warmup-steps", "grad_clip": "--grad-clip", "max_seconds": "--max-seconds",
                 "seed": "--seed", "steps_per_epoch": "--steps-per-epoch", "max_steps": "--max-steps",
                 "betas": "--beta1/--beta2", "min_lr": "--min-lr", "val_components": "--val-components",
                 "save_every": "--save-every", "keep_last": "--keep-last"}


def checked_config(**kwargs: Any) -> TrainConfig:
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


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of `chainrule train`'s options (errors name the option)."""
    if args.patience < 0:
        raise InputError(f"--patience must be an integer >= 0 (0: no early stopping), got {args.patience}")
    return checked_config(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                           weight_decay=args.weight_decay, schedule=args.schedule, warmup_steps=args.warmup_steps,
                           grad_clip=args.grad_clip, patience=None if args.patience == 0 else args.patience,
                           max_seconds=args.max_seconds, seed=args.seed, steps_per_epoch=args.steps_per_epoch,
                           max_steps=args.max_steps, betas=(args.beta1, args.beta2), min_lr=args.min_lr,
                           val_components=args.val_components, precision=args.precision,
                           save_every=getattr(args, "save_every", None), keep_last=getattr(args, "keep_last", 1),
                           tensorboard=False if getattr(args, "no_tensorboard", False) else None)


def cmd_train(args: argparse.Namespace) -> int:
    """``chainrule train``: the options as a :class:`TrainSpec`, run by :func:`train_run` (which
    checks it; under ``torchrun`` every rank runs it, see :mod:`chainrule.training.distributed`)."""
    set_threads(args.threads)
    train_run(train_spec(args))
    return 0


def train_spec(args: argparse.Namespace) -> TrainSpec:
    """The :class:`TrainSpec` of `chainrule train`'s parsed options (defaults < --config file < command
    line); what only the command line knows is read here: the options' names in errors, the
    resolved configuration written to ``RUN/config.toml``."""
    for name, what in (("model", "the model: `chainrule train MODEL`"), ("dataset", "--dataset")):
        if not getattr(args, name, None):
            raise InputError(f"no {name}: give {what} or `{name} = \"...\"` in a --config file")
    # -p on the command line adds to / replaces the --config file's [hyperparameters] name by name
    hparams = {**getattr(args, "config_hyperparameters", {}), **parse_hyperparameters(args.param)}
    renamed = deprecated_hyperparameters(args.model, hparams)
    if renamed:  # former spellings: one line, then the current names (also in RUN/config.toml)
        if distributed.is_main():
            print("chainrule: warning: " + ", ".join(f"-p {old}" for old, _ in renamed) + " is deprecated: use "
                  + ", ".join(f"-p {new}" for _, new in renamed) + " (the same hyperparameter)", file=sys.stderr)
        hparams = upgrade_hyperparameters(args.model, hparams)
    resolved = resolved_train_config(args, hparams, args.command_parser)  # RUN/config.toml
    if args.order:
        hparams["order"] = order_arg(args.order)
    try:
        toml = dumps_train_config(resolved)
    except ValueError as exc:  # a value TOML cannot hold (-p NAME=null): the run goes on without the file
        log.warning("not writing config.toml: %s", exc)
        toml = None
    return TrainSpec(
        model=args.model, dataset=args.dataset, out=args.out, hyperparameters=hparams, config=train_config(args),
        conditional=args.class_conditional, standardize=getattr(args, "standardize", False),
        data_dir=args.data_dir, download=args.download, binarize=args.binarize, dequantize=args.dequantize,
        data_seed=args.data_seed, block_size=args.block_size, level=args.level,
        num_values=getattr(args, "num_values", None), limit=getattr(args, "limit", None),
        resume=args.resume, force=args.force, device=device_of(args), threads=args.threads,
        progress=not args.no_progress, num_samples=args.num_samples, report=print,
        # --max-seconds covers the whole command: start-up, loading, training, test, samples (main sets `started`)
        started=getattr(args, "started", None) or time.perf_counter(),
        # run_config: the options as RUN/config.toml holds them (train_config: the TrainConfig)
        extra={"command": sys.argv, "run_config": resolved}, config_toml=toml)


#: The quick start's two recipes on the 8x8 digits (measured in BENCHMARKS.md, "The quick start").
QUICKSTART = {
    # 2-D masked convolutions see a pixel's neighbourhood above and to the left: 81.6 nats in 100 s
    "gated_pixelcnn": ("a Gated PixelCNN (van den Oord et al. 2016)",
                       {"channels": 32, "num_layers": 5, "head_channels": 32, "first_kernel_size": 5},
                       {"lr": 3e-3, "optimizer": "adam", "patience": 10}),
    # the book's configuration: 1-D causal convolutions over the raster sequence, 85.2 nats in ~7 min
    "causalconv": ("the causal-convolution ARM of 'Deep Generative Modeling' (Tomczak, ch. 2)", {},
                   {"lr": 1e-3, "optimizer": "adamax", "patience": 20}),
}


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Train an image model on the bundled 8x8 digits: under two minutes on a laptop CPU.

    Its output directory is its own: a previous quickstart run there (the default runs/quickstart,
    or any run marked as quickstart's) is replaced without asking; another run is refused unless --force."""
    started = getattr(args, "started", None) or time.perf_counter()
    set_threads(args.threads)
    what, hparams, opt = QUICKSTART[args.model]
    config = checked_config(epochs=args.epochs, batch_size=64, max_seconds=args.max_seconds, seed=args.seed, **opt)
    summary = train_run(TrainSpec(
        model=args.model, dataset="digits", out=args.out, hyperparameters=dict(hparams), config=config,
        force=args.force, quickstart=True, threads=args.threads, progress=not args.no_progress, num_samples=64,
        report=print, started=started, extra={"command": sys.argv},
        title=f"chainrule quickstart: {what} on scikit-learn's 8x8 digits (17 grey levels)"))
    if not summary:  # a rank > 0 under torchrun: rank 0 reports
        return 0
    t = summary["test"]
    out = Path(args.out)
    print(f"\nTest NLL: {t['nll_nats']:.2f} nats per image = {t['bits_per_dim']:.4f} bits/dim "
          f"(uniform guessing: {64 * np.log(17):.1f} nats)")
    print(f"Next: chainrule sample {out} -n 64   |   chainrule eval {out} --split test   |   "
          f"chainrule complete {out} --input digits --mask top-half")
    return 0
