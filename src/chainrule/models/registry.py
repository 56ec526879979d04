"""The model registry: names -> classes, and :func:`create_model`."""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from chainrule.errors import InputError, UnknownNameError
from chainrule.models.base import AutoregressiveModel

_REGISTRY: dict[str, type[AutoregressiveModel]] = {}

M = TypeVar("M", bound=type[AutoregressiveModel])


def register(cls: M) -> M:
    """Class decorator: add a model to the registry under ``cls.name``.

    A registered model is picked up by the CLI and by the shared test suite (autoregressive
    property, normalization, sampling, save/load) with nothing else to change.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a model named {cls.name!r} is already registered ({_REGISTRY[cls.name].__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[AutoregressiveModel]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def create_model(name: str, shape: tuple[int, ...] | list[int] | int, num_values: int | None = None,
                 **hyperparameters: Any) -> AutoregressiveModel:
    """Build a registered model for events of ``shape`` with ``num_values`` values per variable.

    Example: ``create_model("made", (1, 28, 28), num_values=2, hidden_sizes=[500])``.
    Unknown hyperparameters raise an :class:`InputError` listing the accepted ones.
    """
    check_hyperparameters(name, hyperparameters)
    return get_model_class(name)(shape, num_values, **hyperparameters)


def check_hyperparameters(name: str, hyperparameters: dict[str, Any]) -> None:
    """Raise an :class:`InputError` listing the accepted names if ``hyperparameters`` has unknown ones."""
    params = inspect.signature(get_model_class(name).__init__).parameters
    accepted = [p for p in params if p not in ("self", "shape", "num_values")]
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise InputError(f"model {name!r} has no hyperparameter(s) {', '.join(unknown)}; it accepts: {', '.join(accepted)}")
