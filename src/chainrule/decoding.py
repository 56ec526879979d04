"""Decoding: how to turn predicted conditionals into tokens.

Processors map logits ``(..., V)`` to filtered, renormalized log-probabilities ``(..., V)``; they
never modify their input in place and always keep at least one token. They are applied in a fixed
order — temperature, then top-k, then top-p — as in most toolkits:

- :class:`Temperature` ``t``: logits / t; ``t = 0`` means greedy (only the argmax survives).
- :class:`TopK` ``k``: keep the k most probable tokens (k is clamped to V; ties at the k-th value
  are all kept).
- :class:`TopP` ``p`` (nucleus, Holtzman et al. 2020): keep the smallest set of most probable
  tokens whose total probability reaches p — the token that crosses p is kept — and at least one.

:func:`choose` samples (or takes the argmax) from the processed distribution; :func:`beam_search`
finds high-probability whole sequences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from chainrule.errors import InputError


class Temperature:
    """Divide logits by ``t`` (> 0 flattens or sharpens); ``t == 0`` is greedy decoding."""

    def __init__(self, t: float) -> None:
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        self.t = float(t)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.t == 0:
            keep = F.one_hot(logits.argmax(-1), logits.shape[-1]).bool()
            return logits.masked_fill(~keep, -math.inf)
        # Shift so the maximum is 0 and divide in float64: a tiny t then sends the others to
        # -inf instead of producing inf - inf = NaN (or 0 / 0 when t underflows float32).
        shifted = logits - logits.amax(-1, keepdim=True)
        return (shifted.double() / self.t).to(logits.dtype)


class TopK:
    """Keep the ``k`` largest logits (k clamped to the vocabulary size)."""

    def __init__(self, k: int) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"top-k needs an integer k >= 1, got {k!r}")
        self.k = k

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        k = min(self.k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, -math.inf)


class TopP:
    """Nucleus filtering: the smallest most-probable set with total probability >= ``p``."""

    def __init__(self, p: float) -> None:
        if not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise InputError(f"top-p needs 0 < p <= 1, got {p!r}")
        self.p = float(p)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        # Rank by the logits themselves (stable: ties keep their index order, as argmax does), so
        # that the most probable token is always the one kept first, even when rounding makes
        # probabilities tie.
        sorted_logits, idx = logits.float().sort(dim=-1, descending=True, stable=True)
        sorted_p = F.softmax(sorted_logits, -1)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the tokens ranked above each token
        drop_sorted = before >= self.p  # the crossing token has before < p: kept
        drop_sorted[..., 0] = False  # always keep the most probable token
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        return logits.masked_fill(drop, -math.inf)


def processors(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> list[Callable]:
    """The processor chain for the usual options, in the documented order."""
    chain: list[Callable] = []
    if temperature != 1.0:
        chain.append(Temperature(temperature))
    if top_k is not None:
        chain.append(TopK(top_k))
    if top_p is not None and top_p != 1.0:
        chain.append(TopP(top_p))
    return chain


def process(logits: torch.Tensor, chain: Sequence[Callable] = ()) -> torch.Tensor:
    """Apply ``chain`` to ``logits`` ``(..., V)`` and return normalized log-probabilities."""
    out = logits.float()
    for proc in chain:
        out = proc(out)
    return F.log_softmax(out, -1)


def choose(logits: torch.Tensor, chain: Sequence[Callable] = (), generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from the processed distribution: ``(..., V)`` -> ``(...)`` long."""
    logp = process(logits, chain)
    flat = logp.reshape(-1, logp.shape[-1]).exp()
    return torch.multinomial(flat, 1, generator=generator).reshape(logp.shape[:-1])


# ---------------------------------------------------------------------- beam search
@dataclass(frozen=True)
class Hypothesis:
    """One beam-search result: the tokens, their total log-probability (nats) and the score
    used for ranking, ``log_prob / length ** length_penalty``."""

    tokens: list[int]
    log_prob: float
    score: float
    prefix_log_prob: float = 0.0  # log-probability of the given prefix (not part of log_prob)


def _index_state(state: Any, idx: torch.Tensor) -> Any:
    """Select rows ``idx`` of every tensor in a (nested) sampling state."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, idx.to(state.device))
    if isinstance(state, (tuple, list)):
        return type(state)(_index_state(s, idx) for s in state)
    if isinstance(state, dict):
        return {k: _index_state(v, idx) for k, v in state.items()}
    return state


StepFn = Callable[[Any, torch.Tensor | None, int], tuple[torch.Tensor, Any]]


def beam_search(step: StepFn, init_state: Any, beam_width: int, max_length: int, eos_id: int | None = None,
                length_penalty: float = 0.0, prefix: Sequence[int] = ()) -> list[Hypothesis]:
    """Beam search over a left-to-right model.

    Args:
        step: ``step(state, last_tokens (n,) or None, i) -> (log_probs (n, V), state)`` giving the
            next-token log-probabilities of each of n partial sequences (i = position).
        init_state: the state for one sequence (batch of 1).
        beam_width: hypotheses kept per step (a beam as wide as V**max_length is exhaustive).
        max_length: tokens to generate (after the prefix).
        eos_id: a token that ends a hypothesis (it is kept, and counts in its length).
        length_penalty: alpha in ``score = log_prob / length ** alpha``; 0 ranks by raw
            log-probability, 1 by the per-token average.
        prefix: tokens fed before generation (their log-probability is reported separately, as
            ``Hypothesis.prefix_log_prob``, and not part of ``log_prob`` or ``score``).

    Returns:
        the finished hypotheses, best score first (at most ``beam_width``).
    """
    if not isinstance(beam_width, int) or beam_width < 1:
        raise InputError(f"beam width must be an integer >= 1, got {beam_width!r}")
    if max_length < 1:
        raise InputError(f"max_length must be >= 1, got {max_length}")
    state, last, prefix_lp = init_state, None, 0.0
    for pos, tok in enumerate(prefix):
        logp, state = step(state, last, pos)
        prefix_lp += float(logp[0, tok])
        last = torch.tensor([tok])
    pos = len(prefix)
    seqs: list[list[int]] = [[]]
    scores = torch.zeros(1, dtype=torch.float64)
    finished: list[Hypothesis] = []

    def score(lp: float, length: int) -> float:
        return lp / (max(length, 1) ** length_penalty)

    for t in range(max_length):
        logp, state = step(state, last, pos + t)
        cand = (scores.unsqueeze(1) + logp.double()).reshape(-1)  # (beams * V,)
        v = logp.shape[-1]
        top = cand.topk(min(beam_width, cand.numel()))
        beams, toks = top.indices // v, top.indices % v
        new_seqs, keep, new_scores = [], [], []
        for b, tok, s in zip(beams.tolist(), toks.tolist(), top.values.tolist()):
            if not math.isfinite(s):
                continue
            seq = seqs[b] + [tok]
            if eos_id is not None and tok == eos_id:
                finished.append(Hypothesis(seq, s, score(s, len(seq)), prefix_lp))
            else:
                new_seqs.append(seq)
                keep.append(b)
                new_scores.append(s)
        if not new_seqs:
            break
        idx = torch.tensor(keep)
        state = _index_state(state, idx)
        seqs, scores, last = new_seqs, torch.tensor(new_scores, dtype=torch.float64), torch.tensor([s[-1] for s in new_seqs])
    else:
        finished.extend(Hypothesis(s, float(lp), score(float(lp), len(s)), prefix_lp) for s, lp in zip(seqs, scores))
    finished.sort(key=lambda h: h.score, reverse=True)
    return finished[:beam_width]
