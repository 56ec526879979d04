"""The causal-convolution ARM of "Deep Generative Modeling" (Tomczak 2022, ch. 2).

A stack of causal 1-D convolutions over the variables taken in the model's order: the first
layer is exclusive (option A: position t sees inputs < t), the rest inclusive (option B), with
LeakyReLU between them and optional dilations (van den Oord et al. 2016, WaveNet). The output at
sequence position t holds the parameters of the conditional of variable o(t).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from chainrule.errors import InputError
from chainrule.layers import CausalConv1d
from chainrule.models.base import AutoregressiveModel
from chainrule.models.registry import register
from chainrule.orderings import OrderSpec


@register
class CausalConvARM(AutoregressiveModel):
    """Stacked causal 1-D convolutions (the book's ARM; defaults are its configuration).

    Args:
        num_layers: convolutions in the stack (>= 2): one option-A, then option-B layers.
        channels: hidden channels M.
        kernel_size: kernel of every layer.
        dilations: per-layer dilation (length ``num_layers``); default all 1 as in the book.
        order: the ordering the sequence is taken in.
        input_encoding: "value" (the book: the pixel value itself, here scaled to [0, 1]), "onehot" or "auto".
    """

    name = "causalconv"
    supports_real = True

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, num_layers: int = 4,
                 channels: int = 256, kernel_size: int = 7, dilations: Sequence[int] | None = None,
                 order: OrderSpec = "raster", input_encoding: str = "value",
                 num_mixture_components: int = 1) -> None:
        super().__init__(shape, num_values, num_mixture_components)
        if num_layers < 2:
            raise InputError(f"causalconv needs num_layers >= 2, got {num_layers}")
        dilations = list(dilations) if dilations is not None else [1] * num_layers
        if len(dilations) != num_layers:
            raise InputError(f"dilations has {len(dilations)} entries, expected num_layers={num_layers}")
        self._init_order(order)
        e = self._set_input_encoding(input_encoding)
        sizes = [e] + [channels] * (num_layers - 1) + [self.head.num_params]
        self.convs = nn.ModuleList(
            CausalConv1d(sizes[i], sizes[i + 1], kernel_size, dilation=dilations[i], exclusive=(i == 0))
            for i in range(num_layers)
        )
        self.act = nn.LeakyReLU()

    def forward_embedded(self, e: torch.Tensor) -> torch.Tensor:
        h = e[:, self.order].transpose(1, 2)  # (B, E, D), the sequence in generation order
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = self.act(h)
        seq = h.transpose(1, 2)  # (B, D, P), position t = variable order[t]
        params = torch.empty_like(seq)
        params[:, self.order] = seq
        return params
