"""Successive halving of the finalists (finetune.halving): rung after rung of Ray Tune runs.

Rung i fine-tunes its finalists for the schedule's epochs (acpsearch.search.halving.schedule), each
from the pruned network, as one Ray Tune run (FIFO: every trial runs its epochs); the best 1/eta by
validation value go on to rung i + 1. Every (finalist, rung) is one trial of NAME.finetune with the
user attribute `rung`: a lower rung's trials end PRUNED (a low-fidelity result, never the winner),
the last rung's COMPLETE with their test metrics, as without halving, so the select phase chooses
among them by validation value.

Why rungs of plain Tune runs and not Ray Tune's ASHA scheduler: ASHA promotes asynchronously, so
how many finalists reach each rung depends on which trial reports first; here the rung sizes and the
epochs spent are the schedule's, known before the phase starts (finetune.epoch_budget is checked
against them), and storage says which rungs are done: a resumed run starts at the first unfinished
rung and re-runs only the finalists of that rung without a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from acpsearch.service import keys
from acpsearch.service.context import StudyRun


def rung_results(ft_study: Any, rung: int, metric: str) -> dict[int, float]:
    """{candidate number: best validation value} of the rung's finished trials."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return {
        int(t.user_attrs[keys.T_CANDIDATE]): float(t.user_attrs[metric])
        for t in ft_study.get_trials(deepcopy=False, states=states)
        if t.user_attrs.get(keys.T_RUNG) == rung and t.user_attrs.get(metric) is not None
    }


def rung_spec(spec: Any, epochs: int) -> Any:
    """The spec a rung's trials train by: `epochs` fine-tuning epochs, no early stop."""
    ft = spec.finetune.model_copy(update={"epochs": int(epochs), "early_stop": None})
    return spec.model_copy(update={"finetune": ft})


def run_rungs(ctx: StudyRun, ray_mod: Any, ft_study: Any, chosen: list[Any], out_dir: Path) -> dict[str, Any]:
    """Fine-tune `chosen` (ranked finalists) by successive halving; the phase record: the rungs
    (size, epochs, candidate numbers), the schedule's epochs and the epochs spent."""
    from acpsearch.search.halving import schedule, total_epochs
    from acpsearch.service.finalist_trials import (
        add_trials,
        check_some_complete,
        finish_finalists,
        record_epochs_spent,
        tune_finalists,
    )

    h, ft = ctx.spec.finetune.halving, ctx.spec.finetune
    assert h is not None
    plan = schedule(len(chosen), h.eta, h.min_epochs, h.final, ft.epochs)
    metric = keys.metric_of(ctx.spec.task).val
    by_number = _Trials({t.number: t for t in chosen})
    entrants = [t.number for t in chosen]
    rungs: list[dict[str, Any]] = []
    for i, rung in enumerate(plan):
        last = i == len(plan) - 1
        rungs.append({"rung": i, "size": len(entrants), "epochs": rung.epochs, "finalists": list(entrants)})
        ctx.study.set_user_attr(keys.FINETUNE_RUNGS, rungs)
        done = rung_results(ft_study, i, metric)
        todo = [by_number[c] for c in entrants if c not in done]
        ctx.reporter.phase(
            f"finetune: rung {i + 1}/{len(plan)}, {len(entrants)} finalists x {rung.epochs} epochs", total=len(todo)
        )
        if todo:
            rdir = out_dir / f"rung-{i}"
            rdir.mkdir(parents=True, exist_ok=True)
            trial_ids = add_trials(ctx, ft_study, todo)
            for tid in trial_ids.values():
                ctx.storage.set_trial_user_attr(tid, keys.T_RUNG, i)
            spec = rung_spec(ctx.spec, rung.epochs)
            errors = tune_finalists(ctx, ray_mod, todo, trial_ids, rdir, spec=spec)
            if last:
                finish_finalists(ctx, ray_mod, todo, trial_ids, rdir, errors, epochs=rung.epochs)
            else:
                _finish_lower(ctx, todo, trial_ids, rdir, errors)
        ctx.check()
        if not last:
            entrants = _next_entrants(ctx, rung_results(ft_study, i, metric), entrants, by_number, plan[i + 1].size, i)
            if not entrants:
                raise RuntimeError(f"finetune: no finalist of rung {i} finished (see the FAIL trials' fail_reason)")
    check_some_complete(ft_study)
    spent = record_epochs_spent(ctx, ft_study)
    return {
        "epochs_spent": spent,
        "epochs_planned": total_epochs(plan),
        "rungs": [{k: r[k] for k in ("size", "epochs")} for r in rungs],
        **({"refit": by_number.refit} if by_number.refit is not None else {}),
        "finalists": [t.number for t in chosen],
        "finetune_study": ft_study.study_name,
    }


class _Trials(dict[int, Any]):
    """Candidate trials by number, and the record of the refit after rung 0 (None: no refit)."""

    refit: dict[str, Any] | None = None


def _next_entrants(
    ctx: StudyRun, results: dict[int, float], entrants: list[int], by_number: _Trials, size: int, rung: int
) -> list[int]:
    """The next rung's entrants: the best `size` of this rung by validation value; after rung 0
    with halving.refit, a ridge fit on rung 0's results may give up to half of the places to
    candidates not yet fine-tuned (they join `by_number`)."""
    from acpsearch.search.halving import promote

    h = ctx.spec.finetune.halving
    if rung != 0 or h is None or not h.refit:
        return promote(results, entrants, size)
    from acpsearch.search.diversity import keep_vectors
    from acpsearch.search.refit import refit_entrants
    from acpsearch.service.candidates import is_anchor, ranked_candidates, strategy_of

    div = ctx.spec.finetune.diversity
    limit = div.pool if div is not None else 4 * ctx.spec.finetune.top
    pool = [t for t in ranked_candidates(ctx, limit=limit) if not is_anchor(t) and t.number not in entrants]
    trials = [by_number[c] for c in entrants] + pool
    channels = {g.name: int(g.channels) for g in ctx.graph.groups}
    vec = keep_vectors([strategy_of(ctx, t).kept for t in trials], channels)
    vectors = {t.number: vec[j] for j, t in enumerate(trials)}
    out, fit = refit_entrants(results, vectors, entrants, [t.number for t in pool], size, max_new=size // 2)
    by_number.update({t.number: t for t in pool if t.number in out})
    by_number.refit = fit
    return out


def _finish_lower(
    ctx: StudyRun, todo: list[Any], trial_ids: dict[int, int], out_dir: Path, errors: dict[int, str]
) -> None:
    """A lower rung's trials end PRUNED with their best validation value and epochs (no test
    metrics: a lower rung only decides who goes on), or FAIL with the reason."""
    import optuna

    metric = keys.metric_of(ctx.spec.task)
    for cand in todo:
        tid = trial_ids[cand.number]
        path = out_dir / f"finalist-{cand.number}.pt"
        curve = {int(k): float(v) for k, v in ctx.storage.get_trial(tid).intermediate_values.items()}
        if cand.number in errors or not path.exists() or not curve:
            ctx.storage.set_trial_user_attr(tid, keys.T_FAIL_REASON, errors.get(cand.number, "no result"))
            ctx.storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)
            continue
        attrs = {
            metric.val: max(curve.values()),
            metric.before: curve.get(0),
            keys.T_EPOCHS_RUN: max(curve),
            keys.T_PATH: str(path),
        }
        for key, val in attrs.items():
            ctx.storage.set_trial_user_attr(tid, key, val)
        ctx.storage.set_trial_state_values(tid, optuna.trial.TrialState.PRUNED)
        ctx.reporter.advance(1)
