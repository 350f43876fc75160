"""`acpsearch train --loss lagnh --aux ... [--tags FILE]` and the label-free spec's refusals: a
label-free run says that labels are unused, stores its aux tags, and `evaluate` reproduces its
numbers; bad input (a tag file with the wrong row count or non-binary values, aux flags without
lagnh, `data.supervision: none` with a supervised loss, `finetune.select: val_map` without labels)
is one line, exit 2."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_SPEC

from acpsearch.cli import run

SMALL = ["--dataset", "digits", "--query-per-class", "10", "--train-per-class", "50", "--val-per-class", "10"]
DIGITS_ROWS = 1797
TRAIN = ["train", "--model", "resnet20", *SMALL, "--bits", "16", "--epochs", "2", "--lr", "0.003", "--no-progress"]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def lagnh_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("lagnh") / "lagnh.pt"
    code = run([*TRAIN, "--loss", "lagnh", "--aux", "kmeans", "--out", str(out), "--json"])
    return {"code": code, "out": out}


def test_train_lagnh_says_labels_unused_and_stores_the_tags(lagnh_run, capsys):
    from acpsearch.checkpoint import read_checkpoint

    assert lagnh_run["code"] == 0
    meta = read_checkpoint(lagnh_run["out"])["meta"]
    assert meta["loss"] == "lagnh" and meta["supervision"] == "none"
    assert meta["aux"]["method"] == "kmeans" and meta["aux"]["n_tags"] == 70  # 10 + 20 + 40 clusters
    # the checkpoint's val_map is the label-free neighbour mAP of its best epoch
    assert 0 < meta["val_map"] <= 1
    # the labelled test report: above chance (about 0.1 on digits), far from perfect without labels
    assert 0.1 < meta["metrics"]["map_all"] < 0.9


def test_train_lagnh_prints_that_labels_are_unused(tmp_path, capsys):
    code = run([*TRAIN[:-3], "--epochs", "1", "--no-progress", "--loss", "lagnh", "--out", str(tmp_path / "m.pt")])
    out = capsys.readouterr().out
    assert code == 0 and "labels unused for training" in out and "auxiliary tags (kmeans)" in out


def test_evaluate_reproduces_a_label_free_checkpoint(lagnh_run, capsys):
    from acpsearch.checkpoint import read_checkpoint

    capsys.readouterr()
    assert run(["evaluate", str(lagnh_run["out"]), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    stored = read_checkpoint(lagnh_run["out"])["meta"]["metrics"]
    # the same unstratified splits as in training: the same test mAP
    assert res["metrics"]["map_all"] == pytest.approx(stored["map_all"], abs=1e-9)


def test_train_lagnh_with_a_tag_file(tmp_path, capsys):
    from acpsearch.checkpoint import read_checkpoint

    tags = (np.random.default_rng(0).random((DIGITS_ROWS, 6)) < 0.3).astype(np.uint8)
    np.savez(tmp_path / "tags.npz", tags=tags)
    out = tmp_path / "file.pt"
    argv = [*TRAIN[:-3], "--epochs", "1", "--no-progress", "--loss", "lagnh", "--aux", "file"]
    assert run([*argv, "--tags", str(tmp_path / "tags.npz"), "--out", str(out), "--json"]) == 0
    meta = read_checkpoint(out)["meta"]
    assert meta["aux"]["method"] == "file" and meta["aux"]["n_tags"] == 6


def _bad_tag_files(tmp: Path) -> dict[str, Path]:
    short = tmp / "short.npz"
    np.savez(short, tags=np.zeros((DIGITS_ROWS - 1, 4), dtype=np.uint8))
    nonbinary = tmp / "nonbinary.npy"
    values = np.zeros((DIGITS_ROWS, 4))
    values[5, 2] = 0.5
    np.save(nonbinary, values)
    return {"short": short, "nonbinary": nonbinary}


@pytest.mark.parametrize(
    ("case", "extra", "pattern"),
    [
        ("short", ["--loss", "lagnh", "--aux", "file", "--tags", "{short}"], r"tags file .*short\.npz: 1796 tag rows"),
        ("nonbinary", ["--loss", "lagnh", "--aux", "file", "--tags", "{nonbinary}"], r"tags must be 0 or 1, row 5"),
        ("aux-supervised", ["--loss", "csq", "--aux", "kmeans"], r"--aux: .*unsupervised loss"),
        ("tags-no-file", ["--loss", "lagnh", "--tags", "{short}"], r"--tags: a tag file is read with --aux file"),
        ("file-no-tags", ["--loss", "lagnh", "--aux", "file"], r"--aux: file needs the tag file"),
        ("aux-unknown", ["--loss", "lagnh", "--aux", "detector"], r"--aux: must be one of kmeans, bovw, file"),
        ("aux-classifier", ["--task", "classification", "--aux", "kmeans"], r"--aux: .*lagnh"),
    ],
)
def test_bad_label_free_train_flags_are_one_line_exit_2(case, extra, pattern, tmp_path, capsys):
    import re

    files = _bad_tag_files(tmp_path)
    argv = [a.format(**files) for a in extra]
    out = tmp_path / "never.pt"
    capsys.readouterr()
    assert run([*TRAIN, *argv, "--out", str(out)]) == 2
    assert re.search(pattern, _one_line_error(capsys)), case
    assert not out.exists()


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"data": {"supervision": "none"}}, r"spec: data\.supervision: .*train\.loss 'csq' needs them"),
        ({"train": {"loss": "lagnh"}, "finetune": {"select": "val_map"}}, r"spec: finetune\.select: needs labels"),
        ({"train": {"loss": "lagnh"}, "data": {"supervision": "labels"}}, r"spec: data\.supervision: .*label-free"),
        ({"train": {"aux": "kmeans"}}, r"spec: train\.aux: .*unsupervised loss"),
        ({"train": {"loss": "lagnh", "aux": "file"}}, r"spec: train\.tags: aux 'file' needs the tag file"),
        ({"train": {"loss": "lagnh", "tags": "t.npz"}}, r"spec: train\.tags: a tag file is read with train\.aux: file"),
    ],
)
def test_bad_label_free_specs_are_one_line_exit_2(change, pattern, tmp_path, capsys):
    import re

    spec = copy.deepcopy(TINY_SPEC)
    spec["name"] = "lf-bad"
    for section, values in change.items():
        spec[section] = {**spec[section], **values}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    capsys.readouterr()
    assert run(["submit", str(path), "--storage", url]) == 2
    assert re.search(pattern, _one_line_error(capsys))


def test_a_label_free_spec_fills_in_its_defaults():
    from acpsearch.service.spec import parse_spec, spec_from_json
    from acpsearch.service.spec.supervision import select_of

    spec = copy.deepcopy(TINY_SPEC)
    spec["train"] = {**spec["train"], "loss": "lagnh"}
    parsed = parse_spec(spec)
    assert parsed.data.supervision == "none" and select_of(parsed) == "neighbour_map"
    assert spec_from_json(parsed.to_dict()) == parsed
    labelled = parse_spec(copy.deepcopy(TINY_SPEC))
    # a labelled spec stores none of the new keys (what studies stored before them)
    stored = labelled.to_dict()
    assert "supervision" not in stored["data"] and "select" not in stored["finetune"]
    assert "aux" not in stored["train"] and select_of(labelled) == "val_map"
