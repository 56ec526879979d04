"""The causal-convolution ARM of "Deep Generative Modeling" (Tomczak 2022, ch. 2).

A stack of causal 1-D convolutions over the variables taken in the model's order: the first
layer is exclusive (option A: position t sees inputs < t), the rest inclusive (option B), with
LeakyReLU between them and optional dilations (van den Oord et al. 2016, WaveNet). The output at
sequence position t holds the parameters of the conditional of group o(t). The order is a
call-time argument; a context (class label) adds a learned bias to the first layer's output.

Incremental step (sampling, entropy coding), as in Fast WaveNet (Paine et al. 2016): every layer
keeps a ring buffer of its last (kernel_size - 1) * dilation inputs, so the output at a new
position is one product of the layer's weight with the k inputs it reads (O(layers) work per
variable instead of a pass over the sequence). The first, exclusive layer reads the sequence
shifted right by one: its input at position t is the group revealed at t - 1 (zeros at t = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chainrule.errors import InputError
from chainrule.models.base import AutoregressiveModel, select_layers
from chainrule.models.config import ModelConfig, input_encoding, integer, positive, sizes
from chainrule.models.registry import register
from chainrule.nn import CausalConv1d


@dataclass(frozen=True)
class CausalConvConfig(ModelConfig):
    num_layers: int = integer(2)
    channels: int = positive()
    kernel_size: int = positive()
    dilations: tuple[int, ...] | None = sizes(optional=True)
    input_encoding: str = input_encoding()

    def check(self) -> None:
        if self.dilations is not None and len(self.dilations) != self.num_layers:
            raise InputError(f"dilations must be {self.num_layers} positive integers (one per layer), "
                             f"got {list(self.dilations)}")


@register
class CausalConvARM(AutoregressiveModel):
    """Stacked causal 1-D convolutions (the book's ARM; defaults are its configuration).

    Args:
        num_layers: convolutions in the stack (>= 2): one option-A, then option-B layers.
        channels: hidden channels M.
        kernel_size: kernel of every layer.
        dilations: per-layer dilation (length ``num_layers``); default all 1 as in the book.
        input_encoding: "value" (the book: the pixel value itself, here scaled to [0, 1]), "onehot" or "auto".
        common options (order, group_shape, head, num_classes, ...): see
            :class:`~chainrule.models.base.AutoregressiveModel`.
    """

    name = "causalconv"
    supports_context = True
    supports_tensor_context = True
    supports_real = True
    any_order = True
    coding_step_since = 4  # its cached step came in format 4; older files decode by the full pass
    config_class = CausalConvConfig
    hparams: CausalConvConfig
    tiny_hyperparameters = {"channels": 8, "kernel_size": 3, "num_layers": 3}

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, num_layers: int = 4,
                 channels: int = 256, kernel_size: int = 7, dilations: Sequence[int] | None = None,
                 input_encoding: str = "value", **common: Any) -> None:
        super().__init__(shape, num_values, **common)  # validates CausalConvConfig too
        dilations = list(self.hparams.dilations or [1] * num_layers)
        e = self.set_input_encoding(input_encoding) * self.group_size
        sizes = [e] + [channels] * (num_layers - 1) + [self.head.num_params]
        self.convs = nn.ModuleList(
            CausalConv1d(sizes[i], sizes[i + 1], kernel_size, dilation=dilations[i], exclusive=(i == 0))
            for i in range(num_layers)
        )
        self.act = nn.LeakyReLU()
        self.context = nn.Linear(self.context_dim, channels, bias=False) if self.conditional else None

    def _hidden(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> list[torch.Tensor]:
        """Every layer's output ``(B, C_l, G)`` over the sequence in generation order."""
        h = e[:, order].transpose(1, 2)  # (B, F, G), the sequence in generation order
        out = []
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i == 0 and self.context is not None:
                h = h + self.context(context).unsqueeze(-1)
            if i < len(self.convs) - 1:
                h = self.act(h)
            out.append(h)
        return out

    def forward_embedded(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        seq = self._hidden(e, order, context)[-1].transpose(1, 2)  # (B, G, P), position t = group order[t]
        params = torch.empty_like(seq)
        params[:, order] = seq
        return params

    # ------------------------------------------------------------------ incremental pass
    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None) -> Any:
        # per layer a ring (n, C_in, (k-1) d) of its past inputs; zeros = the full pass's left padding
        buffers = [torch.zeros(n, conv.conv.in_channels, (conv.conv.kernel_size[0] - 1) * conv.conv.dilation[0],
                               device=self.device, dtype=self.float_dtype) for conv in self.convs]
        return {"buffers": buffers, "context": None if self.context is None else self.context(context)}

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        buffers, extra = state["buffers"], state["context"]
        n = buffers[0].shape[0]
        f = self.convs[0].conv.in_channels
        # the first layer's input at position i: group order[i-1] (option A's shift), zeros at i = 0
        u = buffers[0].new_zeros(n, f) if x_prev is None else self.encode_values(x_prev).reshape(n, -1)
        last = len(self.convs) - 1
        for layer, (conv, buf) in enumerate(zip(self.convs, buffers)):
            w = conv.conv.weight  # (C_out, C_in, k); tap m reads the input at i - (k-1-m) d
            k, d, size = w.shape[-1], conv.conv.dilation[0], buf.shape[-1]
            if size:
                past = buf[:, :, [(i - (k - 1 - m) * d) % size for m in range(k - 1)]]  # (n, C_in, k-1)
                window = torch.cat([past, u.unsqueeze(-1)], -1)
                buf[:, :, i % size] = u  # after reading: the slot of i - (k-1) d is no longer needed
            else:
                window = u.unsqueeze(-1)
            h = F.linear(window.reshape(n, -1), w.reshape(w.shape[0], -1), conv.conv.bias)  # (n, C_out)
            if layer == 0 and extra is not None:
                h = h + extra
            u = self.act(h) if layer < last else h
        return u, state

    def features(self, x: torch.Tensor, context: Any = None, layer: int | Sequence[int] = -1,
                 order: Any = None) -> torch.Tensor | list[torch.Tensor]:
        """The activations of hidden layer ``layer`` (0..num_layers-2; default the last) that
        predict each group, ``(B, G, C)`` (group index order; the output layer is not a feature);
        a sequence of layers gives a list of them from one pass (:func:`select_layers`)."""
        x, _ = self.validate(x)
        o = self.resolve_order(order)
        hs = self._hidden(self.group_features(self.embed(x)), o, self.context_features(context, x.shape[0]))[:-1]
        return select_layers(hs, layer, "the hidden layers",
                             lambda h: self.from_generation_order(h.transpose(1, 2), o))
