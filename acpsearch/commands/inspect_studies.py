"""`acpsearch status` (every study in a storage) and `acpsearch show` (one study)."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from acpsearch.commands.common import STORAGE_HELP, _storage, app, console, out
from acpsearch.commands.study_report import _print_show, _show
from acpsearch.service.storage import redact


def _status_rows(st_obj: Any) -> list[dict[str, Any]]:
    from acpsearch.service import study as st

    return [st.summarize(s, st_obj) for s in st.list_search_studies(st_obj)]


def _winner_test(row: dict[str, Any]) -> str:
    """The winner's test metric of a status row: mAP, or a classifier's accuracy (marked `acc`)."""
    acc = row.get("task") == "classification"
    v = row.get("winner_test_acc") if acc else row["winner_test_map"]
    return "–" if v is None else f"{v:.4f}" + (" acc" if acc else "")


@app.command()
def status(
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """All studies in the storage: state, progress, winner."""
    url, st_obj = _storage(storage)
    rows = _status_rows(st_obj)
    if json_out:
        out({"storage": redact(url), "studies": rows})
        return
    table = Table(title=f"studies in {redact(url)}")
    for col in ("name", "state", "model", "dataset", "budget", "candidates", "phases", "winner test", "FLOPs"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            r["state"] + (f" ({r['lease']})" if r["lease"] != "free" else ""),
            str(r["model"]),
            str(r["dataset"]),
            ", ".join(f"{k}={v}" for k, v in r["budget"].items()),
            f"{r['candidates']}/{r['candidates_target']}",
            ",".join(r["phases_done"]) or "–",
            _winner_test(r),
            f"{r['winner_flops_ratio']:.3f}" if r["winner_flops_ratio"] is not None else "–",
        )
    console().print(table)


@app.command()
def show(
    name: str = typer.Argument(..., help="study name"),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """One study: phases, base vs winner, finalists."""
    url, st_obj = _storage(storage)
    rep = _show(url, st_obj, name)
    if json_out:
        out(rep)
    else:
        _print_show(rep)
