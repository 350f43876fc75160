"""The classification side of `acpsearch train --task classification` and `acpsearch evaluate`.

`acpsearch.commands.hashing` owns the commands and their flags; it hands a classification run to
`train_classifier_run` and a classifier checkpoint (model.task: classification) to
`evaluate_classifier_run`. Flags that only mean something for hash networks (--bits, a hash loss,
--topk) are refused here with one line, exit 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from acpsearch.commands.common import print_metrics
from acpsearch.errors import CheckpointError, DataError, SpecError

CLASSIFICATION_LOSSES = ("cross-entropy",)
DATA_KEYS = ("train_list", "database_list", "test_list", "image_size")  # data options a checkpoint may store
SPLIT_KEYS = ("val_fraction", "test_fraction", "train_per_class", "val_per_class", "test_per_class", "seed")


@dataclass
class ClassifyOptions:
    """What `acpsearch train --task classification` was asked for (the flags it shares with retrieval)."""

    model: str
    dataset: str
    loss: str
    label_smoothing: float
    epochs: int
    lr: float
    batch_size: int
    data_dir: str | None
    seed: int
    caps: dict[str, int | None]
    data_options: dict[str, Any]
    normalize: bool
    augment: bool
    hflip: bool
    out: Path
    json_out: bool
    progress: bool
    device: str


def refuse_retrieval_flags(bits: int | None, loss: str | None, topk: int | None) -> str:
    """The classification loss to use; a retrieval-only flag is a one-line SpecError."""
    if bits is not None:
        raise SpecError("--bits: a classifier has no hash code; --bits is for --task retrieval")
    if topk is not None:
        raise SpecError("--topk: mAP@k is a retrieval metric; a classifier reports top-1 accuracy")
    name = (loss or "cross-entropy").lower().replace("_", "-")
    if name not in CLASSIFICATION_LOSSES:
        raise SpecError(
            f"--loss: {loss!r} is not a classification loss; --task classification takes "
            f"{', '.join(CLASSIFICATION_LOSSES)} (with --label-smoothing)"
        )
    return name


def _acc_rows(report: dict[str, float], prefix: str) -> dict[str, float]:
    rows = {f"{prefix}_acc": report["top1"]}
    if "top5" in report:
        rows[f"{prefix}_top5"] = report["top5"]
    return rows


def train_classifier_run(opts: ClassifyOptions) -> None:
    """Train a zoo classifier, save its checkpoint, print validation / test accuracy."""
    from acpsearch.checkpoint import save_classifier_checkpoint
    from acpsearch.classification import (
        classification_splits,
        create_classifier,
        evaluate_classifier,
        preprocess_meta,
        train_classifier,
    )
    from acpsearch.devices import resolve_device, seed_everything
    from acpsearch.hashing import load_dataset
    from acpsearch.outputs import atomic_out, check_out

    if not 0.0 <= opts.label_smoothing < 1.0:
        raise SpecError(f"--label-smoothing: must be in [0, 1), got {opts.label_smoothing}")
    dev = resolve_device(opts.device, "--device")
    check_out(opts.out)
    create_classifier(opts.model, 2)  # an unknown model fails before the data is loaded
    ds = load_dataset(opts.dataset, opts.data_dir, seed=opts.seed, stream=False, **opts.data_options)
    split_args: dict[str, Any] = {"val_fraction": 0.1, "test_fraction": 0.2, **opts.caps, "seed": opts.seed}
    splits = classification_splits(ds, **split_args, normalize=opts.normalize)
    c, h, _w = splits.input_shape
    seed_everything(opts.seed)  # before the model is built: the seed fixes the initial weights
    net = create_classifier(opts.model, splits.num_classes, in_channels=c, image_size=h)
    result = train_classifier(
        net,
        splits,
        epochs=opts.epochs,
        lr=opts.lr,
        batch_size=opts.batch_size,
        label_smoothing=opts.label_smoothing,
        augment=opts.augment,
        hflip=opts.hflip,
        device=dev,
        seed=opts.seed,
        progress=opts.progress and not opts.json_out,
    )
    metrics = {
        **_acc_rows(evaluate_classifier(result.model, *splits.val), "val"),
        **_acc_rows(evaluate_classifier(result.model, *splits.test), "test"),
    }
    meta = {
        "dataset": splits.dataset,
        "data_dir": opts.data_dir,
        "data_options": opts.data_options,
        "splits": {**split_args, "test_source": splits.test_source},
        "preprocess": preprocess_meta(splits, ds, opts.normalize),
        "loss": opts.loss,
        "label_smoothing": opts.label_smoothing,
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "lr": opts.lr,
        "batch_size": opts.batch_size,
        "seed": opts.seed,
        "device": str(dev),
        "metrics": metrics,
    }
    with atomic_out(opts.out) as tmp:
        save_classifier_checkpoint(tmp, result.model.cpu(), opts.model.lower(), splits.num_classes, c, h, meta)
    doc = {
        "task": "classification",
        "checkpoint": str(opts.out),
        "model": opts.model.lower(),
        "dataset": splits.dataset,
        "loss": opts.loss,
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "device": str(dev),
        "sizes": splits.sizes(),
        "test_source": splits.test_source,
        **metrics,
    }
    if opts.json_out:
        typer.echo(json.dumps(doc))
        return
    rows = {"checkpoint": str(opts.out), "best epoch": f"{result.best_epoch} of {result.epochs_run}", **metrics}
    print_metrics(f"{opts.model} / {opts.loss} classifier on {splits.dataset}", rows)


def _stored_splits(meta: dict[str, Any], same: bool, caps: dict[str, int | None], seed: int | None) -> dict[str, Any]:
    """The split arguments of the checkpoint's training run (for its own data set), overridden by flags."""
    stored = meta.get("splits") if same else None
    args: dict[str, Any] = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}
    if isinstance(stored, dict):
        for key, value in stored.items():
            if key not in SPLIT_KEYS:
                continue
            if not (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))):
                raise CheckpointError(f"meta.splits.{key}: must be a number, got {value!r}"[:200])
            args[key] = value
    args.update({k: v for k, v in caps.items() if v is not None})
    if seed is not None:
        args["seed"] = seed
    return args


def evaluate_classifier_run(
    ckpt: dict[str, Any],
    checkpoint: Path,
    model: Any,
    *,
    dataset: str | None,
    data_dir: str | None,
    caps: dict[str, int | None],
    seed: int | None,
    device: Any,
    json_out: bool,
) -> None:
    """Validation / test accuracy of a classifier checkpoint on its data set's splits."""
    import torch

    from acpsearch.classification import classification_splits, evaluate_classifier
    from acpsearch.hashing import load_dataset

    meta = ckpt.get("meta") or {}
    name = dataset or meta.get("dataset")
    if not name:
        raise SpecError("--dataset: the checkpoint stores no data set; pass --dataset")
    same = name == meta.get("dataset")
    directory = data_dir if data_dir is not None else (meta.get("data_dir") if same else None)
    stored_opts = meta.get("data_options") if same else None
    opts = {k: v for k, v in (stored_opts or {}).items() if k in DATA_KEYS} if isinstance(stored_opts, dict) else {}
    ds = load_dataset(name, directory, stream=False, **opts)
    args = _stored_splits(meta, same, caps, seed)
    pre = meta.get("preprocess")
    stats = (pre["mean"], pre["std"]) if isinstance(pre, dict) and "mean" in pre and "std" in pre else None
    splits = classification_splits(ds, **args, normalize=stats is None)
    if stats is not None:  # the statistics its network was trained with
        m = torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1)
        splits.val = ((splits.val[0] - m) / s, splits.val[1])
        splits.test = ((splits.test[0] - m) / s, splits.test[1])
    want = int(ckpt["input_shape"][1])
    if splits.input_shape[0] != want:
        raise DataError(
            f"--dataset: {name} images have {splits.input_shape[0]} channels, the checkpoint's model expects {want}"
        )
    model = model.to(device)
    metrics = {
        **_acc_rows(evaluate_classifier(model, *splits.val), "val"),
        **_acc_rows(evaluate_classifier(model, *splits.test), "test"),
    }
    if json_out:
        doc = {
            "task": "classification",
            "checkpoint": str(checkpoint),
            "dataset": splits.dataset,
            "splits": args,
            "model": ckpt["model"],
            "pruned": bool(ckpt.get("pruning")),
            **metrics,
        }
        typer.echo(json.dumps(doc))
        return
    print_metrics(f"{checkpoint} on {splits.dataset}", metrics)
