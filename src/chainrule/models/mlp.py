"""The finite-memory autoregressive MLP (Tomczak 2022, ch. 2.2): a Markov model of order k.

One MLP, shared by every position, reads the last k variables (in the model's order) and predicts
the next one:

    p(x_o(i) | x_o(<i)) = p(x_o(i) | x_o(i-k), ..., x_o(i-1)) = head(MLP([e_{i-k}, m_{i-k}, ..., e_{i-1}, m_{i-1}]))

where e are the variables' encodings and m a 0/1 flag telling a real predecessor from the padding
before the start (so that the value 0 and "nothing yet" differ). Optionally a learned embedding of
the position i is added to the first layer (``position_embedding=True``), since on images the
pixel's place matters. The sampling cache is the window of the last k values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chainrule.errors import InputError
from chainrule.models.base import AutoregressiveModel
from chainrule.models.registry import register
from chainrule.orderings import OrderSpec


@register
class FiniteMemoryMLP(AutoregressiveModel):
    """A shared MLP on the previous ``memory`` variables (an order-k Markov model).

    Args:
        memory: k, how many previous variables each conditional sees.
        hidden_sizes: units of the MLP's hidden layers.
        position_embedding: add a learned per-position bias to the first hidden layer.
        order: the ordering (see :mod:`chainrule.orderings`).
        input_encoding: "auto", "value" or "onehot".
    """

    name = "mlp"
    supports_real = True

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, memory: int = 8,
                 hidden_sizes: Sequence[int] = (256, 256), position_embedding: bool = True,
                 order: OrderSpec = "raster", input_encoding: str = "auto", num_mixture_components: int = 1) -> None:
        super().__init__(shape, num_values, num_mixture_components)
        if memory < 1:
            raise InputError(f"memory must be >= 1, got {memory}")
        hidden_sizes = [int(h) for h in hidden_sizes]
        if not hidden_sizes or min(hidden_sizes) < 1:
            raise InputError(f"hidden_sizes must be a non-empty list of positive sizes, got {hidden_sizes}")
        self._init_order(order)
        self.memory = memory
        self.embed_size = e = self._set_input_encoding(input_encoding)
        sizes = [memory * (e + 1)] + hidden_sizes
        self.layers = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(hidden_sizes)))
        self.out = nn.Linear(hidden_sizes[-1], self.head.num_params)
        self.pos = nn.Parameter(torch.zeros(self.dim, hidden_sizes[0])) if position_embedding else None

    def _mlp(self, window: torch.Tensor, steps: torch.Tensor | slice) -> torch.Tensor:
        """``window`` ``(..., k*(E+1))`` at generation steps ``steps`` -> parameters ``(..., P)``."""
        h = self.layers[0](window)
        if self.pos is not None:
            h = h + self.pos[steps]
        h = F.relu(h)
        for layer in self.layers[1:]:
            h = F.relu(layer(h))
        return self.out(h)

    def forward_embedded(self, e: torch.Tensor) -> torch.Tensor:
        b, d, k = e.shape[0], self.dim, self.memory
        flagged = torch.cat([e[:, self.order], e.new_ones(b, d, 1)], -1)  # (B, D, E+1), generation order
        padded = F.pad(flagged, (0, 0, k, 0))  # k zero rows (flag 0) before the start
        # window of step i = rows i .. i+k-1 of `padded` = variables at steps i-k .. i-1
        win = torch.stack([padded[:, j:j + d] for j in range(k)], 2)  # (B, D, k, E+1)
        seq = self._mlp(win.reshape(b, d, -1), slice(None))  # (B, D, P)
        params = torch.empty_like(seq)
        params[:, self.order] = seq
        return params

    def init_state(self, n: int) -> Any:
        return torch.zeros(n, self.memory, self.embed_size + 1, device=self.device)  # the window

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        if x_prev is not None:
            new = torch.cat([self.encode_values(x_prev), state.new_ones(len(state), 1)], -1)  # (n, E+1)
            state = torch.cat([state[:, 1:], new.unsqueeze(1)], 1)
        return self._mlp(state.reshape(len(state), -1), i), state
