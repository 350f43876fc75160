"""Phase rerank (optional, `search.rerank`): a costlier ranker re-scores the top tier of the
searched candidates on Ray actors; the finalists follow its order."""

from __future__ import annotations

from typing import Any

from acpsearch.service.candidates import is_anchor, ranked_candidates, ratios_of
from acpsearch.service.context import Record, StudyRun
from acpsearch.service.workers import score_on_ray

NAME = "rerank"


def run(ctx: StudyRun, records: dict[str, dict[str, Any]], ray_mod: Any) -> Record:
    """Re-score the top tier with a costlier ranker (e.g. adaptive BN) and keep the new order."""
    name = ctx.spec.search.rerank
    if name is None:
        return Record({"ranker": None}, seconds=0.0)
    top = [t for t in ranked_candidates(ctx) if not is_anchor(t)][: ctx.spec.search.rerank_top]
    ctx.reporter.phase(f"rerank: {name}", total=len(top))
    scores = score_on_ray(
        ctx, ray_mod, name, [ratios_of(t) for t in top], chunk=4, round_to=ctx.spec.space.round_to or 4
    )
    ctx.reporter.advance(len(top))
    return Record({"ranker": name, "scores": {str(t.number): round(float(s), 6) for t, s in zip(top, scores)}})
