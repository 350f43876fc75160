"""Progress of a study run: the Reporter sink the CLI fills with a rich display, and `clean`, the
JSON-safe copy of what is stored."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class Reporter:
    """Progress sink; the CLI passes a rich-based one, library callers get silence."""

    def phase(self, name: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1, **info: Any) -> None: ...
    def done(self, name: str, seconds: float, skipped: bool = False) -> None: ...
    def log(self, msg: str) -> None: ...


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
