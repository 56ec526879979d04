"""Decoding processors, sampling filters and beam search against their definitions."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import chainrule
from chainrule.checks import all_configurations
from chainrule.inference.beam import beam_search
from chainrule.inference.processors import TopK, TopP, Temperature, choose, process, processors
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
@example(raw=[0.0, 1.401298464324817e-45], p=0.5, k=1, t=2.0)  # the temperature rounds the two logits to a tie
def test_filters_property(raw, p, k, t):
    logits = torch.tensor(raw)
    for chain in ([TopP(p)], [TopK(k)], [Temperature(t)], processors(t, k, p)):
        out = process(logits, chain).exp()
        kept = out > 0
        assert kept.sum() >= 1  # always at least one token
        assert math.isclose(float(out.sum()), 1.0, rel_tol=1e-5)
        # the most probable token is never removed: the most probable of the logits the filters
        # see, after the temperature (dividing can round two logits to a tie: [0, 1e-45] / 2 = [0, 0])
        seen = chain[0](None, logits) if isinstance(chain[0], Temperature) and t > 0 else logits
        assert bool(kept[seen.argmax()])
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


@pytest.mark.parametrize("p", [0.3, 0.9, 1.0])
def test_top_p_keeps_only_infinite_logits(p):
    """A +inf logit holds all the mass: top-p keeps the +inf tokens and drops the rest (log_softmax
    alone would give NaN); rows without one are filtered as usual."""
    logits = torch.tensor([[1.0, math.inf, 3.0, math.inf], [2.0, 1.0, 0.0, -1.0]])
    out = TopP(p)(None, logits)
    assert (out[0] == -math.inf).tolist() == [True, False, True, False]
    assert torch.equal(out[1], TopP(p)(None, logits[1:])[0])


def _exact_top_p(logits: list[float], p: float) -> tuple[list[bool], Fraction | None]:
    """The documented top-p rule in (all but) exact arithmetic: ranks by logit (stable), and keeps
    token k (k >= 1 in rank) unless the mass ranked above it reaches p, i.e. unless
    ``tail_k = mass of ranks >= k`` is <= 1 - p. Probabilities come from the given float logits
    through ``exp`` at 80 digits, so only the threshold can make the answer unclear.

    Returns the kept mask (input order) and the smallest relative distance of any ``before_k``
    from p, relative to ``min(p, 1 - p)`` (None for p == 1, which is decided exactly: ``tail_k``
    is 0 exactly when every logit from rank k on is -inf)."""
    order = sorted(range(len(logits)), key=lambda i: -logits[i])  # sorted() is stable
    top = max(logits)
    with localcontext() as ctx:
        ctx.prec = 80
        w = [Decimal(0) if logits[i] == -math.inf else (Decimal(logits[i]) - Decimal(top)).exp() for i in order]
        z = sum(w)
        tails = [Fraction(sum(w[k:], Decimal(0)) / z) for k in range(len(w))]
    p_exact = Fraction(p)
    keep_sorted, margin = [True], None
    for k in range(1, len(w)):
        if p == 1.0:
            keep_sorted.append(any(w[j] > 0 for j in range(k, len(w))))
            continue
        keep_sorted.append(tails[k] > 1 - p_exact)
        gap = abs(tails[k] - (1 - p_exact)) / min(p_exact, 1 - p_exact)
        margin = gap if margin is None else min(margin, gap)
    keep = [False] * len(logits)
    for rank, i in enumerate(order):
        keep[i] = keep_sorted[rank]
    return keep, margin


def test_top_p_near_one_keeps_the_whole_smallest_set():
    # found by an outside check: float32 cumulative sums round the tail mass away near p = 1
    for dtype in (torch.float32, torch.float64):
        logits = torch.tensor([0.0, -20, -20, -20], dtype=dtype)
        out = TopP(1.0)(None, logits)
        assert torch.equal(out, logits)  # every token has probability > 0: the total reaches 1 only with all
        assert process(logits, [TopP(1.0)]).exp().gt(0).tolist() == [True] * 4
        # p(top) = 1 / (1 + 4e^-15) ~ 0.99999878 < p; with one more token the mass reaches p
        logits = torch.tensor([0.0, -15, -15, -15, -15], dtype=dtype)
        out = TopP(0.999999)(None, logits)
        assert torch.isfinite(out).tolist() == [True, True, False, False, False]
        assert out.dtype == dtype and torch.equal(out[:2], logits[:2])
        assert process(logits, [TopP(0.999999)]).exp().gt(0).tolist() == [True, True, False, False, False]


def test_top_p_one_keeps_every_finite_logit():
    # exp(-800) underflows float64, but the token's probability is not 0: p = 1 keeps it
    logits = torch.tensor([0.0, -800.0, -math.inf, 3.0, -math.inf], dtype=torch.float64)
    assert torch.isfinite(TopP(1.0)(None, logits)).tolist() == [True, True, False, True, False]
    # below 1 the underflowed tail is negligible and -inf tokens never survive
    assert torch.isfinite(TopP(1 - 1e-9)(None, logits)).tolist() == [True, False, False, True, False]
    logits[3] = 30.0  # p(top) = 1 / (1 + e^-30 + ...) > 1 - 1e-9: the top token alone
    assert torch.isfinite(TopP(1 - 1e-9)(None, logits)).tolist() == [False, False, False, True, False]
    for p in (0.3, 0.9, 1.0):  # a row with no finite logit comes back as it was (no NaN)
        assert torch.equal(TopP(p)(None, torch.full((3,), -math.inf)), torch.full((3,), -math.inf))


_logit = st.floats(-30, 10)
# duplicates are common (a small pool of values, drawn with repetition), as are -inf tokens
_logit_lists = st.one_of(
    st.lists(_logit, min_size=1, max_size=12),
    st.lists(st.one_of(_logit, st.just(-math.inf)), min_size=1, max_size=4).flatmap(
        lambda pool: st.lists(st.sampled_from(pool), min_size=1, max_size=12)),
)
_p = st.one_of(
    st.floats(0.0, 1.0, exclude_min=True),
    st.floats(1 - 1e-6, 1.0),
    st.sampled_from([1.0, 1 - 1e-6, 1 - 1e-9, 1 - 2**-52, 1 - 2**-53, 0.999999, 0.5, 1e-9, 0.25, 0.75]),
)


@settings(max_examples=500, deadline=None)
@given(_logit_lists, _p, st.sampled_from([torch.float32, torch.float64]))
def test_top_p_matches_exact_arithmetic(raw, p, dtype):
    logits = torch.tensor(raw, dtype=dtype)
    values = logits.double().tolist()  # the logits TopP actually sees (float32-rounded or not)
    assume(any(math.isfinite(v) for v in values))
    keep, margin = _exact_top_p(values, p)
    # draws whose mass before some token is p itself, or within float64 resolution of it
    # (relative 1e-12, far above the ~1e-14 error of the float64 computation) have no answer
    # that float64 can certify; they are skipped, not judged loosely
    assume(margin is None or margin > Fraction(1, 10**12))
    copy = logits.clone()
    out = TopP(p)(None, logits)
    assert torch.equal(logits, copy)  # input untouched
    assert out.dtype == dtype and out.shape == logits.shape
    assert torch.isfinite(out).tolist() == keep
    assert torch.equal(out[torch.tensor(keep)], logits[torch.tensor(keep)])  # kept logits unchanged


def test_top_p_batches_row_by_row():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 9, generator=gen) * 6
    logits[0, 1, 4] = -math.inf
    logits[1, 2] = torch.tensor([0.0, -15, -15, -15, -15, -40, -40, 2.0, 2.0])
    copy = logits.clone()
    for p in (0.3, 0.9, 0.999999, 1 - 1e-9, 1.0):
        out = TopP(p)(None, logits)
        assert torch.equal(logits, copy)
        assert out.shape == logits.shape and out.dtype == logits.dtype
        for i in range(2):
            for j in range(3):
                assert torch.equal(out[i, j], TopP(p)(None, logits[i, j]))
                keep, _ = _exact_top_p(logits[i, j].double().tolist(), p)
                assert torch.isfinite(out[i, j]).tolist() == keep
        # a non-contiguous view of the same rows gives the same answer
        assert torch.equal(TopP(p)(None, logits.transpose(0, 1)), out.transpose(0, 1))


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
    # a prompt: the log-probability reported is that of the whole example
    x, lp_x, _ = model.beam_search(3, prompt=torch.tensor([2, 1]))[0]
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
