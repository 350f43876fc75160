"""`task: retrieval | classification` in the spec: the default, the classification defaults, the
stored form, and the one-line refusal of an option of the other task."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from acpsearch.errors import SpecError
from acpsearch.service.spec import load_spec, parse_spec, spec_from_json

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"model": {"zoo": "resnet20"}, "data": {"dataset": "digits"}, "budget": {"flops": 0.5}}
CLS = {**MINIMAL, "task": "classification"}


def _spec(base: dict, **sections: dict) -> dict:
    d = copy.deepcopy(base)
    for name, values in sections.items():
        d[name] = {**d.get(name, {}), **values}
    return d


def test_default_task_is_retrieval_and_stored_form_unchanged():
    s = parse_spec(copy.deepcopy(MINIMAL))
    assert s.task == "retrieval" and s.train.loss == "csq"
    stored = s.to_dict()
    assert "task" not in stored and "label_smoothing" not in stored["train"]  # as before the key existed
    assert spec_from_json(stored).task == "retrieval"


def test_classification_defaults_and_round_trip():
    s = parse_spec(_spec(CLS, train={"label_smoothing": 0.1}))
    assert s.task == "classification" and s.train.loss == "cross-entropy" and s.train.label_smoothing == 0.1
    stored = s.to_dict()
    assert stored["task"] == "classification" and "bits" not in stored["model"]
    back = spec_from_json(stored)
    assert back == s and back.task == "classification"


@pytest.mark.parametrize(
    "data,line",
    [
        (
            _spec(CLS, train={"loss": "csq"}),
            "spec: train.loss: 'csq' is a hash loss (retrieval); a classification study trains with 'cross-entropy'",
        ),
        (
            _spec(CLS, model={"bits": 16}),
            "spec: model.bits: a code length is a retrieval option; a classifier outputs one logit per class",
        ),
        (
            _spec(CLS, model={"kwargs": {"bits": 32}}),
            "spec: model.kwargs.bits: a code length is a retrieval option; a classifier outputs one logit per class",
        ),
        (
            _spec(MINIMAL, train={"label_smoothing": 0.1}),
            "spec: train.label_smoothing: a classification option; a retrieval study trains a hash loss "
            "(or set task: classification)",
        ),
        (
            _spec(MINIMAL, train={"loss": "cross-entropy"}),
            "spec: train.loss: 'cross-entropy' is a classification loss; a retrieval study trains a hash loss "
            "(or set task: classification)",
        ),
        (
            _spec(CLS, finetune={"distill": 2.0}),
            "spec: finetune.distill: must be in [0, 1] for a classifier (the weight of the distillation term), got 2.0",
        ),
        ({**MINIMAL, "task": "segmentation"}, "spec: task: input should be 'retrieval' or 'classification'"),
        (_spec(CLS, train={"label_smoothing": 1.0}), "spec: train.label_smoothing: must be in [0, 1), got 1.0"),
    ],
)
def test_other_task_option_is_one_line(data, line):
    with pytest.raises(SpecError) as exc:
        parse_spec(data)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(line)


def test_submit_refuses_other_task_option_with_exit_2(tmp_path):
    import yaml

    from acpsearch.cli import run

    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(_spec(CLS, model={"bits": 16})))
    assert run(["submit", str(p), "--storage", f"sqlite:///{tmp_path / 's.db'}"]) == 2
    assert not (tmp_path / "s.db").exists() or "bad" not in (tmp_path / "s.db").read_bytes().decode("latin-1")


def test_checkpoint_of_other_task_is_refused(tmp_path):
    """A classifier checkpoint under a retrieval spec (and a hash net under a classification
    spec) is one line naming `task`."""
    from acpsearch.checkpoint import save_checkpoint, save_classifier_checkpoint
    from acpsearch.classification import create_classifier
    from acpsearch.hashing import create_model
    from acpsearch.service.inputs import preflight

    cls = save_classifier_checkpoint(
        tmp_path / "cls.pt", create_classifier("resnet20", 10, 1, 8), "resnet20", 10, 1, 8, meta={}
    )
    with pytest.raises(SpecError, match=r"^task: 'retrieval' contradicts .*classification network \(model.task\)$"):
        preflight(parse_spec(_spec(MINIMAL, model={"checkpoint": str(cls)})))
    kw = {"bits": 32, "in_channels": 1, "image_size": 8}
    hnet = save_checkpoint(
        tmp_path / "h.pt", create_model("resnet20", **kw), {"zoo": "resnet20", "kwargs": kw}, [1, 1, 8, 8]
    )
    with pytest.raises(SpecError, match=r"^task: 'classification' contradicts .*retrieval network"):
        preflight(parse_spec(_spec(CLS, model={"checkpoint": str(hnet)})))
    # the classifier's own checkpoint passes
    info = preflight(parse_spec(_spec(CLS, model={"checkpoint": str(cls)})))
    assert info["groups"] > 0


def test_shipped_classification_spec():
    s = load_spec(ROOT / "search_spaces" / "resnet20-fashion-mnist-classify-50flops.yaml")
    assert s.task == "classification" and s.train.loss == "cross-entropy" and s.budget.flops == 0.5
