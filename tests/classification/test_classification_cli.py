"""`acpsearch train --task classification`, `evaluate`, `inspect`, `prune` and the exporters on a
digits classifier checkpoint; retrieval-only flags on a classifier (and the reverse) are one line, exit 2."""

from __future__ import annotations

import json

import pytest
import torch

import acpsearch as acp
from acpsearch.checkpoint import read_checkpoint
from acpsearch.cli import run

SMALL = ["--dataset", "digits", "--train-per-class", "30", "--val-per-class", "10", "--query-per-class", "10"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "cls.pt"
    args = ["train", "--task", "classification", *SMALL, "--epochs", "2", "--lr", "0.003", "--batch-size", "64"]
    assert run([*args, "--label-smoothing", "0.1", "--seed", "1", "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_writes_a_classifier_checkpoint(trained, tmp_path, capsys):
    ckpt = read_checkpoint(trained)
    assert ckpt["model"] == {
        "zoo": "resnet20",
        "task": "classification",
        "kwargs": {"classes": 10, "in_channels": 1, "image_size": 8},
    }
    meta = ckpt["meta"]
    assert meta["task"] == "classification" and meta["loss"] == "cross-entropy" and meta["label_smoothing"] == 0.1
    assert set(meta["metrics"]) == {"val_acc", "test_acc"}  # top-5 only with >= 20 classes
    model = acp.load_model(trained)
    assert type(model).__name__ == "ZooClassifier" and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    # --json: one document with the accuracies
    out = tmp_path / "j.pt"
    args = ["train", "--task", "classification", *SMALL, "--epochs", "1", "--batch-size", "64", "--json"]
    assert run([*args, "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["task"] == "classification" and 0.0 <= doc["val_acc"] <= 1.0 and 0.0 <= doc["test_acc"] <= 1.0
    assert doc["sizes"] == {"train": 300, "val": 100, "test": 100} and doc["test_source"] == "held-out"


def test_evaluate_prints_accuracy(trained, capsys):
    capsys.readouterr()
    assert run(["evaluate", str(trained), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    stored = read_checkpoint(trained)["meta"]["metrics"]
    assert doc["task"] == "classification" and not doc["pruned"]
    # the same splits and statistics as training: the same accuracies
    assert doc["val_acc"] == pytest.approx(stored["val_acc"]) and doc["test_acc"] == pytest.approx(stored["test_acc"])
    assert run(["evaluate", str(trained)]) == 0
    assert "test_acc" in capsys.readouterr().out


def test_inspect_prune_and_export_a_classifier(trained, tmp_path, capsys):
    from acpsearch.export import export_model, load_exported

    assert run(["inspect", str(trained), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hash_layer"] == "classifier"  # the head's outputs stay
    pruned = tmp_path / "p.pt"
    assert run(["prune", str(trained), "--keep", "0.5", "--out", str(pruned), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["flops_ratio"] < 0.5
    ckpt = read_checkpoint(pruned)
    assert ckpt["pruning"] and ckpt["meta"]["task"] == "classification"
    model = acp.load_model(pruned)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
    assert want.shape == (4, 10)
    assert run(["evaluate", str(pruned), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pruned"] is True
    for fmt in ("onnx", "torchscript"):
        path = tmp_path / f"p.{fmt}"
        meta = {"task": "classification", "source": {"checkpoint": str(pruned)}}
        export_model(model, path, fmt, torch.zeros(*ckpt["input_shape"]), meta)
        fn, doc, _ = load_exported(path)
        assert doc["classes"] == 10 and "code_length" not in doc
        assert torch.allclose(torch.as_tensor(fn(x)), want, atol=1e-4)
    # prune --format writes the same for deployment straight from the checkpoint
    path = tmp_path / "direct.onnx"
    assert run(["prune", str(trained), "--keep", "0.5", "--format", "onnx", "--out", str(path)]) == 0
    assert load_exported(path)[1]["task"] == "classification"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--bits", "16"], "--bits"),
        (["--loss", "csq"], "--loss"),
        (["--topk", "5"], "--topk"),
        (["--label-smoothing", "1.5"], "--label-smoothing"),
        (["--model", "nope"], "model"),
    ],
)
def test_retrieval_flags_on_a_classifier_are_one_line(extra, needle, tmp_path, capsys):
    code = run(["train", "--task", "classification", *SMALL, "--epochs", "1", *extra, "--out", str(tmp_path / "x.pt")])
    assert code == 2 and needle in _one_line_error(capsys)


def test_classification_flags_on_retrieval_and_bad_task_are_one_line(trained, tmp_path, capsys):
    assert run(["train", *SMALL, "--label-smoothing", "0.1", "--out", str(tmp_path / "x.pt")]) == 2
    assert "--label-smoothing" in _one_line_error(capsys)
    assert run(["train", *SMALL, "--loss", "cross-entropy", "--out", str(tmp_path / "x.pt")]) == 2
    assert "--loss" in _one_line_error(capsys)
    assert run(["train", "--task", "segmentation", *SMALL, "--out", str(tmp_path / "x.pt")]) == 2
    assert "--task" in _one_line_error(capsys)
    assert run(["evaluate", str(trained), "--topk", "10"]) == 2
    assert "--topk" in _one_line_error(capsys)
