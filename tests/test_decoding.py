"""Decoding processors, sampling filters and beam search against their definitions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import chainrule
from chainrule.checks import all_configurations
from chainrule.decoding import TopK, TopP, Temperature, beam_search, choose, process, processors
from chainrule.errors import InputError


def test_hand_computed_filters():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    # top-p 0.8: 0.5 + 0.3 reaches 0.8 exactly -> {0, 1}; 0.81 -> the crossing token 2 is kept too
    assert torch.allclose(process(logits, [TopP(0.8)]).exp(), torch.tensor([0.625, 0.375, 0, 0]), atol=1e-6)
    assert torch.allclose(process(logits, [TopP(0.81)]).exp(), torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95, atol=1e-6)
    # tiny p keeps the top token only
    assert torch.allclose(process(logits, [TopP(1e-9)]).exp(), torch.tensor([1.0, 0, 0, 0]))
    assert torch.allclose(process(logits, [TopK(2)]).exp(), torch.tensor([0.625, 0.375, 0, 0]), atol=1e-6)
    assert torch.allclose(process(logits, [TopK(100)]).exp(), probs, atol=1e-6)  # k clamped to V
    # temperature 2: p ** (1/2), renormalized
    t2 = probs.sqrt() / probs.sqrt().sum()
    assert torch.allclose(process(logits, [Temperature(2.0)]).exp(), t2, atol=1e-6)
    assert torch.allclose(process(logits, [Temperature(0)]).exp(), torch.tensor([1.0, 0, 0, 0]))


def test_processors_do_not_mutate_and_order_is_fixed():
    logits = torch.randn(3, 10)
    copy = logits.clone()
    chain = processors(temperature=0.7, top_k=5, top_p=0.9)
    assert [type(p) for p in chain] == [Temperature, TopK, TopP]
    process(logits, chain)
    assert torch.equal(logits, copy)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_k=0), dict(top_k=2.5), dict(top_p=0), dict(top_p=1.5),
                                 dict(temperature=float("nan"))])
def test_bad_options(bad):
    with pytest.raises(InputError):
        processors(**bad)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=1, max_size=12), st.floats(0.01, 1.0), st.integers(1, 20),
       st.floats(0.0, 3.0))
def test_filters_property(raw, p, k, t):
    logits = torch.tensor(raw)
    for chain in ([TopP(p)], [TopK(k)], [Temperature(t)], processors(t, k, p)):
        out = process(logits, chain).exp()
        kept = out > 0
        assert kept.sum() >= 1  # always at least one token
        assert math.isclose(float(out.sum()), 1.0, rel_tol=1e-5)
        assert bool(kept[logits.argmax()])  # the most probable token is never removed
    kept = process(logits, [TopK(k)]).exp() > 0
    assert kept.sum() >= min(k, len(raw))
    # top-p: the kept mass reaches p, and dropping the least probable kept token would not
    probs = torch.softmax(logits.double(), -1)
    kept = process(logits, [TopP(p)]).exp() > 0
    assert float(probs[kept].sum()) >= p - 1e-6 or kept.all()
    if kept.sum() > 1:
        assert float(probs[kept].sum() - probs[kept].min()) < p + 1e-6


def test_top_p_keeps_the_argmax_when_probabilities_tie():
    # found by the property test: logits differing by 7e-33 have equal float32 probabilities
    logits = torch.tensor([-7.231613124792496e-33, 0.0])
    kept = process(logits, [TopP(0.5)]).exp() > 0
    assert kept.tolist() == [False, True]


def test_choose_samples_the_filtered_distribution():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(40_000, 4)
    draws = choose(logits, [TopK(2)], torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / 40_000
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0, 0]), atol=0.01)


def test_beam_as_wide_as_the_space_is_exhaustive():
    torch.manual_seed(0)
    model = chainrule.create_model("nade", (4,), 3, hidden_size=5)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1)
    space = all_configurations(model)
    lp = model.log_prob(space).detach()
    best = lp.sort(descending=True)
    res = model.beam_search(81)
    assert len(res) == 81
    assert torch.allclose(torch.tensor([r[1] for r in res], dtype=torch.float64), best.values.double(), atol=1e-5)
    assert torch.equal(res[0][0], space[best.indices[0]])
    # greedy == beam of width 1 == temperature 0
    greedy = model.sample(2, temperature=0)
    assert torch.equal(greedy[0], model.beam_search(1)[0][0])
    # a prefix: the log-probability reported is that of the whole example
    x, lp_x, _ = model.beam_search(3, prefix=torch.tensor([2, 1]))[0]
    assert x[model.order[:2]].tolist() == [2, 1]
    assert lp_x == pytest.approx(float(model.log_prob(x).detach()), abs=1e-5)


def test_beam_search_with_eos_and_length_penalty():
    # a toy next-token table over {0: eos, 1, 2}: position-independent
    table = torch.tensor([0.4, 0.35, 0.25]).log()

    def step(state, last, i):
        return table.expand(state.shape[0], 3), state

    raw = beam_search(step, torch.zeros(1, 1), beam_width=4, max_length=3, eos_id=0, length_penalty=0.0)
    assert raw[0].tokens == [0] and raw[0].log_prob == pytest.approx(math.log(0.4))
    norm = beam_search(step, torch.zeros(1, 1), beam_width=4, max_length=3, eos_id=0, length_penalty=1.0)
    for h in norm:
        assert h.score == pytest.approx(h.log_prob / len(h.tokens))
    assert [h.score for h in norm] == sorted((h.score for h in norm), reverse=True)
    with pytest.raises(InputError):
        beam_search(step, torch.zeros(1, 1), beam_width=0, max_length=3)


def test_sampling_filters_on_models():
    model = chainrule.create_model("fvsbn", (5,), 4)
    x = model.sample(7, top_k=2, top_p=0.9, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (7, 5)
    real = chainrule.create_model("fvsbn", (5,), None)
    with pytest.raises(InputError, match="discrete"):
        real.sample(2, top_k=3)
