"""The histogram: one probability per configuration of a small discrete space.

The lookup table every course starts from: p(x) = theta_x, K**D entries. Its maximum-likelihood
estimate is counting, with add-alpha (Laplace/Lidstone) smoothing:

    theta_x = (count(x) + alpha) / (N + alpha * K**D)

As an autoregressive model its conditionals are ratios of marginals of the table,
p(x_o(i) | x_o(<i)) = p(x_o(<=i)) / p(x_o(<i)), exact for every ordering.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from chainrule.errors import InputError
from chainrule.models.base import AutoregressiveModel
from chainrule.models.registry import register
from chainrule.orderings import OrderSpec

#: Largest table the histogram agrees to build (16M entries, 64 MB of float32).
MAX_CONFIGURATIONS = 1 << 24


@register
class Histogram(AutoregressiveModel):
    """A full probability table over {0..K-1}^D (log-probabilities, learnable or counted).

    Args:
        order: the ordering of the conditionals (any: the joint is the same).
        alpha: add-alpha smoothing used by :meth:`fit_counts` (1 = Laplace).
        max_configurations: refuse spaces larger than this.
    """

    name = "histogram"
    closed_form = True  # the trainer fits it by counting, not by gradient steps

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, order: OrderSpec = "raster",
                 alpha: float = 1.0, max_configurations: int = MAX_CONFIGURATIONS) -> None:
        super().__init__(shape, num_values)
        size = self.num_values ** self.dim  # type: ignore[operator]
        if size > max_configurations:
            raise InputError(
                f"histogram: the space has {self.num_values}^{self.dim} = {size:.3g} configurations, more than "
                f"max_configurations={max_configurations:,}; a table cannot be estimated (or stored) for it — "
                "use a model that shares parameters (fvsbn, nade, made, ...)"
            )
        if alpha < 0:
            raise InputError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self._init_order(order)
        self.logits = nn.Parameter(torch.zeros(size))  # unnormalized log-probabilities, row-major

    def _log_table(self) -> torch.Tensor:
        """Normalized log-probabilities as a tensor of D axes of size K, axis i = step i of the order."""
        k = self.num_values
        table = torch.log_softmax(self.logits, 0).reshape((k,) * self.dim)
        return table.permute(*self.order.tolist())

    def forward_embedded(self, e: torch.Tensor) -> torch.Tensor:
        k, d = self.num_values, self.dim
        x_seq = (e[..., 0] * (k - 1)).round().long()[:, self.order]  # (B, D) values in generation order
        joint = self._log_table()
        seq = []
        marg, margs = joint, [joint]
        for _ in range(d - 1):  # marginals of the prefixes: log p(x_o(<=i)) as tables of i+1 axes
            marg = torch.logsumexp(marg, -1)
            margs.append(marg)
        margs.reverse()  # margs[i] has i+1 axes
        for i in range(d):
            # log p(x_o(<i), x_o(i) = v) for every v: the conditional's logits up to a constant.
            # Only the prefix x_o(<i) is read, so the model is autoregressive by construction (the
            # lookup has no gradient path: the normalization and sampling tests carry the proof).
            seq.append(margs[i][tuple(x_seq[:, :i].T)].expand(len(x_seq), k))  # (B, K)
        logits = torch.stack(seq, 1)  # (B, D, K)
        if self.head.kind == "bernoulli":
            logits = (logits[..., 1] - logits[..., 0]).unsqueeze(-1)
        params = torch.empty_like(logits)
        params[:, self.order] = logits
        return params

    @torch.no_grad()
    def fit_counts(self, data: torch.Tensor) -> None:
        """Set the table to the add-alpha estimate from ``data`` ``(N, *shape)`` (in place)."""
        x, _ = self.validate(data)
        k = self.num_values
        idx = torch.zeros(len(x), dtype=torch.long, device=x.device)
        for v in x.reshape(len(x), -1).T:  # row-major index of each configuration
            idx = idx * k + v
        counts = torch.bincount(idx, minlength=self.logits.numel()).double()
        if self.alpha == 0 and (counts == 0).any():
            # MLE: unseen configurations get probability 0 (log 0 = -inf)
            self.logits.copy_(torch.log(counts).float())
        else:
            self.logits.copy_(torch.log(counts + self.alpha).float())

    def num_configurations(self) -> int:
        return int(self.logits.numel())

    def entropy_nats(self) -> float:
        """Entropy of the table, nats."""
        lp = torch.log_softmax(self.logits.detach().double(), 0)
        return float(-(lp.exp() * lp).nansum()) if math.isfinite(float(lp.max())) else float("nan")
