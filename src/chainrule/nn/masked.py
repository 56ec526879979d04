"""Masked linear layer: the connectivity of MADE and FVSBN, enforced inside autograd."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Masked weights kept per layer, one per mask tensor (the most recent ones: coding and sampling
#: use one member's masks; a large MADE's product is tens of MB, so the cache stays small).
_CACHE_ENTRIES = 2


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a 0/1 mask: ``y = x (M * W)^T + b``.

    The mask is an argument, not a stored state (it follows the order or connectivity the caller
    asks for), and is applied inside autograd (never by editing ``weight.data``), so masked weights
    get exactly zero gradient and the causal structure cannot drift (Germain et al. 2015)::

        mask (out x in), order x1 -> x2 -> x3, outputs predict x1, x2, x3:
            [[0 0 0],      p(x1) reads nothing
             [1 0 0],      p(x2) reads x1
             [1 1 0]]      p(x3) reads x1, x2

    When no gradient is recorded (evaluation, sampling, coding), the product ``M * W`` is computed
    once per weight update and mask, not on every call: :meth:`masked_weight` keeps it, keyed on
    the weight's storage and version counter (an optimizer step, ``load_state_dict`` or ``.to()``
    changes them) and on the mask tensor itself (held, so it cannot be freed and its address
    reused) and its version. With gradients the product is formed inside autograd on every call.
    Writes through ``weight.data`` bypass the version counter (PyTorch's documented difference from
    ``detach()``) and so are not seen: change weights in place under ``torch.no_grad()``, as
    optimizers and ``load_state_dict`` do.

    Shapes: ``x`` ``(..., in_features)`` -> ``(..., out_features)``; ``mask`` ``(out_features, in_features)``.
    """

    def masked_weight(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask * weight`` ``(out_features, in_features)``; cached outside autograd (see the class)."""
        w = self.weight
        if (torch.is_grad_enabled() and w.requires_grad) or w.is_inference() or mask.is_inference():
            return mask * w  # inside autograd (or on inference tensors, which keep no version counter)
        cache: dict[int, tuple[Any, ...]] = self.__dict__.setdefault("_masked_cache", {})
        key = (w.data_ptr(), w._version, w.dtype, w.device, mask._version)
        hit = cache.get(id(mask))
        if hit is not None and hit[0] is mask and hit[1] == key:
            return hit[2]
        # an ordinary tensor even when built under inference mode, so that it can serve later no-grad calls
        with torch.inference_mode(False), torch.no_grad():
            product = mask * w
        entries = {k: v for k, v in cache.items() if k != id(mask)}
        while len(entries) >= _CACHE_ENTRIES:
            entries.pop(next(iter(entries)))
        entries[id(mask)] = (mask, key, product)
        self.__dict__["_masked_cache"] = entries  # replaced whole: a concurrent reader sees a consistent dict
        return product

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x, self.masked_weight(mask), self.bias)
