"""The spec's finalist options: finetune.diversity, finetune.halving, finetune.epoch_budget."""

from __future__ import annotations

import copy

import pytest

from acpsearch.errors import SpecError
from acpsearch.service.spec import parse_spec
from acpsearch.service.spec.selection import planned_epochs

MINIMAL = {"model": {"zoo": "resnet20"}, "data": {"dataset": "digits"}, "budget": {"flops": 0.5}}


def _ft(**ft):
    return parse_spec({**copy.deepcopy(MINIMAL), "finetune": ft}).finetune


def test_defaults_keep_todays_finalists():
    ft = _ft()
    assert ft.diversity is None and ft.halving is None and ft.epoch_budget is None
    assert planned_epochs(ft) == 4 * 5


def test_halving_and_diversity_parse_with_defaults():
    ft = _ft(top=16, epochs=8, diversity={}, halving={}, epoch_budget=64)
    assert ft.diversity.pool == 64
    assert (ft.halving.eta, ft.halving.min_epochs, ft.halving.final, ft.halving.refit) == (2, 1, 2, False)
    assert planned_epochs(ft) == 64  # 16x1 + 8x2 + 4x4 + 2x8


@pytest.mark.parametrize(
    ("ft", "message"),
    [
        ({"top": 16, "epochs": 3, "halving": {}}, "spec: finetune.halving: 4 rungs (16 -> 8 -> 4 -> 2 finalists) need"),
        ({"top": 16, "epochs": 8, "halving": {}, "epoch_budget": 63}, "spec: finetune.epoch_budget: the halving"),
        ({"top": 4, "epochs": 5, "epoch_budget": 19}, "spec: finetune.epoch_budget: finetune.top x finetune.epochs"),
        ({"halving": {"eta": 1}}, "spec: finetune.halving.eta: must be in [2, 16], got 1"),
        ({"diversity": {"pool": 0}}, "spec: finetune.diversity.pool"),
        ({"top": 8, "diversity": {"pool": 7}}, "spec: finetune.diversity.pool: must be >= finetune.top (8)"),
        ({"halving": {"rate": 2}}, "spec: finetune.halving.rate"),
    ],
)
def test_bad_selection_options_name_the_field(ft, message):
    with pytest.raises(SpecError) as exc:
        _ft(**ft)
    assert str(exc.value).startswith(message), str(exc.value)
    assert "\n" not in str(exc.value)


def test_sparsity_parses_and_is_refused_for_a_classifier():
    sp = _ft(sparsity={"steps": 50}).sparsity
    assert (sp.steps, sp.weight, sp.lr) == (50, 1e-3, 1e-3)
    with pytest.raises(SpecError, match=r"^spec: finetune.sparsity.weight: must be in \(0, 100\], got 0"):
        _ft(sparsity={"weight": 0.0})
    d = {**copy.deepcopy(MINIMAL), "task": "classification", "finetune": {"sparsity": {}}}
    with pytest.raises(SpecError, match=r"^spec: finetune.sparsity: a retrieval option"):
        parse_spec(d)
