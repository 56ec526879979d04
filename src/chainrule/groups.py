"""Groups: how the variables of one example are partitioned into the conditionals of the chain rule.

An event of shape ``shape`` has D = prod(shape) variables, flattened row-major. A model factorizes

    p(x) = prod_i p(x_{g(o(i))} | x_{g(o(1))}, ..., x_{g(o(i-1))})

over G *groups* g(1..G) taken in an order o over groups (:mod:`chainrule.orderings`). Each group is
one conditional, predicted jointly by the model's output head: by default every variable is its own
group; for colour images with a joint head (PixelCNN++'s discretized logistic mixture) a group is
the C channels of one pixel.

Groups are rectangular blocks of the event: a ``group_shape`` that divides ``shape`` axis by axis.
The groups form a grid of shape ``shape // group_shape`` and are numbered row-major over it; the
variables inside a group are numbered row-major over the block. For a (3, 2, 2) RGB image::

    group_shape (1, 1, 1): 12 groups, one variable each (group j = flat variable j)
    group_shape (3, 1, 1): 4 groups (pixels, raster order), group j = (R, G, B) of pixel j
                            = flat variables (j, 4 + j, 8 + j)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from chainrule.errors import InputError

GroupSpec = str | Sequence[int] | None


class Grouping:
    """The partition of an event of ``shape`` into equal rectangular groups.

    Attributes:
        shape: the event shape.
        group_shape: the shape of one group (a block dividing ``shape``).
        grid: ``shape // group_shape``, the arrangement of the groups.
        num_groups: G = prod(grid).
        group_size: S = prod(group_shape), variables per group.
        index: ``(G, S)`` long tensor, the flat variable indices of every group.
    """

    def __init__(self, shape: Sequence[int], group_shape: GroupSpec = None) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.group_shape = resolve_group_shape(group_shape, self.shape)
        self.grid = tuple(s // g for s, g in zip(self.shape, self.group_shape))
        self.num_groups = math.prod(self.grid)
        self.group_size = math.prod(self.group_shape)
        self.dim = math.prod(self.shape)
        # Split every axis into (grid, block), then bring the grid axes first.
        n = len(self.shape)
        split = [d for pair in zip(self.grid, self.group_shape) for d in pair]
        perm = [2 * a for a in range(n)] + [2 * a + 1 for a in range(n)]
        self.index = torch.arange(self.dim).reshape(split).permute(perm).reshape(self.num_groups, self.group_size)
        self.group_of = torch.empty(self.dim, dtype=torch.long)  # (D,): the group of every variable
        self.group_of[self.index.reshape(-1)] = torch.arange(self.num_groups).repeat_interleave(self.group_size)

    @property
    def trivial(self) -> bool:
        """True when every variable is its own group (then group j is variable j)."""
        return self.group_size == 1

    def gather(self, flat: torch.Tensor) -> torch.Tensor:
        """``(B, D, ...)`` per-variable values -> ``(B, G, S, ...)`` per group."""
        if self.trivial:
            return flat.unsqueeze(2)
        return flat[:, self.index.to(flat.device)]

    def scatter(self, grouped: torch.Tensor) -> torch.Tensor:
        """``(B, G, S, ...)`` per group -> ``(B, D, ...)`` per variable (the inverse of :meth:`gather`)."""
        if self.trivial:
            return grouped.squeeze(2)
        b = grouped.shape[0]
        out = grouped.new_empty(b, self.dim, *grouped.shape[3:])
        out[:, self.index.reshape(-1).to(grouped.device)] = grouped.reshape(b, self.dim, *grouped.shape[3:])
        return out

    def variable_mask(self, group_mask: torch.Tensor) -> torch.Tensor:
        """``(..., G)`` bool per group -> ``(..., D)`` bool per variable."""
        return group_mask[..., self.group_of.to(group_mask.device)]

    def group_mask(self, variable_mask: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` bool per variable -> ``(..., G)`` per group; every group must be all-in or all-out."""
        per = variable_mask[..., self.index.to(variable_mask.device)]  # (..., G, S)
        full, any_ = per.all(-1), per.any(-1)
        if not torch.equal(full, any_):
            raise InputError(f"a mask must cover whole groups of {self.group_shape} variables (here: the "
                             f"{self.group_size} variables of a group are all observed or all unobserved)")
        return full

    def __repr__(self) -> str:
        return f"Grouping(shape={self.shape}, group_shape={self.group_shape}, groups={self.num_groups})"


def resolve_group_shape(spec: GroupSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``None`` (one variable per group), ``"pixel"`` (the C channels of a pixel of a (C, H, W)
    image) or a block shape dividing ``shape`` -> the block shape."""
    if spec is None or spec == "variable":
        return (1,) * len(shape)
    if spec == "pixel":
        if len(shape) != 3:
            raise InputError(f"group_shape='pixel' needs images of shape (C, H, W), got shape {shape}")
        return (shape[0], 1, 1)
    if isinstance(spec, str):
        raise InputError(f"group_shape must be None, 'variable', 'pixel' or a shape dividing {shape}, got {spec!r}")
    try:
        g = tuple(int(s) for s in spec)
    except (TypeError, ValueError):
        raise InputError(f"group_shape must be a tuple of positive integers, got {spec!r}") from None
    if len(g) != len(shape) or any(s < 1 for s in g) or any(n % s for n, s in zip(shape, g)):
        raise InputError(f"group_shape {g} does not divide the event shape {shape}: expected one positive "
                         f"size per axis ({len(shape)} axes) dividing that axis")
    return g
