"""Exceptions raised by chainrule.

Every error a user can cause (bad input, missing or corrupt files, an unknown name) is raised as a
subclass of :class:`ChainruleError`, with a message that names the problem and what was expected.
They also subclass the matching built-in exception so ``except ValueError`` keeps working.
"""

from __future__ import annotations


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
