"""What a checkpoint dict may hold: the format's name and version, the bounds on its entries, and
`validate_checkpoint`, which checks the type and size of every entry before anything is built or
allocated (a crafted checkpoint must not ask for 256 GB)."""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from acpsearch.checkpoint.code import validate_code
from acpsearch.errors import CheckpointError

FORMAT = "acpsearch"
VERSION = 1


# Bounds checked BEFORE anything is built or allocated (a crafted checkpoint must not ask for 256 GB).
MAX_BITS = 4096
MAX_KWARG = 100_000  # |int| / |float| of a model kwarg
MAX_DIM = 4096  # channels / height / width of input_shape
MAX_INPUT_ELEMENTS = 1 << 24  # elements of the example input
MAX_MODEL_ELEMENTS = 1 << 28  # parameters + buffers of a zoo model (1 GiB of float32)
TASKS = ("retrieval", "classification")  # model.task: a zoo hash network (the default) or a zoo classifier
CLASSIFIER_KWARGS = ("classes", "in_channels", "image_size")  # what create_classifier takes
_FACTORY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _plain(value: Any, where: str, depth: int = 0) -> None:
    """Model kwargs are plain data: None, bool, int, float, str and lists / mappings of them, with
    numbers bounded (a kwarg of 10**9 asks the model for absurd sizes)."""
    if depth > 4:
        raise CheckpointError(f"{where}: nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str) and len(value) > 1000:
            raise CheckpointError(f"{where}: string longer than 1000 characters")
        return
    if isinstance(value, (int, float)):
        if not abs(value) <= MAX_KWARG:  # NaN fails this too
            raise CheckpointError(f"{where}: {value!r} is out of range (|value| <= {MAX_KWARG})")
        return
    if isinstance(value, (list, tuple)):
        if len(value) > 1000:
            raise CheckpointError(f"{where}: list of more than 1000 items")
        for i, v in enumerate(value):
            _plain(v, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        if len(value) > 1000:
            raise CheckpointError(f"{where}: mapping of more than 1000 items")
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where}: keys must be strings, got {type(k).__name__}")
            _plain(v, f"{where}.{k}", depth + 1)
        return
    raise CheckpointError(f"{where}: must be plain data (number, string, list, mapping), got {type(value).__name__}")


def _validate_model_cfg(cfg: Any, where: str) -> None:
    if not isinstance(cfg, dict):
        raise CheckpointError(
            f"{where}: entry 'model' must be a mapping with 'zoo' or 'factory', got {type(cfg).__name__}"
        )
    has_zoo, has_factory = cfg.get("zoo") is not None, cfg.get("factory") is not None
    if has_zoo == has_factory:
        raise CheckpointError(f"{where}: entry 'model' must name exactly one of 'zoo' or 'factory'")
    if has_zoo:
        from acpsearch.hashing import MODEL_NAMES

        if not isinstance(cfg["zoo"], str) or cfg["zoo"].lower() not in MODEL_NAMES:
            raise CheckpointError(
                f"{where}: model.zoo: unknown zoo model {cfg['zoo']!r}; known: {', '.join(MODEL_NAMES)}"
            )
    elif not isinstance(cfg["factory"], str) or not _FACTORY_RE.fullmatch(cfg["factory"]):
        raise CheckpointError(f"{where}: model.factory: must be 'package.module:function', got {cfg['factory']!r}")
    kwargs = cfg.get("kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise CheckpointError(f"{where}: model.kwargs: must be a mapping, got {type(kwargs).__name__}")
    _plain(kwargs or {}, f"{where}: model.kwargs")
    bits = (kwargs or {}).get("bits")
    if has_zoo and bits is not None and not (is_int(bits) and 1 <= bits <= MAX_BITS):
        raise CheckpointError(f"{where}: model.kwargs.bits: must be an integer in [1, {MAX_BITS}], got {bits!r}")
    _validate_task(cfg, has_zoo, where)


def model_task(cfg: dict[str, Any]) -> str:
    """The task of a checkpoint's (validated) model entry: "classification" or "retrieval"."""
    return "classification" if cfg.get("task") == "classification" else "retrieval"


def _validate_task(cfg: dict[str, Any], has_zoo: bool, where: str) -> None:
    """model.task: "retrieval" (a hash network, the default) or "classification": a zoo classifier
    (`acpsearch.classification.create_classifier`) whose kwargs are classes / in_channels / image_size."""
    task = cfg.get("task")
    if task is None or task == "retrieval":
        return
    if task != "classification":
        raise CheckpointError(f"{where}: model.task: must be one of {', '.join(TASKS)}, got {task!r}"[:300])
    if not has_zoo:
        raise CheckpointError(f"{where}: model.task: classification needs a zoo network ('zoo'), not a factory")
    kwargs = cfg.get("kwargs") or {}
    unknown = sorted(set(kwargs) - set(CLASSIFIER_KWARGS))
    if unknown:
        raise CheckpointError(
            f"{where}: model.kwargs.{unknown[0]}: not a classifier argument; known: {', '.join(CLASSIFIER_KWARGS)}"
        )
    classes = kwargs.get("classes")
    if not (isinstance(classes, int) and is_int(classes) and 2 <= classes <= MAX_KWARG):
        raise CheckpointError(f"{where}: model.kwargs.classes: must be an integer in [2, {MAX_KWARG}], got {classes!r}")


def _validate_input_shape(shape: Any, where: str) -> None:
    if not isinstance(shape, (list, tuple)) or not 2 <= len(shape) <= 4 or not all(is_int(v) for v in shape):
        raise CheckpointError(f"{where}: input_shape: must be a list of 2 to 4 integers, got {shape!r}"[:300])
    if any(v < 1 for v in shape) or any(v > MAX_DIM for v in shape[-3:]) or shape[0] > MAX_DIM:
        raise CheckpointError(f"{where}: input_shape: every size must be in [1, {MAX_DIM}], got {list(shape)}")
    total = math.prod(shape)
    if total > MAX_INPUT_ELEMENTS:
        raise CheckpointError(
            f"{where}: input_shape: {list(shape)} has {total:,} elements (more than {MAX_INPUT_ELEMENTS:,})"
        )


def validate_state_dict(sd: Any, where: str) -> None:
    if not isinstance(sd, dict):
        raise CheckpointError(f"{where}: state_dict: must be a mapping of names to tensors, got {type(sd).__name__}")
    for key, t in sd.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: state_dict: keys must be strings, got {type(key).__name__}")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{where}: state_dict[{key!r}]: must be a tensor, got {type(t).__name__}")
        if (
            t.layout != torch.strided
            or t.is_quantized
            or t.is_complex()
            or not (t.is_floating_point() or t.dtype in _INT_DTYPES)
        ):
            kind = str(t.dtype).replace("torch.", "") + (
                "" if t.layout == torch.strided else " " + str(t.layout).replace("torch.", "")
            )
            raise CheckpointError(
                f"{where}: state_dict[{key!r}]: {kind} tensor; only real floating-point or integer weights are loaded"
            )


_INT_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _validate_meta(meta: Any, where: str) -> None:
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: meta: must be a mapping, got {type(meta).__name__}")
    for key in ("dataset", "data_dir"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise CheckpointError(f"{where}: meta.{key}: must be a string, got {type(meta[key]).__name__}")
    proto = meta.get("protocol")
    if proto is None:
        return
    if not isinstance(proto, dict):
        raise CheckpointError(f"{where}: meta.protocol: must be a mapping, got {type(proto).__name__}")
    for key, v in proto.items():
        if not (is_int(v) and 0 <= v < 2**32):
            raise CheckpointError(f"{where}: meta.protocol.{key}: must be an integer in [0, 2**32), got {v!r}"[:300])


def _validate_pruning(rec: Any, where: str) -> None:
    """The record `acpsearch.pruning.make_record` writes: groups = {name: {channels, kept}}."""
    if rec is None:
        return
    if not isinstance(rec, dict):
        raise CheckpointError(f"{where}: pruning: must be a mapping (a pruning record), got {type(rec).__name__}")
    if rec.get("hash_layer") is not None and not isinstance(rec["hash_layer"], str):
        raise CheckpointError(f"{where}: pruning.hash_layer: must be a module name, got {rec['hash_layer']!r}"[:300])
    groups = rec.get("groups", {})
    if not isinstance(groups, dict):
        raise CheckpointError(
            f"{where}: pruning.groups: must be a mapping of group names to kept channels, got {type(groups).__name__}"
        )
    for name, ent in groups.items():
        at = f"{where}: pruning.groups[{name!r}]"
        if not isinstance(name, str) or not isinstance(ent, dict):
            raise CheckpointError(f"{at}: must be a mapping with 'channels' and 'kept'")
        for key in ("channels", "kept"):
            if key not in ent:
                raise CheckpointError(f"{at}: missing {key!r}")
        channels, kept = ent["channels"], ent["kept"]
        if not (is_int(channels) and 1 <= channels <= MAX_KWARG):
            raise CheckpointError(f"{at}.channels: must be an integer in [1, {MAX_KWARG}], got {channels!r}"[:300])
        if (
            not isinstance(kept, (list, tuple))
            or not kept
            or len(kept) > channels
            or not all(is_int(i) and 0 <= i < channels for i in kept)
        ):
            raise CheckpointError(f"{at}.kept: must be a non-empty list of channel indices in [0, {channels})")
    validate_code(rec.get("code"), where)
    cost = rec.get("cost")
    if cost is not None and not (isinstance(cost, dict) and all(is_int(cost.get(k)) for k in ("flops", "params"))):
        raise CheckpointError(f"{where}: pruning.cost: must be a mapping with integer 'flops' and 'params'")


def validate_checkpoint(ckpt: dict[str, Any], where: str = "checkpoint") -> None:
    """Check the type and size of every entry BEFORE anything is built: one CheckpointError line
    naming the file (`where`) and the entry."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{where}: not an acpsearch checkpoint (foreign format)")
    for key in ("model", "input_shape", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{where}: missing entry {key!r}")
    _validate_model_cfg(ckpt["model"], where)
    _validate_input_shape(ckpt["input_shape"], where)
    validate_state_dict(ckpt["state_dict"], where)
    _validate_meta(ckpt.get("meta"), where)
    _validate_pruning(ckpt.get("pruning"), where)
