"""chainrule.lm.ngram against nltk.lm (and KenLM) on Tiny Shakespeare.

Data: ``data_dir()/tinyshakespeare/input.txt``; every line lower-cased and whitespace-split, empty
lines dropped; the first 90% of the remaining lines train, the last 10% test. Word level (tokens)
and character level (each line, words re-joined by one space, as a sequence of characters).
Vocabulary: tokens seen >= ``--min-count`` (2) times in training, in both libraries (NLTK
``Vocabulary(unk_cutoff=2)`` built from the same padded text); unseen test tokens are ``<unk>``
(``<UNK>`` in NLTK) in both.

Both libraries get the same padded sentences ``<s>^(n-1) w_1 .. w_L </s>`` (NLTK's own
``padded_everygram_pipeline`` would add n-1 ``</s>``; we build its ``everygrams`` from our padding
instead) and are scored on the same n-grams (every word and one ``</s>`` per sentence).

For MLE (on the test sentences whose every n-gram has non-zero MLE probability), Laplace,
Lidstone (k = 0.1), Witten-Bell and interpolated Kneser-Ney, orders 2 and 3, we report the NLTK
perplexity, chainrule's perplexity with the NLTK-compatible definition (``nltk_compatible=True`` /
``"kneser-ney-nltk"``) and with its default definition, relative differences, and the fit and
evaluation wall times of each library measured in this run (one process, one thread; NLTK models
are each fitted with their own ``fit``). NLTK's Kneser-Ney scores one n-gram in ~10-20 ms at word
level (its continuation counts scan every higher-order context), so the word-level KN comparison
uses a fixed subset: the first ``--kn-word-sentences`` test sentences, the same for both libraries.

Also: chainrule's interpolated modified Kneser-Ney, orders 2-5, on the full test set, and (if the
``kenlm`` module is installed) a check that chainrule's ARPA files load in KenLM and give the same
per-sentence log10 probabilities.

    python benchmarks/ngram_nltk.py
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, write_result  # noqa: E402

from chainrule.lm.ngram import NgramLM  # noqa: E402

SMOOTHERS = {
    # name: (nltk class name, nltk args, chainrule same-definition (smoothing, options), chainrule default)
    "mle": ("MLE", {}, ("mle", {}), ("mle", {})),
    "laplace": ("Laplace", {}, ("laplace", {"nltk_compatible": True}), ("laplace", {})),
    "lidstone": ("Lidstone", {"gamma": 0.1}, ("lidstone", {"k": 0.1, "nltk_compatible": True}), ("lidstone", {"k": 0.1})),
    "witten-bell": ("WittenBellInterpolated", {}, ("witten-bell", {"nltk_compatible": True}), ("witten-bell", {})),
    "kneser-ney": ("KneserNeyInterpolated", {}, ("kneser-ney-nltk", {"discount": 0.1}), ("kneser-ney", {})),
}
DIFFERENCES = {
    "mle": "same definition",
    "laplace": "default chainrule divides by c(h)+|P| with |P| = V-1 (no <s>: it is never predicted), so p sums to 1 over "
               "the tokens that occur; NLTK's len(vocab) = V counts <s> (and </s>, <UNK>)",
    "lidstone": "as laplace, with k*|P| vs k*V",
    "witten-bell": "default chainrule interpolates the unigram level with the uniform distribution and counts only n-grams "
                   "that end on a predicted token; NLTK ends in the unigram MLE and also counts n-grams ending in the <s> "
                   "padding",
    "kneser-ney": "default chainrule is interpolated *modified* KN (three discounts per order from count-of-counts, "
                  "Chen & Goodman 1999, uniform floor); NLTK's KneserNeyInterpolated uses one fixed discount 0.1 and "
                  "no uniform floor",
}


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"


def load_lines(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8")
    return [toks for toks in (line.lower().split() for line in text.split("\n")) if toks]


def pad(sent: list[str], n: int) -> list[str]:
    return ["<s>"] * (n - 1) + list(sent) + ["</s>"]


def nltk_fit(cls_name: str, kwargs: dict[str, Any], n: int, train: list[list[str]], min_count: int):
    import nltk.lm as nlm
    from nltk.util import everygrams

    cls = getattr(nlm, cls_name)
    vocab = nlm.Vocabulary(unk_cutoff=min_count)
    if cls_name == "Lidstone":
        lm = cls(kwargs["gamma"], n, vocabulary=vocab)
    else:
        lm = cls(n, vocabulary=vocab, **kwargs)
    padded = [pad(s, n) for s in train]
    lm.fit((everygrams(p, max_len=n) for p in padded), vocabulary_text=[t for p in padded for t in p])
    return lm


def test_ngrams(sents: list[list[str]], n: int) -> list[tuple[str, ...]]:
    from nltk.util import ngrams

    return [g for s in sents for g in ngrams(pad(s, n), n)]


def timed(fn, *args, **kwargs):
    """One timed call (after a garbage collection)."""
    gc.collect()
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def timed_median(fn, *args, repeats: int = 3, **kwargs):
    """The median time of ``repeats`` calls (chainrule's runs take milliseconds, so their first-touch
    page faults and the noise of the shared machine matter; NLTK's runs take seconds and run once)."""
    runs = [timed(fn, *args, **kwargs) for _ in range(repeats)]
    return runs[-1][0], float(np.median([t for _, t in runs]))


def cr_fit(n: int, smoothing: str, options: dict[str, Any], train, min_count: int) -> NgramLM:
    return NgramLM(n, smoothing, padding="nltk", **options).fit(train, min_count=min_count)


def compare(level: str, n: int, name: str, train, test, min_count: int, kn_word_sentences: int) -> dict[str, Any]:
    cls_name, nkw, (same_sm, same_opts), (def_sm, def_opts) = SMOOTHERS[name]
    row: dict[str, Any] = {"level": level, "order": n, "smoothing": name, "nltk_class": cls_name}
    # the evaluation set
    subset_note = "full test set"
    eval_sents = test
    if name == "mle":
        probe = NgramLM(n, "mle", padding="nltk").fit(train, min_count=min_count)
        finite = np.isfinite(probe.sentence_log_probs(test))
        eval_sents = [s for s, ok in zip(test, finite) if ok]
        subset_note = (f"the {len(eval_sents)} of {len(test)} test sentences with no zero-probability n-gram "
                       "(full test set: perplexity inf in both libraries)")
    elif name == "kneser-ney" and level == "word":
        eval_sents = test[:kn_word_sentences]
        subset_note = f"first {len(eval_sents)} of {len(test)} test sentences (NLTK's KN scoring is slow)"
    row["eval_set"] = subset_note
    # NLTK
    nl, nl_fit = timed(nltk_fit, cls_name, nkw, n, train, min_count)
    grams = test_ngrams(eval_sents, n)
    nl_ppl, nl_eval = timed(nl.perplexity, grams)
    row["num_tokens"] = len(grams)
    row["nltk"] = {"perplexity": _finite(nl_ppl), "fit_s": nl_fit, "eval_s": nl_eval, "vocab_size": len(nl.vocab)}
    # chainrule, same definition
    lm, fit_s = timed_median(cr_fit, n, same_sm, same_opts, train, min_count)
    res, cr_eval = timed_median(lm.perplexity, eval_sents)
    assert res.num_tokens == len(grams)
    row["chainrule_nltk_definition"] = {"smoothing": same_sm, "options": same_opts, "perplexity": _finite(res.perplexity),
                                        "fit_s": fit_s, "eval_s": cr_eval, "vocab_size": res.vocab_size,
                                        "num_oov": res.num_oov}
    if math.isfinite(nl_ppl) and math.isfinite(res.perplexity):
        row["rel_diff"] = abs(res.perplexity - nl_ppl) / nl_ppl
    else:
        row["rel_diff"] = 0.0 if nl_ppl == res.perplexity else "inf"
    row["speedup_fit_plus_eval"] = (nl_fit + nl_eval) / (fit_s + cr_eval)
    row["speedup_fit"] = nl_fit / fit_s
    row["speedup_eval"] = nl_eval / cr_eval
    # chainrule, default definition
    if (def_sm, def_opts) != (same_sm, same_opts):
        lm2, f2 = timed_median(cr_fit, n, def_sm, def_opts, train, min_count)
        r2, e2 = timed_median(lm2.perplexity, eval_sents)
        row["chainrule_default"] = {"smoothing": def_sm, "options": def_opts, "perplexity": _finite(r2.perplexity),
                                    "fit_s": f2, "eval_s": e2}
        row["rel_diff_default_vs_nltk"] = abs(r2.perplexity - nl_ppl) / nl_ppl if math.isfinite(nl_ppl) else "inf"
    row["definition_note"] = DIFFERENCES[name]
    print(f"{level:4s} n={n} {name:12s} nltk {nl_ppl:10.4f} ({nl_fit:6.2f}+{nl_eval:7.2f} s) | chainrule {res.perplexity:10.4f} "
          f"({fit_s:.3f}+{cr_eval:.3f} s) | rel diff {row['rel_diff']} | x{row['speedup_fit_plus_eval']:.0f}", flush=True)
    return row


def kenlm_check(train, test, orders, min_count: int, tmp: Path) -> dict[str, Any]:
    try:
        import kenlm
    except ImportError as exc:
        return {"installed": False, "note": f"kenlm is not importable ({exc}); `pip install kenlm` did not install it"}
    out: dict[str, Any] = {"installed": True, "version": getattr(kenlm, "__version__", "unknown"), "checks": []}
    for n in orders:
        lm = NgramLM(n, "kneser-ney").fit(train, min_count=min_count)  # SRILM/KenLM padding (the default)
        path = lm.to_arpa(tmp / f"shakespeare_word_{n}.arpa")
        km = kenlm.Model(str(path))
        ours = lm.sentence_log_probs(test) / math.log(10)
        # KenLM's ordinary call: one <s> before, </s> after
        theirs = np.array([km.score(" ".join(sent), bos=True, eos=True) for sent in test])
        diff = np.abs(ours - theirs)
        out["checks"].append({"order": n, "smoothing": "kneser-ney", "arpa_bytes": path.stat().st_size,
                              "sentences": len(test), "max_abs_diff_log10": float(diff.max()),
                              "max_rel_diff": float((diff / np.abs(ours)).max())})
        print(f"kenlm n={n}: max |log10 diff| per sentence {diff.max():.2e}", flush=True)
        path.unlink()
    out["note"] = "KenLM's ordinary kenlm.Model.score(s, bos=True, eos=True) against chainrule's sentence log-probabilities"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-count", type=int, default=2)
    ap.add_argument("--kn-word-sentences", type=int, default=500,
                    help="test sentences for the word-level NLTK Kneser-Ney comparison")
    ap.add_argument("--orders", type=int, nargs="+", default=[2, 3])
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    import nltk
    import torch

    torch.set_num_threads(1)  # not used for counting; recorded by write_result

    path = Path(data_dir()) / "tinyshakespeare" / "input.txt"
    lines = load_lines(path)
    cut = int(0.9 * len(lines))
    data = {"word": (lines[:cut], lines[cut:]),
            "char": ([list(" ".join(s)) for s in lines[:cut]], [list(" ".join(s)) for s in lines[cut:]])}
    start = time.perf_counter()
    rows = []
    for level in ("word", "char"):
        train, test = data[level]
        for n in args.orders:
            for name in SMOOTHERS:
                rows.append(compare(level, n, name, train, test, args.min_count, args.kn_word_sentences))
    mkn = []
    for level in ("word", "char"):
        train, test = data[level]
        for n in (2, 3, 4, 5):
            lm, fit_s = timed_median(cr_fit, n, "kneser-ney", {}, train, args.min_count)
            res, eval_s = timed_median(lm.perplexity, test)
            mkn.append({"level": level, "order": n, **res.as_dict(), "fit_s": fit_s, "eval_s": eval_s})
            print(f"MKN {level} n={n}: perplexity {res.perplexity:.3f} fit {fit_s:.3f}s eval {eval_s:.3f}s", flush=True)
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    ken = kenlm_check(*data["word"], orders=[3, 5], min_count=args.min_count, tmp=tmp)
    same = [r for r in rows if isinstance(r["rel_diff"], float)]
    result = {
        "dataset": {"file": "tinyshakespeare/input.txt", "non_empty_lines": len(lines), "train_sentences": cut,
                    "test_sentences": len(lines) - cut,
                    "word_tokens_train": sum(map(len, data["word"][0])), "word_tokens_test": sum(map(len, data["word"][1])),
                    "char_tokens_train": sum(map(len, data["char"][0])), "char_tokens_test": sum(map(len, data["char"][1])),
                    "preprocessing": "lower-case, whitespace split, empty lines dropped, then first 90% train / last 10% "
                                     "test; char level = characters of the words joined by single spaces",
                    "min_count": args.min_count, "padding": "n-1 <s> left, one </s> right, in both libraries (chainrule padding='nltk')"},
        "nltk_version": nltk.__version__,
        "timing": "one process, one thread, sequential; wall time of fit (counting + parameters, from token lists) and "
                  "of evaluation (perplexity of the evaluation set); chainrule: median of 3 runs, NLTK: 1 run; "
                  "speedup = NLTK (fit + eval) / chainrule (fit + eval)",
        "comparisons": rows,
        "summary": {
            "max_rel_diff_same_definition": max(r["rel_diff"] for r in same),
            "min_speedup_fit_plus_eval": min(r["speedup_fit_plus_eval"] for r in rows),
            "max_speedup_fit_plus_eval": max(r["speedup_fit_plus_eval"] for r in rows),
            "speedup_by_smoother": {name: [round(r["speedup_fit_plus_eval"], 1) for r in rows if r["smoothing"] == name]
                                    for name in SMOOTHERS},
        },
        "modified_kneser_ney_full_test": mkn,
        "kenlm": ken,
        "total_seconds": time.perf_counter() - start,
    }
    write_result("ngram_nltk", result)


if __name__ == "__main__":
    main()
