"""Phase report: the study note (markdown, also the dashboard's note), the JSON report and the
plots (dashboard graph objects and one HTML page), uploaded as study artifacts."""

from __future__ import annotations

import json
from typing import Any

from acpsearch.service.context import Record, StudyRun

NAME = "report"


def run(ctx: StudyRun, records: dict[str, dict[str, Any]], ray_mod: Any) -> Record:
    """Write the note, the JSON report and the plots; upload them as study artifacts."""
    from optuna_dashboard import save_note, save_plotly_graph_object

    from acpsearch.service.report import build_report, figures, markdown

    ctx.reporter.phase("report")
    rep = build_report(ctx.study, ctx.storage)
    groups = {g.name: g.channels for g in ctx.graph.groups} if ctx.graph is not None else None
    note = markdown(rep, groups)
    save_note(ctx.study, note)
    out = ctx.dir()
    (out / "report.md").write_text(note)
    rep_path = out / "report.json"
    rep_path.write_text(json.dumps(rep, indent=2, default=str))
    figs = figures(ctx.study, rep)
    for i, fig in enumerate(figs):
        save_plotly_graph_object(ctx.study, fig, graph_object_id=f"acpsearch-{i}")
    html = out / "report.html"
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    html.write_text(
        f"<html><head><meta charset='utf-8'><title>{rep['study']}</title></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    arts = {
        p.name: ctx.upload(p, mimetype=m)
        for p, m in ((rep_path, "application/json"), (html, "text/html"), (out / "report.md", "text/markdown"))
    }
    return Record({"artifacts": arts, "path": str(rep_path)})
