"""The joint search's service side: a spec with budget.bits builds a space that searches the code
length; candidates record their bits and the bits constraint; the report's front is exactly the
non-dominated candidates over FLOPs ratio, bits and score; the report shows mAP against bits."""

from __future__ import annotations

import copy
import random

import optuna
import pytest
import torch

from acpsearch.errors import SpecError
from acpsearch.hashing import create_model
from acpsearch.service import keys
from acpsearch.service.code_report import code_figures, code_markdown, pareto_front
from acpsearch.service.context import StudyRun
from acpsearch.service.inputs import make_space
from acpsearch.service.spec import parse_spec

SPEC = {
    "model": {"zoo": "resnet20", "bits": 16},
    "data": {"dataset": "digits"},
    "budget": {"flops": 0.5, "bits": 8},
    "space": {"bounds": {"hash_layer": [0.25, 1.0]}},
}


def _run(spec_dict):
    from acpsearch.graph import ChannelGraph

    spec = parse_spec(copy.deepcopy(spec_dict))
    torch.manual_seed(0)
    model = create_model("resnet20", bits=16, in_channels=1, image_size=8).eval()
    ex = torch.zeros(1, 1, 8, 8)
    graph = ChannelGraph.from_model(model, ex, prune_code=spec.budget.bits is not None)
    space = make_space(spec, graph, model, ex)
    fields = dict(storage=None, url="", study=None, spec=spec, artifacts=None, store=None, reporter=None)
    return StudyRun(**fields, workers=1, allow=None, splits=None, graph=graph, space=space)


def test_spec_budget_bits_searches_the_code_and_candidates_record_it():
    from acpsearch.service.candidates import candidate_attrs

    run = _run(SPEC)
    assert run.graph.code_group == "hash_layer" and "hash_layer" in run.space.active
    assert run.space.bounds["hash_layer"] == (0.25, 1.0)
    strategies = run.space.sample_many(40, random.Random(0))
    attrs = candidate_attrs(run, strategies)
    assert {a[keys.T_BITS] for a in attrs} == {4, 8}
    assert all(a["constraints"]["bits"] == a[keys.T_BITS] - 8 <= 0 for a in attrs)
    assert all(a[keys.T_FLOPS_RATIO] <= 0.5 for a in attrs)
    # without budget.bits: no code group, no bits attribute, the code stays whole
    with pytest.raises(SpecError, match="'hash_layer': the hash layer's outputs are searched only with budget.bits"):
        _run({**SPEC, "budget": {"flops": 0.5}})
    plain = _run({**SPEC, "budget": {"flops": 0.5}, "space": {}})
    assert plain.graph.code_group is None
    assert keys.T_BITS not in candidate_attrs(plain, plain.space.sample_many(3, random.Random(0)))[0]


def test_front_is_the_non_dominated_candidates():
    study = optuna.create_study(direction="maximize")
    # (flops ratio, bits, score): 1 and 2 trade FLOPs for bits, 3 is dominated by 1, 4 by 2,
    # 5 is infeasible, 6 has the best score at most FLOPs and bits
    rows = [(0.3, 8, 0.5), (0.5, 4, 0.5), (0.4, 8, 0.4), (0.5, 8, 0.45), (0.1, 4, 0.9), (0.5, 8, 0.6)]
    for i, (f, b, s) in enumerate(rows):
        attrs = {keys.T_FLOPS_RATIO: f, keys.T_BITS: b, keys.T_FEASIBLE: i != 4}
        study.add_trial(optuna.trial.create_trial(value=s, user_attrs=attrs))
    front = pareto_front(study)
    assert [r["trial"] for r in front] == [0, 1, 5]
    assert front[0] == {"trial": 0, "flops_ratio": 0.3, "bits": 8, "score": 0.5}
    plain = optuna.create_study(direction="maximize")
    plain.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={keys.T_FLOPS_RATIO: 0.5}))
    assert pareto_front(plain) == []


def test_report_sections_and_figures():
    rep = {
        "spec": {"code": {"method": "merge", "criterion": "auto"}},
        "code_lengths": [
            {"bits": 12, "criterion": "balance", "val_map": 0.8, "test_map": 0.79, "test_map_topk": 0.81},
            {"bits": 8, "criterion": "random", "val_map": 0.7, "test_map": 0.69, "test_map_topk": 0.7},
        ],
        "front": [{"trial": 3, "flops_ratio": 0.45, "bits": 8, "score": 0.61}],
    }
    md = "\n".join(code_markdown(rep))
    assert "## Shorter codes (winner, merge, criterion auto)" in md
    assert "| 12 | balance | 0.8000 | 0.7900 | 0.8100 | 1.5 |" in md
    assert "| 3 | 0.450 | 8 | 0.6100 |" in md
    figs = code_figures(rep)
    assert len(figs) == 2
    assert list(figs[0].data[0].x) == [12, 8] and list(figs[0].data[0].y) == [0.79, 0.69]
    assert code_markdown({"code_lengths": [], "front": []}) == [] and code_figures({}) == []
