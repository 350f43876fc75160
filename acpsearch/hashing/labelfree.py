"""Label-free model selection and label-free training splits.

A study without labels (``data.supervision: none``) still has to pick the best epoch, stop weak
finalists early and choose a winner. It scores a network by **neighbour mAP**: the held-out
training images (the validation split, used without its labels) are the queries, the training
images the database, and an item is relevant to a query when it is among the query's k nearest
neighbours under a *reference*: the unpruned network's Hamming distance (pruning, fine-tuning and
ranking), or the overlap of the auxiliary tags (base training, when no network exists yet). The
candidate's own Hamming ranking is then scored with the usual mAP (`metrics.mean_average_precision`).
A pruned network that keeps its unpruned parent's neighbourhoods scores 1.

`unlabelled(splits, train_targets)` is the copy of the splits that training, ranking and selection
receive in such a study: every label tensor replaced (training targets: the auxiliary tags, or
zeros), so no label can reach them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from acpsearch.errors import DataError
from acpsearch.hashing.data import Splits
from acpsearch.hashing.encoding import encode
from acpsearch.hashing.metrics import mean_average_precision

NEIGHBOURS = 50  # the reference's nearest neighbours that count as relevant to a query


def neighbour_relevance(ref_query: Any, ref_db: Any, k: int = NEIGHBOURS) -> tuple[torch.Tensor, torch.Tensor]:
    """(query_labels, db_labels) as multi-hot matrices whose shared label is "db item j is among
    query i's k nearest reference neighbours": similarity = inner product of the reference
    vectors (for +-1 codes: K - 2 x Hamming distance; for multi-hot tags: the shared tags); items as
    similar as the k-th one count too (Hamming ties are frequent)."""
    q = torch.as_tensor(ref_query).detach().cpu().float()
    d = torch.as_tensor(ref_db).detach().cpu().float()
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise DataError(
            f"neighbours: reference vectors must be (n, d) alike, got {tuple(q.shape)} and {tuple(d.shape)}"
        )
    if k < 1:
        raise DataError(f"neighbours: k must be >= 1, got {k}")
    n_q, n_db = q.shape[0], d.shape[0]
    if n_q == 0 or n_db == 0:
        return torch.zeros(n_q, n_q), torch.zeros(n_db, n_q)
    sim = q @ d.T  # (n_q, n_db)
    kth = sim.topk(min(k, n_db), dim=1).values[:, -1:]
    relevant = (sim >= kth).float()  # (n_q, n_db)
    return torch.eye(n_q), relevant.T.contiguous()


def neighbour_map(
    query_codes: Any, db_codes: Any, ref_query: Any, ref_db: Any, k: int = NEIGHBOURS, topk: int | None = None
) -> float:
    """mAP of the candidate's Hamming ranking (query_codes vs db_codes) where the relevant items of
    a query are its k nearest neighbours under the reference (see `neighbour_relevance`)."""
    ql, dl = neighbour_relevance(ref_query, ref_db, k)
    return float(mean_average_precision(query_codes, db_codes, ql, dl, topk=topk))


class NeighbourScore:
    """Label-free validation score: neighbour mAP of a network's codes (validation images vs training
    images) against a reference fixed once: the codes of `reference` (a network) or given vectors
    (`ref_val`, `ref_train`, e.g. auxiliary tags). Call it with a model."""

    def __init__(
        self,
        splits: Splits,
        reference: nn.Module | None = None,
        ref_val: torch.Tensor | None = None,
        ref_train: torch.Tensor | None = None,
        k: int = NEIGHBOURS,
        channels_last: bool = True,
    ) -> None:
        self.X_val, self.X_train = splits.val[0], splits.train[0]
        self.k, self.channels_last = k, channels_last
        if reference is not None:
            ref_val = encode(reference, self.X_val, channels_last=channels_last)
            ref_train = encode(reference, self.X_train, channels_last=channels_last)
        if ref_val is None or ref_train is None:
            raise DataError("neighbours: give a reference network or reference vectors")
        self.ql, self.dl = neighbour_relevance(ref_val, ref_train, k)

    def codes_score(self, val_codes: Any, train_codes: Any) -> float:
        """The score of given codes of the validation and training images."""
        if int(self.X_val.shape[0]) == 0:
            return float("nan")
        return float(mean_average_precision(val_codes, train_codes, self.ql, self.dl))

    def __call__(self, model: nn.Module) -> float:
        if int(self.X_val.shape[0]) == 0:
            return float("nan")
        qv = encode(model, self.X_val, channels_last=self.channels_last)
        dt = encode(model, self.X_train, channels_last=self.channels_last)
        return self.codes_score(qv, dt)


def unlabelled(splits: Splits, train_targets: torch.Tensor | None = None) -> Splits:
    """The splits with every label replaced: the training targets by `train_targets` (one row per
    training image, e.g. auxiliary tags) or zeros, all other labels by zeros. Query and database
    are dropped (test evaluation uses the labelled splits, never training or selection)."""
    n_train = int(splits.train[0].shape[0])
    if train_targets is None:
        train_targets = torch.zeros(n_train, dtype=torch.long)
    elif int(train_targets.shape[0]) != n_train:
        raise DataError(f"targets: {int(train_targets.shape[0])} rows for {n_train} training images")
    empty = (splits.train[0][:0], torch.zeros(0, dtype=torch.long))
    return Splits(
        query=empty,
        train=(splits.train[0], train_targets),
        val=(splits.val[0], torch.zeros(int(splits.val[0].shape[0]), dtype=torch.long)),
        database=empty,
        num_classes=splits.num_classes,
        dataset=splits.dataset,
        protocol=dict(splits.protocol),
        indices={k: v for k, v in splits.indices.items() if k in ("train", "val")},
        preprocess=dict(splits.preprocess),
    )
