"""Orderings: the permutation o in p(x) = prod_i p(x_g(o(i)) | x_g(o(<i))), over the groups of an event.

An ordering is a 1-D long tensor ``order`` of length G (the number of groups, :mod:`chainrule.groups`;
G = D when every variable is its own group): ``order[i]`` is the group generated at step i. Groups are
numbered row-major over their grid (for one variable per group: the flat row-major variable index).
A user names one by a spec:

- ``"raster"``: row-major, except that on images ``(C, H, W)`` it is **pixel-major** — pixels in
  raster order and, inside each pixel, the channels R -> G -> B (the order of PixelCNN and image
  GPT). This is every model's default.
- ``"planar"``: the flat row-major index itself; on colour images channel-planar (all R, then all
  G, then all B). Equal to ``"raster"`` for anything but multi-channel images.
- ``"reversed"``: ``"raster"`` backwards;
- ``"random"`` or ``"random:SEED"``: a seeded random permutation;
- ``"snake"``: rows alternately left-to-right and right-to-left (boustrophedon), the channels of a
  pixel together; for other shapes the same over the last axis;
- a sequence of ints: any permutation of range(G).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

from chainrule.errors import InputError

OrderSpec = str | Sequence[int] | torch.Tensor

NAMED_ORDERINGS = ("raster", "planar", "reversed", "random", "snake")


def make_ordering(spec: OrderSpec, grid: Sequence[int]) -> torch.Tensor:
    """Resolve an ordering spec for groups arranged in ``grid`` into a permutation tensor ``(G,)`` (long).

    ``grid`` is the event shape when every variable is its own group (the usual case), else
    :attr:`chainrule.groups.Grouping.grid`.
    """
    grid = tuple(int(s) for s in grid)
    g = math.prod(grid)
    if isinstance(spec, str):
        name, _, arg = spec.partition(":")
        if name == "raster" and not arg:
            return _raster(grid)
        if name == "planar" and not arg:
            return torch.arange(g)
        if name == "reversed" and not arg:
            return _raster(grid).flip(0)
        if name == "random":
            # ASCII digits only: int() would also take " 3", "3_0" and other scripts' digits
            if arg and not re.fullmatch(r"-?[0-9]+", arg):
                raise InputError(f"ordering {spec!r}: the seed after 'random:' must be an integer")
            seed = int(arg) if arg else 0
            if not -(2**63) <= seed < 2**64:  # what torch's generator takes; beyond, it overflows
                raise InputError(f"ordering {spec!r}: the seed after 'random:' must lie in -2**63..2**64-1")
            return torch.randperm(g, generator=torch.Generator().manual_seed(seed))
        if name == "snake" and not arg:
            return _snake(grid)
        raise InputError(
            f"unknown ordering {spec!r}; expected one of {', '.join(NAMED_ORDERINGS)} "
            f"('random:SEED' for a seeded random order) or a permutation of range({g})"
        )
    return validate_permutation(spec, g)


def validate_permutation(perm: Sequence[int] | torch.Tensor, d: int) -> torch.Tensor:
    """Check that ``perm`` is a permutation of range(d) and return it as a long tensor (on CPU)."""
    if not isinstance(perm, torch.Tensor) and isinstance(perm, Sequence) \
            and any(isinstance(v, bool) for v in perm):  # [0, True] would be read as [0, 1]
        raise InputError(f"an ordering must be a permutation of range({d}) of integers, got booleans in {perm!r:.80}")
    try:
        t = torch.as_tensor(perm).cpu() if isinstance(perm, torch.Tensor) else torch.as_tensor(perm)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"an ordering must be a permutation of range({d}), got {perm!r}") from None
    if t.dim() != 1 or t.numel() != d or t.is_floating_point() or t.dtype == torch.bool:
        raise InputError(
            f"an ordering must be a 1-D integer permutation of range({d}) (one entry per group), "
            f"got shape {tuple(t.shape)} of dtype {t.dtype}"
        )
    t = t.long()
    if not torch.equal(torch.sort(t).values, torch.arange(d)):
        raise InputError(f"ordering is not a permutation of range({d}): values repeat or fall outside 0..{d - 1}")
    return t


def _raster(grid: tuple[int, ...]) -> torch.Tensor:
    if len(grid) == 3 and grid[0] > 1:  # (C, H, W): pixel-major, channels inside each pixel
        c, h, w = grid
        return torch.arange(c * h * w).reshape(c, h * w).T.reshape(-1)
    return torch.arange(math.prod(grid))


def _snake(grid: tuple[int, ...]) -> torch.Tensor:
    if len(grid) == 3:  # (C, H, W): snake over pixels, channels of one pixel consecutively
        c, h, w = grid
        idx = torch.arange(c * h * w).reshape(c, h, w)
        idx[:, 1::2] = idx[:, 1::2].flip(-1)
        return idx.permute(1, 2, 0).reshape(-1)
    if len(grid) >= 2:
        idx = torch.arange(math.prod(grid)).reshape(-1, grid[-1])
        idx[1::2] = idx[1::2].flip(-1)
        return idx.reshape(-1)
    return torch.arange(grid[0] if grid else 1)


def inverse(order: torch.Tensor) -> torch.Tensor:
    """``rank[j]`` = the step at which group j is generated (the inverse permutation)."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def observed_first(observed: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The ordering that generates the ``observed`` groups ``(G,)`` bool first and the rest after,
    each part in its relative order under ``order``: conditioning on any observed subset is then a
    prefix of the new ordering (for models that take any ordering)."""
    seen = observed.to(order.device)[order]
    return torch.cat([order[seen], order[~seen]])
