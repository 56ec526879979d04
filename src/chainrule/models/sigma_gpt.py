"""σ-GPT: a GPT that reads and writes in any order (Pannatier, Courdier & Fleuret 2024).

A causal Transformer is told, at every position of its sequence, *which* variable it reads and
*which* it predicts next. Position i of the sequence, in an order o over the groups::

    h_0[i] = (i == 0 ? start : tok[x_o(i-1)] + pos_in[o(i-1)])  +  pos_out[o(i)]   (+ context)
    h_{l+1} = Block_l(h_l)                                           (causal pre-norm blocks)
    p(x_o(i) | x_o(<i)) = head(LN(h_L[i]))                           (weights tied as in GPT)

The two learned position tables are the current token's position and the next one's (σ-GPT's
"double positional encoding"; the paper concatenates two sinusoidal halves, we add two learned
tables, the same information). Position i sees the values of o(0..i-1) and the *name* of o(i)
only, so p(x) = prod_i p(x_o(i) | x_o(<i)) is an exact, normalized likelihood in **every** order o,
given at call time (``log_prob(x, order=...)``), with the same key/value cache as the GPT.

Why σ-GPT and not XLNet's two-stream attention (Yang et al. 2019): both tell the network the next
position; XLNet does it with a second (query) stream through every layer, doubling the work of a
pass and of the cache; σ-GPT does it in the input, so it is an ordinary causal Transformer
(:class:`chainrule.nn.CausalSelfAttentionBlock`, the GPT's own blocks and cache) whose one stream
costs what the GPT's does. It also makes the parallel decoders of
:mod:`chainrule.inference.parallel` cheap: the conditional of *any* remaining variable given the
prefix is one query token (the last value, the wanted target position) against the cache.

Training is order-agnostic (as EoNADE, Uria et al. 2014): in training mode a call without an
order draws a uniformly random order for every example (``train_order="random"``, the default;
like dropout, ``model.eval()`` turns it off, and an order given explicitly is always used). The
trainer's loss is then the NLL averaged over random orders. ``num_orders=N`` builds an ensemble of
N orders (member 0: ``order``; the others seeded random ones) whose likelihood averages the
members' probabilities, as for NADE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chainrule.inference.state import Static
from chainrule.models.base import select_layers
from chainrule.models.config import one_of, positive, seed
from chainrule.models.registry import register
from chainrule.models.transformer import GPTConfig, Transformer
from chainrule.orderings import OrderSpec

TRAIN_ORDERS = ("random", "fixed")


@dataclass(frozen=True)
class SigmaGPTConfig(GPTConfig):
    """σ-GPT's hyperparameters: the GPT's (without its activation option) and its orders'."""

    num_orders: int = positive()
    seed: int = seed()
    train_order: str = one_of(*TRAIN_ORDERS)


@register
class SigmaGPT(Transformer):
    """σ-GPT: a causal Transformer with the current and the next position in its input; any order.

    Args:
        num_layers, num_heads, embed_dim: depth, attention heads, width (embed_dim % num_heads == 0).
        dropout: on embeddings, attention and residual branches.
        bias: biases in linear layers and LayerNorms.
        tie_weights: share the output projection with the token embedding (discrete data, one
            variable per group), as the GPT.
        num_orders: an ensemble over this many orders (member 0: ``order``; the others seeded random
            ones), likelihoods averaged in probability (as EoNADE).
        seed: seed of the ensemble's random orders.
        train_order: "random" (default): in training mode, a call without an order uses a fresh
            uniformly random order per example (order-agnostic training); "fixed": the model's
            ``order`` (a GPT with σ-GPT's inputs).
        common options (order, group_shape, head, num_classes, ...): see
            :class:`~chainrule.models.base.AutoregressiveModel`.
    """

    name = "sigma_gpt"
    any_order = True
    hyperparameter_hints = {"any_order": "sigma_gpt always takes any order"}
    config_class = SigmaGPTConfig
    tiny_hyperparameters = {"num_layers": 2, "num_heads": 2, "embed_dim": 8}

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 256, num_layers: int = 4,
                 num_heads: int = 4, embed_dim: int = 128, dropout: float = 0.0, bias: bool = False,
                 tie_weights: bool = True, num_orders: int = 1, seed: int = 0, train_order: str = "random",
                 **common: Any) -> None:
        super().__init__(shape, num_values, num_layers=num_layers, num_heads=num_heads, embed_dim=embed_dim,
                         dropout=dropout, bias=bias, tie_weights=tie_weights, **common)
        self.train_order = train_order
        # self.pos (the GPT's table) is the position of the variable predicted next; pos_in the
        # position of the variable read
        self.pos_in = nn.Parameter(torch.empty(self.num_groups, embed_dim).normal_(0.0, 0.02))

    # ------------------------------------------------------------------ teacher-forced pass
    def _per_example(self, order: torch.Tensor, b: int) -> torch.Tensor:
        return order.to(self.pos.device).expand(b, -1) if order.dim() == 1 else order

    def _sequence(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """The input sequence ``(B, G, C)`` in generation order; ``order`` ``(G,)`` or one per example ``(B, G)``."""
        b = e.shape[0]
        o = self._per_example(order, b)
        tok = self._tokens(e)  # (B, G, C), group index order
        seq = tok.gather(1, o.unsqueeze(-1).expand(-1, -1, tok.shape[-1]))
        read = torch.cat([self.start.expand(b, 1, -1), seq[:, :-1] + self.pos_in[o[:, :-1]]], 1)
        x = read + self.pos[o]
        if self.context is not None:
            x = x + self.context(context).unsqueeze(1)
        return self.drop(x)

    def _hidden_in(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> list[torch.Tensor]:
        """The residual stream after the embedding and after every block, each ``(B, G, C)`` (generation order)."""
        x = self._sequence(e, order, context)
        out = [x]
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    @staticmethod
    def _to_index_order(seq: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """``(B, G, F)`` in generation order ``o`` ``(B, G)`` -> group index order."""
        rank = torch.argsort(o, dim=1)
        return seq.gather(1, rank.unsqueeze(-1).expand(-1, -1, seq.shape[-1]))

    def forward_embedded(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """``(B, G, F)`` -> ``(B, G, P)``; ``order`` ``(G,)``, or ``(B, G)`` (an order per example)."""
        h = self._hidden_in(e, order, context)[-1]
        return self._to_index_order(self._logits(h), self._per_example(order, e.shape[0]))

    def forward(self, x: torch.Tensor, context: Any = None, order: OrderSpec | None = None,
                **options: Any) -> torch.Tensor:
        """As :meth:`AutoregressiveModel.forward`; in training mode without an order (the trainer's
        call) and ``train_order="random"``, each example gets a uniformly random order."""
        if not (self.training and order is None and self.train_order == "random"):
            return super().forward(x, context, order, **options)
        self.check_options(options)
        ctx = self.context_features(context, x.shape[0])
        o = torch.rand(x.shape[0], self.num_groups, device=x.device).argsort(1)
        return self.forward_embedded(self.group_features(self.embed(x)), o, ctx)

    def features(self, x: torch.Tensor, context: Any = None, layer: int | Sequence[int] = -1,
                 order: OrderSpec | None = None) -> torch.Tensor | list[torch.Tensor]:
        """The residual stream after block ``layer`` (0: the embeddings) at the position that
        predicts each group, ``(B, G, C)`` in group index order, for ``order`` (default the model's);
        a sequence of layers gives a list from one pass (:func:`select_layers`)."""
        x, _ = self.validate(x)
        o = self.resolve_order(order)
        hs = self._hidden_in(self.group_features(self.embed(x)), o, self.context_features(context, x.shape[0]))
        return select_layers(hs, layer, f"0 = embeddings, {len(hs) - 1} = last block",
                             lambda h: self._to_index_order(h, self._per_example(o, h.shape[0])))

    # ------------------------------------------------------------------ key/value cache
    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None) -> Any:
        caches, extra = super().new_state(n, order, context)
        return {"caches": caches, "extra": extra, "order": Static(order)}

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        caches, extra, o = state["caches"], state["extra"], state["order"].value
        n = caches[0][0].shape[0]
        if x_prev is None:
            inp = self.start.expand(n, -1)
        else:
            inp = self._tokens(self.encode_values(x_prev).reshape(n, -1)) + self.pos_in[o[i - 1]]
        x = inp + self.pos[o[i]]
        if extra is not None:
            x = x + extra
        x = x.unsqueeze(1)  # (n, 1, C)
        for block, (ck, cv) in zip(self.blocks, caches):
            x = block.step(x, ck, cv, i)
        return self._logits(x[:, 0]), state

    # ------------------------------------------------------------------ parallel decoding (chainrule.inference.parallel)
    def parallel_state(self, n: int, context: torch.Tensor | None, capacity: int) -> dict[str, Any]:
        """An empty cache of ``capacity`` slots for ``n`` examples whose prefixes grow at different
        speeds (the slots of example b past its prefix are scratch space)."""
        hs = self.embed_dim // self.num_heads
        shape = (n, self.num_heads, capacity, hs)
        caches = [(torch.zeros(shape, device=self.device, dtype=self.pos.dtype),
                   torch.zeros(shape, device=self.device, dtype=self.pos.dtype)) for _ in self.blocks]
        return {"caches": caches, "extra": None if self.context is None else self.context(context)}

    def parallel_pass(self, state: dict[str, Any], values: torch.Tensor, read: torch.Tensor, target: torch.Tensor,
                      start: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """One pass over W tokens per example after its cached prefix; returns their conditionals' parameters.

        ``values`` ``(n, W, S)``: the values read by each token, at groups ``read`` ``(n, W)`` (-1:
        the start token); ``target`` ``(n, W)``: the group each token predicts; ``start`` ``(n,)``:
        the length of example b's cached prefix (its tokens take slots start..start+W-1);
        ``allowed`` ``(n, W, T)``: the slots each token attends to. Returns ``(n, W, P)``.
        """
        n, w = read.shape
        emb = self._tokens(self.encode_values(values).reshape(n, w, -1)) + self.pos_in[read.clamp(min=0)]
        x = torch.where((read < 0).unsqueeze(-1), self.start.expand(n, w, -1), emb) + self.pos[target]
        if state["extra"] is not None:
            x = x + state["extra"].unsqueeze(1)
        for block, (ck, cv) in zip(self.blocks, state["caches"]):
            x = block.extend(x, ck, cv, start, allowed)
        return self._logits(x)
