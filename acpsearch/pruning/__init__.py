"""Pruning: strategies, criteria, physical pruning, measured cost, save/load records."""

from acpsearch.pruning.prune import apply_indices, apply_record, make_record, measure_cost, prune
from acpsearch.pruning.strategy import PruningStrategy

__all__ = ["PruningStrategy", "prune", "measure_cost", "make_record", "apply_record", "apply_indices"]
