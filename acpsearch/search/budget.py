"""The budget of a search space and its checks: FLOPs and params as ratios of the unpruned network,
latency in milliseconds, and `bits`, a cap on the code length (the kept outputs of the hash layer,
searchable only in a graph built with ``prune_code=True``); OPs for binary networks; and the grid of
keep ratios."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from acpsearch.errors import BudgetError, SpecError

_KIND_LABEL = {"flops": "FLOPs", "params": "params", "ops": "OPs"}
_KINDS = ("flops", "params", "ops")


@dataclass(frozen=True)
class Budget:
    """Resource budget: FLOPs, params and OPs (float MACs + binary MACs / 64, for binary networks)
    as ratios of the unpruned network, latency in ms, code bits."""

    flops: float | None = None
    params: float | None = None
    latency_ms: float | None = None
    bits: int | None = None  # at most this many code bits (the hash layer's kept outputs)
    ops: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        out = asdict(self)
        for key in ("bits", "ops"):  # keys of joint / binary studies only: other studies keep their records
            if out[key] is None:
                del out[key]
        return out

    def is_empty(self) -> bool:
        return all(v is None for v in (self.flops, self.params, self.latency_ms, self.bits, self.ops))


def _grid(lo: float, hi: float, step: float) -> np.ndarray:
    """Grid values {1 - k*step} inside [lo, hi], ascending, rounded to 1e-6."""
    kmax = int(math.floor((1.0 - lo) / step + 1e-9))
    kmin = int(math.ceil((1.0 - hi) / step - 1e-9))
    vals = [round(1.0 - k * step, 6) for k in range(max(kmin, 0), kmax + 1)]
    return np.array(sorted(vals), dtype=np.float64)


def _check_arguments(budget: Budget, step: float, min_keep: float, slack: float, latency: Any) -> None:
    """SpecError / BudgetError for arguments no space can be built from."""
    if not (0.01 <= step <= 0.5):  # below 0.01 the grid of keep ratios explodes (memory)
        raise SpecError(f"space.step={step} must be in [0.01, 0.5]")
    if not (0.0 < min_keep <= 1.0):
        raise SpecError(f"space.min_keep={min_keep} must be in (0, 1]")
    if not (0.0 <= slack < 1.0):
        raise SpecError(f"space.slack={slack} must be in [0, 1)")
    for kind in _KINDS:
        v = getattr(budget, kind)
        if v is not None and not (0.0 < v <= 1.0):
            raise BudgetError(f"budget.{kind}={v} must be a ratio in (0, 1]")
    if budget.latency_ms is not None:
        if not (budget.latency_ms > 0 and math.isfinite(budget.latency_ms)):
            raise BudgetError(f"budget.latency_ms={budget.latency_ms} must be a positive finite number")
        if latency is None:
            raise BudgetError("budget.latency_ms needs a latency table (acpsearch.search.latency.LatencyTable)")
    if budget.bits is not None and (
        isinstance(budget.bits, bool) or not isinstance(budget.bits, int) or budget.bits < 1
    ):
        raise BudgetError(f"budget.bits={budget.bits!r} must be a positive integer")


def code_bits_of(g: Any, budget: Budget) -> int | None:
    """The column of the code group in `g.groups` when `budget.bits` searches the code length
    (None without budget.bits); BudgetError when the graph's code bits are not prunable or the
    cap exceeds the code length."""
    if budget.bits is None:
        return None
    name = getattr(g, "code_group", None)
    if name is None:
        raise BudgetError(
            "budget.bits: the hash layer's outputs are not a prunable group of this graph "
            "(build it with ChannelGraph.from_model(..., prune_code=True))"
        )
    grp = g.group(name)
    if budget.bits > grp.channels:
        raise BudgetError(f"budget.bits={budget.bits} exceeds the code length {grp.channels}")
    return int(grp.index)
