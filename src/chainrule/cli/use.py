"""The commands that use a trained run: ``eval``, ``sample``, ``generate``, ``inspect`` and ``complete``."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chainrule.apps.pipeline import (
    check_samples_path,
    default_samples_name,
    describe_eval,
    in_data_units,
    run_standardization,
    save_samples,
)
from chainrule.apps.rundir import checkpoint_dir
from chainrule.cli.common import (
    completion_inputs,
    load_run,
    model_and_split,
    output_path,
    run_and_labels,
    sampling_labels,
    set_threads,
    tokenizer_of,
)
from chainrule.errors import InputError
from chainrule.inference.likelihood import bayes_classify, evaluate, evaluate_stream, token_unit
from chainrule.inference.sampling import default_generator
from chainrule.io.checkpoint import read_config
from chainrule.io.outputs import output_file


def cmd_eval(args: argparse.Namespace) -> int:
    """``chainrule eval``: NLL, bits/dim (and perplexity for text) on a split, or the Bayes classifier."""
    if getattr(args, "text", None) is not None:
        return _eval_text(args)
    model, ds, data, labels = model_and_split(args)
    if args.limit is not None:
        if args.limit < 1:
            raise InputError(f"--limit must be a positive integer (examples of the split), got {args.limit}")
        if args.stride is not None:
            raise InputError("--stride scores the whole token stream of the split; --limit takes its first N windows: "
                             "pass one of them")
        data = data[:args.limit]
        labels = None if labels is None else labels[:args.limit]
    if args.stride is not None:
        if not hasattr(data, "stream"):
            raise InputError("--stride applies to text and audio datasets (a token stream)")
        sres = evaluate_stream(model, data.stream, args.stride, progress=not args.no_progress, unit=token_unit(ds))
        _check_finite(sres.nats_per_token, args)
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
    _check_finite(res.nll_nats, args)
    st = run_standardization(checkpoint_dir(args.run))
    if st is not None:  # the model read standardized data: the NLL of the data in their own units
        res = in_data_units(res, st.log_det)
    for line in describe_eval(args.split, res, ds):  # text / audio: per token (bits/char) first
        print(line)
    if args.json:
        print(json.dumps({"split": args.split, **res.as_dict()}))
    return 0


def _check_finite(nll: float, args: argparse.Namespace) -> None:
    """An NLL that is NaN or infinite is no result to print (exit 0 with "NLL nan"): an error saying so."""
    if not math.isfinite(nll):
        raise InputError(f"the {args.split} NLL of {args.run} is {nll} (the model gives NaN or zero probability "
                         "to some examples): its weights or these data are broken; nothing to report")
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
    labels, ncol = sampling_labels(args, ckpt, model, args.n)
    rate = read_config(ckpt).get("extra", {}).get("sample_rate")
    # the file asked for, or the run's default; an extension this run cannot be written as fails before sampling
    out = Path(args.out or (Path(args.run) / default_samples_name(is_image, tok, rate)))
    if args.out or tok is None:
        try:
            check_samples_path(out, is_image, tok, rate)
        except InputError as exc:
            raise InputError(f"--out {exc}") from None
        out = output_path(args, args.out, out, "--out")
    x = _draw_samples(args, model, labels)
    st = run_standardization(ckpt)
    if st is not None:  # trained on standardized data: samples in the data's units
        x = st.invert(x)
    if tok is not None and not args.out:
        for row in x:
            print(tok.decode(row.tolist()))
            print("----------")
        return 0
    with output_file(out, force=bool(args.force or not args.out)) as tmp:
        save_samples(x, tmp, model.num_values, is_image, tok, rate, ncol)
    print(f"wrote {args.n} samples to {out}" + (f" (one column per class, 0..{ncol - 1})" if ncol and is_image else ""))
    return 0


def _draw_samples(args: argparse.Namespace, model: Any, labels: Any) -> torch.Tensor:
    """``sample``'s draws: ancestral (the default), exact burst sampling or approximate parallel steps."""
    gen = default_generator(model, args.seed)
    burst, steps = getattr(args, "burst", False), getattr(args, "parallel_steps", None)
    if not burst and steps is None:
        return model.sample(args.n, labels, generator=gen, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, progress=not args.no_progress,
                            **({} if getattr(args, "order", None) is None else {"order": args.order}))
    from chainrule.inference.parallel import burst_sample, parallel_sample

    if args.temperature != 1.0 or args.top_k is not None or args.top_p is not None:
        raise InputError("--burst and --parallel-steps draw from the model's conditionals as they are: "
                         "leave out --temperature, --top-k and --top-p")
    if burst:
        x, st = burst_sample(model, args.n, labels, gen, order=args.order, window=args.burst_window, return_stats=True)
        print(f"burst sampling (exact): {float(st['passes'].float().mean()):.1f} passes per sample on average "
              f"(ancestral sampling: {model.num_groups}); {st['model_calls']} batched passes")
        return x
    x, st = parallel_sample(model, args.n, steps, labels, gen, order=args.order, schedule=args.schedule,
                            return_stats=True)
    print(f"approximate parallel decoding: {int(st['passes'].max())} passes per sample; NOT the model's exact "
          f"distribution (ancestral sampling takes {model.num_groups} passes)")
    return x
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
    if len(prompt) + args.max_new_tokens > model.dim and not args.sliding_window and args.beam is None:
        raise InputError(f"the prompt ({len(prompt)} tokens) plus --max-new-tokens {args.max_new_tokens} exceed the "
                         f"model's window of {model.dim} tokens (it was trained on windows of {model.dim}): pass "
                         f"--sliding-window (the model keeps the most recent tokens in view) or --max-new-tokens "
                         f"{max(1, model.dim - len(prompt))} or fewer")
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
                                          generator=default_generator(model, args.seed))
        print(tok.decode(list(prompt) + new))
        print(f"speculative: {stats.accepted} of {stats.drafted} drafted tokens accepted "
              f"({100 * stats.acceptance_rate:.1f}%), {stats.tokens_per_round:.2f} new tokens per pass of the target",
              file=sys.stderr)
        return 0
    if args.order is not None:
        out = _generate_in_order(args, model, prompt)
    else:
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


def _generate_in_order(args: argparse.Namespace, model: Any, prompt: list[int]) -> torch.Tensor:
    """``generate --order``: the window sampled in that order with the prompt observed at its start,
    cut after the new tokens (dropping variables of an exact joint sample is an exact marginal)."""
    if not model.any_order or len(model.shape) != 1 or getattr(model, "num_members", 1) > 1:
        raise InputError(f"--order needs a single model of a sequence that takes any order (sigma_gpt); "
                         f"{model.name!r} writes left to right only")
    if args.sliding_window:
        raise InputError("--order writes inside one window: leave out --sliding-window")
    if args.max_new_tokens < 1 or len(prompt) + args.max_new_tokens > model.dim:
        raise InputError(f"--order: the prompt ({len(prompt)} tokens) plus --max-new-tokens {args.max_new_tokens} must "
                         f"fit the model's window of {model.dim} tokens")
    values = torch.zeros(model.dim, dtype=torch.long)
    values[:len(prompt)] = torch.as_tensor(prompt, dtype=torch.long)
    mask = torch.arange(model.dim) < len(prompt)
    x = model.sample(args.n, generator=default_generator(model, args.seed), observed=(values, mask),
                     order=args.order, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    return x[:, :len(prompt) + args.max_new_tokens].cpu()


def cmd_inspect(args: argparse.Namespace) -> int:
    """Per-variable conditionals of one example as a figure (the NADE paper's conditional maps)."""
    from chainrule.apps.inspection import inspect_example, plot_inspection

    if args.out:  # checked before any work
        output_path(args, args.out, None, "--out")
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
    out = output_path(args, args.out, Path(args.run) / f"inspect-{args.split}-{args.index}.png", "--out")
    with output_file(out, force=bool(args.force or not args.out)) as tmp:
        plot_inspection(ins, tmp, model.num_values, title=f"{model.name}: {args.split} example {args.index}")
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
    out = output_path(args, args.out, default_out, "--out")
    title = f"{model.name}: {what}"
    with output_file(out, force=bool(args.force or not args.out)) as tmp:
        if out.suffix.lower() in (".html", ".htm"):
            write_text_surprisal_html(ins, tmp, title)
        else:
            plot_text_surprisal(ins, tmp, title=title)
    print(ins.summary(what))
    print(f"wrote {out}")
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    """Complete partially observed inputs: a PNG figure (images) and the completions as .npy."""
    from chainrule.apps.completion import complete, is_prefix_of_order, load_mask
    from chainrule.apps.plotting import plot_completions

    if args.num < 1:
        raise InputError(f"--num must be a positive integer (completions per input), got {args.num}")
    if args.out:  # the figure and the .npy next to it: checked before any work
        output_path(args, args.out, None, "--out")
        if Path(args.out).suffix.lower() != ".npy":
            output_path(args, Path(args.out).with_suffix(".npy"), None, "--out (its .npy)")
    ckpt, model, labels = run_and_labels(args, "or one per input", "chainrule.apps.completion.complete(model, x, mask, context=...)",
                                         dataset_labels=True)
    found: list[Any] = []
    x, source = completion_inputs(args, ckpt, model, labels=found)
    if model.num_classes and labels is None:  # class-conditional: the dataset's own labels, else --class
        if not found:
            raise InputError(f"{ckpt} is class-conditional and {source} has no labels: pass --class Y (a label in "
                             f"0..{model.num_classes - 1}, or one per input)")
        labels = found[0]
        source += f" (their labels {', '.join(map(str, labels.tolist()[:8]))}{', ...' if len(labels) > 8 else ''})"
    mask = load_mask(args.mask, model.shape, args.seed)
    st = run_standardization(ckpt)
    if st is not None and (len(args.input) > 1 or args.input[0].lower().endswith(".npy")):
        x = st.apply(torch.as_tensor(x))  # a file in the data's units (a dataset input is standardized already)
    comp = complete(model, x, mask, args.num, labels, default_generator(model, args.seed), args.temperature)
    if st is not None:  # trained on standardized data: completions (and the inputs) in the data's units
        comp, x = st.invert(comp), st.invert(torch.as_tensor(x))
    n, shape = comp.shape[0], tuple(model.shape)
    full_mask = mask.expand(n, *shape).to(comp.device)  # check_mask already accepted the shape
    observed = int(full_mask[0].sum())
    print(f"{model.name}: {n} input(s) from {source}; mask {args.mask}: {observed} of {model.dim} variables "
          f"observed{' (example 0)' if tuple(mask.shape) != shape else ''}; {args.num} completions each")
    if model.any_order and getattr(model, "num_members", 1) == 1 and not is_prefix_of_order(model, full_mask) \
            and model.hyperparameters.get("train_order") != "random":  # sigma_gpt trains on random orders
        print(f"note: {model.name} was trained in one order; this mask conditions it in an order it never saw, "
              "so completions may be poor (an order-agnostic ensemble, -p num_orders=K, is trained for this)")
    is_image = len(shape) == 3 and shape[0] in (1, 3)
    out = output_path(args, args.out, Path(args.run) / ("completions.png" if is_image else "completions.npy"), "--out")
    npy = output_path(args, out.with_suffix(".npy") if args.out else None, out.with_suffix(".npy"), "--out")
    force = bool(args.force or not args.out)
    with output_file(npy, force=force) as tmp, open(tmp, "wb") as f:
        np.save(f, comp.cpu().numpy())
    print(f"wrote completions {tuple(comp.shape)} (inputs, completions, *shape) to {npy}")
    if is_image and out.suffix.lower() == ".png":
        try:  # the original as given; placeholders at hidden positions (-1, NaN) shown as 0
            xin, _ = model.validate(x)
        except InputError:
            xin, _ = model.validate(torch.where(full_mask.cpu(), x.reshape(n, *shape), torch.zeros((), dtype=x.dtype)))
        with output_file(out, force=force) as tmp:
            plot_completions(xin, full_mask, comp, tmp, model.num_values,
                             title=f"{model.name}: completions, mask {args.mask}")
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
