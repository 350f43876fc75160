"""A joint study (channels + code length) end to end through the CLI: `submit`, `run`, `show
--json`. budget.bits makes the hash layer's kept outputs a searched dimension; NSGA-II samples;
the winner meets both budgets (FLOPs measured on the module, bits measured on its output); the
report and the dashboard note show the FLOPs x bits x score front; the `code:` phase then
shortens the winner to every length of the schedule, each an artifact load_model reloads."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from conftest import TINY_SPEC

from acpsearch.cli import run

BITS_BUDGET = 12  # of the base's 16 bits
JOINT_SPEC: dict[str, Any] = {
    **copy.deepcopy(TINY_SPEC),
    "name": "tiny-joint",
    "budget": {"flops": 0.5, "bits": BITS_BUDGET},
    # the code keeps at least half its bits (8 or 12), so both schedule lengths below are shorter
    "space": {"step": 0.1, "min_keep": 0.2, "criterion": "l1", "bounds": {"hash_layer": [0.5, 1.0]}},
    "search": {"candidates": 16, "sampler": "nsga2", "workers": 2, "seed": 0, "ranker": "code_agreement"},
    "finetune": {"top": 2, "epochs": 2, "lr": 0.001, "early_stop": None},
    "code": {"method": "prune", "criterion": "balance", "lengths": [6, 4], "finetune_epochs": 1},
}


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = run(argv)
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else {})


@pytest.fixture(scope="module")
def joint_study(tmp_path_factory: pytest.TempPathFactory, ray_session: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("joint-study")
    url = f"sqlite:///{root / 'studies.db'}"
    spec = root / "tiny-joint.yaml"
    spec.write_text(yaml.safe_dump(JOINT_SPEC))
    assert run(["submit", str(spec), "--storage", url]) == 0
    code = run(["run", "tiny-joint", "--storage", url, "--artifacts", str(root / "artifacts")])
    return {"url": url, "root": root, "code": code}


def test_joint_winner_meets_both_budgets(joint_study, capsys):
    from acpsearch import load_model

    assert joint_study["code"] == 0
    code, rep = _json(capsys, ["show", "tiny-joint", "--storage", joint_study["url"], "--json"])
    assert code == 0 and rep["summary"]["state"] == "done"
    w = rep["winner"]
    assert w["measured_flops_ratio"] <= 0.5 + 1e-9  # FLOPs measured on the pruned module
    assert 8 <= w["bits"] <= BITS_BUDGET  # bits measured on the winner's output
    assert w["kept"]["hash_layer"] == w["bits"]
    net = load_model(w["path"]).eval()
    with torch.no_grad():
        assert net(torch.zeros(3, 1, 8, 8)).shape == (3, w["bits"])
    assert 0.0 < w["test_map"] <= 1.0
    study = optuna.load_study(study_name="tiny-joint", storage=joint_study["url"])
    assert study.user_attrs["winner.bits"] == w["bits"]


def test_candidates_search_the_code_length_under_the_cap(joint_study):
    study = optuna.load_study(study_name="tiny-joint", storage=joint_study["url"])
    cands = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    bits = [t.user_attrs["bits"] for t in cands]
    assert len(cands) >= 16 and all(8 <= b <= BITS_BUDGET for b in bits)
    assert all(t.user_attrs["constraint.bits"] <= 0 for t in cands)
    assert all("keep/hash_layer" in t.params for t in cands)
    # code_agreement under budget.bits is the neighbour agreement: in (0, 1], not bitwise
    assert all(0.0 < t.value <= 1.0 for t in cands)


def test_front_in_report_and_dashboard_note(joint_study):
    from acpsearch.service.report import build_report

    storage = optuna.storages.get_storage(joint_study["url"])
    study = optuna.load_study(study_name="tiny-joint", storage=storage)
    rep = build_report(study, storage)
    front = rep["front"]
    assert front and all(r["bits"] <= BITS_BUDGET and r["flops_ratio"] <= 0.5 + 1e-9 for r in front)
    for a in front:  # no front member is dominated by another candidate
        for b in front:
            assert not (
                b["flops_ratio"] <= a["flops_ratio"]
                and b["bits"] <= a["bits"]
                and b["score"] >= a["score"]
                and (b["flops_ratio"], b["bits"], b["score"]) != (a["flops_ratio"], a["bits"], a["score"])
            )
    note = (joint_study["root"] / "artifacts" / "studies" / "tiny-joint" / "report.md").read_text()  # = the note
    assert "FLOPs x bits x score front" in note and "| code bits | 16 |" in note
    assert "mAP against" in note or "Shorter codes" in note


def test_code_phase_stores_every_length(joint_study):
    from acpsearch import load_model

    study = optuna.load_study(study_name="tiny-joint", storage=joint_study["url"])
    rows = study.user_attrs["code.lengths"]
    assert [r["bits"] for r in rows] == [6, 4]
    for r in rows:
        assert 0.0 < r["test_map"] <= 1.0 and 0.0 < r["val_map"] <= 1.0 and r["criterion"] == "balance"
        assert study.user_attrs[f"code.{r['bits']}bits.test_map"] == pytest.approx(r["test_map"])
        net = load_model(r["path"]).eval()
        with torch.no_grad():
            assert net(torch.zeros(2, 1, 8, 8)).shape == (2, r["bits"])
        assert Path(r["path"]).name == f"bits{r['bits']}.pt" and r["artifact_id"]
    rec = study.user_attrs["phase.shorten"]
    assert rec["done"] and rec["lengths"] == [6, 4] and rec["from_bits"] == study.user_attrs["winner.bits"]


def _columns(c: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in c[:, j]) for j in range(c.shape[1])}


def test_short_codes_train_towards_the_base_centres(joint_study):
    """The winner's short code kept the base's CSQ centres of its bits (distinct per class), and
    the code: phase went on from them instead of drawing new centres."""
    from acpsearch.checkpoint import read_checkpoint
    from acpsearch.checkpoint.code import code_of
    from acpsearch.codelength import base_centres, min_centre_distance
    from acpsearch.service import keys

    study = optuna.load_study(study_name="tiny-joint", storage=joint_study["url"])
    meta = read_checkpoint(study.user_attrs[keys.WINNER][keys.T_PATH])["meta"]
    base = base_centres("csq", 16, 10)
    assert base is not None
    won = torch.tensor(meta["code_centres"], dtype=torch.float32)
    assert won.shape == (10, study.user_attrs["winner.bits"])
    assert _columns(won) <= _columns(base) and min_centre_distance(won) > 0
    for r in study.user_attrs["code.lengths"]:
        _, c = code_of(read_checkpoint(r["path"]))
        assert c is not None and c.shape == (10, r["bits"]) and _columns(c) <= _columns(won)
