"""Choosing the finalists: greedy max-min diversity and the successive-halving schedule."""

from __future__ import annotations

import numpy as np
import pytest

from acpsearch.search.diversity import diverse_subset, keep_vectors
from acpsearch.search.halving import Rung, promote, rung_sizes, schedule, total_epochs


def test_near_duplicates_are_skipped_and_the_top_scorer_is_kept():
    # best first: three near-copies of one structure, then two different ones
    pts = [[0.25, 1.0, 0.9], [0.25, 1.0, 0.875], [0.3, 1.0, 0.9], [1.0, 0.5, 0.5], [0.6, 0.6, 1.0]]
    assert diverse_subset(pts, 3) == [0, 3, 4]  # not the near-copies 1 and 2, although better scored
    assert diverse_subset(pts, 1) == [0]
    # only when the pool has nothing else left are near-copies taken (the closer one last)
    assert diverse_subset(pts, 5) == [0, 3, 4, 2, 1]
    assert diverse_subset(pts, 9) == [0, 3, 4, 2, 1]
    assert diverse_subset(pts, 0) == [] and diverse_subset(np.zeros((0, 3)), 2) == []


def test_ties_go_to_the_better_scored_and_fixed_points_count():
    pts = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]  # 1, 2, 3 all at distance 1 from 0
    assert diverse_subset(pts, 2) == [0, 1]
    # a fixed finalist (an anchor) at (0.5, 0.5), near rows 1 and 2: row 3 is now the most diverse
    assert diverse_subset(pts, 2, fixed=[[0.5, 0.5]]) == [0, 3]
    assert diverse_subset(pts, 3, fixed=[[0.5, 0.5]]) == [0, 3, 1]


def test_keep_vectors_are_kept_fractions_per_group():
    v = keep_vectors([{"a": 4, "b": 32}, {"a": 16}], {"a": 16, "b": 64})
    np.testing.assert_allclose(v, [[0.25, 0.5], [1.0, 1.0]])


def test_halving_schedule_arithmetic():
    assert rung_sizes(16, 2, 2) == [16, 8, 4, 2]
    assert rung_sizes(10, 2, 2) == [10, 5, 2]
    assert rung_sizes(27, 3, 1) == [27, 9, 3, 1]
    assert rung_sizes(2, 2, 2) == [2]  # no more finalists than `final`: one rung, the plain fine-tune
    plan = schedule(16, eta=2, min_epochs=1, final=2, epochs=8)
    assert plan == [Rung(16, 1), Rung(8, 2), Rung(4, 4), Rung(2, 8)]
    assert total_epochs(plan) == 16 + 16 + 16 + 16
    # too few epochs for the geometric growth: the lower rungs step by one below the last
    assert schedule(16, 2, 1, 2, 4) == [Rung(16, 1), Rung(8, 2), Rung(4, 3), Rung(2, 4)]
    assert total_epochs(schedule(16, 2, 1, 2, 4)) == 16 + 16 + 12 + 8
    assert schedule(4, 2, 1, 2, 2) == [Rung(4, 1), Rung(2, 2)]
    assert schedule(8, 2, 2, 1, 20) == [Rung(8, 2), Rung(4, 4), Rung(2, 8), Rung(1, 20)]
    with pytest.raises(ValueError, match=r"4 rungs \(16 -> 8 -> 4 -> 2 finalists\) need at least 4"):
        schedule(16, 2, 1, 2, 3)
    with pytest.raises(ValueError, match="eta >= 2"):
        rung_sizes(4, 1, 1)


def test_promote_keeps_the_best_by_validation_in_ranking_order():
    order = [7, 3, 9, 1]
    assert promote({7: 0.5, 3: 0.7, 9: 0.6, 1: 0.1}, order, 2) == [3, 9]
    assert promote({7: 0.6, 3: 0.7, 9: 0.6, 1: 0.1}, order, 2) == [7, 3]  # tie 7 vs 9: 7 ranked first
    assert promote({7: 0.5, 1: 0.9}, order, 3) == [7, 1]  # 3 and 9 failed: never promoted


def test_refit_lets_a_predicted_better_candidate_take_the_weakest_place():
    from acpsearch.search.refit import refit_entrants

    # validation value grows with the first kept fraction; candidate 50 (not fine-tuned) keeps most
    vec = {c: np.array([f, 0.5]) for c, f in {1: 0.2, 2: 0.4, 3: 0.6, 4: 0.8, 50: 1.0, 51: 0.1}.items()}
    res = {1: 0.2, 2: 0.4, 3: 0.6, 4: 0.8}
    entrants, fit = refit_entrants(res, vec, [1, 2, 3, 4], [50, 51], size=2, max_new=1, alpha=1e-6)
    assert entrants == [4, 50]  # 50 is predicted ~1.0 > 0.6 of finalist 3, the weakest promoted one
    assert fit["points"] == 4 and fit["r2"] > 0.99 and fit["newcomers"]["50"] == pytest.approx(1.0, abs=1e-3)
    # a pool candidate predicted worse than every promoted finalist takes no place
    entrants, fit = refit_entrants(res, vec, [1, 2, 3, 4], [51], size=2, max_new=1, alpha=1e-6)
    assert entrants == [3, 4] and fit["newcomers"] == {}
    # too few fine-tuned points: plain promotion
    entrants, fit = refit_entrants({1: 0.2, 2: 0.4}, vec, [1, 2], [50], size=1, max_new=1)
    assert entrants == [2] and fit == {"points": 2, "newcomers": {}}
