"""A classification study end to end through the CLI: `submit`, `run`, `show --json` (the
winner's val_acc / test_acc), the study note in accuracy, and `export` (a classifier that
acpsearch.load_model reloads, one logit per class)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from conftest import TINY_SPEC

from acpsearch.cli import run

CLASSES = 10  # sklearn digits

# TINY_SPEC's shape, as a classifier: no bits, cross-entropy with label smoothing; the `effect`
# encoder objective (prediction agreement), adaptive BN re-ranking (validation top-1) and
# distillation from the unpruned network in the fine-tune all take the classification path
CLS_SPEC: dict[str, Any] = {
    **copy.deepcopy(TINY_SPEC),
    "name": "tiny-cls",
    "task": "classification",
    "model": {"zoo": "resnet20"},
    "train": {"loss": "cross-entropy", "label_smoothing": 0.05, "epochs": 3, "lr": 0.003, "batch_size": 64},
    "encoder": {"objective": "effect", "epochs": 3, "strategies": 16},
    "search": {
        "candidates": 16,
        "sampler": "tpe",
        "workers": 2,
        "seed": 0,
        "rerank": "adaptive_bn",
        "rerank_top": 4,
    },
    "finetune": {"top": 2, "epochs": 2, "lr": 0.001, "early_stop": "asha", "distill": 0.5},
}


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = run(argv)
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else {})


@pytest.fixture(scope="module")
def cls_study(tmp_path_factory: pytest.TempPathFactory, ray_session: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cls-study")
    url = f"sqlite:///{root / 'studies.db'}"
    spec = root / "tiny-cls.yaml"
    spec.write_text(yaml.safe_dump(CLS_SPEC))
    assert run(["submit", str(spec), "--storage", url]) == 0
    code = run(["run", "tiny-cls", "--storage", url, "--artifacts", str(root / "artifacts")])
    return {"url": url, "root": root, "code": code}


def test_study_runs_and_show_reports_accuracy(cls_study, capsys):
    assert cls_study["code"] == 0
    code, rep = _json(capsys, ["show", "tiny-cls", "--storage", cls_study["url"], "--json"])
    assert code == 0 and rep["summary"]["state"] == "done" and rep["summary"]["task"] == "classification"
    assert set(rep["phases"]) == {
        "base",
        "encoder",
        "search",
        "rerank",
        "anchor",
        "finetune",
        "select",
        "shorten",
        "report",
    }
    w, b = rep["winner"], rep["base"]
    # 3 epochs of a ResNet-20 on digits: far above chance (0.1); the pruned, fine-tuned winner too
    assert b["val_acc"] > 0.5 and b["test_acc"] > 0.5
    assert 0.3 < w["val_acc"] <= 1 and 0.3 < w["test_acc"] <= 1
    assert "test_map" not in w and "val_map" not in w and "val_acc_top5" not in w  # 10 classes: no top-5
    assert w["measured_flops_ratio"] <= 0.5 + 1e-9
    assert all(f["val_acc"] is not None for f in rep["finalists"] if f["state"] == "COMPLETE")
    # the finalists were chosen and scored on the classifier's signals, not mAP
    assert rep["phases"]["rerank"].get("ranker", "adaptive_bn") == "adaptive_bn"


def test_note_and_dashboard_say_accuracy(cls_study, capsys):
    import optuna

    from acpsearch.service.report import build_report, markdown

    study = optuna.load_study(study_name="tiny-cls", storage=cls_study["url"])
    note = markdown(build_report(study, study._storage))
    assert "| test accuracy (top-1) |" in note and "chosen by validation accuracy" in note
    assert "mAP" not in note
    ft = optuna.load_study(study_name="tiny-cls.finetune", storage=cls_study["url"])
    assert ft.metric_names == ["val_acc"]
    assert study.metric_names == ["similarity score (ranker, not accuracy)"]
    assert study.user_attrs["winner.test_acc"] == study.user_attrs["winner"]["test_acc"]
    assert study.user_attrs["base.val_acc"] > 0.5
    assert run(["show", "tiny-cls", "--storage", cls_study["url"]]) == 0
    assert "accuracy" in capsys.readouterr().out
    code, status = _json(capsys, ["status", "--storage", cls_study["url"], "--json"])
    row = status["studies"][0]
    assert (
        code == 0 and row["task"] == "classification" and row["winner_test_acc"] == study.user_attrs["winner.test_acc"]
    )
    assert run(["status", "--storage", cls_study["url"]]) == 0
    assert " acc" in capsys.readouterr().out


def test_export_is_a_classifier(cls_study, tmp_path, capsys):
    import torch

    import acpsearch as acp

    out = tmp_path / "winner.pt"
    code, res = _json(capsys, ["export", "tiny-cls", "--storage", cls_study["url"], "--out", str(out), "--json"])
    assert code == 0 and out.is_file()
    model = acp.load_model(out)
    x = torch.zeros(3, 1, 8, 8)
    assert model(x).shape == (3, CLASSES)
    code, rep = _json(capsys, ["show", "tiny-cls", "--storage", cls_study["url"], "--json"])
    assert acp.measure_cost(model, x[:1]).flops == rep["winner"]["measured_flops"] <= 0.5 * rep["base"]["flops"]
