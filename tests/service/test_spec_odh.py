"""`train.loss: odh` and `train.teacher` in the spec: accepted, stored only when given, refused
in one line with another loss or empty."""

from __future__ import annotations

import copy

import pytest

from acpsearch.errors import SpecError
from acpsearch.service.spec import parse_spec, spec_from_json

MINIMAL = {"model": {"zoo": "bnn_resnet20"}, "data": {"dataset": "digits"}, "budget": {"flops": 0.5}}


def _spec(**train: object) -> dict:
    d = copy.deepcopy(MINIMAL)
    d["train"] = dict(train)
    return d


def test_odh_loss_is_accepted_with_or_without_a_teacher():
    s = parse_spec(_spec(loss="odh"))
    assert s.train.loss == "odh" and s.train.teacher is None
    assert "teacher" not in s.to_dict()["train"]  # stored only when given
    t = parse_spec(_spec(loss="odh", teacher="cls.pt"))
    assert t.train.teacher == "cls.pt" and spec_from_json(t.to_dict()).train.teacher == "cls.pt"


@pytest.mark.parametrize(
    "train,needle",
    [
        ({"loss": "csq", "teacher": "cls.pt"}, "train.teacher: only with loss: odh"),
        ({"loss": "odh", "teacher": ""}, "train.teacher"),
        ({"loss": "odhx"}, "'odh'"),
    ],
)
def test_bad_odh_options_are_one_line(train, needle):
    with pytest.raises(SpecError) as exc:
        parse_spec(_spec(**train))
    assert needle in str(exc.value) and "\n" not in str(exc.value)
