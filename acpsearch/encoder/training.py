"""Contrastive training of the StructureEncoder without fine-tuned accuracies.

Two objectives:
- ``sacp`` (faithful to SACP / ACP-SSE): anchor = unpruned graph; positives = strategies whose
  channels the importance criterion picks (e.g. L1) at sampled ratios; negatives = the same
  ratios with random channels, plus random strategies (random ratios, random channels); InfoNCE.
  Negatives are shown with the positives' criterion one-hot, so only what is kept tells them apart.
- ``effect`` (ours): every training strategy carries a cheap functional signal (e.g. code
  agreement of the BN-recalibrated pruned net with the unpruned one, `FunctionalProbe`; for a
  classifier, ``FunctionalProbe(..., task="classification")``'s agreement of top-1 predictions); a
  listwise soft-InfoNCE plus a pairwise term make cos(z(s), z(unpruned)) order the strategies
  by that signal, so the encoder generalises the signal to strategies it never ran.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from acpsearch.encoder.losses import info_nce, pairwise_rank_loss, soft_info_nce
from acpsearch.encoder.model import GraphBatcher, StructureEncoder
from acpsearch.errors import SpecError
from acpsearch.graph import ChannelGraph
from acpsearch.graph.features import FEATURE_NAMES
from acpsearch.pruning import PruningStrategy
from acpsearch.pruning.probe import torch_threads

OBJECTIVES = ("sacp", "effect")


def rank_average(*signals: Sequence[float]) -> list[float]:
    """One `effect` training signal from several (higher = better each): the mean of their ranks
    over the strategies, scaled to (0, 1] (e.g. code agreement with residual-branch damage)."""
    from scipy.stats import rankdata

    n = len(signals[0])
    total = sum(rankdata(np.asarray(x, dtype=np.float64)) for x in signals)
    return [float(r) / (len(signals) * n) for r in np.atleast_1d(total)]


@dataclass
class EncoderTrainResult:
    """The trained encoder, the mean loss of every epoch (to show it falls) and the wall time."""

    encoder: StructureEncoder
    objective: str
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    strategies: int = 0


def random_ratios(
    graph: ChannelGraph, rng: random.Random, min_keep: float = 0.2, step: float = 0.1
) -> dict[str, float]:
    """Keep ratio per group drawn uniformly from the grid {1.0, 1.0-step, ...} >= min_keep."""
    grid = grid_values(min_keep, step)
    return {g.name: rng.choice(grid) for g in graph.groups}


def grid_values(min_keep: float, step: float) -> list[float]:
    """Grid anchored at 1.0 going down by `step` while >= min_keep (rounded to 1e-6)."""
    n = int(np.floor((1.0 - min_keep) / step + 1e-9))
    return [round(1.0 - k * step, 6) for k in range(n + 1)]


def _criterion_columns(in_dim: int) -> list[int]:
    """Indices of the criterion one-hot node features (graph.features.FEATURE_NAMES), if known."""
    if len(FEATURE_NAMES) != in_dim:
        return []
    return [i for i, n in enumerate(FEATURE_NAMES) if n.startswith("criterion_")]


def _as_ratios(s: Any) -> dict[str, float]:
    return dict(s.ratios) if hasattr(s, "ratios") else dict(s)


def train_encoder(
    graph: ChannelGraph,
    objective: str = "effect",
    *,
    strategies: Sequence[Any] | None = None,
    signal: Sequence[float] | np.ndarray | None = None,
    n_strategies: int = 256,
    epochs: int = 60,
    batch_size: int = 64,
    lr: float = 3e-3,
    temperature: float = 0.1,
    criterion: str = "l1",
    min_keep: float = 0.2,
    step: float = 0.1,
    seed: int = 0,
    encoder: StructureEncoder | None = None,
    encoder_config: dict[str, Any] | None = None,
    pairwise_weight: float = 1.0,
    threads: int | None = 1,
    progress: Callable[[int, float], None] | None = None,
) -> EncoderTrainResult:
    """Train (or continue training) a StructureEncoder on one ChannelGraph.

    sacp: `strategies` (ratio dicts or PruningStrategy; only their ratios are used) or
    `n_strategies` random grid ratios give the positives/negatives. effect: `strategies` and a
    `signal` of the same length are required (higher = functionally closer to the unpruned net).
    Returns the encoder in eval mode with the per-epoch mean loss history. `threads` bounds
    torch's intra-op threads while training (1 is fastest for these small ops on a shared CPU).
    """
    if objective not in OBJECTIVES:
        raise SpecError(f"encoder.objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    with torch_threads(threads):
        return _train(
            graph,
            objective,
            strategies,
            signal,
            n_strategies,
            epochs,
            batch_size,
            lr,
            temperature,
            criterion,
            min_keep,
            step,
            seed,
            encoder,
            encoder_config,
            pairwise_weight,
            progress,
        )


def _train(
    graph: ChannelGraph,
    objective: str,
    strategies: Sequence[Any] | None,
    signal: Sequence[float] | np.ndarray | None,
    n_strategies: int,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    criterion: str,
    min_keep: float,
    step: float,
    seed: int,
    encoder: StructureEncoder | None,
    encoder_config: dict[str, Any] | None,
    pairwise_weight: float,
    progress: Callable[[int, float], None] | None,
) -> EncoderTrainResult:
    t0 = time.perf_counter()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    batcher = GraphBatcher(graph)
    if encoder is None:
        encoder = StructureEncoder(batcher.in_dim, **(encoder_config or {}))
    anchor_x = batcher.unpruned_x.unsqueeze(0)

    if objective == "sacp":
        ratio_list = (
            [_as_ratios(s) for s in strategies]
            if strategies
            else [random_ratios(graph, rng, min_keep, step) for _ in range(n_strategies)]
        )
        pos = batcher.features(PruningStrategy(graph, r, criterion=criterion) for r in ratio_list)
        same = batcher.features(
            PruningStrategy(graph, r, criterion="random", seed=rng.randrange(1 << 30)) for r in ratio_list
        )
        other = batcher.features(
            PruningStrategy(
                graph, random_ratios(graph, rng, min_keep, step), criterion="random", seed=rng.randrange(1 << 30)
            )
            for _ in ratio_list
        )
        # Negatives carry the positives' criterion one-hot: otherwise InfoNCE is solved by that
        # one feature (loss ~0 within a few epochs) and the encoder learns nothing about which
        # channels are kept; with it masked, it must read the retained-importance features.
        crit_cols = _criterion_columns(batcher.in_dim)
        if crit_cols:
            same[:, :, crit_cols] = pos[:, :1, crit_cols]
            other[:, :, crit_cols] = pos[:, :1, crit_cols]
        encoder.fit_normalizer(torch.cat([pos, same, other]).reshape(-1, batcher.in_dim))
        n = len(ratio_list)
    else:
        if strategies is None or signal is None or len(strategies) != len(signal):
            raise SpecError("encoder.objective=effect: needs strategies and a signal of the same length")
        feats = batcher.features(strategies)
        y = torch.as_tensor(np.asarray(signal, dtype=np.float32))
        encoder.fit_normalizer(torch.cat([feats, anchor_x]).reshape(-1, batcher.in_dim))
        n = len(strategies)

    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    losses: list[float] = []
    encoder.train()
    for epoch in range(epochs):
        perm = torch.randperm(n)
        total, count = 0.0, 0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:
                continue
            if objective == "sacp":
                stack = torch.cat([anchor_x, pos[idx], same[idx], other[idx]])
                z = batcher.forward(encoder, stack)
                b = len(idx)
                loss = info_nce(z[0], z[1 : 1 + b], z[1 + b :], temperature)
            else:
                stack = torch.cat([anchor_x, feats[idx]])
                z = batcher.forward(encoder, stack)
                loss = soft_info_nce(z[0], z[1:], y[idx], temperature)
                if pairwise_weight:
                    loss = loss + pairwise_weight * pairwise_rank_loss(z[0], z[1:], y[idx], temperature)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        sched.step()
        losses.append(total / max(1, count))
        if progress is not None:
            progress(epoch, losses[-1])
    encoder.eval()
    return EncoderTrainResult(
        encoder=encoder, objective=objective, losses=losses, seconds=time.perf_counter() - t0, strategies=n
    )
