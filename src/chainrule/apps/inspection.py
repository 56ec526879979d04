"""Looking inside a model: the conditional of every variable for one input, as numbers and a figure.

For an input x this gives, per variable j (in the data's layout):

- ``prob_one``: p(x_j = 1 | x_<j) for binary data (the NADE paper's figure), else the conditional
  mean E[x_j | x_<j] (in value units);
- ``prob_observed``: the probability (density for real data) the model gave the observed x_j;
- ``nll``: -log p(x_j | x_<j), nats — where the model is surprised;
- ``step``: at which step of the ordering x_j is generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chainrule.apps.plotting import save_figure
from chainrule.errors import InputError
from chainrule.models.base import AutoregressiveModel
from chainrule.models.ensemble import Ensemble
from chainrule.orderings import inverse


@dataclass(frozen=True)
class Inspection:
    """Per-variable maps for one input, each of the event shape."""

    x: torch.Tensor
    prob_one: torch.Tensor  # binary: p(x_j = 1 | x_<j); otherwise E[x_j | x_<j]
    prob_observed: torch.Tensor
    nll: torch.Tensor
    step: torch.Tensor

    @property
    def total_nll_nats(self) -> float:
        return float(self.nll.sum())


@torch.no_grad()
def inspect_example(model: AutoregressiveModel | Ensemble, x: torch.Tensor, context: Any = None,
                    member: int | None = None) -> Inspection:
    """Per-variable conditionals of ``model`` for one example ``x`` ``(*shape)`` (an ensemble:
    member ``member``, default 0)."""
    model.eval()
    xb, _ = model.validate(x.unsqueeze(0) if tuple(x.shape) == model.shape else x)
    if len(xb) != 1:
        raise InputError(f"inspect_example takes one example of shape {model.shape}, got {tuple(x.shape)}")
    call = {"member": member or 0} if model.num_members > 1 else {}
    dist = model.head(model(xb, context, **call))  # batch shape (1, G)
    xg = model.groups.gather(xb.reshape(1, -1))
    lp = model.groups.scatter(dist.log_prob_per_variable(xg))[0]  # (D,)
    first = model.groups.scatter(dist.mean())[0]  # for binary data E[x_j] = p(x_j = 1)
    shape = model.shape
    step = inverse(model.resolve_order(**call))[model.groups.group_of.to(xb.device)]  # each variable's group's step
    return Inspection(x=xb[0].cpu(), prob_one=first.reshape(shape).cpu(), prob_observed=lp.exp().reshape(shape).cpu(),
                      nll=(-lp).reshape(shape).cpu(), step=step.reshape(shape).cpu())


def plot_inspection(ins: Inspection, path: str | Path, num_values: int | None, title: str = "") -> Path:
    """Save a figure: the input, the conditional map, p(observed) and per-variable NLL, side by side.

    Images ``(C, H, W)`` are shown per channel 0 as pictures; vectors as bar-like strips.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def as_2d(t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        if t.dim() == 3:
            return t[0]
        if t.dim() == 2:
            return t
        return t.reshape(1, -1)

    binary = num_values == 2
    panels = [("input x", ins.x, "gray"),
              ("p(x_j = 1 | x_<j)" if binary else "E[x_j | x_<j]", ins.prob_one, "viridis"),
              ("p(observed x_j | x_<j)", ins.prob_observed, "viridis"),
              (f"-log p(x_j | x_<j), nats (total {ins.total_nll_nats:.1f})", ins.nll, "magma"),
              ("generation step", ins.step, "cividis")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=100)
    for ax, (name, t, cmap) in zip(axes, panels):
        kw = {"vmin": 0, "vmax": 1} if name.startswith("p(") and num_values is not None else {}
        im = ax.imshow(as_2d(t).numpy(), cmap=cmap, interpolation="nearest", aspect="auto" if t.dim() == 1 else "equal", **kw)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
