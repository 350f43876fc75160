"""The code length as a search dimension: a graph built with prune_code has the hash layer's
outputs as a group; pruning it slices the code exactly; budget.bits caps it in the space; the
encoder's features see its kept fraction; the functional signal compares codes of any length."""

from __future__ import annotations

import collections
import random

import numpy as np
import optuna
import pytest
import torch

from acpsearch.errors import BudgetError
from acpsearch.graph import ChannelGraph
from acpsearch.graph.features import STATIC_FEATURES, STRATEGY_FEATURES
from acpsearch.hashing import create_model
from acpsearch.pruning import (
    FunctionalProbe,
    PruningStrategy,
    apply_record,
    make_record,
    measure_cost,
    neighbour_agreement,
    prune,
)
from acpsearch.pruning.probe import model_codes
from acpsearch.search.space import Budget, DynamicSpace

KW = dict(bits=16, in_channels=1, image_size=8)
X0 = torch.zeros(1, 1, 8, 8)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = create_model("resnet20", **KW).eval()
    return model, ChannelGraph.from_model(model, X0, prune_code=True)


def test_code_group_only_with_prune_code(net):
    model, g = net
    plain = ChannelGraph.from_model(model, X0)
    assert plain.code_group is None
    assert g.code_group == "hash_layer" and g.group("hash_layer").channels == 16
    assert len(g.groups) == len(plain.groups) + 1
    assert g.cost() == plain.cost()  # the unpruned network costs the same either way


def test_pruning_the_code_keeps_exactly_the_kept_bits(net):
    model, g = net
    s = PruningStrategy(g, {"hash_layer": 0.5})
    short = prune(model, s, X0)
    X = torch.randn(64, 1, 8, 8)
    keep = s.kept_indices()["hash_layer"]
    assert len(keep) == 8
    with torch.no_grad():
        assert torch.allclose(short(X), model(X)[:, keep], atol=1e-6)
    assert torch.equal(model_codes(short, X), model_codes(model, X)[:, keep])
    # hash layer cost: 64 inputs x 8 fewer outputs (+ 8 biases) less than the unpruned net
    base, c = g.cost(), g.cost(s)
    assert (base.flops - c.flops, base.params - c.params) == (64 * 8, 64 * 8 + 8)
    assert measure_cost(short, X0) == c
    rec = make_record(s)
    assert rec["prune_code"] is True
    replay = apply_record(create_model("resnet20", **KW), rec, X0)
    replay.load_state_dict(short.state_dict())
    replay.eval()
    with torch.no_grad():
        assert replay(X).shape == (64, 8)


def test_budget_bits_caps_the_searched_code_length(net):
    _, g = net
    sp = DynamicSpace(g, Budget(flops=0.5, bits=8))
    assert "hash_layer" in sp.active and sp.kinds == ["flops", "bits"]
    samples = sp.sample_many(150, random.Random(0))
    bits = collections.Counter(s.kept["hash_layer"] for s in samples)
    assert set(bits) <= {4, 8} and len(bits) == 2  # never above the cap, more than one length
    flops = [g.cost(s).flops / g.cost().flops for s in samples]
    assert max(flops) <= 0.5 and min(flops) >= 0.4  # the cap on bits never lets FLOPs go to waste
    assert sp.smallest_reachable()["bits"] == 4.0
    study = optuna.create_study(sampler=optuna.samplers.NSGAIISampler(seed=0))
    for _ in range(10):
        t = study.ask()
        s = sp.suggest(t)
        assert s.kept["hash_layer"] <= 8 and "keep/hash_layer" in t.params
        study.tell(t, 0.0)


def test_code_stays_whole_without_budget_bits(net):
    model, g = net
    sp = DynamicSpace(g, Budget(flops=0.5))
    assert "hash_layer" in sp.fixed and "hash_layer" not in sp.active
    assert all(s.kept["hash_layer"] == 16 for s in sp.sample_many(20, random.Random(1)))
    with pytest.raises(BudgetError, match="budget.bits: the hash layer's outputs are not a prunable group"):
        DynamicSpace(ChannelGraph.from_model(model, X0), Budget(flops=0.5, bits=8))
    with pytest.raises(BudgetError, match="budget.bits=2 is below the shortest reachable code 4 bits"):
        DynamicSpace(g, Budget(flops=0.5, bits=2))
    with pytest.raises(BudgetError, match="exceeds the code length 16"):
        DynamicSpace(g, Budget(flops=0.5, bits=17))


def test_features_see_the_kept_fraction_of_the_hash_node(net):
    _, g = net
    d = g.to_pyg(PruningStrategy(g, {"hash_layer": 0.25}))
    keep_out = d.x[:, len(STATIC_FEATURES) + STRATEGY_FEATURES.index("keep_out")]
    is_hash = d.x[:, STATIC_FEATURES.index("is_hash")] == 1
    assert is_hash.sum() == 1
    assert float(keep_out[is_hash]) == pytest.approx(0.25)
    assert float(keep_out[~is_hash].min()) == 1.0


def test_neighbour_agreement_is_length_invariant():
    gen = torch.Generator().manual_seed(0)
    codes = torch.where(torch.randn(200, 12, generator=gen) >= 0, 1.0, -1.0)
    assert neighbour_agreement(codes, codes) == pytest.approx(1.0)
    # the same code written twice (24 bits) or with its bits permuted ranks every item the same
    assert neighbour_agreement(torch.cat([codes, codes], 1), codes) == pytest.approx(1.0)
    assert neighbour_agreement(codes[:, torch.randperm(12, generator=gen)], codes) == pytest.approx(1.0)
    other = torch.where(torch.randn(200, 12, generator=gen) >= 0, 1.0, -1.0)
    unrelated = neighbour_agreement(other, codes)
    assert unrelated < 0.2
    half = neighbour_agreement(codes[:, :6], codes)
    assert unrelated < half < 1.0


def test_probe_compares_shortened_codes_by_neighbours(net):
    model, g = net
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(300, 1, 8, 8, generator=gen)
    probe = FunctionalProbe(model, X0, X[:200], X[200:], calib_batch_size=50)
    full = PruningStrategy(g, {})
    short = PruningStrategy(g, {"hash_layer": 0.5})
    scores = probe.agreement([full, short])
    assert scores[0] == pytest.approx(1.0)
    assert 0.0 < scores[1] < 1.0
    assert np.isfinite(scores).all()
