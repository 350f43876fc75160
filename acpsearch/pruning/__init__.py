"""Pruning: strategies, importance criteria, physical pruning, measured cost, save/load records,
the functional probe of a strategy."""

from acpsearch.pruning.criteria import (
    CRITERIA,
    Criterion,
    channel_importance,
    get_criterion,
    set_taylor_importance,
)
from acpsearch.pruning.probe import TASKS, FunctionalProbe, model_codes, model_outputs, recalibrate_bn
from acpsearch.pruning.measure import measure_cost
from acpsearch.pruning.prune import apply_indices, apply_record, make_record, prune
from acpsearch.pruning.strategy import PruningStrategy

__all__ = [
    "PruningStrategy",
    "prune",
    "measure_cost",
    "make_record",
    "apply_record",
    "apply_indices",
    "CRITERIA",
    "Criterion",
    "get_criterion",
    "channel_importance",
    "set_taylor_importance",
    "FunctionalProbe",
    "model_codes",
    "model_outputs",
    "TASKS",
    "recalibrate_bn",
]
