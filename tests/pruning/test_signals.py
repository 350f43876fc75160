"""Signals that read residual blocks before the add: linear CKA, branch detection, branch damage, NASWOT."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import acpsearch as acp
from acpsearch.hashing import create_model
from acpsearch.pruning import PruningStrategy
from acpsearch.pruning.signals import SignalProbe, linear_cka, naswot_score, residual_adds, trace


def test_linear_cka_invariances() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=g)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)  # rotation, scale, shift
    # different widths compare; an unrelated representation aligns far less
    assert linear_cka(x, x[:, :4]) < 1.0
    assert linear_cka(x, torch.randn(64, 7, generator=g)) < 0.5 * linear_cka(x, x[:, :4])


class _ShortcutFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.short = nn.Conv2d(2, 2, 1)
        self.body = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.short(x) + self.body(x)


def test_residual_adds_finds_the_branch_operand() -> None:
    r20 = create_model("resnet20", 8, in_channels=1, image_size=16)
    adds = residual_adds(trace(r20))
    assert len(adds) == 9 and all(i == 0 for _, i in adds)  # `out + self.shortcut(x)`: branch first
    assert [i for _, i in residual_adds(trace(_ShortcutFirst()))] == [1]


@pytest.fixture(scope="module")
def probe_setup():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = create_model("resnet20", 8, in_channels=1, image_size=16).eval()
    ex = torch.zeros(1, 1, 16, 16)
    g = acp.ChannelGraph.from_model(model, ex)
    X = torch.randn(192, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    probe = SignalProbe(model, ex, X[:128], X[128:], naswot_items=32, threads=1)
    return g, probe


def test_unpruned_strategy_has_no_damage(probe_setup) -> None:  # type: ignore[no-untyped-def]
    g, probe = probe_setup
    sig = probe.signals([PruningStrategy.uniform(g, keep=1.0)])
    for k in ("agreement", "branch", "branch_mean", "branch_worst", "add_output"):
        assert sig[k][0] == pytest.approx(1.0, abs=1e-6), k
    assert math.isfinite(sig["naswot"][0])


def test_gutting_one_inner_conv_damages_only_from_its_block_on(probe_setup) -> None:  # type: ignore[no-untyped-def]
    g, probe = probe_setup
    from acpsearch.pruning.signals import branch_damage, residual_operands

    gutted = PruningStrategy(g, {"layer1.1.conv1": 0.25}, criterion="l1", round_to=1)
    net = probe.pruned(gutted)
    dmg = branch_damage(probe.ref_ops, residual_operands(net, probe.probe_X, probe.pool), probe.shares)
    blocks = [v for k, v in dmg.items() if k.startswith("block:")]
    assert blocks[0] == pytest.approx(0.0, abs=1e-6)  # layer1.0 runs before the cut
    assert blocks[1] > 0.01  # layer1.1's own branch
    assert dmg["max"] == pytest.approx(max(blocks))
    full = probe.signals([gutted, PruningStrategy.uniform(g, keep=1.0)])
    assert full["branch"][0] < full["branch"][1] and full["branch_worst"][0] <= full["branch"][0]
    assert all(0.0 < v < 1.0 for v in probe.shares.values())


def test_branch_alone_equals_the_branch_signal(probe_setup) -> None:  # type: ignore[no-untyped-def]
    g, probe = probe_setup
    cands = [
        PruningStrategy.uniform(g, keep=1.0),
        PruningStrategy(g, {"layer1.1.conv1": 0.25}, criterion="l1", round_to=1),
        PruningStrategy.uniform(g, keep=0.5),
    ]
    alone, full = probe.branch(cands), probe.signals(cands)["branch"]
    np.testing.assert_allclose(alone, full, atol=1e-9)
    assert alone[0] == pytest.approx(1.0, abs=1e-6) and alone[1] < 1.0 and alone[2] < 1.0


def test_naswot_kernel_by_hand() -> None:
    lin = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    net = nn.Sequential(lin, nn.ReLU())
    X = torch.tensor([[1.0, 1.0], [-1.0, 2.0], [-1.0, -1.0]])
    # activation patterns: [1,1,1], [0,1,1], [0,0,0]; K[i,j] = units where i and j agree
    K = np.array([[3, 2, 0], [2, 3, 1], [0, 1, 3]], dtype=float)
    assert naswot_score(net, X) == pytest.approx(float(np.log(np.linalg.det(K))))
    assert naswot_score(net, X[[0, 0, 2]]) == float("-inf")  # two identical items: singular kernel
