"""The teacher of ODH's learned hash centres: a classifier whose final-layer weight rows (one per
class) form the class matrix that `acpsearch.hashing.CentreModule` maps to centres.

`teacher_splits` turns a hashing protocol split into classification splits WITHOUT new rows: the
classifier trains on the hash network's training part and is selected on its validation part
(top-1), so it never sees the retrieval queries (the test split is the query part, used by nobody
here). `train_teacher` trains the zoo classifier on the same backbone; `class_matrix` reads W.
"""

from __future__ import annotations

import torch
from torch import nn

from acpsearch.classification.models import ZooClassifier, create_classifier
from acpsearch.classification.splits import ClassificationSplits
from acpsearch.classification.train import ClassifierTrainResult, train_classifier
from acpsearch.errors import DataError, SpecError
from acpsearch.hashing import Splits


def teacher_splits(splits: Splits) -> ClassificationSplits:
    """Classification splits over the same rows: train = the protocol's train part, val = its val
    part, test = its query part. Multi-label data have no single class to learn: refused."""
    if splits.train[1].ndim != 1:
        raise DataError(
            f"dataset {splits.dataset}: ODH's teacher classifier needs one label per item; "
            "pass a trained classifier as the teacher"
        )
    if not isinstance(splits.train[0], torch.Tensor):
        raise DataError(f"dataset {splits.dataset}: the teacher classifier needs the images in memory (stream: false)")
    pre = splits.preprocess
    return ClassificationSplits(
        train=splits.train,
        val=splits.val,
        test=splits.query,
        num_classes=splits.num_classes,
        dataset=splits.dataset,
        seed=int(splits.protocol.get("seed", 0)),
        test_source="held-out",
        indices={k: v for k, v in splits.indices.items() if k in ("train", "val")},
        mean=list(pre.get("mean", [])),
        std=list(pre.get("std", [])),
    )


def train_teacher(
    name: str,
    splits: Splits,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    augment: bool = True,
    hflip: bool = False,
    progress: bool = False,
) -> tuple[ZooClassifier, ClassifierTrainResult]:
    """The zoo classifier `name` trained on `splits` (best epoch by validation top-1), on `device`."""
    cls = teacher_splits(splits)
    c, h, _w = cls.input_shape
    torch.manual_seed(seed)
    model = create_classifier(name, splits.num_classes, in_channels=c, image_size=h)
    res = train_classifier(
        model,
        cls,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        augment=augment,
        hflip=hflip,
        device=device,
        seed=seed,
        progress=progress,
    )
    return model, res


def class_matrix(model: nn.Module) -> torch.Tensor:
    """W (classes x features): the weight of the classifier's final Linear layer, on the CPU."""
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise SpecError("odh: the teacher has no final Linear layer 'classifier' to read the class matrix from")
    return head.weight.detach().float().cpu().clone()
