"""Metrics against hand-computed examples (ties, multi-label, no relevant item, top-k) and a
brute-force reference on random data across chunk boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acpsearch.errors import DataError
from acpsearch.hashing import mean_average_precision, precision_at_n, precision_recall_curve
from acpsearch.hashing import metrics as metrics_mod

# K = 4; query code all +1.
# db item : code          dist label
#   d0    : + + + +         0    1   (irrelevant, tied with d2, comes first: stable order)
#   d1    : + + + -         1    0   relevant
#   d2    : + + + +         0    0   relevant
#   d3    : - - - -         4    0   relevant
#   d4    : + + - -         2    2
# ranking: d0 d2 d1 d4 d3  -> relevance 0 1 1 0 1
DB = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [1, 1, 1, 1], [-1, -1, -1, -1], [1, 1, -1, -1]], dtype=np.float32)
DB_Y = np.array([1, 0, 0, 0, 2])
Q = np.array([[1, 1, 1, 1]], dtype=np.float32)


def test_map_all_with_ties_in_database_order():
    # precision at relevant positions 2, 3, 5: 1/2, 2/3, 3/5
    expected = (1 / 2 + 2 / 3 + 3 / 5) / 3
    assert mean_average_precision(Q, DB, [0], DB_Y) == pytest.approx(expected, abs=1e-6)


def test_ties_keep_database_order_not_label_order():
    # swapping d0 and d2 puts the relevant tied item first: AP changes, so order matters
    db = DB[[2, 1, 0, 3, 4]]
    y = DB_Y[[2, 1, 0, 3, 4]]
    # ranking: d2 d0 d1 d4 d3 -> 1 0 1 0 1 -> (1 + 2/3 + 3/5) / 3
    assert mean_average_precision(Q, db, [0], y) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3, abs=1e-6)


def test_topk_normalises_by_relevant_retrieved_within_k():
    assert mean_average_precision(Q, DB, [0], DB_Y, topk=3) == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-6)
    assert mean_average_precision(Q, DB, [0], DB_Y, topk=1) == 0.0  # nothing relevant in the top 1
    assert mean_average_precision(Q, DB, [0], DB_Y, topk=2) == pytest.approx(1 / 2, abs=1e-6)
    # k larger than the database = all
    assert mean_average_precision(Q, DB, [0], DB_Y, topk=99) == pytest.approx(mean_average_precision(Q, DB, [0], DB_Y))


def test_query_without_relevant_item_counts_zero():
    q = np.concatenate([Q, Q])
    expected = ((1 / 2 + 2 / 3 + 3 / 5) / 3 + 0.0) / 2
    assert mean_average_precision(q, DB, [0, 7], DB_Y) == pytest.approx(expected, abs=1e-6)


def test_multi_label_relevance_is_sharing_a_label():
    # query labels {0, 2}; db: d0 {1} dist 0, d1 {2} dist 1, d2 {0,1} dist 2, d3 {} dist 3
    q = np.array([[1, 1, 1]], dtype=np.float32)
    db = np.array([[1, 1, 1], [1, 1, -1], [1, -1, -1], [-1, -1, -1]], dtype=np.float32)
    qy = np.array([[1, 0, 1]])
    dy = np.array([[0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]])
    # relevance by rank: 0 1 1 0 -> (1/2 + 2/3) / 2
    assert mean_average_precision(q, db, qy, dy) == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-6)
    assert precision_at_n(q, db, qy, dy, n=3) == pytest.approx(2 / 3)


def test_torch_inputs_and_real_valued_codes_are_signed():
    h = torch.tensor(DB) * 0.3  # continuous outputs: sign gives the same codes
    assert mean_average_precision(torch.tensor(Q), h, torch.tensor([0]), torch.tensor(DB_Y)) == pytest.approx(
        (1 / 2 + 2 / 3 + 3 / 5) / 3, abs=1e-6
    )


def test_precision_at_n_hand_computed():
    assert precision_at_n(Q, DB, [0], DB_Y, n=2) == pytest.approx(0.5)
    assert precision_at_n(Q, DB, [0], DB_Y, n=3) == pytest.approx(2 / 3)
    assert precision_at_n(Q, DB, [0], DB_Y, n=5) == pytest.approx(3 / 5)


def test_precision_recall_curve_by_radius():
    pr = precision_recall_curve(Q, DB, [0], DB_Y)
    assert pr["radius"] == [0, 1, 2, 3, 4]
    # radius 0: {d0, d2}; 1: +d1; 2: +d4; 3: same; 4: +d3
    assert pr["precision"] == pytest.approx([1 / 2, 2 / 3, 2 / 4, 2 / 4, 3 / 5])
    assert pr["recall"] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3, 1.0])


def _reference_map(q, db, qy, dy, topk=None):
    """Straightforward per-query loop, the definition written out."""
    k = len(db) if topk is None else min(topk, len(db))
    aps = []
    for i in range(len(q)):
        dist = (q.shape[1] - db @ q[i]) / 2
        order = np.argsort(dist, kind="stable")[:k]
        rel = (dy[order] == qy[i]).astype(float)
        if rel.sum() == 0:
            aps.append(0.0)
            continue
        prec = np.cumsum(rel) / np.arange(1, k + 1)
        aps.append(float((prec * rel).sum() / rel.sum()))
    return float(np.mean(aps))


@pytest.mark.parametrize("topk", [None, 7, 50])
def test_matches_reference_across_chunks(monkeypatch, topk):
    rng = np.random.default_rng(0)
    q = np.sign(rng.standard_normal((37, 6))).astype(np.float32)  # 6 bits: many ties
    db = np.sign(rng.standard_normal((120, 6))).astype(np.float32)
    qy, dy = rng.integers(0, 4, 37), rng.integers(0, 4, 120)
    monkeypatch.setattr(metrics_mod, "_CHUNK_ELEMENTS", 500)  # 4 queries per chunk
    got = mean_average_precision(q, db, qy, dy, topk=topk)
    assert got == pytest.approx(_reference_map(q, db, qy, dy, topk), abs=1e-6)


def test_bad_inputs_raise_data_error():
    with pytest.raises(DataError, match="bits"):
        mean_average_precision(Q, DB[:, :3], [0], DB_Y)
    with pytest.raises(DataError, match="labels"):
        mean_average_precision(Q, DB, [0], DB_Y[:3])
    with pytest.raises(DataError, match="topk"):
        mean_average_precision(Q, DB, [0], DB_Y, topk=0)
