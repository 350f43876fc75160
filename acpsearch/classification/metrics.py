"""Classification accuracy from logits (numpy arrays or torch tensors).

Top-k accuracy is the fraction of items whose label is among the k highest logits (k is capped at
the number of classes; ties between equal logits are broken by `torch.topk`). `accuracy_report`
gives ``top1`` always and ``top5`` when there are at least 20 classes (below that top-5 says little).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from acpsearch.errors import DataError

ArrayLike = torch.Tensor | npt.NDArray[np.generic]
TOP5_MIN_CLASSES = 20


def _as_tensors(logits: ArrayLike, labels: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.as_tensor(logits).detach().cpu()
    y = torch.as_tensor(labels).detach().cpu().long()
    if z.ndim != 2:
        raise DataError(f"accuracy: logits must be (N, classes), got shape {tuple(z.shape)}")
    if y.ndim != 1 or y.shape[0] != z.shape[0]:
        raise DataError(f"accuracy: labels must be ({z.shape[0]},), got shape {tuple(y.shape)}")
    return z.float(), y


def topk_accuracy(logits: ArrayLike, labels: ArrayLike, k: int = 1) -> float:
    """Fraction of rows whose label is among the `k` largest logits (0.0 for no rows)."""
    if k < 1:
        raise DataError(f"accuracy: k must be >= 1, got {k}")
    z, y = _as_tensors(logits, labels)
    if z.shape[0] == 0:
        return 0.0
    top = z.topk(min(k, z.shape[1]), dim=1).indices
    return float((top == y[:, None]).any(dim=1).float().mean())


def top1_accuracy(logits: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of rows whose largest logit is the label's."""
    return topk_accuracy(logits, labels, 1)


def accuracy_report(logits: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """``{"top1": ...}``, plus ``"top5"`` when the logits have at least 20 classes."""
    z, y = _as_tensors(logits, labels)
    report = {"top1": topk_accuracy(z, y, 1)}
    if z.shape[1] >= TOP5_MIN_CLASSES:
        report["top5"] = topk_accuracy(z, y, 5)
    return report
