"""Causal 1-D convolution: the building block of the causal-conv ARM and WaveNet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv1d(nn.Module):
    """1-D convolution whose output at position t sees only inputs at positions < t (option A,
    "exclusive", for the first layer) or <= t (option B, for the layers after it).

    It left-pads by ``dilation * (kernel_size - 1)`` (plus one more and a shift for option A) so the
    sequence length is unchanged (van den Oord et al. 2016, WaveNet; Tomczak 2022, ch. 2)::

        option B, kernel 3:   out[t] <- in[t-2], in[t-1], in[t]
        option A, kernel 3:   out[t] <- in[t-3], in[t-2], in[t-1]

    Shapes: ``x`` ``(B, C_in, T)`` -> ``(B, C_out, T)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1,
                 exclusive: bool = False, bias: bool = True) -> None:
        super().__init__()
        if kernel_size < 1 or dilation < 1:
            raise ValueError(f"kernel_size and dilation must be >= 1, got {kernel_size}, {dilation}")
        self.exclusive = exclusive
        self.pad = dilation * (kernel_size - 1) + (1 if exclusive else 0)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad, 0))
        if self.exclusive:
            x = x[..., :-1]  # shift right by one: position t no longer sees itself
        return self.conv(x)
