"""The ``chainrule`` command line: train, eval, sample, generate, inspect, complete, compress, decompress,
score, detect, probe, models, datasets, quickstart (and the n-gram commands). Each command is a thin layer over the library: the run
pipeline is :func:`chainrule.apps.pipeline.train_run`. This module holds the parser and the small
commands; the others live by what they do: :mod:`~chainrule.cli.train` (train, quickstart),
:mod:`~chainrule.cli.use` (eval, sample, generate, inspect, complete),
:mod:`~chainrule.cli.likelihood` (compress, decompress, probe, score, detect), on top of
:mod:`~chainrule.cli.common` (what they share).

A *run directory* (written by ``chainrule train``) holds ``best/`` (the best model: safetensors +
JSON, including which dataset it was trained on), ``last/``, ``log.csv``, ``results.json``,
``curve.png`` and the samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from chainrule._version import __version__
from chainrule.cli.common import check_ranges, process_start
from chainrule.cli.config import HYPERPARAMETERS, load_train_config
from chainrule.cli.likelihood import cmd_compress, cmd_decompress, cmd_detect, cmd_probe, cmd_score
from chainrule.cli.train import QUICKSTART, QUICKSTART_OUT, cmd_quickstart, cmd_train
from chainrule.cli.use import cmd_complete, cmd_eval, cmd_generate, cmd_inspect, cmd_sample
from chainrule.data import BINARIZE_CHOICES, dataset_info
from chainrule.errors import ChainruleError
from chainrule.inference.likelihood import EVAL_BATCH_SIZE
from chainrule.models import AutoregressiveModel
from chainrule.models.registry import get_model_class, list_models
from chainrule.training import OPTIMIZERS, PRECISIONS, SCHEDULES


# ---------------------------------------------------------------------- commands
def cmd_models(args: argparse.Namespace) -> int:
    if args.name:
        return _describe_model(args.name)
    import inspect as _inspect

    rows = []
    for name in list_models():
        cls = get_model_class(name)
        # the docstring's whole first paragraph (a first line may stop mid-sentence)
        doc = " ".join(_inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split())
        kinds = ", ".join(k for k, ok in (("discrete", cls.supports_discrete), ("real", cls.supports_real)) if ok)
        rows.append((name, kinds, doc))
    wide = max(len(r[0]) for r in rows)  # columns aligned on the longest name
    kind_wide = max(len(r[1]) for r in rows)
    print(f"{'model':{wide}s}  {'data':{kind_wide}s}  description (chainrule models NAME: its hyperparameters)")
    for name, kinds, doc in rows:
        print(f"{name:{wide}s}  {kinds:{kind_wide}s}  {doc}")
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


def cmd_report(args: argparse.Namespace) -> int:
    """Write one self-contained HTML page for a run, or a comparison of several runs."""
    from chainrule.apps.report import write_report

    path = write_report(args.runs, args.out, args.title, overwrite=True if args.force else None)
    print(f"wrote {path}")
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
    args.command_parser = subparser(parser, args.command)  # `train` resolves its --config against it
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
        sp.add_argument("--top-k", type=int, default=None,
                        help="draw among the K most probable values only (default: all)")
        sp.add_argument("--top-p", type=float, default=None,
                        help="nucleus sampling: draw among the most probable values whose probabilities sum to P")

    def force_arg(sp: argparse.ArgumentParser, what: str = "--out") -> None:
        """``--force``: the one spelling, in every command that writes a file, of "replace it"."""
        sp.add_argument("--force", action="store_true",
                        help=f"{what} exists: replace it (without, an existing file is refused; inputs and "
                             "checkpoints are never written over)")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--threads", type=int,
                        help="torch CPU threads (default: the free cores, i.e. the cores minus the load average, "
                             "at least 1; said with -v)")
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
    t.add_argument("--standardize", action="store_true",
                   help="real-valued data: train on (x - mean) / std per dimension (the training split's statistics, "
                        "stored in the run: eval, sample and complete apply and invert them; NLLs stay the data's "
                        "own, log p(x) = log p(z) - sum log std). Worth it when the coordinates' scales differ or "
                        "are far from 1 (train says so)")
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
                   help="wall-clock budget of the whole command (from the process's start: loading, training, "
                        "validation, test evaluation, samples), checked after every step: training stops early enough for the rest to fit; a stop inside "
                        "an epoch saves RUN/last/ there (--resume continues exactly). With --resume it counts from "
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
                   help="arithmetic of the training pass: auto (on a CPU the faster of float32 and bfloat16 "
                        "autocast, and of the image models' two layouts, timed on a few steps of this model and "
                        "cached per machine and model; on a GPU bfloat16, or float16 where it has none), "
                        "float32, bfloat16, float16; the likelihood and loss stay float32")
    t.add_argument("--num-samples", type=int, default=64, help="samples drawn after training")
    t.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N examples of each split (train, val, test): a quick trial of a command")
    common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="exact NLL of a trained model (nats, bits/dim, perplexity)")
    e.add_argument("run", help="run directory or checkpoint directory")
    e.add_argument("--split", choices=["train", "val", "test"], default="test", help="the split to evaluate")
    e.add_argument("--dataset", help="evaluate on another dataset than the one trained on")
    data_args(e)
    e.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE, help="examples per forward pass (default: %(default)s)")
    e.add_argument("--json", action="store_true", help="also print the result as JSON")
    e.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N examples of the split")
    e.add_argument("--bayes", action="store_true",
                   help="class-conditional runs: classify by argmax_y p(x|y)p(y) (one pass per class) and report "
                        "the accuracy, the NLL given the label and the marginal NLL")
    e.add_argument("--text", help="text runs: score this UTF-8 file instead of a split, in bits per byte and per "
                                  "token (windows every T/2 tokens, each token once)")
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
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the draws: the same seed, the same samples (leave it out: seed 0)")
    s.add_argument("--class", dest="label", type=int, default=None,
                   help="class-conditional models: sample this class (default: every class in turn)")
    decoding_args(s)
    force_arg(s)
    s.add_argument("--order", default=None,
                   help="any-order models: the order to sample in (raster, reversed, random:SEED, snake, ...); with "
                        "--burst / --parallel-steps the default is a fresh random order per sample")
    par = s.add_mutually_exclusive_group()
    par.add_argument("--burst", action="store_true",
                     help="sigma_gpt: exact parallel sampling (token-based rejection): draft --burst-window variables "
                          "at once and keep those the model confirms; the same distribution as ancestral sampling, "
                          "fewer passes; prints the passes per sample")
    par.add_argument("--parallel-steps", type=int, default=None, metavar="S",
                     help="sigma_gpt: APPROXIMATE parallel decoding (MaskGIT/MAR style) in S passes, several variables "
                          "drawn independently per pass: NOT the model's distribution (the fewer the steps, the further)")
    s.add_argument("--burst-window", type=int, default=16, help="--burst: variables drafted per iteration")
    s.add_argument("--schedule", choices=["cosine", "linear"], default="cosine",
                   help="--parallel-steps: how many variables each step fills")
    common(s)
    s.set_defaults(func=cmd_sample)

    gen = sub.add_parser("generate", help="continue a text prompt (sequence models trained on text); one "
                                          "sampled continuation is printed as it is drawn")
    gen.add_argument("run", help="run directory or checkpoint directory")
    gen.add_argument("--prompt", default="", help="text to continue (its characters must be in the vocabulary)")
    gen.add_argument("--max-new-tokens", type=int, default=200,
                     help="tokens to add after the prompt (prompt + new tokens fit the model's window unless "
                          "--sliding-window)")
    gen.add_argument("-n", type=int, default=1, help="number of continuations")
    gen.add_argument("--seed", type=int, default=0,
                     help="seed of the draws: the same seed, the same text (leave it out: seed 0)")
    decoding_args(gen)
    gen.add_argument("--repetition-penalty", type=float, default=None,
                     help="CTRL's penalty on tokens already in the text (> 1 discourages repeats; see the README)")
    gen.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N",
                     help="never repeat an N-gram of the text (prompt included)")
    gen.add_argument("--draft", metavar="RUN",
                     help="speculative sampling: a smaller run over the same tokens drafts --gamma tokens, this run "
                          "accepts them by the exact rejection rule (the text follows this run's distribution)")
    gen.add_argument("--gamma", type=int, default=4, help="--draft: tokens drafted per round (default 4)")
    gen.add_argument("--beam", type=int, default=None,
                     help="beam search with this width (>= 1) instead of sampling")
    gen.add_argument("--length-penalty", type=float, default=0.0,
                     help="beam score = log p / length**penalty (default 0: by log-probability; Hugging Face's is 1)")
    gen.add_argument("--early-stopping", choices=["false", "true", "never"], default="false",
                     help="beam search: when to stop once --beam hypotheses have ended (as Hugging Face's early_stopping)")
    gen.add_argument("--beam-mode", choices=["hf", "shrink"], default="hf",
                     help="hf (default): W live hypotheses kept, as Hugging Face's generate; shrink: ended ones retired")
    gen.add_argument("--min-new-tokens", type=int, default=0, help="beam search: no end token before this many new tokens")
    gen.add_argument("--stop", action="append", default=[], metavar="STRING",
                     help="stop a continuation once its text completes STRING (repeatable; \\n, \\t and \\\\ in it "
                          "are a newline, a tab and a backslash)")
    gen.add_argument("--stop-token", action="append", type=int, default=None, metavar="ID",
                     help="a token id that ends a continuation (repeatable; default: the end token an imported "
                          "Hugging Face model declares, if any)")
    gen.add_argument("--sliding-window", action="store_true",
                     help="allow prompt + new tokens beyond the model's context window (older tokens drop out of view)")
    gen.add_argument("--order", default=None,
                     help="any-order models (sigma_gpt): write the new tokens in this order over the window instead "
                          "of left to right (reversed, random:SEED, snake, or a permutation), the prompt fixed at "
                          "its start; the window is sampled whole and cut after the new tokens (an exact marginal)")
    common(gen)
    gen.set_defaults(func=cmd_generate)

    i = sub.add_parser("inspect", help="figure of one example's per-variable conditionals and NLL "
                                       "(text runs: the text, each character coloured by its surprisal in bits)")
    i.add_argument("run", help="run directory or checkpoint directory")
    i.add_argument("--split", choices=["train", "val", "test"], default="test", help="the split of --index")
    i.add_argument("--index", type=int, default=0, help="which example of the split")
    i.add_argument("--dataset", help="take the example from another dataset than the one trained on")
    i.add_argument("--text", help="text runs: score this text instead of an example of the split (one longer than "
                                  "the model's window is scored window by window, each token once)")
    data_args(i)
    i.add_argument("--out", help="output PNG (default RUN/inspect-SPLIT-INDEX.png, or RUN/inspect-text.png); "
                                 "text runs also .html: a page whose characters show their bits on hover")
    force_arg(i)
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
                   help="class-conditional runs: the label, or one per input (default: the labels of a labelled "
                        "dataset --input; required for other inputs)")
    c.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    c.add_argument("--out", help="output PNG (images) or .npy; default RUN/completions.png; the .npy goes next to it")
    c.add_argument("--data-dir", help="folder with the dataset files (default: $CHAINRULE_DATA)")
    c.add_argument("--download", action="store_true", help="download missing dataset files (checksummed)")
    force_arg(c, "--out (or the .npy next to it)")
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
    force_arg(z, "OUTPUT")
    common(z)
    z.set_defaults(func=cmd_compress)

    u = sub.add_parser("decompress", help="decompress a file written by `chainrule compress` (same run)")
    u.add_argument("run", help="run directory or checkpoint directory (the one that compressed the file)")
    u.add_argument("input", help="the compressed file")
    u.add_argument("output", help="where to write: .npy (arrays), .png (image models), or the text file")
    force_arg(u, "OUTPUT")
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
    force_arg(pr, "--out (or its .png)")
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
    force_arg(sc, "--out or --maps")
    anomaly_args(sc)
    sc.set_defaults(func=cmd_score)

    de = sub.add_parser("detect", help="OOD detection: AUROC, AUPR, FPR at 95%% TPR of a score, in vs out",
                        description="Example: chainrule detect runs/nade-fashion --in fashion-mnist --ood mnist "
                                    "--score input-complexity. IN / OOD: dataset names/paths (the run's "
                                    "preprocessing), .npy arrays or image files. In-distribution = negatives.")
    de.add_argument("run", help="run directory or checkpoint directory")
    de.add_argument("--in", dest="inputs_in", nargs="+", default=None,
                    help="in-distribution inputs (default: the run's own dataset)")
    de.add_argument("--ood", dest="inputs_out", nargs="+", default=None,
                    help="the out-of-distribution inputs (required)")
    # --out names an output file in every other command: here it was the OOD data, a deprecated spelling
    de.add_argument("--out", dest="inputs_out_deprecated", nargs="+", default=None, metavar="OOD",
                    help="deprecated spelling of --ood (every other command's --out is an output file)")
    de.add_argument("--report", help="histogram PNG of the two score distributions "
                                     "(default RUN/detect-IN-vs-OUT-SCORE.png)")
    de.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the 95%% intervals")
    de.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    de.add_argument("--group-size", type=int, default=None, metavar="M",
                    help="typicality: the batch test on groups of M inputs (Nalisnick et al. 2019b)")
    de.add_argument("--alpha", type=float, default=0.01, help="--group-size: level of the typicality test")
    de.add_argument("--json", action="store_true", help="also print the result as JSON")
    force_arg(de, "--report")
    anomaly_args(de)
    de.set_defaults(func=cmd_detect)

    from chainrule.cli.ngram import register_cli as register_ngram_cli  # the n-gram commands

    register_ngram_cli(sub)
    from chainrule.cli.interop import register_cli as register_interop_cli  # import-hf / export-hf

    register_interop_cli(sub, common)

    rp = sub.add_parser("report", help="one self-contained HTML page of a run, or a comparison of several runs",
                        description="Example: chainrule report runs/made runs/nade --out compare.html. Images and CSS are "
                                    "inline (one file, no network); pieces a run does not have yet are shown as '—'.")
    rp.add_argument("runs", nargs="+", metavar="RUN", help="run directories (written by `chainrule train`)")
    rp.add_argument("--out", help="the HTML file (default: RUN/report.html for one run, ./report.html for several)")
    rp.add_argument("--title", help="the page's title")
    force_arg(rp)
    rp.set_defaults(func=cmd_report)

    from chainrule.cli.latent import cmd_compose

    co = sub.add_parser("compose", help="a latent run: a VQ-VAE run's decoder under a prior run trained on its codes",
                        description="Example: chainrule train vqvae --dataset digits --out runs/vq -p codebook_size=32; "
                                    "chainrule train gated_pixelcnn --dataset latents:runs/vq --out runs/prior; "
                                    "chainrule compose runs/vq runs/prior --out runs/latent. The result is a run that "
                                    "sample, eval (an upper bound on the NLL), compress/decompress (a two-part code), "
                                    "complete, inspect and report take.")
    co.add_argument("vq_run", help="the VQ-VAE run (chainrule train vqvae)")
    co.add_argument("prior_run", help="the prior's run (trained on --dataset latents:VQ_RUN)")
    co.add_argument("--out", required=True, help="the latent run directory to write")
    co.add_argument("--force", action="store_true", help="--out already holds a run: replace it")
    common(co)
    co.set_defaults(func=cmd_compose)

    q = sub.add_parser("quickstart", help="train a Gated PixelCNN on the bundled 8x8 digits (under two minutes)")
    q.add_argument("--out", default=QUICKSTART_OUT,
                   help=f"run directory (default {QUICKSTART_OUT}); a previous quickstart run there is replaced")
    q.add_argument("--model", choices=list(QUICKSTART), default="gated_pixelcnn",
                   help="gated_pixelcnn (default, ~82 nats in 100 s) or causalconv (the book's ARM, ~85 nats, minutes)")
    q.add_argument("--epochs", type=int, default=1000, help="maximum epochs (early stopping usually ends sooner)")
    q.add_argument("--max-seconds", type=float, default=90,
                   help="wall-clock budget of the whole command (from the process's start: loading, training, "
                        "test evaluation, samples)")
    q.add_argument("--seed", type=int, default=0, help="seed of initialization, batches and samples")
    q.add_argument("--force", action="store_true",
                   help="--out holds a run that quickstart did not write: replace it (only chainrule's files)")
    common(q)
    # one thread: a model this small gains little from two, and two threads on a busy 2-core
    # machine ran 40x slower (73 s per epoch instead of 1.8 s, measured), so the default is safe
    q.set_defaults(func=cmd_quickstart, threads=1)
    return p


def main(argv: list[str] | None = None) -> int:
    # from the shell (argv None) the command is the process: its time budget counts from the process's
    # start; called from Python (argv given), from now
    started = process_start() if argv is None else time.perf_counter()
    parser = build_parser()
    try:
        args = _parse(parser, argv)  # a bad --config file: exit 2 with its error, as bad options do
        check_ranges(args)  # counts, seeds, numbers: bounded before any work
    except ChainruleError as exc:
        print(f"chainrule: error: {exc}", file=sys.stderr)
        return 2
    args.started = started
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from chainrule.cli.latent import latent_command  # a VQ-VAE or latent run: its own handlers

        return (latent_command(args) or args.func)(args)
    except ChainruleError as exc:
        print(f"chainrule: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `chainrule generate ... | head`: the reader is gone, which is no error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush of stdout must not fail again
        return 141  # 128 + SIGPIPE, as a command killed by the signal would
    except FloatingPointError as exc:  # the training loss became NaN / inf
        print(f"chainrule: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a read-only file system, a permission: one line naming the file
        print(f"chainrule: error: {_os_error(exc)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("chainrule: error: out of memory; use a smaller --batch-size, -n or model", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last net: one line (the traceback with CHAINRULE_DEBUG=1)
        if os.environ.get("CHAINRULE_DEBUG"):
            raise
        from safetensors import SafetensorError

        if isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc)):
            print(f"chainrule: error: out of memory ({str(exc).splitlines()[0][:160]}); use a smaller --batch-size, "
                  "-n or model", file=sys.stderr)
            return 1
        if isinstance(exc, SafetensorError):
            print(f"chainrule: error: a safetensors file cannot be read or written ({exc})", file=sys.stderr)
            return 1
        print(f"chainrule: internal error: {type(exc).__name__}: {str(exc)[:300]} (this is a bug of chainrule: "
              "please report it; CHAINRULE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        code = getattr(exc, "exit_code", None)  # a TrainingInterrupted: its line (what was saved) is printed
        if code is None:
            print("chainrule: interrupted", file=sys.stderr)
        return code or 130


def _os_error(exc: OSError) -> str:
    """An OSError as one line: what failed on which file, and the reason with its errno name."""
    import errno

    name = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" {exc.filename}" if exc.filename else ""
    return f"cannot access{where}: {reason}" + (f" ({name})" if name else "")


if __name__ == "__main__":
    sys.exit(main())
