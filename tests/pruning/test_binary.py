"""The pruner on binary networks: per-output scales (mean |W| over the kept inputs) are baked at
prune time, so the pruned network reproduces the network with the pruned channels at zero; the
measured cost (binary MACs included) is the predicted one; l1 ranks binary groups by BN scale;
`budget.ops` in the space and the spec; latency budgets refused."""

from __future__ import annotations

import copy
import random

import bnn_styles
import numpy as np
import pytest
import torch
from torch import nn

import acpsearch as acp
from acpsearch.errors import BudgetError, SpecError
from acpsearch.hashing import create_model
from acpsearch.pruning import channel_importance
from acpsearch.search.space import Budget, DynamicSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

X8 = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
XS = torch.randn(*bnn_styles.INPUT, generator=torch.Generator().manual_seed(0))


def _bnn() -> nn.Module:
    torch.manual_seed(0)
    m = create_model("bnn_resnet20", 16, in_channels=1, image_size=8)
    for mod in m.modules():  # non-trivial norms: pruning the wrong channels would show
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


NETS = {"bnn_resnet20": (_bnn, X8), "osh_style": (bnn_styles.make_style_net, XS)}


def _zero_channels(model: nn.Module, g: acp.ChannelGraph, idx: dict[str, np.ndarray]) -> nn.Module:
    """Copy of `model` whose pruned channels are zero: every tensor axis that produces a channel
    (axis 0 of conv weights, norm scales and shifts) is zeroed, so the channel's activation is 0
    (sign(0) = 0); the consumers' weights are left as they are."""
    z = copy.deepcopy(model)
    V = g.analysis.vars
    tensors = dict(z.named_parameters())
    with torch.no_grad():
        for tname, axes in g.analysis.bindings.items():
            if tname not in tensors or 0 not in axes:
                continue
            off = 0
            for v, rep in axes[0]:
                r = V.find(v)
                gi = g.group_of_root.get(r)
                if gi is not None:
                    keep = set(idx[g.groups[gi].name].tolist())
                    for ch in range(V.size[r]):
                        if ch not in keep:
                            tensors[tname].narrow(0, off + ch * rep, rep).zero_()
                off += V.size[r] * rep
    return z


def _positions(g: acp.ChannelGraph, idx: dict[str, np.ndarray], segs: tuple) -> torch.Tensor:
    """Kept positions along a tensor axis made of `segs` (repeat 1)."""
    V, parts, off = g.analysis.vars, [], 0
    for v, _ in segs:
        r = V.find(v)
        gi = g.group_of_root.get(r)
        parts.append(off + (np.sort(idx[g.groups[gi].name]) if gi is not None else np.arange(V.size[r])))
        off += V.size[r]
    return torch.from_numpy(np.concatenate(parts)).long()


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_binary_network_reproduces_the_zeroed_one(net: str, seed: int) -> None:
    make, x = NETS[net]
    model = make()
    g = acp.ChannelGraph.from_model(model, x)
    s = acp.PruningStrategy.from_vector(g, np.random.default_rng(seed).uniform(0.2, 0.9, len(g.groups)))
    idx = s.kept_indices()
    pruned = acp.prune(model, s, x)
    zeroed = _zero_channels(model, g, idx)
    with torch.no_grad():
        a, b, full = pruned(x), zeroed(x), model(x)
    assert (b - full).abs().max() > 1e-2  # the zeroed channels matter
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # without the baked scales (the latent weights merely sliced) the outputs differ
    naive = copy.deepcopy(pruned)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for pname in g.analysis.derived.values():
            axes = g.analysis.bindings[pname]
            w = params[pname].index_select(0, _positions(g, idx, axes[0])).index_select(1, _positions(g, idx, axes[1]))
            naive.get_parameter(pname).copy_(w)
        assert (naive(x) - b).abs().max() > 1e-3
    # the measured cost, binary MACs included, is the predicted one
    cost = acp.measure_cost(pruned, x)
    assert cost == g.cost(s) and 0 < cost.bops < g.cost().bops


def test_binary_pruning_record_replays() -> None:
    model = _bnn()
    g = acp.ChannelGraph.from_model(model, X8)
    s = acp.PruningStrategy.uniform(g, 0.5)
    pruned = acp.prune(model, s, X8)
    rec = acp.pruning.make_record(s, model)
    assert rec["cost"]["bops"] == g.cost(s).bops
    again = acp.pruning.apply_record(model, rec, X8)
    with torch.no_grad():
        torch.testing.assert_close(again(X8), pruned(X8), rtol=0, atol=0)


def test_l1_ranks_binary_groups_by_bn_scale() -> None:
    model = _bnn()
    g = acp.ChannelGraph.from_model(model, X8)
    for name in ("layer1.0.conv1", "layer3.2.conv1"):
        np.testing.assert_array_equal(channel_importance(g, name, "l1"), channel_importance(g, name, "bn_scale"))
    f = create_model("resnet20", 16, in_channels=1, image_size=8).eval()
    for mod in f.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
    gf = acp.ChannelGraph.from_model(f, X8)
    assert not np.array_equal(
        channel_importance(gf, "layer1.0.conv1", "l1"), channel_importance(gf, "layer1.0.conv1", "bn_scale")
    )


def test_ops_budget_in_the_space() -> None:
    g = acp.ChannelGraph.from_model(_bnn(), X8)
    sp = DynamicSpace(g, Budget(ops=0.5))
    rows = sp.sample_ratios(20, random.Random(0))
    ops = g.ops_batch(rows) / g.cost().ops
    assert (ops <= 0.5 + 1e-12).all() and (ops >= 0.5 * (1 - sp.slack) - 0.05).mean() > 0.5
    for r in rows[:3]:
        s = acp.PruningStrategy.from_vector(g, r)
        assert g.cost(s).ops == pytest.approx(float(g.ops_batch(r[None, :])[0]))
    assert sp.describe()["budget"] == {"flops": None, "params": None, "latency_ms": None, "ops": 0.5}
    assert Budget(flops=0.5).to_dict() == {"flops": 0.5, "params": None, "latency_ms": None}
    with pytest.raises(BudgetError, match="smallest reachable OPs"):
        DynamicSpace(g, Budget(ops=0.01))
    with pytest.raises(BudgetError, match=r"budget.ops=1.5"):
        DynamicSpace(g, Budget(ops=1.5))
    with pytest.raises(BudgetError, match="float emulation"):
        DynamicSpace(g, Budget(latency_ms=1.0))


def test_ops_budget_in_the_spec() -> None:
    from acpsearch.service.spec.study_spec import parse_spec

    base = {"name": "b", "model": {"zoo": "bnn_resnet20", "bits": 16}, "data": {"dataset": "digits"}}
    assert parse_spec({**base, "budget": {"ops": 0.5}}).budget.ops == 0.5
    with pytest.raises(SpecError, match="budget.ops"):
        parse_spec({**base, "budget": {"ops": 1.5}})
