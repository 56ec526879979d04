"""Speculative sampling: a cheap draft proposes gamma tokens, the target checks them in one pass.

Leviathan, Kalman & Matias, "Fast inference from transformers via speculative decoding" (ICML 2023);
Chen et al., "Accelerating large language model decoding with speculative sampling" (2023). With
``p`` the target's next-token distribution and ``q`` the draft's, each round:

    d_1..d_gamma ~ q (one after the other, each given the ones before)
    p_1..p_{gamma+1} from one pass of the target over (last token, d_1..d_gamma)
    for j = 1..gamma: accept d_j with probability min(1, p_j(d_j) / q_j(d_j));
        at the first rejection draw from norm(max(0, p_j - q_j)) instead and end the round
    if all were accepted, draw one more token from p_{gamma+1}

Every token then follows the target exactly, whatever the draft (Leviathan et al., Theorem 3.5;
tested with a chi-squared test on a tiny space); a good draft only makes rounds longer. With
decoding filters (temperature, top-k, top-p) both p and q are the filtered distributions, and the
samples follow the filtered target.

The target's pass over gamma + 1 positions uses its cache in one call where the model has one
(``step_many``: the GPT's key/value cache extended by several positions with a causal mask);
otherwise it steps position by position (exact, without the speed-up). The draft is another
chainrule model over the same tokens (a smaller GPT, an LSTM...: rewound by re-stepping from the
state after the last accepted token — positional caches are overwritten in place, recurrent states
are kept per position) or any function from the tokens so far to next-token log-probabilities
(:class:`FunctionDraft`, e.g. an n-gram model over the same characters).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from chainrule.contract import ARModel
from chainrule.errors import InputError
from chainrule.inference.processors import process, processors


@dataclass
class SpeculativeStats:
    """What a speculative run did: ``rounds`` target passes, ``drafted`` tokens proposed,
    ``accepted`` of them kept; ``acceptance_rate = accepted / drafted``; ``tokens_per_round`` the mean
    number of new tokens one target pass gave (accepted + the one it drew itself)."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    new_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else math.nan

    @property
    def tokens_per_round(self) -> float:
        return self.new_tokens / self.rounds if self.rounds else math.nan


class FunctionDraft:
    """A draft given as a function ``fn(tokens: list[int]) -> log-probabilities (V,)`` of the next token
    after ``tokens`` (the prompt and everything generated so far), e.g. an n-gram model's
    ``next_log_probs`` mapped to the target's ids."""

    def __init__(self, fn: Callable[[list[int]], torch.Tensor]) -> None:
        self.fn = fn


#: models whose cache is positional (overwritten in place, read only up to the current position) or
#: a recurrent state returned anew by every step, so that re-stepping from a kept state rewinds them
_REWINDABLE = ("transformer", "rnn", "lstm", "gru")


class _ModelDraft:
    """A chainrule model as a draft: its cache, rewound to the state after the last accepted token."""

    def __init__(self, model: ARModel, window: int) -> None:
        if not model.head.discrete or model.group_size != 1 or len(model.shape) != 1 \
                or getattr(model, "num_members", 1) > 1:
            raise InputError("a draft model must be a single discrete sequence model of shape (T,)")
        if model.dim < window:
            raise InputError(f"the draft's window ({model.dim}) is shorter than the target's ({window})")
        if model.name not in _REWINDABLE:
            # other caches (e.g. a WaveNet's ring buffers, updated in place) cannot be rewound by re-stepping
            raise InputError(f"a draft model must be one of {', '.join(_REWINDABLE)} (whose cache can be rewound); "
                             f"got {model.name}: wrap it in a FunctionDraft instead")
        self.model = model

    def prime(self, tokens: list[int]) -> None:
        """Steps over positions 0..len-1 (inputs: start, tokens[:-1]); ``tokens`` non-empty."""
        m = self.model
        self.states = [m.init_state(1)]
        prev = None
        for i in range(len(tokens)):
            logits, st = m.step(self.states[-1], i, prev)
            self.states.append(st)
            prev = torch.tensor([[tokens[i]]], device=m.device)
        self.pos = len(tokens)  # the next position to step, fed tokens[-1]
        self.states = self.states[-1:]

    def propose(self, last: int, gamma: int, chain: Sequence[Callable], generator: torch.Generator | None
                ) -> tuple[list[int], list[torch.Tensor]]:
        m = self.model
        state, prev, toks, qs = self.states[0], last, [], []
        states = []
        for j in range(gamma):
            logits, state = m.step(state, self.pos + j, torch.tensor([[prev]], device=m.device))
            states.append(state)
            q = process(m.head(logits).variable_logits(None, 0).float(), chain).exp()[0].cpu()
            prev = int(torch.multinomial(q, 1, generator=generator))
            toks.append(prev)
            qs.append(q)
        self._round = (states, toks)
        return toks, qs

    def advance(self, accepted: int, last: int) -> None:
        """Keep ``accepted`` drafted tokens, then ``last``: rewind (or step on) to the state after
        the last accepted one, ready to be fed ``last``."""
        states, toks = self._round
        if accepted < len(toks):
            self.states = [states[accepted]]
        else:  # all accepted: the last drafted token was never fed
            _, st = self.model.step(states[-1], self.pos + len(toks), torch.tensor([[toks[-1]]], device=self.model.device))
            self.states = [st]
        self.pos += accepted + 1


class _FnDraft:
    def __init__(self, draft: FunctionDraft) -> None:
        self.fn = draft.fn

    def prime(self, tokens: list[int]) -> None:
        self.tokens = list(tokens)

    def propose(self, last: int, gamma: int, chain: Sequence[Callable], generator: torch.Generator | None
                ) -> tuple[list[int], list[torch.Tensor]]:
        ctx, toks, qs = list(self.tokens), [], []
        for _ in range(gamma):
            q = process(torch.as_tensor(self.fn(ctx), dtype=torch.float32), chain).exp()
            tok = int(torch.multinomial(q, 1, generator=generator))
            toks.append(tok)
            qs.append(q)
            ctx.append(tok)
        self._round = toks
        return toks, qs

    def advance(self, accepted: int, last: int) -> None:
        self.tokens += self._round[:accepted] + [last]


def _target_pass(model: ARModel, state: Any, pos: int, inputs: list[int]) -> torch.Tensor:
    """The target's parameters for positions pos..pos+m-1 fed ``inputs`` (the token before each): (m, P)."""
    x = torch.tensor([inputs], device=model.device)
    if hasattr(model, "step_many"):
        params, _ = model.step_many(state, pos, x)
        return params[0]
    out = []
    for j in range(len(inputs)):
        params, state = model.step(state, pos + j, x[:, j:j + 1])
        out.append(params[0])
    return torch.stack(out)


@torch.inference_mode()
def speculative_generate(target: Any, draft: Any, prompt: Sequence[int], max_new_tokens: int, gamma: int = 4, *,
                         temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                         generator: torch.Generator | None = None) -> tuple[list[int], SpeculativeStats]:
    """Continue ``prompt`` (token ids) by ``max_new_tokens`` tokens drawn from ``target`` (a GPT or
    any left-to-right sequence model of shape (T,)), ``gamma`` tokens at a time proposed by
    ``draft`` (a chainrule model over the same tokens, or a :class:`FunctionDraft`); returns the new
    tokens and the :class:`SpeculativeStats`. The tokens follow the (filtered) target exactly; one
    continuation at a time, within the target's window. ``generator``: a CPU ``torch.Generator``.
    """
    from chainrule.inference.sampling import check_sequence_model

    window = check_sequence_model(target)
    if not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 1:
        raise InputError(f"gamma (draft tokens per round) must be an integer >= 1, got {gamma!r}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    prompt = [int(t) for t in prompt]
    if len(prompt) + max_new_tokens > window:
        raise InputError(f"the prompt ({len(prompt)} tokens) plus {max_new_tokens} new tokens exceed the target's "
                         f"window of {window} tokens")
    if any(not 0 <= t < target.num_values for t in prompt):
        raise InputError(f"prompt token ids must lie in 0..{target.num_values - 1}")
    chain = processors(temperature, top_k, top_p)
    d = _FnDraft(draft) if isinstance(draft, FunctionDraft) else _ModelDraft(draft, window)
    if isinstance(d, _ModelDraft) and draft.num_values != target.num_values:
        raise InputError(f"the draft has {draft.num_values} values, the target {target.num_values}: they must "
                         "share the tokens")
    was = (target.training, getattr(draft, "training", False))
    target.eval()
    if isinstance(d, _ModelDraft):
        draft.eval()
    stats = SpeculativeStats()
    try:
        state = target.init_state(1)
        tokens = list(prompt)
        if not tokens:  # the first token comes from the target's start position alone
            params, state = target.step(state, 0, None)
            p = process(target.head(params).variable_logits(None, 0).float(), chain).exp()[0].cpu()
            tokens.append(int(torch.multinomial(p, 1, generator=generator)))
            stats.new_tokens += 1
            stats.rounds += 1
        else:  # positions 0..len-1 primed (inputs: start, tokens[:-1]); a round feeds the last token itself
            prev = None
            for i in range(len(tokens)):
                _, state = target.step(state, i, prev)
                prev = torch.tensor([[tokens[i]]], device=target.device)
        d.prime(tokens)
        pos = len(tokens)  # the target position the round's first input (the last token) is fed at
        end = len(prompt) + max_new_tokens
        while len(tokens) < end:
            g = min(gamma, end - len(tokens) - 1)
            last = tokens[-1]
            drafted, qs = d.propose(last, g, chain, generator) if g > 0 else ([], [])
            params = _target_pass(target, state, pos, [last] + drafted)  # (g + 1, P)
            ps = process(target.head(params).variable_logits(None, 0).float(), chain).exp().cpu()  # (g + 1, V)
            accepted, new = 0, None
            for j, (tok, q) in enumerate(zip(drafted, qs)):
                p = ps[j]
                u = float(torch.rand(1, generator=generator))
                if u * float(q[tok]) <= float(p[tok]):  # accept with probability min(1, p / q)
                    accepted += 1
                    continue
                residual = (p - q).clamp_min(0)
                new = int(torch.multinomial(residual if residual.sum() > 0 else p, 1, generator=generator))
                break
            if new is None:
                new = int(torch.multinomial(ps[accepted], 1, generator=generator))
            tokens += drafted[:accepted] + [new]
            stats.rounds += 1
            stats.drafted += len(drafted)
            stats.accepted += accepted
            stats.new_tokens += accepted + 1
            if g > 0:  # (g = 0 only in the last round)
                d.advance(accepted, new)
            pos += accepted + 1
            # the target's cache beyond the accepted positions holds rejected drafts: the next round
            # feeds `new` at `pos` and overwrites them before any query can see them
        return tokens[len(prompt):end], stats
    finally:
        target.train(was[0])
        if isinstance(d, _ModelDraft):
            draft.train(was[1])
