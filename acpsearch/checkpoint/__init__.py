"""Checkpoint format shared by train / prune / export.

A checkpoint is a plain dict of tensors, strings, numbers, lists and dicts, so it loads with
``torch.load(weights_only=True)`` and never unpickles code:

    {"format": "acpsearch", "version": 1,
     "model": {"zoo": "resnet20", "kwargs": {...}}            # or {"factory": "pkg.mod:fn", "kwargs": {...}}
                                                               # or a classifier: {"zoo": "resnet20",
                                                               #   "task": "classification",
                                                               #   "kwargs": {"classes": 10, ...}}
     "input_shape": [1, C, H, W],                              # example input used for tracing/pruning
     "pruning": None | <pruning record, see acpsearch.pruning>,
     "state_dict": {...},
     "meta": {...}}                                           # free-form: dataset, bits, loss, metrics ...

`load_model` rebuilds the architecture from "model", replays "pruning" (if any) on it, then loads
the state dict, so pruned models reload without pickled modules.

The package sits above acpsearch.hashing and acpsearch.pruning (neither imports it):
`validate` (what a checkpoint may hold), `read` (weights-only loading), `build` (the module a
checkpoint describes), `save` (atomic writing).
"""

from acpsearch.checkpoint.build import (
    build_from_config,
    import_factory,
    load_model,
    load_state_dict_strict,
    model_from_checkpoint,
    spec_contradictions,
    study_refusal,
)
from acpsearch.checkpoint.read import plain_state_dict, read_checkpoint, read_weights
from acpsearch.checkpoint.save import (
    classifier_config,
    save_checkpoint,
    save_classifier_checkpoint,
    save_pruned,
    save_zoo_checkpoint,
)
from acpsearch.checkpoint.validate import FORMAT, TASKS, VERSION, model_task, validate_checkpoint

__all__ = [
    "FORMAT",
    "VERSION",
    "TASKS",
    "build_from_config",
    "classifier_config",
    "import_factory",
    "load_model",
    "load_state_dict_strict",
    "model_from_checkpoint",
    "model_task",
    "plain_state_dict",
    "read_checkpoint",
    "read_weights",
    "save_checkpoint",
    "save_classifier_checkpoint",
    "save_pruned",
    "save_zoo_checkpoint",
    "spec_contradictions",
    "study_refusal",
    "validate_checkpoint",
]
