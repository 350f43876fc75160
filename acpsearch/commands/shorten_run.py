"""The work of `acpsearch shorten` once its input is checked: run `acpsearch.codelength.shorten`,
evaluate every length on the test split and write its checkpoint as it comes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def run_shorten(
    ckpt: dict[str, Any],
    source: Path,
    model: nn.Module,
    splits: Any,
    schedule: list[int],
    options: dict[str, Any],
    out_dir: Path,
    topk: int,
    log: Any = None,
) -> dict[str, Any]:
    """Shorten `model` along `schedule`; returns the JSON document of the run (one row per length)."""
    from acpsearch.checkpoint import save_checkpoint
    from acpsearch.checkpoint.code import shortened_record
    from acpsearch.codelength import LengthResult, shorten
    from acpsearch.hashing import evaluate

    out_dir.mkdir(parents=True, exist_ok=True)
    base_record = {k: v for k, v in (ckpt.get("pruning") or {}).items() if k != "code"}
    base_meta = dict(ckpt.get("meta") or {})
    k = min(topk, int(splits.database[0].shape[0]))
    rows: list[dict[str, Any]] = []

    def done(res: LengthResult) -> None:
        metrics = evaluate(res.model, splits, topk=k)
        path = out_dir / f"bits{res.bits}.pt"
        contiguous: dict[str, Any] = {"memory_format": torch.contiguous_format}
        meta = {
            **base_meta,
            "bits": res.bits,
            "loss": options["loss"],
            "val_map": res.val_map,
            "metrics": metrics,
            "shortened_from": str(source),
            "code": {
                "method": res.method,
                "criterion": res.criterion,
                "candidates": res.candidates,
                "epochs": res.epochs,
                "guarded": res.guarded,
            },
        }
        record = shortened_record(base_record or None, options["hash_layer"], res.record())
        save_checkpoint(path, res.model.to(**contiguous), ckpt["model"], ckpt["input_shape"], pruning=record, meta=meta)
        row = {
            "bits": res.bits,
            "method": res.method,
            "criterion": res.criterion,
            "candidates": res.candidates,
            "val_map": res.val_map,
            "map_all": metrics["map_all"],
            "map_topk": metrics["map_topk"],
            "min_centre_distance": res.min_centre_distance,
            "guarded": res.guarded,
            "seconds": round(res.seconds, 2),
            "checkpoint": str(path),
        }
        rows.append(row)
        if log is not None:
            log.print(
                f"{res.bits} bits: {res.criterion}, val mAP {res.val_map:.4f}, test mAP@all "
                f"{metrics['map_all']:.4f} ({res.seconds:.1f}s) -> {path}"
            )

    shorten(model, splits, schedule, on_length=done, **options)
    return {
        "checkpoint": str(source),
        "dataset": splits.dataset,
        "topk": k,
        "schedule": schedule,
        "method": options["method"],
        "lengths": rows,
    }
