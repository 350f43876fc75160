"""A study learns from its own fine-tunes: after the first halving rung, a ridge regression of the
rung's validation values on the finalists' kept-channel fractions scores candidates that were not
fine-tuned, and the best of them may take some of the next rung's places."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

MIN_POINTS = 3  # fewer fine-tuned finalists: no fit, the rung's own results decide alone


def refit_entrants(
    results: Mapping[int, float],
    vectors: Mapping[int, NDArray[np.float64]],
    order: Sequence[int],
    pool: Sequence[int],
    size: int,
    max_new: int,
    alpha: float = 1.0,
) -> tuple[list[int], dict[str, Any]]:
    """The next rung's `size` entrants: fine-tuned finalists (`results`: candidate -> validation
    value, ranked by it; ties by `order`) and at most `max_new` candidates of `pool` (not
    fine-tuned, ranked by the ridge prediction fitted on `results` against `vectors`). A pool
    candidate takes a place only where its prediction beats the value of the finalist it would
    replace. Returns (entrants: promoted finalists in `order`, then newcomers best first; a record
    of the fit: points, in-sample R², the newcomers' predictions)."""
    from sklearn.linear_model import Ridge

    rank = {c: i for i, c in enumerate(order)}
    done = sorted((c for c in order if c in results), key=lambda c: (-results[c], rank[c]))
    pool = [c for c in pool if c not in results and c in vectors]
    if len(done) < MIN_POINTS or not pool or max_new <= 0:
        keep = set(done[:size])
        return [c for c in order if c in keep], {"points": len(done), "newcomers": {}}
    X = np.stack([vectors[c] for c in done])
    y = np.array([results[c] for c in done])
    model = Ridge(alpha=alpha).fit(X, y)
    pred = model.predict(np.stack([vectors[c] for c in pool]))
    ranked_pool = sorted(zip(pool, pred), key=lambda cp: -cp[1])[:max_new]
    places = list(done[:size])
    newcomers: dict[int, float] = {}
    for c, p in ranked_pool:  # best prediction first replaces the weakest promoted finalist
        promoted = [x for x in places if x not in newcomers]
        if promoted and len(newcomers) < max_new and p > results[promoted[-1]]:
            places.remove(promoted[-1])
            places.append(c)
            newcomers[c] = float(p)
    keep = set(places)
    entrants = [c for c in order if c in keep] + [c for c in newcomers]
    fit = {"points": len(done), "r2": float(model.score(X, y)), "newcomers": {str(c): v for c, v in newcomers.items()}}
    return entrants, fit
