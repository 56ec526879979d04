"""NADE: the Neural Autoregressive Distribution Estimator (Larochelle & Murray 2011), and RNADE,
its real-valued version with a mixture of Gaussians per conditional (Uria, Murray & Larochelle 2013).

One hidden layer whose weights are shared across the conditionals:

    a_i = c + sum_{j<i} W_{:, o(j)} x_o(j)        (running pre-activation, H units)
    h_i = sigmoid(a_i)
    p(x_o(i) | x_o(<i)) = head(b_o(i) + V_o(i) h_i)

Because a_{i+1} = a_i + W_{:, o(i)} x_o(i), all D hidden states cost O(D H) together (a cumulative
sum), not O(D^2 H); the sampling step keeps a_i as its cache (O(H) per variable). With K > 2
values the inputs are one-hot and each head a softmax over K (categorical NADE); with real values
(RNADE) the head is a mixture of Gaussians.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from chainrule.errors import InputError
from chainrule.models.base import AutoregressiveModel
from chainrule.models.registry import register
from chainrule.orderings import OrderSpec


@register
class NADE(AutoregressiveModel):
    """Weight-tied one-hidden-layer autoregressive network (binary, categorical or real-valued).

    Args:
        hidden_size: H, hidden units.
        order: the ordering (see :mod:`chainrule.orderings`).
        num_orders: EoNADE (Uria et al. 2014): an ensemble over this many orderings (component 0:
            ``order``, the others seeded random ones), trained order-agnostically one ordering per
            step, evaluated by averaging the orderings' probabilities.
        seed: seed of the ensemble's random orderings.
        activation: "sigmoid" (the paper's) or "relu".
        input_encoding: "auto", "value" or "onehot".
        num_mixture_components: Gaussians per conditional for real-valued data.
    """

    name = "nade"
    supports_real = True

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, hidden_size: int = 500,
                 order: OrderSpec = "raster", num_orders: int = 1, seed: int = 0, activation: str = "sigmoid",
                 input_encoding: str = "auto", num_mixture_components: int = 1) -> None:
        super().__init__(shape, num_values, num_mixture_components)
        acts = {"sigmoid": torch.sigmoid, "relu": torch.relu}
        if activation not in acts:
            raise InputError(f"activation must be one of {', '.join(acts)}, got {activation!r}")
        self.act = acts[activation]
        self._init_order(order, num_orders, seed=seed)
        e, p, d = self._set_input_encoding(input_encoding), self.head.num_params, self.dim
        self.embed_size = e
        bound = 1.0 / math.sqrt(d * e)
        self.W = nn.Parameter(torch.empty(d, hidden_size, e).uniform_(-bound, bound))  # input weights per variable
        self.c = nn.Parameter(torch.zeros(hidden_size))
        self.V = nn.Parameter(torch.empty(d, p, hidden_size).uniform_(-1 / math.sqrt(hidden_size), 1 / math.sqrt(hidden_size)))
        self.b = nn.Parameter(torch.zeros(d, p))

    def forward_embedded(self, e: torch.Tensor) -> torch.Tensor:
        order = self.order
        e_seq = e[:, order]  # (B, D, E): variables in generation order
        contrib = torch.einsum("bie,ihe->bih", e_seq, self.W[order])  # (B, D, H)
        # exclusive cumulative sum: step i sees the contributions of steps 0..i-1 only (shifted,
        # not cumsum - contrib, which cancels catastrophically when one contribution is huge)
        a = self.c + torch.nn.functional.pad(torch.cumsum(contrib, 1)[:, :-1], (0, 0, 1, 0))
        h = self.act(a)
        seq = torch.einsum("bih,iph->bip", h, self.V[order]) + self.b[order]  # (B, D, P)
        params = torch.empty_like(seq)
        params[:, order] = seq
        return params

    def init_state(self, n: int) -> Any:
        return self.c.expand(n, -1).clone()  # the running pre-activation a_0 = c, (n, H)

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        order = self.order
        if x_prev is not None:
            j = int(order[i - 1])
            state = state + self.encode_values(x_prev) @ self.W[j].T  # (n, E) @ (E, H)
        k = int(order[i])
        return self.act(state) @ self.V[k].T + self.b[k], state


@register
class RNADE(NADE):
    """Real-valued NADE: a mixture of Gaussians per conditional (Uria et al. 2013).

    Args: as :class:`NADE`; ``num_mixture_components`` defaults to 10 and data must be real.
    """

    name = "rnade"
    supports_discrete = False

    def __init__(self, shape: tuple[int, ...], num_values: int | None = None, hidden_size: int = 100,
                 order: OrderSpec = "raster", num_orders: int = 1, seed: int = 0, activation: str = "relu",
                 num_mixture_components: int = 10) -> None:
        super().__init__(shape, num_values, hidden_size=hidden_size, order=order, num_orders=num_orders, seed=seed,
                         activation=activation, input_encoding="value", num_mixture_components=num_mixture_components)
