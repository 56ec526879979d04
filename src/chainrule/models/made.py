"""MADE: Masked Autoencoder for Distribution Estimation (Germain, Gregor, Murray & Larochelle 2015).

An MLP whose weight masks are set by *degrees*: input variable k has degree m(k) = rank(k) + 1 (its
step in the ordering), every hidden unit a degree in [min of the layer below, D-1], and a
connection is kept iff the degree does not decrease (hidden) or strictly increases (output).
Then output j depends only on inputs generated before it::

    inputs   x1(m=1)  x2(m=2)  x3(m=3)
    hidden   h(m=1) <- x1 ;  h(m=2) <- x1, x2
    outputs  p(x2) <- h(m=1) ;  p(x3) <- h(m=1), h(m=2) ;  p(x1) <- bias only

With ``num_masks`` > 1 the model is an ensemble: component c has its own connectivity (and, with
``order_agnostic=True``, its own random ordering). Training visits one component per step; the
likelihood averages the components' *probabilities*, log (1/C) sum_c p_c(x), a normalized
likelihood (averaging logits, as some code does, is not one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from chainrule.errors import InputError
from chainrule.layers import MaskedLinear
from chainrule.models.base import AutoregressiveModel
from chainrule.models.registry import register
from chainrule.orderings import OrderSpec, inverse


@register
class MADE(AutoregressiveModel):
    """Masked autoencoder; any number of hidden layers, any ordering, optional mask ensembles.

    Args:
        hidden_sizes: units per hidden layer, e.g. ``[500]`` or ``[500, 500]``.
        order: ordering of component 0 (see :mod:`chainrule.orderings`).
        num_masks: number of connectivities (components) in the ensemble.
        order_agnostic: components c >= 1 also get a random ordering each (seeded by ``seed``).
        seed: seed of the hidden degrees and of the order-agnostic orderings.
        activation: "relu" or "tanh" or "sigmoid".
        direct_connections: add a masked linear input -> output path (an FVSBN inside MADE).
        input_encoding: "auto", "value" or "onehot".
    """

    name = "made"
    supports_real = True

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2,
                 hidden_sizes: Sequence[int] = (500,), order: OrderSpec = "raster", num_masks: int = 1,
                 order_agnostic: bool = False, seed: int = 0, activation: str = "relu",
                 direct_connections: bool = False, input_encoding: str = "auto",
                 num_mixture_components: int = 1) -> None:
        super().__init__(shape, num_values, num_mixture_components)
        hidden_sizes = [int(h) for h in hidden_sizes]
        if not hidden_sizes or min(hidden_sizes) < 1:
            raise InputError(f"hidden_sizes must be a non-empty list of positive sizes, got {hidden_sizes}")
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
        if activation not in acts:
            raise InputError(f"activation must be one of {', '.join(acts)}, got {activation!r}")
        self._init_order(order, num_masks, random_orders=order_agnostic, seed=seed)
        self.embed_size = e = self._set_input_encoding(input_encoding)
        p = self.head.num_params
        sizes = [self.dim * e] + hidden_sizes
        self.hidden = nn.ModuleList(MaskedLinear(sizes[i], sizes[i + 1]) for i in range(len(hidden_sizes)))
        self.out = MaskedLinear(hidden_sizes[-1], self.dim * p)
        self.direct = MaskedLinear(self.dim * e, self.dim * p, bias=False) if direct_connections else None
        self.act = acts[activation]()
        # Hidden degrees of every component, (C, sum(hidden_sizes)): drawn once and stored in the
        # checkpoint, so a loaded model has exactly the same connectivity.
        g = torch.Generator().manual_seed(seed)
        degrees = []
        for _ in range(num_masks):
            low, per_layer = 1, []
            for h in hidden_sizes:
                low = min(low, self.dim - 1)
                deg = torch.randint(low, self.dim, (h,), generator=g) if self.dim > 1 else torch.zeros(h, dtype=torch.long)
                per_layer.append(deg)
                low = int(deg.min())
            degrees.append(torch.cat(per_layer))
        self.register_buffer("degrees", torch.stack(degrees), persistent=True)
        self._component_changed()

    def _component_changed(self) -> None:
        """Install the masks of the current component from its ordering and hidden degrees.

        A hidden unit of degree m sees inputs of degree <= m; output j (degree rank(j)+1) sees
        hidden units of degree < rank(j)+1, so x_j's conditional only reads variables before it.
        """
        e, p = self.embed_size, self.head.num_params
        rank = inverse(self.order)
        deg_in = (rank + 1).repeat_interleave(e)  # every feature of variable j has degree rank(j)+1
        prev, offset = deg_in, 0
        for layer in self.hidden:
            deg = self.degrees[self._component, offset:offset + layer.out_features]
            layer.set_mask(deg.unsqueeze(1) >= prev.unsqueeze(0))
            prev, offset = deg, offset + layer.out_features
        deg_out = (rank + 1).repeat_interleave(p)
        self.out.set_mask(deg_out.unsqueeze(1) > prev.unsqueeze(0))
        if self.direct is not None:
            self.direct.set_mask(deg_out.unsqueeze(1) > deg_in.unsqueeze(0))

    def forward_embedded(self, e: torch.Tensor) -> torch.Tensor:
        b = e.shape[0]
        x = e.reshape(b, -1)  # (B, D*E)
        h = x
        for layer in self.hidden:
            h = self.act(layer(h))
        out = self.out(h)
        if self.direct is not None:
            out = out + self.direct(x)
        return out.reshape(b, self.dim, self.head.num_params)  # (B, D, P)
