"""The finite-memory autoregressive MLP (Tomczak 2022, ch. 2.2): a Markov model of order k.

One MLP, shared by every position, reads the last k variables (in the model's order) and predicts
the next one:

    p(x_o(i) | x_o(<i)) = p(x_o(i) | x_o(i-k), ..., x_o(i-1)) = head(MLP([e_{i-k}, m_{i-k}, ..., e_{i-1}, m_{i-1}]))

where e are the variables' encodings and m a 0/1 flag telling a real predecessor from the padding
before the start (so that the value 0 and "nothing yet" differ). Optionally a learned embedding of
the position i is added to the first layer (``position_embedding=True``), since on images the
pixel's place matters, and a context (class label) adds a learned vector there too. The order is
a call-time argument (the MLP reads the last k groups of whatever order it is given). The
sampling cache is the window of the last k values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chainrule.models.base import AutoregressiveModel, select_layers
from chainrule.models.config import ModelConfig, flag, input_encoding, positive, sizes
from chainrule.models.registry import register


@dataclass(frozen=True)
class FiniteMemoryMLPConfig(ModelConfig):
    memory: int = positive()
    hidden_sizes: tuple[int, ...] = sizes(example="[256, 256]")
    position_embedding: bool = flag()
    input_encoding: str = input_encoding()


@register
class FiniteMemoryMLP(AutoregressiveModel):
    """A shared MLP on the previous ``memory`` groups (an order-k Markov model).

    Args:
        memory: k, how many previous groups each conditional sees.
        hidden_sizes: units of the MLP's hidden layers.
        position_embedding: add a learned per-step bias to the first hidden layer.
        input_encoding: "auto", "value" or "onehot".
        common options (order, group_shape, head, num_classes, ...): see
            :class:`~chainrule.models.base.AutoregressiveModel`.
    """

    name = "mlp"
    config_class = FiniteMemoryMLPConfig
    hparams: FiniteMemoryMLPConfig
    tiny_hyperparameters = {"memory": 2, "hidden_sizes": [8]}
    supports_context = True
    supports_tensor_context = True
    supports_real = True
    any_order = True

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, memory: int = 8,
                 hidden_sizes: Sequence[int] = (256, 256), position_embedding: bool = True,
                 input_encoding: str = "auto", **common: Any) -> None:
        super().__init__(shape, num_values, **common)  # validates FiniteMemoryMLPConfig too
        hidden_sizes = list(self.hparams.hidden_sizes)
        self.memory = memory
        self.embed_size = e = self.set_input_encoding(input_encoding)
        self.in_features = f = e * self.group_size
        sizes = [memory * (f + 1)] + hidden_sizes
        self.layers = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(hidden_sizes)))
        self.out = nn.Linear(hidden_sizes[-1], self.head.num_params)
        self.pos = nn.Parameter(torch.zeros(self.num_groups, hidden_sizes[0])) if position_embedding else None
        self.context = nn.Linear(self.context_dim, hidden_sizes[0], bias=False) if self.conditional else None

    def _hidden(self, window: torch.Tensor, steps: torch.Tensor | slice | int, context: torch.Tensor | None) -> list[torch.Tensor]:
        """``window`` ``(B, [G,] k*(F+1))`` at generation steps ``steps`` -> every hidden layer ``(B, [G,] H_l)``."""
        h = self.layers[0](window)
        if self.pos is not None:
            h = h + self.pos[steps]
        if context is not None:
            c = self.context(context)
            h = h + (c.unsqueeze(1) if h.dim() == 3 else c)
        hs = [F.relu(h)]
        for layer in self.layers[1:]:
            hs.append(F.relu(layer(hs[-1])))
        return hs

    def _mlp(self, window: torch.Tensor, steps: torch.Tensor | slice | int, context: torch.Tensor | None) -> torch.Tensor:
        """``window`` ``(B, [G,] k*(F+1))`` at generation steps ``steps`` -> parameters ``(B, [G,] P)``."""
        return self.out(self._hidden(window, steps, context)[-1])

    def _windows(self, e: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """``(B, G, F)`` -> the window of the previous k groups of every step ``(B, G, k*(F+1))``, generation order."""
        b, g, k = e.shape[0], self.num_groups, self.memory
        flagged = torch.cat([e[:, order], e.new_ones(b, g, 1)], -1)  # (B, G, F+1), generation order
        padded = F.pad(flagged, (0, 0, k, 0))  # k zero rows (flag 0) before the start
        # window of step i = rows i .. i+k-1 of `padded` = groups at steps i-k .. i-1
        return torch.stack([padded[:, j:j + g] for j in range(k)], 2).reshape(b, g, -1)

    def forward_embedded(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        seq = self._mlp(self._windows(e, order), slice(None), context)  # (B, G, P)
        return self.from_generation_order(seq, order)

    def features(self, x: torch.Tensor, context: Any = None, layer: int | Sequence[int] = -1,
                 order: Any = None) -> torch.Tensor | list[torch.Tensor]:
        """The activations of hidden layer ``layer`` (default the last) that predict each group,
        ``(B, G, H_l)`` (group index order); a sequence of layers gives a list of them from one
        pass (:func:`select_layers`)."""
        x, _ = self.validate(x)
        select_layers(range(len(self.layers)), layer, "the hidden layers")  # a bad layer fails before the pass
        o = self.resolve_order(order)
        win = self._windows(self.group_features(self.embed(x)), o)
        hs = self._hidden(win, slice(None), self.context_features(context, x.shape[0]))
        return select_layers(hs, layer, "the hidden layers", lambda h: self.from_generation_order(h, o))

    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None) -> Any:
        window = torch.zeros(n, self.memory, self.in_features + 1, device=self.device, dtype=self.float_dtype)
        return {"window": window, "context": context}

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        window = state["window"]
        if x_prev is not None:
            enc = self.encode_values(x_prev).reshape(len(x_prev), -1)
            new = torch.cat([enc, window.new_ones(len(window), 1)], -1)  # (n, F+1)
            window = torch.cat([window[:, 1:], new.unsqueeze(1)], 1)
        return self._mlp(window.reshape(len(window), -1), i, state["context"]), {**state, "window": window}
