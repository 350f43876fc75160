"""Latency budgets: a per-layer table measured once (cached), monotone predictions, and a
DynamicSpace that keeps every sample under the latency budget."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch

import acpsearch as acp
from acpsearch.errors import BudgetError
from acpsearch.hashing import create_model
from acpsearch.search.latency import LatencyTable
from acpsearch.search.space import Budget, DynamicSpace


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    model = create_model("resnet20", bits=16, in_channels=1, image_size=8).eval()
    return acp.ChannelGraph.from_model(model, torch.randn(1, 1, 8, 8))


@pytest.fixture(scope="module")
def table(graph, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("ACPSEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    t = LatencyTable.build(graph, batch_size=4, fractions=(0.25, 0.5, 1.0), repeats=3)
    yield t
    torch.set_num_threads(old)
    mp.undo()


def test_table_covers_every_conv_and_linear_and_is_cached(graph, table) -> None:
    n_layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in graph.model.modules())
    assert len(table.nodes) == n_layers == 22  # 19 convs, 2 projection shortcuts, the hash layer
    assert table.tables.shape == (22, 3, 3)
    assert np.all(np.diff(table.tables, axis=1) >= 0) and np.all(np.diff(table.tables, axis=2) >= 0)
    assert table.full_ms > 0 and table.offset_ms >= 0
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    again = LatencyTable.build(graph, batch_size=4, fractions=(0.25, 0.5, 1.0), repeats=3)
    torch.set_num_threads(old)
    assert time.perf_counter() - t0 < 0.5  # read from the cache, not re-measured
    assert np.array_equal(again.tables, table.tables)


def test_predictions_are_monotone_and_match_full_latency(graph, table) -> None:
    names = [g.name for g in graph.groups]
    rows = np.array([[k] * len(names) for k in (0.25, 0.5, 0.75, 1.0)])
    pred = table.predict_batch(graph, rows)
    assert np.all(np.diff(pred) >= 0)
    assert pred[-1] == pytest.approx(table.full_ms, rel=1e-6)  # table at full width + offset = measured
    s = acp.PruningStrategy.uniform(graph, 0.5)
    assert table.predict(graph, s) == pytest.approx(pred[1])


def test_latency_budget_space(graph, table) -> None:
    full = table.full_ms
    smallest = table.predict_batch(graph, np.full((1, len(graph.groups)), 0.2))[0]
    budget = smallest + 0.5 * (full - smallest)
    space = DynamicSpace(graph, Budget(latency_ms=budget), latency=table)
    rows = space.sample_ratios(500, random.Random(0))
    pred = table.predict_batch(graph, rows)
    assert np.all(pred <= budget + 1e-9)
    assert np.mean(pred >= 0.8 * budget) >= 0.9
    with pytest.raises(BudgetError, match=r"budget\.latency_ms=0\.0001 is below the smallest reachable latency"):
        DynamicSpace(graph, Budget(latency_ms=0.0001), latency=table)
    with pytest.raises(BudgetError, match="latency table"):
        DynamicSpace(graph, Budget(latency_ms=1.0))
    both = DynamicSpace(graph, Budget(flops=0.5, latency_ms=budget), latency=table)
    rows = both.sample_ratios(300, random.Random(1))
    flops, _ = graph.cost_batch(rows)
    assert np.all(flops <= 0.5 * graph.cost().flops)
    assert np.all(table.predict_batch(graph, rows) <= budget + 1e-9)
