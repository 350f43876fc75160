"""PruningStrategy: a keep ratio per channel group plus the criterion that picks the channels."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.graph import ChannelGraph, Cost
from acpsearch.pruning.criteria import (
    channel_importance,
    get_criterion,
    kept_indices,
    retained_share,
    score_group,
    set_taylor_importance,
)


def _check_ratio(name: str, r: Any) -> float:
    try:
        f = float(r)
    except (TypeError, ValueError):
        raise SpecError(f"ratio of group {name!r}: {r!r} is not a number") from None
    if not math.isfinite(f) or f <= 0.0 or f > 1.0:
        raise SpecError(f"ratio of group {name!r}: {f} is outside (0, 1]")
    return f


class PruningStrategy:
    """Keep ratios per group (groups not named keep 1.0), a criterion, and the rounding unit.

    Kept counts are ``graph.kept_counts``: multiples of ``round_to`` (and of the group's
    divisor), at least one unit, all channels at ratio 1.0 — odd counts waste the savings."""

    def __init__(
        self,
        graph: ChannelGraph,
        ratios: dict[str, float] | None = None,
        criterion: str = "l1",
        round_to: int = 4,
        seed: int = 0,
        taylor_batches: Iterable[Any] | None = None,
    ) -> None:
        if not isinstance(graph, ChannelGraph):
            raise SpecError(f"graph: expected a ChannelGraph, got {type(graph).__name__}")
        graph.require_groups()
        get_criterion(criterion)
        if not isinstance(round_to, (int, np.integer)) or isinstance(round_to, bool) or round_to < 1:
            raise SpecError(f"round_to: {round_to!r} must be a positive integer")
        self.graph = graph
        self.criterion = criterion
        self.round_to = int(round_to)
        self.seed = int(seed)
        full = {g.name: 1.0 for g in graph.groups}
        for name, r in (ratios or {}).items():
            if name not in full:
                raise SpecError(f"group {name!r}: no such prunable channel group (see ChannelGraph.groups)")
            full[name] = _check_ratio(name, r)
        self.ratios = full
        if taylor_batches is not None:  # taylor needs data: score the graph's model on these batches
            set_taylor_importance(graph, graph.model, taylor_batches)
        self._vec = np.array([full[g.name] for g in graph.groups], dtype=np.float64)
        self._kept = graph.kept_counts(self._vec, self.round_to) if graph.groups else np.zeros(0, dtype=np.int64)

    @classmethod
    def uniform(
        cls, graph: ChannelGraph, keep: float, criterion: str = "l1", round_to: int = 4, seed: int = 0
    ) -> PruningStrategy:
        """The same keep ratio for every group."""
        keep = _check_ratio("*", keep)
        return cls(graph, {g.name: keep for g in graph.groups}, criterion, round_to, seed)

    @classmethod
    def from_vector(
        cls, graph: ChannelGraph, ratios: np.ndarray, criterion: str = "l1", round_to: int = 4, seed: int = 0
    ) -> PruningStrategy:
        """From a ratio array ordered like ``graph.groups``."""
        r = np.asarray(ratios, dtype=np.float64).ravel()
        if len(r) != len(graph.groups):
            raise SpecError(f"ratios: expected {len(graph.groups)} values, got {len(r)}")
        return cls(graph, {g.name: float(v) for g, v in zip(graph.groups, r)}, criterion, round_to, seed)

    @classmethod
    def global_magnitude(
        cls,
        graph: ChannelGraph,
        fits: Callable[[PruningStrategy], bool],
        criterion: str = "l1",
        min_keep: float = 0.0,
        round_to: int = 1,
        iterations: int = 40,
        bounds: dict[str, tuple[float, float]] | None = None,
    ) -> PruningStrategy | None:
        """Global magnitude allocation: one threshold on every group's importance divided by its
        group mean (Torch-Pruning's global pruning with its mean normaliser), bisected to the
        largest network that `fits` (the budget). None when even the smallest one does not fit.

        Why here and not torch_pruning: its allocation lives on its own dependency graph; this one
        is on ours, so a search can use it as a candidate. On ResNet-20 at 50% FLOPs it keeps TP's
        counts within one channel per group (benchmarks/structure_sweep.py, README).

        `bounds`: {group: (min_keep, max_keep)} keep-ratio limits per group (in place of `min_keep`
        for the groups it names; (1, 1) keeps a group whole)."""
        bounds = dict(bounds or {})
        norm = {}
        for grp in graph.groups:
            imp = np.asarray(channel_importance(graph, grp.name, criterion), dtype=np.float64)
            norm[grp.name] = imp / max(float(imp.mean()), 1e-12)

        def at(t: float) -> PruningStrategy:
            ratios = {}
            for grp in graph.groups:
                lo, hi = bounds.get(grp.name, (min_keep, 1.0))
                floor = max(1, math.ceil(lo * grp.channels - 1e-9))
                cap = max(floor, math.floor(hi * grp.channels + 1e-9))
                ratios[grp.name] = min(max(int((norm[grp.name] >= t).sum()), floor, 1), cap) / grp.channels
            return cls(graph, ratios, criterion, round_to)

        lo, hi = 0.0, max((float(v.max()) for v in norm.values()), default=0.0) + 1.0
        if not fits(at(hi)):
            return None
        if fits(at(lo)):
            return at(lo)
        for _ in range(iterations):  # invariant: at(hi) fits, at(lo) does not
            mid = (lo + hi) / 2
            if fits(at(mid)):
                hi = mid
            else:
                lo = mid
        return at(hi)

    # ------------------------------------------------------------------ views
    @property
    def kept(self) -> dict[str, int]:
        """Kept channel count per group."""
        return {g.name: int(k) for g, k in zip(self.graph.groups, self._kept)}

    def kept_vector(self) -> NDArray[np.int64]:
        return self._kept

    def ratio_vector(self) -> NDArray[np.float64]:
        return self._vec.copy()

    def retained_importance(self) -> NDArray[np.float64]:
        """Per group: share of the L1 importance mass held by the channels the criterion keeps."""
        return retained_share(self.graph, self.criterion, self.seed, self._kept)

    def cost(self) -> Cost:
        return self.graph.cost(self)

    def kept_indices(self, model: nn.Module | None = None) -> dict[str, NDArray[np.intp]]:
        """Sorted kept channel indices per group, chosen by the criterion on `model`'s weights
        (the graph's model by default; a same-architecture model, e.g. fine-tuned, may be passed)."""
        g = self.graph
        out: dict[str, NDArray[np.intp]] = {}
        for grp, k in zip(g.groups, self._kept):
            if k >= grp.channels:
                out[grp.name] = np.arange(grp.channels)
                continue
            if model is None or model is g.model:
                imp = channel_importance(g, grp.name, self.criterion, self.seed)
            else:
                imp = score_group(g, grp, self.criterion, self.seed, model)
            out[grp.name] = kept_indices(imp, int(k), grp.divisor)
        return out

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (ratios of every group, criterion, round_to, seed)."""
        return {
            "ratios": {k: float(v) for k, v in self.ratios.items()},
            "criterion": self.criterion,
            "round_to": self.round_to,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, graph: ChannelGraph, d: dict[str, Any]) -> PruningStrategy:
        if not isinstance(d, dict) or "ratios" not in d:
            raise SpecError("strategy: expected a dict with 'ratios'")
        return cls(graph, d["ratios"], d.get("criterion", "l1"), d.get("round_to", 4), d.get("seed", 0))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PruningStrategy) and other.graph is self.graph and other.to_dict() == self.to_dict()

    def __hash__(self) -> int:
        return hash((tuple(self._vec.tolist()), self.criterion, self.round_to, self.seed))

    def __repr__(self) -> str:
        c = self.graph.cost(self)
        b = self.graph.cost()
        return (
            f"PruningStrategy({len(self.ratios)} groups, criterion={self.criterion!r}, "
            f"flops={c.flops / max(b.flops, 1):.3f}, params={c.params / max(b.params, 1):.3f})"
        )


def strategy_tensor(strategy: PruningStrategy) -> torch.Tensor:
    """Ratios as a float tensor ordered like graph.groups (handy for encoders)."""
    return torch.from_numpy(strategy.ratio_vector()).float()
