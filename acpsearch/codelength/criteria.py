"""Scores of hash bits for pruning (DHWP's four criteria, random, and a centre-aware one).

Every criterion maps the outputs of the current hash layer on a slice of the training set to one
score per bit, higher = keep; `select_bits` keeps the top k (ties broken by the lower index).

- ``loss``    training loss with bit k removed (the loss over the other K-1 bits; for CSQ with the
  remaining centre columns): keep the bits whose removal raises the loss most (DHWP Eq. 5).
- ``map``     mAP with bit k removed, training items against training items (a held-out part of
  the slice are the queries, so no item finds itself): keep the bits whose removal hurts most (Eq. 6).
- ``balance`` |sum_i z_ki| over the items: keep the most balanced bits (Eq. 7). z is the continuous
  code the loss sees (tanh(h) for csq / hashnet); for dpsh's raw outputs it is divided by sum_i |z_ki|
  so the output scale does not decide.
- ``quant``   sum_i |z_ki - sign z_ki|: keep the bits closest to +-1 (Eq. 8).
- ``random``  a seeded random score.
- ``centre``  greedy max-min Hamming distance between class centres (the loss's centres for CSQ,
  else the signs of the class means): each step takes the bit that most raises the smallest distance
  between two classes, preferring a column not kept yet (duplicates and constant columns of
  Hadamard centres add nothing), then the larger total distance, then the better balance.

The guard (`select_bits(..., guard=True)`, on whenever there are loss centres): a kept set whose
restricted class centres coincide (distance 0 between two classes) is never returned; the selection
is repaired by taking, in the criterion's order, first bits whose centre column is new and not
constant, then the rest; if that still leaves two classes on one centre, the centre order decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from acpsearch.codelength.layer import (
    code_loss,
    column_keys,
    continuous,
    empirical_centres,
    min_centre_distance,
)
from acpsearch.errors import SpecError
from acpsearch.hashing.data import iter_batches
from acpsearch.hashing.encoding import model_device, raw_output, to_input
from acpsearch.hashing.metrics import mean_average_precision

_LOSS_CHUNK = 1000  # items per loss evaluation (pair losses are quadratic in the batch)


@dataclass
class BitData:
    """What the criteria see: raw hash outputs `h` (n, K) of training items, their labels, the
    loss name and the loss's class centres (CSQ; None for pair losses)."""

    h: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    loss: str = "csq"
    centres: torch.Tensor | None = None
    seed: int = 0
    map_queries: int = 500
    _z: torch.Tensor | None = field(default=None, repr=False)

    @property
    def bits(self) -> int:
        return int(self.h.shape[1])

    @property
    def z(self) -> torch.Tensor:
        if self._z is None:
            self._z = continuous(self.h, self.loss)
        return self._z


@torch.no_grad()
def hash_outputs(model: nn.Module, X: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Raw (n, K) outputs of `model` in eval mode, on the CPU."""
    was = model.training
    model.eval()
    dev = model_device(model)
    n = int(X.shape[0])
    outs = []
    try:
        for xb in iter_batches(X, [slice(i, i + batch_size) for i in range(0, n, batch_size)]):
            outs.append(raw_output(model(to_input(xb, False, dev))).float().cpu())
    finally:
        model.train(was)
    return torch.cat(outs) if outs else torch.zeros(0, 0)


def _loss_value(data: BitData, cols: list[int]) -> float:
    centres = None if data.centres is None else data.centres[:, cols]
    fn = code_loss(data.loss, len(cols), data.num_classes, centres).eval()
    h = data.h[:, cols]
    total, n = 0.0, int(h.shape[0])
    with torch.no_grad():
        for i in range(0, n, _LOSS_CHUNK):
            part = h[i : i + _LOSS_CHUNK]
            if part.shape[0] >= 2:
                total += float(fn(part, data.labels[i : i + _LOSS_CHUNK])) * part.shape[0]
    return total / max(1, n)


def loss_scores(data: BitData) -> np.ndarray:
    k = data.bits
    return np.array([_loss_value(data, [j for j in range(k) if j != i]) for i in range(k)])


def map_scores(data: BitData) -> np.ndarray:
    n = int(data.h.shape[0])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(data.seed))
    nq = min(data.map_queries, n // 2)
    q, d = perm[:nq], perm[nq:]
    codes = torch.where(data.h >= 0, 1.0, -1.0)
    ql, dl = data.labels[q], data.labels[d]
    out = []
    for i in range(data.bits):
        cols = [j for j in range(data.bits) if j != i]
        out.append(-mean_average_precision(codes[q][:, cols], codes[d][:, cols], ql, dl))
    return np.array(out)


def balance_scores(data: BitData) -> np.ndarray:
    z = data.z
    s = z.sum(0).abs()
    if data.loss.lower() == "dpsh":
        s = s / z.abs().sum(0).clamp(min=1e-12)
    return -s.double().numpy()


def quant_scores(data: BitData) -> np.ndarray:
    z = data.z
    return -(z - torch.where(z >= 0, 1.0, -1.0)).abs().sum(0).double().numpy()


def random_scores(data: BitData) -> np.ndarray:
    return np.random.default_rng(data.seed).random(data.bits)


def centre_order(centres: torch.Tensor, tie: np.ndarray | None = None) -> list[int]:
    """All bits in the greedy max-min-distance order described in the module docstring."""
    c = centres.detach().cpu().numpy()
    n_cls, k = c.shape
    tie = np.zeros(k) if tie is None else tie
    keys = column_keys(centres)
    diff = (c[:, None, :] != c[None, :, :]).astype(np.int64)  # (C, C, K)
    dist = np.zeros((n_cls, n_cls), dtype=np.int64)
    off = ~np.eye(n_cls, dtype=bool)
    order: list[int] = []
    seen: set[bytes] = set()
    left = set(range(k))
    while left:
        best, best_key = -1, None
        for j in sorted(left):
            d = dist + diff[:, :, j]
            key = (
                int(d[off].min()) if n_cls > 1 else 0,
                keys[j][0] not in seen and not keys[j][1],
                int(d[off].sum()),
                float(tie[j]),
                -j,
            )
            if best_key is None or key > best_key:
                best, best_key = j, key
        order.append(best)
        left.discard(best)
        seen.add(keys[best][0])
        dist += diff[:, :, best]
    return order


def centre_scores(data: BitData) -> np.ndarray:
    centres = data.centres
    if centres is None:
        centres = empirical_centres(data.z, data.labels, data.num_classes)
    order = centre_order(centres, balance_scores(data))
    scores = np.zeros(data.bits)
    scores[order] = np.arange(data.bits, 0, -1)
    return scores


CRITERIA: dict[str, Callable[[BitData], np.ndarray]] = {
    "loss": loss_scores,
    "map": map_scores,
    "balance": balance_scores,
    "quant": quant_scores,
    "random": random_scores,
    "centre": centre_scores,
}


def score_bits(criterion: str, data: BitData) -> np.ndarray:
    """One score per bit (higher = keep) by a criterion of `CRITERIA`."""
    if criterion not in CRITERIA:
        raise SpecError(f"criterion: unknown criterion {criterion!r}; known: {', '.join(CRITERIA)}")
    return np.asarray(CRITERIA[criterion](data), dtype=np.float64)


def ranked(scores: np.ndarray) -> list[int]:
    """Bit indices by descending score, ties by index."""
    return [int(i) for i in np.lexsort((np.arange(len(scores)), -scores))]


@dataclass
class Selection:
    keep: list[int]
    scores: np.ndarray
    guarded: bool = False


def _distinct_first(order: list[int], centres: torch.Tensor, k: int) -> list[int]:
    keys = column_keys(centres)
    seen: set[bytes] = set()
    first: list[int] = []
    for j in order:
        if keys[j][0] not in seen and not keys[j][1]:
            first.append(j)
            seen.add(keys[j][0])
    rest = [j for j in order if j not in set(first)]
    return (first + rest)[:k]


def select_bits(criterion: str, data: BitData, k: int, guard: bool = True) -> Selection:
    """The k bits to keep by `criterion`, in the layer's order; with `guard` and loss centres the
    kept centres never coincide (see the module docstring)."""
    if not 1 <= k <= data.bits:
        raise SpecError(f"lengths: cannot keep {k} of {data.bits} bits")
    scores = score_bits(criterion, data)
    order = ranked(scores)
    if not guard or data.centres is None:
        return Selection(sorted(order[:k]), scores, False)
    keep, guarded = guard_keep(order, data.centres, k, scores)
    return Selection(keep, scores, guarded)


def guard_keep(
    order: list[int], centres: torch.Tensor, k: int, scores: np.ndarray | None = None
) -> tuple[list[int], bool]:
    """(the first k bits of `order`, sorted; False) when their class centres stay distinct, else a
    guarded choice (True): distinct non-constant columns first in `order`, and when that still
    merges two classes, the max-min-distance order (ties by `scores`)."""
    keep = order[:k]
    if centres.shape[0] < 2 or min_centre_distance(centres[:, keep]) != 0:
        return sorted(keep), False
    keep = _distinct_first(order, centres, k)
    if min_centre_distance(centres[:, keep]) == 0:
        keep = centre_order(centres, scores)[:k]
    return sorted(keep), True
