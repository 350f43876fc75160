"""The CLI on binary networks and on networks with nothing to prune: a study whose network has no
prunable channel group is refused at submit (one line, exit 2, nothing stored); a latency budget
on a binary network is refused the same way."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_SPEC

from acpsearch.cli import run

NOGROUP = '''
from torch import nn


def make(bits=16, in_channels=1):
    """Only the hash layer on the flattened image: every channel is frozen."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, bits))
'''


def _submit(tmp_path: Path, spec: dict, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, Path]:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    db = tmp_path / "studies.db"
    capsys.readouterr()
    code = run(["submit", str(path), "--storage", f"sqlite:///{db}"])
    return code, capsys.readouterr().err.strip(), db


def test_no_prunable_group_is_refused_at_submit(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "nogroup_net.py").write_text(NOGROUP)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("nogroup_net", None)
    spec = {**copy.deepcopy(TINY_SPEC), "name": "nogroup", "model": {"factory": "nogroup_net:make", "bits": 16}}
    code, err, db = _submit(tmp_path, spec, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and "no prunable channel group" in err
    assert "Traceback" not in err and "ValueError" not in err
    if db.exists():  # nothing stored
        import optuna

        assert not optuna.get_all_study_summaries(f"sqlite:///{db}")


def test_latency_budget_on_a_binary_network_is_refused(tmp_path, capsys) -> None:
    spec = {**copy.deepcopy(TINY_SPEC), "name": "bnn-latency", "model": {"zoo": "bnn_resnet20", "bits": 16}}
    spec["budget"] = {"latency_ms": 5.0}
    code, err, _ = _submit(tmp_path, spec, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and "float emulation" in err and "budget.ops" in err
