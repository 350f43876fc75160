"""A study on the binary hash network `bnn_resnet20` with `train.loss: odh` at `budget.ops: 0.5` end
to end through the CLI (`submit`, `run`, `show --json`, `export`): the base phase trains the ODH
teacher and centres, the winner meets the OPs budget, measured on its checkpoint (float MACs +
binary MACs / 64), with a finite mAP next to the unpruned network, and it was fine-tuned toward the
base's stored, frozen centres. One study serves both checks: a binary study is the slowest e2e."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
import torch
import yaml
from conftest import TINY_SPEC

import acpsearch as acp
from acpsearch.cli import run

BNN_SPEC: dict[str, Any] = {
    **copy.deepcopy(TINY_SPEC),
    "name": "tiny-bnn",
    "model": {"zoo": "bnn_resnet20", "bits": 16},
    "train": {"loss": "odh", "epochs": 3, "lr": 0.003, "batch_size": 64},
    "budget": {"ops": 0.5},
    "space": {"step": 0.1, "min_keep": 0.2, "criterion": "l1"},
    "encoder": {"objective": "sacp", "epochs": 2, "strategies": 16},
    "search": {"candidates": 12, "sampler": "tpe", "workers": 2, "seed": 0},
    "finetune": {"top": 2, "epochs": 1, "lr": 0.001, "early_stop": None},
}


@pytest.fixture(scope="module")
def bnn_study(tmp_path_factory: pytest.TempPathFactory, ray_session: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bnn-study")
    url = f"sqlite:///{root / 'studies.db'}"
    spec = root / "tiny-bnn.yaml"
    spec.write_text(yaml.safe_dump(BNN_SPEC))
    assert run(["submit", str(spec), "--storage", url]) == 0
    code = run(["run", "tiny-bnn", "--storage", url, "--artifacts", str(root / "artifacts")])
    return {"url": url, "root": root, "code": code}


def test_binary_study_meets_the_ops_budget(bnn_study: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert bnn_study["code"] == 0
    capsys.readouterr()
    assert run(["show", "tiny-bnn", "--storage", bnn_study["url"], "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["summary"]["state"] == "done"
    w, b = rep["winner"], rep["base"]
    assert math.isfinite(w["test_map"]) and 0 < w["test_map"] <= 1 and 0 < b["test_map"] <= 1
    # measured on the winner's checkpoint against the unpruned binary network
    x = torch.zeros(1, 1, 8, 8)
    pruned = acp.load_model(w["path"])
    base = acp.hashing.create_model("bnn_resnet20", 16, in_channels=1, image_size=8)
    c, c0 = acp.measure_cost(pruned, x), acp.measure_cost(base, x)
    assert c0.bops > 0 and c.bops > 0
    assert c.ops <= 0.5 * c0.ops * (1 + 1e-9)
    assert c.model_bits < c0.model_bits
    assert w["measured_ops_ratio"] == pytest.approx(c.ops / c0.ops)


def test_binary_study_finetunes_toward_the_stored_odh_centres(bnn_study: dict[str, Any], capsys, tmp_path) -> None:
    from acpsearch.checkpoint import read_checkpoint

    assert bnn_study["code"] == 0
    capsys.readouterr()
    assert run(["show", "tiny-bnn", "--storage", bnn_study["url"], "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    base = read_checkpoint(rep["phases"]["base"]["path"])
    centres = base["meta"]["odh"]["centers"]
    assert base["meta"]["loss"] == "odh" and len(centres) == 10 and len(centres[0]) == 16
    out = tmp_path / "winner.pt"
    assert run(["export", "tiny-bnn", "--storage", bnn_study["url"], "--out", str(out)]) == 0
    winner = read_checkpoint(out)
    assert winner["pruning"] and winner["meta"]["odh"]["centers"] == centres  # the same, frozen centres
    assert acp.load_model(out)(torch.zeros(2, 1, 8, 8)).shape == (2, 16)
