"""Progress of a study run: the Reporter protocol (the CLI passes a rich or plain-line one,
acpsearch.commands.progress), SilentReporter for library callers, and `clean`, the JSON-safe copy
of what is stored."""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np


class Reporter(Protocol):
    """Where a study run reports its progress: a phase starts (with its step count), advances,
    ends (or is skipped, done by an earlier run), and one-line messages."""

    def phase(self, name: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1, **info: Any) -> None: ...
    def done(self, name: str, seconds: float, skipped: bool = False) -> None: ...
    def log(self, msg: str) -> None: ...


class SilentReporter:
    """The Reporter of library callers: reports nothing."""

    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1, **info: Any) -> None:
        pass

    def done(self, name: str, seconds: float, skipped: bool = False) -> None:
        pass

    def log(self, msg: str) -> None:
        pass


def clean(value: Any) -> Any:
    """JSON-safe copy for storage (NaN/inf -> None, numpy -> Python): the dashboard parses
    attributes as strict JSON, where NaN is invalid."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
