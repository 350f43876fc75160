"""DynamicSpace: every sample meets the budget, few waste it, impossible budgets fail clearly,
narrow() stays feasible, and the space plugs into Optuna define-by-run."""

from __future__ import annotations

import random

import numpy as np
import optuna
import pytest
import torch

import acpsearch as acp
from acpsearch.errors import BudgetError, SpecError
from acpsearch.hashing import create_model
from acpsearch.search.space import Budget, DynamicSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

MODELS = {
    "resnet20": dict(bits=16, in_channels=1, image_size=16),
    "vgg11": dict(bits=16, in_channels=3, image_size=16),
    "mobilenetv2": dict(bits=16, in_channels=3, image_size=16),
}
_GRAPHS: dict[str, object] = {}


def graph(name: str):
    if name not in _GRAPHS:
        kw = MODELS[name]
        torch.manual_seed(0)
        model = create_model(name, **kw).eval()
        x = torch.randn(1, kw["in_channels"], kw["image_size"], kw["image_size"])
        _GRAPHS[name] = acp.ChannelGraph.from_model(model, x)
    return _GRAPHS[name]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(
    "budget", [Budget(flops=0.5), Budget(flops=0.3), Budget(params=0.4), Budget(flops=0.6, params=0.5)]
)
def test_samples_meet_budget_and_rarely_waste_it(name: str, budget: Budget) -> None:
    g = graph(name)
    space = DynamicSpace(g, budget, step=0.1, min_keep=0.2)
    rows = space.sample_ratios(2000, random.Random(0))
    flops, params = g.cost_batch(rows)
    full = g.cost()
    if budget.flops is not None:
        assert np.all(flops <= budget.flops * full.flops)
    if budget.params is not None:
        assert np.all(params <= budget.params * full.params)
    use = space.budget_use(rows)
    assert np.mean(use >= 0.8) >= 0.9, f"only {np.mean(use >= 0.8):.3f} of samples use >= 80% of the budget"
    # every ratio is on the grid and within [min_keep, 1]
    act = rows[:, [space.names.index(n) for n in space.active]]
    assert act.min() >= 0.2 - 1e-9 and act.max() <= 1.0
    assert np.allclose(np.round(act * 10), act * 10)
    # the samples are diverse, not one point
    assert len({tuple(r) for r in rows}) > 1000


def test_sample_returns_strategy_whose_cost_matches_the_graph() -> None:
    g = graph("resnet20")
    space = DynamicSpace(g, Budget(flops=0.5))
    for seed in range(20):
        s = space.sample(random.Random(seed))
        cost = g.cost(s)
        assert cost.flops <= 0.5 * g.cost().flops
        assert space.feasible(s)
        assert set(s.ratios) <= {grp.name for grp in g.groups}


def test_impossible_budget_names_smallest_reachable_ratio() -> None:
    g = graph("resnet20")
    with pytest.raises(BudgetError, match=r"budget\.flops=0\.001 is below the smallest reachable FLOPs ratio 0\.\d{3}"):
        DynamicSpace(g, Budget(flops=0.001))
    smallest = DynamicSpace(g, Budget(flops=0.9)).smallest_reachable()["flops"]
    assert 0.0 < smallest < 0.2
    # just above the smallest reachable ratio is feasible; samples then sit at the floor
    space = DynamicSpace(g, Budget(flops=smallest + 1e-6))
    assert space.feasible(space.sample(random.Random(0)))
    with pytest.raises(BudgetError, match=r"budget\.params=0\.0001"):
        DynamicSpace(g, Budget(params=0.0001))
    with pytest.raises(BudgetError, match=r"budget\.flops=1\.5"):
        DynamicSpace(g, Budget(flops=1.5))
    with pytest.raises(SpecError, match=r"space\.step"):
        DynamicSpace(g, Budget(flops=0.5), step=0.0)


def test_negligible_groups_are_frozen_at_full_width() -> None:
    g = graph("vgg11")  # its last hidden group (`fc`, 512 channels) carries 0.6% of the MACs
    space = DynamicSpace(g, Budget(flops=0.5))
    assert space.frozen == ["fc"]
    rows = space.sample_ratios(200, random.Random(0))
    assert np.all(rows[:, space.names.index("fc")] == 1.0)
    # under a params budget `fc` matters (2.3% of the params) and the first conv (0.6%) does not
    assert DynamicSpace(g, Budget(params=0.5)).frozen == ["features.0"]
    assert DynamicSpace(g, Budget(flops=0.5), freeze_below=0.0).frozen == []


def test_narrow_shrinks_ranges_refines_grid_and_stays_feasible() -> None:
    g = graph("resnet20")
    space = DynamicSpace(g, Budget(flops=0.5))
    elite = space.sample_many(4, random.Random(3))
    small = space.narrow(elite)
    assert small.step == pytest.approx(0.05)
    for n in space.active:
        vals = [e.ratios[n] for e in elite]
        lo, hi = small.ranges[n]
        assert lo >= min(vals) - 0.1 - 1e-9 and hi <= max(vals) + 0.1 + 1e-9
        assert lo <= min(vals) + 1e-9 and hi >= max(vals) - 1e-9
    assert small.log10_size() < space.log10_size() + len(space.active) * np.log10(2)
    rows = small.sample_ratios(1000, random.Random(1))
    flops, _ = g.cost_batch(rows)
    assert np.all(flops <= 0.5 * g.cost().flops)
    for j, n in enumerate(small.names):
        if n in small.ranges:
            lo, hi = small.ranges[n]
            assert rows[:, j].min() >= lo - 1e-9 and rows[:, j].max() <= hi + 1e-9


@pytest.mark.parametrize("mode", ["range", "index"])
def test_optuna_define_by_run_tpe(mode: str) -> None:
    g = graph("resnet20")
    space = DynamicSpace(g, Budget(flops=0.4))
    full = g.cost().flops
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))

    def objective(trial: optuna.Trial) -> float:
        s = space.suggest(trial, mode=mode)
        flops = g.cost(s).flops
        assert flops <= 0.4 * full
        # prefer keeping the first group wide: a learnable target
        return s.ratios[space.active[0]]

    study.optimize(objective, n_trials=25)
    assert len(study.trials) == 25
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert set(study.trials[0].params) == {"keep/" + n for n in space.active}
    assert study.best_value >= 0.9
