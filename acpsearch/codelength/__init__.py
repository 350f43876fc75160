"""Shorter hash codes from a trained hash network: bit pruning (DHWP) and neuron merging (NMLayer-style).

A plain library (torch + acpsearch.hashing): no Optuna, Ray or checkpoint code. Public API:

- `CRITERIA` (name -> scorer), `BitData`, `hash_outputs`, `score_bits(criterion, data)`,
  `select_bits(criterion, data, k)`: scores of hash bits (loss, map, balance, quant, random,
  centre), higher = keep; the CSQ guard never keeps a set whose class centres coincide.
- `prune_bits(model, keep)`, `merge_bits(model, groups, signs)`, `apply_code_map(model, code_map)`:
  physical surgery on the hash layer (new module; the input is unchanged).
- `CodeMap`: how each short bit is formed from the base hash neurons (groups + signs; pruning =
  singletons); composable, stored in checkpoints (`to_dict` / `from_dict`), with `centres(base)`.
- `merge_step(data, n_merges)`: one NMLayer-style active phase (our design, see `merge`).
- `shorten(model, splits, lengths, method=, criterion=, ...)` -> list of `LengthResult`: the
  progressive driver with fine-tuning; `criterion="auto"` picks per length on validation mAP.
- `find_hash_layer`, `min_centre_distance`, `base_centres`, `code_loss`, `check_schedule`,
  `METHODS`, `CRITERION_CHOICES`.
"""

from __future__ import annotations

from acpsearch.codelength.codemap import CodeMap
from acpsearch.codelength.criteria import (
    CRITERIA,
    BitData,
    Selection,
    guard_keep,
    hash_outputs,
    score_bits,
    select_bits,
)
from acpsearch.codelength.layer import base_centres, code_loss, find_hash_layer, min_centre_distance
from acpsearch.codelength.merge import PARTNERS, merge_step
from acpsearch.codelength.shorten import (
    CRITERION_CHOICES,
    METHODS,
    LengthResult,
    check_choices,
    check_schedule,
    shorten,
)
from acpsearch.codelength.surgery import apply_code_map, merge_bits, prune_bits

__all__ = [
    "CRITERIA",
    "CRITERION_CHOICES",
    "METHODS",
    "PARTNERS",
    "BitData",
    "CodeMap",
    "LengthResult",
    "Selection",
    "apply_code_map",
    "base_centres",
    "check_choices",
    "check_schedule",
    "code_loss",
    "find_hash_layer",
    "guard_keep",
    "hash_outputs",
    "merge_bits",
    "merge_step",
    "min_centre_distance",
    "prune_bits",
    "score_bits",
    "select_bits",
    "shorten",
]
