"""Error types. Every `AcpError` is a user-facing problem (bad spec, model, data, budget,
checkpoint, storage): the CLI prints its message as one line and exits with status 2.
Anything else is an internal error (exit 1)."""

from __future__ import annotations

import json
import math
import reprlib
from typing import Any

ECHO_LIMIT = 200
_ECHO = reprlib.Repr()
_ECHO.maxlevel, _ECHO.maxstring, _ECHO.maxother, _ECHO.maxlong = 2, ECHO_LIMIT, ECHO_LIMIT, 60
_ECHO.maxlist = _ECHO.maxtuple = _ECHO.maxdict = _ECHO.maxset = 6


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


def echo(value: Any) -> str:
    """A value as echoed in an error line: strings quoted, None/bools as YAML-JSON words, the rest as
    Python prints it; never longer than about ECHO_LIMIT characters, whatever the value."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    try:
        text = _ECHO.repr(value) if isinstance(value, (str, list, tuple, dict, set, frozenset)) else str(value)
    except ValueError:  # an int beyond Python's 4300-digit str() limit (or a container holding one)
        text = (
            f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
            if isinstance(value, int)
            else f"a {type(value).__name__} holding an integer of more than 4300 digits"
        )
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + " ..."
