"""Streaming generation: the tokens of :func:`chainrule.inference.sampling.generate` yielded as they
are drawn (``generate(..., stream=True)``), and text decoded incrementally from them.

The loop makes exactly the calls of the non-streaming one — the same cached steps, the same draws
from the same generator, the same re-priming of a sliding window — so a stream equals
``generate(...)`` with the same arguments token for token (tested); it only hands each token over
as soon as it exists. Gradients stay off inside each step only, never across a ``yield``, so the
caller's code between tokens runs in its own grad mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from chainrule.contract import ARModel
from chainrule.errors import InputError

_MAX_TOKENS_PER_CHARACTER = 4  # a UTF-8 character spans at most 4 byte tokens


def next_window(tokens: torch.Tensor, window: int, remaining: int) -> tuple[torch.Tensor, int, int]:
    """The next pass of generation through a model whose context window is ``window`` tokens.

    ``tokens``: ``(n, t)`` ids so far; ``remaining``: how many new tokens are still wanted. Returns the
    tokens the pass starts from (all of them while they fit; once the window is full, the most recent
    three quarters, so that each re-priming buys a quarter window of new tokens rather than one),
    their number ``k``, and the pass's length ``steps`` (``k`` primed positions, then ``steps - k``
    drawn ones). One schedule for :func:`chainrule.inference.sampling.generate` and
    :func:`stream_tokens`, which must agree token for token."""
    keep = max(1, (3 * window) // 4)
    start = tokens[:, -keep:] if tokens.shape[1] >= window else tokens
    k = start.shape[1]
    return start, k, min(window, k + remaining)


def stream_tokens(model: ARModel, prompt: torch.Tensor, max_new_tokens: int, num_samples: int, chain: Sequence[Callable],
                  generator: torch.Generator | None, context: Any = None, stop_tokens: Sequence[int] = (), *,
                  draw: Callable[..., torch.Tensor]) -> Iterator[torch.Tensor]:
    """Yield the new tokens of ``num_samples`` continuations of ``prompt`` (1-D ids), one
    ``(num_samples,)`` long tensor (on CPU) per position, as drawn. ``stop_tokens``: the stream ends
    after the position at which every row has drawn one of them (a row that ended keeps drawing
    until the others do; cut it at its first stop token). Arguments are those of ``generate``, checked
    there; ``draw``: the sampling loop's own draw (:func:`chainrule.inference.sampling.draw`, passed in
    so that this module does not import the one that imports it)."""
    window, n = model.dim, num_samples
    stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long)
    ended = torch.zeros(n, dtype=torch.bool)
    history = any(getattr(p, "needs_ids", False) for p in chain)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ctx = model.normalize_context(context, n)
        tokens = prompt.to(model.device).unsqueeze(0).expand(n, -1)
        produced = 0
        while produced < max_new_tokens:
            ctx_tokens, k, steps = next_window(tokens, window, max_new_tokens - produced)
            seen = ctx_tokens
            with torch.inference_mode():
                state = model.init_state(n, ctx)
            prev = None
            for i in range(steps):
                with torch.inference_mode():
                    params, state = model.step(state, i, prev)
                    if i < k:
                        vals = ctx_tokens[:, i:i + 1]
                    else:
                        vals = draw(model.head(params), chain, generator, seen if history else None).long()
                        seen = torch.cat([seen, vals], 1)
                prev = vals
                if i >= k:
                    drawn = vals[:, 0].cpu().clone()
                    yield drawn
                    if stops.numel():
                        ended |= torch.isin(drawn, stops)
                        if bool(ended.all()):
                            return
            tokens = torch.cat([tokens, seen[:, k:]], 1)
            produced += steps - k
    finally:
        model.train(was_training)


def stream_text(tokenizer: Any, prompt_ids: Sequence[int], tokens: Iterator[int],
                stop_strings: Sequence[str] = ()) -> Iterator[str]:
    """Text pieces as the tokens of one continuation arrive: the decoding of prompt + tokens so far
    minus what was already given, held back while it ends in an incomplete character (U+FFFD from a
    split UTF-8 sequence, for at most 4 tokens). Ends after the token that completes one of
    ``stop_strings`` in the new text (that token's whole text included, as Hugging Face's stop
    strings end generation). Concatenated, the pieces are ``decode(prompt + tokens)`` without the
    prompt's own text."""
    if isinstance(stop_strings, str):
        raise InputError("stop_strings must be a list of strings, not one string")
    ids = list(prompt_ids)
    given = len(tokenizer.decode(ids, skip_special=False))
    start, pending = given, 0
    for tok in tokens:
        ids.append(int(tok))
        text = tokenizer.decode(ids, skip_special=False)
        pending += 1
        if text.endswith("\ufffd") and pending < _MAX_TOKENS_PER_CHARACTER:
            continue  # part of a character: wait for the rest of its bytes
        pending = 0
        if len(text) > given:
            piece, before = text[given:], given
            given = len(text)
            yield piece
            new = text[start:]
            if any(s and s in new[max(0, before - start - len(s) + 1):] for s in stop_strings):
                return
    text = tokenizer.decode(ids, skip_special=False)
    if len(text) > given:
        yield text[given:]
