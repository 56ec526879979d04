"""Decoding: how to turn predicted conditionals into tokens.

Processors map ``(ids, logits)`` to filtered logits ``(..., V)``, as in Hugging Face's
``LogitsProcessor``: ``ids`` ``(..., t)`` are the tokens generated so far (None where there is no
history, e.g. inside an image's pixel), so that history-dependent processors such as repetition
penalties fit the same chain. They never modify their input in place and always keep at least one
token. They are applied in a fixed order — the history-dependent ones first, then temperature,
top-k, top-p — as Hugging Face's ``generate`` orders them:

- :class:`RepetitionPenalty` ``theta`` (CTRL, Keskar et al. 2019): the score ``s`` of every token
  already in ``ids`` becomes ``s * theta`` if ``s < 0``, else ``s / theta``.
- :class:`NoRepeatNGram` ``n``: a token that would complete an n-gram already in ``ids`` gets -inf
  (n = 1: no token twice).

- :class:`Temperature` ``t``: logits / t; ``t = 0`` means greedy (only the argmax survives).
- :class:`TopK` ``k``: keep the k most probable tokens (k is clamped to V; ties at the k-th value
  are all kept).
- :class:`TopP` ``p`` (nucleus, Holtzman et al. 2020): keep the smallest set of most probable
  tokens whose total probability reaches p — the token that crosses p is kept — and at least one.

:func:`choose` samples (or takes the argmax) from the processed distribution; beam search lives in
:mod:`chainrule.inference.beam`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from chainrule.errors import InputError


class RepetitionPenalty:
    """CTRL's repetition penalty (Keskar et al. 2019), as Hugging Face's ``RepetitionPenaltyLogitsProcessor``:
    the score ``s`` of each token that occurs in ``ids`` (the prompt included) becomes ``s * theta``
    where ``s < 0`` and ``s / theta`` otherwise; ``theta > 1`` discourages repeats. Shapes: ``ids``
    ``(..., t)``, scores ``(..., V)``.

    The rule depends on the scale of the scores: chainrule's sampling and beam search hand processors
    normalized log-probabilities (all <= 0, so a repeated token's is multiplied by theta), as Hugging
    Face's beam search does; Hugging Face's sampling applies it to the raw logits instead, so sampled
    continuations differ from ``transformers``' under the same theta."""

    needs_ids = True

    def __init__(self, penalty: float) -> None:
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not math.isfinite(penalty) or penalty <= 0:
            raise InputError(f"repetition penalty must be a finite number > 0 (1 = none, > 1 discourages repeats), got {penalty!r}")
        self.penalty = float(penalty)

    def __call__(self, ids: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
        if ids is None or ids.shape[-1] == 0 or self.penalty == 1.0:
            return logits
        ids = ids.long().to(logits.device).expand(*logits.shape[:-1], ids.shape[-1])
        s = logits.gather(-1, ids)
        return logits.scatter(-1, ids, torch.where(s < 0, s * self.penalty, s / self.penalty))


class NoRepeatNGram:
    """Forbid repeating an n-gram (Paulus et al. 2018; fairseq's and Hugging Face's
    ``no_repeat_ngram_size``): a token that, after the last ``n - 1`` tokens of ``ids``, would
    complete an n-gram that already occurs in ``ids`` (the prompt included) gets -inf; ``n = 1``
    forbids every token already present. Where that would forbid every token the row is left as it
    is (Hugging Face's processor leaves no token there). Shapes: ``ids`` ``(..., t)``, scores ``(..., V)``."""

    needs_ids = True

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"no-repeat n-gram size must be an integer n >= 1, got {n!r}")
        self.n = n

    def __call__(self, ids: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
        n = self.n
        if ids is None or ids.shape[-1] < n:  # no n-gram yet
            return logits
        v = logits.shape[-1]
        flat_ids = ids.long().to(logits.device).expand(*logits.shape[:-1], ids.shape[-1]).reshape(-1, ids.shape[-1])
        windows = flat_ids.unfold(-1, n, 1)  # (B, t - n + 1, n): every n-gram so far
        prefix = flat_ids[:, flat_ids.shape[1] - (n - 1):]  # the last n - 1 tokens
        match = (windows[..., :n - 1] == prefix[:, None, :]).all(-1)  # n-grams that the next token would repeat
        banned = torch.zeros(flat_ids.shape[0], v, dtype=torch.long, device=logits.device)
        banned.scatter_add_(1, windows[..., -1], match.long())
        drop = banned.reshape(logits.shape) > 0
        drop &= ~(drop | logits.isneginf()).all(-1, keepdim=True)  # nothing left: ban nothing (HF would give NaN)
        return logits.masked_fill(drop, -math.inf)


class Temperature:
    """Divide logits by ``t`` (> 0 flattens or sharpens); ``t == 0`` is greedy decoding."""

    def __init__(self, t: float) -> None:
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        self.t = float(t)

    def __call__(self, ids: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
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

    def __call__(self, ids: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
        k = min(self.k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, -math.inf)


class TopP:
    """Nucleus filtering: the smallest most-probable set with total probability >= ``p``."""

    def __init__(self, p: float) -> None:
        if not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise InputError(f"top-p needs 0 < p <= 1, got {p!r}")
        self.p = float(p)

    def __call__(self, ids: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
        # Rank by the logits themselves (stable: ties keep their index order, as argmax does), so
        # that the most probable token is always the one kept first, even when rounding makes
        # probabilities tie. float64 holds every float16/bfloat16/float32 logit exactly, so the
        # ranking is that of the input.
        sorted_logits, idx = logits.double().sort(dim=-1, descending=True, stable=True)
        drop_sorted = _top_p_drop_sorted(sorted_logits, self.p)
        drop_sorted[..., 0] = False  # always keep the most probable token
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        return logits.masked_fill(drop, -math.inf)


def _top_p_drop_sorted(sorted_logits: torch.Tensor, p: float) -> torch.Tensor:
    """Which tokens of float64 logits sorted in descending order top-p drops (the first excepted).

    Token k is dropped when the mass ranked above it already reaches p: ``before_k >= p``. The
    mass is compared on the side where it is small, so that it keeps its full relative precision
    (each probability ``exp(log_softmax)`` is exact to about ``|log-probability| + log V`` ulps
    relative, and a sum of positive terms adds at most ``V`` ulps more, so well under 1e-13
    relative for logits of ordinary size): for ``p <= 1/2`` the head ``before_k`` (an exclusive cumsum) against
    ``p``; for ``p > 1/2`` the tail ``tail_k = 1 - before_k`` (a reverse cumsum, which adds the
    smallest probabilities first) against ``1 - p``, which is exact in float64 there (Sterbenz).
    Computing ``before_k`` as a forward cumsum near p = 1 would instead round the last ~1e-7
    (float32) or ~1e-16 (float64) of the mass away and drop tokens whose tail still exceeds
    ``1 - p``. ``p == 1`` drops only tokens of probability 0 (logit -inf), which the tail test
    cannot decide once ``exp`` underflows (logit gaps beyond ~745). In a row with +inf logits
    those tokens share all the mass: every other token is dropped.
    """
    if p >= 1.0:
        drop = sorted_logits == -math.inf
    else:
        probs = sorted_logits.log_softmax(-1).exp()
        if p <= 0.5:
            drop = F.pad(probs[..., :-1].cumsum(-1), (1, 0)) >= p
        else:
            drop = probs.flip(-1).cumsum(-1).flip(-1) <= 1.0 - p
    # A +inf logit holds all the mass (log_softmax would give NaN there): keep only the +inf tokens.
    posinf = sorted_logits == math.inf
    return torch.where(posinf.any(-1, keepdim=True), ~posinf, drop)


def processors(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               repetition_penalty: float | None = None, no_repeat_ngram_size: int | None = None) -> list[Callable]:
    """The processor chain for the usual options, in the documented order."""
    chain: list[Callable] = []
    if repetition_penalty is not None and repetition_penalty != 1.0:
        chain.append(RepetitionPenalty(repetition_penalty))
    if no_repeat_ngram_size is not None:
        chain.append(NoRepeatNGram(no_repeat_ngram_size))
    if temperature != 1.0:
        chain.append(Temperature(temperature))
    if top_k is not None:
        chain.append(TopK(top_k))
    if top_p is not None and top_p != 1.0:
        chain.append(TopP(top_p))
    return chain


def process(logits: torch.Tensor, chain: Sequence[Callable] = (), ids: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``chain`` to ``logits`` ``(..., V)`` (given the history ``ids``) and return normalized log-probabilities."""
    out = logits.float()
    for proc in chain:
        out = proc(ids, out)
    return F.log_softmax(out, -1)


def choose(logits: torch.Tensor, chain: Sequence[Callable] = (), generator: torch.Generator | None = None,
           ids: torch.Tensor | None = None) -> torch.Tensor:
    """Draw one token per row from the processed distribution: ``(..., V)`` -> ``(...)`` long."""
    logp = process(logits, chain, ids)
    flat = logp.reshape(-1, logp.shape[-1]).exp()
    return torch.multinomial(flat, 1, generator=generator).reshape(logp.shape[:-1])
