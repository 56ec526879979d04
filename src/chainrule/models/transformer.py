"""A GPT: decoder-only Transformer with causal self-attention (Radford et al. 2018, 2019), and, on
images, image GPT over the raster sequence of pixels (Chen et al. 2020).

    h_0[t] = (t == 0 ? start : tok[x_{t-1}]) + pos[t]            (inputs shifted right by one)
    h_{l+1} = h_l + Attn(LN(h_l)) ;  h_{l+1} += MLP(LN(h_{l+1}))   (pre-norm blocks)
    p(x_t | x_<t) = softmax(LN(h_L[t]) tok^T)                     (weights tied with the embedding)

Attention uses ``torch.nn.functional.scaled_dot_product_attention`` with ``is_causal=True``
(:class:`chainrule.nn.CausalSelfAttentionBlock`). Sampling keeps a key/value cache: each new token
attends over the cached keys and values of the tokens before it instead of re-running the whole
prefix. On an image the sequence is the model's order (default ``"raster"``: pixels in raster
order, R -> G -> B inside a pixel); with groups (``group_shape="pixel"``) one token is a whole
pixel, its variables' embeddings projected to one vector. A context (class label or tensor) is a
learned vector added to every position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chainrule.errors import InputError
from chainrule.models.base import AutoregressiveModel, select_layers
from chainrule.models.config import ModelConfig, flag, one_of, positive, probability
from chainrule.models.registry import register
from chainrule.nn import CausalSelfAttentionBlock


@dataclass(frozen=True)
class GPTConfig(ModelConfig):
    """What every GPT here has (this model and :class:`~chainrule.models.sigma_gpt.SigmaGPT`)."""

    num_layers: int = positive()
    num_heads: int = positive()
    embed_dim: int = positive()
    dropout: float = probability()
    bias: bool = flag()
    tie_weights: bool = flag()

    def check(self) -> None:
        if self.embed_dim % self.num_heads:
            raise InputError(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")


@dataclass(frozen=True)
class TransformerConfig(GPTConfig):
    """The GPT's hyperparameters (defaults: :class:`Transformer`'s signature)."""

    activation: str = one_of(gelu="exact", gelu_new="tanh approximation, GPT-2")


@register
class Transformer(AutoregressiveModel):
    """GPT over a sequence ``(T,)`` or the pixel sequence of an image ``(C, H, W)`` (image GPT).

    Args:
        num_layers, num_heads, embed_dim: depth, attention heads, width (embed_dim % num_heads == 0).
        dropout: on embeddings, attention and residual branches.
        bias: biases in linear layers and LayerNorms (nanoGPT's default is False).
        tie_weights: share the output projection with the token embedding (discrete data, one
            variable per group; for K = 2 the single logit is the difference of the two tokens' scores).
        activation: the MLP's ``"gelu"`` (exact, default) or ``"gelu_new"`` (its tanh approximation,
            as GPT-2's released weights use; :mod:`chainrule.interop.huggingface`).
        common options (order, group_shape, head, num_classes, ...): see
            :class:`~chainrule.models.base.AutoregressiveModel`.
    """

    name = "transformer"
    supports_context = True
    supports_tensor_context = True
    supports_real = True
    hyperparameter_hints = {"any_order": "the Transformer that takes any order is the model sigma_gpt"}
    config_class = TransformerConfig
    tiny_hyperparameters = {"num_layers": 2, "num_heads": 2, "embed_dim": 8}

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 256, num_layers: int = 4,
                 num_heads: int = 4, embed_dim: int = 128, dropout: float = 0.0, bias: bool = False,
                 tie_weights: bool = True, activation: str = "gelu", **common: Any) -> None:
        super().__init__(shape, num_values, **common)  # validates TransformerConfig too
        self.num_heads, self.embed_dim = num_heads, embed_dim
        self.tok = nn.Embedding(num_values, embed_dim) if num_values is not None else nn.Linear(1, embed_dim)
        # a group of S variables: their embeddings side by side, projected to one token
        self.group_in = nn.Linear(self.group_size * embed_dim, embed_dim, bias=bias) if self.group_size > 1 else None
        self.pos = nn.Parameter(torch.zeros(self.num_groups, embed_dim))
        self.start = nn.Parameter(torch.zeros(embed_dim))
        self.context = nn.Linear(self.context_dim, embed_dim, bias=False) if self.conditional else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(CausalSelfAttentionBlock(embed_dim, num_heads, dropout, bias, activation)
                                    for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(embed_dim, bias=bias)
        self.tied = bool(tie_weights) and num_values is not None and self.group_size == 1 \
            and self.head.name in ("bernoulli", "categorical")
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
            return self.tok(v.to(self.float_dtype).unsqueeze(-1))
        return self.tok(v.long())

    def _tokens(self, e: torch.Tensor) -> torch.Tensor:
        """Group features ``(..., S * C)`` -> one token vector ``(..., C)``."""
        return e if self.group_in is None else self.group_in(e)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.ln_f(h)
        if self.tied:
            w = self.tok.weight
            if self.head.name == "bernoulli":  # one logit: the difference of the two token scores
                return (h @ (w[1] - w[0])).unsqueeze(-1)
            return h @ w.T
        return self.out(h)

    def _hidden(self, e: torch.Tensor, context: torch.Tensor | None) -> list[torch.Tensor]:
        """The residual stream after the embedding and after every block, each ``(B, T, C)``."""
        b, t, _ = e.shape
        x = torch.cat([self.start.expand(b, 1, -1), self._tokens(e[:, :-1])], 1) + self.pos[:t]  # shifted right
        if self.context is not None:
            x = x + self.context(context).unsqueeze(1)
        x = self.drop(x)
        out = [x]
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward_embedded(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        h = self._hidden(self.to_generation_order(e, order), context)[-1]
        return self.from_generation_order(self._logits(h), order)  # (B, G, P)

    def features(self, x: torch.Tensor, context: Any = None,
                 layer: int | Sequence[int] = -1) -> torch.Tensor | list[torch.Tensor]:
        """The residual stream after block ``layer`` (0: the embeddings; -1: the last block) at the
        position that predicts each group, ``(B, G, C)`` (group index order); a sequence of layers
        gives a list of them from one pass (:func:`select_layers`). iGPT (Chen et al. 2020) finds
        the best linear-probe features in the middle layers."""
        x, _ = self.validate(x)
        e = self.to_generation_order(self.group_features(self.embed(x)), self.order)
        hs = self._hidden(e, self.context_features(context, x.shape[0]))
        return select_layers(hs, layer, f"0 = embeddings, {len(hs) - 1} = last block",
                             lambda h: self.from_generation_order(h, self.order))

    # ------------------------------------------------------------------ key/value cache
    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None) -> Any:
        hs = self.embed_dim // self.num_heads
        shape = (n, self.num_heads, self.num_groups, hs)
        dtype = self.pos.dtype
        caches = [(torch.zeros(shape, device=self.device, dtype=dtype), torch.zeros(shape, device=self.device, dtype=dtype))
                  for _ in self.blocks]
        extra = None if self.context is None else self.context(context)  # (n, C)
        return caches, extra

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        caches, extra = state
        n = caches[0][0].shape[0]
        inp = self.start.expand(n, -1) if x_prev is None else self._tokens(self.encode_values(x_prev).reshape(n, -1))
        x = inp + self.pos[i]
        if extra is not None:
            x = x + extra
        x = x.unsqueeze(1)  # (n, 1, C)
        for block, (ck, cv) in zip(self.blocks, caches):
            x = block.step(x, ck, cv, i)
        return self._logits(x[:, 0]), state

    def step_many(self, state: Any, i: int, x_prevs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """:meth:`step` for positions i..i+m-1 (i >= 1, one variable per group) in one pass, given the
        values ``x_prevs`` ``(n, m)`` before each: parameters ``(n, m, P)`` (speculative decoding)."""
        caches, extra = state
        n, m = x_prevs.shape
        x = self.encode_values(x_prevs) + self.pos[i:i + m]
        if extra is not None:
            x = x + extra.unsqueeze(1)
        for block, (ck, cv) in zip(self.blocks, caches):
            x = block.step_many(x, ck, cv, i)
        return self._logits(x), state
