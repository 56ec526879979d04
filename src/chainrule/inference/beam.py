"""Beam search: high-probability whole examples or continuations, for every discrete model.

:func:`beam_search` works on any left-to-right step function; :func:`search_model` runs it over a
model's variables in its order (inside a group, one variable at a time through the head's
conditionals), and :func:`generate_beam` continues a text prompt. Scores:
``score = log_prob / length ** length_penalty``; a beam as wide as the space is exhaustive search.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from chainrule.errors import InputError, renamed_parameters, warn_deprecated
from chainrule.inference.sampling import check_prompt, check_sequence_model
from chainrule.inference.state import index_state


@dataclass(frozen=True)
class Hypothesis:
    """One beam-search result: the tokens, their total log-probability (nats) and the score
    used for ranking, ``log_prob / length ** length_penalty``."""

    tokens: list[int]
    log_prob: float
    score: float
    prompt_log_prob: float = 0.0  # log-probability of the given prompt (not part of log_prob)

    @property
    def prefix_log_prob(self) -> float:
        """Deprecated spelling of :attr:`prompt_log_prob`."""
        warn_deprecated("Hypothesis.prefix_log_prob", "Hypothesis.prompt_log_prob", stacklevel=3)
        return self.prompt_log_prob


StepFn = Callable[[Any, torch.Tensor | None, int], tuple[torch.Tensor, Any]]


#: The widest beam accepted: every hypothesis holds a model state, so a width of 10**9 would not fit.
MAX_BEAM_WIDTH = 4096


@renamed_parameters(prefix="prompt")
def beam_search(step: StepFn, init_state: Any, beam_width: int, max_length: int, eos_id: int | None = None,
                length_penalty: float = 0.0, prompt: Sequence[int] = ()) -> list[Hypothesis]:
    """Beam search over a left-to-right model.

    Args:
        step: ``step(state, last_tokens (n,) or None, i) -> (log_probs (n, V), state)`` giving the
            next-token log-probabilities of each of n partial sequences (i = position).
        init_state: the state for one sequence (batch of 1).
        beam_width: hypotheses kept per step (a beam as wide as V**max_length is exhaustive).
        max_length: tokens to generate (after the prompt).
        eos_id: a token that ends a hypothesis (it is kept, and counts in its length).
        length_penalty: alpha in ``score = log_prob / length ** alpha``; 0 ranks by raw
            log-probability, 1 by the per-token average.
        prompt: tokens fed before generation (their log-probability is reported separately, as
            ``Hypothesis.prompt_log_prob``, and not part of ``log_prob`` or ``score``). Formerly
            ``prefix=`` (deprecated).

    Returns:
        the finished hypotheses, best score first (at most ``beam_width``).
    """
    if not isinstance(beam_width, int) or isinstance(beam_width, bool) or not 1 <= beam_width <= MAX_BEAM_WIDTH:
        raise InputError(f"beam width must be an integer in 1..{MAX_BEAM_WIDTH}, got {beam_width!r}")
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool) \
            or not math.isfinite(length_penalty):
        raise InputError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if max_length < 1:
        raise InputError(f"max_length must be >= 1, got {max_length}")
    state, last, prompt_lp = init_state, None, 0.0
    for pos, tok in enumerate(prompt):
        logp, state = step(state, last, pos)
        prompt_lp += float(logp[0, tok])
        last = torch.tensor([tok])
    pos = len(prompt)
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
                finished.append(Hypothesis(seq, s, score(s, len(seq)), prompt_lp))
            else:
                new_seqs.append(seq)
                keep.append(b)
                new_scores.append(s)
        if not new_seqs:
            break
        idx = torch.tensor(keep)
        state = index_state(state, idx)
        seqs, scores, last = new_seqs, torch.tensor(new_scores, dtype=torch.float64), torch.tensor([s[-1] for s in new_seqs])
    else:
        finished.extend(Hypothesis(s, float(lp), score(float(lp), len(s)), prompt_lp) for s, lp in zip(seqs, scores))
    finished.sort(key=lambda h: h.score, reverse=True)
    return finished[:beam_width]


@renamed_parameters(prefix="prompt")
@torch.no_grad()
def search_model(model: Any, beam_width: int, context: Any = None, prompt: Any = None, length_penalty: float = 0.0,
                 order: Any = None, member: int | None = None, **options: Any) -> list[tuple[torch.Tensor, float, float]]:
    """The most probable whole examples of a discrete model found by beam search.

    Returns up to ``beam_width`` triples ``(x (*shape), log_prob_nats, score)``, best first;
    ``score = log_prob / D ** length_penalty`` (every example has D variables, so the ranking
    equals the raw log-probability's). ``prompt`` fixes the first groups in the order (as in
    :func:`chainrule.inference.sampling.sample`; formerly ``prefix=``); its probability is included
    in ``log_prob``, so that it equals ``model.log_prob(x)``. An ensemble needs ``member=k``.
    """
    if not model.head.discrete:
        raise InputError("beam search needs a discrete model")
    members = getattr(model, "num_members", 1)
    if members > 1 and member is None:
        raise InputError("beam search over an ensemble's mixture is not supported: pick a member with member=k")
    call = {"order": order, **options} if members == 1 else {"member": member, "order": order, **options}
    was_training = model.training
    model.eval()
    try:
        ctx = model.normalize_context(context, 1)
        s, g = model.group_size, model.num_groups
        tokens: list[int] = []
        if prompt is not None:
            tokens = check_prompt(model, 1, prompt)[0].reshape(-1).tolist()
        if len(tokens) >= g * s:
            raise InputError(f"the prompt fixes all {model.dim} variables: nothing is left to search")

        def step(state: Any, last: torch.Tensor | None, t: int) -> tuple[torch.Tensor, Any]:
            mstate, params, partial = state
            i, j = divmod(t, s)
            if last is not None:
                partial = partial.clone()
                partial[:, (t - 1) % s] = last.to(partial.device)
            if j == 0:
                params, mstate = model.step(mstate, i, partial if t else None)
                partial = torch.zeros_like(partial)
            return model.head(params).variable_logits(partial, j), (mstate, params, partial)

        state0 = (model.init_state(1, ctx, **call), None,
                  torch.zeros(1, s, dtype=torch.long, device=model.device))
        order_t = model.resolve_order(**call)
        results = []
        for h in beam_search(step, state0, beam_width, g * s - len(tokens), length_penalty=length_penalty, prompt=tokens):
            xg = torch.tensor(tokens + h.tokens, dtype=torch.long, device=model.device).reshape(g, s)
            grouped = torch.empty_like(xg)
            grouped[order_t] = xg
            x = model.groups.scatter(grouped.unsqueeze(0))[0].reshape(model.shape)
            lp = h.log_prob + h.prompt_log_prob
            results.append((x.clone(), lp, lp / model.dim ** length_penalty))
        return results
    finally:
        model.train(was_training)


@torch.no_grad()
def generate_beam(model: Any, prompt: Sequence[int], max_new_tokens: int, beam_width: int,
                  eos_id: int | None = None, length_penalty: float = 0.0, context: Any = None) -> list[Hypothesis]:
    """Beam search continuations of ``prompt`` within the context window (see :func:`beam_search`
    for the scores)."""
    window = check_sequence_model(model)
    if len(prompt) + max_new_tokens > window:
        raise InputError(f"beam search needs prompt + new tokens <= the context window of {window} tokens")
    was_training = model.training
    model.eval()
    try:
        def step(state: Any, last: torch.Tensor | None, i: int) -> tuple[torch.Tensor, Any]:
            params, state = model.step(state, i, None if last is None else last.to(model.device).unsqueeze(-1))
            return model.head(params).variable_logits(None, 0), state

        return beam_search(step, model.init_state(1, model.normalize_context(context, 1)), beam_width, max_new_tokens,
                           eos_id=eos_id, length_penalty=length_penalty, prompt=list(prompt))
    finally:
        model.train(was_training)
