"""A classification study's side of the phases: its splits, its base classifier's training, a
finalist's fine-tuning (cross-entropy, optional distillation from the unpruned network) and the
accuracy of a stored classifier. Everything else (graph, space, search, rankers with
`task="classification"`, Tune, storage) is the retrieval study's code path."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from acpsearch.service.spec import StudySpec

if TYPE_CHECKING:
    import torch

    from acpsearch.classification import ClassificationSplits
    from acpsearch.hashing import Splits

DISTILL_TEMPERATURE = 4.0  # T of the softened KL when finetune.distill > 0


def classifier_splits(data: dict[str, Any]) -> Splits:
    """A classification study's splits as the service's Splits: train / val as they are, the test
    split in `query` (the database is empty). `protocol.query_per_class` caps the test split,
    `train_per_class` / `val_per_class` the others, as `acpsearch train --task classification` does."""
    from acpsearch.classification import classification_splits, preprocess_meta
    from acpsearch.hashing import Splits
    from acpsearch.hashing.data import dataset_from_data

    proto = dict(data.get("protocol") or {})
    seed = int(proto.get("seed") or 0)
    ds = dataset_from_data(data, stream=False)
    normalize = data.get("normalize", "train") == "train"
    cs = classification_splits(
        ds,
        train_per_class=proto.get("train_per_class"),
        val_per_class=proto.get("val_per_class"),
        test_per_class=proto.get("query_per_class"),
        seed=seed,
        normalize=normalize,
    )
    return Splits(
        query=cs.test,
        train=cs.train,
        val=cs.val,
        database=(cs.test[0][:0], cs.test[1][:0]),
        num_classes=cs.num_classes,
        dataset=cs.dataset,
        protocol={"task": "classification", "test_source": cs.test_source, **proto},
        indices=dict(cs.indices),
        preprocess=preprocess_meta(cs, ds, normalize),
    )


def as_classification(splits: Splits) -> ClassificationSplits:
    """The service's Splits of a classification study back as the library's ClassificationSplits."""
    from acpsearch.classification import ClassificationSplits

    pre = splits.preprocess or {}
    return ClassificationSplits(
        train=splits.train,
        val=splits.val,
        test=splits.query,
        num_classes=splits.num_classes,
        dataset=splits.dataset,
        mean=list(pre.get("mean") or []),
        std=list(pre.get("std") or []),
    )


def accuracy(model: torch.nn.Module, part: tuple[torch.Tensor, torch.Tensor], prefix: str) -> dict[str, float]:
    """{prefix_acc, prefix_acc_top5 (20 or more classes)} of the model on one split."""
    from acpsearch.classification import evaluate_classifier

    rep = evaluate_classifier(model, *part)
    out = {f"{prefix}_acc": float(rep["top1"])}
    if "top5" in rep:
        out[f"{prefix}_acc_top5"] = float(rep["top5"])
    return out


def evaluate(model: torch.nn.Module, splits: Splits) -> dict[str, float]:
    """Validation and test accuracy of a classifier (val_acc, test_acc, and their top-5)."""
    return {**accuracy(model, splits.val, "val"), **accuracy(model, splits.query, "test")}


def train_recipe(spec: StudySpec, finetune: bool) -> dict[str, Any]:
    """train_classifier keyword arguments of the base network (finetune False) or a finalist."""
    sec = spec.finetune if finetune else spec.train
    return {
        "epochs": int(sec.epochs),
        "lr": float(sec.lr),
        "batch_size": int(sec.batch_size),
        "label_smoothing": float(spec.train.label_smoothing),
        "augment": bool(sec.augment),
        "hflip": bool(sec.hflip),
        "seed": int(spec.search.seed if finetune else spec.data.protocol.seed),
    }


def train(
    model: torch.nn.Module,
    splits: Splits,
    spec: StudySpec,
    *,
    finetune: bool,
    callback: Callable[[int, float], bool] | None = None,
    teacher: torch.nn.Module | None = None,
    device: Any = "cpu",
) -> Any:
    """Train a classifier (base or finalist) with cross-entropy; a finalist with finetune.distill
    > 0 also learns the unpruned network's softened outputs (`teacher`)."""
    from acpsearch.classification import train_classifier

    distill = float(spec.finetune.distill) if finetune and teacher is not None else 0.0
    return train_classifier(
        model,
        as_classification(splits),
        **train_recipe(spec, finetune),
        teacher=teacher if distill > 0 else None,
        distill=distill,
        temperature=DISTILL_TEMPERATURE,
        device=device,
        callback=callback,
    )


def history(res: Any) -> list[float | None]:
    return [round(h["val_top1"], 4) if math.isfinite(h["val_top1"]) else None for h in res.history]
