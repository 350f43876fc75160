"""One study as the CLI shows it (`show`, and `run` / `demo` when they finish): the report
document (`--json`) and its tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from acpsearch.commands.common import console
from acpsearch.service import keys
from acpsearch.service.storage import redact


def _show(url: str, st_obj: Any, name: str) -> dict[str, Any]:
    from acpsearch.service import study as st
    from acpsearch.service.report import build_report

    study = st.load_search_study(st_obj, name)
    rep = build_report(study, st_obj)
    rep["summary"] = st.summarize(study, st_obj)
    rep["phases"] = {
        p: {
            k: v
            for k, v in (study.user_attrs.get(keys.phase(p)) or {}).items()
            if k not in ("pr_curve", "space", "losses", "scores")
        }
        for p in st.PHASES
        if study.user_attrs.get(keys.phase(p))
    }
    rep["winner"] = {k: v for k, v in (rep.get("winner") or {}).items() if k != "pr_curve"}
    rep["storage"] = redact(url)
    if study.user_attrs.get(keys.FINETUNE_EPOCHS) is not None:  # studies fine-tuned before it was recorded: none
        rep["finetune_epochs"] = {
            "spent": study.user_attrs[keys.FINETUNE_EPOCHS],
            "budget": ((rep.get("spec") or {}).get("finetune") or {}).get("epoch_budget"),
            "rungs": [{k: r[k] for k in ("size", "epochs")} for r in study.user_attrs.get(keys.FINETUNE_RUNGS) or []],
        }
    return rep


def _print_show(rep: dict[str, Any]) -> None:
    from acpsearch.service.report import markdown

    c = console()
    s = rep["summary"]
    c.print(
        f"[bold]{rep['study']}[/bold]  state={s['state']}  candidates={s['candidates']}/{s['candidates_target']}  "
        f"lease={s['lease']}"
    )
    if s.get("error"):
        c.print(f"error: {s['error']}")
    table = Table(title="phases")
    table.add_column("phase")
    table.add_column("seconds")
    table.add_column("details")
    for p, rec in rep["phases"].items():
        details = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in rec.items()
            if k
            not in (
                "done",
                "seconds",
                "at",
                "path",
                "artifact_id",
                "history",
                "training",
                "finalists",
                "artifacts",
                "rounds",
            )
        )
        table.add_row(p, f"{rec.get('seconds', 0):.1f}", details[:120])
    c.print(table)
    fe = rep.get("finetune_epochs")
    if fe:
        rungs = " -> ".join(f"{r['size']}x{r['epochs']}" for r in fe["rungs"])
        c.print(
            f"fine-tuning epochs spent: {fe['spent']}"
            + (f" (budget {fe['budget']})" if fe["budget"] is not None else "")
        )
        if rungs:
            c.print(f"halving rungs (finalists x epochs): {rungs}")
    if rep.get("winner"):
        from rich.markdown import Markdown

        c.print(Markdown(markdown(rep)))
