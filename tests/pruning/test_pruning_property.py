"""Property: for any ratios, rounding unit and criterion, the pruned model runs, keeps its code
length, and its measured cost equals the closed-form prediction and cost_batch."""

from __future__ import annotations

import functools

import archs
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import acpsearch as acp

X = torch.randn(*archs.INPUT, generator=torch.Generator().manual_seed(3))
NAMES = ["resnext", "densenet", "mobilenet_v3", "googlenet", "convnext", "shufflenet_v2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@functools.cache
def built(name):
    m = archs.make(name)
    return m, acp.ChannelGraph.from_model(m, X), m(X).shape


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(NAMES),
    data=st.data(),
    round_to=st.sampled_from([1, 2, 4, 8]),
    criterion=st.sampled_from(["l1", "l2", "bn_scale", "fpgm", "random"]),
)
def test_any_strategy_prunes_exactly(name, data, round_to, criterion):
    m, g, out_shape = built(name)
    ratios = data.draw(st.lists(st.floats(0.01, 1.0), min_size=len(g.groups), max_size=len(g.groups)))
    s = acp.PruningStrategy.from_vector(g, ratios, criterion=criterion, round_to=round_to, seed=len(ratios))
    p = acp.prune(m, s, X)
    assert p(X).shape == out_shape
    c = acp.measure_cost(p, X)
    assert c == g.cost(s)
    f, q = g.cost_batch([ratios], round_to=round_to)
    assert (int(f[0]), int(q[0])) == (c.flops, c.params)
