"""FVSBN: the fully visible sigmoid belief network — one logistic regression per variable.

p(x_o(i) = 1 | x_o(<i)) = sigmoid(b_o(i) + sum_{j<i} W_{o(i), o(j)} x_o(j))

(Frey 1998; Neal 1992; Larochelle & Murray 2011, Sec. 2). With K > 2 values each conditional is a
softmax regression on the one-hot encoded predecessors, and with real values a linear-Gaussian
regression. Parameters: O(D^2 * E * P).
"""

from __future__ import annotations

from typing import Any

import torch

from chainrule.layers import MaskedLinear
from chainrule.models.base import AutoregressiveModel
from chainrule.models.registry import register
from chainrule.orderings import OrderSpec, inverse


@register
class FVSBN(AutoregressiveModel):
    """Fully visible sigmoid belief network (a masked linear map from inputs to logits).

    Args:
        shape, num_values: see :class:`~chainrule.models.base.AutoregressiveModel`.
        order: the ordering (see :mod:`chainrule.orderings`).
        num_orders: an ensemble over this many orderings (component 0: ``order``, the others
            seeded random ones), trained one ordering per step and averaged in probability.
        seed: seed of the ensemble's random orderings.
        input_encoding: "auto", "value" or "onehot".
    """

    name = "fvsbn"
    supports_real = True

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, order: OrderSpec = "raster",
                 num_orders: int = 1, seed: int = 0, input_encoding: str = "auto",
                 num_mixture_components: int = 1) -> None:
        super().__init__(shape, num_values, num_mixture_components)
        self._init_order(order, num_orders, seed=seed)
        self.embed_size = self._set_input_encoding(input_encoding)
        d, e, p = self.dim, self.embed_size, self.head.num_params
        self.linear = MaskedLinear(d * e, d * p)
        torch.nn.init.zeros_(self.linear.weight)  # start at the independent model given by the biases
        torch.nn.init.zeros_(self.linear.bias)
        self._component_changed()

    def _component_changed(self) -> None:
        rank = inverse(self.order)
        # output variable j may read input variable k iff k comes strictly before j in the order
        allowed = rank.unsqueeze(1) > rank.unsqueeze(0)  # (D_out, D_in)
        self.linear.set_mask(allowed.repeat_interleave(self.head.num_params, 0).repeat_interleave(self.embed_size, 1))

    def forward_embedded(self, e: torch.Tensor) -> torch.Tensor:
        b = e.shape[0]
        return self.linear(e.reshape(b, -1)).reshape(b, self.dim, self.head.num_params)  # (B, D, P)

    # Incremental step: keep the running pre-activation of every output; adding variable o(i-1)
    # costs one column block of W (O(D * P * E) per step instead of O(D^2 * P * E)).
    def init_state(self, n: int) -> Any:
        return self.linear.bias.expand(n, -1).clone()

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        order, e, p = self.order, self.embed_size, self.head.num_params
        if x_prev is not None:
            j = int(order[i - 1])
            ex = self.encode_values(x_prev)  # (n, E)
            cols = slice(j * e, (j + 1) * e)
            w = self.linear.weight[:, cols] * self.linear.mask[:, cols]  # (D*P, E)
            state = state + ex @ w.T
        k = int(order[i])
        return state[:, k * p:(k + 1) * p], state
