"""The histogram: one probability per configuration of a small discrete space.

The lookup table every course starts from: p(x) = theta_x, K**D entries. Its maximum-likelihood
estimate is counting, with add-alpha (Laplace/Lidstone) smoothing:

    theta_x = (count(x) + alpha) / (N + alpha * K**D)

As an autoregressive model its conditionals are ratios of marginals of the table,
p(x_o(i) | x_o(<i)) = p(x_o(<=i)) / p(x_o(<i)), exact for every ordering (given at call time:
the joint is the same whatever the order). A class-conditional histogram (``num_classes=Y``) keeps
one table per class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chainrule.errors import InputError
from chainrule.models.base import AutoregressiveModel
from chainrule.models.config import ModelConfig, non_negative_number, positive
from chainrule.models.registry import register

#: Largest table the histogram agrees to build (16M entries, 64 MB of float32).
MAX_CONFIGURATIONS = 1 << 24


@dataclass(frozen=True)
class HistogramConfig(ModelConfig):
    alpha: float = non_negative_number()
    max_configurations: int = positive()


@register
class Histogram(AutoregressiveModel):
    """A full probability table over {0..K-1}^D (log-probabilities, learnable or counted).

    Args:
        alpha: add-alpha smoothing used by :meth:`fit_counts` (1 = Laplace).
        max_configurations: refuse spaces larger than this.
        common options: ``order`` (any: the joint is the same), ``num_classes`` (a table per class).
    """

    name = "histogram"
    closed_form = True  # the trainer fits it by counting, not by gradient steps
    any_order = True
    supports_groups = False
    supports_context = True  # class labels only
    config_class = HistogramConfig
    tiny_hyperparameters = {}  # the suite's spaces are tiny tables

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, alpha: float = 1.0,
                 max_configurations: int = MAX_CONFIGURATIONS, **common: Any) -> None:
        super().__init__(shape, num_values, **common)  # validates HistogramConfig too
        # compared in logarithms first: K**D of a large image is an integer of millions of digits
        log10_size = self.dim * math.log10(self.num_values)  # type: ignore[arg-type]
        too_big = log10_size + math.log10(self.num_classes or 1) > math.log10(max_configurations) + 1e-9
        size = self.num_values ** self.dim if not too_big else 0  # type: ignore[operator]
        if too_big or size * (self.num_classes or 1) > max_configurations:
            exponent = math.floor(log10_size)
            shown = f"{10 ** (log10_size - exponent):.3g}e+{exponent:02d}"  # a float cannot hold 2**10000
            raise InputError(
                f"histogram: the space has {self.num_values}^{self.dim} = {shown} configurations"
                f"{f' x {self.num_classes} classes' if self.num_classes else ''}, more than "
                f"max_configurations={max_configurations:,}; a table cannot be estimated (or stored) for it — "
                "use a model that shares parameters (fvsbn, nade, made, ...)"
            )
        self.alpha = alpha
        # unnormalized log-probabilities per class, row-major over the configurations
        self.logits = nn.Parameter(torch.zeros(self.num_classes or 1, size))

    def _log_table(self, order: torch.Tensor) -> torch.Tensor:
        """Normalized log-probabilities ``(Y, K, ..., K)``: axis 0 the class, axis i+1 step i of the order."""
        k = self.num_values
        table = torch.log_softmax(self.logits, -1).reshape(-1, *((k,) * self.dim))
        return table.permute(0, *(1 + order).tolist())

    def forward_embedded(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        k, d = self.num_values, self.dim
        x_seq = (e[..., 0] * (k - 1)).round().long()[:, order]  # (B, D) values in generation order
        y = context.argmax(-1) if context is not None else torch.zeros(len(e), dtype=torch.long, device=e.device)
        marg, margs = self._log_table(order), []
        margs.append(marg)
        for _ in range(d - 1):  # marginals of the prefixes: log p(x_o(<=i)) as tables of i+1 value axes
            marg = torch.logsumexp(marg, -1)
            margs.append(marg)
        margs.reverse()  # margs[i] has i+1 value axes
        seq = []
        for i in range(d):
            # log p(x_o(<i), x_o(i) = v) for every v: the conditional's logits up to a constant.
            # Only the prefix x_o(<i) is read, so the model is autoregressive by construction (the
            # lookup has no gradient path: the normalization and sampling tests carry the proof).
            seq.append(margs[i][(y, *x_seq[:, :i].T)])  # (B, K)
        logits = torch.stack(seq, 1)  # (B, D, K)
        if self.head.name == "bernoulli":
            logits = (logits[..., 1] - logits[..., 0]).unsqueeze(-1)
        params = torch.empty_like(logits)
        params[:, order] = logits
        return params

    @torch.no_grad()
    def fit_counts(self, data: torch.Tensor, context: Any = None) -> None:
        """Set the table(s) to the add-alpha estimate from ``data`` ``(N, *shape)`` (with its class
        labels ``(N,)`` for a class-conditional histogram), in place."""
        x, _ = self.validate(data)
        y = self.normalize_context(context, len(x))
        y = torch.zeros(len(x), dtype=torch.long, device=x.device) if y is None else y
        k = self.num_values
        idx = torch.zeros(len(x), dtype=torch.long, device=x.device)
        for v in x.reshape(len(x), -1).T:  # row-major index of each configuration
            idx = idx * k + v
        size = self.logits.shape[1]
        counts = torch.bincount(y * size + idx, minlength=self.logits.numel()).double().reshape(self.logits.shape)
        if self.alpha == 0 and (counts == 0).any():
            self.logits.copy_(torch.log(counts).float())  # MLE: unseen configurations get probability 0
        else:
            self.logits.copy_(torch.log(counts + self.alpha).float())

    def num_configurations(self) -> int:
        return int(self.logits.shape[1])

    def entropy_nats(self, label: int = 0) -> float:
        """Entropy of the table (of class ``label``), nats."""
        lp = torch.log_softmax(self.logits[label].detach().double(), 0)
        return float(-(lp.exp() * lp).nansum()) if math.isfinite(float(lp.max())) else float("nan")
