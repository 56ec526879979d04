"""MADE: Masked Autoencoder for Distribution Estimation (Germain, Gregor, Murray & Larochelle 2015).

An MLP whose weight masks are set by *degrees*: input variable k has degree m(k) = rank(k) + 1 (its
step in the ordering), every hidden unit a degree in [min of the layer below, D-1], and a
connection is kept iff the degree does not decrease (hidden) or strictly increases (output).
Then output j depends only on inputs generated before it::

    inputs   x1(m=1)  x2(m=2)  x3(m=3)
    hidden   h(m=1) <- x1 ;  h(m=2) <- x1, x2
    outputs  p(x2) <- h(m=1) ;  p(x3) <- h(m=1), h(m=2) ;  p(x1) <- bias only

The masks are computed from the order and the connectivity asked for at call time (``order=``,
``mask=k``): nothing is switched inside the model. With ``num_masks`` > 1, :func:`chainrule.create_model`
wraps MADE in an :class:`~chainrule.models.ensemble.Ensemble` whose member c has connectivity c
(and, with ``order_agnostic=True``, its own random ordering). Training visits one member per step;
the likelihood averages the members' *probabilities*, log (1/C) sum_c p_c(x), a normalized
likelihood (averaging logits, as some code does, is not one). With groups, "variable" reads
"group"; a context (class label) enters the first hidden layer and the output.

Incremental step (sampling, entropy coding): the first layer's pre-activation is a sum over the
inputs, so, as in NADE, it is kept and grows by the masked weight columns of the group just
revealed (O(H F) per step, not O(H D)); the layers above it are recomputed from it, and of the
output layer only the rows of the group asked for (O(H P)). A one-hidden-layer MADE then costs
what NADE costs per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from chainrule.errors import InputError
from chainrule.inference.state import Static
from chainrule.models.base import AutoregressiveModel, select_layers
from chainrule.models.config import ModelConfig, flag, input_encoding, one_of, positive, seed, sizes
from chainrule.models.registry import register
from chainrule.nn import MaskedLinear
from chainrule.orderings import inverse, make_ordering


_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


@dataclass(frozen=True)
class MADEConfig(ModelConfig):
    hidden_sizes: tuple[int, ...] = sizes(example="[500] or [500, 500]")
    num_masks: int = positive()
    order_agnostic: bool = flag()
    seed: int = seed()
    activation: str = one_of(*_ACTIVATIONS)
    direct_connections: bool = flag()
    input_encoding: str = input_encoding()


@register
class MADE(AutoregressiveModel):
    """Masked autoencoder; any number of hidden layers, any ordering, optional mask ensembles.

    Args:
        hidden_sizes: units per hidden layer, e.g. ``[500]`` or ``[500, 500]``.
        num_masks: number of connectivities; > 1 gives an ensemble over them.
        order_agnostic: ensemble members c >= 1 also get a random ordering each (seeded by ``seed``).
        seed: seed of the hidden degrees and of the order-agnostic orderings.
        activation: "relu" or "tanh" or "sigmoid".
        direct_connections: add a masked linear input -> output path (an FVSBN inside MADE).
        input_encoding: "auto", "value" or "onehot".
        common options (order, group_shape, head, num_classes, ...): see
            :class:`~chainrule.models.base.AutoregressiveModel`.
    """

    name = "made"
    supports_context = True
    supports_tensor_context = True
    supports_real = True
    any_order = True
    coding_step_since = 4  # its cached step came in format 4; older files decode by the full pass
    sparse_step_since: ClassVar[int] = 5  # format 5 codes with the sparse step; format 4 with the dense one
    coding_block_rows = 4096  # a state of 4096 x H floats is small; large blocks amortize the per-step overhead
    call_options = ("mask",)
    config_class = MADEConfig
    hparams: MADEConfig
    tiny_hyperparameters = {"hidden_sizes": [16, 16]}

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2,
                 hidden_sizes: Sequence[int] = (500,), num_masks: int = 1, order_agnostic: bool = False, seed: int = 0,
                 activation: str = "relu", direct_connections: bool = False, input_encoding: str = "auto",
                 **common: Any) -> None:
        super().__init__(shape, num_values, **common)  # validates MADEConfig too
        hidden_sizes = list(self.hparams.hidden_sizes)
        self.embed_size = e = self.set_input_encoding(input_encoding)
        self.in_features = f = e * self.group_size
        p, g = self.head.num_params, self.num_groups
        sizes = [g * f] + hidden_sizes
        self.hidden = nn.ModuleList(MaskedLinear(sizes[i], sizes[i + 1]) for i in range(len(hidden_sizes)))
        self.out = MaskedLinear(hidden_sizes[-1], g * p)
        self.direct = MaskedLinear(g * f, g * p, bias=False) if direct_connections else None
        self.act = _ACTIVATIONS[activation]()
        if self.conditional:
            self.context_hidden = nn.Linear(self.context_dim, hidden_sizes[0], bias=False)
            self.context_out = nn.Linear(self.context_dim, g * p, bias=False)
        # Hidden degrees of every connectivity, (C, sum(hidden_sizes)): drawn once and stored in
        # the checkpoint, so a loaded model has exactly the same connectivity.
        gen = torch.Generator().manual_seed(seed)
        degrees = []
        for _ in range(num_masks):
            low, per_layer = 1, []
            for h in hidden_sizes:
                low = min(low, g - 1)
                deg = torch.randint(low, g, (h,), generator=gen) if g > 1 else torch.zeros(h, dtype=torch.long)
                per_layer.append(deg)
                low = int(deg.min())
            degrees.append(torch.cat(per_layer))
        self.register_buffer("degrees", torch.stack(degrees), persistent=True)
        self._mask_cache: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def ensemble_members(self) -> list[dict[str, Any]] | None:
        """Member c: connectivity c, with the model's order (or, order-agnostic, a random one for c >= 1)."""
        hp = self.hyperparameters
        k, seed = hp.get("num_masks", 1), hp.get("seed", 0)
        if k == 1:
            return None
        orders = [self.order] + [make_ordering(f"random:{seed * 100003 + c}", self.groups.grid)
                                 if hp.get("order_agnostic", False) else self.order for c in range(1, k)]
        return [{"order": o, "mask": c} for c, o in enumerate(orders)]

    def masks(self, order: torch.Tensor, mask: int = 0) -> list[torch.Tensor]:
        """The masks of every layer (hidden..., output, direct) for an order and a connectivity.

        A hidden unit of degree m sees inputs of degree <= m; output group j (degree rank(j)+1) sees
        hidden units of degree < rank(j)+1, so group j's conditional only reads groups before it.
        """
        if not isinstance(mask, int) or isinstance(mask, bool) or not 0 <= mask < self.degrees.shape[0]:
            raise InputError(f"mask must be a connectivity index in 0..{self.degrees.shape[0] - 1}, got {mask!r}")
        cached = self._mask_cache.get(mask)
        if cached is not None and cached[0].device == order.device and torch.equal(cached[0], order):
            return cached[1]
        dtype = self.out.weight.dtype
        # built as ordinary tensors even during sampling (inference mode), so that cached masks
        # can serve a later training step
        with torch.inference_mode(False), torch.no_grad():
            order = order.clone()
            rank = inverse(order)
            deg_in = (rank + 1).repeat_interleave(self.in_features)  # every feature of group j has degree rank(j)+1
            prev, offset, masks = deg_in, 0, []
            for layer in self.hidden:
                deg = self.degrees[mask, offset:offset + layer.out_features].clone()
                masks.append((deg.unsqueeze(1) >= prev.unsqueeze(0)).to(dtype))
                prev, offset = deg, offset + layer.out_features
            deg_out = (rank + 1).repeat_interleave(self.head.num_params)
            masks.append((deg_out.unsqueeze(1) > prev.unsqueeze(0)).to(dtype))
            if self.direct is not None:
                masks.append((deg_out.unsqueeze(1) > deg_in.unsqueeze(0)).to(dtype))
        self._mask_cache = {**self._mask_cache, mask: (order, masks)}  # a pure cache, replaced whole
        return masks

    def _hidden_layers(self, x: torch.Tensor, masks: list[torch.Tensor], context: torch.Tensor | None) -> list[torch.Tensor]:
        """Every hidden layer's activations ``(B, H_l)`` for flat inputs ``x`` ``(B, G*F)``."""
        h, out = x, []
        for i, layer in enumerate(self.hidden):
            h = layer(h, masks[i])
            if i == 0 and context is not None:
                h = h + self.context_hidden(context)
            h = self.act(h)
            out.append(h)
        return out

    def forward_embedded(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None,
                         mask: int = 0) -> torch.Tensor:
        masks = self.masks(order, mask)
        b = e.shape[0]
        x = e.reshape(b, -1)  # (B, G*F)
        h = self._hidden_layers(x, masks, context)[-1]
        out = self.out(h, masks[len(self.hidden)])
        if self.direct is not None:
            out = out + self.direct(x, masks[-1])
        if context is not None:
            out = out + self.context_out(context)
        return out.reshape(b, self.num_groups, self.head.num_params)  # (B, G, P)

    # ------------------------------------------------------------------ incremental pass
    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None, mask: int = 0) -> Any:
        masks = self.masks(order, mask)
        first = self.hidden[0]
        a = first.bias.expand(n, -1).clone()  # the first layer's pre-activation with no input seen, (n, H_1)
        if context is not None:
            a = a + self.context_hidden(context)
        state = {"a": a, "h": None, "order": Static(order.tolist()), "masks": Static(masks),
                 "out": None if context is None else self.context_out(context)}  # (n, G*P) or None
        if self.direct is not None:
            state["x"] = a.new_zeros(n, self.num_groups * self.in_features)  # the inputs seen so far
        return state

    def coding_state(self, state: Any, version: int) -> Any:
        """Files of format versions before :attr:`sparse_step_since` were coded with the dense step
        (every row's first layer recomputed at every step); they decode with it."""
        return {**state, "dense": Static(True)} if version < self.sparse_step_since else state

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """Updates the state in place (a state is stepped once). The first layer's pre-activation
        ``a`` grows by the masked columns of the group just revealed; with value inputs (binary
        data) a value 0 adds nothing, so only the rows whose group is nonzero get a new ``a`` and a
        new activation ``h`` (13% of binarized MNIST's pixels). Deeper layers are recomputed; of the
        output layer only the rows of group ``order[i]``."""
        order, masks, f, p = state["order"].value, state["masks"].value, self.in_features, self.head.num_params
        first, *deeper = self.hidden  # iterating, not slicing: a ModuleList slice builds a new module
        a, h = state["a"], state["h"]
        state = dict(state)
        dense = "dense" in state  # the arithmetic of compressed-file format <= 4 (see coding_state)
        if x_prev is not None:
            j = order[i - 1]
            ex = self.encode_values(x_prev).reshape(len(x_prev), -1)  # (n, F)
            cols = slice(j * f, (j + 1) * f)
            w = first.masked_weight(masks[0])[:, cols]  # (H_1, F): group j's columns
            if self.direct is not None:
                state["x"][:, cols] = ex  # in place: a step consumes its state
            if dense:
                a = state["a"] = a + F.linear(ex, w)
            else:
                rows = None if self.input_encoding == "onehot" else ex.ne(0).any(1).nonzero().squeeze(1)
                if rows is None or len(rows) == len(ex):
                    a.addmm_(ex, w.T)
                    h = None
                elif len(rows):  # (index_put_ is 2x faster than index_copy_ on a CPU)
                    changed = torch.addmm(a.index_select(0, rows), ex.index_select(0, rows), w.T)
                    a.index_put_((rows,), changed)
                    if h is not None:
                        h.index_put_((rows,), self.act(changed))
        if dense or h is None:
            h = self.act(a)
        if not dense:
            state["h"] = h
        for layer, m in zip(deeper, masks[1:]):
            h = self.act(layer(h, m))
        k = order[i]
        rows = slice(k * p, (k + 1) * p)
        out = F.linear(h, self.out.masked_weight(masks[1 + len(deeper)])[rows], self.out.bias[rows])  # (n, P)
        if self.direct is not None:
            out = out + F.linear(state["x"], self.direct.masked_weight(masks[-1])[rows])
        if state["out"] is not None:
            out = out + state["out"][:, rows]
        return out, state

    def features(self, x: torch.Tensor, context: Any = None, layer: int | Sequence[int] = -1, order: Any = None,
                 mask: int = 0) -> torch.Tensor | list[torch.Tensor]:
        """The activations of hidden layer ``layer`` (default the last), ``(B, H_l)``: one vector per
        example, since MADE's hidden units are shared by all the conditionals (each unit's degree
        says which groups it reads); a sequence of layers gives a list of them from one pass
        (:func:`select_layers`)."""
        x, _ = self.validate(x)
        select_layers(range(len(self.hidden)), layer, "the hidden layers")  # a bad layer fails before the pass
        o = self.resolve_order(order)
        e = self.group_features(self.embed(x))
        hs = self._hidden_layers(e.reshape(e.shape[0], -1), self.masks(o, mask), self.context_features(context, x.shape[0]))
        return select_layers(hs, layer, "the hidden layers")
