"""Trust report: did the ranking predict the finalists' validation mAP, and where the winner came from."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from scipy import stats

from acpsearch.service import keys
from acpsearch.service.report import markdown
from acpsearch.service.trust import finalists_of, store_trust, trust_lines, trust_report


def test_trust_report_numbers() -> None:
    fin = [
        {"trial": 0, "score": 0.9, "val": 0.80, "source": "search"},
        {"trial": 1, "score": 0.8, "val": 0.84, "source": "search"},
        {"trial": 2, "score": 0.7, "val": 0.82, "source": "anchor:magnitude"},
        {"trial": 3, "score": 0.6, "val": 0.78, "source": "search"},
        {"trial": 4, "score": 0.95, "val": None, "source": "search"},  # stopped early: not counted
    ]
    t = trust_report(fin, winner=1)
    assert t["finalists"] == 4
    assert t["spearman"] == pytest.approx(stats.spearmanr([0.9, 0.8, 0.7, 0.6], [0.80, 0.84, 0.82, 0.78])[0], abs=1e-4)
    assert t["spearman"] == pytest.approx(0.4)
    assert t["top1_hit"] is False and t["ranker_top1_trial"] == 0
    assert t["winner_source"] == "search"
    anchor = trust_report(fin, winner=2)
    assert anchor["winner_source"] == "anchor" and anchor["winner_source_detail"] == "anchor:magnitude"
    assert trust_report(fin, winner=0)["top1_hit"] is True
    # fewer than 3 fine-tuned finalists: no correlation, but the hit is still defined
    two = trust_report(fin[:2], winner=1)
    assert two["spearman"] is None and two["top1_hit"] is False


def _stored_finetune_study(url: str) -> Any:
    """A fine-tune study as the service stores it: score, val mAP, source per finalist."""
    ft = optuna.create_study(study_name="s.finetune", storage=url, direction="maximize")
    rows = [(0.91, 0.70, "search"), (0.88, 0.75, "anchor:magnitude"), (0.85, 0.72, "search")]
    for score, val, source in rows:
        t = ft.ask()
        t.set_user_attr(keys.T_SCORE, score)
        t.set_user_attr(keys.T_VAL_MAP, val)
        t.set_user_attr(keys.T_SOURCE, source)
        ft.tell(t, val)
    t = ft.ask()  # an early-stopped finalist: pruned, its partial val mAP is not a result
    t.set_user_attr(keys.T_SCORE, 0.99)
    t.set_user_attr(keys.T_VAL_MAP, 0.10)
    ft.tell(t, state=optuna.trial.TrialState.PRUNED)
    return ft


def test_trust_of_a_stored_study_is_stored_and_shown(sqlite_url: str) -> None:
    ft = _stored_finetune_study(sqlite_url)
    fin = finalists_of(ft, "retrieval")
    assert [f["val"] for f in fin] == [0.70, 0.75, 0.72, None]
    study = optuna.create_study(study_name="s", storage=sqlite_url, direction="maximize")
    store_trust(study, trust_report(fin, winner=1))
    attrs = optuna.load_study(study_name="s", storage=sqlite_url).user_attrs
    assert attrs[keys.TRUST]["spearman"] == pytest.approx(-0.5)
    assert attrs[keys.trust("top1_hit")] is False  # the ranker's first (trial 0) is not the winner
    assert attrs[keys.trust("winner_source")] == "anchor"
    text = "\n".join(trust_lines(attrs[keys.TRUST]))
    assert "**-0.50**" in text and "trial 0, is the winner): **no**" in text and "`anchor:magnitude`" in text
    rep = {
        "study": "s",
        "spec": {"task": "retrieval"},
        "base": {},
        "winner": {},
        "finalists": [],
        "candidates": 0,
        "phase_seconds": {},
        "trust": attrs[keys.TRUST],
    }
    note = markdown(rep)
    assert "## Trust" in note and note.index("## Trust") < note.index("## Time per phase")
    assert trust_lines(None) == []
