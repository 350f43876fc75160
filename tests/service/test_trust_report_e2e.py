"""The trust report of real finished studies (the shared tiny digits studies, run by `acpsearch worker`)."""

from __future__ import annotations

import json

import optuna

from acpsearch.cli import run
from acpsearch.service import keys


def test_finished_studies_store_and_show_their_trust_report(finished_studies, capsys) -> None:  # type: ignore[no-untyped-def]
    fs = finished_studies
    for name in fs["names"]:
        study = optuna.load_study(study_name=name, storage=fs["url"])
        t = study.user_attrs[keys.TRUST]
        winner = study.user_attrs[keys.WINNER]
        assert t["winner_trial"] == winner["finetune_trial"]
        assert t["winner_source"] == str(winner[keys.T_SOURCE]).split(":")[0]
        ft = optuna.load_study(study_name=f"{name}.finetune", storage=fs["url"])
        done = [tr for tr in ft.get_trials() if tr.state == optuna.trial.TrialState.COMPLETE]
        rerank = (study.user_attrs.get(keys.phase("rerank")) or {}).get("scores") or {}
        spec = study.user_attrs[keys.SPEC]["search"]
        assert t["ranker"] == (spec.get("rerank") or spec["ranker"])

        scores = {
            tr.number: rerank.get(str(tr.user_attrs[keys.T_CANDIDATE])) if rerank else tr.user_attrs[keys.T_SCORE]
            for tr in done
        }
        done = [tr for tr in done if scores[tr.number] is not None]  # a re-ranked study's anchor has no score
        assert t["finalists"] == len(done) >= 1
        best_scored = max(done, key=lambda tr: (scores[tr.number], -tr.number))
        assert t["ranker_top1_trial"] == best_scored.number
        assert t["top1_hit"] is (best_scored.number == winner["finetune_trial"])
        assert t["spearman"] is None if len(done) < 3 else -1.0 <= t["spearman"] <= 1.0
        assert study.user_attrs[keys.trust("top1_hit")] is t["top1_hit"]
        capsys.readouterr()
        assert run(["show", name, "--storage", fs["url"], "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["trust"] == t
        assert run(["show", name, "--storage", fs["url"]]) == 0
        assert "Trust: did the ranking predict" in capsys.readouterr().out
