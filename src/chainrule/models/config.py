"""Validated model hyperparameters: one frozen dataclass per architecture (as nanoGPT's ``GPTConfig``).

Each architecture declares, next to its class, the dataclass of its own hyperparameters (those of
its ``__init__`` beyond ``shape``, ``num_values`` and the options every model shares), each field
carrying its constraint once::

    @dataclass(frozen=True)
    class TransformerConfig(ModelConfig):
        num_layers: int = positive()
        dropout: float = probability()
        activation: str = one_of(gelu="exact", gelu_new="tanh approximation, GPT-2")

        def check(self) -> None:  # rules between fields
            if self.embed_dim % self.num_heads: ...

and names it in the model (``config_class = TransformerConfig``). :class:`AutoregressiveModel
<chainrule.models.base.AutoregressiveModel>` builds it from the arguments of the call and keeps it
as ``model.hparams``; building it validates every field, then :meth:`ModelConfig.check`, raising an
:class:`~chainrule.errors.InputError` that names the hyperparameter and what it must be. The
defaults stay in the model's signature (what ``chainrule models NAME`` shows and ``help()`` reads);
the registry suite checks that the dataclass declares exactly the model's own arguments.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from chainrule.errors import InputError

#: Seeds are 64-bit (``torch.manual_seed``): 0 .. 2**63 - 1.
MAX_SEED = (1 << 63) - 1

Check = Callable[[str, Any], Any]  # (name, value) -> the value kept (or raises InputError)
C = TypeVar("C", bound="ModelConfig")


def _declare(check: Check, what: str) -> Any:
    """A dataclass field validated by ``check``; ``what`` says what it takes (for help texts)."""
    return dataclasses.field(metadata={"check": check, "what": what})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(minimum: int = 1, *, optional: bool = False, odd: bool = False, why: str = "") -> Any:
    """An integer >= ``minimum`` (``optional``: or None; ``odd``: odd too, ``why`` says why)."""
    kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    what = kind + (" or None" if optional else "")

    def check(name: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if not _is_int(v) or v < minimum:
            raise InputError(f"{name} must be {what}, got {v!r}")
        if odd and v % 2 == 0:
            raise InputError(f"{name} must be odd{f' ({why})' if why else ''}, got {v}")
        return v

    return _declare(check, what + (", odd" if odd else ""))


def positive(*, optional: bool = False) -> Any:
    """An integer >= 1 (``optional``: or None)."""
    return integer(1, optional=optional)


def non_negative() -> Any:
    """An integer >= 0."""
    return integer(0)


def centred_kernel() -> Any:
    """An odd positive kernel size: a kernel centred on its pixel."""
    return integer(1, odd=True, why="the kernel is centred on the pixel")


def seed() -> Any:
    """A seed: an integer in 0..2**63-1."""
    def check(name: str, v: Any) -> Any:
        if not _is_int(v) or not 0 <= v <= MAX_SEED:
            raise InputError(f"{name} must be an integer in 0..2**63-1, got {v!r}")
        return v

    return _declare(check, "an integer in 0..2**63-1")


def sizes(*, optional: bool = False, example: str = "") -> Any:
    """A non-empty list of positive integers, kept as a tuple (``optional``: or None)."""
    what = "a list of positive integers (at least one)" + (" or None" if optional else "")

    def check(name: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, Sequence) or not v \
                or not all(_is_int(h) and h >= 1 for h in v):
            raise InputError(f"{name} must be {what}{f', e.g. {example}' if example else ''}, got {v!r}")
        return tuple(v)

    return _declare(check, what)


def probability() -> Any:
    """A number in [0, 1) (a dropout rate)."""
    def check(name: str, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise InputError(f"{name} must be a probability in [0, 1), got {v!r}")
        return float(v)

    return _declare(check, "a probability in [0, 1)")


def non_negative_number() -> Any:
    """A finite number >= 0 (a pseudo-count)."""
    def check(name: str, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
        return v

    return _declare(check, "a finite number >= 0")


def number(low: float, high: float) -> Any:
    """A finite number in [low, high) (a decay rate: ``number(0, 1)``)."""
    def check(name: str, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v < high:
            raise InputError(f"{name} must be a number in [{low}, {high}), got {v!r}")
        return float(v)

    return _declare(check, f"a number in [{low}, {high})")


def flag() -> Any:
    """True or false (1 and 0 are read as such)."""
    def check(name: str, v: Any) -> Any:
        if isinstance(v, bool) or (_is_int(v) and v in (0, 1)):
            return bool(v)
        raise InputError(f"{name} must be true or false, got {v!r}")

    return _declare(check, "true or false")


def one_of(*choices: str, **described: str) -> Any:
    """One of the strings ``choices`` (or of the keys of ``described``: choice -> what it means)."""
    names = [*choices, *described]
    shown = ", ".join([repr(c) for c in choices] + [f"{c!r} ({d})" for c, d in described.items()])

    def check(name: str, v: Any) -> Any:
        if not isinstance(v, str) or v not in names:
            raise InputError(f"{name} must be one of {shown}, got {v!r}")
        return v

    return _declare(check, "one of " + shown)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of every architecture's hyperparameter dataclass (it has none of its own).

    Building one validates it: each field by the constraint it was declared with, in declaration
    order, then :meth:`check`. Fields hold the values as validated (a list of sizes as a tuple).
    """

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is None:
                raise TypeError(f"{type(self).__name__}.{f.name} declares no constraint: declare it with "
                                "positive(), probability(), one_of(...), ... (chainrule.models.config)")
            object.__setattr__(self, f.name, check(f.name, getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """Rules between fields (``embed_dim`` divisible by ``num_heads``); raise an InputError."""

    @classmethod
    def from_arguments(cls: type[C], arguments: Mapping[str, Any]) -> C:
        """The config of a model built with ``arguments`` (a model's recorded call; other keys,
        such as the common options, are ignored)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in arguments]
        if missing:
            raise TypeError(f"{cls.__name__} declares {', '.join(missing)}, which the model's __init__ does not take")
        return cls(**{n: arguments[n] for n in names})

    @classmethod
    def describe(cls) -> dict[str, str]:
        """What every hyperparameter takes, e.g. ``{"num_layers": "a positive integer"}``."""
        return {f.name: f.metadata.get("what", "") for f in dataclasses.fields(cls)}

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def input_encoding() -> Any:
    """How a model's :meth:`~chainrule.models.base.AutoregressiveModel.embed` encodes a variable."""
    return one_of("auto", "value", "onehot")
