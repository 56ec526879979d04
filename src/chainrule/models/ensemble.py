"""Ensembles over orders and connectivities: a wrapper, never a switch inside the model.

An :class:`Ensemble` holds one model and a list of *members*, each a set of call arguments for it
(an order over groups; for MADE also a connectivity, ``mask=k``). Its likelihood averages the
members' probabilities,

    p(x) = (1/K) sum_k p(x; member k)        (EoNADE, Uria et al. 2014; MADE, Germain et al. 2015)

which is itself normalized (averaging logits, as some code does, is not). Training visits one
member per step: the trainer draws it and passes ``member=k`` to :meth:`Ensemble.forward`. Nothing
in the model changes between calls, so an ensemble is safe to share between threads and under
``DistributedDataParallel``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from chainrule.errors import InputError, renamed_parameters
from chainrule.inference import beam as _beam
from chainrule.inference import likelihood as _likelihood
from chainrule.inference import sampling as _sampling
from chainrule.io.checkpoint import save_model
from chainrule.models.base import AutoregressiveModel


class Ensemble(nn.Module):
    """``members`` (a list of dicts of call arguments, each with an ``"order"``) over one ``model``.

    The ensemble has the model's public face (shape, num_values, head, groups, validate, ...) plus
    ``num_members``; every call takes ``member=k`` (default 0 for the passes, all members for
    :meth:`log_prob` and :meth:`sample`).
    """

    def __init__(self, model: AutoregressiveModel, members: list[dict[str, Any]]) -> None:
        super().__init__()
        if len(members) < 1:
            raise InputError("an ensemble needs at least one member")
        self.model = model
        orders = [model.resolve_order(m.get("order")) if model.any_order or m.get("order") is None
                  else torch.as_tensor(m["order"]) for m in members]
        self.register_buffer("orders", torch.stack([o.to(model.order.device) for o in orders]), persistent=True)
        self.member_options = [{k: v for k, v in m.items() if k != "order"} for m in members]
        for opts in self.member_options:
            model.check_options(opts)

    # ------------------------------------------------------------------ the model's face
    @property
    def num_members(self) -> int:
        return self.orders.shape[0]

    name = property(lambda self: self.model.name)
    shape = property(lambda self: self.model.shape)
    num_values = property(lambda self: self.model.num_values)
    dim = property(lambda self: self.model.dim)
    groups = property(lambda self: self.model.groups)
    num_groups = property(lambda self: self.model.num_groups)
    group_size = property(lambda self: self.model.group_size)
    head = property(lambda self: self.model.head)
    any_order = property(lambda self: self.model.any_order)
    closed_form = property(lambda self: self.model.closed_form)
    conditional = property(lambda self: self.model.conditional)
    num_classes = property(lambda self: self.model.num_classes)
    context_shape = property(lambda self: self.model.context_shape)
    config = property(lambda self: self.model.config)
    hyperparameters = property(lambda self: self.model.hyperparameters)
    hparams = property(lambda self: self.model.hparams)
    device = property(lambda self: self.model.device)

    @property
    def order(self) -> torch.Tensor:
        """Member 0's order."""
        return self.orders[0]

    def validate(self, x: Any) -> tuple[torch.Tensor, torch.Size]:
        return self.model.validate(x)

    def normalize_context(self, context: Any, n: int) -> torch.Tensor | None:
        return self.model.normalize_context(context, n)

    def context_features(self, context: Any, n: int) -> torch.Tensor | None:
        return self.model.context_features(context, n)

    @property
    def float_dtype(self) -> torch.dtype:
        return self.model.float_dtype

    def _member(self, member: int | None) -> int:
        m = 0 if member is None else member
        if not isinstance(m, int) or isinstance(m, bool) or not 0 <= m < self.num_members:
            raise InputError(f"member must be in 0..{self.num_members - 1} (the ensemble has {self.num_members} members), "
                             f"got {member!r}")
        return m

    @property
    def base_model(self) -> AutoregressiveModel:
        """The model the members call."""
        return self.model

    def resolve_order(self, order: Any = None, member: int | None = None, **options: Any) -> torch.Tensor:
        """Member ``member``'s order, or ``order`` itself for models that take any order."""
        if order is not None:
            return self.model.resolve_order(order)
        return self.orders[self._member(member)]

    def member_call(self, member: int, order: Any = None, **options: Any) -> dict[str, Any]:
        """The arguments ``self.model`` is called with for ``member`` (its order and options)."""
        m = self._member(member)
        return {"order": self.resolve_order(order, member=m), **self.member_options[m], **options}

    # ------------------------------------------------------------------ passes
    def forward(self, x: torch.Tensor, context: Any = None, member: int | None = 0, order: Any = None,
                **options: Any) -> torch.Tensor:
        """Parameters ``(B, G, P)`` of member ``member``'s conditionals for a valid batch."""
        return self.model(x, context, **self.member_call(member, order, **options))

    def init_state(self, n: int, context: Any = None, member: int | None = 0, order: Any = None, **options: Any) -> Any:
        return self.model.init_state(n, context, **self.member_call(member, order, **options))

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        return self.model.step(state, i, x_prev)

    def init_full_pass_state(self, n: int, context: Any = None, member: int | None = 0, order: Any = None,
                             **options: Any) -> Any:
        return self.model.init_full_pass_state(n, context, **self.member_call(member, order, **options))

    def full_pass_step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        return self.model.full_pass_step(state, i, x_prev)

    # ------------------------------------------------------------------ generic code
    def log_prob(self, x: Any, context: Any = None, member: int | list[int] | range | None = None,
                 order: Any = None, **options: Any) -> torch.Tensor:
        """log (1/K) sum_k p_k(x), ``(*batch,)`` nats; ``member=k`` (or a list) scores those members."""
        return _likelihood.log_prob(self, x, context, member=member, order=order, **options)

    def log_prob_per_variable(self, x: Any, context: Any = None, member: int | None = None, order: Any = None,
                              **options: Any) -> torch.Tensor:
        return _likelihood.log_prob_per_variable(self, x, context, member=member, order=order, **options)

    def conditionals(self, x: Any, context: Any = None, member: int | None = 0, order: Any = None, **options: Any) -> Any:
        x, _ = self.validate(x)
        return self.head(self(x, context, member, order, **options))

    @renamed_parameters(prefix="prompt")
    def sample(self, n: int, context: Any = None, generator: torch.Generator | None = None, **kwargs: Any) -> torch.Tensor:
        """Samples of the mixture (each picks a member uniformly), or of ``member=k``; the keywords
        (``prompt``, ``observed``, ``temperature``, ...) as :func:`chainrule.inference.sampling.sample`."""
        return _sampling.sample(self, n, context, generator, **kwargs)

    @renamed_parameters(prefix="prompt")
    def beam_search(self, beam_width: int, context: Any = None, member: int | None = None, **kwargs: Any) -> list:
        return _beam.search_model(self, beam_width, context, member=member, **kwargs)

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        return save_model(self, directory, extra=extra)

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    def extra_repr(self) -> str:
        return f"members={self.num_members}"
