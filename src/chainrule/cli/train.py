"""``chainrule train`` and ``chainrule quickstart``: the options become a :class:`~chainrule.training.TrainConfig`,
the run is :func:`chainrule.apps.pipeline.train_run` (under ``torchrun``, one rank of it)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chainrule.apps.pipeline import (
    check_data_fits_model,
    check_run_dir,
    holds_run,
    is_quickstart_run,
    parse_hyperparameters,
    parse_num_values,
    started_run,
    train_run,
)
from chainrule.cli.common import device_of, order_arg, set_threads
from chainrule.cli.config import dumps_train_config, resolved_train_config
from chainrule.data import LATENTS_PREFIX, Dataset, Standardization, default_data_dir, load_dataset
from chainrule.errors import InputError
from chainrule.models import create_model
from chainrule.models.registry import check_hyperparameters, deprecated_hyperparameters, upgrade_hyperparameters
from chainrule.training import TrainConfig, Trainer, distributed

log = logging.getLogger("chainrule")


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
    """``chainrule train``; under ``torchrun`` (``WORLD_SIZE`` > 1) one data-parallel rank of the run
    (see :mod:`chainrule.training.distributed`): every rank trains, rank 0 alone writes the run
    directory, evaluates on the test split and draws the samples."""
    set_threads(args.threads)
    device = distributed.init_from_env(device_of(args), args.threads)
    try:
        return _train_command(args, device)
    finally:
        distributed.destroy()


def _train_command(args: argparse.Namespace, device: Any) -> int:
    # --max-seconds covers the whole command: start-up, loading, training, test, samples (main sets `started`)
    started = getattr(args, "started", None) or time.perf_counter()
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
    vqvae = args.model == "vqvae"  # not an autoregressive model: chainrule.apps.latent trains it
    if vqvae:
        from chainrule.apps.latent import check_vqvae_hyperparameters

        if args.order or args.class_conditional:
            raise InputError("vqvae: --order and --class-conditional apply to the prior over its codes, not to the VQ-VAE")
        check_vqvae_hyperparameters(hparams)
    else:
        check_hyperparameters(args.model, hparams)  # unknown names fail before the data is loaded
    config = train_config(args)  # so do bad training options
    ranks = distributed.world_size()
    if config.batch_size % ranks:
        raise InputError(f"--batch-size {config.batch_size} is the global batch, split over {ranks} ranks: "
                         f"it must be a multiple of {ranks}")
    if args.out:  # an existing run in --out: refused before the data is loaded (unless --resume / --force)
        check_run_dir(args.out, args.resume, args.force, check_lock=distributed.is_main())
        if args.resume and not holds_run(args.out) and started_run(args.out):
            # killed before its first checkpoint: nothing to resume, the run starts again (every rank alike)
            if distributed.is_main():
                print(f"{args.out}: the run was stopped before its first checkpoint: nothing to resume, "
                      "starting it again")
            args.resume = False
    num_values = parse_num_values(getattr(args, "num_values", None))  # None, K or "real"
    ds = load_dataset(args.dataset, args.data_dir, download=args.download, binarize=args.binarize,
                      dequantize=args.dequantize, seed=args.data_seed, block_size=args.block_size, level=args.level,
                      num_values=num_values if isinstance(num_values, int) else None)
    if ds.values is not None and distributed.is_main():  # how K was read from the values: never silently
        print(ds.values.line())
    if getattr(args, "limit", None) is not None:
        if args.limit < 1:
            raise InputError(f"--limit must be a positive integer (examples per split), got {args.limit}")
        ds = ds.limited(args.limit)
    if vqvae:
        from chainrule.apps.latent import check_data_fits_vqvae

        check_data_fits_vqvae(ds)
    else:
        check_data_fits_model(args.model, ds, real_values=num_values == "real")
    standardization = None
    if getattr(args, "standardize", False):
        standardization = Standardization.fit(ds.train)  # the training split's statistics only
        if distributed.is_main():
            print(f"standardizing: z = (x - mean) / std per dimension, from the {len(ds.train)} training examples "
                  f"(std {float(standardization.std.min()):.4g}..{float(standardization.std.max()):.4g}); NLLs are "
                  "reported for x (log p(x) = log p(z) - sum log std)")
    elif distributed.is_main():
        hint = standardize_hint(ds)
        if hint:
            print(hint)
    out = Path(args.out or f"runs/{args.model}-{Path(ds.name).stem}")
    torch.manual_seed(args.seed)
    # where the data came from, as later commands (eval, sample, complete, ...) must find it again:
    # a file's absolute path, and the data folder even when it was given by $CHAINRULE_DATA
    data_dir = args.data_dir or default_data_dir()
    dataset = str(Path(args.dataset).resolve()) if Path(args.dataset).exists() else args.dataset
    if args.dataset.startswith(LATENTS_PREFIX):  # a VQ-VAE run's codes: its absolute path too
        dataset = LATENTS_PREFIX + str(Path(args.dataset[len(LATENTS_PREFIX):]).resolve())
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
    if vqvae and ranks > 1:
        raise InputError("vqvae trains in one process (its codebook updates are not synchronized across ranks); "
                         "run it without torchrun")
    if not distributed.is_main():  # a rank > 0: train only; rank 0 writes, evaluates and samples
        _train_follower(args, ds if standardization is None else standardization.dataset(ds), out, hparams, config,
                        extra, device)
        return 0
    if ranks > 1:
        print(f"DDP: {ranks} ranks x {config.batch_size // ranks} = global batch {config.batch_size} "
              f"({torch.distributed.get_backend()})")
    if vqvae:
        from chainrule.apps.latent import train_vqvae_run

        train_vqvae_run(ds, out, hparams, config, extra, not args.no_progress, resume=args.resume, device=device,
                        report=print, force=args.force)
        _store_train_config(out, resolved)
        return 0
    train_run(args.model, ds, out, hparams, config, extra, not args.no_progress, args.num_samples,
              resume=args.resume, conditional=args.class_conditional, device=device, report=print,
              force=args.force, started=started, standardization=standardization)
    _store_train_config(out, resolved)
    return 0


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
    from chainrule.io.outputs import output_file

    with output_file(out / "config.toml") as tmp:
        tmp.write_text(text, encoding="utf-8")


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


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Train an image model on the bundled 8x8 digits: under two minutes on a laptop CPU.

    Its output directory is its own: a previous quickstart run there (the default runs/quickstart,
    or any run marked as quickstart's) is replaced without asking; another run is refused unless --force."""
    started = getattr(args, "started", None) or time.perf_counter()
    set_threads(args.threads)
    what, hparams, opt = QUICKSTART[args.model]
    config = checked_config(epochs=args.epochs, batch_size=64, max_seconds=args.max_seconds, seed=args.seed, **opt)
    out = Path(args.out)
    own = out == Path(QUICKSTART_OUT) or is_quickstart_run(out)
    check_run_dir(out, force=args.force or own)
    ds = load_dataset("digits")
    print(f"chainrule quickstart: {what} on scikit-learn's 8x8 digits (17 grey levels)")
    extra = {"dataset": "digits", "command": sys.argv, "quickstart": True}
    summary = train_run(args.model, ds, out, hparams, config, extra, not args.no_progress, 64, report=print,
                        force=args.force or own, started=started)
    t = summary["test"]
    print(f"\nTest NLL: {t['nll_nats']:.2f} nats per image = {t['bits_per_dim']:.4f} bits/dim "
          f"(uniform guessing: {64 * np.log(17):.1f} nats)")
    print(f"Next: chainrule sample {out} -n 64   |   chainrule eval {out} --split test   |   "
          f"chainrule complete {out} --input digits --mask top-half")
    return 0
