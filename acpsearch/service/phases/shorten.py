"""Phase shorten (spec `code:`): the winner's code shortened along `code.lengths` with the
code-length library (`acpsearch.codelength.shorten`: bit pruning or neuron merging, fine-tuned
after every step, `criterion: auto` chosen per length on validation mAP). Every length becomes
an artifact `bits{K}.pt` (load it with `acpsearch.load_model`: it emits K values) and a row of
the study attribute `code.lengths` ({bits, criterion, val/test mAP, ...}); flat copies
`code.{K}bits.test_map` / `.val_map` are dashboard columns; the report shows mAP against bits.

Resume: each length is stored as soon as it is done; a resumed run continues the schedule from
the last stored length (its network, code map and centres), so a stopped phase redoes at most
the step it was in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from acpsearch.service import keys
from acpsearch.service.context import Record, StudyRun
from acpsearch.service.progress import clean

NAME = "shorten"
_FLAT = ("val_map", "test_map", "test_map_topk")


def run(ctx: StudyRun, records: dict[str, dict[str, Any]], ray_mod: Any) -> Record:
    """Shorten the winner along code.lengths; store every length (artifact + study attributes)."""
    code = ctx.spec.code
    if code is None:
        return Record({"lengths": None, "reason": "no code: section in the spec"}, seconds=0.0)
    from acpsearch.checkpoint import load_model, read_checkpoint
    from acpsearch.checkpoint.code import code_of
    from acpsearch.codelength import shorten

    winner_path = Path((ctx.study.user_attrs.get(keys.WINNER) or {})[keys.T_PATH])
    done = _stored(ctx)
    start = Path(done[-1]["path"]) if done else winner_path
    model = load_model(start, allow_factories=ctx.allow)
    ck = read_checkpoint(start)
    code_map, centres = code_of(ck) if done else (None, None)
    stored = None if done else (ck.get("meta") or {}).get("code_centres")
    if stored is not None:  # a joint winner's short code: the base's centres of its kept bits
        import torch

        centres = torch.tensor(stored, dtype=torch.float32)
    current = _bits(ctx, start)
    todo = [k for k in code.lengths if k < current and all(k != r["bits"] for r in done)]
    skipped = [k for k in code.lengths if k >= _bits(ctx, winner_path)]
    if skipped:
        ctx.reporter.log(f"shorten: lengths {skipped} are not shorter than the winner's code; left out")
    if done:
        ctx.reporter.log(f"shorten: resumed after {done[-1]['bits']} bits ({len(done)} lengths stored)")
    ctx.reporter.phase(f"shorten: {code.method}, criterion {code.criterion}", total=len(todo))
    if todo:
        ft = ctx.spec.finetune
        shorten(
            model,
            ctx.splits,
            todo,
            loss=ctx.spec.train.loss,
            method=code.method,
            criterion=code.criterion,
            epochs=code.finetune_epochs,
            lr=ft.lr,
            lr_decay=code.lr_decay,
            backbone_lr_ratio=code.backbone_lr_ratio,
            batch_size=ft.batch_size,
            seed=ctx.spec.search.seed,
            centres=centres,
            code_map=code_map,
            hash_layer=ctx.spec.model.hash_layer,
            on_length=lambda res: _store_length(ctx, winner_path, res, done),
        )
    return Record(
        {
            "lengths": [r["bits"] for r in done],
            "method": code.method,
            "criterion": code.criterion,
            "from_bits": _bits(ctx, winner_path),
            "skipped": skipped,
        }
    )


def _stored(ctx: StudyRun) -> list[dict[str, Any]]:
    """The lengths an earlier run stored (their checkpoints still there), longest first."""
    rows = [r for r in ctx.study.user_attrs.get(keys.CODE_LENGTHS) or [] if Path(r.get("path", "")).is_file()]
    return sorted(rows, key=lambda r: -int(r["bits"]))


def _bits(ctx: StudyRun, path: Path) -> int:
    from acpsearch.service.phases.select import code_length

    return code_length(ctx, path)


def _store_length(ctx: StudyRun, winner_path: Path, res: Any, done: list[dict[str, Any]]) -> None:
    """One finished length: checkpoint bits{K}.pt (winner's record + the code map), its test
    metrics, the artifact, and the study attributes; then the lease is checked."""
    from acpsearch.checkpoint import read_checkpoint, save_checkpoint
    from acpsearch.checkpoint.code import shortened_record
    from acpsearch.service.tasks import evaluate_checkpoint

    ck = read_checkpoint(winner_path)
    rec = ck.get("pruning") or {}
    hash_layer = rec.get("hash_layer") or ctx.spec.model.hash_layer or "hash_layer"
    path = ctx.dir() / f"bits{res.bits}.pt"
    save_checkpoint(
        path,
        res.model.to("cpu"),
        ck["model"],
        ck["input_shape"],
        pruning=shortened_record(rec or None, hash_layer, res.record()),
        meta={**(ck.get("meta") or {}), "bits": res.bits, "shortened_from": str(winner_path), "val_map": res.val_map},
    )
    ev = evaluate_checkpoint(
        str(path), ctx.spec, pr_curve=False, latency=False, threads=None, allow_factories=ctx.allow
    )
    row = {
        "bits": int(res.bits),
        "method": res.method,
        "criterion": res.criterion,
        "val_map": float(res.val_map),
        "test_map": ev["test_map"],
        "test_map_topk": ev["test_map_topk"],
        "flops": ev["flops"],
        "params": ev["params"],
        "candidates": {k: round(float(v), 4) for k, v in (res.candidates or {}).items()},
        "min_centre_distance": res.min_centre_distance,
        "guarded": bool(res.guarded),
        "seconds": round(float(res.seconds), 2),
        "path": str(path),
        "artifact_id": ctx.upload(path),
    }
    done.append(row)
    ctx.study.set_user_attr(keys.CODE_LENGTHS, clean(done))
    for key in _FLAT:
        ctx.study.set_user_attr(keys.code_length(res.bits, key), clean(row[key]))
    ctx.reporter.advance(1, bits=res.bits, val_map=res.val_map)
    ctx.check()
