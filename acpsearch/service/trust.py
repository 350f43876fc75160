"""Trust report of a study: did its ranking predict how the finalists fine-tuned?

After the select phase, the finalists' ranker scores (the order the study chose them in) are
compared with their validation metric after fine-tuning:
- `spearman`: Spearman's rho over the fully fine-tuned finalists (None with fewer than 3, or when
  either column is constant),
- `top1_hit`: whether the finalist the ranker scored highest is the selected winner,
- `ranker`: the ranker whose order chose the finalists (the re-ranker when the study re-ranks),
- `winner_source`: where the winner came from, ``search`` or ``anchor`` (``anchor:<kind>`` in
  `winner_source_detail`).
Stored as the study attribute `trust` plus flat `trust.*` copies (optuna-dashboard columns), and
shown by `acpsearch show` and the study's dashboard note.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from acpsearch.service import keys


def trust_report(finalists: Sequence[dict[str, Any]], winner: int | None) -> dict[str, Any]:
    """The trust record from finalists {trial, score, val, source} (val None: not fully fine-tuned)
    and the winner's fine-tune trial number."""
    from scipy import stats

    done = [f for f in finalists if _num(f.get("val")) and _num(f.get("score"))]
    rho: float | None = None
    if len(done) >= 3:
        r = float(stats.spearmanr([f["score"] for f in done], [f["val"] for f in done]).statistic)
        rho = None if math.isnan(r) else round(r, 4)
    top = max(done, key=lambda f: (f["score"], -f["trial"])) if done else None
    won = next((f for f in finalists if f["trial"] == winner), None)
    detail = str(won.get("source") or "search") if won else None
    return {
        "finalists": len(done),
        "spearman": rho,
        "top1_hit": None if top is None or winner is None else top["trial"] == winner,
        "ranker_top1_trial": None if top is None else top["trial"],
        "winner_trial": winner,
        "winner_source": None if detail is None else detail.split(":", 1)[0],
        "winner_source_detail": detail,
    }


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def finalists_of(ft_study: Any, task: str | None, rerank: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """{trial, score, val, source} of every fine-tune trial of a study (val only when COMPLETE).
    The score is what ordered the finalists: the rerank record's score of the candidate when the
    study re-ranked (an anchor has none), else the ranker's."""
    import optuna

    from acpsearch.service import study as st

    val = keys.metric_of(task).val
    reranked = (rerank or {}).get("scores") or {}
    return [
        {
            "trial": t.number,
            "score": reranked.get(str(t.user_attrs.get(keys.T_CANDIDATE)))
            if reranked
            else t.user_attrs.get(keys.T_SCORE),
            "val": t.user_attrs.get(val) if t.state == optuna.trial.TrialState.COMPLETE else None,
            "source": st.source(t),
        }
        for t in ft_study.get_trials(deepcopy=False)
    ]


def store_trust(study: Any, record: dict[str, Any]) -> None:
    """The record as the study's `trust` attribute, and its headline values flat beside it."""
    study.set_user_attr(keys.TRUST, record)
    for k in ("spearman", "top1_hit", "winner_source"):
        study.set_user_attr(keys.trust(k), record.get(k))


def trust_lines(t: dict[str, Any] | None, label: str = "mAP") -> list[str]:
    """Markdown lines of the trust record (none when the study has no record)."""
    if not t:
        return []
    rho = "–" if t.get("spearman") is None else f"{t['spearman']:.2f}"
    hit = {True: "yes", False: "no", None: "–"}[t.get("top1_hit")]
    return [
        "## Trust: did the ranking predict the fine-tuned finalists?",
        "",
        f"- Spearman (`{t.get('ranker', 'ranker')}` score vs validation {label}) over {t.get('finalists')} "
        f"fine-tuned finalists: **{rho}**",
        f"- top-1 hit (the ranker's first finalist, trial {t.get('ranker_top1_trial')}, is the winner): **{hit}**",
        f"- winner from: **{t.get('winner_source') or '–'}**"
        + (f" (`{t['winner_source_detail']}`)" if t.get("winner_source") == "anchor" else ""),
        "",
    ]
