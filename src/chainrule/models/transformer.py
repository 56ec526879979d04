"""A GPT: decoder-only Transformer with causal self-attention (Radford et al. 2018, 2019), and, on
images, image GPT over the raster sequence of pixels (Chen et al. 2020).

    h_0[t] = (t == 0 ? start : tok[x_{t-1}]) + pos[t]            (inputs shifted right by one)
    h_{l+1} = h_l + Attn(LN(h_l)) ;  h_{l+1} += MLP(LN(h_{l+1}))   (pre-norm blocks)
    p(x_t | x_<t) = softmax(LN(h_L[t]) tok^T)                     (weights tied with the embedding)

Attention uses ``torch.nn.functional.scaled_dot_product_attention`` with ``is_causal=True``.
Sampling keeps a key/value cache: each new token attends over the cached keys and values of the
tokens before it instead of re-running the whole prefix.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chainrule.errors import InputError
from chainrule.models.base import AutoregressiveModel
from chainrule.models.registry import register


class _Block(nn.Module):
    """Pre-norm Transformer block: causal multi-head self-attention and an MLP, each residual."""

    def __init__(self, dim: int, heads: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.heads = heads
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
        return x + self.drop(self.fc_out(F.gelu(self.fc(self.ln2(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        q, k, v = self._split(x)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self._finish(x, y)

    def step(self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, t: int) -> torch.Tensor:
        """One new position ``x`` ``(n, 1, C)`` at index ``t``; writes its key/value into the caches."""
        q, k, v = self._split(x)
        cache_k[:, :, t] = k[:, :, 0]
        cache_v[:, :, t] = v[:, :, 0]
        y = F.scaled_dot_product_attention(q, cache_k[:, :, :t + 1], cache_v[:, :, :t + 1])  # sees positions <= t
        return self._finish(x, y)


@register
class Transformer(AutoregressiveModel):
    """GPT over a sequence ``(T,)`` or the raster sequence of an image ``(C, H, W)`` (image GPT).

    Args:
        num_layers, num_heads, embed_dim: depth, attention heads, width (embed_dim % num_heads == 0).
        dropout: on embeddings, attention and residual branches.
        bias: biases in linear layers and LayerNorms (nanoGPT's default is False).
        tie_weights: share the output projection with the token embedding (discrete data).
    """

    name = "transformer"
    supports_real = True

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 256, num_layers: int = 4,
                 num_heads: int = 4, embed_dim: int = 128, dropout: float = 0.0, bias: bool = False,
                 tie_weights: bool = True, num_mixture_components: int = 1) -> None:
        super().__init__(shape, num_values, num_mixture_components)
        if embed_dim % num_heads:
            raise InputError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        if num_layers < 1 or not 0 <= dropout < 1:
            raise InputError(f"need num_layers >= 1 and 0 <= dropout < 1, got {num_layers}, {dropout}")
        self.num_heads, self.embed_dim = num_heads, embed_dim
        self.tok = nn.Embedding(num_values, embed_dim) if num_values is not None else nn.Linear(1, embed_dim)
        self.pos = nn.Parameter(torch.zeros(self.dim, embed_dim))
        self.start = nn.Parameter(torch.zeros(embed_dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, dropout, bias) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(embed_dim, bias=bias)
        self.tied = tie_weights and num_values is not None and self.head.num_params == num_values
        self.out = None if self.tied else nn.Linear(embed_dim, self.head.num_params, bias=bias)
        self._init_weights(num_layers)

    def _init_weights(self, num_layers: int) -> None:
        # GPT-2: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * num_layers) if name.endswith(("proj.weight", "fc_out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        nn.init.normal_(self.pos, 0.0, 0.02)
        nn.init.normal_(self.start, 0.0, 0.02)

    def encode_values(self, v: torch.Tensor) -> torch.Tensor:
        if self.num_values is None:
            return self.tok(v.float().unsqueeze(-1))
        return self.tok(v.long())

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.ln_f(h)
        if self.tied:
            if self.head.kind == "bernoulli":  # one logit: the difference of the two token scores
                w = self.tok.weight
                return (h @ (w[1] - w[0])).unsqueeze(-1)
            return h @ self.tok.weight.T
        return self.out(h)

    def forward_embedded(self, e: torch.Tensor) -> torch.Tensor:
        b, t, _ = e.shape
        x = torch.cat([self.start.expand(b, 1, -1), e[:, :-1]], 1) + self.pos[:t]  # (B, T, C), shifted right
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self._logits(x)  # (B, T, P)

    # ------------------------------------------------------------------ key/value cache
    def init_state(self, n: int) -> Any:
        hs = self.embed_dim // self.num_heads
        shape = (n, self.num_heads, self.dim, hs)
        dtype = self.pos.dtype
        caches = [(torch.zeros(shape, device=self.device, dtype=dtype), torch.zeros(shape, device=self.device, dtype=dtype))
                  for _ in self.blocks]
        return caches

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        n = state[0][0].shape[0]
        inp = self.start.expand(n, -1) if x_prev is None else self.encode_values(x_prev)
        x = (inp + self.pos[i]).unsqueeze(1)  # (n, 1, C)
        for block, (ck, cv) in zip(self.blocks, state):
            x = block.step(x, ck, cv, i)
        return self._logits(x[:, 0]), state
