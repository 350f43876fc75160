"""Training, encoding and evaluation of hash networks (base training and fine-tuning of pruned nets).

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
from acpsearch.hashing.data import Splits, is_source, iter_batches
from acpsearch.hashing.losses import get_loss
from acpsearch.hashing.metrics import mean_average_precision, precision_at_n

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


def _output(out: Any) -> torch.Tensor:
    """The hash output of a forward: the tensor itself or the last element of a tuple/list."""
    if isinstance(out, (tuple, list)):
        out = out[-1]
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise SpecError("model: forward must return an (N, K) tensor or a tuple ending in one")
    return out


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameterless module)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def to_memory_format(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """`model.to(memory_format=...)` in place (torch accepts the keyword; its type stubs do not list it)."""
    kwargs: dict[str, Any] = {"memory_format": memory_format}
    return model.to(**kwargs)


def _to_input(x: torch.Tensor, channels_last: bool, device: torch.device | None = None) -> torch.Tensor:
    if device is not None and x.device != device:
        x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def encode(model: nn.Module, X: Any, batch_size: int = 512, channels_last: bool = True) -> torch.Tensor:
    """Binary codes (+1/-1 float, (n, K)) of images X in eval mode; sign(0) counts as +1.

    X is a tensor (N, C, H, W) or an ImageSource (decoded per batch by a DataLoader: memory holds
    the codes and a batch, not the images)."""
    was_training = model.training
    model.eval()
    dev = model_device(model)
    outs = []
    n = int(X.shape[0])
    chunks: list[Any] = (
        [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]
        if is_source(X)
        else [slice(i, i + batch_size) for i in range(0, n, batch_size)]
    )
    try:
        for xb in iter_batches(X, chunks):
            h = _output(model(_to_input(xb, channels_last, dev)))
            outs.append(torch.where(h >= 0, 1.0, -1.0).cpu())
    finally:
        model.train(was_training)
    if not outs:
        return torch.zeros(0, 0)
    return torch.cat(outs)


def validation_map(model: nn.Module, splits: Splits, batch_size: int = 512, channels_last: bool = True) -> float:
    """mAP of the val queries against the training set as the database (model selection)."""
    if splits.val[0].shape[0] == 0:
        return float("nan")
    qv = encode(model, splits.val[0], batch_size, channels_last)
    dt = encode(model, splits.train[0], batch_size, channels_last)
    return mean_average_precision(qv, dt, splits.val[1], splits.train[1])


def evaluate(
    model: nn.Module,
    splits: Splits,
    topk: int | None = None,
    precision_n: int = 1000,
    batch_size: int = 512,
    channels_last: bool = True,
) -> dict[str, Any]:
    """Test mAP@all and mAP@topk (queries vs database), precision@N, validation mAP.

    `topk=None` uses min(1000, database size), the usual mAP@1000."""
    n_db = int(splits.database[0].shape[0])
    k = min(1000, n_db) if topk is None else int(topk)
    if k < 1:
        raise SpecError(f"topk: must be >= 1, got {topk}")
    model_mode = model.training
    t0 = time.perf_counter()
    q = encode(model, splits.query[0], batch_size, channels_last)
    db = encode(model, splits.database[0], batch_size, channels_last)
    t_enc = time.perf_counter() - t0
    ql, dl = splits.query[1], splits.database[1]
    res = {
        "map_all": mean_average_precision(q, db, ql, dl),
        "map_topk": mean_average_precision(q, db, ql, dl, topk=k),
        "topk": k,
        "precision_at_n": precision_at_n(q, db, ql, dl, n=precision_n),
        "precision_n": int(min(precision_n, n_db)),
        "val_map": validation_map(model, splits, batch_size, channels_last),
        "bits": int(q.shape[1]),
        "n_query": int(q.shape[0]),
        "n_database": n_db,
        "encode_seconds": round(t_enc, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    model.train(model_mode)
    return res


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
) -> TrainResult:
    """Train (or fine-tune) `model` in place with a hash loss; returns the best-by-validation model.

    max_batches bounds the optimizer steps over the whole run (the cosine schedule spans them);
    time_budget_s stops after the epoch that exceeds it; callback(epoch, val_map) -> True stops.
    teacher + distill > 0 adds distill * MSE(tanh(student), tanh(teacher)) on the same (augmented)
    batch: a pruned network fine-tuned on a small training set keeps the unpruned network's codes
    instead of only chasing the hash centres (the teacher is frozen, in eval mode)."""
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
    if num_threads:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    X, y = splits.train
    n = X.shape[0]
    dev = model_device(model)
    bits = int(_output(_probe(model, X[:2], channels_last)).shape[1])
    criterion = get_loss(loss, bits, splits.num_classes, **(loss_kwargs or {})) if isinstance(loss, str) else loss
    criterion.to(dev)
    if channels_last:
        to_memory_format(model, torch.channels_last)
    if teacher is not None and distill > 0:
        teacher.to(dev)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        if channels_last:
            to_memory_format(teacher, torch.channels_last)
    else:
        teacher = None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    if max_batches is not None:
        total_steps = min(total_steps, int(max_batches))
    warm = warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:  # linear warm-up then cosine to 0 over the whole run
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    pad = (X.shape[-1] // 8) if pad is None else pad

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
                yb = y[idx]
                if augment and xb.ndim == 4:
                    xb = augment_batch(xb, gen, pad, hflip)
                xin = _to_input(xb, channels_last, dev)
                out = _output(model(xin))
                lval = criterion(out, yb.to(dev))
                if teacher is not None:
                    with torch.no_grad():
                        target = torch.tanh(_output(teacher(xin)))
                    lval = lval + distill * F.mse_loss(torch.tanh(out), target)
                opt.zero_grad(set_to_none=True)
                lval.backward()
                opt.step()
                sched.step()
                step += 1
                total_loss += float(lval.detach())
                batches += 1
                bar.batch(epoch, batches, steps_per_epoch)
            train_seconds = time.perf_counter() - t_ep
            last = epoch == epochs or step >= total_steps
            val = (
                validation_map(model, splits, channels_last=channels_last)
                if (epoch % eval_every == 0 or last)
                else float("nan")
            )
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


@torch.no_grad()
def _probe(model: nn.Module, x: torch.Tensor, channels_last: bool) -> Any:
    was = model.training
    model.eval()
    try:
        return model(_to_input(x, channels_last, model_device(model)))
    finally:
        model.train(was)


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
