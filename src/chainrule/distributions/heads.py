"""Output heads: the joint distribution of one group of variables given the model's parameters.

A model's teacher-forced pass returns ``params`` of shape ``(*batch, G, P)``: P numbers for each of
the G groups (:mod:`chainrule.groups`). A :class:`Head` knows P and turns them into a
:class:`GroupDistribution` over the group's S variables, with

- ``log_prob(x)``: ``(*batch, S)`` values -> ``(*batch,)`` log-likelihood of the whole group, nats;
- ``log_prob_per_variable(x)``: ``(*batch, S)``, the chain rule inside the group (sums to ``log_prob``);
- ``sample(generator)`` / ``mode()`` / ``mean()``: ``(*batch, S)``;
- discrete heads: ``variable_logits(x, j)`` ``(*batch, K)``, the normalized conditional of variable
  j of the group given the group's variables before it (``x[..., :j]``; the rest is ignored), so an
  entropy coder or a decoding filter can still work one variable at a time.

Heads are found by name in a registry (:func:`register_head`, :func:`get_head`): a new output
distribution (e.g. a discretized logistic mixture whose channels are coupled) is one class.
The heads here are *factorized*: the group's variables are independent given ``params``, each with
one of the scalar distributions of :mod:`chainrule.distributions.scalar`.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch

from chainrule.distributions.scalar import Bernoulli, Categorical, Distribution, Gaussian, MixtureOfGaussians
from chainrule.errors import InputError, UnknownNameError


class GroupDistribution:
    """The joint conditional of a batch of groups of S variables each (see the module docstring)."""

    discrete: ClassVar[bool] = False
    group_size: int

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob_per_variable(x).sum(-1)

    def log_prob_per_variable(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def mode(self) -> torch.Tensor:
        raise NotImplementedError

    def mean(self) -> torch.Tensor:
        raise NotImplementedError

    def variable_logits(self, x: torch.Tensor | None, j: int) -> torch.Tensor:
        """Discrete heads: log p(x_j = k | x_<j, params) for every k, ``(*batch, K)``."""
        raise InputError("this output distribution is continuous: it has no probability table")


class Independent(GroupDistribution):
    """S independent scalar conditionals per group: ``scalar`` has batch shape ``(*batch, S)``."""

    def __init__(self, scalar: Distribution) -> None:
        self.scalar = scalar
        self.group_size = scalar.batch_shape[-1]
        self.discrete = hasattr(scalar, "logits")

    @property
    def batch_shape(self) -> torch.Size:
        return self.scalar.batch_shape[:-1]

    def log_prob_per_variable(self, x: torch.Tensor) -> torch.Tensor:
        return self.scalar.log_prob(x)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.scalar.sample(generator)

    def mode(self) -> torch.Tensor:
        return self.scalar.mode()

    def mean(self) -> torch.Tensor:
        return self.scalar.mean()

    def logits(self) -> torch.Tensor:
        """Discrete: every variable's normalized log-probabilities, ``(*batch, S, K)``."""
        if not self.discrete:
            raise InputError("this output distribution is continuous: it has no probability table")
        return self.scalar.logits()

    def variable_logits(self, x: torch.Tensor | None, j: int) -> torch.Tensor:
        if not self.discrete:
            raise InputError("this output distribution is continuous: it has no probability table")
        if self.group_size == 1:
            return self.scalar.logits()[..., 0, :]
        return type(self.scalar)(self.scalar.params[..., j, :]).logits()


_HEADS: dict[str, type[Head]] = {}


def register_head(cls: type[Head]) -> type[Head]:
    """Class decorator: make a head available by its ``name`` (models choose it with ``head=NAME``)."""
    if not cls.name or cls.name in _HEADS:
        raise ValueError(f"a head needs a new, non-empty `name`; got {cls.name!r}")
    _HEADS[cls.name] = cls
    return cls


def list_heads() -> list[str]:
    return sorted(_HEADS)


def get_head(name: str) -> type[Head]:
    try:
        return _HEADS[name]
    except KeyError:
        raise UnknownNameError(f"unknown output head {name!r}; registered heads: {', '.join(list_heads())}") from None


class Head:
    """Maps ``num_params`` numbers per group to the group's joint distribution.

    Args:
        num_values: K for discrete data (values 0..K-1), None for real values.
        group_size: S, variables per group.
    """

    name: ClassVar[str] = ""
    discrete: ClassVar[bool] = True
    num_params: int

    def __init__(self, num_values: int | None, group_size: int = 1) -> None:
        if self.discrete:
            if not isinstance(num_values, int) or isinstance(num_values, bool) or num_values < 2:
                raise InputError(f"the {self.name} head needs discrete data: num_values must be an integer >= 2, "
                                 f"got {num_values!r}")
        elif num_values is not None:
            raise InputError(f"the {self.name} head models real values: num_values must be None, got {num_values!r}")
        if not isinstance(group_size, int) or group_size < 1:
            raise InputError(f"group_size must be a positive integer, got {group_size!r}")
        self.num_values, self.group_size = num_values, group_size

    def __call__(self, params: torch.Tensor) -> GroupDistribution:
        if params.shape[-1] != self.num_params:
            raise InputError(f"{self.name} head expects {self.num_params} parameters per group, got {params.shape[-1]}")
        return self.distribution(params)

    def distribution(self, params: torch.Tensor) -> GroupDistribution:
        raise NotImplementedError

    @property
    def options(self) -> dict[str, Any]:
        """The head's own settings beyond num_values and group_size (stored in checkpoints)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_values={self.num_values}, group_size={self.group_size}, num_params={self.num_params})"


class _FactorizedHead(Head):
    """A group of S independent variables, each with ``per_variable`` parameters of ``scalar``."""

    scalar: ClassVar[type[Distribution]]

    @property
    def per_variable(self) -> int:
        raise NotImplementedError

    def __init__(self, num_values: int | None, group_size: int = 1) -> None:
        super().__init__(num_values, group_size)
        self.num_params = self.per_variable * group_size

    def distribution(self, params: torch.Tensor) -> GroupDistribution:
        return Independent(self.scalar(params.reshape(*params.shape[:-1], self.group_size, self.per_variable)))


@register_head
class BernoulliHead(_FactorizedHead):
    """Binary variables, one logit each."""

    name = "bernoulli"
    scalar = Bernoulli
    per_variable = 1

    def __init__(self, num_values: int | None = 2, group_size: int = 1) -> None:
        if num_values != 2:
            raise InputError(f"the bernoulli head models binary data (num_values=2), got num_values={num_values!r}")
        super().__init__(num_values, group_size)


@register_head
class CategoricalHead(_FactorizedHead):
    """K-valued variables, K logits each (a softmax)."""

    name = "categorical"
    scalar = Categorical

    @property
    def per_variable(self) -> int:
        return self.num_values  # type: ignore[return-value]


@register_head
class GaussianHead(_FactorizedHead):
    """Real variables: mean and log standard deviation each (the log-scale bounded to [-7, 10])."""

    name = "gaussian"
    discrete = False
    scalar = Gaussian
    per_variable = 2


@register_head
class MixtureOfGaussiansHead(_FactorizedHead):
    """Real variables: a mixture of M Gaussians each (RNADE), 3M parameters per variable."""

    name = "mog"
    discrete = False
    scalar = MixtureOfGaussians

    def __init__(self, num_values: int | None = None, group_size: int = 1, num_mixture_components: int = 2) -> None:
        if not isinstance(num_mixture_components, int) or num_mixture_components < 1:
            raise InputError(f"num_mixture_components must be a positive integer, got {num_mixture_components!r}")
        self.num_mixture_components = num_mixture_components
        super().__init__(num_values, group_size)

    @property
    def per_variable(self) -> int:
        return 3 * self.num_mixture_components

    @property
    def options(self) -> dict[str, Any]:
        return {"num_mixture_components": self.num_mixture_components}


def output_head(num_values: int | None, num_mixture_components: int | None = None, group_size: int = 1,
                name: str | None = None) -> Head:
    """The head called ``name``, or the natural one for data with ``num_values`` values.

    Natural heads: K=2 a Bernoulli (one logit), K>2 a Categorical (K logits), None a Gaussian, or a
    mixture of ``num_mixture_components`` Gaussians when that is > 1. A named head whose constructor
    takes ``num_mixture_components`` (``"mog"``, ``"logistic_mixture"``) is given it (None: the
    head's own default).
    """
    if name is None:
        if num_values is None:
            if num_mixture_components is not None and (not isinstance(num_mixture_components, int)
                                                       or isinstance(num_mixture_components, bool)
                                                       or num_mixture_components < 1):
                raise InputError(f"num_mixture_components must be a positive integer, got {num_mixture_components!r}")
            name = "gaussian" if num_mixture_components in (None, 1) else "mog"
        else:
            if not isinstance(num_values, int) or isinstance(num_values, bool) or num_values < 2:
                raise InputError(f"num_values must be an integer >= 2 (or None for real values), got {num_values!r}")
            name = "bernoulli" if num_values == 2 else "categorical"
    cls = get_head(name)
    # Heads with mixture components (mog, logistic_mixture, ...) take the count; they validate it.
    if "num_mixture_components" in inspect.signature(cls.__init__).parameters:
        if num_mixture_components is None:
            return cls(num_values, group_size)
        return cls(num_values, group_size, num_mixture_components=num_mixture_components)
    return cls(num_values, group_size)
