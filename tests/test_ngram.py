"""Tests of chainrule.lm.ngram: normalization, hand-computed values, padding conventions, NLTK and
KenLM agreement, ARPA, I/O, CLI."""

from __future__ import annotations

import argparse
import json
import logging
import math

import numpy as np
import pytest
import torch

from chainrule.errors import DataError, InputError
from chainrule.cli.ngram import register_cli
from chainrule.lm.ngram import BOS_ID, EOS_ID, PADDINGS, SMOOTHERS, UNK_ID, NgramLM, PerplexityResult, read_text_sentences

NORMALIZED = ["laplace", "lidstone", "jelinek-mercer", "witten-bell", "katz", "kneser-ney", "absolute-discounting"]
ARPA = ["jelinek-mercer", "witten-bell", "katz", "kneser-ney", "kneser-ney-nltk", "absolute-discounting"]
TINY = [["a", "b"], ["a"]]


@pytest.fixture(autouse=True)
def _quiet(caplog):
    caplog.set_level(logging.ERROR, logger="chainrule.lm.ngram")


def random_corpus(rng: np.random.Generator, num: int, vocab: int = 6, max_len: int = 8, zipf: bool = False) -> list[list[str]]:
    words = [f"w{i}" for i in range(vocab)]
    p = 1.0 / np.arange(1, vocab + 1) if zipf else np.ones(vocab)
    p /= p.sum()
    return [[words[i] for i in rng.choice(vocab, size=rng.integers(0, max_len + 1), p=p)] for _ in range(num)]


_SYLLABLES = ["ka", "lo", "mi", "ru", "te", "sa", "no", "vi", "de", "po", "ga", "li", "zu", "fe", "ba", "ro"]


def toy_english(num: int, seed: int) -> list[list[str]]:
    """Deterministic English-like sentences (determiners, adjectives, nouns, verbs, adverbs,
    prepositions, coordination) over a Zipf-distributed pseudo-word lexicon, so that every order has
    n-grams seen 1, 2, 3 and 4 times (valid modified-KN discounts, as lmplz requires)."""
    rng, lex_rng = np.random.default_rng(seed), np.random.default_rng(12345)  # the same lexicon for every seed

    def lexicon(size: int, suffix: str) -> list[str]:
        out: list[str] = []
        while len(out) < size:
            w = "".join(lex_rng.choice(_SYLLABLES, size=lex_rng.integers(1, 4))) + suffix
            if w not in out:
                out.append(w)
        return out

    det = ["the", "a", "every", "some", "this", "that", "no", "one"]
    adj, noun, verb, iverb, adv = lexicon(40, "y"), lexicon(120, ""), lexicon(50, "s"), lexicon(20, "es"), lexicon(15, "ly")
    prep = ["near", "under", "behind", "beside", "across", "inside"]

    def pick(words: list[str]) -> str:
        p = 1.0 / np.arange(1, len(words) + 1)
        return words[rng.choice(len(words), p=p / p.sum())]

    def phrase() -> list[str]:
        out = [pick(det)] + [pick(adj) for _ in range(rng.choice(3, p=[0.5, 0.35, 0.15]))] + [pick(noun)]
        return out + [pick(prep), pick(det), pick(noun)] if rng.random() < 0.2 else out

    forms = [lambda: phrase() + [pick(iverb)], lambda: phrase() + [pick(verb)] + phrase(),
             lambda: phrase() + [pick(iverb), pick(adv)], lambda: [pick(adv)] + phrase() + [pick(verb)] + phrase(),
             lambda: phrase() + [pick(verb)] + phrase() + ["and"] + phrase() + [pick(iverb)]]
    sents = []
    for _ in range(num):
        s = forms[int(rng.integers(0, len(forms)))]()
        sents.append([pick(["yes", "well", "so", "then"])] + s if rng.random() < 0.1 else s)
    return sents


def full_distributions(lm: NgramLM, contexts: np.ndarray) -> np.ndarray:
    """p(w | context) for every context row and every vocabulary id: (num_contexts, V)."""
    V = lm.vocab_size
    rows = np.concatenate([np.repeat(contexts, V, 0), np.tile(np.arange(V), len(contexts))[:, None]], 1)
    return np.exp(lm.log_probs(rows)).reshape(len(contexts), V)


# ---------------------------------------------------------------------- normalization and positivity
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("smoothing", NORMALIZED)
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_distributions_sum_to_one_and_are_positive(smoothing, order, padding):
    rng = np.random.default_rng(order * 17 + len(smoothing))
    for trial, (num, vocab, min_count) in enumerate([(12, 5, 1), (60, 8, 2)]):
        lm = NgramLM(order, smoothing, padding=padding).fit(
            random_corpus(rng, num, vocab, zipf=trial == 1), min_count=min_count,
            vocabulary=None if trial else [f"w{i}" for i in range(vocab + 2)])
        V = lm.vocab_size
        seen = lm.ngram_rows(random_corpus(rng, 20, vocab))[:, :-1]  # contexts that occur (mostly seen)
        unseen = rng.integers(0, V, size=(40, order - 1))  # random, mostly unseen contexts
        for contexts in (seen[:40], unseen):
            p = full_distributions(lm, contexts)
            predicted = np.delete(p, BOS_ID, axis=1)
            np.testing.assert_allclose(predicted.sum(1), 1.0, atol=1e-9)
            assert predicted.min() > 0
            assert np.all(p[:, BOS_ID] == 0)


def test_katz_good_turing_branch_normalized():
    """Enough Zipfian data for valid Good-Turing ratios at the low orders."""
    rng = np.random.default_rng(3)
    lm = NgramLM(3, "katz").fit(random_corpus(rng, 3000, 40, max_len=12, zipf=True))
    contexts = np.concatenate([lm.ngram_rows(random_corpus(rng, 5, 40))[:, :-1], rng.integers(0, lm.vocab_size, (20, 2))])
    predicted = np.delete(full_distributions(lm, contexts), BOS_ID, axis=1)
    np.testing.assert_allclose(predicted.sum(1), 1.0, atol=1e-9)
    assert predicted.min() > 0


@pytest.mark.parametrize("order", [1, 3])
def test_kneser_ney_fixed_discount_normalized(order):
    rng = np.random.default_rng(8)
    lm = NgramLM(order, "kneser-ney", discount=0.75).fit(random_corpus(rng, 30))
    contexts = rng.integers(0, lm.vocab_size, size=(30, order - 1))
    predicted = np.delete(full_distributions(lm, contexts), BOS_ID, axis=1)
    np.testing.assert_allclose(predicted.sum(1), 1.0, atol=1e-9)
    assert predicted.min() > 0


def test_character_tokens():
    """Single-character tokens take the code-point path; non-BMP characters included."""
    lm = NgramLM(2, "mle").fit([list("ab\u00e9a"), list("\U0001f600a")])
    assert lm.vocab == ["<unk>", "<s>", "</s>", "a", "b", "\u00e9", "\U0001f600"]
    assert math.exp(lm.log_prob("b", ["a"])) == pytest.approx(1 / 3)
    assert math.exp(lm.log_prob("a", ["\U0001f600"])) == pytest.approx(1.0)
    assert lm.perplexity([list("ab"), list("zz")]).num_oov == 2
    with pytest.raises(InputError, match="whitespace"):
        NgramLM(2, "kneser-ney").fit([list("a b")]).to_arpa("unused.arpa")


def test_katz_warns_and_falls_back_on_tiny_data(caplog):
    caplog.set_level(logging.WARNING, logger="chainrule.lm.ngram")
    NgramLM(2, "katz").fit(TINY)
    assert "absolute discounting" in caplog.text


def test_kneser_ney_invalid_discounts_warn(caplog):
    caplog.set_level(logging.WARNING, logger="chainrule.lm.ngram")
    NgramLM(2, "kneser-ney").fit(TINY)
    assert "single discount" in caplog.text


def test_modified_kn_discounts_formula():
    lm = NgramLM(2, "kneser-ney")
    counts = np.array([1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [7])
    y = 10 / 20
    d1, d2, d3 = lm._kn_discounts(counts, 2, quiet=True)
    assert (d1, d2, d3) == pytest.approx((1 - 2 * y * 5 / 10, 2 - 3 * y * 3 / 5, 3 - 4 * y * 2 / 3))


# ---------------------------------------------------------------------- exact values on a tiny corpus
# TINY padded for a bigram model: "<s> a b </s>", "<s> a </s>"; vocabulary <unk> <s> </s> a b (|P| = 4)
# bigram counts: (<s> a)=2, (a b)=1, (a </s>)=1, (b </s>)=1; unigram counts a=2, b=1, </s>=2.
def test_laplace_and_lidstone_by_hand():
    lm = NgramLM(2, "laplace").fit(TINY)
    assert lm.vocab == ["<unk>", "<s>", "</s>", "a", "b"]
    assert math.exp(lm.log_prob("b", ["a"])) == pytest.approx((1 + 1) / (2 + 4))
    assert math.exp(lm.log_prob("a", ["a"])) == pytest.approx(1 / 6)
    assert math.exp(lm.log_prob("a", ["<s>"])) == pytest.approx(3 / 6)
    assert math.exp(lm.log_prob("a", ["</s>"])) == pytest.approx(1 / 4)  # unseen context: uniform
    assert math.exp(lm.log_prob("zzz", ["a"])) == pytest.approx(1 / 6)  # OOV -> <unk>
    nltk_like = NgramLM(2, "laplace", nltk_compatible=True).fit(TINY)
    assert math.exp(nltk_like.log_prob("b", ["a"])) == pytest.approx(2 / 7)  # NLTK's len(vocab) counts <s>
    lid = NgramLM(2, "lidstone", k=0.5).fit(TINY)
    assert math.exp(lid.log_prob("b", ["a"])) == pytest.approx(1.5 / (2 + 0.5 * 4))
    assert math.exp(lid.log_prob("<unk>", ["a"])) == pytest.approx(0.5 / 4)


def test_witten_bell_by_hand():
    lm = NgramLM(2, "witten-bell").fit(TINY)
    p1 = {w: (c + 3 * 0.25) / (5 + 3) for w, c in {"a": 2, "b": 1, "</s>": 2, "<unk>": 0}.items()}
    assert math.exp(lm.log_prob("b", [])) == pytest.approx(p1["b"])
    assert math.exp(lm.log_prob("b", ["a"])) == pytest.approx((1 + 2 * p1["b"]) / (2 + 2))
    assert math.exp(lm.log_prob("a", ["a"])) == pytest.approx(2 * p1["a"] / 4)
    assert math.exp(lm.log_prob("a", ["<s>"])) == pytest.approx((2 + 1 * p1["a"]) / (2 + 1))
    assert math.exp(lm.log_prob("<unk>", ["b"])) == pytest.approx(1 * p1["<unk>"] / 2)


def test_kneser_ney_by_hand():
    # top order: n1=3, n2=1, n3=0 -> invalid modified discounts -> D = 3/(3+2) = 0.6
    # unigram continuation counts N1+(. a)=1, N1+(. b)=1, N1+(. </s>)=2: n1=2, n2=1 -> D = 0.5
    lm = NgramLM(2, "kneser-ney").fit(TINY)
    gamma1 = 0.5 * 3 / 4
    p1 = {"a": 0.5 / 4 + gamma1 / 4, "b": 0.5 / 4 + gamma1 / 4, "</s>": 1.5 / 4 + gamma1 / 4, "<unk>": gamma1 / 4}
    for w, p in p1.items():
        assert math.exp(lm.log_prob(w, [])) == pytest.approx(p)
    assert math.exp(lm.log_prob("b", ["a"])) == pytest.approx((1 - 0.6) / 2 + 0.6 * 2 / 2 * p1["b"])
    assert math.exp(lm.log_prob("a", ["a"])) == pytest.approx(0.6 * p1["a"])
    assert math.exp(lm.log_prob("a", ["<s>"])) == pytest.approx((2 - 0.6) / 2 + 0.6 * 1 / 2 * p1["a"])
    assert math.exp(lm.log_prob("a", ["</s>"])) == pytest.approx(p1["a"])  # unseen context
    # NLTK's definition, discount 0.1: unigram level N1+(. w)/N1+(. .) with no uniform floor
    nl = NgramLM(2, "kneser-ney-nltk").fit(TINY)
    assert math.exp(nl.log_prob("b", ["a"])) == pytest.approx(0.9 / 2 + 0.1 * 2 / 2 * 0.25)
    assert nl.log_prob("<unk>", ["a"]) == -math.inf


def test_absolute_discounting_and_stupid_backoff_by_hand(tmp_path, capsys):
    """Default definitions (event counts, one <s>): absolute discounting interpolates down to the
    uniform 1/|P|; stupid backoff multiplies alpha per backed-off order, also for unseen contexts."""
    lm = NgramLM(2, "absolute-discounting", discount=0.5).fit(TINY)  # <s> a b </s>, <s> a </s>
    # unigrams over predicted tokens: a 2, b 1, </s> 2 (5 events, 3 types); |P| = 4 (<unk> a b </s>)
    p1 = {w: max(c - 0.5, 0) / 5 + 0.5 * 3 / 5 / 4 for w, c in {"a": 2, "b": 1, "</s>": 2, "<unk>": 0}.items()}
    assert sum(p1.values()) == pytest.approx(1.0)
    assert math.exp(lm.log_prob("b", ["a"])) == pytest.approx(0.5 / 2 + 0.5 * 2 / 2 * p1["b"])
    assert math.exp(lm.log_prob("a", ["b"])) == pytest.approx(0.5 * 1 / 1 * p1["a"])
    assert math.exp(lm.log_prob("b", ["<unk>"])) == pytest.approx(p1["b"])  # unseen context: defer
    with pytest.raises(InputError, match=r"\(0, 1\]"):
        NgramLM(2, "absolute-discounting", discount=1.5)
    sb = NgramLM(3, "stupid-backoff").fit(TINY)
    assert not sb.gives_probabilities and lm.gives_probabilities
    assert math.exp(sb.log_prob("b", ["<s>", "a"])) == pytest.approx(1 / 2)
    assert math.exp(sb.log_prob("b", ["b", "a"])) == pytest.approx(0.4 * 1 / 2)  # 'b a' unseen: 0.4 S(b | a)
    assert math.exp(sb.log_prob("a", ["a", "b"])) == pytest.approx(0.4 * 0.4 * 2 / 5)  # two back-offs to S(a)
    assert math.exp(sb.log_prob("a", ["a", "a"])) == pytest.approx(0.4 * 0.4 * 2 / 5)  # unseen contexts too
    assert math.exp(NgramLM(3, "stupid-backoff", alpha=0.1).fit(TINY).log_prob("a", ["a", "b"])) == pytest.approx(0.01 * 2 / 5)
    with pytest.raises(InputError, match="scores, not probabilities"):
        sb.perplexity(TINY)
    with pytest.raises(InputError, match="alpha"):
        NgramLM(3, "stupid-backoff", alpha=0)
    assert len(sb.generate(5, generator=torch.Generator().manual_seed(0))) == 5
    text = tmp_path / "t.txt"
    text.write_text("a b\na\n", encoding="utf-8")
    parser = _parser()
    assert _run(parser, ["ngram", "fit", str(text), "--smoothing", "stupid-backoff", "--alpha", "0.3",
                         "--out", str(tmp_path / "sb")]) == 0
    assert "scores, not probabilities" in capsys.readouterr().out
    assert NgramLM.load(tmp_path / "sb").options["alpha"] == 0.3
    with pytest.raises(InputError, match="no perplexity"):
        _run(parser, ["ngram", "eval", str(tmp_path / "sb"), str(text)])


def test_jelinek_mercer_and_mle_by_hand():
    lm = NgramLM(2, "jelinek-mercer", lambdas=[0.5, 0.3, 0.2]).fit(TINY)
    assert math.exp(lm.log_prob("b", ["a"])) == pytest.approx(0.5 * 1 / 2 + 0.3 * 1 / 5 + 0.2 / 4)
    # unseen context: that order is dropped and the remaining weights renormalized
    assert math.exp(lm.log_prob("b", ["</s>"])) == pytest.approx((0.3 * 1 / 5 + 0.2 / 4) / 0.5)
    mle = NgramLM(2, "mle").fit(TINY)
    assert math.exp(mle.log_prob("b", ["a"])) == pytest.approx(0.5)
    assert mle.log_prob("a", ["a"]) == -math.inf


# ---------------------------------------------------------------------- padding conventions
# TINY with SRILM padding, trigram: "<s> a b </s>", "<s> a </s>". Counted k-grams (those ending on a
# predicted token): trigrams <s> a b, a b </s>, <s> a </s> (1 each); bigrams <s> a (2), a b, a </s>,
# b </s> (1 each); unigrams a (2), b (1), </s> (2). NLTK padding adds <s> <s> a (2) and <s> <s>.
def test_srilm_padding_counts_by_hand():
    lm = NgramLM(3, "mle").fit(TINY)
    assert lm.padding == "srilm" and lm.vocab == ["<unk>", "<s>", "</s>", "a", "b"]
    words = np.array(lm.vocab)
    grams = {k: sorted(" ".join(words[r]) for r in lm._rows(k)[lm._counts["ev"][k - 1] > 0]) for k in (1, 2, 3)}
    assert grams == {1: ["</s>", "a", "b"], 2: ["<s> a", "a </s>", "a b", "b </s>"], 3: ["<s> a </s>", "<s> a b", "a b </s>"]}
    ev2 = {" ".join(words[r]): int(c) for r, c in zip(lm._rows(2), lm._counts["ev"][1]) if c}
    assert ev2 == {"<s> a": 2, "a b": 1, "a </s>": 1, "b </s>": 1}
    # the first word is predicted by the bigram <s> a, the second by the trigram <s> a b
    assert math.exp(lm.log_prob("a", ["<s>"])) == 1.0
    assert math.exp(lm.log_prob("b", ["<s>", "a"])) == pytest.approx(0.5)
    assert lm.sentence_log_prob(["a", "b"]) == pytest.approx(math.log(0.5))
    # anything before a <s> is ignored: <s> <s> a (NLTK's row) and x <s> a mean p(a | <s>)
    rows = np.array([[BOS_ID, BOS_ID, 3], [4, BOS_ID, 3], [3, BOS_ID, 4], [BOS_ID, 3, 4]])
    np.testing.assert_allclose(np.exp(lm.log_probs(rows)), [1.0, 1.0, 0.0, 0.5])
    assert lm.ngram_rows([["a", "b"]]).tolist() == [[BOS_ID, BOS_ID, 3], [BOS_ID, 3, 4], [3, 4, EOS_ID]]
    nl = NgramLM(3, "mle", padding="nltk").fit(TINY)
    ev3 = {" ".join(words[r]): int(c) for r, c in zip(nl._rows(3), nl._counts["ev"][2]) if c}
    # NLTK's pad_both_ends: n-1 </s> too, so </s> also follows </s>
    assert ev3 == {"<s> <s> a": 2, "<s> a b": 1, "<s> a </s>": 1, "a b </s>": 1, "a </s> </s>": 1, "b </s> </s>": 1}
    # ... but a sentence's score is p(w_1 .. w_L </s>), L + 1 events, in both conventions
    assert nl.ngram_rows([["a", "b"]]).tolist() == [[BOS_ID, BOS_ID, 3], [BOS_ID, 3, 4], [3, 4, EOS_ID]]
    assert nl.sentence_log_prob(["a", "b"]) == pytest.approx(math.log(0.5))


def test_srilm_kneser_ney_by_hand():
    """Lower-order n-grams that begin with <s> keep their raw counts (nothing precedes <s>), as in lmplz."""
    lm = NgramLM(3, "kneser-ney").fit(TINY)
    # unigrams: continuation counts a=1 (<s> a), b=1 (a b), </s>=2 (a </s>, b </s>); n1=2, n2=1 -> D=0.5
    gamma1 = 0.5 * 3 / 4
    p1 = {"a": 0.5 / 4 + gamma1 / 4, "b": 0.5 / 4 + gamma1 / 4, "</s>": 1.5 / 4 + gamma1 / 4, "<unk>": gamma1 / 4}
    # bigrams: <s> a raw 2; a b, a </s>, b </s> continuation 1 each; n1=3, n2=1, n3=0 -> D = 3/5
    p2_a_bos = (2 - 0.6) / 2 + 0.6 * 1 / 2 * p1["a"]
    p2_b_a = (1 - 0.6) / 2 + 0.6 * 2 / 2 * p1["b"]
    p2_eos_b = (1 - 0.6) / 1 + 0.6 * 1 / 1 * p1["</s>"]
    # trigrams: all seen once, n2 = 0 -> D = 0.5
    p3_b = 0.5 / 2 + 0.5 * 2 / 2 * p2_b_a
    p3_eos = 0.5 / 1 + 0.5 * 1 / 1 * p2_eos_b
    assert math.exp(lm.log_prob("a", ["<s>"])) == pytest.approx(p2_a_bos)
    assert math.exp(lm.log_prob("b", ["<s>", "a"])) == pytest.approx(p3_b)
    assert math.exp(lm.sentence_log_prob(["a", "b"])) == pytest.approx(p2_a_bos * p3_b * p3_eos)
    # with NLTK padding the first word comes from the trigram <s> <s> a (count 2, D = 0.5) and the
    # bigram <s> a has a continuation count of 1
    nl = NgramLM(3, "kneser-ney", padding="nltk").fit(TINY)
    assert math.exp(nl.sentence_log_prob(["a", "b"])) != pytest.approx(p2_a_bos * p3_b * p3_eos)


@pytest.mark.parametrize("padding", PADDINGS)
def test_padding_option_and_persistence(tmp_path, padding):
    rng = np.random.default_rng(9)
    train = random_corpus(rng, 40)
    lm = NgramLM(3, "kneser-ney", padding=padding).fit(train)
    assert lm.padding == padding and f"padding={padding!r}" in repr(lm)
    back = NgramLM.load(lm.save(tmp_path / "m"))
    assert back.padding == padding
    rows = lm.ngram_rows(random_corpus(rng, 10))
    np.testing.assert_array_equal(back.log_probs(rows), lm.log_probs(rows))
    assert NgramLM(2).padding == "srilm"  # the default for new models


def test_old_saved_model_loads_with_nltk_padding(tmp_path):
    """Models saved before the padding option (format 1, no "padding" field) were NLTK-padded."""
    rng = np.random.default_rng(10)
    train, test = random_corpus(rng, 40), random_corpus(rng, 10)
    lm = NgramLM(3, "witten-bell", padding="nltk").fit(train)
    lm.save(tmp_path / "old")
    cfg_path = tmp_path / "old" / "ngram.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["format"] == "chainrule-ngram-3" and cfg["padding"] == "nltk"
    del cfg["padding"]
    cfg["format"] = "chainrule-ngram-1"
    cfg_path.write_text(json.dumps(cfg))
    old = NgramLM.load(tmp_path / "old")
    assert old.padding == "nltk"
    np.testing.assert_array_equal(old.sentence_log_probs(test), lm.sentence_log_probs(test))
    cfg["padding"] = "bogus"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="unknown padding"):
        NgramLM.load(tmp_path / "old")


# ---------------------------------------------------------------------- scoring API
def test_sentence_scores_and_perplexity():
    rng = np.random.default_rng(5)
    train, test = random_corpus(rng, 50), random_corpus(rng, 10) + [["w1", "never-seen"]]
    lm = NgramLM(3, "kneser-ney").fit(train)
    rows = lm.ngram_rows(test)
    lp = lm.log_probs(rows)
    assert sum(lm.sentence_log_prob(s) for s in test) == pytest.approx(lp.sum())
    np.testing.assert_allclose(lm.sentence_log_probs(test), [lm.sentence_log_prob(s) for s in test])
    res = lm.perplexity(test)
    assert isinstance(res, PerplexityResult)
    assert res.num_tokens == sum(len(s) + 1 for s in test) == rows.shape[0]
    assert res.num_oov == 1 and res.num_sentences == len(test) and res.vocab_size == lm.vocab_size
    assert res.cross_entropy_nats_per_token == pytest.approx(-lp.mean())
    assert res.perplexity == pytest.approx(math.exp(-lp.mean()))
    # single-query API agrees with the batch one; with SRILM padding one <s> is the sentence start
    s = test[0]
    padded = ["<s>", "<s>"] + s + ["</s>"]
    assert sum(lm.log_prob(padded[i], padded[i - 2:i]) for i in range(2, len(padded))) == pytest.approx(lm.sentence_log_prob(s))
    one = ["<s>"] + s + ["</s>"]
    assert sum(lm.log_prob(one[i], one[max(0, i - 2):i]) for i in range(1, len(one))) == pytest.approx(lm.sentence_log_prob(s))
    nl = NgramLM(3, "kneser-ney", padding="nltk").fit(train)
    assert sum(nl.log_prob(padded[i], padded[i - 2:i]) for i in range(2, len(padded))) == pytest.approx(nl.sentence_log_prob(s))
    assert nl.perplexity(test).num_tokens == res.num_tokens  # </s> counted, <s> never, in both conventions


def test_key_index_equals_binary_search():
    """The O(1) table index gives what a binary search gives, for dense and sparse keys, absent
    queries, long probe chains (keys that share their hash slot) and an empty table."""
    from chainrule.lm.ngram import _KeyIndex, _lookup

    rng = np.random.default_rng(0)
    dense = np.unique(rng.integers(0, 3000, 1000))
    sparse = np.unique(rng.integers(0, 1 << 50, 20000))
    index = _KeyIndex(sparse)
    clustered = np.unique(np.concatenate([sparse[:50], (np.arange(300) << 44) + 7]))  # many keys, few slots' worth of hash bits
    for keys in (dense, sparse, clustered, np.zeros(0, dtype=np.int64)):
        idx = _KeyIndex(keys)
        assert (idx.lut is not None) == (keys is dense or keys.size == 0)
        queries = np.concatenate([keys, rng.integers(0, 1 << 51, 5000), keys[::7] + 1, [0, 1 << 62]]).astype(np.int64)
        np.testing.assert_array_equal(idx.find(queries), _lookup(keys, queries))
        np.testing.assert_array_equal(idx.find(queries.reshape(-1, 1)).reshape(-1), _lookup(keys, queries))
    assert index.slot_keys.size >= 2 * sparse.size  # load <= 1/2


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("smoothing", sorted(SMOOTHERS))
def test_sentence_scoring_equals_scoring_the_rows(smoothing, padding, tmp_path):
    """Sentences are scored on their padded stream (each j-gram looked up once); the numbers are
    those of scoring the n-gram rows one by one, for every smoother, padding and order (and for a
    model read back from ARPA)."""
    rng = np.random.default_rng(3)
    train, test = random_corpus(rng, 60, vocab=8), random_corpus(rng, 15, vocab=9) + [[], ["w1"]]
    for order in (1, 2, 3, 5):
        try:
            lm = NgramLM(order, smoothing, padding=padding).fit(train)
        except InputError:
            continue  # a smoother/padding/order combination that does not exist
        models = [lm]
        if smoothing in ARPA and order > 1:
            models.append(NgramLM.from_arpa(lm.to_arpa(tmp_path / f"{smoothing}{order}.arpa"), padding=padding))
        for m in models:
            rows = m.ngram_rows(test)
            per_row = m.log_probs(rows)
            sizes = [len(s) + 1 for s in test]
            expected = np.array([per_row[a:a + k].sum() for a, k in zip(np.cumsum([0] + sizes[:-1]), sizes)])
            got = m.sentence_log_probs(test)
            fin = np.isfinite(expected)
            np.testing.assert_array_equal(np.isfinite(got), fin)
            np.testing.assert_allclose(got[fin], expected[fin], rtol=1e-12, atol=1e-12)
            if not m.gives_probabilities:
                continue  # stupid backoff: scores, no perplexity (refused, tested elsewhere)
            ppl = m.perplexity(test)
            assert ppl.num_tokens == rows.shape[0]
            if fin.all():
                assert ppl.cross_entropy_nats_per_token == pytest.approx(-per_row.mean(), rel=1e-12)


def _per_sentence_reference(m: NgramLM, sents: list[list[str]]) -> np.ndarray:
    """Each sentence scored alone through the plain per-row path (``log_probs`` of its n-gram rows)."""
    return np.array([m.log_probs(m.ngram_rows([s])).sum() for s in sents])


def _assert_same_scores(got: np.ndarray, expected: np.ndarray) -> None:
    fin = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(got), fin)
    np.testing.assert_array_equal(got[~fin], expected[~fin])
    np.testing.assert_allclose(got[fin], expected[fin], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("smoothing", sorted(SMOOTHERS))
def test_stream_scoring_equals_per_sentence_rows_on_random_corpora(smoothing, padding, tmp_path):
    """The corpus-at-once stream path (hash-and-displace tables, branch-free levels, the sparse
    high orders) gives, to 1e-12, what scoring each sentence alone row by row gives: random corpora,
    orders 1-5, every smoother, both paddings, OOV words, empty sentences, a given vocabulary (so
    that some unigrams are not in the table), single-character tokens, and models read from ARPA."""
    rng = np.random.default_rng(11)
    for order in (1, 2, 3, 4, 5):
        vocab = int(rng.integers(4, 30))
        train = random_corpus(rng, int(rng.integers(20, 120)), vocab=vocab, max_len=12, zipf=bool(rng.integers(2)))
        test = random_corpus(rng, 25, vocab=vocab + 3, max_len=14) + [[], ["w0"], ["w0"] * 9]
        given = [f"w{i}" for i in range(vocab + 2)]  # two words never seen in training
        try:
            models = [NgramLM(order, smoothing, padding=padding).fit(train),
                      NgramLM(order, smoothing, padding=padding).fit(train, vocabulary=given)]
        except InputError:
            continue  # a smoother/padding/order combination that does not exist
        if smoothing in ARPA and order > 1:
            models.append(NgramLM.from_arpa(models[0].to_arpa(tmp_path / f"{smoothing}{order}.arpa")))
        cases = [(m, test) for m in models]
        try:  # single characters (scored through their code points), with one never seen
            chars = NgramLM(order, smoothing, padding=padding).fit([list("".join(s)) for s in train[:60]])
            cases.append((chars, [list("".join(s)) + ["é"] for s in test]))
        except InputError:
            pass
        for m, sents in cases:
            _assert_same_scores(m.sentence_log_probs(sents), _per_sentence_reference(m, sents))
            assert m.sentence_log_prob(sents[0]) == pytest.approx(_per_sentence_reference(m, sents[:1])[0], abs=1e-12)


def test_stream_scoring_sparse_orders_and_arpa_without_prefixes(tmp_path):
    """The high orders computed on the positions whose suffix is present only (a 5-gram model on
    unseen text), and an ARPA file that lists a trigram whose bigram prefix it does not list (not
    prefix-closed: every position is computed), agree with the per-row path."""
    from chainrule.lm.ngram import _StreamTables

    train, test = toy_english(400, 0), toy_english(60, 1) + [["qwerty", "the"], []]
    lm = NgramLM(5, "kneser-ney").fit(train)
    tables = lm._stream_tables()
    assert all(tables.closed)
    _assert_same_scores(lm.sentence_log_probs(test), _per_sentence_reference(lm, test))
    old = _StreamTables.SPARSE
    try:
        for share in (0.0, 1.1):  # never / always sparse (where allowed): the same numbers
            _StreamTables.SPARSE = share
            _assert_same_scores(lm.sentence_log_probs(test), _per_sentence_reference(lm, test))
    finally:
        _StreamTables.SPARSE = old
    arpa = ("\\data\\\nngram 1=5\nngram 2=2\nngram 3=1\n\n\\1-grams:\n-1.0\t<s>\t-0.5\n-0.5\ta\t-0.25\n"
            "-0.7\tb\t-0.3\n-0.9\tc\n-0.6\t</s>\n\n\\2-grams:\n-0.1\t<s> a\t-0.2\n-0.2\tb c\n\n"
            "\\3-grams:\n-0.05\ta b c\n\n\\end\\\n")
    (tmp_path / "open.arpa").write_text(arpa)
    m = NgramLM.from_arpa(tmp_path / "open.arpa")
    assert m._stream_tables().closed == [True, True, False]  # "a b c" is listed, "a b" is not
    sents = [["a", "b", "c"], ["a", "b", "c", "a", "b", "c"], ["c", "b"], ["a"], []]
    _assert_same_scores(m.sentence_log_probs(sents), _per_sentence_reference(m, sents))
    # <s> a | a b: bow(<s> a) bow(a) p(b) | a b c: listed, though "a b" is not | c </s>: p(</s>)
    assert m.sentence_log_prob(["a", "b", "c"]) / math.log(10) == pytest.approx(-0.1 + (-0.2 - 0.25 - 0.7) - 0.05 - 0.6)


def test_token_cache_learns_new_words_and_still_refuses_bad_tokens():
    """Scoring maps tokens through a cache of the vocabulary and the unseen words met before: new
    words on a later call, a non-string token after the cache is warm, a refit vocabulary, str
    subclasses and a cache that outgrows its bound all give what the plain mapping gives."""
    rng = np.random.default_rng(4)
    train = random_corpus(rng, 60, vocab=8)
    lm = NgramLM(3, "kneser-ney").fit(train)
    first = [["w1", "new1", "w2"], ["new2"]]
    second = [["new3", "w1", "new1"], ["w7", "new4", "new4"]]
    for sents in (first, second, first):
        _assert_same_scores(lm.sentence_log_probs(sents), _per_sentence_reference(lm, sents))
        assert lm.perplexity(sents).num_oov == sum(t.startswith("new") for s in sents for t in s)
    assert lm.sentence_log_prob([np.str_("w1"), "new1"]) == lm.sentence_log_prob(["w1", "new9"])
    starts_short = [["a", "w1", "w2"], ["w3", "b"], [""], ["", "w1"]]  # a one-character first word: not a character corpus
    _assert_same_scores(lm.sentence_log_probs(starts_short), _per_sentence_reference(lm, starts_short))
    chars = NgramLM(3, "witten-bell").fit([list("".join(s)) for s in train])
    mixed = [list("w1w2"), ["w", "1x", "2"], ["w", ""], list("w\ud800")]  # not all single characters; a lone surrogate
    _assert_same_scores(chars.sentence_log_probs(mixed), _per_sentence_reference(chars, mixed))
    with pytest.raises(InputError, match="must be strings, found int"):
        lm.sentence_log_probs([["w1", "new1"], ["w2", 3]])
    with pytest.raises(InputError, match="must be strings, found list"):
        lm.sentence_log_probs([["w1", ["w2"]]])
    with pytest.raises(InputError, match="reserved"):
        lm.sentence_log_probs([["w1", "</s>", "w2"]])
    old = NgramLM._OOV_CACHE
    try:
        NgramLM._OOV_CACHE = 5
        many = [[f"x{i}" for i in range(j, j + 4)] + ["w1"] for j in range(0, 40, 4)]
        for s in many:
            lm.sentence_log_probs([s])
        assert len(lm._token_cache[1]) <= lm.vocab_size + 5
        _assert_same_scores(lm.sentence_log_probs(many), _per_sentence_reference(lm, many))
    finally:
        NgramLM._OOV_CACHE = old
    lm.fit([s + ["new1"] for s in train])  # "new1" is a word now
    assert lm.token_id("new1") != UNK_ID
    _assert_same_scores(lm.sentence_log_probs(first), _per_sentence_reference(lm, first))


def test_displace_hash_finds_every_key_in_one_probe():
    """Every key gets a slot of its own; a query finds its key's slot, and -1 where absent, for
    dense, sparse and clustered keys, a single key and none."""
    from chainrule.lm.ngram import _DisplaceHash, _lookup

    rng = np.random.default_rng(1)
    sparse = np.unique(rng.integers(2, 1 << 50, 30000))
    clustered = np.unique(np.concatenate([sparse[:50], (np.arange(3000) << 44) + 7, np.arange(2, 5000)]))
    for keys in (sparse, clustered, np.array([5], dtype=np.int64), np.zeros(0, dtype=np.int64)):
        table = _DisplaceHash(keys)
        assert np.unique(table.slots).size == keys.size and np.all(table.slot_keys[table.slots] == keys)
        assert keys.size <= 0.7 * table.size or keys.size < 4
        queries = np.concatenate([keys, rng.integers(0, 1 << 51, 5000), keys[::7] + 1, [0, 1, 1 << 62]]).astype(np.int64)
        found = table.find(queries)
        pos = _lookup(keys, queries)
        np.testing.assert_array_equal(found >= 0, pos >= 0)
        np.testing.assert_array_equal(found[pos >= 0], table.slots[pos[pos >= 0]])


def test_mle_zero_probability_gives_inf_with_warning(caplog):
    caplog.set_level(logging.WARNING, logger="chainrule.lm.ngram")
    lm = NgramLM(2, "mle").fit([["a", "b"], ["b", "a"]])
    assert lm.perplexity([["a", "b"]]).perplexity < math.inf
    res = lm.perplexity([["b", "b"]])
    assert res.perplexity == math.inf
    assert "kneser-ney" in caplog.text


@pytest.mark.parametrize("smoothing", [s for s in SMOOTHERS if s not in ("mle", "kneser-ney-nltk", "stupid-backoff")])
def test_unseen_words_give_finite_perplexity(smoothing):
    rng = np.random.default_rng(7)
    lm = NgramLM(3, smoothing).fit(random_corpus(rng, 40), min_count=2)  # <unk> never seen in training
    res = lm.perplexity([["qq", "rr"], ["ss"]])
    assert math.isfinite(res.perplexity) and res.num_oov == 3
    # NLTK's definitions give 0 to a token never seen in training
    assert NgramLM(3, "kneser-ney-nltk").fit(random_corpus(rng, 40), min_count=2).perplexity([["qq"]]).perplexity == math.inf


def test_generate():
    rng = np.random.default_rng(11)
    lm = NgramLM(3, "kneser-ney").fit(random_corpus(rng, 100))
    g = torch.Generator().manual_seed(0)
    sent = lm.generate(generator=g)
    assert all(t in lm.vocab and t not in ("<s>", "</s>") for t in sent)
    toks = lm.generate(25, prompt=["w1"], generator=torch.Generator().manual_seed(1))
    assert len(toks) == 25 and "<s>" not in toks
    again = lm.generate(25, prompt=["w1"], generator=torch.Generator().manual_seed(1))
    assert toks == again
    greedy = lm.generate(5, prompt=["w1"], temperature=0)
    best = lm.vocab[int(np.argmax(lm.next_log_probs(["<s>", "w1"])))]
    assert greedy[0] == best
    assert len(lm.generate(10, top_k=1, top_p=0.5)) == 10
    # MLE in an unseen context backs off to a shorter context instead of failing
    mle = NgramLM(3, "mle").fit([["a", "b", "c"]])
    assert len(mle.generate(4, prompt=["c", "a"])) == 4


# ---------------------------------------------------------------------- NLTK agreement
def _nltk_models(order: int, train: list[list[str]], min_count: int):
    pytest.importorskip("nltk")
    from nltk.lm import (MLE, AbsoluteDiscountingInterpolated, KneserNeyInterpolated, Laplace, Lidstone, StupidBackoff,
                         Vocabulary, WittenBellInterpolated)
    from nltk.util import everygrams

    from nltk.lm.preprocessing import pad_both_ends

    def pad(s):
        return list(pad_both_ends(s, order)) if order > 1 else list(s) + ["</s>"]  # our unigram keeps one </s>

    vocab = Vocabulary([t for s in train for t in pad(s)], unk_cutoff=min_count)

    def fit(model):
        model.fit([list(everygrams(vocab.lookup(pad(s)), max_len=order)) for s in train])
        return model

    models = {
        ("mle", ()): fit(MLE(order, vocabulary=vocab)),
        ("laplace", (("nltk_compatible", True),)): fit(Laplace(order, vocabulary=vocab)),
        ("lidstone", (("k", 0.1), ("nltk_compatible", True))): fit(Lidstone(0.1, order, vocabulary=vocab)),
        ("witten-bell", (("nltk_compatible", True),)): fit(WittenBellInterpolated(order, vocabulary=vocab)),
        ("absolute-discounting", (("nltk_compatible", True),)): fit(AbsoluteDiscountingInterpolated(order, vocabulary=vocab)),
        ("absolute-discounting", (("discount", 0.3), ("nltk_compatible", True))):
            fit(AbsoluteDiscountingInterpolated(order, discount=0.3, vocabulary=vocab)),
        ("stupid-backoff", (("nltk_compatible", True),)): fit(StupidBackoff(order=order, vocabulary=vocab)),
        ("stupid-backoff", (("alpha", 0.7), ("nltk_compatible", True))): fit(StupidBackoff(0.7, order=order, vocabulary=vocab)),
    }
    if order > 1:
        models[("kneser-ney-nltk", ())] = fit(KneserNeyInterpolated(order, vocabulary=vocab))
        models[("kneser-ney-nltk", (("discount", 0.75),))] = fit(KneserNeyInterpolated(order, discount=0.75, vocabulary=vocab))
    return models


@pytest.mark.parametrize("order", [1, 2, 3])
def test_agrees_with_nltk(order):
    rng = np.random.default_rng(order)
    train = random_corpus(rng, 40, vocab=7, zipf=True)
    test = random_corpus(rng, 8, vocab=9)  # words w7, w8 are OOV
    for (smoothing, opts), ref in _nltk_models(order, train, min_count=2).items():
        lm = NgramLM(order, smoothing, padding="nltk", **dict(opts)).fit(train, min_count=2)
        rows = lm.ngram_rows(test)
        # also random (often unseen) contexts over the whole vocabulary
        ctx = rng.integers(0, lm.vocab_size, size=(6, order - 1))
        rows = np.concatenate([rows, np.concatenate([np.repeat(ctx, lm.vocab_size, 0),
                                                     np.tile(np.arange(lm.vocab_size), 6)[:, None]], 1)])
        if order == 1:  # NLTK's unigram vocabulary has no <s> (it would score it as <UNK>)
            rows = rows[rows[:, -1] != BOS_ID]
        words = np.array(lm.vocab, dtype=object)
        expected = np.array([ref.score(words[r[-1]], tuple(words[r[:-1]])) for r in rows])
        np.testing.assert_allclose(np.exp(lm.log_probs(rows)), expected, rtol=1e-12, atol=1e-15,
                                   err_msg=f"{smoothing} {opts} order {order}")


# ---------------------------------------------------------------------- ARPA
def sentence_like(rows: np.ndarray) -> np.ndarray:
    """Rows that can occur in a padded sentence: <s> only as a leading run of the context, never predicted."""
    ctx = rows[:, :-1] == BOS_ID
    inner = (ctx[:, 1:] & ~ctx[:, :-1]).any(1) if ctx.shape[1] > 1 else np.zeros(len(rows), dtype=bool)
    return (rows[:, -1] != BOS_ID) & ~inner


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("smoothing", ARPA)
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_arpa_round_trip(tmp_path, smoothing, order, padding):
    if smoothing == "kneser-ney-nltk" and order == 1:
        pytest.skip("NLTK's KN needs order >= 2")
    rng = np.random.default_rng(order)
    lm = NgramLM(order, smoothing, padding=padding).fit(random_corpus(rng, 80, vocab=8, zipf=True), min_count=2)
    path = lm.to_arpa(tmp_path / "model.arpa")
    back = NgramLM.from_arpa(path)
    assert back.order == order and set(back.vocab) == set(lm.vocab)
    assert back.padding == "srilm"  # NLTK-padded models are written in the SRILM/KenLM convention too
    assert not any(" <s>" in line.split("\t")[1] for line in path.read_text().splitlines() if line.count("\t") >= 1)
    ctx = rng.integers(0, lm.vocab_size, size=(15, order - 1))
    rows = np.concatenate([np.repeat(ctx, lm.vocab_size, 0), np.tile(np.arange(lm.vocab_size), 15)[:, None]], 1)
    if padding == "nltk":  # the file describes the model on sentences only (see NgramLM.to_arpa)
        rows = rows[sentence_like(rows)]
    rows = np.concatenate([rows, lm.ngram_rows(random_corpus(rng, 10, vocab=8))])
    words = np.array(lm.vocab)
    back_rows = np.vectorize(back.token_id)(words[rows])
    a, b = lm.log_probs(rows), back.log_probs(back_rows)
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    fin = np.isfinite(a)
    np.testing.assert_allclose(b[fin], a[fin], rtol=1e-5, atol=1e-6)
    # writing the ARPA model again gives the same file
    back.to_arpa(tmp_path / "again.arpa")
    again = NgramLM.from_arpa(tmp_path / "again.arpa")
    np.testing.assert_allclose(again.log_probs(back_rows)[fin], b[fin], rtol=1e-6)


def _kenlm_texts(tmp_path) -> tuple[list[list[str]], list[list[str]]]:
    """A training and a test text written into tmp_path and read back; the test text has unseen words."""
    train = tmp_path / "train.txt"
    train.write_text("\n".join(" ".join(s) for s in toy_english(300, 0)) + "\n", encoding="utf-8")
    test = tmp_path / "test.txt"
    extra = [["the", "zebra", "sleeps"], ["qwerty"], ["a", "purple", "ka", "under", "the", "moon", "waits"]]
    test.write_text("\n".join(" ".join(s) for s in toy_english(40, 1) + extra) + "\n", encoding="utf-8")
    return read_text_sentences(train), read_text_sentences(test)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("smoothing", ["kneser-ney", "katz", "witten-bell", "jelinek-mercer", "kneser-ney-nltk"])
@pytest.mark.parametrize("order", [2, 3, 4])
def test_arpa_scores_equal_kenlm(tmp_path, order, smoothing, padding):
    """KenLM's ordinary call score(s, bos=True, eos=True) on the exported file gives chainrule's
    per-sentence log10 probabilities and perplexities (min_count 1: unseen test words are <unk> with
    its interpolated mass; min_count 2: <unk> is also a training token). NLTK's KN gives words
    without continuation count probability 0, written as log10 -99."""
    kenlm = pytest.importorskip("kenlm")
    train, test = _kenlm_texts(tmp_path)
    num_tokens = sum(len(s) + 1 for s in test)
    for min_count in (1, 2):
        lm = NgramLM(order, smoothing, padding=padding).fit(train, min_count=min_count)
        km = kenlm.Model(str(lm.to_arpa(tmp_path / f"m{min_count}.arpa")))
        theirs = np.array([km.score(" ".join(s), bos=True, eos=True) for s in test])
        ours = lm.sentence_log_probs(test) / math.log(10)
        fin = np.isfinite(ours)
        assert fin.all() or (smoothing == "kneser-ney-nltk" and (theirs[~fin] <= -99).all())
        np.testing.assert_allclose(theirs[fin], ours[fin], rtol=0, atol=1e-5, err_msg=f"min_count {min_count}")
        res = lm.perplexity(test)
        assert res.num_tokens == num_tokens
        if fin.all():
            assert 10 ** (-theirs.sum() / num_tokens) == pytest.approx(res.perplexity, rel=1e-5)
        i = int(np.flatnonzero(fin)[-1])  # KenLM's per-sentence perplexity: </s> counted, <s> not
        assert km.perplexity(" ".join(test[i])) == pytest.approx(10 ** (-ours[i] / (len(test[i]) + 1)), rel=1e-5)


def test_arpa_nltk_padding_is_written_collapsed(tmp_path):
    """An NLTK-padded model's sentence starts <s>^j u w are written as <s> u w with the full-order
    probability and bow(<s> u) = prod_j gamma(<s>^j u); scoring the file with one <s> reproduces the model."""
    rng = np.random.default_rng(21)
    train, test = random_corpus(rng, 60, vocab=7, zipf=True), random_corpus(rng, 15, vocab=9)
    for smoothing in ARPA:
        lm = NgramLM(4, smoothing, padding="nltk").fit(train)
        back = NgramLM.from_arpa(lm.to_arpa(tmp_path / "n.arpa"))
        np.testing.assert_allclose(back.sentence_log_probs(test), lm.sentence_log_probs(test), rtol=1e-5, atol=1e-5,
                                   err_msg=smoothing)
        assert math.exp(back.log_prob("w0", ["<s>"])) == pytest.approx(math.exp(lm.log_prob("w0", ["<s>"] * 3)), rel=1e-5)


def test_from_arpa_infers_padding(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="chainrule.lm.ngram")
    arpa = ("\\data\\\nngram 1=4\nngram 2=2\nngram 3=1\n\n\\1-grams:\n-99\t<s>\t-0.5\n-0.5\ta\t-0.25\n-0.7\t</s>\n-1\t<unk>\n\n"
            "\\2-grams:\n-0.1\t<s> a\t-0.1\n-0.2\t<s> <s>\t-0.3\n\n\\3-grams:\n-0.05\t<s> <s> a\n\n\\end\\\n")
    (tmp_path / "old.arpa").write_text(arpa)
    old = NgramLM.from_arpa(tmp_path / "old.arpa")
    assert old.padding == "nltk" and "padding='nltk'" in caplog.text
    # p(a | <s> <s>), then p(</s> | <s> a) = bow(<s> a) bow(a) p(</s>)
    assert old.sentence_log_prob(["a"]) / math.log(10) == pytest.approx(-0.05 + (-0.1 - 0.25 - 0.7))
    srilm = NgramLM.from_arpa(tmp_path / "old.arpa", padding="srilm")  # as KenLM scores it: p(a | <s>) first
    assert srilm.sentence_log_prob(["a"]) / math.log(10) == pytest.approx(-0.1 + (-0.1 - 0.25 - 0.7))
    assert NgramLM.from_arpa(NgramLM(3).fit(TINY).to_arpa(tmp_path / "new.arpa")).padding == "srilm"


def test_arpa_format_and_errors(tmp_path):
    lm = NgramLM(2, "kneser-ney").fit([["a", "b"], ["b", "a", "a"]])
    text = lm.to_arpa(tmp_path / "m.arpa").read_text()
    assert text.startswith("\\data\\\nngram 1=5\nngram 2=") and text.rstrip().endswith("\\end\\")
    assert "\\1-grams:" in text and "\\2-grams:" in text and "-99\t<s>" in text
    with pytest.raises(InputError, match="not a backoff model"):
        NgramLM(2, "laplace").fit(TINY).to_arpa(tmp_path / "x.arpa")
    good = text.split("\n")
    bad_cases = {
        "bad_number": [ln.replace("\ta b", "\ta b\tx") if "\ta b" in ln else ln for ln in good],
        "bad_fields": [ln + " c d" if ln.endswith("\ta b") else ln for ln in good],
        "unknown_word": [ln.replace("\ta b", "\ta zz") for ln in good],
        "no_end": [ln for ln in good if ln != "\\end\\"],
        "count": [ln.replace("ngram 1=5", "ngram 1=6") for ln in good],
    }
    for name, lines in bad_cases.items():
        p = tmp_path / f"{name}.arpa"
        p.write_text("\n".join(lines))
        with pytest.raises(DataError, match=r"\.arpa:\d+:"):
            NgramLM.from_arpa(p)
    (tmp_path / "junk.arpa").write_text("hello\n")
    with pytest.raises(DataError, match=":1:"):
        NgramLM.from_arpa(tmp_path / "junk.arpa")


def test_arpa_backoff_semantics(tmp_path):
    arpa = ("\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n-1.0\t<s>\t-0.5\n-0.5\ta\t-0.25\n-0.7\tb\n-99\t</s>\n\n"
            "\\2-grams:\n-0.1\t<s> a\n-0.2\ta b\n\n\\end\\\n")
    (tmp_path / "h.arpa").write_text(arpa)
    lm = NgramLM.from_arpa(tmp_path / "h.arpa")
    assert lm.log_prob("a", ["<s>"]) / math.log(10) == pytest.approx(-0.1)
    assert lm.log_prob("b", ["<s>"]) / math.log(10) == pytest.approx(-0.5 - 0.7)
    assert lm.log_prob("b", ["b"]) / math.log(10) == pytest.approx(-0.7)  # context without backoff weight
    assert lm.log_prob("</s>", ["a"]) == -math.inf
    assert lm.log_prob("zzz", ["a"]) == -math.inf  # no <unk> in the file


# ---------------------------------------------------------------------- persistence
@pytest.mark.parametrize("smoothing", ["kneser-ney", "katz", "lidstone", "witten-bell"])
def test_save_load(tmp_path, smoothing):
    rng = np.random.default_rng(2)
    lm = NgramLM(3, smoothing).fit(random_corpus(rng, 50), min_count=2)
    lm.save(tmp_path / "m")
    back = NgramLM.load(tmp_path / "m")
    assert back.vocab == lm.vocab and back.options == lm.options and back.smoothing == smoothing
    rows = lm.ngram_rows(random_corpus(rng, 10))
    np.testing.assert_array_equal(back.log_probs(rows), lm.log_probs(rows))
    with np.load(tmp_path / "m" / "ngram.npz", allow_pickle=False) as data:
        assert all(np.issubdtype(data[k].dtype, np.integer) for k in data.files)
    # ARPA-read models save too
    arpa = NgramLM.from_arpa(NgramLM(2, "kneser-ney").fit(TINY).to_arpa(tmp_path / "t.arpa"))
    arpa.save(tmp_path / "a")
    again = NgramLM.load(tmp_path / "a")
    r = arpa.ngram_rows(TINY)
    np.testing.assert_array_equal(again.log_probs(r), arpa.log_probs(r))
    with pytest.raises(DataError, match="not a saved n-gram model"):
        NgramLM.load(tmp_path / "nothing")


# ---------------------------------------------------------------------- bad input
def test_bad_input():
    with pytest.raises(InputError, match="order"):
        NgramLM(0)
    with pytest.raises(InputError, match="order"):
        NgramLM("3")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="kneser-ney, kneser-ney-nltk"):
        NgramLM(2, "good-turing")
    with pytest.raises(InputError, match="k > 0"):
        NgramLM(2, "lidstone", k=0)
    with pytest.raises(InputError, match="lidstone"):
        NgramLM(2, "laplace", k=2)
    with pytest.raises(InputError, match="needs 3 lambdas"):
        NgramLM(2, "jelinek-mercer", lambdas=[0.5, 0.5])
    with pytest.raises(InputError, match="sum to 1"):
        NgramLM(2, "jelinek-mercer", lambdas=[0.5, 0.5, 0.5])
    with pytest.raises(InputError, match="uniform"):
        NgramLM(2, "jelinek-mercer", lambdas=[0.5, 0.5, 0.0])
    with pytest.raises(InputError, match="unknown option"):
        NgramLM(2, "witten-bell", k=1)
    lm = NgramLM(2)
    with pytest.raises(InputError, match="not fitted"):
        lm.log_prob("a", ["b"])
    with pytest.raises(InputError, match="not fitted"):
        lm.perplexity([["a"]])
    with pytest.raises(DataError, match="empty"):
        lm.fit([])
    with pytest.raises(InputError, match="string"):
        lm.fit(["a b c"])
    with pytest.raises(InputError, match="strings"):
        lm.fit([["a", 3]])
    with pytest.raises(InputError, match="min_count"):
        lm.fit(TINY, min_count=0)
    with pytest.raises(InputError, match="reserved"):
        lm.fit([["a", "<s>"]])
    lm.fit(TINY)
    with pytest.raises(InputError, match="token ids"):
        lm.log_probs(np.array([[0, 99]]))
    with pytest.raises(InputError, match="0 sentences"):
        lm.perplexity([])


def test_non_utf8_file(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\u00e9 ok\n".encode("latin-1"))
    with pytest.raises(DataError, match="byte offset 3"):
        read_text_sentences(p)


# ---------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chainrule")
    register_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(tmp_path, capsys):
    rng = np.random.default_rng(4)
    text = tmp_path / "train.txt"
    text.write_text("\n".join(" ".join(s).upper() for s in random_corpus(rng, 60)) + "\n\n", encoding="utf-8")
    test = tmp_path / "test.txt"
    test.write_text("W1 W2 W3\nW0 unknownword\n", encoding="utf-8")
    parser = _parser()
    model_dir = tmp_path / "model"
    assert _run(parser, ["ngram", "fit", str(text), "--order", "3", "--smoothing", "kneser-ney", "--min-count", "2",
                         "--lowercase", "--out", str(model_dir)]) == 0
    assert _run(parser, ["ngram", "eval", str(model_dir), str(test)]) == 0
    out = capsys.readouterr().out
    assert "perplexity:" in out and "cross-entropy:" in out and "OOV tokens: 1" in out and "tokens: 7" in out
    lm = NgramLM.load(model_dir)
    assert lm.metadata["lowercase"] is True and lm.padding == "srilm" and "padding: srilm" in out
    expected = lm.perplexity([["w1", "w2", "w3"], ["w0", "unknownword"]]).perplexity
    assert f"perplexity: {expected:.4f}" in out
    assert _run(parser, ["ngram", "generate", str(model_dir), "--prompt", "W1", "--num-tokens", "6", "--seed", "3",
                         "--temperature", "0.8", "--top-k", "5", "--top-p", "0.9"]) == 0
    gen = capsys.readouterr().out.split()
    assert gen[0] == "w1" and len(gen) == 7
    arpa = tmp_path / "m.arpa"
    assert _run(parser, ["ngram", "export-arpa", str(model_dir), str(arpa)]) == 0
    assert NgramLM.from_arpa(arpa).order == 3
    assert _run(parser, ["ngram", "fit", str(text), "--order", "2", "--smoothing", "jelinek-mercer", "--lambdas",
                         "0.5,0.3,0.2", "--out", str(tmp_path / "jm")]) == 0
    with pytest.raises(InputError, match="choose one of"):
        _run(parser, ["ngram", "fit", str(text), "--smoothing", "nope", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        parser.parse_args(["ngram", "fit", str(text), "--padding", "both", "--out", str(tmp_path / "x")])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok line\n\xff\xfe\n")
    with pytest.raises(DataError, match="byte offset 8"):
        _run(parser, ["ngram", "eval", str(model_dir), str(bad)])


@pytest.mark.parametrize("padding", PADDINGS)
def test_cli_padding_and_export_match_kenlm(tmp_path, capsys, padding):
    """fit --padding, eval and export-arpa: KenLM's ordinary scoring of the exported file gives the
    perplexity that `chainrule ngram eval` prints."""
    train, test = _kenlm_texts(tmp_path)
    parser, model_dir, arpa = _parser(), tmp_path / "model", tmp_path / "m.arpa"
    assert _run(parser, ["ngram", "fit", str(tmp_path / "train.txt"), "--order", "3", "--padding", padding,
                         "--out", str(model_dir)]) == 0
    lm = NgramLM.load(model_dir)
    assert lm.padding == padding
    assert _run(parser, ["ngram", "eval", str(model_dir), str(tmp_path / "test.txt")]) == 0
    out = capsys.readouterr().out
    assert f"padding: {padding}" in out
    ppl = float(out.split("perplexity: ")[1].split()[0])
    assert ppl == pytest.approx(lm.perplexity(test).perplexity, abs=1e-4)
    assert _run(parser, ["ngram", "export-arpa", str(model_dir), str(arpa)]) == 0
    assert "bos=True, eos=True" in capsys.readouterr().out
    kenlm = pytest.importorskip("kenlm")
    km = kenlm.Model(str(arpa))
    total = sum(km.score(" ".join(s), bos=True, eos=True) for s in test)
    assert 10 ** (-total / sum(len(s) + 1 for s in test)) == pytest.approx(ppl, abs=2e-4)
