"""The ``chainrule ngram`` commands: fit, eval, generate, export-arpa (over :mod:`chainrule.lm.ngram`)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from chainrule.errors import DataError, InputError
from chainrule.lm.ngram import NgramLM, PADDINGS, SMOOTHERS, read_text_sentences


def _check_model_dir(args: argparse.Namespace) -> None:
    """``ngram fit --out DIR``: a directory that holds a saved model is replaced only with ``--force``;
    a file, a checkpoint directory or the training text itself is refused (:mod:`chainrule.io.outputs`)."""
    from pathlib import Path

    from chainrule.io.outputs import check_output

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; the n-gram model is a directory")
    if (out / "ngram.json").exists() or (out / "ngram.npz").exists():
        for name in ("ngram.json", "ngram.npz"):
            check_output(out / name, force=args.force, inputs=[args.text_file], option="--out")
    else:
        check_output(out / "ngram.json", force=True, inputs=[args.text_file], option="--out")


#: ``--level char``: a space is this token (SentencePiece's mark), so that every token is one visible symbol
SPACE = "\u2581"
#: ``ngram generate``: above this share of ``<unk>`` among the words drawn, say why and what to do
UNK_NOTE_SHARE = 0.2


def _sentences(path: str, lowercase: bool, level: str) -> list[list[str]]:
    """The sentences of a text file: whitespace-separated words (``level="word"``), or the characters
    of each line, a space being the token ``▁`` (``"char"``)."""
    sents = read_text_sentences(path, lowercase)
    if level == "char":
        sents = [list(SPACE.join(words)) for words in sents]
    return sents


def _cmd_fit(args: argparse.Namespace) -> int:
    _check_model_dir(args)
    sents = _sentences(args.text_file, args.lowercase, args.level)
    if not sents:
        raise DataError(f"{args.text_file} has no non-empty lines to train on")
    options: dict[str, Any] = {}
    if args.k is not None:
        options["k"] = args.k
    if args.lambdas is not None:
        try:
            options["lambdas"] = [float(x) for x in args.lambdas.split(",")]
        except ValueError:
            raise InputError(f"--lambdas must be comma-separated numbers, got {args.lambdas!r}") from None
    if args.discount is not None:
        options["discount"] = args.discount
    if args.alpha is not None:
        options["alpha"] = args.alpha
    if args.nltk_compatible:
        options["nltk_compatible"] = True
    model = NgramLM(args.order, args.smoothing, padding=args.padding, **options)
    model.fit(sents, min_count=args.min_count)
    model.metadata["lowercase"] = bool(args.lowercase)
    model.metadata["level"] = args.level
    model.metadata["train_file"] = str(args.text_file)
    out = model.save(args.out)
    note = "" if model.gives_probabilities else " (scores, not probabilities: no perplexity)"
    print(f"fitted {model} on {len(sents)} sentences -> {out}{note}")
    return 0


def _load_model(path: str) -> NgramLM:
    return NgramLM.load(path)


def _cmd_eval(args: argparse.Namespace) -> int:
    model = _load_model(args.model_dir)
    lower = model.metadata.get("lowercase", False) if args.lowercase is None else args.lowercase
    sents = _sentences(args.text_file, lower, model.metadata.get("level", "word"))
    if not sents:
        raise DataError(f"{args.text_file} has no non-empty lines to evaluate")
    res = model.perplexity(sents)
    if not math.isfinite(res.perplexity):
        # an infinite perplexity is no result to print: say what happened and what to do
        raise InputError(
            f"{args.text_file}: some of the {res.num_tokens} test tokens have probability 0 under this "
            f"{model.smoothing!r} model ({res.num_oov} are out of vocabulary), so its perplexity is infinite; "
            "fit a smoothed model instead (--smoothing kneser-ney, witten-bell or lidstone)"
        )
    print(f"perplexity: {res.perplexity:.4f}")
    print(f"cross-entropy: {res.cross_entropy_nats_per_token:.6f} nats/token")
    print(f"tokens: {res.num_tokens} ({res.num_sentences} sentences, </s> included, <s> not)")
    print(f"OOV tokens: {res.num_oov}")
    print(f"vocabulary size: {res.vocab_size}")
    print(f"padding: {model.padding}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    import sys

    model = _load_model(args.model_dir)
    chars = model.metadata.get("level") == "char"
    text = args.prompt.lower() if model.metadata.get("lowercase") else args.prompt
    if chars:
        prompt = list(SPACE.join(text.split()) + (SPACE if text.endswith(" ") else ""))
    else:
        prompt = text.split()
    # one rule with `chainrule generate` and `sample`: without --seed the draws are seed 0's (the same
    # command prints the same text); --seed S for others
    gen = torch.Generator().manual_seed(args.seed)
    toks = model.generate(args.num_tokens, prompt=prompt, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, generator=gen)
    if chars:  # characters as text: a sentence is a line, so its end is a line break
        print("".join(prompt + ["\n" if t == "</s>" else t for t in toks]).replace(SPACE, " "))
    else:
        print(" ".join(prompt + toks))
    unk = sum(t == "<unk>" for t in toks)
    if toks and unk / len(toks) > UNK_NOTE_SHARE:
        print(f"note: {unk} of the {len(toks)} tokens drawn are <unk>: every word seen fewer than --min-count "
              f"times in the training text (or not at all) became <unk>, which is then one of the most probable "
              f"'words' ({model.vocab_size} words in the "
              "vocabulary); fit with --min-count 1, on more text, or a character model (ngram fit --level char), "
              "whose vocabulary is every character", file=sys.stderr)
    return 0


def _cmd_export_arpa(args: argparse.Namespace) -> int:
    from chainrule.io.outputs import check_output

    check_output(args.out, force=args.force, inputs=[args.model_dir], option="OUT")
    model = _load_model(args.model_dir)
    out = model.to_arpa(args.out)
    note = "" if model.padding == "srilm" else f" (padding {model.padding!r}: sentence starts written collapsed to one <s>)"
    print(f"wrote {out}{note}; kenlm.Model(path).score(sentence, bos=True, eos=True) gives this model's log10 scores")
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``ngram`` command (fit / eval / generate / export-arpa) to an argparse sub-parser set.

    Each action sets ``func`` to a function ``(argparse.Namespace) -> int``; errors are raised as
    chainrule errors for the main CLI to print."""
    p = subparsers.add_parser("ngram", help="n-gram language models on text files (one sentence per line)",
                              description="Count-based n-gram language models: sentences are the non-empty lines "
                                          "of a UTF-8 file, tokens are whitespace-separated.")
    sub = p.add_subparsers(dest="ngram_command", required=True, metavar="ACTION")

    f = sub.add_parser("fit", help="count n-grams of a text file and save the model")
    f.add_argument("text_file", help="UTF-8 training text, one sentence per line")
    f.add_argument("--order", "-n", type=int, default=3, help="n (default 3)")
    f.add_argument("--smoothing", "-s", default="kneser-ney",
                   help=f"one of {', '.join(SMOOTHERS)} (default kneser-ney; stupid-backoff gives scores, "
                        "not probabilities, so eval refuses it)")
    f.add_argument("--min-count", type=int, default=1, help="tokens seen fewer times become <unk> (default 1)")
    f.add_argument("--lowercase", action="store_true", help="lower-case the text (remembered for eval/generate)")
    f.add_argument("--k", type=float, help="lidstone: add-k pseudo-count")
    f.add_argument("--lambdas", help="jelinek-mercer: n+1 comma-separated weights, highest order first, then uniform")
    f.add_argument("--discount", type=float, help="kneser-ney(-nltk), absolute-discounting: a single fixed discount")
    f.add_argument("--alpha", type=float, help="stupid-backoff: the factor of a backed-off score (default 0.4)")
    f.add_argument("--nltk-compatible", action="store_true",
                   help="mle/laplace/lidstone/witten-bell/absolute-discounting/stupid-backoff: NLTK's definition")
    f.add_argument("--padding", choices=PADDINGS, default="srilm",
                   help="srilm (default): one <s> per sentence, shorter n-grams at its start, as SRILM/KenLM; "
                        "nltk: n-1 <s> and n-1 </s>, as NLTK's pad_both_ends")
    f.add_argument("--level", choices=["word", "char"], default="word",
                   help="word: whitespace-separated words; char: the characters of each line (a space is the "
                        "token \u2581), remembered for eval/generate")
    f.add_argument("--out", "-o", required=True, help="model directory to write")
    f.add_argument("--force", action="store_true", help="--out already holds an n-gram model: replace it")
    f.set_defaults(func=_cmd_fit)

    e = sub.add_parser("eval", help="perplexity of a saved model on a text file")
    e.add_argument("model_dir", help="a model directory written by `ngram fit`")
    e.add_argument("text_file", help="UTF-8 text to score, one sentence per line")
    e.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                   help="override the lower-casing recorded at fit time")
    e.set_defaults(func=_cmd_eval)

    g = sub.add_parser("generate", help="sample a sentence (or --num-tokens tokens) from a saved model")
    g.add_argument("model_dir", help="a model directory written by `ngram fit`")
    g.add_argument("--prompt", default="", help="words the generated text continues")
    g.add_argument("--num-tokens", type=int, help="exactly this many tokens (default: one sentence, until </s>)")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1)")
    g.add_argument("--top-k", type=int, help="sample among the k most probable tokens")
    g.add_argument("--top-p", type=float, help="nucleus sampling threshold")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the draws: the same seed, the same text (as `chainrule generate` and `sample`)")
    g.set_defaults(func=_cmd_generate)

    a = sub.add_parser("export-arpa", help="write a saved model as an ARPA file (KenLM/SRILM scoring convention)")
    a.add_argument("model_dir", help="a model directory written by `ngram fit`")
    a.add_argument("out", help="ARPA file to write")
    a.add_argument("--force", action="store_true", help="OUT exists: replace it")
    a.set_defaults(func=_cmd_export_arpa)
    return p
