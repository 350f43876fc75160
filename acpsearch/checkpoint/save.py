"""Writing checkpoints: atomically (temporary file + rename), weights only, with the model config
that rebuilds the architecture and, for a pruned model, the record of the channels it kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from acpsearch.checkpoint.validate import FORMAT, VERSION
from acpsearch.errors import CheckpointError
from acpsearch.pruning import PruningStrategy, make_record


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    model_cfg: dict[str, Any],
    input_shape: list[int] | tuple[int, ...],
    pruning: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a weights-only checkpoint (state dict + config + optional pruning record)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_cfg,
        "input_shape": [int(v) for v in input_shape],
        "pruning": pruning,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:  # a Python file: a failed write's OSError (ENOSPC, EFBIG) stays attached
            torch.save(ckpt, f)
        tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, EFBIG, Ctrl-C) leaves no partial file
        raise
    return path


def save_pruned(
    path: str | Path,
    pruned_model: nn.Module,
    strategy: PruningStrategy | dict[str, Any] | None,
    model_cfg: dict[str, Any],
    input_shape: list[int] | tuple[int, ...],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a weights-only checkpoint of a pruned model that ``acpsearch.load_model`` reloads.

    `strategy` may be the PruningStrategy used, or a record; by default the record attached by
    ``prune`` is used (it holds the indices actually kept)."""
    record = getattr(pruned_model, "acp_pruning_record", None)
    if isinstance(strategy, dict):
        record = strategy
    elif record is None and strategy is not None:
        record = make_record(strategy)
    if record is None:
        raise CheckpointError("save_pruned: no pruning record (pass the strategy or a record)")
    return save_checkpoint(path, pruned_model, model_cfg, input_shape, pruning=record, meta=meta)


def save_zoo_checkpoint(
    path: str | Path, model: nn.Module, name: str, bits: int, in_channels: int, image_size: int, meta: dict[str, Any]
) -> Path:
    """Save a zoo hash net (`acpsearch.hashing.create_model(name, bits=, in_channels=, image_size=)`)
    as a checkpoint that acpsearch.load_model reloads."""
    contiguous: dict[str, Any] = {"memory_format": torch.contiguous_format}  # torch's stubs lack the keyword
    model = model.to(**contiguous)
    cfg = {"zoo": name, "kwargs": {"bits": int(bits), "in_channels": int(in_channels), "image_size": int(image_size)}}
    return save_checkpoint(path, model, cfg, [1, int(in_channels), int(image_size), int(image_size)], meta=meta)


def classifier_config(name: str, classes: int, in_channels: int, image_size: int) -> dict[str, Any]:
    """The "model" entry of a zoo classifier's checkpoint (`acpsearch.classification.create_classifier`)."""
    kwargs = {"classes": int(classes), "in_channels": int(in_channels), "image_size": int(image_size)}
    return {"zoo": name, "task": "classification", "kwargs": kwargs}


def save_classifier_checkpoint(
    path: str | Path,
    model: nn.Module,
    name: str,
    classes: int,
    in_channels: int,
    image_size: int,
    meta: dict[str, Any],
) -> Path:
    """Save a zoo classifier (`create_classifier(name, classes, in_channels=, image_size=)`) as a
    checkpoint that acpsearch.load_model reloads; its meta says ``task: classification``."""
    contiguous: dict[str, Any] = {"memory_format": torch.contiguous_format}  # torch's stubs lack the keyword
    model = model.to(**contiguous)
    cfg = classifier_config(name, classes, in_channels, image_size)
    shape = [1, int(in_channels), int(image_size), int(image_size)]
    return save_checkpoint(path, model, cfg, shape, meta={**meta, "task": "classification"})
