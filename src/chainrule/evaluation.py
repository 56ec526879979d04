"""Evaluation: exact negative log-likelihood with the unit in every name.

- ``nll_nats``: mean over examples of -log p(x), in nats per example;
- ``bits_per_dim``: the same divided by D ln 2 (D = variables per example);
- ``perplexity``: exp(nats per variable), the per-token perplexity for sequences (each example
  a window of D tokens, every token counted once).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from chainrule.errors import InputError
from chainrule.models.base import AutoregressiveModel


@dataclass(frozen=True)
class EvalResult:
    """Result of :func:`evaluate`. Every field name carries its unit."""

    nll_nats: float  # per example
    bits_per_dim: float
    perplexity: float  # per variable (token)
    num_examples: int
    dim: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"NLL {self.nll_nats:.4f} nats/example | {self.bits_per_dim:.4f} bits/dim | "
                f"perplexity {self.perplexity:.4f} per variable | {self.num_examples} examples x {self.dim} variables")


def per_example_nll(model: AutoregressiveModel, data: torch.Tensor, batch_size: int = 1024,
                    progress: bool = False, desc: str = "eval",
                    component: int | Sequence[int] | None = None) -> torch.Tensor:
    """-log p(x) in nats for every example of ``data`` ``(N, *shape)`` -> ``(N,)`` float64.

    ``component``: for an ensemble, one ordering/connectivity alone, or a sequence of them (the
    smaller ensemble); default: the whole ensemble."""
    if len(data) == 0:
        raise InputError("cannot evaluate on an empty dataset (0 examples)")
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(data), batch_size), desc=desc, disable=not progress, leave=False):
                out.append(-model.log_prob(data[start:start + batch_size], component).double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def summarize(nll: torch.Tensor, dim: int) -> EvalResult:
    """Turn per-example NLLs (nats) into an :class:`EvalResult`."""
    mean = float(nll.mean())
    return EvalResult(nll_nats=mean, bits_per_dim=mean / (dim * math.log(2)),
                      perplexity=math.exp(mean / dim), num_examples=len(nll), dim=dim)


def evaluate(model: AutoregressiveModel, data: torch.Tensor, batch_size: int = 1024,
             progress: bool = False, component: int | Sequence[int] | None = None) -> EvalResult:
    """Exact NLL of ``model`` on ``data`` ``(N, *shape)``: nats/example, bits/dim, perplexity.

    For an ensemble, ``component=k`` evaluates ordering/connectivity k alone (a sequence: the
    ensemble of those components)."""
    return summarize(per_example_nll(model, data, batch_size, progress, component=component), model.dim)


@dataclass(frozen=True)
class StreamResult:
    """Result of :func:`evaluate_stream`: per-token figures over a whole token stream."""

    nats_per_token: float
    bits_per_token: float
    perplexity: float
    num_tokens: int
    window: int
    stride: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluate_stream(model: AutoregressiveModel, stream: torch.Tensor, stride: int | None = None,
                    batch_size: int = 256, progress: bool = False) -> StreamResult:
    """Token-weighted cross-entropy of a sequence model over a long 1-D ``stream`` of token ids.

    Windows of the model's length T start every ``stride`` tokens; the first window scores all its
    tokens, every later window only its last ``stride`` tokens, so each token is scored exactly
    once and (after the first window) with at least ``T - stride`` tokens of context. ``stride = T``
    scores independent windows; smaller strides give more context at more cost. Tokens past the
    last full window are not scored.
    """
    if model.shape != (model.dim,):
        raise InputError(f"evaluate_stream needs a sequence model of shape (T,), got {model.shape}")
    t = model.dim
    stride = t if stride is None else stride
    if not 1 <= stride <= t:
        raise InputError(f"stride must be in 1..{t} (the model's window), got {stride}")
    stream = torch.as_tensor(stream).long().reshape(-1)
    if len(stream) < t:
        raise InputError(f"the stream has {len(stream)} tokens, fewer than one window of {t}")
    starts = torch.arange(0, len(stream) - t + 1, stride)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.inference_mode():
            for b in tqdm(range(0, len(starts), batch_size), disable=not progress, desc="eval", leave=False):
                s = starts[b:b + batch_size]
                windows = stream[s.unsqueeze(1) + torch.arange(t)]
                nll = -model.log_prob_per_variable(windows).double().cpu()  # (B, T)
                first = 1 if b == 0 else 0  # the very first window is scored whole
                total += float(nll[:first].sum()) + float(nll[first:, t - stride:].sum())
                count += first * t + (len(s) - first) * stride
    finally:
        model.train(was_training)
    mean = total / count
    return StreamResult(nats_per_token=mean, bits_per_token=mean / math.log(2), perplexity=math.exp(mean),
                        num_tokens=count, window=t, stride=stride)
