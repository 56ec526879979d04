"""Exceptions raised by chainrule.

Every error a user can cause (bad input, missing or corrupt files, an unknown name) is raised as a
subclass of :class:`ChainruleError`, with a message that names the problem and what was expected.
They also subclass the matching built-in exception so ``except ValueError`` keeps working.

It also holds the one way an old spelling of the public API is kept for a release
(:func:`renamed_parameters`, :func:`warn_deprecated`): every layer can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class ChainruleError(Exception):
    """Base class of every error chainrule raises on purpose."""


class InputError(ChainruleError, ValueError):
    """Data passed to a model or function does not fit (wrong shape, value out of range, NaN, ...)."""


class DataError(ChainruleError, ValueError):
    """A dataset is missing, empty, corrupt (checksum mismatch) or in an unexpected format."""


class CheckpointError(ChainruleError, ValueError):
    """A directory is not a chainrule checkpoint, or the checkpoint is damaged."""


class UnknownNameError(ChainruleError, KeyError):
    """A model, dataset or ordering name is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


# ------------------------------------------------------------------ deprecated spellings
#: The release that drops the spellings deprecated in this one (they are kept for one release).
REMOVAL_RELEASE = "0.4"


def warn_deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` (a parameter or method spelling) is deprecated in favour of ``new``.

    ``stacklevel=3`` points the warning at the caller of the function that calls this one, which
    is the line a user has to change.
    """
    import warnings

    warnings.warn(f"{old} is deprecated and will be removed in chainrule {REMOVAL_RELEASE}; use {new} "
                  "(the same behaviour)", DeprecationWarning, stacklevel=stacklevel)


def renamed_parameters(**renames: str) -> Callable[[F], F]:
    """Decorator: keep the old keyword spellings ``old=new`` of a function's parameters working for
    one release. A call with ``old=`` warns (:class:`DeprecationWarning`) and is passed on as
    ``new=``; giving both is an :class:`InputError`. The wrapped function's signature (as
    :func:`inspect.signature` sees it) is the new one."""
    import functools

    def decorate(func: F) -> F:
        name = getattr(func, "__qualname__", getattr(func, "__name__", "function"))

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise InputError(f"{name}: give {new}= (the new name of {old}=), not both")
                    warn_deprecated(f"{name}({old}=...)", f"{name}({new}=...)")
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
