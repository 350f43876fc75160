"""Shortened codes in checkpoints (`acpsearch shorten`, `acpsearch.codelength`).

A checkpoint of a network whose hash layer was shortened keeps the BASE architecture in "model"
(its kwargs still say the base bits) and adds to its pruning record a "code" entry:

    "pruning": {"format": "acpsearch-pruning", "hash_layer": "hash_layer", "groups": {...},  # channels, maybe {}
                "code": {"from_bits": 64, "bits": 12, "kept": [...]                          # pruned bits
                         # or "groups": [[3, 17], ...], "signs": [[1, -1], ...]               # merged bits
                         "method": "prune", "criterion": "balance", "centres": [[...]] | None}}

`replay_record` rebuilds the network: the channel record (if it prunes any group) replayed as
before, then the hash layer cut / merged by the code map, so `load_model` returns a network that
emits the short code. "centres" are the CSQ class centres of the short code (fine-tuning it
further must reuse them)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from acpsearch.codelength import CodeMap, apply_code_map
from acpsearch.errors import AcpError, CheckpointError
from acpsearch.pruning import apply_record
from acpsearch.pruning.prune import RECORD_FORMAT


def validate_code(code: Any, where: str) -> None:
    """One CheckpointError line when a record's "code" entry is malformed (None: no entry)."""
    if code is None:
        return
    at = f"{where}: pruning.code"
    cmap = CodeMap.from_dict(code, at)
    if code.get("bits") is not None and code["bits"] != cmap.bits:
        raise CheckpointError(f"{at}.bits: {code['bits']!r} but the map forms {cmap.bits} bits")
    centres = code.get("centres")
    if centres is not None and not (
        isinstance(centres, list)
        and centres
        and all(isinstance(r, list) and len(r) == cmap.bits and all(v in (1, -1) for v in r) for r in centres)
    ):
        raise CheckpointError(f"{at}.centres: must be a list of +-1 rows of {cmap.bits} values")


def replay_record(model: nn.Module, record: dict[str, Any], example: torch.Tensor) -> nn.Module:
    """The channel pruning of `record` (if any) then its code map (if any), on a fresh base network."""
    code = record.get("code") if isinstance(record, dict) else None
    if code is None:
        return apply_record(model, record, example)
    channel = {k: v for k, v in record.items() if k != "code"}
    if channel.get("groups"):
        model = apply_record(model, channel, example)
    try:
        short = apply_code_map(model, CodeMap.from_dict(code, "pruning.code"), record.get("hash_layer"), example)
    except CheckpointError:
        raise
    except AcpError as exc:
        raise CheckpointError(f"pruning.code: {exc}") from None
    object.__setattr__(short, "acp_pruning_record", record)
    return short


def code_of(ckpt: dict[str, Any]) -> tuple[CodeMap | None, torch.Tensor | None]:
    """The code map and centres a checkpoint stores (None, None for a network never shortened)."""
    code = (ckpt.get("pruning") or {}).get("code")
    if code is None:
        return None, None
    centres = code.get("centres")
    return CodeMap.from_dict(code), None if centres is None else torch.tensor(centres, dtype=torch.float32)


def shortened_record(base_record: dict[str, Any] | None, hash_layer: str, code: dict[str, Any]) -> dict[str, Any]:
    """The pruning record of a shortened network: the base's channel record (if any) plus "code"."""
    if base_record:
        return {**base_record, "code": code}
    return {
        "format": RECORD_FORMAT,
        "version": 1,
        "hash_layer": hash_layer,
        "strategy": None,
        "groups": {},
        "code": code,
    }
