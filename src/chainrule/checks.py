"""Built-in correctness checks that every chainrule model passes (and a user's own model can run).

- :func:`check_autoregressive`: the conditional of variable o(i) has exactly zero gradient with
  respect to the inputs o(i), o(i+1), ... (for every component of an ensemble);
- :func:`normalization_total`: sum of exp(log_prob) over every configuration of a tiny space;
- :func:`check_step_matches_forward`: the incremental (cached) step gives the same conditionals as
  the teacher-forced pass.

Each raises :class:`AssertionError` with the offending positions when the property fails.
"""

from __future__ import annotations

import itertools

import torch

from chainrule.models.base import AutoregressiveModel


def _random_batch(model: AutoregressiveModel, n: int, generator: torch.Generator) -> torch.Tensor:
    if model.num_values is None:
        return torch.randn(n, *model.shape, generator=generator)
    return torch.randint(model.num_values, (n, *model.shape), generator=generator)


def check_autoregressive(model: AutoregressiveModel, n: int = 3, seed: int = 0) -> int:
    """Assert the autoregressive property by gradients; returns the number of (component, step) checked.

    Because :meth:`~AutoregressiveModel.embed` encodes each variable on its own, differentiating
    ``forward_embedded`` with respect to the embeddings tests every path from input to output.
    """
    was_training = model.training
    model.eval()  # dropout would make the check random
    g = torch.Generator().manual_seed(seed)
    x, _ = model.validate(_random_batch(model, n, g))
    checked = 0
    try:
        for c in range(model.num_components):
            model.set_component(c)
            order = model.current_order()
            e = model.embed(x).detach().requires_grad_(True)  # (n, D, E)
            params = model.forward_embedded(e)  # (n, D, P)
            for i in range(model.dim):
                j = int(order[i])
                (grad,) = torch.autograd.grad(params[:, j].sum(), e, retain_graph=True, allow_unused=True)
                if grad is None:
                    checked += 1
                    continue
                leak = grad[:, order[i:]].abs().amax(dim=(0, 2))  # per later-or-same variable
                if (leak != 0).any():
                    bad = order[i:][leak != 0].tolist()
                    raise AssertionError(
                        f"{model.name}: component {c}, step {i}: the conditional of variable {j} depends on "
                        f"variables {bad}, which come at or after it in the order"
                    )
                checked += 1
    finally:
        model.set_component(0)
        model.train(was_training)
    return checked


def all_configurations(model: AutoregressiveModel, limit: int = 200_000) -> torch.Tensor:
    """Every point of a discrete model's space, ``(K**D, *shape)``; refuses spaces over ``limit``."""
    if model.num_values is None:
        raise ValueError("all_configurations needs a discrete model")
    size = model.num_values ** model.dim
    if size > limit:
        raise ValueError(f"space has {size} configurations, more than limit={limit}")
    grid = torch.tensor(list(itertools.product(range(model.num_values), repeat=model.dim)))
    return grid.reshape(size, *model.shape)


@torch.no_grad()
def normalization_total(model: AutoregressiveModel) -> float:
    """Sum of p(x) over all configurations (discrete) — 1 for a normalized model."""
    model.eval()
    return float(model.log_prob(all_configurations(model)).double().exp().sum())


@torch.no_grad()
def check_step_matches_forward(model: AutoregressiveModel, n: int = 4, seed: int = 0,
                               atol: float = 1e-5) -> None:
    """Assert that feeding a batch through :meth:`~AutoregressiveModel.step` one variable at a time
    gives the same conditional parameters as the teacher-forced pass, position by position."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x, _ = model.validate(_random_batch(model, n, g))
    flat = x.reshape(n, model.dim)
    for c in range(model.num_components):
        model.set_component(c)
        order = model.current_order()
        full = model(x)  # (n, D, P)
        state = model.init_state(n)
        for i in range(model.dim):
            params, state = model.step(state, i, flat[:, order[i - 1]] if i else None)
            j = int(order[i])
            if not torch.allclose(params, full[:, j], atol=atol, rtol=1e-4):
                err = (params - full[:, j]).abs().max().item()
                raise AssertionError(f"{model.name}: component {c}, step {i} (variable {j}): cached step differs "
                                     f"from the full pass by {err:.3g}")
    model.set_component(0)
