"""WaveNet: dilated causal convolutions with gated units, residual and skip connections
(van den Oord et al. 2016), with the fast cached generation of Paine et al. 2016 ("Fast WaveNet").

    h_0 = W_in * shift_right(embed(x))                       (1x1; x_{-1} = a learned start vector)
    z_l = tanh(W_f,l *_d h_l) . sigmoid(W_g,l *_d h_l)        (causal conv, dilation d_l)
    h_{l+1} = h_l + W_res,l z_l ;  skip += W_skip,l z_l
    params = W_2 relu(W_1 relu(skip))

Receptive field: 1 + sum_l (kernel_size - 1) d_l inputs. Sampling keeps, per layer, a ring buffer
of its last (kernel_size - 1) d_l inputs, so a new sample costs O(layers) work instead of a
pass over the whole receptive field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chainrule.errors import InputError
from chainrule.layers import CausalConv1d
from chainrule.models.base import AutoregressiveModel
from chainrule.models.registry import register


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
    supports_real = True

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 256, dilations: Sequence[int] | None = None,
                 num_stacks: int = 1, layers_per_stack: int = 10, residual_channels: int = 64,
                 skip_channels: int = 128, kernel_size: int = 2, embedding_size: int = 64,
                 num_mixture_components: int = 1) -> None:
        super().__init__(shape, num_values, num_mixture_components)
        if dilations is None:
            dilations = [2 ** i for i in range(layers_per_stack)] * num_stacks
        dilations = [int(d) for d in dilations]
        if not dilations or min(dilations) < 1:
            raise InputError(f"dilations must be a non-empty list of positive integers, got {dilations}")
        if kernel_size < 2:
            raise InputError(f"kernel_size must be >= 2, got {kernel_size}")
        self.dilations, self.kernel_size = dilations, kernel_size
        r = residual_channels
        self.embedding = nn.Embedding(num_values, embedding_size) if num_values is not None else nn.Linear(1, embedding_size)
        self.start = nn.Parameter(torch.zeros(embedding_size))
        self.input = nn.Conv1d(embedding_size, r, 1)
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
            return self.embedding(v.float().unsqueeze(-1))
        return self.embedding(v.long())

    def _gate(self, a: torch.Tensor) -> torch.Tensor:
        f, g = a.chunk(2, dim=1)
        return torch.tanh(f) * torch.sigmoid(g)

    def forward_embedded(self, e: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([self.start.expand(e.shape[0], 1, -1), e[:, :-1]], 1)  # (B, T, E), shifted right
        h = self.input(inp.transpose(1, 2))  # (B, R, T)
        skip = 0.0
        for conv, res, sk in zip(self.dilated, self.res, self.skip):
            z = self._gate(conv(h))
            h = h + res(z)
            skip = skip + sk(z)
        out = self.out2(F.relu(self.out1(F.relu(skip))))  # (B, P, T)
        return out.transpose(1, 2)

    # ------------------------------------------------------------------ Fast WaveNet cache
    def init_state(self, n: int) -> Any:
        r = self.input.out_channels
        # one ring buffer per layer, (n, R, (k-1) d), zeros = the left padding of the full pass
        buffers = [torch.zeros(n, r, (self.kernel_size - 1) * d, device=self.device) for d in self.dilations]
        return buffers, 0

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        buffers, t = state
        n = buffers[0].shape[0]
        e = self.start.expand(n, -1) if x_prev is None else self.encode_values(x_prev)
        h = F.linear(e, self.input.weight[:, :, 0], self.input.bias)  # (n, R)
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
        return F.linear(hid, self.out2.weight[:, :, 0], self.out2.bias), (buffers, t + 1)
