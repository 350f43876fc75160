"""`acpsearch baselines`: the unsupervised hashing baselines table (LSH, PCAH, ITQ, BiHalf) on the
user's data, by the project's retrieval protocol. Labels are used only to score the ranking."""

from __future__ import annotations

import json
from typing import Any

import typer

from acpsearch.commands.common import app
from acpsearch.errors import SpecError
from acpsearch.service.spec import SEED_LIMIT

MAX_BITS = 1024


def _int_list(flag: str, text: str, low: int, high: int) -> list[int]:
    items = [p.strip() for p in text.split(",") if p.strip()]
    if not items:
        raise SpecError(f"{flag}: give a comma-separated list, got {text!r}")
    out = []
    for p in items:
        try:
            v = int(p)
        except ValueError:
            raise SpecError(f"{flag}: {p!r} is not an integer") from None
        if not low <= v <= high:
            raise SpecError(f"{flag}: {v} is outside [{low}, {high}]")
        out.append(v)
    return list(dict.fromkeys(out))


def _methods(text: str) -> list[str]:
    from acpsearch.hashing.unsupervised import BASELINE_NAMES

    items = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [m for m in items if m not in BASELINE_NAMES]
    if not items or bad:
        raise SpecError(f"--methods: unknown {bad[0] if bad else text!r}, expected some of {', '.join(BASELINE_NAMES)}")
    return list(dict.fromkeys(items))


def _table(summary: list[dict[str, Any]], topk: int, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True)
    for col in ("method", "bits", "seeds", f"mAP@{topk}", "mAP@all"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for s in summary:
        cells = []
        for key in ("map_topk", "map_all"):
            std = f" ± {s[key + '_std']:.4f}" if s["seeds"] > 1 else ""
            cells.append(f"{s[key]:.4f}{std}")
        table.add_row(s["method"].upper(), str(s["bits"]), str(s["seeds"]), *cells)
    Console().print(table)


@app.command()
def baselines(
    dataset: str = typer.Option(
        "fashion-mnist", "--dataset", "--data", help="digits, mnist5k, fashion-mnist, cifar10, folder, npz, listfile"
    ),
    data_dir: str | None = typer.Option(None, "--data-dir", help="where user-supplied data lives"),
    bits: str = typer.Option("16,32,64", "--bits", help="code lengths, comma-separated"),
    methods: str = typer.Option("lsh,pcah,itq,bihalf", "--methods", help="some of lsh, pcah, itq, bihalf"),
    seeds: int = typer.Option(1, "--seeds", min=1, max=20, help="seeds per learned method (mean ± std)"),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_LIMIT - 1, help="seed of the data split"),
    topk: int = typer.Option(1000, "--topk", min=1, help="k of the reported mAP@k"),
    query_per_class: int | None = typer.Option(None, "--query-per-class", help="default: the data set's"),
    train_per_class: int | None = typer.Option(None, "--train-per-class", help="default: the data set's"),
    device: str = typer.Option("cpu", "--device", help="where BiHalf trains: cpu or cuda"),
    json_out: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
) -> None:
    """Print the unsupervised baselines table (LSH, PCAH, ITQ, BiHalf; mAP@k and mAP@all) on a
    data set's query-vs-database protocol. Every method is fitted on the training split's normalised
    pixels without labels."""
    bit_list = _int_list("--bits", bits, 1, MAX_BITS)
    method_list = _methods(methods)
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SpecError(f"--device: must be cpu or cuda, got {device!r}")
    from acpsearch.hashing import load_dataset, make_splits
    from acpsearch.hashing.unsupervised.table import baseline_rows, split_features, summarise

    ds = load_dataset(dataset, data_dir, seed=seed)
    splits = make_splits(ds, query_per_class, train_per_class, None, seed=seed)
    feats = split_features(splits)
    rows = baseline_rows(feats, method_list, bit_list, list(range(seeds)), topk=topk, device=device)
    summary = summarise(rows)
    sizes = {k: int(v[0].shape[0]) for k, v in feats.items()}
    if json_out:
        typer.echo(json.dumps({"dataset": splits.dataset, "topk": topk, "sizes": sizes, "rows": summary, "runs": rows}))
        return
    title = (
        f"unsupervised baselines on {splits.dataset} pixels (train {sizes['train']}, "
        f"queries {sizes['query']}, database {sizes['database']})"
    )
    _table(summary, topk, title)
