"""The fixed random train/val/test split of data that comes in one piece (mnist5k, user files).

Labels are split with the same indices as their examples (:func:`_split_indices`).
"""

from __future__ import annotations

import numpy as np

from chainrule.errors import DataError

# Fixed seed of the random train/val/test split of mnist5k and of user files: the split must not
# change when the caller varies `seed` between training runs.
_SPLIT_SEED = 0


def _split_indices(x: np.ndarray, n_held_out: int, source: object) -> list[np.ndarray]:
    """Indices splitting ``x`` (N, ...) by a fixed permutation into ``[rest, part_1, ..., part_n]``,
    each held-out part holding 10% of the examples (at least one). ``source`` names x in errors."""
    if x.ndim == 0:
        raise DataError(f"{source}: holds a single number (a 0-d array); expected an array (N, ...) of N examples")
    if x.size == 0:
        raise DataError(f"{source}: the array is empty (shape {x.shape}); expected at least one example")
    n = len(x)
    k = max(1, n // 10)
    if n < k * n_held_out + 1:
        raise DataError(
            f"{source}: {n} examples are too few to split into {n_held_out + 1} non-empty parts "
            "(train, val, test)"
        )
    perm = np.random.default_rng(_SPLIT_SEED).permutation(n)
    n_rest = n - k * n_held_out
    return [perm[:n_rest]] + [perm[n_rest + i * k : n_rest + (i + 1) * k] for i in range(n_held_out)]


def _random_split(x: np.ndarray, n_held_out: int, source: object) -> list[np.ndarray]:
    """Split ``x`` (N, ...) by a fixed permutation into ``[rest, part_1, ..., part_n]``, each
    held-out part holding 10% of the examples (at least one). ``source`` names x in errors."""
    return [x[i] for i in _split_indices(x, n_held_out, source)]
