"""The finalist trials of the fine-tuning phase: one RUNNING trial of NAME.finetune per finalist,
fine-tuned as Ray Tune trials (ASHA or FIFO), finished with their test metrics (Ray tasks); and the
fine-tuning epochs a study spent. Used by the finetune phase and by successive halving (rungs)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from acpsearch.service import keys
from acpsearch.service import optuna_adapter as adapter
from acpsearch.service import study as st
from acpsearch.service.candidates import ratios_of, round_to_of
from acpsearch.service.context import StudyRun
from acpsearch.service.progress import clean
from acpsearch.service.retries import MAX_ATTEMPTS
from acpsearch.service.tune_recorder import TuneRecorder


def check_some_complete(ft_study: Any) -> None:
    import optuna

    if not ft_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise RuntimeError("finetune: no finalist finished its fine-tuning (see the FAIL trials' fail_reason)")


def record_epochs_spent(ctx: StudyRun, ft_study: Any) -> int:
    """The fine-tuning epochs all finalist trials trained (each trial's last reported epoch; a
    failed or retried one counts what it reported), stored as the study attribute FINETUNE_EPOCHS."""
    spent = sum(max((int(k) for k in t.intermediate_values), default=0) for t in ft_study.get_trials(deepcopy=False))
    ctx.study.set_user_attr(keys.FINETUNE_EPOCHS, spent)
    return spent


def add_trials(ctx: StudyRun, ft_study: Any, todo: list[Any]) -> dict[int, int]:
    """One RUNNING trial of NAME.finetune per finalist to fine-tune: {candidate number: trial id}."""
    import optuna

    trial_ids: dict[int, int] = {}
    for cand in todo:
        frozen = optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING,
            params=dict(cand.params),
            distributions=dict(cand.distributions),
            user_attrs=clean(
                {
                    keys.T_CANDIDATE: cand.number,
                    keys.T_SCORE: cand.value,
                    keys.T_SOURCE: st.source(cand),
                    **{
                        k: cand.user_attrs.get(k)
                        for k in (
                            keys.T_FLOPS,
                            keys.T_PARAMS,
                            keys.T_FLOPS_RATIO,
                            keys.T_PARAMS_RATIO,
                            keys.T_BITS,
                            ctx.spec.search.ranker,
                        )
                    },
                }
            ),
        )
        ft_study.add_trial(frozen)
        trial_ids[cand.number] = adapter.trial_id(ft_study.get_trials(deepcopy=False)[-1])
    return trial_ids


def tune_scheduler(ft: Any, metric: str = keys.T_VAL_MAP) -> Any:
    """ASHA (finetune.early_stop: asha) on the validation `metric`, or FIFO."""
    if ft.early_stop == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="training_iteration",
            metric=metric,
            mode="max",
            max_t=ft.epochs + 1,
            grace_period=min(2, ft.epochs + 1),
            reduction_factor=2,
        )
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()  # type: ignore[no-untyped-call]


def tune_finalists(
    ctx: StudyRun, ray_mod: Any, todo: list[Any], trial_ids: dict[int, int], out_dir: Path, spec: Any = None
) -> dict[int, str]:
    """The finalists fine-tuned as Ray Tune trials; {candidate number: error} of those that failed.
    `spec`: the spec the trials train by (a halving rung's: its epochs, no early stop)."""
    import contextlib
    import sys

    from ray import tune

    from acpsearch.devices import check_cluster_fits, resources_of, trial_resources
    from acpsearch.service.labelfree import work_splits
    from acpsearch.service.tasks import finetune_trainable

    spec = spec or ctx.spec
    metric = keys.metric_of(spec.task).val
    recorder = TuneRecorder(ctx.storage, trial_ids, metric=metric)
    # every finalist trial asks for finetune.resources ({cpu: 1} as before; gpu > 0: it trains on
    # cuda, on the GPU share Ray gives it); a request no node can meet would wait forever
    check_cluster_fits(ray_mod.cluster_resources(), resources_of(spec.finetune), "finetune.resources")
    trainable = tune.with_resources(
        tune.with_parameters(
            finetune_trainable,
            ckpt=ctx.base_ckpt,
            spec=spec,
            splits=work_splits(ctx.spec, ctx.splits, ctx.base_ckpt),  # label-free: no labels, tags
            out_dir=str(out_dir),
            allow_factories=ctx.allow,
        ),
        trial_resources(spec),
    )
    space = {
        "finalist": tune.grid_search(
            [{"number": t.number, "ratios": ratios_of(t), "round_to": round_to_of(t)} for t in todo]
        )
    }
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            scheduler=tune_scheduler(spec.finetune, metric),
            max_concurrent_trials=max(1, ctx.workers),
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=f"{ctx.name}-finetune-{uuid.uuid4().hex[:6]}",
            storage_path=str(ctx.artifacts / "ray-results"),
            callbacks=[recorder.callback],
            verbose=0,
            log_to_file=True,
            # a finalist whose worker dies is started again, boundedly
            failure_config=tune.FailureConfig(max_failures=MAX_ATTEMPTS - 1),
        ),
    )
    with contextlib.redirect_stdout(sys.stderr):  # Tune prints tables on stdout; --json owns stdout
        tuner.fit()
    return recorder.errors


def finish_finalists(
    ctx: StudyRun,
    ray_mod: Any,
    todo: list[Any],
    trial_ids: dict[int, int],
    out_dir: Path,
    errors: dict[int, str],
    epochs: int | None = None,
) -> None:
    """Test metrics (Ray tasks) of each fine-tuned finalist; its trial ends COMPLETE (val mAP as
    value), PRUNED (stopped before `epochs`, default finetune.epochs) or FAIL (no result, with the
    reason)."""
    import optuna

    from acpsearch.service.tasks import evaluate_checkpoint

    # Test metrics are computed BEFORE a finalist trial is finished: Optuna forbids attribute
    # updates on finished trials, and every finalist must carry val_map and test_map.
    remote = ray_mod.remote(num_cpus=1)(evaluate_checkpoint)
    refs = {}
    for cand in todo:
        path = out_dir / f"finalist-{cand.number}.pt"
        if cand.number not in errors and path.exists():
            refs[cand.number] = remote.remote(str(path), ctx.spec, latency=False, allow_factories=ctx.allow)
    for cand in todo:
        tid = trial_ids[cand.number]
        path = out_dir / f"finalist-{cand.number}.pt"
        frozen = ctx.storage.get_trial(tid)
        curve = {int(k): float(v) for k, v in frozen.intermediate_values.items()}
        if cand.number not in refs or not curve:
            ctx.storage.set_trial_user_attr(tid, keys.T_FAIL_REASON, errors.get(cand.number, "no result"))
            ctx.storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)
            continue
        store_result(ctx, tid, path, curve, ray_mod.get(refs[cand.number]), epochs or ctx.spec.finetune.epochs)
        ctx.reporter.advance(1)
        ctx.check()


def store_result(ctx: StudyRun, tid: int, path: Path, curve: dict[int, float], ev: dict[str, Any], epochs: int) -> None:
    """A fine-tuned finalist's metrics into its trial, which ends COMPLETE or PRUNED."""
    import optuna

    from acpsearch.checkpoint import load_model
    from acpsearch.service.tasks import measure_latency_ms

    assert ctx.base_ckpt is not None
    full = ctx.graph.cost()
    # Latency is timed here on the driver, one finalist after another, like the base net in
    # the base phase: parallel timings on a busy worker measured each other, not the model.
    shape = list(ctx.base_ckpt["input_shape"])
    ev["latency_ms"] = round(measure_latency_ms(load_model(path, allow_factories=ctx.allow), shape), 3)
    epochs_run = max(curve)
    stopped = epochs_run < epochs
    best_val = max(curve.values())
    metric = keys.metric_of(ctx.spec.task)
    attrs = {
        metric.val: best_val,
        **metric_attrs(ev, ctx.spec.task),
        keys.T_MEASURED_FLOPS: ev["flops"],
        keys.T_MEASURED_PARAMS: ev["params"],
        keys.T_MEASURED_FLOPS_RATIO: ev["flops"] / full.flops,
        keys.T_MEASURED_PARAMS_RATIO: ev["params"] / full.params,
        keys.T_LATENCY_MS: ev.get("latency_ms"),
        keys.T_EPOCHS_RUN: epochs_run,
        keys.T_STOPPED_EARLY: stopped,
        metric.before: curve.get(0),
        keys.T_PATH: str(path),
        keys.T_PR_CURVE: ev.get("pr_curve"),
    }
    if "ops" in ev:  # a binary network
        attrs.update(measured_ops=ev["ops"], measured_ops_ratio=ev["ops"] / full.ops, model_bits=ev["model_bits"])
    for key, val in clean(attrs).items():
        ctx.storage.set_trial_user_attr(tid, key, val)
    if stopped:  # ASHA stopped it: PRUNED, not COMPLETE (Tune would call it complete)
        ctx.storage.set_trial_state_values(tid, optuna.trial.TrialState.PRUNED)
    else:
        ctx.storage.set_trial_state_values(tid, optuna.trial.TrialState.COMPLETE, [best_val])


def metric_attrs(ev: dict[str, Any], task: str) -> dict[str, Any]:
    """A finalist's test metrics (and a classifier's top-5 ones) as trial attributes."""
    if task == "classification":
        top5 = {k: ev[k] for k in (keys.T_VAL_ACC_TOP5, keys.T_TEST_ACC_TOP5) if k in ev}  # 20+ classes
        return {keys.T_TEST_ACC: ev.get(keys.T_TEST_ACC), **top5}
    return {
        keys.T_TEST_MAP: ev["test_map"],
        keys.T_TEST_MAP_TOPK: ev["test_map_topk"],
        keys.T_TOPK: ev["topk"],
    }
