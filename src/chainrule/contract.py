"""The contract, as a type: what a chainrule model is to everything written above it.

Generic code — likelihoods and sampling (:mod:`chainrule.inference`), the trainer, the checks, the
applications — sits *below* the model classes in the import graph, so it cannot name
:class:`~chainrule.models.base.AutoregressiveModel`. It names :class:`ARModel` instead, a
:class:`typing.Protocol` that a single model and an :class:`~chainrule.models.ensemble.Ensemble`
both satisfy structurally. A model describes one distribution

    p(x | c) = prod_i p(x_g(o(i)) | x_g(o(<i)), c)

over a fixed event ``shape`` whose D variables form G groups (``groups``), each group one
conditional given by the output ``head`` from P parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from chainrule.distributions.heads import Head
    from chainrule.groups import Grouping


@runtime_checkable
class ARModel(Protocol):
    """The public face of a chainrule model (a single model or an ensemble of members).

    Shapes: ``x`` is ``(B, *shape)`` (after :meth:`validate`); the teacher-forced call returns the
    parameters of every group's conditional, ``(B, G, P)``; the incremental :meth:`step` returns
    one group's, ``(n, P)``.
    """

    # the event space
    name: str
    shape: tuple[int, ...]
    num_values: int | None  # K values per variable, None for real values
    dim: int  # D
    groups: Grouping
    num_groups: int  # G
    group_size: int  # S variables per group
    head: Head  # the output distribution of one group
    any_order: bool  # takes order= at call time
    closed_form: bool  # fitted by counting, not by gradient steps
    num_classes: int | None
    context_shape: tuple[int, ...] | None
    training: bool

    @property
    def conditional(self) -> bool: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def float_dtype(self) -> torch.dtype: ...
    @property
    def num_members(self) -> int: ...
    @property
    def order(self) -> torch.Tensor: ...
    @property
    def config(self) -> dict[str, Any]: ...

    # members: a single model is its own one member
    @property
    def base_model(self) -> Any:
        """The model doing the work (a single model: itself; an ensemble: the wrapped model)."""
    def member_call(self, member: int, order: Any = None, **options: Any) -> dict[str, Any]:
        """Call arguments (``order`` resolved, plus the member's options) of member ``member``."""

    # validation
    def validate(self, x: Any) -> tuple[torch.Tensor, torch.Size]: ...
    def resolve_order(self, order: Any = None, **options: Any) -> torch.Tensor: ...
    def normalize_context(self, context: Any, n: int) -> torch.Tensor | None: ...
    def context_features(self, context: Any, n: int) -> torch.Tensor | None: ...

    # the passes
    def __call__(self, x: torch.Tensor, context: Any = None, order: Any = None, **options: Any) -> torch.Tensor: ...
    def init_state(self, n: int, context: Any = None, order: Any = None, **options: Any) -> Any: ...
    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]: ...
    def log_prob(self, x: Any, context: Any = None, **call: Any) -> torch.Tensor: ...

    # torch.nn.Module
    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...
    def train(self, mode: bool = True) -> Any: ...
    def eval(self) -> Any: ...
