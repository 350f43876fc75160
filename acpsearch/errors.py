"""Error types. Every `AcpError` is a user-facing problem (bad spec, model, data, budget,
checkpoint, storage): the CLI prints its message as one line and exits with status 2.
Anything else is an internal error (exit 1)."""
from __future__ import annotations


class AcpError(Exception):
    """Bad input from the user; the message is one line that names the field or module."""


class SpecError(AcpError):
    """A study spec or a command-line flag is invalid."""


class DataError(AcpError):
    """A data set is missing, unreadable or malformed; the message says how to get it."""


class CheckpointError(AcpError):
    """A checkpoint is corrupt, foreign, or would need to unpickle code."""


class UnsupportedModelError(AcpError):
    """The converter or pruner cannot handle a module or op; the message names it."""


class BudgetError(AcpError):
    """A resource budget cannot be met; the message names the smallest reachable ratio."""


class StorageError(AcpError):
    """A storage URL cannot be opened, or a study does not exist / has no winner."""
