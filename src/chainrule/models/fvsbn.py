"""FVSBN: the fully visible sigmoid belief network — one logistic regression per variable.

p(x_o(i) = 1 | x_o(<i)) = sigmoid(b_o(i) + sum_{j<i} W_{o(i), o(j)} x_o(j))

(Frey 1998; Neal 1992; Larochelle & Murray 2011, Sec. 2). With K > 2 values each conditional is a
softmax regression on the one-hot encoded predecessors, with real values a linear-Gaussian
regression, and with groups each group's P parameters regress on the groups before it.
Parameters: O(G^2 * F * P). The weights belong to variables, not to steps, so any order can be
given at call time (the mask follows it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from chainrule.inference.state import Static
from chainrule.models.base import AutoregressiveModel
from chainrule.models.config import ModelConfig, input_encoding, positive, seed
from chainrule.models.registry import register
from chainrule.nn import MaskedLinear
from chainrule.orderings import inverse


@dataclass(frozen=True)
class FVSBNConfig(ModelConfig):
    num_orders: int = positive()
    seed: int = seed()
    input_encoding: str = input_encoding()


@register
class FVSBN(AutoregressiveModel):
    """Fully visible sigmoid belief network (a masked linear map from inputs to logits).

    Args:
        shape, num_values: see :class:`~chainrule.models.base.AutoregressiveModel` (also for the
            common options: order, group_shape, head, num_classes, ...).
        num_orders: an ensemble over this many orderings (member 0: ``order``, the others
            seeded random ones), trained one ordering per step and averaged in probability.
        seed: seed of the ensemble's random orderings.
        input_encoding: "auto", "value" or "onehot".
    """

    name = "fvsbn"
    supports_context = True
    supports_tensor_context = True
    supports_real = True
    any_order = True
    config_class = FVSBNConfig
    tiny_hyperparameters = {}  # its defaults are tiny

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, num_orders: int = 1, seed: int = 0,
                 input_encoding: str = "auto", **common: Any) -> None:
        super().__init__(shape, num_values, **common)
        self.embed_size = self.set_input_encoding(input_encoding)
        g, f, p = self.num_groups, self.embed_size * self.group_size, self.head.num_params
        self.in_features = f
        self.linear = MaskedLinear(g * f, g * p)
        torch.nn.init.zeros_(self.linear.weight)  # start at the independent model given by the biases
        torch.nn.init.zeros_(self.linear.bias)
        self.context = torch.nn.Linear(self.context_dim, g * p, bias=False) if self.conditional else None
        self._mask_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def mask(self, order: torch.Tensor) -> torch.Tensor:
        """``(G*P, G*F)``: output group g may read input group k iff k comes strictly before g."""
        cached = self._mask_cache
        if cached is not None and cached[0].device == order.device and torch.equal(cached[0], order):
            return cached[1]
        # built as an ordinary tensor even during sampling (inference mode), so that a cached mask
        # can serve a later training step
        with torch.inference_mode(False), torch.no_grad():
            order = order.clone()
            rank = inverse(order)
            allowed = rank.unsqueeze(1) > rank.unsqueeze(0)  # (G_out, G_in)
            mask = allowed.repeat_interleave(self.head.num_params, 0).repeat_interleave(self.in_features, 1)
            mask = mask.to(self.linear.weight.dtype)
        self._mask_cache = (order, mask)  # a pure cache: the same order gives the same mask
        return mask

    def forward_embedded(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        b = e.shape[0]
        out = self.linear(e.reshape(b, -1), self.mask(order))
        if self.context is not None:
            out = out + self.context(context)
        return out.reshape(b, self.num_groups, self.head.num_params)  # (B, G, P)

    # Incremental step: keep the running pre-activation of every output; adding group o(i-1)
    # costs one column block of W (O(G * P * F) per step instead of O(G^2 * P * F)).
    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None) -> Any:
        pre = self.linear.bias.expand(n, -1).clone()
        if self.context is not None:
            pre = pre + self.context(context)
        return {"pre": pre, "order": Static(order.tolist()), "mask": Static(self.mask(order))}

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        order, f, p = state["order"].value, self.in_features, self.head.num_params
        pre = state["pre"]
        if x_prev is not None:
            j = order[i - 1]
            ex = self.encode_values(x_prev).reshape(len(x_prev), -1)  # (n, F)
            cols = slice(j * f, (j + 1) * f)
            w = self.linear.weight[:, cols] * state["mask"].value[:, cols]  # (G*P, F)
            pre = pre + ex @ w.T
        k = order[i]
        return pre[:, k * p:(k + 1) * p], {**state, "pre": pre}
