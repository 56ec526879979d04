"""The history processors against Hugging Face's own (``RepetitionPenaltyLogitsProcessor``,
``NoRepeatNGramLogitsProcessor``) on random cases, and the real history reaching them when sampling."""

from __future__ import annotations

import math

import pytest
import torch

import chainrule
from chainrule.errors import InputError
from chainrule.inference.processors import NoRepeatNGram, RepetitionPenalty, TopK, process, processors
from chainrule.inference.sampling import generate

lp = pytest.importorskip("transformers.generation.logits_process")


@pytest.mark.parametrize("seed", range(24))
def test_equal_to_transformers_on_random_cases(seed):
    g = torch.Generator().manual_seed(seed)
    b, t, v = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(0, 16, (1,), generator=g)), \
        int(torch.randint(2, 7, (1,), generator=g))
    period = int(torch.randint(1, 4, (1,), generator=g))  # a repeated pattern, some tokens changed: n-grams recur
    ids = torch.randint(0, v, (b, period), generator=g).repeat(1, 16)[:, :t]
    ids = torch.where(torch.rand(b, t, generator=g) < 0.3, torch.randint(0, v, (b, t), generator=g), ids)
    scores = torch.randn(b, v, generator=g) * 3
    theta = float(torch.empty(1).uniform_(0.3, 3.0, generator=g))
    n = int(torch.randint(1, 5, (1,), generator=g))

    want = lp.RepetitionPenaltyLogitsProcessor(theta)(ids, scores.clone())
    assert torch.equal(RepetitionPenalty(theta)(ids, scores), want)
    want = lp.NoRepeatNGramLogitsProcessor(n)(ids, scores.clone())
    got = NoRepeatNGram(n)(ids, scores)
    dead = want.isneginf().all(-1)  # every token banned: HF leaves nothing, chainrule keeps the row
    assert torch.equal(got[~dead], want[~dead]) and torch.equal(got[dead], scores[dead])
    # chained in Hugging Face's order: penalty, n-grams, then the filters
    hf = lp.LogitsProcessorList([lp.RepetitionPenaltyLogitsProcessor(theta), lp.NoRepeatNGramLogitsProcessor(n)])
    chain = processors(repetition_penalty=theta, no_repeat_ngram_size=n)
    out = scores
    for proc in chain:
        out = proc(ids, out)
    want = hf(ids, scores.clone())
    dead = want.isneginf().all(-1)
    assert torch.equal(out[~dead], want[~dead])


def test_hand_computed_and_checked():
    ids = torch.tensor([[0, 1, 0, 2, 0, 1]])
    s = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    assert RepetitionPenalty(2.0)(ids, s).tolist() == [[1.0, -2.0, 0.25, 3.0]]
    # after "... 0 1" the bigram "1 0" occurred, so 0 is banned; n = 3: "0 1 0" occurred -> 0 banned
    assert NoRepeatNGram(2)(ids, s)[0, 0] == -math.inf and NoRepeatNGram(2)(ids, s)[0, 1:].isfinite().all()
    assert NoRepeatNGram(3)(ids, s)[0, 0] == -math.inf
    assert NoRepeatNGram(1)(ids, s)[0].tolist() == [-math.inf, -math.inf, -math.inf, 3.0]
    assert torch.equal(NoRepeatNGram(1)(torch.tensor([[0, 1, 2, 3]]), s), s)  # nothing would be left
    assert torch.equal(NoRepeatNGram(2)(None, s), s) and torch.equal(RepetitionPenalty(2.0)(None, s), s)
    assert [type(p) for p in processors(0.5, 3, 0.9, 1.2, 2)][:2] == [RepetitionPenalty, NoRepeatNGram]
    for bad in (dict(repetition_penalty=0.0), dict(repetition_penalty=float("inf")), dict(no_repeat_ngram_size=0),
                dict(no_repeat_ngram_size=1.5)):
        with pytest.raises(InputError):
            processors(**bad)


def test_sampling_hands_processors_the_real_history():
    """With no_repeat_ngram_size=1 every continuation uses each token at most once, prompt included:
    only possible if the processor sees the tokens actually drawn."""
    torch.manual_seed(0)
    model = chainrule.create_model("transformer", (10,), 12, num_layers=1, num_heads=2, embed_dim=8)
    out = generate(model, [3, 5], 8, num_samples=20, no_repeat_ngram_size=1, generator=torch.Generator().manual_seed(1))
    for row in out.tolist():
        assert len(set(row)) == len(row)
    # a large repetition penalty on top-2 sampling: with a penalty the drawn tokens repeat less
    rep = generate(model, [3], 9, num_samples=30, repetition_penalty=50.0, generator=torch.Generator().manual_seed(2))
    plain = generate(model, [3], 9, num_samples=30, generator=torch.Generator().manual_seed(2))
    distinct = lambda x: sum(len(set(r)) for r in x.tolist())  # noqa: E731
    assert distinct(rep) > distinct(plain)
    # processors applied by process() keep at least one token
    assert process(torch.zeros(1, 3), [NoRepeatNGram(1), TopK(1)], ids=torch.tensor([[0, 1]])).exp()[0, 2] == 1
