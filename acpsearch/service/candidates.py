"""The candidate trials of a search study as the phases read them: their costs and budget slack,
the ranked distinct candidates, their keep ratios and pruning strategies, the anchor, the space of
each search round, and the finalists."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from acpsearch.service import keys
from acpsearch.service import study as st
from acpsearch.service.context import StudyRun

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from acpsearch.pruning import PruningStrategy


def candidate_attrs(run: StudyRun, strategies: list[Any], round_to: int = 4) -> list[dict[str, Any]]:
    """Costs (closed form from the graph), ratios and budget slack of each candidate."""
    names = [g.name for g in run.graph.groups]
    rows = np.array([[s.ratios.get(n, 1.0) for n in names] for s in strategies], dtype=np.float64)
    flops, params = run.graph.cost_batch(rows, round_to=round_to)
    ops = run.graph.ops_batch(rows, round_to=round_to)
    full = run.graph.cost()
    b = run.spec.budget
    out = []
    for i, s in enumerate(strategies):
        fr, pr = float(flops[i]) / full.flops, float(params[i]) / full.params
        cons = {}
        if b.flops is not None:
            cons["flops"] = round(fr - b.flops, 6)
        if b.params is not None:
            cons["params"] = round(pr - b.params, 6)
        if b.ops is not None:
            cons["ops"] = round(float(ops[i]) / full.ops - b.ops, 6)
        code = run.graph.code_group
        if code is not None:  # joint search: the code length is a cost (and budget.bits its cap)
            rec_bits = {keys.T_BITS: int(s.kept[code])}
            if b.bits is not None:
                cons["bits"] = int(s.kept[code]) - int(b.bits)
        else:
            rec_bits = {}
        out.append(
            {
                **rec_bits,
                keys.T_FLOPS: int(flops[i]),
                keys.T_PARAMS: int(params[i]),
                keys.T_FLOPS_RATIO: round(fr, 6),
                keys.T_PARAMS_RATIO: round(pr, 6),
                "constraints": cons,
                # Optuna's stepped floats carry float noise (0.6000000000000001): shown rounded
                keys.T_KEEP: st.round_ratios(s.ratios),
            }
        )
    if run.space is not None and run.space.latency is not None:
        lat = run.space.latency.predict_batch(run.graph, rows, round_to)
        for i, rec in enumerate(out):
            rec[keys.T_LATENCY_MS] = round(float(lat[i]), 4)
            if b.latency_ms is not None:
                rec["constraints"]["latency_ms"] = round(float(lat[i]) - b.latency_ms, 4)
    return out


def round_space(run: StudyRun, rnd: int) -> Any:
    """The space of search round `rnd`: round 0 is the budget's space; each later round narrows
    the previous one around the `elite` best candidates of the rounds before it (finer grid).
    Rebuilt from the stored trials, so a resumed search continues in the same space."""
    space = run.space
    for j in range(1, rnd + 1):
        elite = [t for t in ranked_candidates(run) if int(t.user_attrs.get(keys.T_ROUND, 0)) < j][
            : run.spec.search.elite
        ]
        if elite:
            space = space.narrow([ratios_of(t) for t in elite])
    return space


def ranked_candidates(run: StudyRun, limit: int | None = None) -> list[FrozenTrial]:
    """Feasible COMPLETE candidates, best ranker score first, one per distinct pruned network:
    different ratios can round to the same kept channel counts (round_to), and fine-tuning the
    same network twice would waste a finalist slot."""
    import optuna

    trials = run.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    trials = [t for t in trials if t.user_attrs.get(keys.T_FEASIBLE, True) and t.value is not None]
    seen: set[tuple[tuple[str, int], ...]] = set()
    unique = []
    for t in sorted(trials, key=lambda t: (-t.value, t.number)):
        key = tuple(sorted((k, int(v)) for k, v in strategy_of(run, t).kept.items()))
        if key not in seen:
            seen.add(key)
            unique.append(t)
            if limit is not None and len(unique) >= limit:
                break
    return unique


def ratios_of(trial: FrozenTrial) -> dict[str, float]:
    prefix = "keep/"
    return {k[len(prefix) :]: float(v) for k, v in trial.params.items() if k.startswith(prefix)}


def round_to_of(trial: FrozenTrial) -> int:
    """Kept-channel rounding unit of a candidate: the space's 4, or the anchor's own (1)."""
    return int(trial.user_attrs.get(keys.T_ROUND_TO, 4))


def strategy_of(run: StudyRun, trial: FrozenTrial) -> PruningStrategy:
    from acpsearch.pruning import PruningStrategy

    return PruningStrategy(run.graph, ratios_of(trial), criterion=run.spec.space.criterion, round_to=round_to_of(trial))


def is_anchor(trial: FrozenTrial) -> bool:
    return not st.is_searched(trial)


def finalists(run: StudyRun, rerank: dict[str, Any] | None) -> list[FrozenTrial]:
    """The anchor (if any) plus the top (top - 1) searched candidates, in ranker order (or in the
    order of the scores of the rerank record); with finetune.diversity, (top - 1) chosen for
    diversity among the `pool` best of them."""
    ranked = ranked_candidates(run)
    anchors = [t for t in ranked if is_anchor(t)][:1]
    ranked = [t for t in ranked if not is_anchor(t)]
    if anchors:  # the same network as a searched candidate is fine-tuned once, as the anchor
        key = strategy_of(run, anchors[0]).kept
        ranked = [t for t in ranked if strategy_of(run, t).kept != key]
    scores = (rerank or {}).get("scores") or {}
    if scores:
        ranked = sorted(
            [t for t in ranked if str(t.number) in scores], key=lambda t: (-scores[str(t.number)], t.number)
        )
    k = run.spec.finetune.top - len(anchors)
    if run.spec.finetune.diversity is not None:
        return anchors + diverse(run, ranked[: run.spec.finetune.diversity.pool], k, anchors)
    return anchors + ranked[:k]


def diverse(run: StudyRun, pool: list[FrozenTrial], k: int, fixed: list[FrozenTrial]) -> list[FrozenTrial]:
    """`k` of `pool` (best first) chosen for diversity (finetune.diversity): the best one, then
    greedy max-min distance of the kept-channel fractions, also from the `fixed` finalists."""
    from acpsearch.search.diversity import diverse_subset, keep_vectors

    channels = {g.name: int(g.channels) for g in run.graph.groups}
    vec = keep_vectors([strategy_of(run, t).kept for t in pool], channels)
    fx = keep_vectors([strategy_of(run, t).kept for t in fixed], channels) if fixed else None
    return [pool[i] for i in diverse_subset(vec, k, fixed=fx)]
