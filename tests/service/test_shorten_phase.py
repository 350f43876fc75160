"""Phase shorten (spec `code:`) on a real trained winner, without Ray: every length becomes an
artifact that load_model reloads at that length, a row of `code.lengths` and flat attributes; a
run stopped after a length resumes after it (the stored length is not redone); no `code:`
section, nothing to do."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import torch
from conftest import TINY_SPEC, train_tiny_base

from acpsearch import load_model
from acpsearch.service import keys
from acpsearch.service.context import StudyRun
from acpsearch.service.phases import shorten
from acpsearch.service.progress import SilentReporter
from acpsearch.service.spec import parse_spec
from acpsearch.service.storage import artifact_store
from acpsearch.service.tasks import load_splits

CODE = {"method": "prune", "criterion": "balance", "lengths": [8, 4], "finetune_epochs": 1}


def _ctx(root: Path, winner: Path, code: dict | None) -> StudyRun:
    data = copy.deepcopy(TINY_SPEC)
    data["model"]["checkpoint"] = str(winner)
    if code is not None:
        data["code"] = code
    spec = parse_spec(data)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), study_name="s")
    study.set_user_attr(keys.WINNER, {keys.T_PATH: str(winner)})
    return StudyRun(
        storage=study._storage,
        url="",
        study=study,
        spec=spec,
        artifacts=root,
        store=artifact_store(root / "store"),
        reporter=SilentReporter(),
        workers=1,
        allow=None,
        splits=load_splits(spec),
    )


@pytest.fixture(scope="module")
def winner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return train_tiny_base(tmp_path_factory.mktemp("winner") / "winner.pt")


def test_no_code_section_is_nothing_to_do(tmp_path, winner):
    rec = shorten.run(_ctx(tmp_path, winner, None), {}, None)
    assert rec.seconds == 0.0 and rec.details["lengths"] is None


def test_every_length_stored_and_a_stopped_run_resumes(tmp_path, winner):
    ctx = _ctx(tmp_path, winner, CODE)
    rec = shorten.run(ctx, {}, None)
    assert rec.details["lengths"] == [8, 4] and rec.details["from_bits"] == 16
    rows = ctx.study.user_attrs[keys.CODE_LENGTHS]
    assert [r["bits"] for r in rows] == [8, 4]
    X = ctx.splits.query[0][:5]
    for r in rows:
        assert r["criterion"] == "balance" and r["method"] == "prune"
        assert 0.0 < r["test_map"] <= 1.0 and 0.0 < r["val_map"] <= 1.0
        assert ctx.study.user_attrs[keys.code_length(r["bits"], "test_map")] == pytest.approx(r["test_map"])
        assert Path(r["path"]).name == f"bits{r['bits']}.pt"
        assert ctx.store.open_reader(r["artifact_id"]).read()  # the dashboard's copy
        net = load_model(r["path"]).eval()
        with torch.no_grad():
            assert net(X).shape == (5, r["bits"])
    # a run stopped after the first length: the second is redone from the stored 8-bit network
    first = Path(rows[0]["path"])
    stamp = first.stat().st_mtime_ns
    ctx.study.set_user_attr(keys.CODE_LENGTHS, rows[:1])
    again = shorten.run(ctx, {}, None)
    assert again.details["lengths"] == [8, 4]
    assert first.stat().st_mtime_ns == stamp  # not redone
    rows2 = ctx.study.user_attrs[keys.CODE_LENGTHS]
    assert [r["bits"] for r in rows2] == [8, 4] and rows2[0] == rows[0]
    short = load_model(rows2[1]["path"]).eval()
    with torch.no_grad():
        assert short(X).shape == (5, 4)
