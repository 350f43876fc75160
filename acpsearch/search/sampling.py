"""Define-by-run sampling over per-group grids of keep ratios under budget limits: the core of
`acpsearch.search.space.DynamicSpace` (which builds the grids and limits; see its module docstring
for the offered interval and why every sample meets the budget)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from numpy.typing import NDArray

from acpsearch.errors import BudgetError, SpecError
from acpsearch.pruning import PruningStrategy


class GridSampler:
    """Costs and define-by-run sampling of a space. The space sets the graph `g`, the group
    `names`, the `active` groups with their padded grids (`_gm`, `_gvalid`, `_lo`, `_hi`,
    `_act_cols`), the budget `kinds` and `limits`, `slack`, `step`, `criterion` and rounding."""

    g: Any
    names: list[str]
    active: list[str]
    kinds: list[str]
    limits: NDArray[np.float64]
    slack: float
    step: float
    criterion: str
    round_to: int | None
    latency: Any
    code_col: int | None
    _rt: int
    _act_cols: np.ndarray
    _lo: np.ndarray
    _hi: np.ndarray
    _gm: np.ndarray
    _gvalid: np.ndarray

    # ------------------------------------------------------------------ costs
    def _full_matrix(self, act: np.ndarray) -> np.ndarray:
        """Ratios of active groups (n, A) -> ratios of all groups (n, G), frozen at 1.0."""
        out = np.ones((act.shape[0], len(self.names)))
        out[:, self._act_cols] = act
        return out

    def costs(self, ratios: np.ndarray) -> np.ndarray:
        """Absolute costs (n, len(kinds)) in the order of `self.kinds` for full ratio rows (n, G)."""
        cols = []
        if any(k in ("flops", "params") for k in self.kinds):
            flops, params = self.g.cost_batch(ratios, round_to=self._rt)
            if "flops" in self.kinds:
                cols.append(np.asarray(flops, dtype=np.float64))
            if "params" in self.kinds:
                cols.append(np.asarray(params, dtype=np.float64))
        if "ops" in self.kinds:  # after flops / params, before latency: the order of `kinds`
            cols.append(np.asarray(self.g.ops_batch(ratios, round_to=self._rt), dtype=np.float64))
        if "latency_ms" in self.kinds:
            cols.append(np.asarray(self.latency.predict_batch(self.g, ratios, self._rt), dtype=np.float64))
        if "bits" in self.kinds:  # kept code bits (the code group's kept count), capped by budget.bits
            cols.append(self.g.kept_counts(ratios, self._rt)[:, self.code_col].astype(np.float64))
        if not cols:
            return np.zeros((ratios.shape[0], 0))
        return np.stack(cols, axis=1)

    def usage(self, ratios: np.ndarray) -> np.ndarray:
        """Cost / limit per budget kind, (n, len(kinds)); a row is feasible when all <= 1."""
        if not self.kinds:
            return np.zeros((ratios.shape[0], 0))
        return self.costs(ratios) / self.limits

    # ------------------------------------------------------------------ define-by-run core
    def _offered(self, cur: np.ndarray, decided: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For n partial assignments (cur, decided: (n, A)) and the active slot each decides next,
        return (values (n, M), offered mask (n, M)) — the define-by-run choice set."""
        n = cur.shape[0]
        cand = self._gm[slots]  # (n, M)
        valid = self._gvalid[slots]
        m = cand.shape[1]
        if not self.kinds:
            return cand, valid
        rows_min = np.where(decided, cur, self._lo[None, :])[:, None, :].repeat(m, axis=1)
        rows_max = np.where(decided, cur, self._hi[None, :])[:, None, :].repeat(m, axis=1)
        ar = np.arange(n)
        rows_min[ar, :, slots] = cand
        rows_max[ar, :, slots] = cand
        both = np.concatenate([rows_min.reshape(n * m, -1), rows_max.reshape(n * m, -1)])
        use = self.usage(self._full_matrix(both))
        use_min = use[: n * m].reshape(n, m, -1)
        use_max = use[n * m :].reshape(n, m, -1)
        feasible = valid & np.all(use_min <= 1.0 + 1e-12, axis=2)
        # non-wasteful on the channel budgets; a code-length cap (bits) alone never makes a choice
        # "reach" the budget, or FLOPs would be wasted wherever the code sits at its cap
        cols = [i for i, k in enumerate(self.kinds) if k != "bits"] or list(range(len(self.kinds)))
        reach = np.max(use_max[:, :, cols], axis=2) >= 1.0 - self.slack
        offered = feasible & reach
        # Where nothing can reach (1 - slack) any more, offer the largest feasible ratio alone.
        none = ~offered.any(axis=1)
        if none.any():
            idx = np.where(none)[0]
            last = m - 1 - np.argmax(feasible[idx, ::-1], axis=1)
            offered[idx, last] = feasible[idx, last]
        return cand, offered

    def sample_ratios(self, n: int, rng: random.Random, order: str = "random") -> np.ndarray:
        """n feasible ratio rows (n, G) over all groups. order="random" visits the groups in a fresh
        random order per sample (no group is systematically squeezed last); "fixed" uses graph order."""
        a = len(self.active)
        cur = np.zeros((n, a))
        decided = np.zeros((n, a), dtype=bool)
        if order == "random":
            perms = np.array([rng.sample(range(a), a) for _ in range(n)], dtype=np.int64).reshape(n, a)
        else:
            perms = np.tile(np.arange(a), (n, 1))
        u = np.array([[rng.random() for _ in range(a)] for _ in range(n)]).reshape(n, a)
        ar = np.arange(n)
        for j in range(a):
            slots = perms[:, j]
            cand, offered = self._offered(cur, decided, slots)
            counts = offered.sum(axis=1)
            if (counts == 0).any():  # cannot happen once _check_reachable passed; guard the invariant
                raise BudgetError(
                    f"budget: no feasible ratio left for group {self.active[int(slots[np.argmax(counts == 0)])]!r}"
                )
            pick = np.minimum((u[:, j] * counts).astype(np.int64), counts - 1)
            # index of the pick-th offered entry in each row
            csum = np.cumsum(offered, axis=1)
            col = np.argmax(csum > pick[:, None], axis=1)
            cur[ar, slots] = cand[ar, col]
            decided[ar, slots] = True
        return self._full_matrix(cur)

    def to_strategy(self, ratios: np.ndarray | dict[str, float]) -> PruningStrategy:
        """PruningStrategy for one ratio row (G,) or dict, with this space's criterion."""
        if not isinstance(ratios, dict):
            ratios = {n: float(r) for n, r in zip(self.names, ratios)}
        if self.round_to is None:
            return PruningStrategy(self.g, ratios, criterion=self.criterion)
        return PruningStrategy(self.g, ratios, criterion=self.criterion, round_to=self.round_to)

    def sample(self, rng: random.Random | None = None) -> PruningStrategy:
        """One PruningStrategy that meets the budget (define-by-run, random group order)."""
        rng = rng if rng is not None else random.Random()
        return self.to_strategy(self.sample_ratios(1, rng)[0])

    def sample_many(self, n: int, rng: random.Random | None = None) -> list[PruningStrategy]:
        """n strategies sampled at once (vectorised over samples)."""
        rng = rng if rng is not None else random.Random()
        return [self.to_strategy(r) for r in self.sample_ratios(n, rng)]

    def suggest(self, trial: Any, prefix: str = "keep/", mode: str = "range") -> Any:
        """Define-by-run sampling through an Optuna trial, one parameter per active group.

        mode="range": `trial.suggest_float(prefix+group, lo, hi, step=step)` where [lo, hi] is the
        interval offered given the earlier groups (conditional ranges; TPE models them).
        mode="index": `trial.suggest_float(prefix+group, 0, 1)` mapped onto the offered interval,
        for samplers that need one fixed distribution per parameter name.
        """
        if mode not in ("range", "index"):
            raise SpecError(f"space.suggest mode={mode!r} must be 'range' or 'index'")
        a = len(self.active)
        cur = np.zeros((1, a))
        decided = np.zeros((1, a), dtype=bool)
        for j in range(a):
            slots = np.array([j])
            cand, offered = self._offered(cur, decided, slots)
            vals = cand[0][offered[0]]
            name = prefix + self.active[j]
            if mode == "range":
                lo, hi = float(vals[0]), float(vals[-1])
                if hi - lo < 1e-9:
                    v = trial.suggest_float(name, lo, lo)
                else:
                    v = trial.suggest_float(name, lo, hi, step=self.step)
                v = float(vals[np.argmin(np.abs(vals - v))])
            else:
                u = trial.suggest_float(name, 0.0, 1.0)
                v = float(vals[min(int(u * len(vals)), len(vals) - 1)])
            cur[0, j] = v
            decided[0, j] = True
        return self.to_strategy(self._full_matrix(cur)[0])
