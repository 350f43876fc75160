"""Successive halving of the finalists: the rung sizes and fine-tuning epochs, and the cut.

Rung 0 fine-tunes every finalist briefly; each later rung fine-tunes the best 1/eta of the rung
before for longer, and the last rung fine-tunes `final` finalists for the full `epochs` (the same
recipe a finalist gets without halving). Every rung's fine-tune starts from the pruned network, so
the last rung's networks are trained exactly as without halving; the lower rungs are cheap,
lower-fidelity estimates that decide who gets there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Rung:
    size: int  # finalists fine-tuned in this rung
    epochs: int  # fine-tuning epochs of each of them (from the pruned network)


def rung_sizes(n: int, eta: int, final: int) -> list[int]:
    """[n, n // eta, n // eta**2, ...] down to `final` (never below it): 16, 2, 2 -> [16, 8, 4, 2]."""
    if n < 1 or eta < 2 or final < 1:
        raise ValueError(f"need n >= 1, eta >= 2 and final >= 1, got n={n}, eta={eta}, final={final}")
    sizes = [n]
    while sizes[-1] > final:
        sizes.append(max(final, sizes[-1] // eta))
    return sizes


def schedule(n: int, eta: int, min_epochs: int, final: int, epochs: int) -> list[Rung]:
    """The rungs for `n` finalists: sizes from `rung_sizes`; the last rung fine-tunes for `epochs`,
    rung i < last for min(min_epochs * eta**i, epochs - (last - i)) epochs, so the epochs grow
    strictly from rung to rung. ValueError when `epochs` is too few for that (fewer than the
    number of rungs)."""
    sizes = rung_sizes(n, eta, final)
    last = len(sizes) - 1
    per = [min(min_epochs * eta**i, epochs - (last - i)) for i in range(last)] + [epochs]
    if per[0] < 1:
        raise ValueError(
            f"{len(sizes)} rungs ({' -> '.join(map(str, sizes))} finalists) need at least {len(sizes)} "
            f"fine-tuning epochs in the last rung, got {epochs}"
        )
    return [Rung(s, e) for s, e in zip(sizes, per)]


def total_epochs(rungs: Sequence[Rung]) -> int:
    """Fine-tuning epochs the schedule spends: the sum of size x epochs over its rungs."""
    return sum(r.size * r.epochs for r in rungs)


def promote(results: Mapping[int, float], order: Sequence[int], size: int) -> list[int]:
    """The `size` best of a rung's finalists by validation value (`results`: finalist -> value);
    ties go to the one earlier in `order` (the finalists' ranking before fine-tuning). Finalists
    without a result (failed) are never promoted. Returned in `order`."""
    rank = {c: i for i, c in enumerate(order)}
    done = sorted((c for c in order if c in results), key=lambda c: (-results[c], rank[c]))
    keep = set(done[: max(0, size)])
    return [c for c in order if c in keep]
