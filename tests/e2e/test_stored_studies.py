"""Studies stored by an earlier release (tests/fixtures/stored-0.1.0) still show and resume."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "stored-0.1.0"


def _attrs(db: Path, name: str) -> dict[str, object]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "select key, value_json from study_user_attributes where study_id="
            "(select study_id from studies where study_name=?)",
            (name,),
        ).fetchall()
    finally:
        con.close()
    return {k: json.loads(v) for k, v in rows}


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    root = tmp_path / "stored"
    shutil.copytree(FIXTURE, root)
    return root


def test_a_finished_study_of_0_1_0_shows(stored: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from acpsearch.cli import run

    url = f"sqlite:///{stored / 'studies.db'}"
    assert run(["show", "stored-done", "--storage", url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["study"] == "stored-done" and "select" in doc["phases"]
    assert doc["winner"]["flops_ratio"] == pytest.approx(0.4987, abs=1e-3)
    assert 0.2 < doc["winner"]["val_map"] < 0.4
    assert run(["status", "--storage", url, "--json"]) == 0
    states = {s["name"]: s["state"] for s in json.loads(capsys.readouterr().out)["studies"]}
    assert states == {"stored-done": "done", "stored-interrupted": "running"}


def test_an_interrupted_study_of_0_1_0_resumes_to_done(
    stored: Path, ray_session: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from acpsearch.cli import run

    db = stored / "studies.db"
    before = _attrs(db, "stored-interrupted")
    assert before["state"] == "running" and "phase.search" not in before
    url = f"sqlite:///{db}"
    assert run(["run", "stored-interrupted", "--storage", url, "--artifacts", str(stored / "artifacts")]) == 0
    after = _attrs(db, "stored-interrupted")
    assert after["state"] == "done"
    # the stored base and encoder were reused, not trained again
    for phase in ("phase.base", "phase.encoder"):
        assert after[phase] == before[phase]
    runs = after["runs"]
    assert isinstance(runs, list) and len(runs) == 2 and runs[-1]["outcome"] == "done"
    capsys.readouterr()
    assert run(["show", "stored-interrupted", "--storage", url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["winner"]["flops_ratio"] <= 0.5
