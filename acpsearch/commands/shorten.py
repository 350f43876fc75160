"""`acpsearch shorten`: shorter hash codes from a trained hash network (acpsearch.codelength).

One checkpoint per length in --out-dir (bits{K}.pt), each loading with `acpsearch.load_model` as a
network that emits K values; a table (or with --json one document) of validation and test mAP per
length. The data set, protocol and preprocessing default to the checkpoint's own."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from acpsearch.commands.common import app, console, err, out
from acpsearch.commands.hashing import DEVICE_HELP, SEED_HELP
from acpsearch.errors import CheckpointError, SpecError
from acpsearch.service.spec import MAX_BATCH_SIZE, MAX_EPOCHS, SEED_LIMIT
from acpsearch.trust import ALLOW_HELP


def parse_lengths(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise SpecError(f"--lengths: a comma-separated list of integers, got {text!r}") from None


def _check_options(method: str, criterion: str, epochs: int, batch_size: int, lr: float, lr_decay: float) -> None:
    from acpsearch.codelength import CRITERION_CHOICES, METHODS

    if method not in METHODS:
        raise SpecError(f"--method: must be one of {', '.join(METHODS)}, got {method!r}")
    if criterion not in CRITERION_CHOICES:
        raise SpecError(f"--criterion: must be one of {', '.join(CRITERION_CHOICES)}, got {criterion!r}")
    if not 0 <= epochs <= MAX_EPOCHS:
        raise SpecError(f"--epochs: must be in [0, {MAX_EPOCHS}], got {epochs}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise SpecError(f"--batch-size: must be in [1, {MAX_BATCH_SIZE}], got {batch_size}")
    if not (lr > 0 and math.isfinite(lr)):
        raise SpecError(f"--lr: must be a positive number, got {lr}")
    if not 0 < lr_decay <= 1:
        raise SpecError(f"--lr-decay: must be in (0, 1], got {lr_decay}")


def splits_of_checkpoint(ckpt: dict[str, Any], dataset: str | None, data_dir: str | None, workers: int) -> Any:
    """The data splits a hash-net checkpoint was trained on (meta: dataset, protocol, preprocess,
    data options), or `dataset` with its default protocol."""
    from acpsearch.hashing import load_dataset, make_splits
    from acpsearch.hashing.data import protocol_defaults

    meta = ckpt.get("meta") or {}
    name = dataset or meta.get("dataset")
    if not name:
        raise SpecError("--dataset: the checkpoint stores no data set; pass --dataset")
    same = name == meta.get("dataset")
    directory = data_dir if data_dir is not None else (meta.get("data_dir") if same else None)
    proto = {**protocol_defaults(name), "seed": 0, **((meta.get("protocol") or {}) if same else {})}
    proto = {k: int(proto[k]) for k in ("query_per_class", "train_per_class", "val_per_class", "seed")}
    stored: dict[str, Any] = meta.get("data_options") or {} if same else {}
    if not isinstance(stored, dict):
        stored = {}
    opts = {k: v for k, v in stored.items() if k in ("train_list", "database_list", "test_list", "image_size")}
    ds = load_dataset(name, directory, seed=proto["seed"], workers=workers, **opts)
    pre = meta.get("preprocess") if same else None
    norm: Any = {"mean": pre["mean"], "std": pre["std"]} if isinstance(pre, dict) and "mean" in pre else "train"
    splits = make_splits(ds, **proto, normalize=norm)
    if splits.input_shape[0] != int(ckpt["input_shape"][1]):
        raise SpecError(
            f"--dataset: {name} images have {splits.input_shape[0]} channels, the network expects "
            f"{int(ckpt['input_shape'][1])}"
        )
    return splits


@app.command()
def shorten(
    checkpoint: Path = typer.Argument(..., help="a trained hash network (train / prune / shorten)"),
    lengths: str = typer.Option("48,32,24,12", "--lengths", help="strictly descending code lengths, e.g. 48,32,24,12"),
    method: str = typer.Option("prune", "--method", help="prune (DHWP bit pruning) or merge (NMLayer-style)"),
    criterion: str = typer.Option(
        "balance", "--criterion", help="prune: loss, map, balance, quant, random, centre, or auto (best on validation)"
    ),
    out_dir: Path = typer.Option(..., "--out-dir", help="directory for bits{K}.pt, one per length"),
    epochs: int = typer.Option(3, "--epochs", help="fine-tuning epochs per length (0: none, DHWP-inter)"),
    lr: float = typer.Option(1e-3, "--lr", help="hash-layer learning rate of the first step"),
    lr_decay: float = typer.Option(0.5, "--lr-decay", help="learning rate x this at every step"),
    backbone_lr_ratio: float = typer.Option(0.1, "--backbone-lr-ratio", min=0.0, help="backbone lr / hash-layer lr"),
    batch_size: int = typer.Option(128, "--batch-size"),
    loss: str | None = typer.Option(None, "--loss", help="csq, hashnet, dpsh (default: the checkpoint's)"),
    hash_layer: str | None = typer.Option(None, "--hash-layer", help="dotted name of the layer emitting the code"),
    dataset: str | None = typer.Option(None, "--dataset", help="default: the checkpoint's data set"),
    data_dir: str | None = typer.Option(None, "--data-dir"),
    workers: int = typer.Option(0, "--workers", min=0, max=64),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_LIMIT - 1, help=SEED_HELP),
    topk: int = typer.Option(1000, "--topk", min=1, help="k of the reported mAP@k"),
    json_out: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    allow_factory: list[str] | None = typer.Option(None, "--allow-factory", help=ALLOW_HELP),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
) -> None:
    """Shorten a hash network's code progressively (prune or merge bits, fine-tune after every
    length) and write one checkpoint per length."""
    from acpsearch.checkpoint import model_from_checkpoint, model_task, read_checkpoint
    from acpsearch.checkpoint.code import code_of
    from acpsearch.codelength import check_schedule, find_hash_layer
    from acpsearch.devices import resolve_device
    from acpsearch.hashing import LOSS_NAMES
    from acpsearch.trust import FactoryPolicy

    schedule = parse_lengths(lengths)
    _check_options(method, criterion, epochs, batch_size, lr, lr_decay)
    if method == "merge" and criterion not in ("balance", "auto"):
        raise SpecError("--criterion: applies to --method prune; merging ranks bits by its own importance")
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecError(f"--out-dir: {str(out_dir)!r} exists and is not a directory")
    dev = resolve_device(device, "--device")
    where = f"checkpoint {str(checkpoint)!r}"
    ckpt = read_checkpoint(checkpoint)
    if model_task(ckpt["model"]) == "classification":
        raise CheckpointError(f"{where}: a classifier has no hash code to shorten")
    meta = ckpt.get("meta") or {}
    loss = (loss or meta.get("loss") or "csq").lower()
    if loss not in LOSS_NAMES:
        raise SpecError(f"--loss: unknown loss {loss!r}; known: {', '.join(LOSS_NAMES)}")
    model = model_from_checkpoint(ckpt, source=where, allow_factories=FactoryPolicy.from_user(allow_factory))
    layer_name = hash_layer or (ckpt.get("pruning") or {}).get("hash_layer")
    try:
        layer_name, layer = find_hash_layer(model, layer_name)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    check_schedule(schedule, layer.out_features, "--lengths")
    splits = splits_of_checkpoint(ckpt, dataset, data_dir, workers)
    code_map, centres = code_of(ckpt)
    from acpsearch.commands.shorten_run import run_shorten

    run = run_shorten(
        ckpt,
        checkpoint,
        model.to(dev),
        splits,
        schedule,
        options={
            "loss": loss,
            "method": method,
            "criterion": criterion,
            "epochs": epochs,
            "lr": lr,
            "lr_decay": lr_decay,
            "backbone_lr_ratio": backbone_lr_ratio,
            "batch_size": batch_size,
            "seed": seed,
            "centres": centres,
            "code_map": code_map,
            "hash_layer": layer_name,
            "progress": progress and not json_out,
        },
        out_dir=out_dir,
        topk=topk,
        log=None if json_out else err,
    )
    if json_out:
        out(run)
        return
    from rich.table import Table

    table = Table(title=f"{checkpoint.name} shortened ({method}) on {splits.dataset}")
    for col in ("bits", "criterion", "val mAP", "mAP@all", f"mAP@{run['topk']}", "centre dist", "file"):
        table.add_column(col, justify="left" if col in ("criterion", "file") else "right", no_wrap=True)
    for r in run["lengths"]:
        d = "-" if r["min_centre_distance"] is None else str(r["min_centre_distance"])
        vals = (r["val_map"], r["map_all"], r["map_topk"])
        table.add_row(str(r["bits"]), r["criterion"], *(f"{v:.4f}" for v in vals), d, Path(r["checkpoint"]).name)
    console().print(table)
    console().print(f"checkpoints in {out_dir}")
