"""The code-length parts of a study's report: mAP against bits of the winner's shortened codes
(phase shorten, spec `code:`), and the FLOPs x bits x score front of a joint search (`budget.bits`).

The front is read from the candidate trials: the feasible COMPLETE candidates that no other one
beats on all three of FLOPs ratio (lower), code bits (lower) and ranker score (higher)."""

from __future__ import annotations

from typing import Any

import numpy as np

from acpsearch.service import keys


def pareto_front(study: Any) -> list[dict[str, Any]]:
    """The non-dominated candidates over (FLOPs ratio, bits, score), fewest FLOPs first; [] for a
    study whose candidates carry no code length (no joint search)."""
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        u = t.user_attrs
        if t.value is None or u.get(keys.T_BITS) is None or not u.get(keys.T_FEASIBLE, True):
            continue
        rows.append({"trial": t.number, "flops_ratio": u.get(keys.T_FLOPS_RATIO), "bits": u[keys.T_BITS]})
        rows[-1]["score"] = float(t.value)
    if not rows:
        return []
    cost = np.array([[r["flops_ratio"], r["bits"], -r["score"]] for r in rows], dtype=np.float64)
    # i is dominated when some j is no worse everywhere and better somewhere
    no_worse = np.all(cost[None, :, :] <= cost[:, None, :], axis=2)
    better = np.any(cost[None, :, :] < cost[:, None, :], axis=2)
    dominated = np.any(no_worse & better, axis=1)
    front = [r for r, d in zip(rows, dominated) if not d]
    return sorted(front, key=lambda r: (r["flops_ratio"], r["bits"], -r["score"], r["trial"]))


def code_markdown(rep: dict[str, Any]) -> list[str]:
    """Report sections: the winner's mAP per code length, and the joint search's front."""
    lines: list[str] = []
    lengths = rep.get("code_lengths") or []
    if lengths:
        code = (rep.get("spec") or {}).get("code") or {}
        lines += [
            f"## Shorter codes (winner, {code.get('method', 'prune')}, criterion {code.get('criterion', 'auto')})",
            "",
            "| bits | criterion | val mAP | test mAP@all | test mAP@top-k | database bytes / item |",
            "|---|---|---|---|---|---|",
        ]
        for r in lengths:
            lines.append(
                f"| {r['bits']} | {r.get('criterion') or '–'} | {_f(r.get('val_map'))} | {_f(r.get('test_map'))} "
                f"| {_f(r.get('test_map_topk'))} | {int(r['bits']) / 8:g} |"
            )
        lines += ["", "Every length is an artifact (`bits{K}.pt`, load with `acpsearch.load_model`).", ""]
    front = rep.get("front") or []
    if front:
        lines += [
            "## FLOPs x bits x score front (joint search)",
            "",
            "| candidate | FLOPs ratio | bits | score |",
            "|---|---|---|---|",
        ]
        lines += [f"| {r['trial']} | {_f(r['flops_ratio'], 3)} | {r['bits']} | {_f(r['score'])} |" for r in front]
        lines.append("")
    return lines


def code_figures(rep: dict[str, Any]) -> list[Any]:
    """Plotly figures: test / val mAP against bits (shortened winner), and the front."""
    import plotly.graph_objects as go

    figs = []
    lengths = rep.get("code_lengths") or []
    if lengths:
        fig = go.Figure()
        bits = [r["bits"] for r in lengths]
        for key, label in (("test_map", "test mAP@all"), ("val_map", "val mAP")):
            fig.add_trace(go.Scatter(x=bits, y=[r.get(key) for r in lengths], mode="lines+markers", name=label))
        fig.update_layout(title="Winner: mAP against code length", xaxis_title="bits", yaxis_title="mAP")
        figs.append(fig)
    front = rep.get("front") or []
    if front:
        fig = go.Figure(
            go.Scatter(
                x=[r["flops_ratio"] for r in front],
                y=[r["bits"] for r in front],
                mode="markers",
                marker={"color": [r["score"] for r in front], "colorscale": "Viridis", "showscale": True, "size": 10},
                text=[f"candidate {r['trial']}, score {r['score']:.4f}" for r in front],
                name="front",
            )
        )
        fig.update_layout(
            title="FLOPs x bits x score front (colour: ranker score)", xaxis_title="FLOPs ratio", yaxis_title="bits"
        )
        figs.append(fig)
    return figs


def _f(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"
