"""Errors a user can fix by changing what they gave: a config, a layout, a path, a name, a number.

The command line prints a :class:`UserError` as one line (``error: ...``, exit code 2); any other
exception is a bug in this package and keeps its traceback. Every message names what was given and
what is allowed. This module imports nothing from the package, so every module can use it.
"""
from __future__ import annotations


def short(value: object, limit: int = 100) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for echoing what a user gave (a 900 KB string
    is never echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class UserError(ValueError):
    """Bad input from the user. A ``ValueError``, so ``except ValueError`` still catches it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or that a command needs) does not exist or cannot be read."""


class UnknownNameError(UserError, KeyError):
    """A name (block type, sampler, dataset, class label, ...) that no registry holds."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StateDictError(UserError, KeyError):
    """Weights that do not fit a model: the message lists missing, unexpected and mis-shaped keys."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
