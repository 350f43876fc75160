"""Diverse finalists: greedy max-min selection among the best-scored candidates.

The top of a ranked candidate list is often a cluster of near-copies (the same allocation with one
group one rounding step apart). Fine-tuning several of them spends the finalist slots on one
structure. `diverse_subset` keeps the best-scored candidate and then repeatedly adds the candidate
farthest from everything chosen so far (Gonzalez' greedy k-center rule), so a near-copy of a chosen
finalist is taken only when nothing else in the pool is left.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray


def diverse_subset(
    points: NDArray[np.float64] | Sequence[Sequence[float]],
    k: int,
    fixed: NDArray[np.float64] | Sequence[Sequence[float]] | None = None,
) -> list[int]:
    """Indices of `k` rows of `points` (ordered best first) chosen by greedy max-min distance.

    Row 0, the best-scored candidate, is always chosen first (unless k is 0). Each next pick is the
    row whose Euclidean distance to the nearest already chosen row, or row of `fixed` (points chosen
    elsewhere, e.g. an anchor finalist), is largest; ties go to the better-scored (lower) index.
    Returns the chosen indices in the order they were picked (at most len(points))."""
    pts = np.asarray(points, dtype=np.float64)
    n = pts.shape[0] if pts.ndim == 2 else 0
    k = min(int(k), n)
    if k <= 0:
        return []
    chosen = [0]
    nearest = np.linalg.norm(pts - pts[0], axis=1)
    if fixed is not None:
        fx = np.asarray(fixed, dtype=np.float64).reshape(-1, pts.shape[1])
        for row in fx:
            nearest = np.minimum(nearest, np.linalg.norm(pts - row, axis=1))
    nearest[0] = -np.inf
    while len(chosen) < k:
        i = int(np.argmax(nearest))  # argmax returns the first (best-scored) of equal distances
        chosen.append(i)
        nearest = np.minimum(nearest, np.linalg.norm(pts - pts[i], axis=1))
        nearest[chosen] = -np.inf
    return chosen


def keep_vectors(kept: Sequence[Mapping[str, int]], channels: Mapping[str, int]) -> NDArray[np.float64]:
    """One row per candidate: its kept fraction of every channel group (kept / channels), in the
    order of `channels`; a group a candidate leaves out counts as kept whole."""
    names = list(channels)
    return np.array([[float(k.get(n, channels[n])) / float(channels[n]) for n in names] for k in kept])
