"""Built-in correctness checks that every chainrule model passes (and a user's own model can run).

- :func:`check_autoregressive`: the conditional of group o(i) has exactly zero gradient with
  respect to the inputs of groups o(i), o(i+1), ... (for every member of an ensemble, and for any
  order given);
- :func:`normalization_total`: sum of exp(log_prob) over every configuration of a tiny space;
- :func:`check_step_matches_forward`: the incremental (cached) step gives the same conditionals as
  the teacher-forced pass;
- :func:`dependencies`: which groups each conditional reads (receptive fields, blind spots);
- :func:`check_context`: a conditional model's conditionals change with its context (a model
  that accepts a label or context tensor and ignores it would pass every other check).

Each raises :class:`AssertionError` with the offending positions when the property fails.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch

from chainrule.contract import ARModel
from chainrule.models.base import AutoregressiveModel

Model = ARModel  # a model or an ensemble: anything with the contract's face


def _random_batch(model: Model, n: int, generator: torch.Generator) -> torch.Tensor:
    if model.num_values is None:
        return torch.randn(n, *model.shape, generator=generator)
    return torch.randint(model.num_values, (n, *model.shape), generator=generator)


def random_context(model: Model, n: int, generator: torch.Generator) -> torch.Tensor | None:
    """A random context for ``n`` examples (labels or a tensor), or None for an unconditional model."""
    if model.num_classes:
        return torch.randint(model.num_classes, (n,), generator=generator)
    if model.context_shape:
        return torch.randn(n, *model.context_shape, generator=generator)
    return None


def _passes(model: Model, order: Any = None) -> Iterator[tuple[str, AutoregressiveModel, dict[str, Any]]]:
    """(label, the model doing the work, its call arguments) for every member."""
    for k in range(model.num_members):
        yield (f"member {k}" if model.num_members > 1 else ""), model.base_model, model.member_call(k, order)


def check_autoregressive(model: Model, n: int = 3, seed: int = 0, order: Any = None) -> int:
    """Assert the autoregressive property by gradients; returns the number of (member, step) checked.

    Because :meth:`~AutoregressiveModel.embed` encodes each variable on its own, differentiating
    ``forward_embedded`` with respect to the group features tests every path from input to output.
    """
    was_training = model.training
    model.eval()  # dropout would make the check random
    g = torch.Generator().manual_seed(seed)
    x, _ = model.validate(_random_batch(model, n, g))
    context = random_context(model, n, g)
    checked = 0
    try:
        for label, net, call in _passes(model, order):
            call = dict(call)
            o = call.pop("order")
            ctx = net.context_features(context, n)
            e = net.group_features(net.embed(x)).detach().requires_grad_(True)  # (n, G, F)
            params = net.forward_embedded(e, o, ctx, **call)  # (n, G, P)
            for i in range(net.num_groups):
                j = int(o[i])
                (grad,) = torch.autograd.grad(params[:, j].sum(), e, retain_graph=True, allow_unused=True)
                if grad is not None:
                    leak = grad[:, o[i:]].abs().amax(dim=(0, 2))  # per later-or-same group
                    if (leak != 0).any():
                        bad = o[i:][leak != 0].tolist()
                        raise AssertionError(
                            f"{model.name}: {label + ', ' if label else ''}step {i}: the conditional of group {j} "
                            f"depends on groups {bad}, which come at or after it in the order"
                        )
                checked += 1
    finally:
        model.train(was_training)
    return checked


def dependencies(model: AutoregressiveModel, n: int = 3, seed: int = 0, order: Any = None) -> torch.Tensor:
    """Which groups each conditional reads, by gradients: ``(G, G)`` bool, entry [j, k] True when
    the parameters of group j's conditional depend on the values of group k (group index order).

    For a correct model every True entry lies before j in the order; a False entry before j is a
    group the conditional cannot see (the PixelCNN's blind spot, a finite receptive field).
    """
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x, _ = model.validate(_random_batch(model, n, g))
    ctx = model.context_features(random_context(model, n, g), n)
    try:
        e = model.group_features(model.embed(x)).detach().requires_grad_(True)
        params = model.forward_embedded(e, model.resolve_order(order), ctx)
        deps = torch.zeros(model.num_groups, model.num_groups, dtype=torch.bool)
        for j in range(model.num_groups):
            (grad,) = torch.autograd.grad(params[:, j].sum(), e, retain_graph=True, allow_unused=True)
            if grad is not None:
                deps[j] = grad.abs().amax(dim=(0, 2)).cpu() != 0
    finally:
        model.train(was_training)
    return deps


def all_configurations(model: Model, limit: int = 200_000) -> torch.Tensor:
    """Every point of a discrete model's space, ``(K**D, *shape)``; refuses spaces over ``limit``."""
    if model.num_values is None:
        raise ValueError("all_configurations needs a discrete model")
    size = model.num_values ** model.dim
    if size > limit:
        raise ValueError(f"space has {size} configurations, more than limit={limit}")
    grid = torch.tensor(list(itertools.product(range(model.num_values), repeat=model.dim)))
    return grid.reshape(size, *model.shape)


@torch.no_grad()
def check_context(model: Model, n: int = 4, seed: int = 0, atol: float = 1e-6) -> None:
    """Assert that a conditional model's conditionals depend on the context: for every member,
    two different random contexts give conditional parameters differing somewhere on a random batch.

    Run on a model with random (non-zero) weights; a freshly built model whose context weights
    start at zero legitimately ignores the context until trained.
    """
    if not model.conditional:
        raise ValueError(f"{model.name}: check_context needs a conditional model (num_classes or context_shape)")
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x, _ = model.validate(_random_batch(model, n, g))
    if model.num_classes:
        if model.num_classes < 2:
            raise ValueError(f"{model.name}: check_context needs at least 2 classes")
        c1 = torch.randint(model.num_classes, (n,), generator=g)
        c2 = (c1 + 1 + torch.randint(model.num_classes - 1, (n,), generator=g)) % model.num_classes  # always another label
    else:
        c1, c2 = random_context(model, n, g), random_context(model, n, g)
    try:
        for label, net, call in _passes(model):
            a, b = net(x, c1, **call), net(x, c2, **call)  # (n, G, P)
            if torch.allclose(a, b, atol=atol, rtol=0):
                raise AssertionError(f"{model.name}: {label + ', ' if label else ''}the conditionals do not change "
                                     "with the context: the model accepts a context and ignores it")
    finally:
        model.train(was_training)


@torch.no_grad()
def normalization_total(model: Model, context: Any = None, **call: Any) -> float:
    """Sum of p(x | context) over all configurations (discrete) — 1 for a normalized model.
    ``call``: ``order=`` / ``member=`` as for ``log_prob``."""
    model.eval()
    space = all_configurations(model)
    return float(model.log_prob(space, context, **call).double().exp().sum())


@torch.no_grad()
def check_step_matches_forward(model: Model, n: int = 4, seed: int = 0, atol: float = 1e-5, order: Any = None) -> None:
    """Assert that feeding a batch through :meth:`~AutoregressiveModel.step` one group at a time
    gives the same conditional parameters as the teacher-forced pass, position by position."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x, _ = model.validate(_random_batch(model, n, g))
    context = random_context(model, n, g)
    xg = model.groups.gather(x.reshape(n, model.dim))  # (n, G, S)
    try:
        for label, net, call in _passes(model, order):
            full = net(x, context, **call)  # (n, G, P)
            o = call["order"].tolist()
            state = net.init_state(n, context, **call)
            for i in range(net.num_groups):
                params, state = net.step(state, i, xg[:, o[i - 1]] if i else None)
                j = o[i]
                if not torch.allclose(params, full[:, j], atol=atol, rtol=1e-4):
                    err = (params - full[:, j]).abs().max().item()
                    raise AssertionError(f"{model.name}: {label + ', ' if label else ''}step {i} (group {j}): cached "
                                         f"step differs from the full pass by {err:.3g}")
    finally:
        model.train(was_training)
