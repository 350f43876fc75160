"""Phase select: the winner is the finalist with the best validation mAP (never the test queries),
exported as winner.pt, compared with the base network (interleaved latency) and marked where
optuna-dashboard shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from acpsearch.service import keys
from acpsearch.service import optuna_adapter as adapter
from acpsearch.service import study as st
from acpsearch.service.candidates import ratios_of, round_to_of, strategy_of
from acpsearch.service.context import Record, StudyRun
from acpsearch.service.progress import clean
from acpsearch.service.trust import finalists_of, store_trust, trust_report

NAME = "select"
# the metrics copied flat into the study's attributes (winner.KEY, base.KEY) per task
_HEADLINE = {
    "retrieval": (keys.T_TEST_MAP, keys.T_TEST_MAP_TOPK, keys.T_VAL_MAP),
    "classification": (keys.T_TEST_ACC, keys.T_VAL_ACC, keys.T_TEST_ACC_TOP5, keys.T_VAL_ACC_TOP5),
}
_OPTIONAL = (keys.T_TEST_ACC_TOP5, keys.T_VAL_ACC_TOP5)  # stored only with 20 or more classes


def run(ctx: StudyRun, records: dict[str, dict[str, Any]], ray_mod: Any) -> Record:
    """Winner = best validation mAP among fully fine-tuned finalists (never the test queries);
    exported as winner.pt (pruning record + weights) and stored as the study's `winner`."""
    import optuna

    ft_study = st.finetune_study(ctx.storage, ctx.study)
    metric = keys.metric_of(ctx.spec.task)
    complete = [
        t
        for t in ft_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get(metric.val) is not None
    ]
    if not complete:
        raise RuntimeError("select: no COMPLETE finalist to choose from")
    best = _choose(ctx, ft_study, complete)
    winner_path = _export(ctx, best)
    art = ctx.upload(winner_path)
    cand = ctx.study.trials[int(best.user_attrs[keys.T_CANDIDATE])]
    winner = {k: v for k, v in best.user_attrs.items() if k != keys.T_PR_CURVE}
    winner.update(
        {
            "finetune_trial": best.number,
            keys.T_PATH: str(winner_path),
            "artifact_id": art,
            "ratios": st.round_ratios(ratios_of(cand)),
            keys.T_SCORE: cand.value,
            "channels": {g.name: int(g.channels) for g in ctx.graph.groups},
            keys.T_SOURCE: st.source(cand),
            keys.T_ROUND_TO: round_to_of(cand),
            "kept": {k: int(v) for k, v in strategy_of(ctx, cand).kept.items()},
        }
    )
    if ctx.graph.code_group is not None:  # joint search: the winner's code length, measured
        winner[keys.T_BITS] = code_length(ctx, winner_path)
    base_rec = records.get("base") or {}
    ctx.reporter.phase("select: latency, base vs winner (interleaved)")
    cmp = _compare_base_winner(ctx, base_rec, winner_path)
    if cmp is not None:
        winner["latency_compare"] = cmp
    _store_winner(ctx, winner, base_rec, cmp)
    mark_winner(ctx.study, ft_study, best, cand, complete, ratios=winner["ratios"])
    trust = trust_report(finalists_of(ft_study, ctx.spec.task, records.get("rerank")), best.number)
    trust["ranker"] = ctx.spec.search.rerank or ctx.spec.search.ranker
    store_trust(ctx.study, trust)
    return Record({"winner": best.number, "finalists": {str(t.number): t.user_attrs.get(metric.val) for t in complete}})


def _choose(ctx: StudyRun, ft_study: Any, complete: list[Any]) -> Any:
    """The finalist with the best val mAP (val accuracy); of those tied, the one Optuna names best."""
    val = keys.metric_of(ctx.spec.task).val
    best = max(complete, key=lambda t: (t.user_attrs[val], -t.number))
    # optuna-dashboard's "Best Trial" of NAME.finetune is Optuna's best trial (COMPLETE, value = val mAP):
    # among finalists tied on val mAP, take the one Optuna names, so that the two are the same trial
    try:
        optuna_best = ft_study.best_trial
    except ValueError:
        optuna_best = None
    if optuna_best is not None and optuna_best.number != best.number:
        tied = [t for t in complete if t.number == optuna_best.number and t.user_attrs[val] == best.user_attrs[val]]
        if tied:
            best = tied[0]
        else:
            ctx.reporter.log(
                f"select: trial {optuna_best.number} of {ft_study.study_name} has the best stored value "
                f"but not the best {val}; the winner is trial {best.number} (by {val})"
            )
    return best


def _export(ctx: StudyRun, best: Any) -> Path:
    """winner.pt: the winning finalist's weights, pruning record and where it came from."""
    from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint

    winner_path = ctx.dir() / "winner.pt"
    metric = keys.metric_of(ctx.spec.task)
    ck = read_checkpoint(best.user_attrs[keys.T_PATH])
    save_checkpoint(
        winner_path,
        model_from_checkpoint(ck, allow_factories=ctx.allow),
        ck["model"],
        ck["input_shape"],
        pruning=ck["pruning"],
        meta={
            **(ck.get("meta") or {}),
            "study": ctx.name,
            "finetune_trial": best.number,
            metric.val: best.user_attrs[metric.val],
            metric.test: best.user_attrs.get(metric.test),
        },
    )
    return winner_path


def _store_winner(ctx: StudyRun, winner: dict[str, Any], base_rec: dict[str, Any], cmp: dict[str, Any] | None) -> None:
    """The study's `winner`, its flat headline copies and the base's, and the latency comparison."""
    ctx.study.set_user_attr(keys.WINNER, clean(winner))
    # Flat copies of the headline numbers: optuna-dashboard cuts long attribute values (~1000 chars)
    # in its tables, so the nested dicts alone would be unreadable there.
    for key in (
        *_HEADLINE[ctx.spec.task],
        keys.T_FLOPS_RATIO,
        keys.T_PARAMS_RATIO,
        keys.T_LATENCY_MS,
        keys.T_MEASURED_FLOPS,
        keys.T_MEASURED_PARAMS,
        "finetune_trial",
        keys.T_CANDIDATE,
        keys.T_BITS,
    ):
        if key == keys.T_BITS and key not in winner:
            continue
        if key not in _OPTIONAL or winner.get(key) is not None:
            ctx.study.set_user_attr(keys.winner(key), clean(winner.get(key)))
    for key in (*_HEADLINE[ctx.spec.task], "flops", "params", "latency_ms"):
        if key not in _OPTIONAL or base_rec.get(key) is not None:
            ctx.study.set_user_attr(keys.base(key), clean(base_rec.get(key)))
    if cmp is not None:  # the comparison to read (the separate latency_ms values above are minutes apart)
        from acpsearch.service.report import latency_row

        lb, lw, speed = latency_row({}, {"latency_compare": cmp})
        ctx.study.set_user_attr(
            keys.LATENCY_COMPARE,
            f"{speed}: base {lb} ms, winner {lw} ms "
            f"(batch {cmp['batch']}, {cmp['threads']} thread, {cmp['rounds']} interleaved rounds)",
        )


def code_length(ctx: StudyRun, path: Path) -> int:
    """The code length a checkpoint's network emits (its output's width on one example)."""
    import torch

    from acpsearch.checkpoint import load_model, read_checkpoint
    from acpsearch.pruning.probe import output_code

    net = load_model(path, allow_factories=ctx.allow).eval()
    with torch.no_grad():
        out = output_code(net(torch.zeros(*read_checkpoint(path)["input_shape"])))
    return int(out.shape[-1])


def _compare_base_winner(ctx: StudyRun, base_rec: dict[str, Any], winner_path: Path) -> dict[str, Any] | None:
    """Base and winner timed INTERLEAVED on the driver (latency.compare_latency: alternating
    rounds, same input, batch and one thread): the two numbers the report compares, with their
    spread. Separate timings minutes apart let machine noise decide which one looks faster."""
    from acpsearch.checkpoint import load_model, read_checkpoint
    from acpsearch.search.latency import compare_latency
    from acpsearch.service.tasks import LATENCY_BATCH

    if not base_rec.get("path") or not Path(base_rec["path"]).is_file():
        return None
    ckpt = read_checkpoint(base_rec["path"])
    models = {
        "base": load_model(base_rec["path"], allow_factories=ctx.allow),
        "winner": load_model(winner_path, allow_factories=ctx.allow),
    }
    res = compare_latency(models, list(ckpt["input_shape"]), batch=LATENCY_BATCH, rounds=7, repeats=5, threads=1)
    return {
        "batch": res["batch"],
        "threads": res["threads"],
        "rounds": res["rounds"],
        **{f"{name}_{k}": v for name, m in res["models"].items() for k, v in m.items() if k != "rounds_ms"},
    }


def winner_note(ft_name: str, best: Any, cand: Any, complete: list[Any], task: str | None = None) -> str:
    """The note of the winning fine-tune trial (markdown, short lines: the dashboard's note box
    does not wrap long ones): it is the winner, and why (in the task's metric: mAP or accuracy)."""
    m = keys.metric_of(task)
    u = best.user_attrs
    lines = [
        "## Winner",
        "",
        f"This finalist is the **winner** of `{ft_name[: -len(st.FINETUNE_SUFFIX)]}`.",
        "",
        f"- chosen by **validation {m.label} {_f4(u.get(m.val))}**, the best of the fully fine-tuned finalists",
    ]
    lines += [
        f"  - trial {t.number}: val {m.label} {_f4(t.user_attrs.get(m.val))}"
        for t in complete
        if t.number != best.number
    ]
    lines += [
        f"- **test {m.label} {_f4(u.get(m.test))}**: reported, never used to choose",
        f"- pruned structure: candidate trial {cand.number} of the search study",
        f"  (ranker score {_f4(cand.value)}, not {m.label})",
        f"- FLOPs ratio {_f4(u.get(keys.T_MEASURED_FLOPS_RATIO, u.get(keys.T_FLOPS_RATIO)))}",
        "",
    ]
    return "\n".join(lines)


def _f4(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def mark_winner(
    study: Any, ft_study: Any, best: Any, cand: Any, complete: list[Any], ratios: dict[str, float] | None = None
) -> None:
    """Mark the winner where optuna-dashboard shows it: user attr `winner: true` + a note on the
    winning trial of NAME.finetune and on the candidate trial of the search study it came from,
    a note on the fine-tune study, and the search study's objective named as a ranker score (its
    "Best Trial" is the best-scored candidate, not the winner). The fine-tune study's objective is
    val mAP and only fully fine-tuned finalists (COMPLETE) carry a value, so its best trial is the
    winner (ties: the lowest trial number, as in the select phase)."""
    spec = st.study_spec(study)
    ranker, m = spec.search.ranker, keys.metric_of(spec.task)
    storage = adapter.storage_of(study)
    u = best.user_attrs
    st.set_finished_trial_user_attr(storage, adapter.trial_id(best), keys.T_WINNER, True)
    st.set_finished_trial_user_attr(storage, adapter.trial_id(cand), keys.T_WINNER, True)
    if ratios and keys.T_KEEP not in cand.user_attrs:  # an anchor (or an older study's) candidate: rounded ratios
        st.set_finished_trial_user_attr(storage, adapter.trial_id(cand), keys.T_KEEP, st.round_ratios(ratios))
    st.save_trial_note(
        ft_study, adapter.trial_id(best), winner_note(ft_study.study_name, best, cand, complete, spec.task)
    )
    st.save_trial_note(
        study,
        adapter.trial_id(cand),
        (
            f"## Winner's structure\n\nThis candidate became the study's **winner**:\n\n"
            f"- fine-tuned as trial {best.number} of `{ft_study.study_name}`\n"
            f"- chosen by validation {m.label} {_f4(u.get(m.val))} "
            f"(test {m.label} {_f4(u.get(m.test))}, reported only)\n"
            f"- its value here ({_f4(cand.value)}) is the `{ranker}` ranker score, not {m.label}\n"
        ),
    )
    st.set_objective_names(study, [st.objective_name(ranker, m.label)])
    from optuna_dashboard import save_note

    save_note(
        ft_study,
        (
            f"# {ft_study.study_name}\n\nThe finalists of `{study.study_name}`, fine-tuned; "
            f"objective: validation {m.label}.\n\n"
            f"**Best Trial here = the winner: trial {best.number}** (val {m.label} {_f4(u.get(m.val))}, "
            f"test {m.label} {_f4(u.get(m.test))}, reported only).\n\n"
            "Finalists that early stopping (ASHA) ended are PRUNED and have no value:\n"
            "their partial curves never make them best.\n"
        ),
    )
