"""The model registry: names -> classes, :func:`create_model` and :func:`load`."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, TypeVar

import torch

from chainrule.errors import CheckpointError, InputError, UnknownNameError
from chainrule.io.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_config, read_weights, upgrade_state
from chainrule.models.base import COMMON_OPTIONS, AutoregressiveModel
from chainrule.models.ensemble import Ensemble

_REGISTRY: dict[str, type[AutoregressiveModel]] = {}

M = TypeVar("M", bound=type[AutoregressiveModel])
Model = AutoregressiveModel | Ensemble


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
    except (KeyError, TypeError):
        raise UnknownNameError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def accepted_hyperparameters(name: str) -> list[str]:
    """Every hyperparameter ``name`` accepts: its own arguments, then the options common to all models."""
    params = inspect.signature(get_model_class(name).__init__).parameters
    own = [p for p, v in params.items() if p not in ("self", "shape", "num_values")
           and v.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    return own + [o for o in COMMON_OPTIONS if o not in own]


def _docstring_args(doc: str | None) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring: ``{name: description}`` (continuation
    lines joined). An entry "a, b: text" describes both names."""
    out: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return out
    current: list[str] = []
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            if current:
                continue
            break
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        if width < indent:
            break  # the section ended
        if width == indent and ":" in line:
            names, text = line.strip().split(":", 1)
            current = [n.strip() for n in names.split(",")]
            if not all(n.isidentifier() for n in current):
                current = []  # prose such as "common options (order, head, ...): see ..."
            for n in current:
                out[n] = text.strip()
        elif current:
            for n in current:
                out[n] = (out[n] + " " + line.strip()).strip()
    return out


def hyperparameter_help(name: str) -> list[tuple[str, Any, str]]:
    """``(hyperparameter, default, description)`` for every hyperparameter of model ``name``, its own
    first (from its signature and the ``Args:`` of its docstring), then the options common to all
    models (documented on :class:`~chainrule.models.base.AutoregressiveModel`). A default of
    ``inspect.Parameter.empty`` means required."""
    cls = get_model_class(name)
    own_doc: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's entries win over its bases' ("Args: as NADE")
        if issubclass(klass, AutoregressiveModel) and klass is not AutoregressiveModel:
            own_doc.update(_docstring_args(klass.__doc__))
    common_doc = _docstring_args(AutoregressiveModel.__doc__)
    sig = inspect.signature(cls.__init__).parameters
    base = inspect.signature(AutoregressiveModel.__init__).parameters
    rows = []
    for p in accepted_hyperparameters(name):
        default = sig[p].default if p in sig else base[p].default
        rows.append((p, default, own_doc.get(p) or common_doc.get(p, "")))
    return rows


def check_hyperparameters(name: str, hyperparameters: dict[str, Any]) -> None:
    """Raise an :class:`InputError` listing the accepted names if ``hyperparameters`` has unknown ones."""
    accepted = accepted_hyperparameters(name)
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        hints = getattr(get_model_class(name), "hyperparameter_hints", {})
        hint = "".join(f" ({hints[u]})" for u in unknown if u in hints)
        raise InputError(f"model {name!r} has no hyperparameter(s) {', '.join(unknown)}{hint}; it accepts: {', '.join(accepted)}")


def create_model(name: str, shape: tuple[int, ...] | list[int] | int, num_values: int | None = None,
                 **hyperparameters: Any) -> Model:
    """Build a registered model for events of ``shape`` with ``num_values`` values per variable.

    Example: ``create_model("made", (1, 28, 28), num_values=2, hidden_sizes=[500])``. Ensemble
    hyperparameters (``num_orders`` > 1, MADE's ``num_masks`` > 1) give an
    :class:`~chainrule.models.ensemble.Ensemble` over the model. Unknown hyperparameters raise an
    :class:`InputError` listing the accepted ones.
    """
    check_hyperparameters(name, hyperparameters)
    try:
        model = get_model_class(name)(shape, num_values, **hyperparameters)
    except TypeError as exc:  # a value of the wrong type deep in a constructor
        raise InputError(f"model {name!r}: a hyperparameter has the wrong type ({exc})") from None
    members = model.ensemble_members()
    return Ensemble(model, members) if members else model


def load(directory: str | Path, map_location: str | torch.device = "cpu") -> Model:
    """Load a model saved by ``model.save`` (or the trainer) from ``directory``."""
    directory = Path(directory)
    config = read_config(directory)
    try:
        model = create_model(config["model"], tuple(config["shape"]), config.get("num_values"),
                             **config.get("hyperparameters", {}))
    except (KeyError, TypeError, UnknownNameError, InputError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: cannot rebuild the model ({exc})") from None
    state = upgrade_state(read_weights(directory, map_location), config, model)
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} does not match the config: missing {sorted(missing)}, "
                              f"unexpected {sorted(unexpected)}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} does not match the config ({exc})") from None
    return model.to(map_location).eval()
