"""The progressive driver: shorten a trained hash network along a descending schedule of lengths.

For each length K' (e.g. 64 -> 48 -> 32 -> 24 -> 12, each step from the previous step's network):

- ``method="prune"`` (DHWP): score the current bits by `criterion` on a slice of the training
  set, keep the best K' (`criteria.select_bits`, CSQ guard on), slice the hash layer, fine-tune.
  ``criterion="auto"`` does this for every criterion and keeps, per length, the network with the
  best VALIDATION mAP (val queries against the training set), as the DHWP paper suggests.
- ``method="merge"`` (NMLayer-style, our design, see `merge`): alternate active phases (merges)
  and frozen phases (fine-tuning) until K' bits are left.

Fine-tuning is `acpsearch.hashing.train_hash_net` with the hash loss built at K' bits from the
kept (or merged) base centres for CSQ (never new ones), the learning rate lr x lr_decay^step
(dropped at every step) and the backbone at backbone_lr_ratio x the hash layer's rate; the best
epoch by validation mAP is kept. ``epochs=0`` gives the codes without fine-tuning (DHWP-inter).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from acpsearch.codelength.codemap import CodeMap
from acpsearch.codelength.criteria import CRITERIA, BitData, hash_outputs, select_bits
from acpsearch.codelength.layer import base_centres, code_loss, find_hash_layer, min_centre_distance
from acpsearch.codelength.merge import PARTNERS, merge_step
from acpsearch.codelength.surgery import apply_code_map
from acpsearch.errors import SpecError
from acpsearch.hashing.data import Splits
from acpsearch.hashing.encoding import validation_map
from acpsearch.hashing.train import train_hash_net

METHODS = ("prune", "merge")
CRITERION_CHOICES = (*CRITERIA, "auto")


@dataclass
class LengthResult:
    """One length of the schedule: the network emitting `bits` values and how it was made."""

    bits: int
    model: nn.Module
    code_map: CodeMap  # from the base hash layer to these bits
    centres: torch.Tensor | None  # the CSQ class centres of these bits (None for pair losses)
    method: str
    criterion: str  # the criterion used (chosen, with auto); "merge" for merging
    val_map: float
    candidates: dict[str, float] = field(default_factory=dict)  # auto: val mAP per criterion
    guarded: bool = False  # the CSQ guard changed the kept set
    epochs: int = 0
    seconds: float = 0.0

    @property
    def min_centre_distance(self) -> int | None:
        return min_centre_distance(self.centres)

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores about the code (plain lists, weights-only safe)."""
        return {
            **self.code_map.to_dict(),
            "method": self.method,
            "criterion": self.criterion,
            "centres": None if self.centres is None else self.centres.int().tolist(),
        }


def check_schedule(lengths: Sequence[int], base_bits: int, name: str = "lengths") -> list[int]:
    """The schedule as a list: non-empty, every length in [1, base_bits), strictly descending."""
    out = [int(v) for v in lengths]
    if not out:
        raise SpecError(f"{name}: give at least one code length")
    for v in out:
        if v < 1:
            raise SpecError(f"{name}: a code length must be >= 1, got {v}")
        if v >= base_bits:
            raise SpecError(f"{name}: {v} is not shorter than the network's {base_bits} bits")
    if any(b >= a for a, b in zip(out, out[1:])):
        raise SpecError(f"{name}: lengths must be strictly descending, got {','.join(map(str, out))}")
    return out


def check_choices(method: str, criterion: str, partner: str = "correlation") -> None:
    if method not in METHODS:
        raise SpecError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
    if criterion not in CRITERION_CHOICES:
        raise SpecError(f"criterion: must be one of {', '.join(CRITERION_CHOICES)}, got {criterion!r}")
    if partner not in PARTNERS:
        raise SpecError(f"partner: must be one of {', '.join(PARTNERS)}, got {partner!r}")


@dataclass
class _Run:
    """Settings shared by the steps of one `shorten` call."""

    splits: Splits
    loss: str
    hash_layer: str
    epochs: int
    lr: float
    lr_decay: float
    backbone_lr_ratio: float
    batch_size: int
    seed: int
    score_idx: torch.Tensor
    partner: str
    progress: bool
    train_kwargs: dict[str, Any]

    def data(self, model: nn.Module, centres: torch.Tensor | None) -> BitData:
        X, y = self.splits.train
        h = hash_outputs(model, X[self.score_idx])
        return BitData(h, y[self.score_idx], self.splits.num_classes, self.loss, centres, self.seed)

    def finetune(
        self, model: nn.Module, centres: torch.Tensor | None, step: int, epochs: int
    ) -> tuple[nn.Module, float]:
        """Fine-tune (epochs > 0) and return (best model, its val mAP)."""
        if epochs <= 0:
            return model, validation_map(model, self.splits)
        bits = find_hash_layer(model, self.hash_layer)[1].out_features
        head = self.hash_layer

        def scale(name: str) -> float:
            return 1.0 if name == head or name.startswith(head + ".") else self.backbone_lr_ratio

        res = train_hash_net(
            model,
            self.splits,
            loss=code_loss(self.loss, bits, self.splits.num_classes, centres),
            epochs=epochs,
            lr=self.lr * self.lr_decay**step,
            batch_size=self.batch_size,
            seed=self.seed + step,
            progress=self.progress,
            lr_scale=scale,
            **self.train_kwargs,
        )
        return res.model, res.best_val_map


def _prune_step(
    run: _Run, model: nn.Module, cmap: CodeMap, centres: torch.Tensor | None, bits: int, criterion: str, step: int
) -> LengthResult:
    t0 = time.perf_counter()
    data = run.data(model, centres)
    names = list(CRITERIA) if criterion == "auto" else [criterion]
    best: LengthResult | None = None
    candidates: dict[str, float] = {}
    for name in names:
        sel = select_bits(name, data, bits, guard=True)
        local = CodeMap.pruned(data.bits, sel.keep)
        short = apply_code_map(model, local, run.hash_layer)
        short_centres = local.centres(centres)
        short, val = run.finetune(short, short_centres, step, run.epochs)
        candidates[name] = val
        if best is None or val > best.val_map:
            best = LengthResult(bits, short, cmap.then(local), short_centres, "prune", name, val, guarded=sel.guarded)
    assert best is not None
    best.candidates, best.epochs, best.seconds = candidates, run.epochs, time.perf_counter() - t0
    return best


def _merge_step(
    run: _Run, model: nn.Module, cmap: CodeMap, centres: torch.Tensor | None, bits: int, step: int
) -> LengthResult:
    t0 = time.perf_counter()
    current = find_hash_layer(model, run.hash_layer)[1].out_features
    phases = max(1, min(3, run.epochs))
    val, done = float("nan"), 0
    while current > bits:
        left = max(1, phases - done)
        n = min(math.ceil((current - bits) / left), current // 2)
        local = merge_step(run.data(model, centres), n, run.partner)
        if local.bits >= current:
            raise SpecError(f"merge: no merge found from {current} bits")  # never loop without progress
        model = apply_code_map(model, local, run.hash_layer)
        centres, cmap, current = local.centres(centres), cmap.then(local), local.bits
        ep = run.epochs // phases + (1 if done < run.epochs % phases else 0) if run.epochs > 0 else 0
        model, val = run.finetune(model, centres, step, ep)
        done += 1
    return LengthResult(
        bits, model, cmap, centres, "merge", "merge", val, epochs=run.epochs, seconds=time.perf_counter() - t0
    )


def shorten(
    model: nn.Module,
    splits: Splits,
    lengths: Sequence[int],
    *,
    loss: str = "csq",
    method: str = "prune",
    criterion: str = "balance",
    epochs: int = 3,
    lr: float = 1e-3,
    lr_decay: float = 0.5,
    backbone_lr_ratio: float = 0.1,
    batch_size: int = 128,
    seed: int = 0,
    centres: torch.Tensor | None = None,
    code_map: CodeMap | None = None,
    hash_layer: str | None = None,
    score_items: int = 2000,
    partner: str = "correlation",
    progress: bool = False,
    on_length: Callable[[LengthResult], None] | None = None,
    **train_kwargs: Any,
) -> list[LengthResult]:
    """Shorten `model` (left unchanged) along `lengths`; one `LengthResult` per length, in order.

    `centres`: the CSQ centres of the model's current bits (default: those `get_loss` builds for the
    base length); `code_map`: how the current bits come from the base hash layer (default:
    identity), so a network shortened before continues from its record. `train_kwargs` go to
    `train_hash_net` (e.g. augment, weight_decay, max_batches)."""
    check_choices(method, criterion, partner)
    name, layer = find_hash_layer(model, hash_layer)
    k0 = layer.out_features
    schedule = check_schedule(lengths, k0)
    if epochs < 0 or not (lr > 0 and 0 < lr_decay <= 1 and backbone_lr_ratio >= 0):
        raise SpecError("shorten: epochs must be >= 0, lr > 0, lr_decay in (0, 1], backbone_lr_ratio >= 0")
    cmap = CodeMap.identity(k0) if code_map is None else code_map
    if cmap.bits != k0:
        raise SpecError(f"code_map: maps to {cmap.bits} bits, the hash layer has {k0}")
    if centres is None and loss.lower() == "csq":
        centres = base_centres("csq", k0, splits.num_classes)
    n_train = int(splits.train[0].shape[0])
    gen = torch.Generator().manual_seed(seed)
    score_idx = torch.randperm(n_train, generator=gen)[: min(score_items, n_train)].sort().values
    run = _Run(
        splits,
        loss.lower(),
        name,
        epochs,
        lr,
        lr_decay,
        backbone_lr_ratio,
        batch_size,
        seed,
        score_idx,
        partner,
        progress,
        train_kwargs,
    )
    results: list[LengthResult] = []
    current: nn.Module = model
    for step, bits in enumerate(schedule):
        if method == "prune":
            res = _prune_step(run, current, cmap, centres, bits, criterion, step)
        else:
            res = _merge_step(run, current, cmap, centres, bits, step)
        results.append(res)
        if on_length is not None:
            on_length(res)
        current, cmap, centres = res.model, res.code_map, res.centres
    return results
