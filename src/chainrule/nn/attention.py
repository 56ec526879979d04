"""Causal self-attention: the pre-norm Transformer block of GPT, with a key/value cache step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttentionBlock(nn.Module):
    """Pre-norm Transformer block: causal multi-head self-attention and an MLP, each residual
    (Radford et al. 2019)::

        x = x + Proj(Attn(LN1(x)))      Attn: softmax(q k^T / sqrt(hs)) v, position t sees 0..t
        x = x + FC_out(GELU(FC(LN2(x))))

    ``activation``: ``"gelu"`` (exact, ``x Phi(x)``) or ``"gelu_new"`` (the tanh approximation
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` of Hendrycks & Gimpel 2016, which GPT-2's
    released weights were trained with; Hugging Face calls it ``gelu_new``).
    Attention is ``F.scaled_dot_product_attention(..., is_causal=True)`` (a boolean mask, no -1e4
    bias to learn around); under reduced-precision autocast on a CPU it runs in float32 (see
    :meth:`forward`). Shapes: ``(B, T, C)`` -> ``(B, T, C)``.
    """

    def __init__(self, dim: int, heads: int, dropout: float, bias: bool, activation: str = "gelu") -> None:
        super().__init__()
        self.heads = heads
        self.approximate = {"gelu": "none", "gelu_new": "tanh"}[activation]
        self.ln1 = nn.LayerNorm(dim, bias=bias)
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.ln2 = nn.LayerNorm(dim, bias=bias)
        self.fc = nn.Linear(dim, 4 * dim, bias=bias)
        self.fc_out = nn.Linear(4 * dim, dim, bias=bias)
        self.dropout = dropout
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        shape = (b, t, self.heads, c // self.heads)
        return tuple(z.view(shape).transpose(1, 2) for z in (q, k, v))  # each (B, nh, T, hs)

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = y.shape
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, -1)))
        return x + self.drop(self.fc_out(F.gelu(self.fc(self.ln2(x)), approximate=self.approximate)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        q, k, v = self._split(x)
        p = self.dropout if self.training else 0.0
        if q.dtype in (torch.bfloat16, torch.float16) and q.device.type == "cpu":
            # Under autocast on a CPU the attention itself runs in float32: PyTorch's bf16 flash
            # kernel there took 14.6 ms forward + backward against float32's 1.9 ms (B=12, nh=4,
            # T=64, hs=32; BENCHMARKS.md section 9), and float32 scores are also the more accurate.
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        return self._finish(x, y)

    def step(self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, t: int) -> torch.Tensor:
        """One new position ``x`` ``(n, 1, C)`` at index ``t``; writes its key/value into the caches
        ``(n, nh, T, hs)`` and attends over positions 0..t."""
        q, k, v = self._split(x)
        cache_k[:, :, t] = k[:, :, 0]
        cache_v[:, :, t] = v[:, :, 0]
        y = F.scaled_dot_product_attention(q, cache_k[:, :, :t + 1], cache_v[:, :, :t + 1])
        return self._finish(x, y)

    def extend(self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, start: torch.Tensor,
               allowed: torch.Tensor) -> torch.Tensor:
        """W new positions per example at once, after a cached prefix of a different length per example.

        ``x`` ``(n, W, C)``; ``start`` ``(n,)`` long: example b's new positions take the cache slots
        ``start[b] .. start[b] + W - 1`` (their keys/values are written there; the caches
        ``(n, nh, T, hs)`` need T >= max(start) + W); ``allowed`` ``(n, W, T')`` bool: which of the
        first T' <= T slots each new position attends to (the caller's pattern: causal, or draft
        queries that see the prefix and themselves only; T' >= max(start) + W). Used by any-order
        parallel decoding (:mod:`chainrule.inference.parallel`).
        """
        q, k, v = self._split(x)
        w = x.shape[1]
        slots = (start.unsqueeze(1) + torch.arange(w, device=x.device)).view(-1, 1, w, 1)
        slots = slots.expand(-1, cache_k.shape[1], -1, cache_k.shape[3])
        cache_k.scatter_(2, slots, k)
        cache_v.scatter_(2, slots, v)
        t = allowed.shape[-1]
        y = F.scaled_dot_product_attention(q, cache_k[:, :, :t], cache_v[:, :, :t], attn_mask=allowed.unsqueeze(1))
        return self._finish(x, y)

    def step_many(self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, t: int) -> torch.Tensor:
        """``m`` new positions ``x`` ``(n, m, C)`` at indices t..t+m-1 in one pass (speculative
        decoding's verification): writes their keys/values and attends causally over 0..t+m-1."""
        q, k, v = self._split(x)
        m = x.shape[1]
        cache_k[:, :, t:t + m] = k
        cache_v[:, :, t:t + m] = v
        mask = torch.ones(m, t + m, dtype=torch.bool, device=x.device).tril(diagonal=t)
        y = F.scaled_dot_product_attention(q, cache_k[:, :, :t + m], cache_v[:, :, :t + m], attn_mask=mask)
        return self._finish(x, y)
