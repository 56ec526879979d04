"""The commands on latent runs (:mod:`chainrule.apps.latent`): ``compose``, and ``eval``, ``sample``,
``compress``, ``decompress``, ``complete`` and ``inspect`` when their run is a VQ-VAE run or a
composed latent run (:func:`latent_command` routes them here; every other run goes its usual way).

A latent run's likelihood numbers are upper bounds on the NLL and are printed as such."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable

import torch

from chainrule.apps import latent as lat
from chainrule.apps.pipeline import check_samples_path, dataset_of, save_samples
from chainrule.apps.rundir import checkpoint_dir
from chainrule.cli.common import completion_inputs, device_of, given_labels, output_path, sampling_labels, set_threads
from chainrule.errors import InputError
from chainrule.inference.sampling import default_generator
from chainrule.io.outputs import output_file
from chainrule.latent import LatentModel, is_latent_checkpoint


def cmd_compose(args: argparse.Namespace) -> int:
    """``chainrule compose VQ_RUN PRIOR_RUN --out RUN``: the latent model p(z) p(x | z) as a run."""
    set_threads(args.threads)
    lat.compose(args.vq_run, args.prior_run, args.out, force=args.force, report=print)
    print(f"Next: chainrule sample {args.out}   |   chainrule eval {args.out}   |   "
          f"chainrule compress {args.out} IMAGES.npy OUT.crz   |   chainrule inspect {args.out}")
    return 0


def latent_command(args: argparse.Namespace) -> Callable[[argparse.Namespace], int] | None:
    """The handler of ``args.command`` when its run is a VQ-VAE or latent run, else None."""
    handlers = {"eval": _eval, "sample": _sample, "compress": _compress, "decompress": _decompress,
                "complete": _complete, "inspect": _inspect}
    run = getattr(args, "run", None)
    if args.command not in handlers or not isinstance(run, str):
        return None
    return handlers[args.command] if is_latent_checkpoint(checkpoint_dir(run)) else None


def _load(args: argparse.Namespace) -> tuple[Path, Any]:
    set_threads(getattr(args, "threads", None))
    return lat.load_run_model(args.run, device_of(args))


def _need_latent(model: Any, run: str, what: str) -> LatentModel:
    if not isinstance(model, LatentModel):
        raise InputError(f"{run} is a VQ-VAE run: it has no prior over its codes, so it cannot {what}. Train a prior "
                         f"on its codes (chainrule train gated_pixelcnn --dataset latents:{run} --out PRIOR) and "
                         f"compose the two (chainrule compose {run} PRIOR --out LATENT)")
    return model


def _split(args: argparse.Namespace, ckpt: Path, model: Any) -> tuple[Any, torch.Tensor, Any]:
    ds = dataset_of(ckpt, getattr(args, "dataset", None), getattr(args, "data_dir", None), getattr(args, "download", False))
    data, labels = ds.split(args.split)
    if ds.train_transform is not None and args.split == "train":
        data = ds.train_transform(data, torch.Generator().manual_seed(0))
    conditional = isinstance(model, LatentModel) and model.conditional
    if conditional and labels is None:
        raise InputError(f"{ckpt} is class-conditional but the {args.split} split of {ds.name!r} has no labels")
    return ds, data, labels if conditional else None


def _eval(args: argparse.Namespace) -> int:
    if args.bayes or args.stride is not None:
        raise InputError("--bayes and --stride do not apply to a latent run (its likelihood is a bound)")
    ckpt, model = _load(args)
    ds, data, labels = _split(args, ckpt, model)
    if isinstance(model, LatentModel):
        t = lat.bound_of(model, data, labels, args.batch_size)
        for line in lat.describe_bound(args.split, t):
            print(line)
        if args.json:
            print(json.dumps({"split": args.split, **t}))
        return 0
    rec = model.evaluate_reconstruction(data, args.batch_size)
    h, w = model.grid
    bits = model.dim * math.log(2)
    usage = lat.codebook_usage(model.encode_all(data, args.batch_size), model.codebook_size)
    uniform = float(rec.mean()) + h * w * math.log(model.codebook_size)
    print(f"{args.split}: reconstruction NLL -log p(x|z*) {float(rec.mean()):.4f} nats/example | "
          f"{float(rec.mean()) / bits:.4f} bits/dim | {len(rec)} examples (a VQ-VAE alone: not a likelihood of x)")
    print(f"{args.split}: NLL upper bound with a uniform prior over the {h}x{w} codes: {uniform:.4f} nats/example | "
          f"{uniform / bits:.4f} bits/dim | codebook perplexity {usage['codebook_perplexity']:.1f}, "
          f"{100 * usage['codebook_used']:.1f}% of K={model.codebook_size} used")
    if args.json:
        print(json.dumps({"split": args.split, "reconstruction_nll_nats": float(rec.mean()),
                          "uniform_prior_nll_upper_bound_nats": uniform, **usage}))
    return 0


def _sample(args: argparse.Namespace) -> int:
    ckpt, model = _load(args)
    model = _need_latent(model, args.run, "draw samples")
    labels, ncol = sampling_labels(args, ckpt, model, args.n)
    out = Path(args.out or Path(args.run) / "samples.png")
    try:
        check_samples_path(out, True)
    except InputError as exc:
        raise InputError(f"--out {exc}") from None
    out = output_path(args, args.out, out, "--out")  # the one output policy, before any work
    x = model.sample(args.n, labels, generator=default_generator(model.vqvae, args.seed), temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p)
    with output_file(out) as tmp:
        save_samples(x, tmp, model.num_values, True, ncol=ncol)
    print(f"wrote {args.n} samples to {out} (codes drawn from the prior, pixels from the decoder)")
    return 0


def _compress(args: argparse.Namespace) -> int:
    ckpt, model = _load(args)
    model = _need_latent(model, args.run, "compress (a two-part code needs p(z))")
    if getattr(args, "member", None) is not None:
        raise InputError("--member applies to ensembles; a latent run codes with its prior")
    labels = given_labels(args, ckpt, model)
    if labels is None and model.conditional:
        raise InputError(f"{ckpt} is class-conditional: pass --class Y (or one per example)")
    source: Any = args.input
    description = None
    if not Path(args.input).exists():
        ns = argparse.Namespace(input=[args.input], index=args.index, split=args.split, data_dir=args.data_dir,
                                download=args.download)
        source, description = completion_inputs(ns, ckpt, model, whole_split=True)
    elif args.index is not None:
        raise InputError("--index applies to dataset inputs; for a file, compress the whole file")
    for line in lat.compress_file(model, source, args.output, labels, description, overwrite=args.force):
        print(line)
    return 0


def _decompress(args: argparse.Namespace) -> int:
    ckpt, model = _load(args)
    model = _need_latent(model, args.run, "decompress")
    paths = lat.decompress_file(model, args.input, args.output, overwrite=args.force)
    print(f"decompressed {args.input} (two-part code; checksum verified) to {', '.join(map(str, paths))}")
    return 0


def _complete(args: argparse.Namespace) -> int:
    from chainrule.apps.completion import load_mask

    ckpt, model = _load(args)
    model = _need_latent(model, args.run, "complete images")
    path = output_path(args, args.out, Path(args.run) / "completions.png", "--out")  # before any work
    x, where = completion_inputs(args, ckpt, model)
    mask = load_mask(args.mask, model.shape, args.seed)
    labels = None
    if model.conditional:
        if args.label is None:
            raise InputError(f"{ckpt} is class-conditional: pass --class (the label, or one per input)")
        labels = torch.as_tensor(args.label).expand(len(x)) if len(args.label) == 1 else torch.as_tensor(args.label)
    g = default_generator(model.vqvae, args.seed)
    out, note = lat.complete(model, x, mask, args.num, labels, g, args.temperature)
    m = torch.as_tensor(mask).bool()
    masked = torch.where(m.expand_as(x), x.long(), torch.zeros_like(x.long()))
    rows = torch.cat([torch.cat([masked[i:i + 1], out[i * args.num:(i + 1) * args.num]]) for i in range(len(x))])
    with output_file(path) as tmp:
        if path.suffix.lower() == ".npy":
            save_samples(out, tmp, model.num_values, True)
        else:
            save_samples(rows, tmp, model.num_values, True, ncol=args.num + 1)
    print(note)
    print(f"wrote {len(out)} completions of {where} to {path} (each row: the observed part, then {args.num} completions)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    if getattr(args, "text", None):
        raise InputError("--text applies to text runs")
    ckpt, model = _load(args)
    ds, data, labels = _split(args, ckpt, model)
    if not 0 <= args.index < len(data):
        raise InputError(f"--index {args.index} is outside the {args.split} split (0..{len(data) - 1})")
    out = output_path(args, args.out, Path(args.run) / f"inspect-{args.split}-{args.index}.png", "--out")
    ctx = None if labels is None else labels[args.index:args.index + 1]
    lat.inspect_figure(model, data[args.index], out, f"{ds.name} {args.split} #{args.index}", ctx)
    print(f"wrote {out} (input, reconstruction, code map, -log2 p(x|z*) per pixel)")
    return 0
