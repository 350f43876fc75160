"""Training of hash networks (base training and fine-tuning of pruned nets); encoding and evaluation
are in acpsearch.hashing.encoding.

`train_hash_net` accepts any nn.Module whose forward returns the (N, K) raw hash output, or a
tuple whose last element is it. Adam + cosine schedule, optional light augmentation (random crop
with padding, optional horizontal flip), channels_last memory format (about 1.6x faster for these convs
on the CPUs we measured). Work runs on the device the model's parameters are on (CPU, or a GPU when
the caller moved the model there): batches, the loss and the teacher follow it, codes come back on
the CPU for the numpy metrics. The best epoch by validation mAP (val queries vs the train set as the
database: cheap) is kept and restored at the end; a per-epoch callback can stop early (Ray Tune /
ASHA hook in there), and `max_batches` / `time_budget_s` bound the cost of a fine-tune.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.hashing.data import Splits, iter_batches
from acpsearch.hashing.encoding import model_device, probe, raw_output, to_input, to_memory_format, validation_map
from acpsearch.hashing.losses import get_loss

EpochCallback = Callable[[int, float], bool]


@dataclass
class TrainResult:
    """What a training run produced; `model` holds the best epoch's weights."""

    model: nn.Module
    best_epoch: int
    best_val_map: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(1, self.epochs_run)


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int, hflip: bool) -> torch.Tensor:
    """Random crop after zero padding by `pad` pixels (per-sample shifts) and optional h-flip."""
    n, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
        cropped = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
        x = cropped.gather(3, cols)
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def train_hash_net(
    model: nn.Module,
    splits: Splits,
    loss: str | nn.Module = "csq",
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    weight_decay: float = 1e-4,
    augment: bool = False,
    hflip: bool = False,
    pad: int | None = None,
    warmup_epochs: int = 0,
    max_batches: int | None = None,
    time_budget_s: float | None = None,
    callback: EpochCallback | None = None,
    eval_every: int = 1,
    channels_last: bool = True,
    loss_kwargs: dict[str, Any] | None = None,
    num_threads: int | None = None,
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    lr_scale: Callable[[str], float] | None = None,
    val_score: Callable[[nn.Module], float] | None = None,
) -> TrainResult:
    """Train (or fine-tune) `model` in place with a hash loss; returns the best-by-validation model.

    max_batches bounds the optimizer steps over the whole run (the cosine schedule spans them);
    time_budget_s stops after the epoch that exceeds it; callback(epoch, val_map) -> True stops.
    teacher + distill > 0 adds distill * MSE(tanh(student), tanh(teacher)) on the same (augmented)
    batch: a pruned network fine-tuned on a small training set keeps the unpruned network's codes
    instead of only chasing the hash centres (the teacher is frozen, in eval mode).
    lr_scale(parameter name) -> factor gives parameters their own learning rate (lr x factor), e.g.
    a backbone fine-tuned far slower than the hash layer. val_score(model) replaces the validation
    mAP (a label-free study: `hashing.labelfree.NeighbourScore`)."""
    _check_train_args(epochs, lr, batch_size, distill, teacher)
    if num_threads:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    X, y = splits.train
    n = X.shape[0]
    dev = model_device(model)
    bits = int(raw_output(probe(model, X[:2], channels_last)).shape[1])
    criterion = get_loss(loss, bits, splits.num_classes, **(loss_kwargs or {})) if isinstance(loss, str) else loss
    criterion.to(dev)
    if channels_last:
        to_memory_format(model, torch.channels_last)
    teacher = _frozen_teacher(teacher, dev, channels_last) if distill > 0 else None
    groups = _param_groups(model, lr, lr_scale)
    extra = list(getattr(criterion, "generator_parameters", list)())  # a loss's own layers (lagnh)
    if extra:
        groups.append({"params": extra})
    opt = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    if max_batches is not None:
        total_steps = min(total_steps, int(max_batches))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(warmup_epochs * steps_per_epoch, total_steps))
    run = _Stepper(
        model,
        criterion,
        opt,
        sched,
        teacher,
        distill,
        augment,
        hflip,
        (X.shape[-1] // 8) if pad is None else pad,
        gen,
        channels_last,
        dev,
    )

    best_state, best_map, best_epoch = None, -1.0, 0
    history: list[dict[str, float]] = []
    step, stopped = 0, False
    t_start = time.perf_counter()
    bar = _Progress(progress, epochs)
    epoch = 0
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            criterion.train()
            t_ep = time.perf_counter()
            perm = torch.randperm(n, generator=gen)
            total_loss, batches = 0.0, 0
            # BatchNorm and pair losses need 2+ items: a last batch of one is skipped
            chunks = [c for c in (perm[i : i + batch_size] for i in range(0, n, batch_size)) if c.numel() >= 2]
            chunks = chunks[: max(0, total_steps - step)]
            for idx, xb in zip(chunks, iter_batches(X, chunks)):
                total_loss += run.step(xb, y[idx])
                step += 1
                batches += 1
                bar.batch(epoch, batches, steps_per_epoch)
            train_seconds = time.perf_counter() - t_ep
            last = epoch == epochs or step >= total_steps
            score = val_score or (lambda m: validation_map(m, splits, channels_last=channels_last))
            val = score(model) if (epoch % eval_every == 0 or last) else float("nan")
            rec = {
                "epoch": epoch,
                "loss": total_loss / max(1, batches),
                "val_map": val,
                "train_seconds": train_seconds,
                "seconds": time.perf_counter() - t_ep,
                "lr": opt.param_groups[0]["lr"],
            }
            history.append(rec)
            if not math.isnan(val) and val > best_map:
                best_map, best_epoch = val, epoch
                best_state = copy.deepcopy(model.state_dict())
            elif math.isnan(val) and splits.val[0].shape[0] == 0:  # no validation split: keep the last
                best_state, best_epoch = None, epoch
            bar.epoch(rec, best_map)
            if callback is not None and callback(epoch, val):
                stopped = True
                break
            if step >= total_steps:
                break
            if time_budget_s is not None and time.perf_counter() - t_start > time_budget_s:
                stopped = True
                break
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model,
        best_epoch=best_epoch,
        best_val_map=max(best_map, 0.0) if best_state else float("nan"),
        epochs_run=len(history),
        history=history,
        seconds=time.perf_counter() - t_start,
        stopped_early=stopped,
    )


def _param_groups(model: nn.Module, lr: float, lr_scale: Callable[[str], float] | None) -> list[dict[str, Any]]:
    """Trainable parameters as optimizer groups: one group, or one per distinct lr_scale factor."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if lr_scale is None:
        return [{"params": [p for _, p in named]}]
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in named:
        groups.setdefault(float(lr_scale(name)), []).append(p)
    return [{"params": ps, "lr": lr * f} for f, ps in groups.items()]


def _check_train_args(epochs: int, lr: float, batch_size: int, distill: float, teacher: nn.Module | None) -> None:
    if epochs < 1:
        raise SpecError(f"train.epochs: must be >= 1, got {epochs}")
    if lr <= 0 or not math.isfinite(lr):
        raise SpecError(f"train.lr: must be a positive number, got {lr}")
    if batch_size < 1:
        raise SpecError(f"train.batch_size: must be >= 1, got {batch_size}")
    if distill < 0 or not math.isfinite(distill):
        raise SpecError(f"finetune.distill: must be a number >= 0, got {distill}")
    if distill > 0 and teacher is None:
        raise SpecError("finetune.distill: needs the unpruned network as teacher")


def _frozen_teacher(teacher: nn.Module | None, device: torch.device, channels_last: bool) -> nn.Module | None:
    """The distillation teacher on `device`, in eval mode, its parameters frozen."""
    if teacher is None:
        return None
    teacher.to(device)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if channels_last:
        to_memory_format(teacher, torch.channels_last)
    return teacher


def _warmup_cosine(warm: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor per step: linear warm-up over `warm` steps, then cosine to 0."""

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return lr_at


@dataclass
class _Stepper:
    """One optimisation step of `train_hash_net` on a batch: augmentation, the hash loss (plus the
    distillation term with a teacher), backward, optimizer and schedule step."""

    model: nn.Module
    criterion: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    teacher: nn.Module | None
    distill: float
    augment: bool
    hflip: bool
    pad: int
    gen: torch.Generator
    channels_last: bool
    device: torch.device

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        """Train on one batch; returns its loss."""
        if self.augment and xb.ndim == 4:
            xb = augment_batch(xb, self.gen, self.pad, self.hflip)
        xin = to_input(xb, self.channels_last, self.device)
        out = raw_output(self.model(xin))
        lval = self.criterion(out, yb.to(self.device))
        if self.teacher is not None:
            with torch.no_grad():
                target = torch.tanh(raw_output(self.teacher(xin)))
            lval = lval + self.distill * F.mse_loss(torch.tanh(out), target)
        self.opt.zero_grad(set_to_none=True)
        lval.backward()
        self.opt.step()
        self.sched.step()
        return float(lval.detach())


class _Progress:
    """rich progress bar: batches in the epoch, last loss and validation mAP; a no-op when off."""

    def __init__(self, enabled: bool, epochs: int) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        # stderr, so `--json` output on stdout stays one clean document
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            transient=False,
            console=Console(stderr=True),
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=1, epoch=0, epochs=epochs, info="")
        self.epochs = epochs

    def batch(self, epoch: int, done: int, total: int) -> None:
        if self.enabled:
            self.progress.update(self.task, completed=done, total=total, epoch=epoch)

    def epoch(self, rec: dict[str, float], best: float) -> None:
        if self.enabled:
            info = f"loss {rec['loss']:.4f}  val mAP {rec['val_map']:.4f}  best {best:.4f}  {rec['seconds']:.1f}s"
            self.progress.update(self.task, info=info)
            self.progress.console.log(f"epoch {int(rec['epoch'])}: {info}")

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()


def checkpoint_meta(
    splits: Splits, loss: str, result: TrainResult, metrics: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """The `meta` entry of a trained hash-net checkpoint (dataset, protocol, preprocess, loss, metrics,
    epochs); `preprocess` is how images become the network's input (`acpsearch.preprocess`)."""
    return {
        "dataset": splits.dataset,
        "protocol": dict(splits.protocol),
        "preprocess": dict(splits.preprocess),
        "loss": loss,
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "val_map": result.best_val_map,
        "seconds_per_epoch": round(result.seconds_per_epoch, 3),
        "metrics": metrics or {},
        **extra,
    }
