"""Phase anchor: the budget's global-magnitude allocation joins the candidates as one more trial
(`search.anchor: magnitude`), scored by the ranker and always a finalist."""

from __future__ import annotations

from typing import Any

from acpsearch.service import keys
from acpsearch.service import study as st
from acpsearch.service.candidates import candidate_attrs, is_anchor, strategy_of
from acpsearch.service.context import Record, StudyRun
from acpsearch.service.progress import clean
from acpsearch.service.workers import score_on_ray

NAME = "anchor"


def run(ctx: StudyRun, records: dict[str, dict[str, Any]], ray_mod: Any) -> Record:
    """Add the budget's global-magnitude allocation (spec `search.anchor: magnitude`) as one more
    candidate, scored by the ranker like the others and always a finalist.

    Why: the similarity objective (encoder or direct code agreement) prefers lopsided structures
    at mild budgets that fine-tune worse than the magnitude allocation (ResNet-20, 50% FLOPs, 4
    fine-tuning epochs: 0.808 vs 0.817 test mAP, README), while at 25% FLOPs the search is far
    ahead (0.798 vs 0.748). With the anchor among the finalists, validation mAP decides between
    them, so the study is never left with only the lopsided ones. Kept counts are exact
    (round_to=1): rounded to multiples of 4 the allocation loses most of its quality (0.809)."""
    if ctx.spec.search.anchor is None or ctx.spec.finetune.top < 2 or st.phase_done(ctx.study, "finetune"):
        # (a study stored before anchors existed and resumed after its fine-tuning keeps its finalists)
        return Record({"anchor": None}, seconds=0.0)
    added = [t for t in ctx.study.get_trials(deepcopy=False) if is_anchor(t)]
    if added:  # the runner stopped after adding it but before marking the phase: keep that one
        t = added[0]
        kept = {k: int(v) for k, v in strategy_of(ctx, t).kept.items()}
        return Record({"anchor": ctx.spec.search.anchor, "trial": t.number, "kept": kept})
    strategy = _magnitude_allocation(ctx)
    if strategy is None:
        ctx.reporter.log("anchor: no magnitude allocation meets the budget; finalists come from the search only")
        return Record({"anchor": None})
    number = _add_anchor(ctx, ray_mod, strategy)
    kept = {k: int(v) for k, v in strategy.kept.items()}
    return Record({"anchor": ctx.spec.search.anchor, "trial": number, "kept": kept})


def _magnitude_allocation(ctx: StudyRun) -> Any:
    """The budget's global-magnitude PruningStrategy inside the space's bounds, or None."""
    from acpsearch.pruning import PruningStrategy

    b, full = ctx.spec.budget, ctx.graph.cost()

    def fits(s: Any) -> bool:
        c = ctx.graph.cost(s)
        ok = (b.flops is None or c.flops <= b.flops * full.flops) and (
            b.params is None or c.params <= b.params * full.params
        )
        ok = ok and (b.ops is None or c.ops <= b.ops * full.ops)
        if ok and b.bits is not None and ctx.graph.code_group is not None:
            ok = s.kept[ctx.graph.code_group] <= b.bits
        if ok and b.latency_ms is not None and ctx.space.latency is not None:
            ok = ctx.space.latency.predict(ctx.graph, s) <= b.latency_ms
        return bool(ok)

    # space.round_to when given, else exact counts; excluded groups whole, bounds per group
    rt = ctx.spec.space.round_to or 1
    limits = dict(ctx.space.bounds)
    limits.update({n: (1.0, 1.0) for n in ctx.space.fixed})
    return PruningStrategy.global_magnitude(
        ctx.graph,
        fits,
        criterion=ctx.spec.space.criterion,
        min_keep=ctx.spec.space.min_keep,
        round_to=rt,
        bounds=limits,
    )


def _add_anchor(ctx: StudyRun, ray_mod: Any, strategy: Any) -> int:
    """Score the allocation with the study's ranker and add it as a COMPLETE trial; its number."""
    import optuna

    rt = ctx.spec.space.round_to or 1
    ratios = {n: float(r) for n, r in strategy.ratios.items()}
    score = score_on_ray(ctx, ray_mod, ctx.spec.search.ranker, [ratios], round_to=rt)[0]
    a = candidate_attrs(ctx, [strategy], round_to=rt)[0]
    attrs: dict[str, Any] = {
        keys.T_SOURCE: f"anchor:{ctx.spec.search.anchor}",
        keys.T_ROUND_TO: rt,
        ctx.spec.search.ranker: round(float(score), 6),
        keys.T_FEASIBLE: all(v <= 1e-9 for v in a["constraints"].values()),
    }
    attrs.update(
        {
            k: a[k]
            for k in (
                keys.T_FLOPS,
                keys.T_PARAMS,
                keys.T_FLOPS_RATIO,
                keys.T_PARAMS_RATIO,
                keys.T_LATENCY_MS,
                keys.T_BITS,
            )
            if k in a
        }
    )
    attrs.update({keys.constraint(k): v for k, v in a["constraints"].items()})
    trial = optuna.trial.create_trial(
        params={f"keep/{n}": r for n, r in ratios.items()},
        distributions={f"keep/{n}": optuna.distributions.FloatDistribution(0.0, 1.0) for n in ratios},
        value=float(score),
        user_attrs=clean(attrs),
        system_attrs={f"constraints:{k}": float(v) for k, v in a["constraints"].items()},
    )  # as Trial.set_constraint
    ctx.study.add_trial(trial)
    return int(ctx.study.get_trials(deepcopy=False)[-1].number)
