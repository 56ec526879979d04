"""Beam search: high-probability whole examples or continuations, for every discrete model.

:func:`beam_search` works on any left-to-right step function; :func:`search_model` runs it over a
model's variables in its order (inside a group, one variable at a time through the head's
conditionals), and :func:`generate_beam` continues a text prompt. Scores:
``score = log_prob / length ** length_penalty``; a beam as wide as the space is exhaustive search.
With end tokens or stop strings the default mode ``"hf"`` is Hugging Face's ``generate(num_beams=W,
do_sample=False)`` step for step (W live hypotheses kept from the 2W best extensions; its ranked
list, tested equal); ``"shrink"`` retires ended hypotheses and continues with fewer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from chainrule.contract import ARModel
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
#: beam-search modes: "hf" keeps W live hypotheses (the default); "shrink" retires finished ones
BEAM_MODES = ("hf", "shrink")


def _eos_set(eos_id: int | Sequence[int] | None) -> frozenset[int]:
    if eos_id is None:
        return frozenset()
    ids = [eos_id] if isinstance(eos_id, int) and not isinstance(eos_id, bool) else list(eos_id)
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise InputError(f"eos_id must be a token id or a list of token ids (ints >= 0), got {eos_id!r}")
    return frozenset(ids)


@renamed_parameters(prefix="prompt")
def beam_search(step: StepFn, init_state: Any, beam_width: int, max_length: int, eos_id: int | Sequence[int] | None = None,
                length_penalty: float = 0.0, prompt: Sequence[int] = (), *, mode: str = "hf",
                early_stopping: bool | str = False, min_length: int = 0,
                stop: Callable[[list[int]], bool] | None = None,
                processors: Sequence[Callable] = ()) -> list[Hypothesis]:
    """Beam search over a left-to-right model.

    Args:
        step: ``step(state, last_tokens (n,) or None, i) -> (log_probs (n, V), state)`` giving the
            next-token log-probabilities of each of n partial sequences (i = position).
        init_state: the state for one sequence (batch of 1).
        beam_width: hypotheses kept per step, W (a beam as wide as V**max_length is exhaustive).
        max_length: tokens to generate at most (after the prompt).
        eos_id: a token, or a list of tokens, that ends a hypothesis (it is kept, and counts in its length).
        length_penalty: alpha in ``score = log_prob / length ** alpha`` (length: generated tokens);
            0 ranks by raw log-probability, 1 by the per-token average (Hugging Face's default is 1).
        prompt: tokens fed before generation (their log-probability is reported separately, as
            ``Hypothesis.prompt_log_prob``, and not part of ``log_prob`` or ``score``). Formerly
            ``prefix=`` (deprecated).
        mode: ``"hf"`` (default): Hugging Face's ``generate(num_beams=W, do_sample=False)``, step
            for step: of the 2W best extensions (``max(2, 1 + #eos) * W``), those that end (an end
            token, ``stop``, or ``max_length``) and rank among the first W join the W finished
            slots (best W scores kept), and the W best that do not end stay live — so there are always
            W live hypotheses, and the search stops when ``early_stopping`` says so. ``"shrink"``: the
            older rule — a hypothesis that ends is retired and the beam continues with fewer live
            ones (what chainrule did before; it can run out of live beams and ranks differently once
            end tokens are drawn). Without end tokens the two are the same search.
        early_stopping (mode "hf", as Hugging Face): ``False`` (default) stops once W hypotheses have
            finished and the best live one, scored at its current length, cannot beat the worst of
            them; ``True`` stops as soon as W have finished; ``"never"`` scores the live one at
            ``max_length`` when ``length_penalty > 0`` (the canonical beam search with penalty 0).
        min_length: new tokens before an end token is allowed (its log-probability is -inf until then).
        stop: ``stop(prompt + tokens) -> bool``: a hypothesis that makes it true has ended (stop
            strings: ``generate_beam(..., stop_strings=..., tokenizer=...)``), as an end token does.
        processors: applied to the next-token log-probabilities ``(ids (n, t), logp (n, V))``, as
            Hugging Face applies its logits processors in beam search (e.g.
            :class:`~chainrule.inference.processors.RepetitionPenalty`); the score sums the processed
            values, ``log_prob`` the model's own.

    Returns:
        the finished hypotheses, best score first (at most ``beam_width``).
    """
    if not isinstance(beam_width, int) or isinstance(beam_width, bool) or not 1 <= beam_width <= MAX_BEAM_WIDTH:
        raise InputError(f"beam width must be an integer in 1..{MAX_BEAM_WIDTH}, got {beam_width!r}")
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool) \
            or not math.isfinite(length_penalty):
        raise InputError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if not isinstance(max_length, int) or max_length < 1:
        raise InputError(f"max_length must be an integer >= 1, got {max_length!r}")
    if mode not in BEAM_MODES:
        raise InputError(f"beam-search mode must be one of {', '.join(BEAM_MODES)}, got {mode!r}")
    if early_stopping is not True and early_stopping is not False and early_stopping != "never":
        raise InputError(f"early_stopping must be False, True or 'never', got {early_stopping!r}")
    if not isinstance(min_length, int) or isinstance(min_length, bool) or min_length < 0:
        raise InputError(f"min_length must be an integer >= 0, got {min_length!r}")
    eos = _eos_set(eos_id)
    state, last, prompt_lp = init_state, None, 0.0
    prompt = list(prompt)
    for pos, tok in enumerate(prompt):
        logp, state = step(state, last, pos)
        prompt_lp += float(logp[0, tok])
        last = torch.tensor([tok])
    run = _hf_beams if mode == "hf" else _shrinking_beams
    return run(step, state, last, len(prompt), prompt, prompt_lp, beam_width, max_length, eos, length_penalty,
               early_stopping, min_length, stop, list(processors))


def _next_logp(step: StepFn, state: Any, last: torch.Tensor | None, pos: int, seqs: list[list[int]], prompt: list[int],
               eos: frozenset[int], t: int, min_length: int, processors: list[Callable]) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Raw and processed next-token log-probabilities ``(n, V)`` (float64) of the live hypotheses."""
    logp, state = step(state, last, pos)
    raw = torch.log_softmax(logp.double(), -1)  # the steps give log-probabilities (or logits): normalized here
    out = raw
    if processors:
        ids = torch.tensor([prompt + s for s in seqs], dtype=torch.long).reshape(len(seqs), -1)
        for proc in processors:
            out = proc(ids, out)
    if eos and t < min_length:
        out = out.clone()
        out[:, sorted(eos)] = -math.inf
    return raw, out, state


def _hf_beams(step: StepFn, state: Any, last: torch.Tensor | None, pos: int, prompt: list[int], prompt_lp: float,
              width: int, max_length: int, eos: frozenset[int], alpha: float, early_stopping: bool | str,
              min_length: int, stop: Callable[[list[int]], bool] | None, processors: list[Callable]) -> list[Hypothesis]:
    """Hugging Face's beam search for one sequence (transformers ``GenerationMixin._beam_search``).

    The W live rows start as copies of the prompt with scores ``[0, -inf, ..]``, so the first step
    extends one hypothesis; rows whose score is -inf are placeholders that never reach the output."""
    state = index_state(state, torch.zeros(width, dtype=torch.long))
    last = None if last is None else last.expand(width)
    seqs: list[list[int]] = [[] for _ in range(width)]
    scores = torch.full((width,), -math.inf, dtype=torch.float64)
    scores[0] = 0.0
    raw_sums = torch.zeros(width, dtype=torch.float64)
    finished: list[Hypothesis] = []  # at most W, best first
    keep = max(2, 1 + len(eos)) * width
    improvable = True
    for t in range(max_length):
        raw, logp, state = _next_logp(step, state, last, pos + t, seqs, prompt, eos, t, min_length, processors)
        v = logp.shape[-1]
        cand = (scores.unsqueeze(1) + logp).reshape(-1)
        top = cand.topk(min(keep, cand.numel()))
        beams, toks = (top.indices // v).tolist(), (top.indices % v).tolist()
        raw_c = (raw_sums[top.indices // v] + raw.reshape(-1)[top.indices]).tolist()
        cand_seqs = [seqs[b] + [tok] for b, tok in zip(beams, toks)]
        ends = [tok in eos or t + 1 >= max_length or (stop is not None and stop(prompt + sq))
                for tok, sq in zip(toks, cand_seqs)]
        # finished: the ending candidates among the first W (unless the slots are full and early_stopping)
        full = early_stopping is True and len(finished) == width
        new = [Hypothesis(sq, lp, val / (t + 1) ** alpha, prompt_lp)
               for i, (sq, lp, val, end) in enumerate(zip(cand_seqs, raw_c, top.values.tolist(), ends))
               if i < width and end and math.isfinite(val) and not full]
        finished = sorted(finished + new, key=lambda h: h.score, reverse=True)[:width]  # stable: older first on ties
        # live: the W best candidates that do not end
        live_scores = top.values.masked_fill(torch.tensor(ends), -math.inf)
        nxt = live_scores.topk(min(width, live_scores.numel())).indices.tolist()
        if all(ends):
            break
        state = index_state(state, torch.tensor([beams[i] for i in nxt]))
        seqs = [cand_seqs[i] for i in nxt]
        scores = live_scores[nxt]
        raw_sums = torch.tensor([raw_c[i] for i in nxt], dtype=torch.float64)
        last = torch.tensor([s[-1] for s in seqs])
        if len(nxt) < width:  # fewer candidates than W (tiny spaces): pad with placeholders
            pad = width - len(nxt)
            state = index_state(state, torch.tensor(list(range(len(nxt))) + [0] * pad))
            seqs += [list(seqs[0])] * pad
            scores = torch.cat([scores, torch.full((pad,), -math.inf, dtype=torch.float64)])
            raw_sums = torch.cat([raw_sums, torch.zeros(pad, dtype=torch.float64)])
            last = torch.cat([last, last[:1].expand(pad)])
        if len(finished) == width:
            if early_stopping is True:
                break
            best_len = max_length if (early_stopping == "never" and alpha > 0) else t + 1
            improvable = improvable and float(scores[0]) / best_len ** alpha > finished[-1].score
            if not improvable:
                break
    return finished


def _shrinking_beams(step: StepFn, state: Any, last: torch.Tensor | None, pos: int, prompt: list[int], prompt_lp: float,
                     width: int, max_length: int, eos: frozenset[int], alpha: float, early_stopping: bool | str,
                     min_length: int, stop: Callable[[list[int]], bool] | None, processors: list[Callable]) -> list[Hypothesis]:
    """The older rule: a hypothesis that ends is retired; the beam continues with the others."""
    seqs: list[list[int]] = [[]]
    scores = torch.zeros(1, dtype=torch.float64)
    raw_sums = torch.zeros(1, dtype=torch.float64)
    finished: list[Hypothesis] = []

    def score(lp: float, length: int) -> float:
        return lp / (max(length, 1) ** alpha)

    for t in range(max_length):
        raw, logp, state = _next_logp(step, state, last, pos + t, seqs, prompt, eos, t, min_length, processors)
        cand = (scores.unsqueeze(1) + logp).reshape(-1)  # (beams * V,)
        v = logp.shape[-1]
        top = cand.topk(min(width, cand.numel()))
        beams, toks = top.indices // v, top.indices % v
        raw_c = raw_sums[beams] + raw.reshape(-1)[top.indices]
        new_seqs, keep, new_scores, new_raw = [], [], [], []
        for b, tok, s, r in zip(beams.tolist(), toks.tolist(), top.values.tolist(), raw_c.tolist()):
            if not math.isfinite(s):
                continue
            seq = seqs[b] + [tok]
            if tok in eos or (stop is not None and stop(prompt + seq)):
                finished.append(Hypothesis(seq, r, score(s, len(seq)), prompt_lp))
            else:
                new_seqs.append(seq)
                keep.append(b)
                new_scores.append(s)
                new_raw.append(r)
        if not new_seqs:
            break
        state = index_state(state, torch.tensor(keep))
        seqs, last = new_seqs, torch.tensor([s[-1] for s in new_seqs])
        scores = torch.tensor(new_scores, dtype=torch.float64)
        raw_sums = torch.tensor(new_raw, dtype=torch.float64)
    else:
        finished.extend(Hypothesis(s, float(r), score(float(lp), len(s)), prompt_lp)
                        for s, lp, r in zip(seqs, scores, raw_sums))
    finished.sort(key=lambda h: h.score, reverse=True)
    return finished[:width]


def _stop_strings_fn(tokenizer: Any, strings: Sequence[str]) -> Callable[[list[int]], bool]:
    """A ``stop`` test for :func:`beam_search`: true when the last token completes one of ``strings``
    in the decoded text — an occurrence that ends inside the last token's text (it may start in
    earlier tokens, the prompt's included, and the token may run past it), as Hugging Face's
    ``StopStringCriteria`` decides."""
    strings = [s for s in strings if s]
    if isinstance(strings, str) or not strings:
        raise InputError("stop strings must be a non-empty list of non-empty strings")

    def hit(ids: list[int]) -> bool:
        text = tokenizer.decode(ids, skip_special=False)
        before = len(tokenizer.decode(ids[:-1], skip_special=False))
        return any(s in text[max(0, before - len(s) + 1):] for s in strings)

    return hit


@renamed_parameters(prefix="prompt")
@torch.no_grad()
def search_model(model: ARModel, beam_width: int, context: Any = None, prompt: Any = None, length_penalty: float = 0.0,
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
def generate_beam(model: ARModel, prompt: Sequence[int], max_new_tokens: int, beam_width: int,
                  eos_id: int | Sequence[int] | None = None, length_penalty: float = 0.0, context: Any = None, *,
                  mode: str = "hf", early_stopping: bool | str = False, min_new_tokens: int = 0,
                  stop_strings: Sequence[str] = (), tokenizer: Any = None,
                  processors: Sequence[Callable] = ()) -> list[Hypothesis]:
    """Beam search continuations of ``prompt`` within the context window: the ranked list of
    finished hypotheses (see :func:`beam_search` for the modes, scores and options).

    With ``mode="hf"`` (the default) this is Hugging Face's ``generate(prompt, num_beams=W,
    do_sample=False, num_return_sequences=W, max_new_tokens=..., eos_token_id=..., length_penalty=...,
    early_stopping=..., min_new_tokens=..., stop_strings=...)`` for a GPT-2 read with
    :func:`chainrule.interop.huggingface.load_gpt2` (its prompt after the start token), tested equal.
    Note Hugging Face's default ``length_penalty`` is 1.0, chainrule's 0.0 (rank by log-probability).
    ``stop_strings`` need the run's ``tokenizer``; ``eos_id`` may be a list of end tokens.
    """
    window = check_sequence_model(model)
    if len(prompt) + max_new_tokens > window:
        raise InputError(f"beam search needs prompt + new tokens <= the context window of {window} tokens")
    stop = None
    if stop_strings:
        if tokenizer is None:
            raise InputError("stop strings need the tokenizer that decodes the tokens")
        stop = _stop_strings_fn(tokenizer, list(stop_strings))
    was_training = model.training
    model.eval()
    try:
        def step(state: Any, last: torch.Tensor | None, i: int) -> tuple[torch.Tensor, Any]:
            params, state = model.step(state, i, None if last is None else last.to(model.device).unsqueeze(-1))
            return model.head(params).variable_logits(None, 0).cpu(), state

        return beam_search(step, model.init_state(1, model.normalize_context(context, 1)), beam_width, max_new_tokens,
                           eos_id=eos_id, length_penalty=length_penalty, prompt=list(prompt), mode=mode,
                           early_stopping=early_stopping, min_length=min_new_tokens, stop=stop, processors=processors)
    finally:
        model.train(was_training)
