"""Dynamic resource-constrained search space (ACP-SSE "dynamic search space").

A candidate is a keep ratio per channel group on a grid anchored at 1.0 (1.0, 1.0-step, ...,
>= min_keep). Sampling is define-by-run over the groups: when a group's ratio is chosen, the
earlier choices are fixed, and only the ratios are offered for which
- a FEASIBLE completion exists: the remaining groups all at their smallest ratio meet every
  budget (costs grow monotonically with every ratio, so that completion is the cheapest), and
- a NON-WASTEFUL completion exists: the remaining groups at their largest ratio reach at least
  (1 - slack) of the tightest budget.
Both conditions are monotone in the ratio, so the offered ratios form an interval [lo, hi] on
the grid; `suggest` hands exactly that interval to Optuna (`suggest_float(step=...)`), so TPE
samples conditional ranges define-by-run. Every sample meets the budget (the cheapest completion
stays available until the last group); when no offered ratio can still reach (1 - slack) of the
budget, the largest feasible ratio is taken, so waste only happens where the grid is too coarse.

"Dynamic": groups whose pruning would save a negligible share of every budgeted cost are frozen
at 1.0; `narrow(elite)` returns a new space whose per-group ranges shrink around the best
candidates with a refined grid; a new budget is a new space. All cost checks go through
`g.cost_batch` (one vectorised call per group step) or a latency table (`acpsearch.search.latency`).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from acpsearch.errors import BudgetError, SpecError
from acpsearch.graph import ChannelGraph
from acpsearch.search.budget import _KIND_LABEL, _KINDS, Budget, _check_arguments, _grid, code_bits_of
from acpsearch.search.sampling import GridSampler

__all__ = ["Budget", "DynamicSpace", "excluded_groups", "group_bounds", "output_groups"]


class DynamicSpace(GridSampler):
    """Budget-feasible, define-by-run space of keep ratios for the groups of a ChannelGraph."""

    def __init__(
        self,
        g: ChannelGraph,
        budget: Budget | None = None,
        step: float = 0.1,
        criterion: str = "l1",
        min_keep: float = 0.2,
        slack: float = 0.1,
        freeze_below: float = 0.01,
        round_to: int | None = None,
        latency: Any = None,
        ranges: dict[str, tuple[float, float]] | None = None,
        frozen: Iterable[str] | None = None,
        bounds: dict[str, tuple[float, float]] | None = None,
        fixed: Iterable[str] | None = None,
    ) -> None:
        budget = budget if budget is not None else Budget()
        g.require_groups()
        if budget.latency_ms is not None and g.cost().bops:
            raise BudgetError(
                "budget.latency_ms: the network has binary convs, which PyTorch runs as float convs (a timed "
                "latency would measure float emulation); use budget.ops"
            )
        _check_arguments(budget, step, min_keep, slack, latency)
        self.g = g
        self.budget = budget
        self.step = float(step)
        self.criterion = criterion
        self.min_keep = float(min_keep)
        self.slack = float(slack)
        self.freeze_below = float(freeze_below)
        self.round_to = round_to
        self._rt = 4 if round_to is None else int(round_to)  # PruningStrategy's default rounding
        self.latency = latency
        self.names = [grp.name for grp in g.groups]
        self._col = {n: i for i, n in enumerate(self.names)}
        full = g.cost()
        self.full = {"flops": float(full.flops), "params": float(full.params), "ops": float(full.ops)}
        self.kinds: list[str] = [k for k in _KINDS if getattr(budget, k) is not None]
        self.limits = np.array(
            [getattr(budget, k) * self.full[k] for k in self.kinds]
            + ([budget.latency_ms] if budget.latency_ms is not None else []),
            dtype=np.float64,
        )
        if budget.latency_ms is not None:
            self.kinds.append("latency_ms")
        # The code length: searched (and capped) with budget.bits; else the code group (a graph
        # built with prune_code) is never pruned.
        self.code_col = code_bits_of(g, budget)
        code = getattr(g, "code_group", None)
        if self.code_col is not None:
            self.kinds.append("bits")
            self.limits = np.append(self.limits, float(budget.bits or 0))

        # Per-group [min_keep, max_keep] (spec space.bounds) and groups never pruned (space.exclude,
        # or bounds [1, 1]).
        self.bounds = self._checked_bounds(bounds)
        fixed = set(fixed or ()) | ({code} if code is not None and self.code_col is None else set())
        self.fixed = [n for n in self.names if n in fixed or self.bounds.get(n, (0, 0))[0] >= 1.0]
        self.frozen = self._frozen_groups(frozen)
        self.active = [n for n in self.names if n not in set(self.frozen)]
        self._build_grids(dict(ranges or {}))
        self._check_reachable()

    def _checked_bounds(self, bounds: dict[str, tuple[float, float]] | None) -> dict[str, tuple[float, float]]:
        """Spec space.bounds as floats; a group that does not exist or an empty range is a SpecError."""
        out: dict[str, tuple[float, float]] = {n: (float(b[0]), float(b[1])) for n, b in (bounds or {}).items()}
        for n, (blo, bhi) in out.items():
            if n not in self._col:
                raise SpecError(f"space.bounds: {n!r}: no such channel group")
            if not (0.0 < blo <= bhi <= 1.0):
                raise SpecError(
                    f"space.bounds.{n}: must be [min_keep, max_keep] with 0 < min_keep <= max_keep <= 1, "
                    f"got [{blo}, {bhi}]"
                )
        return out

    def _frozen_groups(self, frozen: Iterable[str] | None) -> list[str]:
        """The given frozen groups, else those whose pruning saves a negligible share of every
        budgeted cost (not those the bounds must prune); the fixed groups in both cases."""
        if frozen is not None:
            return [n for n in self.names if n in set(frozen) or n in self.fixed]
        must_prune = {n for n, (_, bhi) in self.bounds.items() if bhi < 1.0}
        if self.code_col is not None:  # a searched code length saves bits, not FLOPs
            must_prune.add(self.names[self.code_col])
        negligible = set(self._negligible_groups()) - must_prune
        return [n for n in self.names if n in negligible or n in self.fixed]

    def _build_grids(self, ranges: dict[str, tuple[float, float]]) -> None:
        """Each active group's grid of keep ratios: its bounds (or [min_keep, 1]), narrowed to `ranges`."""
        self.ranges: dict[str, tuple[float, float]] = {}
        self.grids: dict[str, np.ndarray] = {}
        for n in self.active:
            base_lo, base_hi = self.bounds.get(n, (self.min_keep, 1.0))
            base = _grid(base_lo, base_hi, self.step)
            if base.size == 0:
                raise SpecError(
                    f"space.bounds.{n}: [{base_lo}, {base_hi}] holds no keep ratio of the grid 1.0, "
                    f"{round(1 - self.step, 6)}, ... (space.step {self.step}); widen it or make the "
                    "step finer"
                )
            lo, hi = ranges.get(n, (base_lo, base_hi))
            lo, hi = max(lo, base_lo), min(hi, base_hi)
            grid = _grid(lo, hi, self.step)
            if grid.size == 0:
                grid = base[np.argmin(np.abs(base - hi)) :][:1]
            self.grids[n] = grid
            self.ranges[n] = (float(grid[0]), float(grid[-1]))
        self._act_cols = np.array([self._col[n] for n in self.active], dtype=np.int64)
        self._lo = np.array([self.grids[n][0] for n in self.active])
        self._hi = np.array([self.grids[n][-1] for n in self.active])
        m = max((len(self.grids[n]) for n in self.active), default=1)
        self._gm = np.zeros((len(self.active), m))
        self._gvalid = np.zeros((len(self.active), m), dtype=bool)
        for i, n in enumerate(self.active):
            gr = self.grids[n]
            self._gm[i, : len(gr)] = gr
            self._gm[i, len(gr) :] = gr[0]
            self._gvalid[i, : len(gr)] = True

    def _negligible_groups(self) -> list[str]:
        kinds = [k for k in _KINDS if k in self.kinds] or ["flops", "params"]
        base = np.ones((1, len(self.names)))
        rows = np.ones((len(self.names), len(self.names)))
        np.fill_diagonal(rows, self.min_keep)
        f0, p0 = self.g.cost_batch(base, round_to=self._rt)
        f, p = self.g.cost_batch(rows, round_to=self._rt)
        saved = {"flops": (f0[0] - np.asarray(f)) / max(f0[0], 1), "params": (p0[0] - np.asarray(p)) / max(p0[0], 1)}
        if "ops" in kinds:
            o0, o = self.g.ops_batch(base, round_to=self._rt), self.g.ops_batch(rows, round_to=self._rt)
            saved["ops"] = (o0[0] - o) / max(o0[0], 1.0)
        share = np.max(np.stack([saved[k] for k in kinds]), axis=0)
        return [n for n, s in zip(self.names, share) if s < self.freeze_below]

    def _check_reachable(self) -> None:
        if not self.kinds:
            return
        cheapest = self._full_matrix(self._lo[None, :])
        cost = self.costs(cheapest)[0]
        for i, kind in enumerate(self.kinds):
            if cost[i] > self.limits[i] * (1 + 1e-12):
                if kind == "bits":
                    raise BudgetError(
                        f"budget.bits={self.budget.bits} is below the shortest reachable code {int(cost[i])} bits "
                        "(space.min_keep of the code length, rounded)"
                    )
                if kind == "latency_ms":
                    raise BudgetError(
                        f"budget.latency_ms={self.budget.latency_ms} is below the smallest reachable "
                        f"latency {cost[i]:.3f} ms"
                    )
                ratio = cost[i] / self.full[kind]
                raise BudgetError(
                    f"budget.{kind}={getattr(self.budget, kind)} is below the smallest reachable "
                    f"{_KIND_LABEL[kind]} ratio {math.ceil(ratio * 1000) / 1000:.3f}"
                )

    def smallest_reachable(self) -> dict[str, float]:
        """Cost ratios (latency in ms) of the cheapest strategy in this space."""
        cheapest = self._full_matrix(self._lo[None, :])
        f, p = self.g.cost_batch(cheapest, round_to=self._rt)
        out = {"flops": float(f[0]) / self.full["flops"], "params": float(p[0]) / self.full["params"]}
        if "ops" in self.kinds:
            out["ops"] = float(self.g.ops_batch(cheapest, round_to=self._rt)[0]) / self.full["ops"]
        if self.latency is not None:
            out["latency_ms"] = float(self.latency.predict_batch(self.g, cheapest, self._rt)[0])
        if self.code_col is not None:
            out["bits"] = float(self.g.kept_counts(cheapest, self._rt)[0, self.code_col])
        return out

    # ------------------------------------------------------------------ dynamics
    def narrow(self, elite: Sequence[Any], margin: float | None = None, min_step: float = 0.025) -> DynamicSpace:
        """A new space whose per-group ranges span the elite's ratios +- margin (default one old
        step) on a grid of half the step (not below `min_step`). Elite: strategies or ratio dicts."""
        if not elite:
            raise SpecError("space.narrow: elite is empty")
        margin = self.step if margin is None else margin
        new_step = max(min_step, self.step / 2)
        ratios = [dict(e.ratios) if hasattr(e, "ratios") else dict(e) for e in elite]
        ranges = {}
        for n in self.active:
            vals = [r.get(n, 1.0) for r in ratios]
            lo = max(self.bounds.get(n, (self.min_keep, 1.0))[0], min(vals) - margin)
            hi = min(1.0, max(vals) + margin)
            ranges[n] = (round(lo, 6), round(hi, 6))
        return DynamicSpace(
            self.g,
            self.budget,
            step=new_step,
            criterion=self.criterion,
            min_keep=self.min_keep,
            slack=self.slack,
            freeze_below=self.freeze_below,
            round_to=self.round_to,
            latency=self.latency,
            ranges=ranges,
            frozen=self.frozen,
            bounds=self.bounds,
            fixed=self.fixed,
        )

    def with_budget(self, budget: Budget) -> DynamicSpace:
        """A new space for another budget (same graph, grid and frozen groups)."""
        return DynamicSpace(
            self.g,
            budget,
            step=self.step,
            criterion=self.criterion,
            min_keep=self.min_keep,
            slack=self.slack,
            freeze_below=self.freeze_below,
            round_to=self.round_to,
            latency=self.latency,
            frozen=self.frozen,
            bounds=self.bounds,
            fixed=self.fixed,
        )

    # ------------------------------------------------------------------ inspection
    def feasible(self, strategy: Any) -> bool:
        row = np.array([[strategy.ratios.get(n, 1.0) for n in self.names]])
        return bool(np.all(self.usage(row) <= 1.0 + 1e-12))

    def budget_use(self, strategies: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Max over budget kinds of cost / limit, per strategy (1.0 = budget fully used)."""
        if isinstance(strategies, np.ndarray):
            rows = strategies
        else:
            rows = np.array([[s.ratios.get(n, 1.0) for n in self.names] for s in strategies])
        use = self.usage(rows)
        return use.max(axis=1) if use.shape[1] else np.zeros(rows.shape[0])

    def log10_size(self) -> float:
        """log10 of the number of grid combinations before the budget filter."""
        return float(sum(math.log10(len(self.grids[n])) for n in self.active))

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (for study notes and user attributes)."""
        extra: dict[str, Any] = {}
        if self.fixed:
            extra["excluded"] = list(self.fixed)
        if self.bounds:
            extra["bounds"] = {n: list(b) for n, b in self.bounds.items()}
        if self.round_to is not None:
            extra["round_to"] = int(self.round_to)
        return {
            **extra,
            "budget": self.budget.to_dict(),
            "step": self.step,
            "criterion": self.criterion,
            "min_keep": self.min_keep,
            "slack": self.slack,
            "frozen": list(self.frozen),
            "ranges": {n: list(r) for n, r in self.ranges.items()},
            "log10_size": round(self.log10_size(), 3),
            "smallest_reachable": self.smallest_reachable(),
        }


# --- spec space.exclude / space.bounds -> channel groups -------------------------------------------
def _module_names(g: Any) -> list[str]:
    return [n for n, _ in g.model.named_modules() if n]


def _matches(name: str, pattern: str) -> bool:
    """Exact name, fnmatch pattern, or a container whose submodules are meant ('layer1')."""
    return name == pattern or fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def _close(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.4)
    if close:
        return "close matches: " + ", ".join(repr(c) for c in close)
    return "known: " + ", ".join(repr(c) for c in list(choices)[:8]) + (" ..." if len(choices) > 8 else "")


def output_groups(g: Any, module: str) -> list[str]:
    """The channel groups of a module's output channels (none for a layer whose output is not
    prunable, e.g. the hash layer or an activation)."""
    info = g.analysis.modules.get(module)
    V = g.analysis.vars
    out: list[str] = []
    for v, _ in getattr(info, "out_segs", ()) or ():
        gi = g.group_of_root.get(V.find(v))
        if gi is not None and g.groups[gi].name not in out:
            out.append(g.groups[gi].name)
    return out


def excluded_groups(g: Any, patterns: Iterable[str]) -> list[str]:
    """Groups holding the output channels of the modules `patterns` name (spec space.exclude: exact
    module names or fnmatch patterns). A pattern that names no module is one SpecError line with
    the closest module names."""
    names = _module_names(g)
    found: list[str] = []
    for pat in patterns:
        hit = [n for n in names if _matches(n, pat)]
        if not hit:
            raise SpecError(f"space.exclude: {pat!r} names no module of the network; {_close(pat, names)}")
        for n in hit:
            found += [grp for grp in output_groups(g, n) if grp not in found]
    return [n for n in (grp.name for grp in g.groups) if n in found]


def group_bounds(g: Any, bounds: dict[str, Sequence[float]]) -> dict[str, tuple[float, float]]:
    """{group: (min_keep, max_keep)} from spec space.bounds, whose keys are group names or fnmatch
    patterns over them (or module names: their output groups); a later key wins over an earlier
    one. A key that names nothing is one SpecError line with the closest group names."""
    groups = [grp.name for grp in g.groups]
    modules = _module_names(g)
    out: dict[str, tuple[float, float]] = {}
    for key, pair in bounds.items():
        hit = [n for n in groups if n == key or fnmatch.fnmatchcase(n, key)]
        if not hit:
            hit = [grp for m in modules if _matches(m, key) for grp in output_groups(g, m)]
        if not hit and getattr(g, "hash_layer", None) == key:
            raise SpecError(f"space.bounds: {key!r}: the hash layer's outputs are searched only with budget.bits")
        if not hit:
            raise SpecError(f"space.bounds: {key!r} names no channel group of the network; {_close(key, groups)}")
        lo, hi = float(pair[0]), float(pair[1])
        for n in hit:
            out[n] = (lo, hi)
    return out
