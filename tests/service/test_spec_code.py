"""The spec's `code:` section and `budget.bits`: defaults, and one-line refusals naming the field."""

from __future__ import annotations

import copy

import pytest

from acpsearch.errors import SpecError
from acpsearch.service.spec import parse_spec

MINIMAL = {"model": {"zoo": "resnet20", "bits": 32}, "data": {"dataset": "digits"}, "budget": {"flops": 0.5}}


def _spec(**sections):
    d = copy.deepcopy(MINIMAL)
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) and k in d else v
    return d


def _refused(data) -> str:
    with pytest.raises(SpecError) as exc:
        parse_spec(data)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_code_section_defaults_and_round_trip():
    s = parse_spec(_spec(code={"lengths": [24, 16, 12]}))
    assert s.code is not None
    assert (s.code.method, s.code.criterion, s.code.lengths) == ("prune", "auto", [24, 16, 12])
    assert (s.code.finetune_epochs, s.code.lr_decay, s.code.backbone_lr_ratio) == (3, 0.5, 0.1)
    again = parse_spec(s.to_dict())
    assert again.code == s.code
    merge = parse_spec(_spec(code={"lengths": [8], "method": "merge", "criterion": "balance", "finetune_epochs": 0}))
    assert merge.code.method == "merge" and merge.code.finetune_epochs == 0


def test_specs_without_the_new_keys_store_as_before():
    d = parse_spec(copy.deepcopy(MINIMAL)).to_dict()
    assert "code" not in d and "bits" not in d["budget"]
    d2 = parse_spec(_spec(budget={"bits": 16})).to_dict()
    assert d2["budget"]["bits"] == 16


@pytest.mark.parametrize(
    ("code", "expect"),
    [
        ({"lengths": [32, 16]}, "spec: code.lengths: every length must be below model.bits = 32, got 32"),
        ({"lengths": [48]}, "spec: code.lengths: every length must be below model.bits = 32, got 48"),
        ({"lengths": [12, 16]}, "spec: code.lengths: must be strictly descending (longest first), got [12, 16]"),
        ({"lengths": [16, 16]}, "spec: code.lengths: must be strictly descending"),
        ({"lengths": [0]}, "spec: code.lengths: every length must be >= 1, got 0"),
        ({"lengths": []}, "spec: code.lengths:"),
        ({"lengths": [16], "criterion": "best"}, "spec: code.criterion: input should be 'loss', 'map'"),
        ({"lengths": [16], "method": "drop"}, "spec: code.method: input should be 'prune' or 'merge', got 'drop'"),
        ({"lengths": [16], "finetune_epochs": -1}, "spec: code.finetune_epochs: must be in [0, 1000], got -1"),
        ({"lengths": [16], "lr_decay": 0}, "spec: code.lr_decay: must be in (0, 1], got 0"),
        ({"lengths": [16], "extra": 1}, "spec: code.extra: unknown key (allowed: method, criterion, lengths"),
        ({}, "spec: code.lengths: required"),
    ],
)
def test_code_section_refusals(code, expect):
    assert _refused(_spec(code=code)).startswith(expect)


def test_budget_bits():
    s = parse_spec(_spec(budget={"bits": 16}))
    assert s.budget.bits == 16 and s.budget.flops == 0.5
    only = parse_spec({**copy.deepcopy(MINIMAL), "budget": {"bits": 8}})
    assert only.budget.flops is None and only.budget.bits == 8
    assert _refused(_spec(budget={"bits": 33})) == (
        "spec: budget.bits: must be <= model.bits = 32 (the base code length), got 33"
    )
    assert _refused(_spec(budget={"bits": 0})) == "spec: budget.bits: must be in [1, 4096], got 0"
    assert _refused(_spec(budget={"bits": 16}, finetune={"distill": 0.5})).startswith(
        "spec: finetune.distill: cannot distil from the unpruned codes when budget.bits"
    )
    cls = {"model": {"zoo": "resnet20"}, "data": {"dataset": "digits"}, "task": "classification"}
    assert _refused({**cls, "budget": {"flops": 0.5, "bits": 8}}) == (
        "spec: budget.bits: a code-length budget is a retrieval option, got 8"
    ) or "budget.bits" in _refused({**cls, "budget": {"flops": 0.5, "bits": 8}})
    assert _refused({**cls, "budget": {"flops": 0.5}, "code": {"lengths": [8]}}).startswith("spec: code:")
