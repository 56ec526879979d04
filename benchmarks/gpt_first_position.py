"""Diagnostic: does training the context-free first position cost the GPT validation loss?

chainrule's GPT models a whole 65-token window, so its training loss includes p(x_0), the first
token of a window cut at a random offset, predicted with no context. nanoGPT trains only the 64
predictions that have context. This runs ``benchmarks/tinyshakespeare.py`` (same arguments, same
output) with that one difference: the training loss leaves the first position out (the mean over
the 64 others; validation and the reported numbers are unchanged). Compare its
``val_loss_nats_per_char`` with the same seeds' ordinary runs.

    python benchmarks/gpt_first_position.py --threads 1 --seed S --precision float32 --name NAME
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tinyshakespeare  # noqa: E402

import chainrule.training.precision as precision  # noqa: E402
from chainrule.inference.likelihood import group_log_probs  # noqa: E402


def conditional_nll(model: Any, x: torch.Tensor, context: Any, dtype: torch.dtype | None,
                    channels_last: bool | None = None, net: Any = None, **call: Any) -> torch.Tensor:
    """:func:`chainrule.training.precision.network_nll` without the first position's term, scaled by
    G / (G - 1) so that the trainer's division by the dimension gives the mean over the others."""
    def forward(x: torch.Tensor, context: Any, **call: Any) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            params = (net if net is not None else model)(x, context, **call)
        return params.float()

    lp = group_log_probs(model, x, context, net=forward, **call)  # (B, G), one group per token
    return -lp[:, 1:].sum(-1) * (lp.shape[1] / (lp.shape[1] - 1))


if __name__ == "__main__":
    precision.network_nll = conditional_nll  # the trainer looks it up at every step
    tinyshakespeare.main()
