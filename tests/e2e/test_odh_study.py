"""A study with `train.loss: odh` on the binary zoo network end to end: the base phase trains the
teacher classifier and the ODH network (its checkpoint stores the centres), the finalists are
pruned and fine-tuned toward those stored, frozen centres, and the winner reloads."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from conftest import TINY_SPEC

from acpsearch.cli import run

ODH_SPEC: dict[str, Any] = {
    **copy.deepcopy(TINY_SPEC),
    "name": "tiny-odh",
    "model": {"zoo": "bnn_resnet20", "bits": 16},
    "train": {"loss": "odh", "epochs": 4, "lr": 0.003, "batch_size": 64},
    "encoder": {"objective": "sacp", "epochs": 2, "strategies": 16},
    "search": {"candidates": 12, "sampler": "tpe", "workers": 2, "seed": 0},
    "finetune": {"top": 2, "epochs": 2, "lr": 0.001, "early_stop": "asha"},
}


@pytest.fixture(scope="module")
def odh_study(tmp_path_factory: pytest.TempPathFactory, ray_session: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("odh-study")
    url = f"sqlite:///{root / 'studies.db'}"
    spec = root / "tiny-odh.yaml"
    spec.write_text(yaml.safe_dump(ODH_SPEC))
    assert run(["submit", str(spec), "--storage", url]) == 0
    code = run(["run", "tiny-odh", "--storage", url, "--artifacts", str(root / "artifacts")])
    return {"url": url, "root": root, "code": code}


def test_odh_study_runs_and_finetunes_toward_the_stored_centres(odh_study, capsys, tmp_path):
    import torch

    import acpsearch as acp
    from acpsearch.checkpoint import read_checkpoint

    assert odh_study["code"] == 0
    capsys.readouterr()
    assert run(["show", "tiny-odh", "--storage", odh_study["url"], "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["summary"]["state"] == "done"
    base = read_checkpoint(rep["phases"]["base"]["path"])
    centres = base["meta"]["odh"]["centers"]
    assert base["meta"]["loss"] == "odh" and len(centres) == 10 and len(centres[0]) == 16
    assert 0.0 <= rep["winner"]["test_map"] <= 1.0
    out = tmp_path / "winner.pt"
    assert run(["export", "tiny-odh", "--storage", odh_study["url"], "--out", str(out)]) == 0
    winner = read_checkpoint(out)
    assert winner["pruning"] and winner["meta"]["odh"]["centers"] == centres  # the same, frozen centres
    assert acp.load_model(out)(torch.zeros(2, 1, 8, 8)).shape == (2, 16)
