"""Phase finetune: the finalists are pruned and fine-tuned as Ray Tune trials (ASHA stops weak ones
early), one trial each in the companion study NAME.finetune (curve = intermediate values;
ASHA-stopped = PRUNED); their test metrics are computed on Ray tasks."""

from __future__ import annotations

from typing import Any

from acpsearch.service import keys
from acpsearch.service import study as st
from acpsearch.service.candidates import finalists
from acpsearch.service.context import Record, StudyRun
from acpsearch.service.finalist_trials import (
    add_trials,
    check_some_complete,
    finish_finalists,
    record_epochs_spent,
    tune_finalists,
)
from acpsearch.service.retries import fail_leftovers

NAME = "finetune"


def run(ctx: StudyRun, records: dict[str, dict[str, Any]], ray_mod: Any) -> Record:
    """Fine-tune the finalists as Ray Tune trials (ASHA stops weak ones early).

    Each finalist is a trial of NAME.finetune: params = keep ratios, intermediate values = val
    mAP per epoch, user attrs = candidate number and costs; finished with val mAP as value, or
    PRUNED when ASHA stopped it. Finalists already finished are skipped on resume."""
    import optuna

    ft_study = st.finetune_study(ctx.storage, ctx.study)
    ctx.study.set_user_attr(keys.FINETUNE_STUDY, ft_study.study_name)
    fail_leftovers(ft_study, "runner stopped during fine-tuning")
    finished = {
        t.user_attrs.get(keys.T_CANDIDATE)
        for t in ft_study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        )
    }
    chosen = finalists(ctx, records.get("rerank"))
    ft = ctx.spec.finetune
    out_dir = ctx.dir() / "finalists"
    out_dir.mkdir(parents=True, exist_ok=True)
    if ft.halving is not None:  # successive halving over growing epochs (service/rungs.py)
        from acpsearch.service.rungs import run_rungs

        return Record(run_rungs(ctx, ray_mod, ft_study, chosen, out_dir))
    todo = [t for t in chosen if t.number not in finished]
    ctx.reporter.phase(f"finetune: {len(chosen)} finalists x {ft.epochs} epochs", total=len(todo))
    trial_ids = add_trials(ctx, ft_study, todo)
    if todo:
        errors = tune_finalists(ctx, ray_mod, todo, trial_ids, out_dir)
        finish_finalists(ctx, ray_mod, todo, trial_ids, out_dir, errors)
    check_some_complete(ft_study)
    spent = record_epochs_spent(ctx, ft_study)
    return Record(
        {"epochs_spent": spent, "finalists": [t.number for t in chosen], "finetune_study": ft_study.study_name}
    )
