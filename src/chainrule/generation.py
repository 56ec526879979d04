"""Generation for sequence models: continue a prompt, with the decoding filters or beam search.

A sequence model describes windows of T tokens (its context window). A continuation that fits
in the window is one cached pass; a longer one needs ``sliding=True``: the model is re-primed
with the last 3/4 of the window each time the window fills, so tokens far back are forgotten
(exactly what a model with a T-token window can see anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from chainrule.decoding import Hypothesis, beam_search, choose, processors
from chainrule.errors import InputError
from chainrule.models.base import AutoregressiveModel


def _check_sequence_model(model: AutoregressiveModel) -> int:
    if model.num_values is None:
        raise InputError("generation works on discrete tokens; this model is real-valued")
    if model.num_components > 1 or not torch.equal(model.current_order().cpu(), torch.arange(model.dim)):
        raise InputError("generation continues a sequence left to right: it needs a model in raster order")
    return model.dim


@torch.no_grad()
def generate(model: AutoregressiveModel, prompt: Sequence[int] | torch.Tensor, max_new_tokens: int,
             num_samples: int = 1, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, generator: torch.Generator | None = None,
             sliding: bool = False) -> torch.Tensor:
    """Continue ``prompt`` (token ids) by ``max_new_tokens``; returns ``(num_samples, len(prompt) + new)``.

    Raises:
        InputError: when prompt + new tokens exceed the context window T and ``sliding`` is off.
    """
    window = _check_sequence_model(model)
    model.eval()
    prompt = torch.as_tensor(list(prompt) if not isinstance(prompt, torch.Tensor) else prompt, dtype=torch.long)
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if prompt.numel() and (int(prompt.min()) < 0 or int(prompt.max()) >= model.num_values):
        raise InputError(f"prompt token ids must lie in 0..{model.num_values - 1}")
    if len(prompt) + max_new_tokens > window and not sliding:
        raise InputError(
            f"the prompt ({len(prompt)} tokens) plus {max_new_tokens} new tokens exceed the model's context window "
            f"of {window} tokens (it was trained on windows of {window}); ask for fewer tokens, or allow a sliding "
            "window (sliding=True, --sliding-window), which keeps only the most recent tokens in view"
        )
    chain = processors(temperature, top_k, top_p)
    tokens = prompt.to(model.device).unsqueeze(0).expand(num_samples, -1)
    produced = 0
    keep = max(1, (3 * window) // 4)
    while produced < max_new_tokens:
        context = tokens[:, -keep:] if tokens.shape[1] >= window else tokens
        state, prev = model.init_state(num_samples), None
        for i in range(context.shape[1]):  # prime the cache with the context
            _, state = model.step(state, i, prev)
            prev = context[:, i]
        new = []
        for i in range(context.shape[1], min(window, context.shape[1] + max_new_tokens - produced)):
            params, state = model.step(state, i, prev)
            logits = model.head(params).logits()
            prev = choose(logits, chain, generator) if chain else torch.multinomial(logits.exp(), 1, generator=generator)[:, 0]
            new.append(prev)
        tokens = torch.cat([tokens, torch.stack(new, 1)], 1)
        produced += len(new)
    return tokens.cpu()


@torch.no_grad()
def generate_beam(model: AutoregressiveModel, prompt: Sequence[int], max_new_tokens: int, beam_width: int,
                  eos_id: int | None = None, length_penalty: float = 0.0) -> list[Hypothesis]:
    """Beam search continuations of ``prompt`` within the context window (see
    :func:`chainrule.decoding.beam_search` for the scores)."""
    window = _check_sequence_model(model)
    model.eval()
    if len(prompt) + max_new_tokens > window:
        raise InputError(f"beam search needs prompt + new tokens <= the context window of {window} tokens")

    def step(state, last, i):  # noqa: ANN001, ANN202
        params, state = model.step(state, i, None if last is None else last.to(model.device))
        return model.head(params).logits(), state

    return beam_search(step, model.init_state(1), beam_width, max_new_tokens, eos_id=eos_id,
                       length_penalty=length_penalty, prefix=list(prompt))
