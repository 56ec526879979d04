"""Masked linear layer: the connectivity of MADE and FVSBN, enforced inside autograd."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a 0/1 mask on every call: ``y = x (M * W)^T + b``.

    The mask is an argument, not a stored state (it follows the order or connectivity the caller
    asks for), and is applied inside autograd (never by editing ``weight.data``), so masked weights
    get exactly zero gradient and the causal structure cannot drift (Germain et al. 2015)::

        mask (out x in), order x1 -> x2 -> x3, outputs predict x1, x2, x3:
            [[0 0 0],      p(x1) reads nothing
             [1 0 0],      p(x2) reads x1
             [1 1 0]]      p(x3) reads x1, x2

    Shapes: ``x`` ``(..., in_features)`` -> ``(..., out_features)``; ``mask`` ``(out_features, in_features)``.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x, mask * self.weight, self.bias)
