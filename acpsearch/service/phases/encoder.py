"""Phase encoder: train the GCN structure encoder (only when the ranker or the re-ranker is
`similarity`) -> artifact encoder.pt. `attach` gives the later phases its state."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from acpsearch.service.context import Record, StudyRun
from acpsearch.service.spec import StudySpec
from acpsearch.service.workers import score_on_ray

NAME = "encoder"


def needs_encoder(spec: StudySpec) -> bool:
    return spec.search.ranker == "similarity" or spec.search.rerank == "similarity"


def run(ctx: StudyRun, records: dict[str, dict[str, Any]], ray_mod: Any) -> Record:
    """Train the structure encoder contrastively (no fine-tuned labels); `effect` computes its
    functional signal (`encoder.target`: code agreement after BN recalibration, optionally with
    residual-branch damage, or a short fine-tune's validation mAP) on Ray actors."""
    from acpsearch.encoder import train_encoder

    if not needs_encoder(ctx.spec):
        return Record({"path": None, "reason": f"ranker {ctx.spec.search.ranker!r} needs no encoder"}, seconds=0.0)
    enc = ctx.spec.encoder
    sp = ctx.spec.space
    rng = random.Random(ctx.spec.search.seed)
    kwargs: dict[str, Any] = dict(
        criterion=sp.criterion, min_keep=sp.min_keep, step=sp.step, seed=ctx.spec.search.seed, epochs=enc.epochs
    )
    ctx.reporter.phase(f"encoder: {enc.objective}", total=enc.epochs)
    # strategies from the budget's own space (positives / negatives near where we search)
    strategies = ctx.space.sample_many(enc.strategies, rng)
    if enc.objective == "sacp":
        kwargs.update(n_strategies=enc.strategies)
    else:
        kwargs.update(signal=effect_signal(ctx, ray_mod, [dict(s.ratios) for s in strategies]))
    result = train_encoder(
        ctx.graph,
        enc.objective,
        strategies=strategies,
        progress=lambda e, loss: ctx.reporter.advance(1, loss=loss),
        **kwargs,
    )
    path = ctx.dir() / "encoder.pt"
    result.encoder.save(path)
    art = ctx.upload(path)
    return Record(
        dict(
            path=str(path),
            artifact_id=art,
            objective=enc.objective,
            target=enc.target if enc.objective == "effect" else None,
            strategies=len(strategies),
            losses=[round(float(x), 4) for x in result.losses],
        )
    )


def effect_signal(ctx: StudyRun, ray_mod: Any, ratios: list[dict[str, float]]) -> list[float]:
    """The `effect` objective's training signal per strategy (`encoder.target`): code agreement,
    the rank average of code agreement and residual-branch damage (scaled to (0, 1]), or the
    validation mAP after `encoder.ft_steps` fine-tuning steps."""
    if ctx.spec.encoder.target == "ft_steps":
        return score_on_ray(ctx, ray_mod, "ft_steps", ratios, chunk=1, round_to=ctx.space._rt)
    agree = score_on_ray(ctx, ray_mod, "code_agreement", ratios, round_to=ctx.space._rt)
    if ctx.spec.encoder.target == "agreement":
        return agree
    from acpsearch.encoder import rank_average

    return rank_average(agree, score_on_ray(ctx, ray_mod, "branch_damage", ratios, round_to=ctx.space._rt))


def attach(ctx: StudyRun, rec: dict[str, Any]) -> StudyRun:
    """The run with the trained encoder's state (None when the study needs no encoder)."""
    from acpsearch.encoder import StructureEncoder

    state = StructureEncoder.load(rec["path"]).state() if rec.get("path") else None
    return dataclasses.replace(ctx, encoder_state=state)
