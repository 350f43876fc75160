"""A joint study's CSQ finalist: trained towards the base's centres of its kept bits, and its kept
bits never make two class centres coincide (the strategy's count, and so its cost, unchanged)."""

from __future__ import annotations

import collections

import torch

from acpsearch.codelength import base_centres, min_centre_distance
from acpsearch.codelength.layer import column_keys
from acpsearch.graph import ChannelGraph
from acpsearch.hashing import create_model
from acpsearch.pruning import PruningStrategy, apply_record, make_record
from acpsearch.service.code_finalist import centre_aware_code

X0 = torch.zeros(1, 1, 8, 8)


def _graph_preferring(bits: list[int]) -> tuple[torch.nn.Module, ChannelGraph]:
    torch.manual_seed(0)
    model = create_model("resnet20", bits=32, in_channels=1, image_size=8).eval()
    with torch.no_grad():  # the L1 criterion ranks exactly these bits first
        model.hash_layer.weight.fill_(0.01)
        model.hash_layer.weight[bits] = 1.0
    return model, ChannelGraph.from_model(model, X0, prune_code=True)


def test_kept_bits_move_off_coinciding_centres_and_the_loss_keeps_base_centres() -> None:
    c = base_centres("csq", 32, 10)
    assert c is not None
    by_key = collections.defaultdict(list)
    for j, (key, _) in enumerate(column_keys(c)):
        by_key[key].append(j)
    dup = sorted(j for pair in [v for v in by_key.values() if len(v) == 2][:4] for j in pair)  # 4 columns, twice
    model, g = _graph_preferring(dup)
    ratios = {gr.name: 1.0 for gr in g.groups}
    ratios[g.code_group] = 8 / 32
    strategy = PruningStrategy(g, ratios)
    record = make_record(strategy)
    assert record["groups"][g.code_group]["kept"] == dup and min_centre_distance(c[:, dup]) == 0

    new, crit = centre_aware_code(g, strategy, record, "csq", 10)
    kept = new["groups"][g.code_group]["kept"]
    assert len(kept) == 8 and min_centre_distance(c[:, kept]) > 0
    assert crit is not None and torch.equal(crit.centers, c[:, kept].float())
    assert record["groups"][g.code_group]["kept"] == dup  # the input record is not changed
    assert new["cost"] == record["cost"]
    with torch.no_grad():
        assert apply_record(model, new, X0)(X0).shape == (1, 8)


def test_distinct_choice_kept_and_nothing_for_pair_losses_or_full_codes() -> None:
    c = base_centres("csq", 32, 10)
    assert c is not None
    model, g = _graph_preferring(list(range(16)))  # the first 16 columns are distinct
    ratios = {gr.name: 1.0 for gr in g.groups}
    ratios[g.code_group] = 0.5
    strategy = PruningStrategy(g, ratios)
    record = make_record(strategy)
    new, crit = centre_aware_code(g, strategy, record, "csq", 10)
    assert new is record and crit is not None  # no guard needed: the L1 choice stands
    assert torch.equal(crit.centers, c[:, record["groups"][g.code_group]["kept"]].float())
    assert centre_aware_code(g, strategy, record, "dpsh", 10) == (record, None)
    full = PruningStrategy(g, {gr.name: 1.0 for gr in g.groups})
    assert centre_aware_code(g, full, make_record(full), "csq", 10)[1] is None
