"""The commands built on the likelihood: ``compress``, ``decompress``, ``probe``, ``score`` and ``detect``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chainrule.apps.pipeline import dataset_of
from chainrule.apps.rundir import checkpoint_dir
from chainrule.cli.common import completion_inputs, device_of, load_run, output_path, run_and_labels, tokenizer_of
from chainrule.data import read_npy
from chainrule.errors import InputError
from chainrule.io.checkpoint import read_config
from chainrule.io.outputs import check_output, output_file
from chainrule.models import load
from chainrule.training import TrainConfig

log = logging.getLogger("chainrule")


def cmd_compress(args: argparse.Namespace) -> int:
    """Lossless compression by range coding with the run's model (:mod:`chainrule.apps.compression`)."""
    from chainrule.apps.compression import compress_file

    check_output(args.output, force=args.force, inputs=[args.input, args.run], option="OUTPUT")  # before any work
    ckpt, model, labels = run_and_labels(args, "or one per example; it is stored in the compressed file",
                                          "chainrule.apps.compression.compress(model, x, context=...)")
    source: Any = args.input
    description = None
    if not Path(args.input).exists():  # a dataset name: the whole --split, or the examples --index picks
        ns = argparse.Namespace(input=[args.input], index=args.index, split=args.split, data_dir=args.data_dir,
                                download=args.download)
        source, description = completion_inputs(ns, ckpt, model, whole_split=True)
    elif args.index is not None:
        raise InputError("--index applies to dataset inputs; for a file, compress the whole file")
    tok = tokenizer_of(ckpt)
    try:
        report = compress_file(model, source, args.output, labels, tok, member=args.member, description=description,
                               overwrite=args.force, progress=not args.no_progress)
    except InputError as exc:
        raise _compress_cli_error(exc, args, tok, model) from None
    for line in report.lines():
        print(line)
    return 0


def _compress_cli_error(exc: InputError, args: argparse.Namespace, tok: Any, model: Any) -> InputError:
    """The library's error, with the command-line fix in place of the Python one where they differ."""
    msg = str(exc)
    if msg.startswith("CharTokenizer cannot encode"):  # characters outside the run's vocabulary
        what = msg.split("; to fix", 1)[0]
        return InputError(f"{args.input}: the run {args.run} reads characters only: {what}; compress it with a run "
                          "trained with --level byte (bytes code any file), or train on a text that holds these "
                          "characters")
    if msg.startswith("coding with an ensemble needs one member"):
        return InputError(f"{args.run} is an ensemble of {model.num_members} members; a code needs the "
                          f"conditionals of one: pass --member K (0..{model.num_members - 1})")
    if tok is None and "this model has no tokenizer" in msg:
        return InputError(f"{args.input}: not a .npy array or an image, and {args.run} was not trained on text; to "
                          f"compress text, train a run on text first (e.g. chainrule train transformer --dataset "
                          f"{args.input} --level byte --out runs/text) and compress with it")
    return exc


def cmd_decompress(args: argparse.Namespace) -> int:
    """Decode a file written by ``chainrule compress`` with the same run."""
    from chainrule.apps.compression import decompress_file

    check_output(args.output, force=args.force, inputs=[args.input, args.run], option="OUTPUT")
    ckpt, model = load_run(args)
    paths = decompress_file(model, args.input, args.output, tokenizer_of(ckpt), overwrite=args.force,
                            progress=not args.no_progress)
    print(f"decompressed {args.input} (checksum verified) to {', '.join(map(str, paths))}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Linear probes of a run's features, layer by layer, against raw pixels (:mod:`chainrule.apps.probe`)."""
    from chainrule.apps.probe import probe

    out = output_path(args, args.out, Path(args.run) / "probe.json", "--out")
    figure = None if args.no_plot else output_path(args, out.with_suffix(".png") if args.out else None,
                                                    out.with_suffix(".png"), "--out (its figure)")
    ckpt, model = load_run(args)
    ds = dataset_of(ckpt, args.dataset, args.data_dir, args.download, args.binarize, args.dequantize)
    res = probe(model, ds, args.layer, args.max_train, args.batch_size, pool=args.pool, seed=args.seed,
                progress=not args.no_progress,
                report=log.info)
    for line in res.lines():
        print(line)
    with output_file(out, force=True) as tmp:
        tmp.write_text(json.dumps({"run": str(args.run), **res.as_dict()}, indent=2) + "\n")
    print(f"wrote {out}")
    if figure is not None and len(res.rows) > 1:
        from chainrule.apps.plotting import plot_probe

        with output_file(figure, force=True) as tmp:
            plot_probe([r.layer for r in res.rows], [r.val_accuracy for r in res.rows],
                       [r.test_accuracy for r in res.rows], tmp, res.baseline.test_accuracy,
                       title=f"{res.model} on {res.dataset}: linear probes")
        print(f"wrote figure {figure}")
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
    from chainrule.apps.rundir import RunReplacement
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
        # a previous background model is moved aside, and removed only once the new one is trained
        # (a failure puts it back): nothing is lost to a run that does not finish
        replacement = RunReplacement(own, force=True, created=not own.exists())
        replacement.begin()
        per_epoch = f" of {config.steps_per_epoch} steps" if config.steps_per_epoch else ""
        print(f"training a background model ({model.name}, the run's configuration) for {config.epochs} epoch(s){per_epoch} on "
              f"the training split of {ds.name}, each value replaced w.p. {rate} (Ren et al. 2019) -> {own}")
        keep = ("dataset", "binarize", "dequantize", "data_seed", "data_dir", "block_size", "level")
        try:
            bg = train_background(model.config, ds.train, rate, config, val_data=ds.val if len(ds.val) else None,
                                  train_transform=ds.train_transform, out_dir=own,
                                  extra={**{k: extra[k] for k in keep if k in extra}, "background_of": str(ckpt)},
                                  progress=not args.no_progress, device=device_of(args))
        except BaseException:
            replacement.rollback()
            raise
        replacement.commit()
        return bg
    path = args.background
    if path is None:
        if not (own / "best" / CONFIG_FILE).is_file():
            raise InputError("--score likelihood-ratio needs a background model: --background DIR (a run trained on "
                             "perturbed data) or --train-background RATE (trains one into RUN/background/)")
        path = str(own)
        print(f"using the background model in {own}")
    bg = load(checkpoint_dir(path), device_of(args))
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

    if args.num_maps < 1:
        raise InputError(f"--num-maps must be a positive integer (how many inputs --maps shows), got {args.num_maps}")
    if args.out:
        output_path(args, args.out, None, "--out")
    if args.maps:
        output_path(args, args.maps, None, "--maps")
    ckpt, model = load_run(args)
    _refuse_conditional(model, ckpt, "score")
    is_image = len(model.shape) == 3 and model.shape[0] in (1, 3)
    if args.maps and not is_image:
        raise InputError(f"--maps draws images; this run models shape {tuple(model.shape)} (not images)")
    x, label = _anomaly_data(args.input, ckpt, model, args, "INPUT")
    out = output_path(args, args.out, Path(args.run) / f"scores-{label}-{args.score}.csv", "--out")
    opts, _ = _score_options(args, ckpt, model)
    s = compute_score(args.score, model, x, **opts)
    st = summary_statistics(s)
    print(f"{args.score} of {len(s)} input(s) from {label} ({SCORES[args.score].description}):")
    print(f"  mean {st['mean']:.4f} | std {st['std']:.4f} | min {st['min']:.4f} | 25% {st['q25']:.4f} | "
          f"median {st['median']:.4f} | 75% {st['q75']:.4f} | max {st['max']:.4f}")
    top = np.argsort(-s, kind="stable")
    print("  most anomalous: " + ", ".join(f"#{i} ({s[i]:.4f})" for i in top[:5]))
    with output_file(out, force=True) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "score"])
        w.writerows((i, repr(float(v))) for i, v in enumerate(s))
    print(f"wrote {len(s)} scores to {out}")
    if args.maps:
        from chainrule.apps.plotting import plot_nll_maps

        idx = torch.as_tensor(top[: max(1, args.num_maps)].copy())
        maps = nll_map(model, x[idx.to(x.device)], batch_size=args.batch_size)
        with output_file(args.maps, force=args.force) as tmp:
            plot_nll_maps(x[idx.to(x.device)].cpu(), maps, tmp, model.num_values,
                          labels=[f"#{int(i)}: {s[int(i)]:.3f}" for i in idx],
                          title=f"{model.name}: the {len(idx)} highest {args.score} scores of {label}")
        fig = args.maps
        print(f"wrote NLL maps of the {len(idx)} most anomalous inputs to {fig}")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    """How well a score tells in-distribution inputs from OOD ones: AUROC, AUPR, FPR@95%TPR."""
    from chainrule.apps.anomaly import compute_score, detection_metrics, nll_bits_per_dim, typicality_test_from_nll
    from chainrule.apps.plotting import plot_score_histograms

    if args.report:
        output_path(args, args.report, None, "--report")
    if getattr(args, "inputs_out_deprecated", None) is not None:
        if args.inputs_out is not None:
            raise InputError("--out is the deprecated spelling of --ood: pass --ood only")
        print("chainrule: warning: `detect --out` is deprecated (every other command's --out is an output file): "
              "use --ood for the out-of-distribution inputs", file=sys.stderr)
        args.inputs_out = args.inputs_out_deprecated
    if args.inputs_out is None:
        raise InputError("detect needs the out-of-distribution inputs: --ood DATA (a dataset name/path, .npy, or "
                         "image files)")
    ckpt, model = load_run(args)
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
    x_out, out_label = _anomaly_data(args.inputs_out, ckpt, model, args, "--ood")
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
    out = output_path(args, args.report, Path(args.run) / f"detect-{in_label}-vs-{out_label}-{name}.png", "--report")
    with output_file(out, force=True if not args.report else args.force) as tmp:
        plot_score_histograms(s_in, s_out, tmp, f"in: {in_label}", f"out: {out_label}", f"{name} (bits/dim)",
                              title=f"{model.name}: {in_label} vs {out_label}",
                              note=f"AUROC {res['auroc']}\nFPR@95%TPR {res['fpr_at_95_tpr']}")
    print(f"wrote {out}")
    if args.json:
        print(json.dumps({"in": in_label, "out": out_label, **res.as_dict()}))
    return 0
