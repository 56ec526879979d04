"""NLTK's own ``nltk.lm`` unit tests (nltk/test/unit/lm/test_models.py and test_preprocessing.py,
NLTK 3.x), ported to chainrule: the same training data, vocabulary, queries and expected values,
asked through :class:`chainrule.lm.ngram.NgramLM` with ``padding="nltk"`` (NLTK's
``pad_both_ends``) and the NLTK-compatible definitions.

The API differs: NLTK's ``score(w, context)`` is ``exp(log_prob(w, context))`` here, ``context=None``
is ``()``, ``<UNK>`` is ``<unk>``, ``entropy``/``perplexity`` of a list of n-grams are computed from
:meth:`NgramLM.log_probs` of the same rows (NLTK's entropy is in bits). NLTK's ``generate`` draws with
Python's ``random`` module, so where NLTK's test pins the word that its seed produces, the port asks
what the test is about (the draw is reproducible and lies in the support; deterministic contexts
give their one continuation; an OOV prompt acts as ``<unk>``). NLTK's ``fit`` adds counts to a fitted
model; ``NgramLM.fit`` refits, so the cycle test refits on both texts.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from chainrule.errors import InputError
from chainrule.lm.ngram import BOS_ID, NgramLM

VOCABULARY = ["a", "b", "c", "d", "z", "<s>", "</s>"]
TRAINING = [["a", "b", "c", "d"], ["e", "g", "a", "d", "b", "e"]]


def model(order: int, smoothing: str, **options) -> NgramLM:
    return NgramLM(order, smoothing, padding="nltk", **options).fit(TRAINING, vocabulary=VOCABULARY)


def score(lm: NgramLM, word: str, context=None) -> float:
    return math.exp(lm.log_prob(word, tuple(context or ())))


def entropy(lm: NgramLM, ngrams: list[tuple[str, ...]]) -> float:
    """NLTK's ``entropy``: minus the mean log2 score of the given n-grams."""
    lp = [lm.log_prob(g[-1], g[:-1]) for g in ngrams]
    return -sum(lp) / len(lp) / math.log(2)


def perplexity(lm: NgramLM, ngrams: list[tuple[str, ...]]) -> float:
    return 2.0 ** entropy(lm, ngrams)


@pytest.fixture(scope="module")
def mle_bigram_model():
    return model(2, "mle", nltk_compatible=True)


@pytest.fixture(scope="module")
def mle_trigram_model():
    return model(3, "mle", nltk_compatible=True)


@pytest.fixture(scope="module")
def lidstone_bigram_model():
    return model(2, "lidstone", k=0.1, nltk_compatible=True)


@pytest.fixture(scope="module")
def lidstone_trigram_model():
    return model(3, "lidstone", k=0.1, nltk_compatible=True)


@pytest.fixture(scope="module")
def laplace_bigram_model():
    return model(2, "laplace", nltk_compatible=True)


@pytest.fixture(scope="module")
def wittenbell_trigram_model():
    return model(3, "witten-bell", nltk_compatible=True)


@pytest.fixture(scope="module")
def kneserney_trigram_model():
    return model(3, "kneser-ney-nltk", discount=0.75)


@pytest.fixture(scope="module")
def kneserney_bigram_model():
    return model(2, "kneser-ney-nltk")


@pytest.fixture(scope="module")
def absolute_discounting_trigram_model():
    return model(3, "absolute-discounting", nltk_compatible=True)


@pytest.fixture(scope="module")
def stupid_backoff_trigram_model():
    return model(3, "stupid-backoff", nltk_compatible=True)


# ---------------------------------------------------------------------- MLE
@pytest.mark.parametrize("word, context, expected_score", [
    ("d", ["c"], 1),
    ("d", ["e"], 0),  # unseen n-grams give 0
    ("z", None, 0),  # so do unseen unigrams
    ("a", None, 2.0 / 14),  # 14 unigrams, count('a') = 2
    ("y", None, 3.0 / 14),  # OOV: count(<unk>) = 3
])
def test_mle_bigram_scores(mle_bigram_model, word, context, expected_score):
    assert score(mle_bigram_model, word, context) == pytest.approx(expected_score, rel=1e-4)


def test_mle_bigram_logscore_for_zero_score(mle_bigram_model):
    assert math.isinf(mle_bigram_model.log_prob("d", ["e"]))


def test_mle_bigram_entropy_perplexity_seen(mle_bigram_model):
    trained = [("<s>", "a"), ("a", "b"), ("b", "<unk>"), ("<unk>", "a"), ("a", "d"), ("d", "</s>")]
    assert entropy(mle_bigram_model, trained) == pytest.approx(1.0975, rel=1e-4)
    assert perplexity(mle_bigram_model, trained) == pytest.approx(2.1398, rel=1e-4)


def test_mle_bigram_entropy_perplexity_unseen(mle_bigram_model):
    untrained = [("<s>", "a"), ("a", "c"), ("c", "d"), ("d", "</s>")]
    assert math.isinf(entropy(mle_bigram_model, untrained))
    assert math.isinf(perplexity(mle_bigram_model, untrained))


def test_mle_bigram_entropy_perplexity_unigrams(mle_bigram_model):
    text = [("<s>",), ("a",), ("c",), ("-",), ("d",), ("c",), ("</s>",)]
    assert entropy(mle_bigram_model, text) == pytest.approx(3.0095, rel=1e-4)
    assert perplexity(mle_bigram_model, text) == pytest.approx(8.0529, rel=1e-4)


@pytest.mark.parametrize("word, context, expected_score", [
    ("d", ("b", "c"), 1),  # count(b c d) = 1, count(b c) = 1
    ("d", ["c"], 1),
    ("a", None, 2.0 / 18),  # 18 tokens, 'a' twice
    ("z", None, 0),  # in the vocabulary but unseen
    ("y", None, 3.0 / 18),  # OOV: <unk>
])
def test_mle_trigram_scores(mle_trigram_model, word, context, expected_score):
    assert score(mle_trigram_model, word, context) == pytest.approx(expected_score, rel=1e-4)


# ---------------------------------------------------------------------- Lidstone / Laplace
@pytest.mark.parametrize("word, context, expected_score", [
    ("d", ["c"], 1.1 / 1.8),
    ("a", None, 2.1 / 14.8),  # 14 unigrams + 0.1 * vocabulary of 8
    ("z", None, 0.1 / 14.8),
    ("y", None, 3.1 / 14.8),
])
def test_lidstone_bigram_score(lidstone_bigram_model, word, context, expected_score):
    assert score(lidstone_bigram_model, word, context) == pytest.approx(expected_score, rel=1e-4)


def test_lidstone_entropy_perplexity(lidstone_bigram_model):
    text = [("<s>", "a"), ("a", "c"), ("c", "<unk>"), ("<unk>", "d"), ("d", "c"), ("c", "</s>")]
    assert entropy(lidstone_bigram_model, text) == pytest.approx(4.0917, rel=1e-4)
    assert perplexity(lidstone_bigram_model, text) == pytest.approx(17.0504, rel=1e-4)


@pytest.mark.parametrize("word, context, expected_score", [
    ("d", ["c"], 1.1 / 1.8),
    ("e", ["c"], 0.1 / 1.8),
    ("d", ["b", "c"], 1.1 / 1.8),
    ("e", ["b", "c"], 0.1 / 1.8),
])
def test_lidstone_trigram_score(lidstone_trigram_model, word, context, expected_score):
    assert score(lidstone_trigram_model, word, context) == pytest.approx(expected_score, rel=1e-4)


@pytest.mark.parametrize("word, context, expected_score", [
    ("d", ["c"], 2.0 / 9),
    ("a", None, 3.0 / 22),  # 14 unigrams + vocabulary of 8
    ("z", None, 1.0 / 22),
    ("y", None, 4.0 / 22),
])
def test_laplace_bigram_score(laplace_bigram_model, word, context, expected_score):
    assert score(laplace_bigram_model, word, context) == pytest.approx(expected_score, rel=1e-4)


def test_laplace_bigram_entropy_perplexity(laplace_bigram_model):
    text = [("<s>", "a"), ("a", "c"), ("c", "<unk>"), ("<unk>", "d"), ("d", "c"), ("c", "</s>")]
    assert entropy(laplace_bigram_model, text) == pytest.approx(3.1275, rel=1e-4)
    assert perplexity(laplace_bigram_model, text) == pytest.approx(8.7393, rel=1e-4)


def test_laplace_gamma(laplace_bigram_model):
    """NLTK: ``Laplace(...).gamma == 1``, i.e. Laplace is Lidstone with k = 1."""
    lid1 = model(2, "lidstone", k=1, nltk_compatible=True)
    rows = laplace_bigram_model.ngram_rows(TRAINING + [["z", "a", "q"]])
    np.testing.assert_allclose(laplace_bigram_model.log_probs(rows), lid1.log_probs(rows), rtol=1e-14)


# ---------------------------------------------------------------------- Witten-Bell
@pytest.mark.parametrize("word, context, expected_score", [
    ("c", None, 1.0 / 18),  # unigrams: the MLE
    ("z", None, 0 / 18),
    ("y", None, 3.0 / 18),
    ("c", ["b"], (1 - 0.5) * 0.5 + 0.5 * 1 / 18),  # gamma(b) = 2 / (2 + 2)
    ("c", ["a", "b"], (1 - 0.5) + 0.5 * ((1 - 0.5) * 0.5 + 0.5 * 1 / 18)),
    ("c", ["z", "b"], ((1 - 0.5) * 0.5 + 0.5 * 1 / 18)),  # 'z b' unseen: P(c | b) (NLTK issue #2332)
])
def test_wittenbell_trigram_score(wittenbell_trigram_model, word, context, expected_score):
    assert score(wittenbell_trigram_model, word, context) == pytest.approx(expected_score, rel=1e-4)


# ---------------------------------------------------------------------- Kneser-Ney
@pytest.mark.parametrize("word, context, expected_score", [
    ("c", None, 1.0 / 14),  # continuation count of c over the 14 distinct bigrams
    ("z", None, 0.0 / 14),
    ("y", None, 3 / 14),
    ("c", ["b"], (0.125 + 0.75 * (1 / 14))),
    ("c", ["a", "b"], 0.25 + 0.75 * (0.125 + 0.75 * (1 / 14))),
    ("c", ["z", "b"], (0.125 + 0.75 * (1 / 14))),
])
def test_kneserney_trigram_score(kneserney_trigram_model, word, context, expected_score):
    assert score(kneserney_trigram_model, word, context) == pytest.approx(expected_score, rel=1e-4)


# ---------------------------------------------------------------------- absolute discounting
@pytest.mark.parametrize("word, context, expected_score", [
    ("c", None, 1.0 / 18),
    ("z", None, 0.0 / 18),
    ("y", None, 3 / 18),
    ("c", ["b"], (0.125 + 0.75 * (2 / 2) * (1 / 18))),
    ("c", ["a", "b"], 0.25 + 0.75 * (0.125 + 0.75 * (2 / 2) * (1 / 18))),
    ("c", ["z", "b"], (0.125 + 0.75 * (2 / 2) * (1 / 18))),
])
def test_absolute_discounting_trigram_score(absolute_discounting_trigram_model, word, context, expected_score):
    assert score(absolute_discounting_trigram_model, word, context) == pytest.approx(expected_score, rel=1e-4)


# ---------------------------------------------------------------------- stupid backoff
@pytest.mark.parametrize("word, context, expected_score", [
    ("c", None, 1.0 / 18),
    ("z", None, 0.0 / 18),
    ("y", None, 3 / 18),
    ("c", ["b"], 1 / 2),
    ("c", ["a", "b"], 1 / 1),
    ("c", ["z", "b"], (0.4 * (1 / 2))),  # 'z b c' unseen: 0.4 x the score of 'b c'
])
def test_stupid_backoff_trigram_score(stupid_backoff_trigram_model, word, context, expected_score):
    assert score(stupid_backoff_trigram_model, word, context) == pytest.approx(expected_score, rel=1e-4)


# ---------------------------------------------------------------------- distributions sum to 1
CONTEXTS = [("a",), ("c",), ("<s>",), ("b",), ("<UNK>",), ("d",), ("e",), ("r",), ("w",)]


@pytest.mark.parametrize("model_fixture", [
    "mle_bigram_model", "mle_trigram_model", "lidstone_bigram_model", "laplace_bigram_model",
    "wittenbell_trigram_model", "absolute_discounting_trigram_model", "kneserney_bigram_model",
])
@pytest.mark.parametrize("context", CONTEXTS, ids=lambda c: c[0])
def test_sums_to_1(model_fixture, context, request):
    """NLTK sums over its whole vocabulary, ``<s>`` included (NLTK's definitions give it mass)."""
    lm = request.getfixturevalue(model_fixture)
    assert sum(score(lm, w, context) for w in lm.vocab) == pytest.approx(1.0, rel=1e-7)


@pytest.mark.parametrize("context", CONTEXTS, ids=lambda c: c[0])
def test_stupid_backoff_is_not_a_distribution(stupid_backoff_trigram_model, context):
    """NLTK marks Stupid Backoff's sum-to-1 test xfail ("not a valid distribution"); here it is
    asserted, and the model says so and refuses a perplexity."""
    lm = stupid_backoff_trigram_model
    assert sum(score(lm, w, context) for w in lm.vocab) != pytest.approx(1.0, rel=1e-7)
    assert not lm.gives_probabilities
    with pytest.raises(InputError, match="scores, not probabilities"):
        lm.perplexity(TRAINING)


# ---------------------------------------------------------------------- generating text
def _gen(lm: NgramLM, num, prompt, seed):
    return lm.generate(num, prompt=prompt, generator=torch.Generator().manual_seed(seed))


def test_generate_one_no_context(mle_trigram_model):
    first = _gen(mle_trigram_model, 1, None, 3)
    assert first == _gen(mle_trigram_model, 1, None, 3)  # reproducible with a seed
    # drawn from p(. | <s> <s>): after <s> <s> come 'a' and <unk> (once each)
    assert first[0] in {"a", "<unk>"}


def test_generate_one_from_limiting_context(mle_trigram_model):
    # contexts with only one continuation need no seed
    assert mle_trigram_model.generate(1, prompt=["c"]) == ["d"]
    assert mle_trigram_model.generate(1, prompt=["b", "c"]) == ["d"]
    assert mle_trigram_model.generate(1, prompt=["a", "c"]) == ["d"]  # 'a c' unseen: backs off to 'c'


def test_generate_one_from_varied_context(mle_trigram_model):
    # 'a <s>' is unseen: back off to <s>, followed by 'a', <unk> (and <s>, which is never generated)
    draws = {_gen(mle_trigram_model, 1, ("a", "<s>"), seed)[0] for seed in range(30)}
    assert draws == {"a", "<unk>"}


def test_generate_cycle():
    lm = NgramLM(3, "mle", padding="nltk", nltk_compatible=True).fit(TRAINING + [list("bdbdbd")], vocabulary=VOCABULARY)
    for seed in range(10):
        out = lm.generate(None, prompt=("b", "d"), generator=torch.Generator().manual_seed(seed), max_tokens=200)
        assert len(out) < 200  # escapes the cycle: the sentence ends with </s>
        assert set(out) <= {"b", "d", "<unk>"}


def test_generate_with_text_seed(mle_trigram_model):
    out = _gen(mle_trigram_model, 5, ("<s>", "e"), 3)
    assert out == _gen(mle_trigram_model, 5, ("<s>", "e"), 3) and len(out) == 5
    hist = ["<s>", "<s>", "<unk>"]  # the prompt as the model sees it (e is OOV)
    for tok in out:  # every drawn token has positive probability after its (backed-off) context
        ctx = hist[-2:]
        while not np.isfinite(mle_trigram_model.next_log_probs(ctx)).any():
            ctx = ctx[1:]
        assert np.isfinite(mle_trigram_model.log_prob(tok, ctx))
        hist = ["<s>", "<s>"] if tok == "</s>" else hist + [tok]


def test_generate_oov_text_seed(mle_trigram_model):
    assert _gen(mle_trigram_model, 3, ("aliens",), 3) == _gen(mle_trigram_model, 3, ("<unk>",), 3)


def test_generate_None_text_seed(mle_trigram_model):
    with pytest.raises(InputError, match="strings"):  # NLTK: TypeError on the look-up
        mle_trigram_model.generate(1, prompt=(None,))
    assert _gen(mle_trigram_model, 4, None, 3) == _gen(mle_trigram_model, 4, (), 3)


# ---------------------------------------------------------------------- preprocessing
def test_padded_everygram_pipeline():
    """NLTK's ``padded_everygram_pipeline(2, [["a", "b", "c"]])``: the k-grams counted for training."""
    expected_train = [("<s>",), ("<s>", "a"), ("a",), ("a", "b"), ("b",), ("b", "c"), ("c",), ("c", "</s>"), ("</s>",)]
    lm = NgramLM(2, "mle", padding="nltk", nltk_compatible=True).fit([["a", "b", "c"]])
    words = np.array(lm.vocab)
    counted = Counter()
    for k in (1, 2):
        for row, c in zip(lm._rows(k), lm._counts["occ"][k - 1]):
            counted[tuple(words[row])] += int(c)
    assert counted == Counter(expected_train)
    assert set(lm.vocab) - {"<unk>"} == {"<s>", "a", "b", "c", "</s>"}


@pytest.mark.parametrize("order", [2, 3, 4])
def test_counts_equal_nltk_counter(order):
    """Every k-gram count (k = 1..n) equals NLTK's NgramCounter on ``padded_everygram_pipeline``."""
    pytest.importorskip("nltk")
    from nltk.lm.preprocessing import padded_everygram_pipeline
    from nltk.lm.counter import NgramCounter

    rng = np.random.default_rng(order)
    sents = [[f"w{i}" for i in rng.integers(0, 5, size=rng.integers(1, 7))] for _ in range(30)]
    train, _ = padded_everygram_pipeline(order, sents)
    ref = NgramCounter(train)
    lm = NgramLM(order, "mle", padding="nltk", nltk_compatible=True).fit(sents)
    words = np.array(lm.vocab)
    for k in range(1, order + 1):
        ours = {tuple(words[r]): int(c) for r, c in zip(lm._rows(k), lm._counts["occ"][k - 1]) if c}
        if k == 1:
            theirs = dict(ref.unigrams)
            ours = {g[0]: c for g, c in ours.items()}
        else:
            theirs = {(*ctx, w): c for ctx, fd in ref[k].items() for w, c in fd.items()}
        assert ours == theirs, f"order {k}"
    assert BOS_ID == lm.token_id("<s>")
