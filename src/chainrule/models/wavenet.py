"""WaveNet: dilated causal convolutions with gated units, residual and skip connections
(van den Oord et al. 2016), with the fast cached generation of Paine et al. 2016 ("Fast WaveNet").

    h_0 = W_in * shift_right(embed(x))                       (1x1; x_{-1} = a learned start vector)
    z_l = tanh(W_f,l *_d h_l) . sigmoid(W_g,l *_d h_l)        (causal conv, dilation d_l)
    h_{l+1} = h_l + W_res,l z_l ;  skip += W_skip,l z_l
    params = W_2 relu(W_1 relu(skip))

Receptive field: 1 + sum_l (kernel_size - 1) d_l inputs. Sampling keeps, per layer, a ring buffer
of its last (kernel_size - 1) d_l inputs, so a new sample costs O(layers) work instead of a
pass over the whole receptive field. The sequence is taken in the model's order (default
``"raster"``: pixel-major on images), fixed when it is built; a context (class label or tensor) is
global conditioning: a learned vector added to every position's input (van den Oord et al. 2016,
Sec. 2.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chainrule.inference.state import Static
from chainrule.models.base import AutoregressiveModel, select_layers
from chainrule.models.config import ModelConfig, integer, positive, sizes
from chainrule.models.registry import register
from chainrule.nn import CausalConv1d


@dataclass(frozen=True)
class WaveNetConfig(ModelConfig):
    dilations: tuple[int, ...] | None = sizes(optional=True)
    num_stacks: int = positive()
    layers_per_stack: int = positive()
    residual_channels: int = positive()
    skip_channels: int = positive()
    kernel_size: int = integer(2)
    embedding_size: int = positive()


@register
class WaveNet(AutoregressiveModel):
    """Gated dilated causal convolution stack over a sequence (raster order of ``shape``).

    Args:
        dilations: per-layer dilations; default ``[1, 2, 4, ..., 512]`` repeated ``num_stacks`` times.
        num_stacks: repetitions of the default dilation cycle.
        layers_per_stack: length of the cycle 1, 2, ..., 2**(layers_per_stack-1).
        residual_channels, skip_channels: widths.
        kernel_size: taps of every dilated convolution (2 in the paper).
        embedding_size: size of the input embedding (discrete data).
    """

    name = "wavenet"
    config_class = WaveNetConfig
    hparams: WaveNetConfig
    tiny_hyperparameters = {"dilations": [1, 2, 1], "residual_channels": 4, "skip_channels": 6, "embedding_size": 4}
    supports_context = True
    supports_tensor_context = True
    supports_real = True

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 256, dilations: Sequence[int] | None = None,
                 num_stacks: int = 1, layers_per_stack: int = 10, residual_channels: int = 64,
                 skip_channels: int = 128, kernel_size: int = 2, embedding_size: int = 64,
                 **common: Any) -> None:
        super().__init__(shape, num_values, **common)  # validates WaveNetConfig too
        dilations = list(self.hparams.dilations or [2 ** i for i in range(layers_per_stack)] * num_stacks)
        self.dilations, self.kernel_size = dilations, kernel_size
        r = residual_channels
        self.embedding = nn.Embedding(num_values, embedding_size) if num_values is not None else nn.Linear(1, embedding_size)
        f = embedding_size * self.group_size  # a group's inputs: its variables' embeddings side by side
        self.start = nn.Parameter(torch.zeros(f))
        self.input = nn.Conv1d(f, r, 1)
        self.context = nn.Linear(self.context_dim, r, bias=False) if self.conditional else None
        self.dilated = nn.ModuleList(CausalConv1d(r, 2 * r, kernel_size, dilation=d) for d in dilations)
        self.res = nn.ModuleList(nn.Conv1d(r, r, 1) for _ in dilations)
        self.skip = nn.ModuleList(nn.Conv1d(r, skip_channels, 1) for _ in dilations)
        self.out1 = nn.Conv1d(skip_channels, skip_channels, 1)
        self.out2 = nn.Conv1d(skip_channels, self.head.num_params, 1)

    @property
    def receptive_field(self) -> int:
        return 1 + sum((self.kernel_size - 1) * d for d in self.dilations)

    def encode_values(self, v: torch.Tensor) -> torch.Tensor:
        if self.num_values is None:
            return self.embedding(v.to(self.float_dtype).unsqueeze(-1))
        return self.embedding(v.long())

    def _gate(self, a: torch.Tensor) -> torch.Tensor:
        f, g = a.chunk(2, dim=1)
        return torch.tanh(f) * torch.sigmoid(g)

    def _stack(self, e: torch.Tensor, context: torch.Tensor | None, partial: list[torch.Tensor] | None = None
               ) -> torch.Tensor:
        """The skip sum ``(B, S_k, T)`` of a sequence of group features ``(B, T, F)`` in generation
        order (``partial``, when given, receives the running skip sum after every layer)."""
        inp = torch.cat([self.start.expand(e.shape[0], 1, -1), e[:, :-1]], 1)  # (B, T, F), shifted right
        h = self.input(inp.transpose(1, 2))  # (B, R, T)
        if self.context is not None:
            h = h + self.context(context).unsqueeze(-1)
        skip = 0.0
        for conv, res, sk in zip(self.dilated, self.res, self.skip):
            z = self._gate(conv(h))
            h = h + res(z)
            skip = skip + sk(z)
            if partial is not None:
                partial.append(skip)
        return skip

    def forward_embedded(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        skip = self._stack(self.to_generation_order(e, order), context)
        out = self.out2(F.relu(self.out1(F.relu(skip))))  # (B, P, T)
        return self.from_generation_order(out.transpose(1, 2), order)

    def features(self, x: torch.Tensor, context: Any = None,
                 layer: int | Sequence[int] = -1) -> torch.Tensor | list[torch.Tensor]:
        """The skip-connection sum over the dilated layers 0..``layer`` (default all: the sum the
        output reads) that predicts each group, ``(B, G, skip_channels)`` (group index order); a
        sequence of layers gives a list of them from one pass
        (:func:`~chainrule.models.base.select_layers`)."""
        what = f"the {len(self.dilated)} dilated layers"
        select_layers(range(len(self.dilated)), layer, what)  # a bad layer fails before the pass
        x, _ = self.validate(x)
        e = self.to_generation_order(self.group_features(self.embed(x)), self.order)
        partial: list[torch.Tensor] = []
        self._stack(e, self.context_features(context, x.shape[0]), partial)
        return select_layers(partial, layer, what,
                             lambda skip: self.from_generation_order(skip.transpose(1, 2), self.order))

    # ------------------------------------------------------------------ Fast WaveNet cache
    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None) -> Any:
        r = self.input.out_channels
        # one ring buffer per layer, (n, R, (k-1) d), zeros = the left padding of the full pass
        buffers = [torch.zeros(n, r, (self.kernel_size - 1) * d, device=self.device, dtype=self.float_dtype)
                   for d in self.dilations]
        extra = None if self.context is None else self.context(context)  # (n, R)
        return buffers, Static(0), extra

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        buffers, t, extra = state
        t = t.value
        n = buffers[0].shape[0]
        e = self.start.expand(n, -1) if x_prev is None else self.encode_values(x_prev).reshape(n, -1)
        h = F.linear(e, self.input.weight[:, :, 0], self.input.bias)  # (n, R)
        if extra is not None:
            h = h + extra
        skip = 0.0
        k = self.kernel_size
        for layer, (conv, res, sk, d) in enumerate(zip(self.dilated, self.res, self.skip, self.dilations)):
            buf = buffers[layer]  # updated in place: a step consumes its state
            size = buf.shape[-1]
            w = conv.conv.weight  # (2R, R, k); tap m reads the input at time t - (k-1-m) d
            a = F.linear(h, w[:, :, k - 1], conv.conv.bias)
            for j in range(1, k):  # past inputs t - j d, kept in the ring at (t - j d) mod size
                a = a + F.linear(buf[:, :, (t - j * d) % size], w[:, :, k - 1 - j])
            buf[:, :, t % size] = h
            z = self._gate(a.unsqueeze(-1)).squeeze(-1)
            skip = skip + F.linear(z, sk.weight[:, :, 0], sk.bias)
            h = h + F.linear(z, res.weight[:, :, 0], res.bias)
        hid = F.relu(F.linear(F.relu(skip), self.out1.weight[:, :, 0], self.out1.bias))
        return F.linear(hid, self.out2.weight[:, :, 0], self.out2.bias), (buffers, Static(t + 1), extra)
