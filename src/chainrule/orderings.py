"""Orderings: the permutation o in p(x) = prod_i p(x_o(i) | x_o(<i)).

An ordering is a 1-D long tensor ``order`` of length D (the number of variables of one example,
flattened in row-major "raster" order): ``order[i]`` is the flat index of the variable generated
at step i. A user names one by a spec:

- ``"raster"`` (identity), ``"reversed"``;
- ``"random"`` or ``"random:SEED"`` (a seeded random permutation);
- ``"snake"``: for images (C, H, W), rows left-to-right then right-to-left alternately (boustrophedon),
  all channels of a pixel together; for other shapes the same over the last axis;
- a list of ints: any permutation of range(D).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from chainrule.errors import InputError

OrderSpec = str | Sequence[int]

NAMED_ORDERINGS = ("raster", "reversed", "random", "snake")


def make_ordering(spec: OrderSpec, shape: Sequence[int]) -> torch.Tensor:
    """Resolve an ordering spec for event ``shape`` into a permutation tensor ``(D,)`` (long)."""
    shape = tuple(int(s) for s in shape)
    d = 1
    for s in shape:
        d *= s
    if isinstance(spec, str):
        name, _, arg = spec.partition(":")
        if name == "raster" and not arg:
            return torch.arange(d)
        if name == "reversed" and not arg:
            return torch.arange(d - 1, -1, -1)
        if name == "random":
            try:
                seed = int(arg) if arg else 0
            except ValueError:
                raise InputError(f"ordering {spec!r}: the seed after 'random:' must be an integer") from None
            g = torch.Generator().manual_seed(seed)
            return torch.randperm(d, generator=g)
        if name == "snake" and not arg:
            return _snake(shape)
        raise InputError(
            f"unknown ordering {spec!r}; expected one of {', '.join(NAMED_ORDERINGS)} "
            "('random:SEED' for a seeded random order) or a permutation of range(D)"
        )
    return validate_permutation(spec, d)


def validate_permutation(perm: Sequence[int] | torch.Tensor, d: int) -> torch.Tensor:
    """Check that ``perm`` is a permutation of range(d) and return it as a long tensor."""
    try:
        t = torch.as_tensor(perm)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"an ordering must be a permutation of range({d}), got {perm!r}") from None
    if t.dim() != 1 or t.numel() != d or t.is_floating_point() or t.dtype == torch.bool:
        raise InputError(
            f"an ordering must be a 1-D integer permutation of range({d}) (one entry per variable), "
            f"got shape {tuple(t.shape)} of dtype {t.dtype}"
        )
    t = t.long()
    if not torch.equal(torch.sort(t).values, torch.arange(d)):
        raise InputError(f"ordering is not a permutation of range({d}): values repeat or fall outside 0..{d - 1}")
    return t


def _snake(shape: tuple[int, ...]) -> torch.Tensor:
    if len(shape) == 3:  # (C, H, W): snake over pixels, channels of one pixel consecutively
        c, h, w = shape
        idx = torch.arange(c * h * w).reshape(c, h, w)
        idx[:, 1::2] = idx[:, 1::2].flip(-1)
        return idx.permute(1, 2, 0).reshape(-1)
    if len(shape) >= 2:
        idx = torch.arange(int(torch.tensor(shape).prod())).reshape(-1, shape[-1])
        idx[1::2] = idx[1::2].flip(-1)
        return idx.reshape(-1)
    return torch.arange(shape[0] if shape else 1)


def inverse(order: torch.Tensor) -> torch.Tensor:
    """``rank[j]`` = the step at which variable j is generated (the inverse permutation)."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank
