"""A study whose finalists are chosen for diversity, cut after a group-sparsity training and
fine-tuned by successive halving: rung sizes and epochs as configured, the epochs spent equal the
schedule's sum, the winner comes from the last rung, and a run stopped between rungs resumes
without redoing the finished rung."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from tests.conftest import TINY_SPEC, StoppedAtPhase, stop_at_phase, train_tiny_base


def _trials(url: str, name: str) -> list[Any]:
    from acpsearch.service.storage import open_storage

    return optuna.load_study(study_name=f"{name}.finetune", storage=open_storage(url)).get_trials(deepcopy=False)


def test_halving_study_runs_rungs_as_configured_and_resumes_after_the_finished_rung(
    tmp_path: Path, ray_session: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from acpsearch.cli import run
    from acpsearch.service.runner import run_study
    from acpsearch.service.storage import open_storage

    url = f"sqlite:///{tmp_path / 'h.db'}"
    spec = copy.deepcopy(TINY_SPEC)
    spec["name"] = "halve"
    spec["model"]["checkpoint"] = str(train_tiny_base(tmp_path / "base.pt"))
    spec["search"].update({"candidates": 16, "ranker": "l1_retained", "rounds": 1})
    spec["finetune"] = {
        "top": 4,
        "epochs": 2,
        "diversity": {"pool": 8},
        "halving": {"eta": 2, "min_epochs": 1, "final": 2, "refit": True},
        "epoch_budget": 8,
        "sparsity": {"steps": 10, "weight": 0.1},
    }
    path = tmp_path / "halve.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert run(["submit", str(path), "--storage", url]) == 0
    art = tmp_path / "artifacts"
    with pytest.raises(StoppedAtPhase):  # stopped when rung 2 is about to start: rung 1 is done
        run_study(url, "halve", artifacts=art, reporter=stop_at_phase("finetune: rung 2/2"))
    first = _trials(url, "halve")
    assert len(first) == 4 and {t.user_attrs["rung"] for t in first} == {0}
    assert all(t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["epochs_run"] == 1 for t in first)
    assert all(max(t.intermediate_values) == 1 and 0 in t.intermediate_values for t in first)

    run_study(url, "halve", artifacts=art)  # resumes at rung 2
    trials = _trials(url, "halve")
    rung0 = [t for t in trials if t.user_attrs["rung"] == 0]
    rung1 = [t for t in trials if t.user_attrs["rung"] == 1]
    # rung 1 was not redone: the same four trials, untouched
    assert [(t.number, t.state, t.user_attrs["val_map"]) for t in rung0] == [
        (t.number, t.state, t.user_attrs["val_map"]) for t in first
    ]
    assert len(rung1) == 2 and len(trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["epochs_run"] == 2 for t in rung1)
    assert all(t.user_attrs.get("test_map") is not None for t in rung1)
    # each finalist was trained with the group penalty before its cut: the removed channels shrank
    from acpsearch.checkpoint import read_checkpoint

    for t in rung1:
        sp = read_checkpoint(t.user_attrs["path"])["meta"]["sparsity"]
        assert sp["steps"] == 10 and sp["norm_after"] < sp["norm_before"], sp
    # rung 2's two places: the best of rung 1 by validation mAP, except that the ridge refit on
    # rung 1's four results may give one place (size // 2) to a candidate predicted better than the
    # weaker of the two, which then has no rung-1 trial
    study = optuna.load_study(study_name="halve", storage=open_storage(url))
    refit = study.user_attrs["phase.finetune"]["refit"]
    assert refit["points"] == 4 and len(refit["newcomers"]) <= 1
    ranked0 = [t.user_attrs["candidate"] for t in sorted(rung0, key=lambda t: (-t.user_attrs["val_map"], t.number))]
    newcomers = {int(c) for c in refit["newcomers"]}
    expected = set(ranked0[: 2 - len(newcomers)]) | newcomers
    assert (
        {t.user_attrs["candidate"] for t in rung1}
        == expected
        == set(study.user_attrs["finetune.rungs"][1]["finalists"])
    )
    assert not newcomers & set(ranked0)
    val = {t.user_attrs["candidate"]: t.user_attrs["val_map"] for t in rung0}
    assert all(p > val[ranked0[1]] for p in refit["newcomers"].values())

    a = study.user_attrs
    assert a["state"] == "done"
    assert a["finetune.epochs_spent"] == 4 * 1 + 2 * 2 == a["phase.finetune"]["epochs_planned"]
    assert a["phase.finetune"]["rungs"] == [{"size": 4, "epochs": 1}, {"size": 2, "epochs": 2}]
    assert [r["size"] for r in a["finetune.rungs"]] == [4, 2]
    # the winner is the last rung's best by validation mAP
    win = max(rung1, key=lambda t: (t.user_attrs["val_map"], -t.number))
    assert a["winner"]["finetune_trial"] == win.number
    # finalists chosen for diversity: the anchor, then the best-scored searched candidate first
    from acpsearch.service.candidates import is_anchor

    searched = sorted(
        (t for t in study.get_trials(deepcopy=False) if t.value is not None and not is_anchor(t)),
        key=lambda t: (-t.value, t.number),
    )
    fin = a["phase.finetune"]["finalists"]
    assert len(fin) == 4 and is_anchor(study.trials[fin[0]]) and fin[1] == searched[0].number

    capsys.readouterr()
    assert run(["show", "halve", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "fine-tuning epochs spent: 8 (budget 8)" in out and "4x1 -> 2x2" in out
    assert run(["show", "halve", "--storage", url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["finetune_epochs"] == {
        "spent": 8,
        "budget": 8,
        "rungs": [{"size": 4, "epochs": 1}, {"size": 2, "epochs": 2}],
    }
