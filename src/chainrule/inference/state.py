"""Sampling caches: what a model's incremental step carries from one variable to the next."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Static:
    """A cache entry that is not per example (an order, a mask): reindexing the cache's rows (beam
    search keeps the rows of the surviving hypotheses) leaves it alone."""

    value: Any


def index_state(state: Any, idx: torch.Tensor) -> Any:
    """Select rows ``idx`` of every per-example tensor in a (nested) cache; :class:`Static` entries
    and plain Python values are kept as they are."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, idx.to(state.device))
    if isinstance(state, (tuple, list)):
        return type(state)(index_state(s, idx) for s in state)
    if isinstance(state, dict):
        return {k: index_state(v, idx) for k, v in state.items()}
    return state
