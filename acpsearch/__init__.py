"""acpsearch: automatic channel pruning of deep hash networks (ACP-SSE) as a search service.

Public names are imported lazily so `import acpsearch` stays cheap (no Ray / Optuna import)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from acpsearch.checkpoint import load_model, save_checkpoint
from acpsearch.errors import (
    AcpError,
    BudgetError,
    CheckpointError,
    DataError,
    SpecError,
    StorageError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

_LAZY = {
    "ChannelGraph": "acpsearch.graph",
    "Cost": "acpsearch.graph",
    "register_rule": "acpsearch.graph",
    "PruningStrategy": "acpsearch.pruning",
    "prune": "acpsearch.pruning",
    "measure_cost": "acpsearch.pruning",
    "DynamicSpace": "acpsearch.search.space",
    "Budget": "acpsearch.search.space",
    "StructureEncoder": "acpsearch.encoder",
    "preprocess": "acpsearch.preprocessing",
    "export_model": "acpsearch.export",
}

__all__ = [
    "AcpError",
    "BudgetError",
    "CheckpointError",
    "DataError",
    "SpecError",
    "StorageError",
    "UnsupportedModelError",
    "load_model",
    "save_checkpoint",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'acpsearch' has no attribute {name!r}")
