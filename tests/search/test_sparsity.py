"""Group sparsity before the cut: the removed channels' group norms shrink, the kept ones do not
collapse, and the network is then cut by the channel choice made before the penalty."""

from __future__ import annotations

import torch

from acpsearch.graph import ChannelGraph
from acpsearch.hashing import create_model, load_dataset, make_splits
from acpsearch.pruning import PruningStrategy, apply_record, make_record, measure_cost
from acpsearch.search.sparsity import group_norms, removed_slices, sparsify


def _kept_norms(graph, model, kept):
    """The group norms of the channels `kept` keeps (the complement's complement)."""
    flipped = {
        g.name: torch.tensor([i for i in range(g.channels) if i not in set(kept[g.name].tolist())]).numpy()
        for g in graph.groups
    }
    with torch.no_grad():
        return group_norms(removed_slices(graph, model, flipped))


def test_penalised_groups_shrink_and_the_cut_removes_them():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    splits = make_splits(load_dataset("digits"), query_per_class=10, train_per_class=40, val_per_class=10, seed=0)
    model = create_model("resnet20", bits=16, in_channels=1, image_size=8)
    ex = torch.zeros(1, 1, 8, 8)
    graph = ChannelGraph.from_model(model, ex)
    strategy = PruningStrategy.uniform(graph, 0.5)
    kept = strategy.kept_indices()
    record = make_record(strategy)  # the channel choice before the penalty
    work = create_model("resnet20", bits=16, in_channels=1, image_size=8)
    work.load_state_dict(model.state_dict())
    slices = removed_slices(graph, work, kept)
    assert len(slices) == len(graph.groups)  # every group loses half its channels
    n_removed = sum(g.channels - len(kept[g.name]) for g in graph.groups)
    assert group_norms(slices).shape == (n_removed,)
    kept_before = float(_kept_norms(graph, work, kept).sum())

    res = sparsify(work, graph, kept, splits, steps=40, weight=0.05, lr=3e-3, batch_size=64)
    assert res["steps"] == 40
    shrink_removed = res["norm_after"] / res["norm_before"]
    assert shrink_removed < 0.75, res
    with torch.no_grad():
        assert abs(res["norm_after"] - float(group_norms(removed_slices(graph, work, kept)).sum())) < 1e-3
    kept_after = float(_kept_norms(graph, work, kept).sum())
    # the penalty is on the removed channels only: the kept ones barely move
    assert kept_after / kept_before > shrink_removed + 0.2, (kept_before, kept_after, res)

    # the cut by the choice made before the penalty: the sparsified net at the strategy's cost
    pruned = apply_record(work, record, ex)
    assert measure_cost(pruned, ex).flops == graph.cost(strategy).flops
    assert pruned(torch.zeros(2, 1, 8, 8)).shape == (2, 16)
