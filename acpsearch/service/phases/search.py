"""Phase search: Optuna ask/tell over the dynamic space; Ray actors score the candidates (one
COMPLETE trial each), round after round in a space narrowed around the best ones."""

from __future__ import annotations

import math
from typing import Any

from acpsearch.service import keys
from acpsearch.service import optuna_adapter as adapter
from acpsearch.service.candidates import candidate_attrs, round_space
from acpsearch.service.context import Record, StudyRun
from acpsearch.service.progress import clean
from acpsearch.service.retries import fail_leftovers, requeue
from acpsearch.service.workers import RankerPool, first_line

NAME = "search"


def run(ctx: StudyRun, records: dict[str, dict[str, Any]], ray_mod: Any) -> Record:
    """Optuna proposes keep ratios inside the dynamic space (define-by-run); Ray actors score them.

    Every candidate is one COMPLETE trial: params = keep ratios, value = ranker score, user attrs =
    costs, ratios of the unpruned net, similarity, constraint values (also set_constraint)."""
    import optuna

    study = ctx.study
    left = fail_leftovers(study, "runner stopped before the candidate was scored", waiting=False)
    requeued = requeue(study, left)
    target = int(ctx.spec.search.candidates)
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    ranker = ctx.spec.search.ranker
    ctx.reporter.phase(f"search: {ranker}", total=target)
    ctx.reporter.advance(done)
    if left:
        ctx.reporter.log(f"resumed: {done} candidates kept, {len(left)} unfinished marked FAIL, {requeued} re-queued")
    pool = RankerPool(ctx, ray_mod, ranker, ctx.workers)
    crashes = 0
    batch = max(8, 8 * ctx.workers)
    per_round = math.ceil(target / ctx.spec.search.rounds)
    spaces: dict[int, Any] = {}
    try:
        while done < target:
            ctx.check()
            rnd = min(done // per_round, ctx.spec.search.rounds - 1)
            k = min(batch, target - done, per_round * (rnd + 1) - done)  # a batch never spans two rounds
            space = spaces.get(rnd) or spaces.setdefault(rnd, round_space(ctx, rnd))
            trials = [study.ask() for _ in range(k)]
            strategies = [space.suggest(t) for t in trials]
            rt = ctx.space._rt  # space.round_to (4 when not given)
            attrs = candidate_attrs(ctx, strategies, round_to=rt)
            try:
                scores = pool.score([dict(s.ratios) for s in strategies], rt)
            except ray_mod.exceptions.RayError as exc:
                crashes += 1
                _fail_batch(ctx, trials, exc)
                pool = pool.replace(crashes, exc, "search")
                continue
            for i, (t, a, score) in enumerate(zip(trials, attrs, scores)):
                _tell(ctx, t, a, score, rnd=rnd, round_to=rt, node=pool.node_of(i))
            done += k
            ctx.reporter.advance(k, best=study.best_value)
    finally:
        pool.close()
    return Record(
        dict(
            candidates=done,
            ranker=ranker,
            space=clean(ctx.space.describe()),
            rounds={
                str(r): clean({k: v for k, v in sp.describe().items() if k in ("step", "ranges", "log10_size")})
                for r, sp in sorted(spaces.items())
            },
        )
    )


def _fail_batch(ctx: StudyRun, trials: list[Any], exc: BaseException) -> None:
    """A worker died (or raised) mid-batch: the batch's trials FAIL with the reason and their
    ratios are queued again; a fresh pool continues the search."""
    import optuna

    study = ctx.study
    reason = f"ray worker failed while scoring: {first_line(exc)}"
    for t in trials:
        t.set_user_attr(keys.T_FAIL_REASON, reason)
        study.tell(t, state=optuna.trial.TrialState.FAIL)
    n = requeue(study, [adapter.storage_of(study).get_trial(adapter.trial_id(t)) for t in trials])
    ctx.reporter.log(f"search: {reason}; {len(trials)} candidates FAIL, {n} re-queued")


def _tell(ctx: StudyRun, t: Any, a: dict[str, Any], score: float, *, rnd: int, round_to: int, node: str) -> None:
    """One scored candidate: its constraints, costs, score, round and node, then its value."""
    for key, val in a["constraints"].items():
        t.set_constraint(key, val)
        t.set_user_attr(keys.constraint(key), val)
    t.set_user_attr(keys.T_FEASIBLE, all(v <= 1e-9 for v in a["constraints"].values()))
    for key in (
        keys.T_FLOPS,
        keys.T_PARAMS,
        keys.T_FLOPS_RATIO,
        keys.T_PARAMS_RATIO,
        keys.T_LATENCY_MS,
        keys.T_KEEP,
        keys.T_BITS,
    ):
        if key in a:
            t.set_user_attr(key, a[key])
    t.set_user_attr(ctx.spec.search.ranker, round(float(score), 6))
    t.set_user_attr(keys.T_ROUND, rnd)
    if ctx.spec.space.round_to is not None:
        t.set_user_attr(keys.T_ROUND_TO, round_to)
    t.set_user_attr(keys.T_RAY_NODE, node)
    ctx.study.tell(t, float(score))
