"""The study report: markdown note (optuna-dashboard shows it on the study page), a JSON report,
and plots (similarity vs FLOPs of all candidates, keep ratio per group of the winner,
precision-recall of base vs winner) both as dashboard graph objects and as one HTML artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from acpsearch.service import code_report, keys
from acpsearch.service import optuna_adapter as adapter
from acpsearch.service import study as st
from acpsearch.service.trust import trust_lines


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v / 1e6:.3f} M" if abs(v) >= 1_000_000 else f"{v / 1e3:.1f} k"
    return str(v)


def _change(base: Any, new: Any, ratio: bool = False) -> str:
    if base in (None, 0) or new is None:
        return "–"
    if ratio:
        return f"{new / base:.1%} of base"  # 0.4981 -> "49.8% of base"
    return f"{new - base:+.4f}"


def speedup(base_ms: Any, new_ms: Any, base_range: Any = None, new_range: Any = None) -> str:
    """How the winner's latency compares with the base's, in words: "1.25x faster", "1.04x
    slower" (never "0.96x faster"). With the spread of both measurements ((low, high): the
    interquartile range of the interleaved rounds), overlapping spreads are "no measurable
    difference"; so is a ratio that rounds to 1.00x."""
    if not isinstance(base_ms, (int, float)) or not isinstance(new_ms, (int, float)) or base_ms <= 0 or new_ms <= 0:
        return "–"
    if base_range and new_range:
        (blo, bhi), (nlo, nhi) = base_range, new_range
        if blo <= nhi and nlo <= bhi:
            return "no measurable difference"
    ratio = base_ms / new_ms
    if f"{ratio:.2f}" == "1.00" or f"{1 / ratio:.2f}" == "1.00":
        return "no measurable difference"
    return f"{ratio:.2f}x faster" if ratio > 1 else f"{new_ms / base_ms:.2f}x slower"


def latency_row(b: dict[str, Any], w: dict[str, Any]) -> tuple[str, str, str]:
    """(base, winner, change) cells of the latency row: the interleaved comparison of phase_select
    with its spread when the study has one, else the separate measurements (older studies)."""
    cmp = w.get("latency_compare") or {}
    if cmp.get("base_median_ms") and cmp.get("winner_median_ms"):
        cells = []
        for who in ("base", "winner"):
            cells.append(f"{cmp[f'{who}_median_ms']:.2f} (IQR {cmp[f'{who}_q1_ms']:.2f}–{cmp[f'{who}_q3_ms']:.2f})")
        change = speedup(
            cmp["base_median_ms"],
            cmp["winner_median_ms"],
            (cmp["base_q1_ms"], cmp["base_q3_ms"]),
            (cmp["winner_q1_ms"], cmp["winner_q3_ms"]),
        )
        return cells[0], cells[1], change
    bl, wl = b.get("latency_ms"), w.get("latency_ms")
    return _fmt(bl, 2), _fmt(wl, 2), speedup(bl, wl)


# the base network's metrics in the report, per task (by its validation key)
_BASE_METRICS = {
    keys.T_VAL_MAP: ("test_map", "test_map_topk", "topk", "val_map"),
    keys.T_VAL_ACC: (keys.T_TEST_ACC, keys.T_TEST_ACC_TOP5, keys.T_VAL_ACC, keys.T_VAL_ACC_TOP5),
}


def metric_rows(m: keys.TaskMetric, topk: Any) -> list[tuple[str, str]]:
    """(label, key) of the base-vs-winner rows of the task's metric."""
    if m.val == keys.T_VAL_MAP:
        return [("test mAP@all", "test_map"), (f"test mAP@{topk}", "test_map_topk"), ("val mAP", "val_map")]
    return [
        ("test accuracy (top-1)", keys.T_TEST_ACC),
        ("test accuracy (top-5)", keys.T_TEST_ACC_TOP5),
        ("val accuracy (top-1)", keys.T_VAL_ACC),
    ]


def _how_tested(m: keys.TaskMetric) -> str:
    where = "query set vs database" if m.val == keys.T_VAL_MAP else "the test split"
    return (
        f"Test {m.label}: {where} (never used for selection); the winner is the finalist with "
        f"the best validation {m.label}."
    )


def _network(spec: dict[str, Any]) -> str:
    if spec.get("task", "retrieval") == "classification":
        return "classifier"
    return f"{(spec.get('model') or {}).get('bits')} bits"


def build_report(study: Any, storage: Any) -> dict[str, Any]:
    """Everything the report shows, read from the storage (works for any finished study)."""
    import optuna

    attrs = study.user_attrs
    base = attrs.get(keys.phase("base")) or {}
    winner = dict(attrs.get(keys.WINNER) or {})
    if isinstance(winner.get("ratios"), dict):  # studies stored before ratios were rounded
        winner["ratios"] = st.round_ratios(winner["ratios"])
    phases = {p: (attrs.get(keys.phase(p)) or {}).get("seconds") for p in st.PHASES}
    ft_name = attrs.get(keys.FINETUNE_STUDY)
    m = keys.metric_of((attrs.get(keys.SPEC) or {}).get("task"))
    finalists: list[dict[str, Any]] = []
    if ft_name:
        ft = optuna.load_study(study_name=ft_name, storage=storage)
        for t in ft.get_trials(deepcopy=False):
            u = t.user_attrs
            finalists.append(
                {
                    "trial": t.number,
                    "candidate": u.get(keys.T_CANDIDATE),
                    "source": st.source(t),
                    "state": t.state.name,
                    "score": u.get(keys.T_SCORE),
                    m.val: u.get(m.val),
                    m.test: u.get(m.test),
                    "flops_ratio": u.get(keys.T_FLOPS_RATIO),
                    "winner": bool(u.get(keys.T_WINNER)),
                    "params_ratio": u.get(keys.T_PARAMS_RATIO),
                    "latency_ms": u.get(keys.T_LATENCY_MS),
                    "epochs_run": u.get(keys.T_EPOCHS_RUN),
                    "rung": u.get(keys.T_RUNG),
                }
            )
    complete = [
        t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if st.is_searched(t)
    ]
    return {
        "study": study.study_name,
        "finetune_study": ft_name,
        "spec": attrs.get(keys.SPEC),
        "base": {k: base.get(k) for k in (*_BASE_METRICS[m.val], "flops", "params", "latency_ms", "source", "path")},
        "winner": winner,
        "finalists": finalists,
        "candidates": len(complete),
        "phase_seconds": phases,
        "space": (attrs.get(keys.phase("search")) or {}).get("space"),
        "ray": attrs.get(keys.RAY),
        "code_lengths": attrs.get(keys.CODE_LENGTHS) or [],  # phase shorten (spec code:)
        "front": code_report.pareto_front(study),  # a joint search's FLOPs x bits x score front
        "trust": attrs.get(keys.TRUST),
    }


def markdown(rep: dict[str, Any], groups: dict[str, int] | None = None) -> str:
    """The study note: base vs winner, per-group keep ratios, finalists, phase timings."""
    b, w = rep["base"], rep["winner"]
    spec = rep.get("spec") or {}
    model = (spec.get("model") or {}).get("zoo") or (spec.get("model") or {}).get("factory")
    budget = {k: v for k, v in (spec.get("budget") or {}).items() if v is not None}
    m = keys.metric_of(spec.get("task"))
    lines = [
        f"# {rep['study']}",
        "",
        f"**{model}** ({_network(spec)}) on **{(spec.get('data') or {}).get('dataset')}**, "
        f"budget {budget}, {rep['candidates']} candidates ranked by "
        f"`{(spec.get('search') or {}).get('ranker')}`"
        + (f", re-ranked by `{spec['search']['rerank']}`" if (spec.get("search") or {}).get("rerank") else "")
        + f", top {(spec.get('finetune') or {}).get('top')} fine-tuned"
        + (
            f" (one of them the `{spec['search']['anchor']}` anchor: the budget's global-magnitude allocation)"
            if (spec.get("search") or {}).get("anchor")
            else ""
        )
        + ".",
        "",
    ]
    if w.get("finetune_trial") is not None:
        ft_name = rep.get("finetune_study") or f"{rep['study']}{st.FINETUNE_SUFFIX}"
        ranker = (spec.get("search") or {}).get("ranker")
        lines += [
            f"**Winner: trial {w['finetune_trial']} of `{ft_name}`** (fine-tuned candidate {w.get('candidate')}), "
            f"chosen by validation {m.label} {_fmt(w.get(m.val))}; test {m.label} {_fmt(w.get(m.test))} is reported, "
            "never used to choose.",
            "",
            f"_Best Trial here = highest ranker score (`{ranker}`), not the winner; the winner is trial "
            f"{w['finetune_trial']} of {ft_name}._",
            "",
        ]
    lines += ["| | base | winner | change |", "|---|---|---|---|"]
    for label, key in metric_rows(m, b.get("topk") or w.get("topk")):
        if key in (keys.T_TEST_ACC_TOP5,) and b.get(key) is None and w.get(key) is None:
            continue  # top-5 only with 20 or more classes
        lines.append(f"| {label} | {_fmt(b.get(key), 4)} | {_fmt(w.get(key), 4)} | {_change(b.get(key), w.get(key))} |")
    wf, wp = w.get("measured_flops"), w.get("measured_params")
    lines.append(f"| FLOPs (MACs) | {_fmt(b.get('flops'))} | {_fmt(wf)} | {_change(b.get('flops'), wf, True)} |")
    lines.append(f"| params | {_fmt(b.get('params'))} | {_fmt(wp)} | {_change(b.get('params'), wp, True)} |")
    if w.get(keys.T_BITS) is not None:  # a joint search's winner: its code length
        bb = (spec.get("model") or {}).get("bits")
        lines.append(f"| code bits | {bb} | {w[keys.T_BITS]} | {_change(bb, w[keys.T_BITS], True)} |")
    lb, lw, speed = latency_row(b, w)
    rounds = (w.get("latency_compare") or {}).get("rounds")
    how = f"; median of {rounds} interleaved rounds, IQR" if rounds else ""
    lines.append(f"| latency (ms, batch 32, 1 thread{how}) | {lb} | {lw} | {speed} |")
    lines += ["", _how_tested(m), ""]
    ratios = w.get("ratios") or {}
    kept = w.get("kept") or {}
    if ratios:
        lines += [
            "## Keep ratio per channel group (winner)",
            "",
            "| group | channels | kept | ratio |",
            "|---|---|---|---|",
        ]
        for name, r in ratios.items():
            ch = (groups or w.get("channels") or {}).get(name, "–")
            lines.append(f"| `{name}` | {ch} | {kept.get(name, '–')} | {st.round_ratio(float(r)):g} |")
        lines.append("")
    if rep["finalists"]:
        lines += [
            "## Finalists (fine-tuned)",
            "",
            f"| trial | candidate | from | state | score | val {m.label} | test {m.label} | FLOPs ratio | latency ms "
            "| epochs |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for f in rep["finalists"]:
            won = " (winner)" if f.get("winner") or f["trial"] == w.get("finetune_trial") else ""
            lines.append(
                f"| {f['trial']}{won} | {f['candidate']} | {f.get('source', 'search')} | {f['state']} "
                f"| {_fmt(f['score'])} | {_fmt(f.get(m.val))} "
                f"| {_fmt(f.get(m.test))} | {_fmt(f['flops_ratio'], 3)} | {_fmt(f['latency_ms'], 2)} "
                f"| {f['epochs_run'] if f['epochs_run'] is not None else '–'} |"
            )
        lines.append("")
    lines += code_report.code_markdown(rep)
    lines += trust_lines(rep.get("trust"), m.label)
    lines += ["## Time per phase", "", "| phase | seconds |", "|---|---|"]
    for p, sec in rep["phase_seconds"].items():
        if sec is not None:
            lines.append(f"| {p} | {sec:.1f} |")
    lines += [
        "",
        "Artifacts: `winner.pt` (load with `acpsearch.load_model`), `base.pt`, `encoder.pt`, "
        "`report.json`, `report.html` (plots).",
    ]
    return "\n".join(lines) + "\n"


def figures(study: Any, rep: dict[str, Any]) -> list[Any]:
    """Plotly figures: candidates' score vs FLOPs ratio, winner keep ratios, PR base vs winner."""
    import optuna
    import plotly.graph_objects as go

    ranker = ((rep.get("spec") or {}).get("search") or {}).get("ranker", "similarity")
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    fin_cands = {f["candidate"] for f in rep["finalists"]}
    win_cand = (rep["winner"] or {}).get("candidate")
    figs = []
    fig = go.Figure()
    xs = [t.user_attrs.get(keys.T_FLOPS_RATIO) for t in trials]
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[t.value for t in trials],
            mode="markers",
            name="candidates",
            text=[f"trial {t.number}" for t in trials],
            marker={"size": 5, "opacity": 0.6},
        )
    )
    fin = [t for t in trials if t.number in fin_cands]
    fig.add_trace(
        go.Scatter(
            x=[t.user_attrs.get(keys.T_FLOPS_RATIO) for t in fin],
            y=[t.value for t in fin],
            mode="markers",
            name="finalists",
            marker={"size": 10, "symbol": "diamond"},
        )
    )
    win = [t for t in trials if t.number == win_cand]
    fig.add_trace(
        go.Scatter(
            x=[t.user_attrs.get(keys.T_FLOPS_RATIO) for t in win],
            y=[t.value for t in win],
            mode="markers",
            name="winner",
            marker={"size": 16, "symbol": "star"},
        )
    )
    fig.update_layout(title=f"{ranker} vs FLOPs ratio of all candidates", xaxis_title="FLOPs ratio", yaxis_title=ranker)
    figs.append(fig)
    ratios = (rep["winner"] or {}).get("ratios") or {}
    fig = go.Figure(go.Bar(x=list(ratios), y=list(ratios.values())))
    fig.update_layout(title="keep ratio per channel group (winner)", yaxis_title="keep ratio", yaxis_range=[0, 1.05])
    figs.append(fig)
    if ((rep.get("spec") or {}).get("task") or "retrieval") != "retrieval":
        return figs  # a classifier has no precision-recall curve
    curves = {
        "base": (study.user_attrs.get(keys.phase("base")) or {}).get("pr_curve"),
        "winner": (rep["winner"] or {}).get("pr_curve") or _winner_curve(study, rep),
    }
    fig = go.Figure()
    for label, c in curves.items():
        if c:
            fig.add_trace(
                go.Scatter(
                    x=c["recall"],
                    y=c["precision"],
                    mode="lines+markers",
                    name=label,
                    text=[f"radius {r}" for r in c.get("radius", [])],
                )
            )
    fig.update_layout(
        title="precision-recall (Hamming radius), test queries", xaxis_title="recall", yaxis_title="precision"
    )
    figs.append(fig)
    return figs + code_report.code_figures(rep)


def _winner_curve(study: Any, rep: dict[str, Any]) -> Any:
    import optuna

    ft_name = study.user_attrs.get(keys.FINETUNE_STUDY)
    trial_no = (rep["winner"] or {}).get("finetune_trial")
    if not ft_name or trial_no is None:
        return None
    ft = optuna.load_study(study_name=ft_name, storage=adapter.storage_of(study))
    return ft.trials[int(trial_no)].user_attrs.get(keys.T_PR_CURVE)


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str))
