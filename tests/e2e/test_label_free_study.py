"""A label-free study (`train.loss: lagnh`, so `data.supervision: none`) end to end through
`acpsearch submit` / `run` on sklearn digits, twice: once with the true labels and once with the
labels shuffled. Labels cannot influence a label-free study: the two give bit-identical base
networks, candidate scores, finalist curves and winners; only the labelled test report differs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_SPEC

from acpsearch.cli import run

# the similarity ranker learns from the label-free `effect` signal; adaptive BN re-ranks by the
# neighbour mAP; ASHA and the winner read the finalists' neighbour-mAP curves
LF_SPEC: dict[str, Any] = {
    **copy.deepcopy(TINY_SPEC),
    "train": {"loss": "lagnh", "epochs": 3, "lr": 0.003, "batch_size": 64},
    "encoder": {"objective": "effect", "epochs": 3, "strategies": 16},
    "search": {
        "candidates": 12,
        "sampler": "random",
        # one worker: the finalists fine-tune one after another, so ASHA's stops do not depend on
        # which trial reports first (two concurrent trials made the curves differ between runs)
        "workers": 1,
        "seed": 0,
        "rerank": "adaptive_bn",
        "rerank_top": 4,
        "anchor": None,
    },
    "finetune": {"top": 2, "epochs": 2, "lr": 0.001, "early_stop": "asha", "distill": 0.5},
}


def _digits_npz(path: Path, shuffle: bool) -> Path:
    from acpsearch.hashing import load_dataset

    ds = load_dataset("digits")
    y = ds.labels.numpy().copy()
    if shuffle:
        y = np.random.default_rng(123).permutation(y)
    np.savez(path, X=(ds.images[:, 0].numpy() * 255).round().astype(np.uint8), y=y)
    return path


def _show(capsys: pytest.CaptureFixture[str], name: str, url: str) -> dict[str, Any]:
    capsys.readouterr()
    assert run(["show", name, "--storage", url, "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory, ray_session: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("label-free")
    url = f"sqlite:///{root / 'studies.db'}"
    for name, shuffle in (("lf-true", False), ("lf-shuffled", True)):
        spec = copy.deepcopy(LF_SPEC)
        spec["name"] = name
        spec["data"] = {
            "dataset": "npz",
            "path": str(_digits_npz(root / f"{name}.npz", shuffle)),
            "protocol": dict(TINY_SPEC["data"]["protocol"]),
        }
        (root / f"{name}.yaml").write_text(yaml.safe_dump(spec))
        assert run(["submit", str(root / f"{name}.yaml"), "--storage", url]) == 0
        assert run(["run", name, "--storage", url, "--artifacts", str(root / "artifacts")]) == 0
    return {"url": url, "root": root}


def test_label_free_study_reports_labelled_test_map(studies, capsys):
    rep = _show(capsys, "lf-true", studies["url"])
    assert rep["summary"]["state"] == "done"
    w, b = rep["winner"], rep["base"]
    # the test report reads the labels: chance on digits is about 0.1; 3 epochs of lagnh on k-means
    # tags get above it (no labels: far below a supervised loss)
    assert 0.12 < b["test_map"] <= 1 and 0.1 < w["test_map"] <= 1
    assert b.get("val_map") is None  # no labelled validation score in a label-free study
    assert w["measured_flops_ratio"] <= 0.5 + 1e-9
    # the winner was chosen by neighbour mAP (against the unpruned network's codes): in [0, 1]
    done = [f for f in rep["finalists"] if f["state"] == "COMPLETE"]
    assert done and all(0 < f["val_map"] <= 1 for f in done)
    assert w["val_map"] == max(f["val_map"] for f in done)


def test_shuffled_labels_change_nothing_but_the_test_report(studies, capsys):
    import optuna

    from acpsearch.checkpoint import read_checkpoint

    a, b = (_show(capsys, n, studies["url"]) for n in ("lf-true", "lf-shuffled"))
    sa, sb = (optuna.load_study(study_name=n, storage=studies["url"]) for n in ("lf-true", "lf-shuffled"))
    # the search: the same candidates with the same scores
    assert [t.value for t in sa.trials] == [t.value for t in sb.trials]
    assert [t.params for t in sa.trials] == [t.params for t in sb.trials]
    # fine-tuning: the same finalists, curves (neighbour mAP per epoch) and winner
    fa, fb = (optuna.load_study(study_name=f"{n}.finetune", storage=studies["url"]) for n in ("lf-true", "lf-shuffled"))
    assert [t.intermediate_values for t in fa.trials] == [t.intermediate_values for t in fb.trials]
    assert a["winner"]["ratios"] == b["winner"]["ratios"] and a["winner"]["val_map"] == b["winner"]["val_map"]
    # the weights, bit for bit: the base network (with its aux tags) and the winner
    for key in ("base", "winner"):
        ca, cb = read_checkpoint(a[key]["path"]), read_checkpoint(b[key]["path"])
        assert ca["state_dict"].keys() == cb["state_dict"].keys()
        assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])
    base_a = read_checkpoint(a["base"]["path"])["meta"]
    assert base_a["supervision"] == "none" and base_a["aux"]["method"] == "kmeans"
    # only the labelled test report sees the shuffled labels (near chance there)
    assert a["winner"]["test_map"] != b["winner"]["test_map"]
    assert b["base"]["test_map"] < a["base"]["test_map"]
