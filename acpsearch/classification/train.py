"""Training and evaluation of classifiers (base training, and fine-tuning of pruned networks).

`train_classifier` trains `model` in place on ``splits.train`` with Adam (weight decay 1e-4) and a
cosine learning-rate schedule over all steps, cross-entropy with optional label smoothing, optional
light augmentation (hashing's `augment_batch`: random crop after zero padding by 1/8 of the side,
a random horizontal flip with ``hflip``) and optional knowledge distillation from a frozen
`teacher` (``distill`` is the weight alpha of the KD term, see `acpsearch.classification.losses`).
After every epoch the model is scored on ``splits.val``; the epoch with the best validation top-1
(the first one on ties) is restored at the end, so the returned model is the best-by-validation
one, never chosen on test. Without a validation split the last epoch is kept. Training runs on
`device`; the last batch of an epoch is skipped when it holds a single item (BatchNorm needs two).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from acpsearch.classification.losses import CrossEntropyLoss, DistillationLoss
from acpsearch.classification.metrics import accuracy_report
from acpsearch.classification.splits import ClassificationSplits
from acpsearch.errors import SpecError
from acpsearch.hashing.train import augment_batch


@dataclass
class ClassifierTrainResult:
    """What a training run produced; `model` holds the best epoch's weights (by validation top-1)."""

    model: nn.Module
    best_epoch: int
    best_val_top1: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _check_args(epochs: int, lr: float, batch_size: int, distill: float, teacher: nn.Module | None) -> None:
    if epochs < 1:
        raise SpecError(f"train.epochs: must be >= 1, got {epochs}")
    if not math.isfinite(lr) or lr <= 0:
        raise SpecError(f"train.lr: must be a positive number, got {lr}")
    if batch_size < 1:
        raise SpecError(f"train.batch_size: must be >= 1, got {batch_size}")
    if not 0.0 <= distill <= 1.0:
        raise SpecError(f"train.distill: must be in [0, 1], got {distill}")
    if distill > 0 and teacher is None:
        raise SpecError("train.distill: needs a teacher network")


@torch.no_grad()
def predict_logits(model: nn.Module, X: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The model's logits for `X` in eval mode, batch by batch, on the CPU."""
    was_training = model.training
    model.eval()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = [model(X[i : i + batch_size].to(dev)).float().cpu() for i in range(0, X.shape[0], batch_size)]
    model.train(was_training)
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def evaluate_classifier(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
    """`accuracy_report` of the model on (X, y): top1, and top5 with 20 or more classes."""
    if X.shape[0] == 0:
        return {"top1": float("nan")}
    return accuracy_report(predict_logits(model, X, batch_size), y)


def _frozen(teacher: nn.Module, dev: torch.device) -> nn.Module:
    teacher.to(dev)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _epoch(
    model: nn.Module,
    splits: ClassificationSplits,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    loss: nn.Module,
    teacher: nn.Module | None,
    gen: torch.Generator,
    batch_size: int,
    augment: bool,
    dev: torch.device,
    hflip: bool = False,
) -> float:
    """One pass over the training split; returns the mean loss."""
    X, y = splits.train
    n = X.shape[0]
    perm = torch.randperm(n, generator=gen)
    chunks = [c for c in (perm[i : i + batch_size] for i in range(0, n, batch_size)) if c.numel() >= 2]
    pad = max(1, X.shape[-1] // 8)
    model.train()
    total = 0.0
    for idx in chunks:
        xb = X[idx]
        if augment and xb.ndim == 4:
            xb = augment_batch(xb, gen, pad, hflip)
        xb, yb = xb.to(dev), y[idx].to(dev)
        logits = model(xb)
        if teacher is not None:
            with torch.no_grad():
                target = teacher(xb)
            lval = loss(logits, yb, target)
        else:
            lval = loss(logits, yb)
        opt.zero_grad(set_to_none=True)
        lval.backward()
        opt.step()
        sched.step()
        total += float(lval.detach())
    return total / max(1, len(chunks))


def train_classifier(
    model: nn.Module,
    splits: ClassificationSplits,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    label_smoothing: float = 0.0,
    augment: bool = False,
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    temperature: float = 4.0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = False,
    hflip: bool = False,
    callback: Callable[[int, float], bool] | None = None,
) -> ClassifierTrainResult:
    """Train `model` in place; returns it with the best-by-validation-top-1 epoch's weights.
    `callback(epoch, val_top1)` after every epoch; it returns True to stop training there."""
    _check_args(epochs, lr, batch_size, distill, teacher)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    model.to(dev)
    loss: nn.Module = CrossEntropyLoss(label_smoothing)
    if teacher is not None and distill > 0:
        teacher = _frozen(teacher, dev)
        loss = DistillationLoss(temperature, distill, label_smoothing)
    else:
        teacher = None
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    total_steps = max(1, epochs * math.ceil(splits.train[0].shape[0] / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps))))
    has_val = splits.val[0].shape[0] > 0
    best_state: dict[str, torch.Tensor] | None = None
    best_top1, best_epoch = -1.0, epochs
    history: list[dict[str, float]] = []
    t_start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t_ep = time.perf_counter()
        mean_loss = _epoch(model, splits, opt, sched, loss, teacher, gen, batch_size, augment, dev, hflip)
        val = evaluate_classifier(model, *splits.val)["top1"] if has_val else float("nan")
        rec = {"epoch": float(epoch), "loss": mean_loss, "val_top1": val, "seconds": time.perf_counter() - t_ep}
        history.append(rec)
        if has_val and val > best_top1:
            best_top1, best_epoch = val, epoch
            best_state = copy.deepcopy(model.state_dict())
        if progress:
            print(f"epoch {epoch}/{epochs}  loss {mean_loss:.4f}  val top-1 {val:.4f}", file=sys.stderr, flush=True)
        if callback is not None and callback(epoch, val):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return ClassifierTrainResult(
        model=model,
        best_epoch=best_epoch,
        best_val_top1=best_top1 if has_val else float("nan"),
        epochs_run=len(history),
        history=history,
        seconds=time.perf_counter() - t_start,
    )
