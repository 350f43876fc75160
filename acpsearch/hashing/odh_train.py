"""Base training of a hash network with ODH: learned centres and the two-stage schedule.

`train_odh(model, splits, class_matrix, ...)` trains the network and the centre MLP together
(Adam, warm-up + cosine schedule over all steps, the centre MLP's gradient norm clipped at 5):

- **stage 1, exploration** (the first ``stage2_from`` fraction of the epochs): batches of random
  training images in their weak view; loss = hash proxy loss of tanh(codes) to the centres.
- **stage 2, aggregation**: every batch is made of groups of ``n_positive`` training images of the
  SAME class (an anchor and n_positive - 1 images drawn from its class, with replacement; one of
  its labels for multi-hot data), each in a strong and a weak view; loss = hash proxy loss on the
  weak views + ``distill_weight`` x `hash_distill(strong, weak.detach())`. An epoch of stage 2 has
  as many images as one of stage 1 (n / n_positive groups), each forwarded in two views.

Views: the strong one is a random crop after zero padding by 1/8 of the side, a horizontal flip
with probability 0.5 (only with ``hflip``) and Gaussian noise (sigma 0.1) with probability 0.5; the
weak one applies each with ``weak_scale`` times the probability.

Model selection is by validation mAP (val queries vs the training set), never on the test split:
the epoch with the best value is restored, with the centres it had. The centres are then frozen:
`OdhResult.centres` goes into the checkpoint and fine-tuning reuses it (`acpsearch.hashing.OdhLoss`).

Ablations: ``adaptive=False`` uses fixed CSQ centres (`hash_centers`: Hadamard rows) instead of the
learned ones; ``two_stage=False`` keeps stage 1 for all epochs.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.hashing.data import Splits
from acpsearch.hashing.encoding import model_device, probe, raw_output, to_input, validation_map
from acpsearch.hashing.losses import hash_centers
from acpsearch.hashing.odh import DEFAULT_TAU, CentreModule, hash_distill, hash_proxy_loss, min_centre_distance
from acpsearch.hashing.train import EpochCallback, TrainResult, _Progress, _warmup_cosine, augment_batch

CLIP_NORM = 5.0


@dataclass
class OdhConfig:
    """ODH's settings (defaults: the public code's, except the stage switch, which is a fraction)."""

    tau: float = DEFAULT_TAU
    stage2_from: float = 0.15  # stage 2 starts after this fraction of the epochs
    n_positive: int = 2
    distill_weight: float = 1e-4  # the weight of hash_distill in stage 2
    weak_scale: float = 0.5  # the weak view's probabilities relative to the strong one's
    adaptive: bool = True  # False: fixed Hadamard centres (ablation)
    two_stage: bool = True  # False: stage 1 only (ablation)
    noise: float = 0.1

    def check(self) -> None:
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise SpecError(f"odh.tau: must be a positive number, got {self.tau}")
        if not 0.0 <= self.stage2_from <= 1.0:
            raise SpecError(f"odh.stage2_from: must be in [0, 1], got {self.stage2_from}")
        if not 2 <= self.n_positive <= 16:
            raise SpecError(f"odh.n_positive: must be in [2, 16], got {self.n_positive}")
        if not (math.isfinite(self.distill_weight) and self.distill_weight >= 0):
            raise SpecError(f"odh.distill_weight: must be a number >= 0, got {self.distill_weight}")
        if not 0.0 <= self.weak_scale <= 1.0:
            raise SpecError(f"odh.weak_scale: must be in [0, 1], got {self.weak_scale}")

    def stage1_epochs(self, epochs: int) -> int:
        """Epochs of stage 1 (all of them without two stages; at least one)."""
        if not self.two_stage:
            return epochs
        return min(epochs, max(1, round(self.stage2_from * epochs)))


@dataclass
class OdhResult:
    """The trained network (best epoch by validation mAP), its frozen centres and the run's record."""

    train: TrainResult
    centres: torch.Tensor  # (classes, bits), +-1
    config: OdhConfig
    stage1_epochs: int
    centre_distance: list[int] = field(default_factory=list)  # min Hamming distance per epoch


def make_view(x: torch.Tensor, gen: torch.Generator, strength: float, hflip: bool, noise: float = 0.1) -> torch.Tensor:
    """A random view of a batch (on the CPU): crop after padding with probability `strength`, flip
    with 0.5 x strength (hflip only), Gaussian noise with 0.5 x strength."""
    if x.ndim != 4 or strength <= 0:
        return x
    n = x.shape[0]
    pad = max(1, x.shape[-1] // 8)
    shifted = augment_batch(x, gen, pad, False)
    keep = torch.rand(n, generator=gen) < strength
    out = torch.where(keep[:, None, None, None], shifted, x)
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5 * strength
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    if noise > 0:
        noisy = torch.rand(n, generator=gen) < 0.5 * strength
        eps = torch.randn(out.shape, generator=gen) * noise
        out = out + eps * noisy[:, None, None, None].float()
    return out


class Positives:
    """Same-class groups: each anchor with n_positive - 1 images of its class (with replacement)."""

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        self.labels = labels
        y = (labels > 0) if labels.ndim == 2 else torch.nn.functional.one_hot(labels.long(), num_classes).bool()
        self.multi = labels.ndim == 2
        self.members = [torch.nonzero(y[:, c]).flatten() for c in range(num_classes)]

    def groups(self, anchors: torch.Tensor, n_positive: int, gen: torch.Generator) -> torch.Tensor:
        """(len(anchors) * n_positive,) indices: every anchor followed by its positives."""
        if self.multi:
            w = (self.labels[anchors] > 0).float() + 1e-9
            cls = torch.multinomial(w, 1, generator=gen).flatten()
        else:
            cls = self.labels[anchors].long()
        out = torch.empty(len(anchors), n_positive, dtype=torch.long)
        out[:, 0] = anchors
        for c in torch.unique(cls).tolist():
            rows = torch.nonzero(cls == c).flatten()
            pool = self.members[c]
            pick = torch.randint(0, len(pool), (len(rows), n_positive - 1), generator=gen)
            out[rows, 1:] = pool[pick]
        return out.flatten()


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return [c for c in (perm[i : i + batch_size] for i in range(0, n, batch_size)) if c.numel() >= 2]


def _stage2_batches(
    positives: Positives, n: int, batch_size: int, n_positive: int, gen: torch.Generator
) -> list[torch.Tensor]:
    per_batch = max(1, batch_size // n_positive)
    anchors = torch.randperm(n, generator=gen)[: max(1, n // n_positive)]
    return [positives.groups(anchors[i : i + per_batch], n_positive, gen) for i in range(0, len(anchors), per_batch)]


def _check_args(cfg: OdhConfig, epochs: int, lr: float, batch_size: int, splits: Splits) -> None:
    cfg.check()
    if epochs < 1:
        raise SpecError(f"train.epochs: must be >= 1, got {epochs}")
    if not (math.isfinite(lr) and lr > 0):
        raise SpecError(f"train.lr: must be a positive number, got {lr}")
    if batch_size < 2 * cfg.n_positive:
        raise SpecError(f"train.batch_size: ODH needs at least 2 x n_positive = {2 * cfg.n_positive}, got {batch_size}")
    if not isinstance(splits.train[0], torch.Tensor):
        raise SpecError("odh: needs the training images in memory (data.stream: false)")


def _centre_source(
    cfg: OdhConfig, class_matrix: torch.Tensor | None, num_classes: int, bits: int, seed: int, dev: torch.device
) -> CentreModule | torch.Tensor:
    """The learned centres' module (adaptive) or the fixed Hadamard centres (ablation)."""
    if not cfg.adaptive:
        return hash_centers(num_classes, bits, seed).to(dev)
    if class_matrix is None:
        raise SpecError("odh: adaptive centres need a class matrix (a classifier's final-layer weights)")
    if class_matrix.shape[0] != num_classes:
        raise SpecError(f"odh: the class matrix has {class_matrix.shape[0]} classes, the data set has {num_classes}")
    return CentreModule(class_matrix, bits).to(dev)


@dataclass
class _Stepper:
    """One optimisation step of either stage on a batch of training rows."""

    model: nn.Module
    source: CentreModule | torch.Tensor
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    cfg: OdhConfig
    splits: Splits
    gen: torch.Generator
    hflip: bool
    channels_last: bool
    device: torch.device

    def centres(self) -> torch.Tensor:
        return self.source() if isinstance(self.source, CentreModule) else self.source

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(raw_output(self.model(to_input(x, self.channels_last, self.device))))

    def step(self, idx: torch.Tensor, stage: int) -> float:
        X, y = self.splits.train
        xb, yb, cfg = X[idx], y[idx].to(self.device), self.cfg
        weak = make_view(xb, self.gen, cfg.weak_scale, self.hflip, cfg.noise)
        if stage == 1:
            loss = hash_proxy_loss(self.codes(weak), self.centres(), yb, cfg.tau)
        else:
            strong = make_view(xb, self.gen, 1.0, self.hflip, cfg.noise)
            both = self.codes(torch.cat([strong, weak]))
            cs, cw = both[: len(idx)], both[len(idx) :]
            loss = hash_proxy_loss(cw, self.centres(), yb, cfg.tau)
            if cfg.distill_weight > 0:
                loss = loss + cfg.distill_weight * hash_distill(cs, cw.detach(), cfg.n_positive, self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if isinstance(self.source, CentreModule):
            nn.utils.clip_grad_norm_(list(self.source.parameters()), CLIP_NORM)
        self.opt.step()
        self.sched.step()
        return float(loss.detach())


def train_odh(
    model: nn.Module,
    splits: Splits,
    class_matrix: torch.Tensor | None,
    config: OdhConfig | None = None,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    weight_decay: float = 1e-4,
    hflip: bool = False,
    warmup_epochs: int = 0,
    callback: EpochCallback | None = None,
    channels_last: bool = False,
) -> OdhResult:
    """Train `model` (on its device) with ODH; returns it at its best validation epoch, with the
    frozen centres of that epoch. `class_matrix` (classes x features) feeds the centre MLP; it may
    be None only with ``config.adaptive=False`` (fixed centres)."""
    cfg = config or OdhConfig()
    _check_args(cfg, epochs, lr, batch_size, splits)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    X, y = splits.train
    n, dev = X.shape[0], model_device(model)
    bits = int(raw_output(probe(model, X[:2], channels_last)).shape[1])
    source = _centre_source(cfg, class_matrix, splits.num_classes, bits, seed, dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(source, CentreModule):
        params += list(source.parameters())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _warmup_cosine(warmup_epochs * steps_per_epoch, epochs * steps_per_epoch)
    )
    run = _Stepper(model, source, opt, sched, cfg, splits, gen, hflip, channels_last, dev)
    positives = Positives(y, splits.num_classes)
    stage1 = cfg.stage1_epochs(epochs)
    best_state: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None
    best_map, best_epoch, stopped = -1.0, 0, False
    history: list[dict[str, float]] = []
    distances: list[int] = []
    t_start = time.perf_counter()
    bar = _Progress(progress, epochs)
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            stage = 1 if epoch <= stage1 else 2
            t_ep = time.perf_counter()
            if stage == 1:
                chunks = _batches(n, batch_size, gen)
            else:
                chunks = _stage2_batches(positives, n, batch_size, cfg.n_positive, gen)
            total = 0.0
            for b, idx in enumerate(chunks, 1):
                total += run.step(idx, stage)
                bar.batch(epoch, b, len(chunks))
            train_seconds = time.perf_counter() - t_ep
            with torch.no_grad():
                current = run.centres().detach().clone()
            distances.append(min_centre_distance(current))
            val = validation_map(model, splits, channels_last=channels_last)
            rec = {
                "epoch": epoch,
                "stage": stage,
                "loss": total / max(1, len(chunks)),
                "val_map": val,
                "min_centre_distance": distances[-1],
                "train_seconds": train_seconds,
                "seconds": time.perf_counter() - t_ep,
                "lr": opt.param_groups[0]["lr"],
            }
            history.append(rec)
            if math.isnan(val) or val > best_map:  # no validation split (NaN): keep the last epoch
                best_map, best_epoch = (val if not math.isnan(val) else best_map), epoch
                best_state = (copy.deepcopy(model.state_dict()), current.cpu())
            bar.epoch(rec, best_map)
            if callback is not None and callback(epoch, val):
                stopped = True
                break
    finally:
        bar.close()
    assert best_state is not None
    model.load_state_dict(best_state[0])
    model.eval()
    result = TrainResult(
        model=model,
        best_epoch=best_epoch,
        best_val_map=max(best_map, 0.0) if best_map >= 0 else float("nan"),
        epochs_run=len(history),
        history=history,
        seconds=time.perf_counter() - t_start,
        stopped_early=stopped,
    )
    return OdhResult(result, best_state[1], cfg, stage1, distances)
