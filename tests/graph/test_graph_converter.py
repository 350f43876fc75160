"""ChannelGraph structure: coupling groups per op family, frozen dims, hash layer, exports, speed."""

from __future__ import annotations

import time

import archs
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import acpsearch as acp
from acpsearch.graph.features import FEATURE_NAMES

X = torch.randn(*archs.INPUT, generator=torch.Generator().manual_seed(2))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def graph(name):
    m = archs.make(name)
    return m, acp.ChannelGraph.from_model(m, X)


def group_with(g, module):
    """The group of `module`'s OUTPUT channels (its `modules` list also names consumers)."""
    nd = next(n for n in g.nodes if n.name == module)
    assert len(nd.out_groups) == 1, (module, nd.out_groups)
    grp = g.group(nd.out_groups[0])
    assert module in grp.modules
    return grp


def test_residual_chain_is_one_group_and_skip_edges_exist():
    m, g = graph("resnet_cifar")
    chain = group_with(g, "conv1")
    assert {"bn1", "layers.0.conv1", "layers.0.conv2", "layers.0.bn2", "layers.1.conv2"} <= set(chain.modules)
    stage2 = group_with(g, "layers.2.downsample.1")  # projection shortcut joins the stage-2 chain
    assert "layers.2.conv2" in stage2.modules and "layers.3.conv2" in stage2.modules
    G = g.to_networkx()
    adds = [n for n, a in G.nodes(data=True) if a["type"] == "add"]
    assert len(adds) == 6 and all(G.in_degree(n) == 2 for n in adds)
    assert len(g.groups) == 3 + 6  # 3 stage chains + 6 block-internal groups


def test_concat_inputs_mapped_by_index():
    m, g = graph("densenet")
    nd = next(n for n in g.nodes if n.name == "features.3.denselayer2.norm1")
    assert nd.in_groups == ["features.0", "features.3.denselayer1.conv2"]
    s = acp.PruningStrategy(g, {"features.3.denselayer1.conv2": 0.5}, round_to=1)
    p = acp.prune(m, s, X)
    assert p.features[3].denselayer2.norm1.num_features == 8 + 2
    assert p.features[3].denselayer2.conv1.in_channels == 10


def test_depthwise_and_squeeze_excitation_coupling():
    m, g = graph("mobilenet_v3")
    grp = group_with(g, "features.4.block.0.0")
    assert {
        "features.4.block.1.0",
        "features.4.block.1.1",
        "features.4.block.2.fc2",
        "features.4.block.2.fc1",
        "features.4.block.3.0",
    } <= set(grp.modules)
    se_hidden = group_with(g, "features.4.block.2.fc1")
    p = acp.prune(m, acp.PruningStrategy(g, {grp.name: 0.5, se_hidden.name: 0.5}), X)
    blk = p.features[4].block
    assert blk[1][0].groups == blk[1][0].in_channels == blk[1][0].out_channels == 24
    assert blk[2].fc2.out_channels == 24 and blk[2].fc1.out_channels == 8


def test_flatten_into_linear_prunes_feature_blocks():
    m, g = graph("vgg_tuple")
    grp = group_with(g, "features.4")
    assert "classifier.0" in grp.modules and grp.channels == 16
    p = acp.prune(m, acp.PruningStrategy(g, {grp.name: 0.5}), X)
    assert p.classifier[0].in_features == 8 * 4 * 4


def test_literal_view_and_unknown_ops_freeze():
    m, g = graph("vgg_literal_view")
    assert [gr.name for gr in g.groups] == ["conv1"]  # conv2 feeds view(-1, 16*4*4)

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3, padding=1)
            self.b = nn.Conv2d(3, 16, 3, padding=1)
            self.c = nn.Conv2d(16, 16, 3, padding=1)
            self.d = nn.Conv2d(16, 16, 1)
            self.fc = nn.Linear(24, 4)

        def forward(self, x):
            y = torch.roll(self.a(x), 1, dims=1)  # unknown op on channels
            z = self.b(x) + torch.ones(1, 16, 1, 1)  # constant with literal channels
            u, v = self.c(y + z).split([8, 8], dim=1)  # literal split sizes
            w = self.d(z)  # z frozen, w's own channels stay prunable
            return self.fc(torch.cat([u, w[:, :8], v[:, :8]], 1).mean([2, 3]))

    o = Odd()
    g2 = acp.ChannelGraph.from_model(o, X)
    assert [gr.name for gr in g2.groups] == []  # w is sliced with a literal: frozen as well
    assert g2.cost() == acp.measure_cost(o, X)


def test_dynamic_slice_and_attention_pooling_freeze_only_what_they_touch():
    class Dyn(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3, padding=1)
            self.b = nn.Conv2d(8, 16, 3, padding=1)
            self.c = nn.Conv2d(16, 16, 1)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            y = self.a(x)
            y = self.b(y[:, : y.size(1) // 2])  # slice bound computed from the shape
            z = self.c(F.relu(y))
            w = torch.softmax(z.flatten(2), dim=-1)  # softmax over space: channels untouched
            return self.fc((w * z.flatten(2)).sum(-1))

    m = Dyn()
    g = acp.ChannelGraph.from_model(m, X)
    assert [gr.name for gr in g.groups] == ["b", "c"]
    s = acp.PruningStrategy.uniform(g, 0.5)
    assert acp.measure_cost(acp.prune(m, s, X), X) == g.cost(s)


def test_channel_shuffle_frozen_branches_prunable():
    m, g = graph("shufflenet_v2")
    names = {gr.name for gr in g.groups}
    assert "stage2.1.branch2.0" in names and "conv5.0" in names
    assert not any("branch1.2" in gr.name for gr in g.groups)  # branch outputs go through the shuffle


def test_grouped_conv_sets_divisor_and_concat_fed_grouped_conv_is_frozen():
    m, g = graph("resnext")
    grp = group_with(g, "body.1.conv2")
    assert grp.divisor == 4

    class CatGrouped(nn.Module):  # torch-pruning crashes on this pattern
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(3, 8, 1)
            self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(self.g(torch.cat([self.a(x), self.b(x)], 1)).mean([2, 3]))

    cg = CatGrouped()
    g2 = acp.ChannelGraph.from_model(cg, X)
    assert [(gr.name, gr.divisor) for gr in g2.groups] == [("g", 4)]  # only the output side
    p = acp.prune(cg, acp.PruningStrategy(g2, {"g": 0.5}), X)
    assert p.g.out_channels == 8 and p.g.groups == 4 and p.fc.in_features == 8


def test_convnext_layer_scale_and_layernorm():
    m, g = graph("convnext")
    chain = g.group(next(gr.name for gr in g.groups if "stages.0.0.gamma" in gr.modules))
    assert {
        "stages.0.0.dwconv",
        "stages.0.0.norm",
        "stages.0.0.pwconv2",
        "downsample_layers.0.1.weight",
        "downsample_layers.1.0.bias",
    } <= set(chain.modules)
    p = acp.prune(m, acp.PruningStrategy(g, {chain.name: 0.5}), X)
    blk = p.stages[0][0]
    assert blk.gamma.shape == (4,) and blk.norm.normalized_shape == (4,) and blk.dwconv.groups == 4
    assert p.downsample_layers[1][0].weight.shape == (4,)


def test_binary_conv_subclass_is_a_leaf():
    m, g = graph("binary_net")
    nodes = {n.name: n for n in g.nodes}
    assert nodes["blocks.0.conv"].op == "BinaryConv2d" and nodes["blocks.0.conv"].type == "conv"
    assert nodes["down"].flops > 0


def test_hash_layer_detection():
    assert graph("squeezenet")[1].hash_layer == "classifier.1"  # a Conv produces the code
    assert graph("vgg_tuple")[1].hash_layer == "hash"  # tuple output: last element
    assert graph("mobilenet_v2")[1].hash_layer == "classifier.1"


def test_shared_module_and_transposed_conv():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.body = nn.Conv2d(8, 8, 3, padding=1)  # called twice
            self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = self.body(F.relu(self.body(F.relu(self.stem(x)))))
            return self.fc(self.up(x).mean([2, 3]))

    m = Shared()
    g = acp.ChannelGraph.from_model(m, X)
    assert g.cost() == acp.measure_cost(m, X)
    assert [gr.name for gr in g.groups] == []  # stem == body in == body out, consumed by a frozen ConvTranspose
    m.up = nn.Conv2d(8, 8, 1)
    g = acp.ChannelGraph.from_model(m, X)
    assert len(g.groups) == 2
    p = acp.prune(m, acp.PruningStrategy.uniform(g, 0.5), X)
    assert acp.measure_cost(p, X) == g.cost(acp.PruningStrategy.uniform(g, 0.5))


def test_node_records_and_networkx_attributes():
    m, g = graph("resnet_cifar")
    nd = next(n for n in g.nodes if n.name == "layers.2.conv1")
    assert (nd.type, nd.kernel, nd.stride, nd.groups) == ("conv", 3, 2, 1)
    assert nd.in_shape == (2, 8, 16, 16) and nd.out_shape == (2, 16, 8, 8)
    assert nd.flops == 8 * 8 * 16 * 8 * 9 and nd.params == 16 * 8 * 9
    assert sum(n.flops for n in g.nodes) == g.cost().flops
    G = g.to_networkx()
    a = G.nodes["layers.2.conv1"]
    assert {"type", "channels", "kernel", "stride", "groups", "flops", "params", "in_groups", "out_groups"} <= set(a)


def test_to_pyg_features():
    m, g = graph("resnet_cifar")
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    d0 = g.to_pyg()
    assert d0.x.shape == (len(g.nodes), len(FEATURE_NAMES)) and d0.x.dtype == torch.float32
    assert torch.all(d0.x[:, col["keep_out"]] == 1) and torch.all(d0.x[:, col["importance_out"]] == 1)
    grp = group_with(g, "layers.0.conv1")
    s = acp.PruningStrategy(g, {grp.name: 0.5})
    d1 = g.to_pyg(s)
    i = next(n.index for n in g.nodes if n.name == "layers.0.conv1")
    j = next(n.index for n in g.nodes if n.name == "layers.0.conv2")
    assert d1.x[i, col["keep_out"]] == 0.5 and d1.x[j, col["keep_in"]] == 0.5 and d1.x[j, col["keep_out"]] == 1
    assert 0.5 < d1.x[i, col["importance_out"]] < 1.0
    rnd = g.to_pyg(acp.PruningStrategy(g, {grp.name: 0.5}, criterion="random"))
    assert rnd.x[i, col["importance_out"]] <= d1.x[i, col["importance_out"]]
    assert rnd.x[i, col["criterion_random"]] == 1 and d1.x[i, col["criterion_l1"]] == 1
    assert d1.x[i, col["flops_kept"]] == pytest.approx(0.5)


def _resnet56():
    try:
        from acpsearch.hashing import create_model

        return create_model("resnet56", bits=32, in_channels=1, image_size=28)
    except Exception:  # pragma: no cover - zoo not available
        return archs.ResNetCifar(depth=56, width=16, in_channels=1, bits=32)


def test_resnet56_speed_targets():
    m = _resnet56()
    x = torch.randn(1, 1, 28, 28)
    g = acp.ChannelGraph.from_model(m, x)
    rng = np.random.default_rng(0)
    S = [acp.PruningStrategy.from_vector(g, rng.uniform(0.2, 1, len(g.groups))) for _ in range(20)]
    g.to_pyg(S[0])  # static part + importance orders, computed once

    def per_call(fn, n):
        t = time.perf_counter()
        for i in range(n):
            fn(S[i % len(S)])
        return (time.perf_counter() - t) / n

    R = rng.uniform(0.2, 1, (10, len(g.groups)))
    t_cost = per_call(g.cost, 200)
    t_pyg = per_call(g.to_pyg, 100)
    t0 = time.perf_counter()
    for _ in range(100):
        g.cost_batch(R)
    t_batch = (time.perf_counter() - t0) / 100
    # targets: cost <= 1 ms, to_pyg <= 5 ms, cost_batch(10) well under 1 ms; x3 slack for a loaded CI box
    assert t_cost < 3e-3 and t_pyg < 15e-3 and t_batch < 3e-3, (t_cost, t_pyg, t_batch)
