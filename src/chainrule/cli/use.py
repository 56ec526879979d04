"""The commands that use a trained run: ``eval``, ``sample``, ``generate``, ``inspect`` and ``complete``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chainrule.apps.pipeline import (
    checkpoint_dir,
    check_samples_path,
    class_columns,
    default_samples_name,
    describe_eval,
    sample_labels,
    save_samples,
)
from chainrule.cli.common import completion_inputs, load_run, model_and_split, run_and_labels, set_threads, tokenizer_of
from chainrule.errors import InputError
from chainrule.inference.likelihood import bayes_classify, evaluate, evaluate_stream, token_unit
from chainrule.inference.sampling import default_generator
from chainrule.io.checkpoint import read_config


def cmd_eval(args: argparse.Namespace) -> int:
    """``chainrule eval``: NLL, bits/dim (and perplexity for text) on a split, or the Bayes classifier."""
    if getattr(args, "text", None) is not None:
        return _eval_text(args)
    model, ds, data, labels = model_and_split(args)
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


def _eval_text(args: argparse.Namespace) -> int:
    """``eval --text FILE``: a text file scored with the run's own tokenizer, in bits per byte (the
    figure that compares models with different tokenizers) and per token."""
    from chainrule.apps.inspection import inspect_text
    from chainrule.errors import DataError

    ckpt, model = load_run(args)
    tok = tokenizer_of(ckpt)
    if tok is None:
        raise InputError(f"--text: {ckpt} was not trained on text (no tokenizer in its config)")
    try:
        raw = Path(args.text).read_bytes()
    except OSError as exc:
        raise DataError(f"--text: cannot read {args.text}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"--text {args.text}: not UTF-8 (byte {exc.start}); expected a UTF-8 text file") from None
    ins = inspect_text(model, tok, text)
    bpb = ins.total_bits / len(raw)
    print(f"{args.text}: {bpb:.4f} bits/byte over {len(raw)} bytes | {ins.bits_per_token:.4f} bits/{ins.unit} over "
          f"{len(ins.ids)} {ins.unit}s | {ins.total_bits:.1f} bits in all | window {model.dim}")
    if args.json:
        print(json.dumps({"text": str(args.text), "bits_per_byte": bpb, "bits_per_token": ins.bits_per_token,
                          "total_bits": ins.total_bits, "num_bytes": len(raw), "num_tokens": len(ins.ids),
                          "unit": ins.unit, "window": model.dim}))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """``chainrule sample``: draw ``-n`` examples (cached, with the decoding filters) and write them."""
    ckpt, model = load_run(args)
    tok = tokenizer_of(ckpt)
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


def _unescape(text: str) -> str:
    """``--stop`` strings: ``\\n``, ``\\t`` and ``\\\\`` typed in a shell are a newline, a tab and a backslash."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def cmd_generate(args: argparse.Namespace) -> int:
    """Continue a text prompt with a sequence model trained on text."""
    from chainrule.inference.beam import generate_beam
    from chainrule.inference.processors import processors
    from chainrule.inference.sampling import generate
    from chainrule.inference.streaming import stream_text

    set_threads(args.threads)
    if args.beam is not None and args.beam < 1:
        raise InputError(f"--beam must be an integer >= 1 (the beam width; leave it out to sample), got {args.beam}")
    ckpt, model = load_run(args, threads=False)
    tok = tokenizer_of(ckpt)
    if tok is None:
        raise InputError(f"{ckpt} was not trained on text (no tokenizer in its config); use `chainrule sample`")
    prompt = tok.encode(args.prompt)
    repetition, no_repeat = getattr(args, "repetition_penalty", None), getattr(args, "no_repeat_ngram_size", None)
    args.stop = [_unescape(s) for s in getattr(args, "stop", None) or []]
    stop_tokens = getattr(args, "stop_token", None)
    if stop_tokens is None:
        eos = read_config(ckpt).get("extra", {}).get("eos_token_id")
        stop_tokens = [eos] if isinstance(eos, int) else []
    if args.beam is not None:
        hyps = generate_beam(model, prompt, args.max_new_tokens, args.beam, eos_id=stop_tokens or None,
                             length_penalty=args.length_penalty, mode=getattr(args, "beam_mode", "hf"),
                             early_stopping={"false": False, "true": True}.get(getattr(args, "early_stopping", "false"), "never"),
                             min_new_tokens=getattr(args, "min_new_tokens", 0), stop_strings=getattr(args, "stop", []),
                             tokenizer=tok, processors=processors(repetition_penalty=repetition,
                                                                  no_repeat_ngram_size=no_repeat))
        for h in hyps:
            print(f"[log p = {h.log_prob:.3f} nats, score {h.score:.4f}] {args.prompt}{tok.decode(h.tokens)}")
        return 0
    if getattr(args, "draft", None):
        from chainrule.inference.speculative import speculative_generate
        from chainrule.models import load

        if args.n != 1:
            raise InputError("--draft draws one continuation at a time: leave out -n")
        draft = load(checkpoint_dir(args.draft), model.device)
        new, stats = speculative_generate(model, draft, prompt, args.max_new_tokens, args.gamma,
                                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                          generator=torch.Generator().manual_seed(args.seed))
        print(tok.decode(list(prompt) + new))
        print(f"speculative: {stats.accepted} of {stats.drafted} drafted tokens accepted "
              f"({100 * stats.acceptance_rate:.1f}%), {stats.tokens_per_round:.2f} new tokens per pass of the target",
              file=sys.stderr)
        return 0
    decoding = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    generator=default_generator(model, args.seed), sliding=args.sliding_window,
                    repetition_penalty=repetition, no_repeat_ngram_size=no_repeat, stop_tokens=stop_tokens)
    if args.n == 1:  # one continuation: its text is printed as the tokens are drawn
        stream = generate(model, prompt, args.max_new_tokens, stream=True, **decoding)
        print(tok.decode(prompt), end="", flush=True)
        for piece in stream_text(tok, prompt, (int(t[0]) for t in stream), getattr(args, "stop", [])):
            print(piece, end="", flush=True)
        print()
        return 0
    out = generate(model, prompt, args.max_new_tokens, num_samples=args.n, **decoding)
    for row in out:
        print(tok.decode(row.tolist()))
        if args.n > 1:
            print("----------")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Per-variable conditionals of one example as a figure (the NADE paper's conditional maps)."""
    from chainrule.apps.inspection import inspect_example, plot_inspection

    if args.text is not None:  # a text of the user's: the run's tokenizer is enough, no dataset needed
        ckpt, model = load_run(args)
        tok = tokenizer_of(ckpt)
        if tok is None:
            raise InputError(f"--text: {ckpt} was not trained on text (no tokenizer in its config)")
        return _inspect_text(args, model, tok, args.text, None, "text", Path(args.run) / "inspect-text.png")
    model, ds, data, labels = model_and_split(args)
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


def cmd_complete(args: argparse.Namespace) -> int:
    """Complete partially observed inputs: a PNG figure (images) and the completions as .npy."""
    from chainrule.apps.completion import complete, is_prefix_of_order, load_mask
    from chainrule.apps.plotting import plot_completions

    ckpt, model, labels = run_and_labels(args, "or one per input", "chainrule.apps.completion.complete(model, x, mask, context=...)")
    x, source = completion_inputs(args, ckpt, model)
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
    tok = tokenizer_of(ckpt)
    for i in range(n):
        print(f"example {i}:")
        if tok is not None:  # the observed tokens, '_' where hidden
            seen = full_mask[i].reshape(-1).tolist()
            print("  observed: " + "".join(tok.decode([t]) if o else "_" for t, o in zip(comp[i, 0].reshape(-1).tolist(), seen)))
        for j in range(args.num):
            row = comp[i, j].reshape(-1).tolist()
            print(f"  {j + 1}: " + (tok.decode(row) if tok is not None else np.array2string(np.asarray(row), max_line_width=200)))
    return 0
