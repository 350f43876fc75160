"""`acpsearch shorten` end to end on a tiny checkpoint, and its bad inputs (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from acpsearch.checkpoint import load_model, read_checkpoint, save_checkpoint
from acpsearch.cli import run
from acpsearch.hashing import load_dataset, make_splits

SMALL = ["--dataset", "digits", "--query-per-class", "10", "--train-per-class", "40", "--val-per-class", "10"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("short") / "base.pt"
    args = ["train", "--model", "resnet20", *SMALL, "--bits", "16", "--epochs", "2", "--lr", "0.003"]
    assert run([*args, "--batch-size", "64", "--out", str(path), "--no-progress"]) == 0
    return path


@pytest.mark.parametrize("method", ["prune", "merge"])
def test_shorten_writes_one_loadable_checkpoint_per_length(
    base: Path, tmp_path: Path, method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    args = ["shorten", str(base), "--lengths", "12,6", "--method", method, "--out-dir", str(tmp_path)]
    assert run([*args, "--epochs", "1", "--batch-size", "64", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["bits"] for r in doc["lengths"]] == [12, 6]
    splits = make_splits(load_dataset("digits"), 10, 40, 10, seed=0)
    for row in doc["lengths"]:
        assert 0 < row["map_all"] <= 1 and 0 < row["val_map"] <= 1
        assert row["min_centre_distance"] > 0  # CSQ: the kept / merged centres stay apart
        net = load_model(row["checkpoint"])
        with torch.no_grad():
            assert net(splits.query[0][:8]).shape == (8, row["bits"])
        ck = read_checkpoint(row["checkpoint"])
        code = ck["pruning"]["code"]
        assert code["from_bits"] == 16 and code["bits"] == row["bits"] and code["method"] == method
        assert ("kept" in code) == (method == "prune") and len(code["centres"][0]) == row["bits"]
        assert ck["meta"]["bits"] == row["bits"] and ck["model"]["kwargs"]["bits"] == 16
    assert (tmp_path / "bits6.pt").is_file()


def test_shorten_table_and_continuing_from_a_short_checkpoint(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "a"
    assert run(["shorten", str(base), "--lengths", "8", "--out-dir", str(first), "--epochs", "0", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "val mAP" in table and "mAP@all" in table and "bits8.pt" in table
    second = tmp_path / "b"
    args = ["shorten", str(first / "bits8.pt"), "--lengths", "4", "--criterion", "centre", "--out-dir", str(second)]
    assert run([*args, "--epochs", "0", "--no-progress"]) == 0
    code = read_checkpoint(second / "bits4.pt")["pruning"]["code"]
    assert code["from_bits"] == 16 and code["bits"] == 4  # composed with the first shortening
    assert set(code["kept"]) <= set(read_checkpoint(first / "bits8.pt")["pruning"]["code"]["kept"])


def _fails(args: list[str], capsys: pytest.CaptureFixture[str], word: str) -> None:
    capsys.readouterr()
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and word in err, err


def test_bad_inputs_are_one_line_exit_2(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cmd = ["shorten", str(base), "--out-dir", str(tmp_path / "o")]
    _fails([*cmd, "--lengths", "16,8"], capsys, "--lengths")  # not shorter than the base
    _fails([*cmd, "--lengths", "32"], capsys, "--lengths")
    _fails([*cmd, "--lengths", "8,12"], capsys, "--lengths")  # not descending
    _fails([*cmd, "--lengths", "8,8"], capsys, "--lengths")
    _fails([*cmd, "--lengths", "8,0"], capsys, "--lengths")  # below 1
    _fails([*cmd, "--lengths", "8,x"], capsys, "--lengths")
    _fails([*cmd, "--lengths", "8", "--criterion", "best"], capsys, "--criterion")
    _fails([*cmd, "--lengths", "8", "--method", "fold"], capsys, "--method")
    _fails([*cmd, "--lengths", "8", "--epochs", "-1"], capsys, "--epochs")
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_without_a_hash_layer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cl_nolinear.py").write_text(
        "from torch import nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
    )
    monkeypatch.chdir(tmp_path)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    cfg: dict[str, Any] = {"factory": "cl_nolinear:make", "kwargs": {}}
    path = save_checkpoint(tmp_path / "nolin.pt", model, cfg, [1, 1, 8, 8], meta={"dataset": "digits"})
    args = ["shorten", str(path), "--lengths", "4", "--out-dir", str(tmp_path / "o"), "--allow-factory", "cl_nolinear"]
    _fails(args, capsys, "hash layer")
