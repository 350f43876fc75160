"""The converter on binary networks: both BNN coding styles (comparison-mask sign estimators, a
plain module calling F.conv2d on a transformed weight) give the right groups, binary MACs are
counted apart (predicted == measured), and a network without a prunable group is refused."""

from __future__ import annotations

import bnn_styles
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import acpsearch as acp
from acpsearch.errors import UnsupportedModelError
from acpsearch.hashing import create_model
from acpsearch.hashing.binary import BinaryConv2d
from acpsearch.search.space import Budget, DynamicSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

X8 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
XS = torch.randn(*bnn_styles.INPUT, generator=torch.Generator().manual_seed(0))


def _bnn() -> nn.Module:
    torch.manual_seed(0)
    return create_model("bnn_resnet20", 16, in_channels=1, image_size=8).eval()


def test_bnn_resnet20_groups_and_cost() -> None:
    m = _bnn()
    g = acp.ChannelGraph.from_model(m, X8)
    names = {gr.name: gr.channels for gr in g.groups}
    inner = {f"layer{s}.{b}.conv1": c for s, c in ((1, 16), (2, 32), (3, 64)) for b in range(3)}
    stages = {"conv1": 16, "layer2.0.conv2": 32, "layer3.0.conv2": 64}  # the residual streams
    assert names == inner | stages
    c = g.cost()
    assert c == acp.measure_cost(m, X8)
    # the same topology in float: every MAC of resnet20 is here, split into float + binary ones
    f = create_model("resnet20", 16, in_channels=1, image_size=8).eval()
    cf = acp.ChannelGraph.from_model(f, X8).cost()
    assert cf.bops == 0 and cf.binary_params == 0 and cf.to_dict() == {"flops": cf.flops, "params": cf.params}
    assert c.flops + c.bops == cf.flops
    binary = sum(mod.weight.numel() for mod in m.modules() if isinstance(mod, BinaryConv2d))
    assert (
        c.binary_params
        == binary
        == sum(p.numel() for n, p in m.named_parameters() if n.startswith("layer") and ".conv" in n)
    )
    assert c.model_bits == 32 * (c.params - binary) + binary
    assert c.ops == c.flops + c.bops / 64
    assert c.to_dict()["bops"] == c.bops


def test_mask_sign_and_functional_conv_style_groups() -> None:
    m = bnn_styles.make_style_net()
    g = acp.ChannelGraph.from_model(m, XS)
    assert {gr.name: gr.channels for gr in g.groups} == {
        "stem": 8,
        "block1.conv1": 12,  # the middle channels of each block
        "block1.conv2": 16,  # block 1's output = its shortcut's = block 2's input
        "block2.conv1": 20,
        "block2.conv2": 24,
    }
    c = g.cost()
    assert c == acp.measure_cost(m, XS)
    w = {n: p.numel() for n, p in m.named_parameters()}
    assert c.binary_params == sum(v for n, v in w.items() if ".conv" in n)
    # binary MACs: the four functional convs (sign-valued inputs, +-alpha weights) by hand
    hand = 12 * 12 * 9 * (8 * 12 + 12 * 16) + 6 * 6 * 9 * (16 * 20 + 20 * 24)
    assert c.bops == hand


class _Comparisons(nn.Module):
    """Each comparison / where / cast op alone between two convs: none may freeze the channels."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if self.op == "lt":
            y = y * (y < 0).float()
        elif self.op == "ge":
            y = y * torch.ge(y, 0.5).type(torch.float32)
        elif self.op == "where":
            y = torch.where(y > 0, y, 0.1 * y)
        elif self.op == "method":
            y = y * y.gt(0).to(y.dtype)
        return self.b(y)


@pytest.mark.parametrize("op", ["lt", "ge", "where", "method"])
def test_comparison_ops_are_elementwise(op: str) -> None:
    m = _Comparisons(op).eval()
    g = acp.ChannelGraph.from_model(m, XS)
    assert [gr.name for gr in g.groups] == ["a"]
    s = acp.PruningStrategy.uniform(g, 0.5)
    pruned = acp.prune(m, s, XS)
    assert pruned.a.out_channels == 4 and acp.measure_cost(pruned, XS) == g.cost(s)


class _Grouped(nn.Module):
    """A functional conv with groups > 1: not bound, its channels frozen, its MACs not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(8, 4, 3, 3))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(self.stem(x), self.weight, padding=1, groups=2)
        return self.head(y.mean((2, 3)))


def test_grouped_functional_conv_freezes() -> None:
    m = _Grouped().eval()
    g = acp.ChannelGraph.from_model(m, XS)
    assert not g.groups
    assert g.cost() == acp.measure_cost(m, XS)


def test_no_prunable_group_is_an_unsupported_model_everywhere() -> None:
    m = _Grouped().eval()
    g = acp.ChannelGraph.from_model(m, XS)
    with pytest.raises(UnsupportedModelError, match="no prunable channel group"):
        acp.PruningStrategy.uniform(g, 0.5)
    with pytest.raises(UnsupportedModelError, match="no prunable channel group"):
        g.cost_batch(np.ones((1, 0)))
    with pytest.raises(UnsupportedModelError, match="no prunable channel group"):
        DynamicSpace(g, Budget(flops=0.5))


def test_float_functional_conv_of_a_module_weight_is_counted_as_flops() -> None:
    from test_graph_rules import StdNet  # weight standardisation: a float functional conv

    m = StdNet().eval()
    x = torch.randn(2, 3, 16, 16)
    c = acp.ChannelGraph.from_model(m, x).cost()
    assert c.bops == 0 and c == acp.measure_cost(m, x)
    assert c.flops == 16 * 16 * 9 * (3 * 16 + 16 * 32) + 32 * 8
