"""`acpsearch train` / `acpsearch evaluate` through acpsearch.cli.run: success paths and exit 2 errors."""
from __future__ import annotations

import json

import pytest

from acpsearch.cli import run

SMALL = ["--dataset", "digits", "--query-per-class", "10", "--train-per-class", "50", "--val-per-class", "10"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "base.pt"
    code = run(["train", "--model", "resnet20", *SMALL, "--bits", "16", "--epochs", "2", "--loss", "csq",
                "--lr", "0.003", "--batch-size", "64", "--seed", "1", "--augment", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_train_writes_checkpoint_and_table(trained, capsys):
    assert trained.is_file()


def test_train_json_is_one_document(tmp_path, capsys):
    out = tmp_path / "m.pt"
    code = run(["train", "--model", "resnet20", *SMALL, "--bits", "8", "--epochs", "1", "--batch-size", "250",
                "--out", str(out), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == "resnet20" and doc["epochs"] == 1 and 0 <= doc["metrics"]["map_all"] <= 1


def test_evaluate_defaults_to_checkpoint_dataset_and_protocol(trained, capsys):
    capsys.readouterr()
    assert run(["evaluate", str(trained), "--json", "--topk", "50"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dataset"] == "digits"
    assert doc["protocol"] == {"query_per_class": 10, "train_per_class": 50, "val_per_class": 10, "seed": 1}
    m = doc["metrics"]
    assert m["topk"] == 50 and m["n_query"] == 100 and m["n_database"] == 1797 - 700
    assert 0.15 <= m["map_all"] <= 1  # chance is ~0.1
    assert run(["evaluate", str(trained)]) == 0
    table = capsys.readouterr().out
    assert "test mAP@all" in table and "mAP@1000" in table


@pytest.mark.parametrize("argv,needle", [
    (["train", "--model", "resnet18", "--out", "x.pt"], "resnet18"),
    (["train", "--dataset", "imagenet", "--out", "x.pt"], "imagenet"),
    (["train", "--epochs", "0", "--out", "x.pt"], "--epochs"),
    (["train", "--epochs", "many", "--out", "x.pt"], "--epochs"),
    (["train", "--lr", "-0.1", "--out", "x.pt"], "--lr"),
    (["train", "--loss", "triplet", "--out", "x.pt"], "triplet"),
    (["train", "--dataset", "cifar10", "--out", "x.pt"], "--data-dir"),
    (["train", "--dataset", "digits", "--epochs", "1", "--train-per-class", "500", "--out", "x.pt"], "train_per_class"),
])
def test_train_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(argv) == 2
    assert needle in _one_line_error(capsys)
    assert not (tmp_path / "x.pt").exists()


def test_evaluate_bad_input_exits_2(trained, tmp_path, capsys):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    assert run(["evaluate", str(bad)]) == 2
    assert "corrupt" in _one_line_error(capsys)
    assert run(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in _one_line_error(capsys)
    assert run(["evaluate", str(trained), "--topk", "0"]) == 2
    assert "--topk" in _one_line_error(capsys)
    assert run(["evaluate", str(trained), "--dataset", "mnist-9"]) == 2
    assert "mnist-9" in _one_line_error(capsys)
    assert run(["evaluate", str(trained), "--train-per-class", "1000"]) == 2
    assert "train_per_class" in _one_line_error(capsys)
