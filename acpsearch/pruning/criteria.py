"""Channel importance criteria over coupled groups, as objects in a registry (name -> criterion).

A group's channels appear in several tensors (producer filters, consumer input columns, norm
scales, free parameters). Each criterion scores the channels in every relevant tensor, divides
the scores by their mean (so layers of different scale weigh the same) and sums them:

* ``l1`` / ``l2``: norm of each channel's slice of every conv / linear weight bound to the group
  (output filters and consumer input columns; Torch-Pruning's group-norm importance). On a group
  that touches a binary conv's weight (used as ``alpha * sign(W)``, so its magnitude ranks only
  alpha) they score like ``bn_scale`` when the group has norm scales: the default for binary groups;
* ``bn_scale``: |gamma| of the norm layers on the group (network slimming), else l1;
* ``fpgm``: distance of each output filter to the other filters of its layer (filters near the
  geometric median are redundant), else l1;
* ``taylor``: |sum of w * dL/dw| over each channel's slices of every bound parameter, from
  batches passed to ``set_taylor_importance`` (Molchanov et al. 2019);
* ``random``: seeded uniform scores (the random baseline).

Scores of a graph's own model are cached per graph (`ImportanceCache`), next to the graph's
Taylor products; the graph itself holds no pruning state.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.graph import ChannelGraph, ChannelGroup

Scores = NDArray[np.float64]
Slice = tuple[str, int, int, int, int]
TaylorLoss = Callable[[Any, Any], torch.Tensor]


@dataclass
class ImportanceCache:
    """Pruning state of one graph: cached scores, Taylor products, keep orders of retained mass."""

    scores: dict[tuple[str, str, int], Scores] = field(default_factory=dict)
    taylor: dict[str, torch.Tensor] | None = None
    retained: dict[tuple[str, int], list[Scores]] = field(default_factory=dict)


_CACHES: weakref.WeakKeyDictionary[ChannelGraph, ImportanceCache] = weakref.WeakKeyDictionary()


def importance_cache(graph: ChannelGraph) -> ImportanceCache:
    """The graph's importance cache (created on first use, dropped with the graph)."""
    cache = _CACHES.get(graph)
    if cache is None:
        cache = _CACHES[graph] = ImportanceCache()
    return cache


def group_slices(graph: ChannelGraph, group: ChannelGroup) -> list[Slice]:
    """(tensor name, axis, offset, channels, repeat) for every place the group's channels live."""
    an = graph.analysis
    V = an.vars
    root = next(r for r, gi in graph.group_of_root.items() if gi == group.index)
    out = []
    for tname, axes in an.bindings.items():
        for axis, segs in axes.items():
            if axis == -1:
                continue  # per-group input axis of grouped convs: scored through the output side
            off = 0
            for v, r in segs:
                if V.find(v) == root:
                    out.append((tname, axis, off, V.size[v], r))
                off += V.size[v] * r
    return out


def _channel_rows(t: torch.Tensor, axis: int, off: int, size: int, rep: int) -> torch.Tensor:
    s = t.detach().float().narrow(axis, off, size * rep).movedim(axis, 0)
    return s.reshape(size, -1)


def _norm(scores: torch.Tensor) -> Scores:
    m = float(scores.mean())
    return (scores / m).numpy().astype(np.float64) if m > 0 else np.zeros(len(scores))


@dataclass
class ScoringInput:
    """What a criterion scores: the group, its slices in the model's tensors, and the graph's state."""

    graph: ChannelGraph
    group: ChannelGroup
    tensors: Mapping[str, torch.Tensor]
    slices: list[Slice]
    seed: int
    state: ImportanceCache

    @property
    def weights(self) -> list[Slice]:
        return [s for s in self.slices if self.tensors[s[0]].dim() >= 2]


class Criterion:
    """A channel importance criterion: per-channel scores of a group (higher = keep)."""

    name: ClassVar[str] = ""

    def score(self, inp: ScoringInput) -> Scores:
        raise NotImplementedError


class Norm(Criterion):
    """l1 / l2 norm of each channel's weight slices (all bound slices when no weight has one)."""

    def __init__(self, p: int) -> None:
        self.p = p

    def score(self, inp: ScoringInput) -> Scores:
        binary = inp.graph.analysis.binary_params
        if any(s[0] in binary for s in inp.slices) and _norm_scales(inp):
            return BNScale().score(inp)
        total = np.zeros(inp.group.channels)
        for tname, axis, off, size, rep in inp.weights or inp.slices:
            rows = _channel_rows(inp.tensors[tname], axis, off, size, rep)
            sc = rows.abs().sum(dim=1) if self.p == 1 else rows.pow(2).sum(dim=1).sqrt()
            total += _norm(sc)
        return total


class L1(Norm):
    name = "l1"

    def __init__(self) -> None:
        super().__init__(1)


class L2(Norm):
    name = "l2"

    def __init__(self) -> None:
        super().__init__(2)


def _norm_scales(inp: ScoringInput) -> list[Slice]:
    """The group's slices of norm-layer scales (gamma)."""
    mods = inp.graph.analysis.modules

    def is_norm_scale(tname: str) -> bool:
        mod = mods.get(tname.rsplit(".", 1)[0])
        return (
            tname.endswith(".weight")
            and inp.tensors[tname].dim() == 1
            and mod is not None
            and (mod.kind in ("norm", "groupnorm", "layernorm"))
        )

    return [s for s in inp.slices if is_norm_scale(s[0])]


class BNScale(Criterion):
    name = "bn_scale"

    def score(self, inp: ScoringInput) -> Scores:
        norms = _norm_scales(inp)
        if not norms:
            return L1().score(inp)
        total = np.zeros(inp.group.channels)
        for tname, axis, off, size, rep in norms:
            total += _norm(_channel_rows(inp.tensors[tname], axis, off, size, rep).abs().sum(dim=1))
        return total


class FPGM(Criterion):
    name = "fpgm"

    def score(self, inp: ScoringInput) -> Scores:
        filters = [s for s in inp.weights if s[1] == 0]
        if not filters:
            return L1().score(inp)
        total = np.zeros(inp.group.channels)
        for tname, axis, off, size, rep in filters:
            rows = _channel_rows(inp.tensors[tname], axis, off, size, rep)
            total += _norm(torch.cdist(rows[None], rows[None])[0].sum(dim=1))
        return total


class Taylor(Criterion):
    name = "taylor"

    def score(self, inp: ScoringInput) -> Scores:
        prods = inp.state.taylor
        if prods is None:
            raise SpecError(
                "criterion 'taylor': needs data, call acpsearch.pruning.set_taylor_importance(graph, model, "
                "batches) first (or pass taylor_batches to PruningStrategy)"
            )
        total = np.zeros(inp.group.channels)
        for tname, axis, off, size, rep in inp.slices:
            if tname in prods:
                total += _norm(_channel_rows(prods[tname], axis, off, size, rep).sum(dim=1).abs())
        return total


class Random(Criterion):
    name = "random"

    def score(self, inp: ScoringInput) -> Scores:
        return np.random.default_rng([int(inp.seed), inp.group.index]).random(inp.group.channels)


REGISTRY: dict[str, Criterion] = {c.name: c for c in (L1(), L2(), BNScale(), FPGM(), Taylor(), Random())}
CRITERIA: tuple[str, ...] = tuple(REGISTRY)


def get_criterion(name: str) -> Criterion:
    """The criterion registered as `name`; SpecError listing the choices otherwise."""
    crit = REGISTRY.get(name) if isinstance(name, str) else None
    if crit is None:
        raise SpecError(f"criterion {name!r}: expected one of {', '.join(REGISTRY)}")
    return crit


def score_group(graph: ChannelGraph, group: ChannelGroup, criterion: str, seed: int, model: nn.Module) -> Scores:
    """Per-channel importance (higher = keep) of `group` under `criterion` on `model`'s weights (uncached)."""
    crit = get_criterion(criterion)
    tensors = dict(model.named_parameters())
    slices = [s for s in group_slices(graph, group) if s[0] in tensors]
    return crit.score(ScoringInput(graph, group, tensors, slices, seed, importance_cache(graph)))


def channel_importance(graph: ChannelGraph, group: str, criterion: str = "l1", seed: int = 0) -> Scores:
    """Per-channel importance of a group of the graph's model (sum of per-layer normalised scores; cached)."""
    get_criterion(criterion)
    g = graph.group(group)
    cache = importance_cache(graph)
    key = (g.name, criterion, seed if criterion == "random" else 0)
    if key not in cache.scores:
        cache.scores[key] = score_group(graph, g, criterion, seed, graph.model)
    return cache.scores[key]


def keep_order(imp: Scores, blocks: int) -> list[NDArray[np.intp]]:
    """Channels of each block, most important first (ties: lower index first)."""
    C = len(imp)
    size = C // blocks
    return [b * size + np.argsort(-imp[b * size : (b + 1) * size], kind="stable") for b in range(blocks)]


def kept_indices(imp: Scores, kept: int, blocks: int) -> NDArray[np.intp]:
    """Sorted indices of the `kept` most important channels, `kept // blocks` from each block."""
    per = kept // blocks
    return np.sort(np.concatenate([o[:per] for o in keep_order(imp, blocks)]))


def retained_share(graph: ChannelGraph, criterion: str, seed: int, kept: NDArray[np.int64]) -> Scores:
    """Per group: L1 mass of the channels `criterion` keeps at `kept` counts / total L1 mass."""
    cache = importance_cache(graph)
    key = (criterion, seed if criterion == "random" else 0)
    cums_of = cache.retained.get(key)
    if cums_of is None:
        cums_of = []
        for grp in graph.groups:
            ref = channel_importance(graph, grp.name, "l1")
            crit = ref if criterion == "l1" else channel_importance(graph, grp.name, criterion, seed)
            orders = keep_order(crit, grp.divisor)
            tot = float(ref.sum()) or 1.0
            cums_of.append(np.stack([np.concatenate([[0.0], np.cumsum(ref[o])]) for o in orders]) / tot)
        cache.retained[key] = cums_of
    out = np.ones(len(graph.groups))
    for gi, cums in enumerate(cums_of):
        out[gi] = cums[:, kept[gi] // graph.groups[gi].divisor].sum() if cums.shape[1] > 1 else 1.0
    return out


def default_taylor_loss(output: Any, batch: Any) -> torch.Tensor:
    """Label-free loss for hash nets: quantisation error of tanh(code) to sign(code)."""
    code = output[-1] if isinstance(output, (tuple, list)) else output
    h = torch.tanh(code)
    return (h - torch.sign(h).detach()).pow(2).mean()


def taylor_products(
    model: nn.Module, batches: Iterable[Any], loss_fn: TaylorLoss | None = None
) -> dict[str, torch.Tensor]:
    """Sum over batches of w * dL/dw for every parameter (eval mode, model unchanged)."""
    loss_fn = loss_fn or default_taylor_loss
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was = model.training
    model.eval()
    n = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), batch)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, p), g in zip(params.items(), grads):
                if g is not None:
                    acc[name] += (p.detach() * g.detach()).float()
            n += 1
    finally:
        model.train(was)
    if n == 0:
        raise SpecError("taylor: batches is empty; pass at least one batch of inputs")
    return acc


def set_taylor_importance(
    graph: ChannelGraph, model: nn.Module | None, batches: Iterable[Any], loss_fn: TaylorLoss | None = None
) -> None:
    """Accumulate first-order Taylor scores |sum w*dL/dw| per channel from a few batches for the
    graph's `taylor` criterion (`model`: the graph's model when None)."""
    cache = importance_cache(graph)
    cache.taylor = taylor_products(model if model is not None else graph.model, batches, loss_fn)
    cache.scores = {k: v for k, v in cache.scores.items() if k[1] != "taylor"}
    cache.retained = {k: v for k, v in cache.retained.items() if k[0] != "taylor"}
