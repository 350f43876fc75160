"""Layer rules: a user's own layer made prunable with register_rule, and two public CNN patterns
(ConvNeXt channels-last LayerNorm, MixConv unequal channel chunks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import acpsearch as acp
from acpsearch.errors import UnsupportedModelError
from acpsearch.graph import LayerRule, MacTerm, register_rule

X = torch.randn(2, 3, 32, 32)


def _prunes(model: nn.Module, keep: float = 0.5) -> tuple[acp.ChannelGraph, nn.Module, acp.PruningStrategy]:
    g = acp.ChannelGraph.from_model(model, X)
    s = acp.PruningStrategy.uniform(g, keep=keep)
    pruned = acp.prune(model, s, X)
    assert g.cost(s) == acp.measure_cost(pruned, X)
    with torch.no_grad():
        assert pruned.eval()(X).shape == model.eval()(X).shape
    return g, pruned, s


# ---------------------------------------------------------------- a user's own layer
class StdConv2d(nn.Module):
    """Weight-standardised conv written with F.conv2d (no nn.Conv2d): a functional conv on a weight
    derived from one parameter, which the converter binds without a rule."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.k = cin, cout, k
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) * 0.1)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, padding=self.k // 2)


class StdConvRule(LayerRule):
    kind = "conv"
    out_params = {"weight": 0, "bias": 0}
    in_params = {"weight": 1}

    def resize(self, m, info, n_in, n_out):  # type: ignore[no-untyped-def]
        m.in_channels, m.out_channels = n_in, n_out

    def mac_term(self, m, x_shape, y_shape):  # type: ignore[no-untyped-def]
        return MacTerm(math.prod(y_shape) // y_shape[1] * m.k * m.k)

    def rebuild(self, m, c_in, c_out):  # type: ignore[no-untyped-def]
        return StdConv2d(c_in, c_out, m.k)


class StdNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = StdConv2d(3, 16, 3)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = StdConv2d(16, 32, 3)
        self.head = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.c1(x)))
        x = F.relu(self.c2(x))
        return self.head(x.mean((2, 3)))


def test_register_rule_makes_a_custom_layer_prunable() -> None:
    model = StdNet().eval()
    before = acp.ChannelGraph.from_model(model, X)
    assert {gr.name for gr in before.groups} >= {"c1", "c2"}  # the functional conv rule binds it
    register_rule(StdConv2d, StdConvRule())
    g, pruned, s = _prunes(model)
    assert g.cost() == before.cost()  # the registered rule (a leaf) counts the same MACs
    assert {gr.name for gr in g.groups} >= {"c1", "c2"}
    assert pruned.c1.out_channels == 8 and pruned.c2.in_channels == 8 and pruned.c2.out_channels == 16
    assert g.cost(s).flops < 0.5 * g.cost().flops
    with pytest.raises(TypeError):
        register_rule(StdConv2d, lambda an, node, value: None)  # type: ignore[arg-type]


def test_registered_rule_rebuilds_for_latency() -> None:
    from acpsearch.search.latency import LatencyTable

    register_rule(StdConv2d, StdConvRule())
    g = acp.ChannelGraph.from_model(StdNet().eval(), X)
    tab = LatencyTable.build(g, batch_size=2, fractions=(0.5, 1.0), repeats=1, cache=False)
    assert {g.nodes[i].module for i in tab.nodes} >= {"c1", "c2"}
    assert tab.predict_batch(g, np.full((1, len(g.groups)), 0.5))[0] > 0


def test_register_rule_is_public() -> None:
    assert acp.register_rule is register_rule


# ---------------------------------------------------------------- ConvNeXt: channels-last LayerNorm
class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's channels-first LayerNorm (torchvision): permute, F.layer_norm, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1 = nn.Linear(c, 4 * c)
        self.pw2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXtTiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), LayerNorm2d(16))
        self.b1 = CNBlock(16)
        self.down = nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 32, 2, stride=2))
        self.b2 = CNBlock(32)
        self.head = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b2(self.down(self.b1(self.stem(x))))
        return self.head(x.mean((2, 3)))


def test_convnext_channels_last_layernorm() -> None:
    model = ConvNeXtTiny().eval()
    g, pruned, s = _prunes(model)
    names = {gr.name for gr in g.groups}
    assert {"stem.0", "down.1", "b1.pw1", "b2.pw1"} <= names
    assert pruned.stem[1].normalized_shape == (8,) and pruned.stem[1].weight.shape == (8,)
    assert pruned.b1.norm.normalized_shape == (8,) and pruned.b1.gamma.shape == (8,)
    assert g.cost(s).flops < 0.5 * g.cost().flops


# ---------------------------------------------------------------- MixConv: unequal channel chunks
class MixConv(nn.Module):
    """Channels split into unequal chunks, each with its own depthwise kernel size (MixNet, timm)."""

    def __init__(self, splits: tuple[int, ...], kernels: tuple[int, ...] = (3, 5, 7)) -> None:
        super().__init__()
        self.splits = list(splits)
        self.convs = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2, groups=c) for c, k in zip(splits, kernels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = torch.split(x, self.splits, dim=1)
        return torch.cat([conv(xs[i]) for i, conv in enumerate(self.convs)], dim=1)


class MixNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.mix = MixConv((16, 16, 32))
        self.bn = nn.BatchNorm2d(64)
        self.pw = nn.Conv2d(64, 64, 1)
        self.mix2 = MixConv((32, 16, 16))
        self.head = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.bn(self.mix(x)))
        x = self.mix2(F.relu(self.pw(x)))
        return self.head(x.mean((2, 3)))


def test_mixconv_unequal_chunks() -> None:
    model = MixNet().eval()
    g, pruned, s = _prunes(model)
    assert {"stem[0:16]", "stem[16:32]", "stem[32:64]", "pw[0:32]", "pw[32:48]", "pw[48:64]"} <= {
        gr.name for gr in g.groups
    }
    assert pruned.mix.splits == [8, 8, 16] and pruned.mix2.splits == [16, 8, 8]
    assert [c.out_channels for c in pruned.mix.convs] == [8, 8, 16]
    ratio = g.cost(s).flops / g.cost().flops
    assert 0.3 < ratio < 0.6  # was ~0.96: the chunks were frozen


def test_channel_split_with_literal_sizes_freezes() -> None:
    class Literal(MixConv):
        def __init__(self, splits: tuple[int, ...]) -> None:
            super().__init__(splits)
            del self.splits

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            xs = torch.split(x, [16, 16, 32], dim=1)  # sizes no attribute holds: cannot follow pruning
            return torch.cat([conv(xs[i]) for i, conv in enumerate(self.convs)], dim=1)

    model = MixNet().eval()
    model.mix = Literal((16, 16, 32))
    g = acp.ChannelGraph.from_model(model, X)
    assert not [gr for gr in g.groups if gr.name.startswith("stem")]
    s = acp.PruningStrategy.uniform(g, keep=0.5)
    acp.prune(model, s, X)  # the rest still prunes soundly


def test_unknown_module_without_rule_still_refused_or_frozen() -> None:
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3)
            self.head = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.head(self.c(x).mean((2, 3)))

    with pytest.raises(UnsupportedModelError):
        acp.ChannelGraph.from_model(Untraceable(), X)


class ConvNeXtLN(nn.Module):
    """The original ConvNeXt LayerNorm: a plain module, F.layer_norm when channels-last, an
    explicit mean / variance over axis 1 when channels-first."""

    def __init__(self, c: int, data_format: str = "channels_first") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps, self.data_format, self.normalized_shape = 1e-6, data_format, (c,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def test_convnext_original_layernorm_module() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.n1 = nn.Conv2d(3, 16, 4, stride=4), ConvNeXtLN(16)
            self.dw, self.n2 = nn.Conv2d(16, 16, 7, padding=3, groups=16), ConvNeXtLN(16, "channels_last")
            self.pw, self.head = nn.Linear(16, 32), nn.Linear(32, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.n1(self.stem(x))
            y = self.pw(self.n2(self.dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
            return self.head(y.mean((2, 3)))

    g, pruned, _ = _prunes(Net().eval())
    assert {"stem", "pw"} <= {gr.name for gr in g.groups}
    assert pruned.n2.normalized_shape == (8,) and pruned.n1.weight.shape == (8,)
