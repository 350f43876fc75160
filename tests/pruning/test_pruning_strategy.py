"""Strategies, criteria, records, save + load_model round trips, the CLI and error paths."""

from __future__ import annotations

import json

import archs
import numpy as np
import pytest
import torch
from torch import nn

import acpsearch as acp
from acpsearch.checkpoint import save_pruned
from acpsearch.errors import AcpError, CheckpointError, SpecError, UnsupportedModelError
from acpsearch.pruning import (
    CRITERIA,
    apply_record,
    channel_importance,
    get_criterion,
    make_record,
    set_taylor_importance,
)

X = torch.randn(*archs.INPUT, generator=torch.Generator().manual_seed(1))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def resnet():
    m = archs.make("resnet_cifar")
    return m, acp.ChannelGraph.from_model(m, X)


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean([2, 3]))


def test_rounding_rule(resnet):
    m, g = resnet
    grp = g.groups[0]
    C = grp.channels
    assert g.kept_channels(grp, 1.0) == C
    assert g.kept_channels(grp, 0.5, round_to=4) == 4 and C == 8
    assert g.kept_channels(grp, 0.01, round_to=4) == 4  # at least one unit
    assert g.kept_channels(grp, 0.3, round_to=1) == 2
    s = acp.PruningStrategy(g, {grp.name: 0.5})
    assert s.kept[grp.name] == 4 and all(v == 1.0 for k, v in s.ratios.items() if k != grp.name)
    assert all(k % 4 == 0 or k == g.group(n).channels for n, k in acp.PruningStrategy.uniform(g, 0.37).kept.items())


def test_divisor_respected_for_grouped_convs():
    m = archs.make("resnext")
    g = acp.ChannelGraph.from_model(m, X)
    grouped = [gr for gr in g.groups if gr.divisor > 1]
    assert grouped and all(gr.divisor == 4 for gr in grouped)
    for r in (0.1, 0.3, 0.6):
        s = acp.PruningStrategy.uniform(g, r, round_to=1)
        for gr in grouped:
            assert s.kept[gr.name] % 4 == 0
        idx = s.kept_indices()
        for gr in grouped:  # balanced: the same number of channels from every conv group
            per = gr.channels // 4
            assert len(set(np.bincount(idx[gr.name] // per, minlength=4).tolist())) == 1
        assert acp.measure_cost(acp.prune(m, s, X), X) == g.cost(s)


def test_criterion_keeps_the_top_channels():
    m = Chain().eval()
    strong = [1, 5, 6, 12]
    with torch.no_grad():
        m.conv1.weight.mul_(0.01)
        m.conv1.weight[strong] *= 1000
        m.bn1.weight.fill_(0.1)
        m.bn1.weight[[2, 3, 7, 9]] = 5.0
    g = acp.ChannelGraph.from_model(m, X)
    name = "conv1"
    for crit, expect in (("l1", strong), ("l2", strong), ("bn_scale", [2, 3, 7, 9])):
        s = acp.PruningStrategy(g, {name: 0.25}, criterion=crit)
        assert s.kept_indices()[name].tolist() == expect, crit
        imp = channel_importance(g, name, crit)
        assert set(np.argsort(-imp)[:4].tolist()) == set(expect)
    # fpgm keeps filters far from the geometric median: the 4 scaled-up ones are far from the rest
    s = acp.PruningStrategy(g, {name: 0.25}, criterion="fpgm")
    assert s.kept_indices()[name].tolist() == strong
    r1 = acp.PruningStrategy(g, {name: 0.5}, criterion="random", seed=1).kept_indices()[name]
    r2 = acp.PruningStrategy(g, {name: 0.5}, criterion="random", seed=2).kept_indices()[name]
    assert not np.array_equal(r1, r2)
    assert np.array_equal(r1, acp.PruningStrategy(g, {name: 0.5}, criterion="random", seed=1).kept_indices()[name])


def test_taylor_needs_data_then_works():
    m = Chain().eval()
    g = acp.ChannelGraph.from_model(m, X)
    s = acp.PruningStrategy.uniform(g, 0.5, criterion="taylor")
    with pytest.raises(SpecError, match="taylor"):
        s.kept_indices()
    set_taylor_importance(g, m, [X[:1], X[1:]])
    imp = channel_importance(g, "conv1", "taylor")
    assert imp.shape == (16,) and np.all(imp >= 0) and imp.sum() > 0
    pruned = acp.prune(m, s, X)
    assert acp.measure_cost(pruned, X) == g.cost(s)
    assert all(p.grad is None for p in m.parameters())
    g2 = acp.ChannelGraph.from_model(m, X)
    s2 = acp.PruningStrategy.uniform(g2, 0.5, criterion="taylor")
    s3 = acp.PruningStrategy(g2, s2.ratios, criterion="taylor", taylor_batches=[X[:1], X[1:]])
    assert {k: v.tolist() for k, v in s3.kept_indices().items()} == {k: v.tolist() for k, v in s.kept_indices().items()}


def test_strategy_json_round_trip(resnet):
    m, g = resnet
    s = acp.PruningStrategy.from_vector(g, np.linspace(0.2, 1.0, len(g.groups)), criterion="fpgm", round_to=2)
    d = json.loads(json.dumps(s.to_dict()))
    s2 = acp.PruningStrategy.from_dict(g, d)
    assert s2 == s and s2.kept == s.kept and g.cost(s2) == g.cost(s)


def test_cost_batch_matches_cost(resnet):
    m, g = resnet
    R = np.random.default_rng(0).uniform(0.05, 1.0, (50, len(g.groups)))
    R[0] = 1.0
    f, p = g.cost_batch(R)
    for i in range(len(R)):
        c = g.cost(acp.PruningStrategy.from_vector(g, R[i]))
        assert (f[i], p[i]) == (c.flops, c.params)
    assert (f[0], p[0]) == (g.cost().flops, g.cost().params)
    with pytest.raises(SpecError, match="ratios"):
        g.cost_batch(R[:, :2])


def test_record_save_and_load_model_round_trip(tmp_path, resnet):
    m, g = resnet
    s = acp.PruningStrategy.from_vector(g, np.random.default_rng(3).uniform(0.2, 0.9, len(g.groups)))
    pruned = acp.prune(m, s, X)
    rec = make_record(s)
    assert rec == pruned.acp_pruning_record
    json.dumps(rec)  # plain data: weights-only safe
    cfg = {"factory": "archs:make", "kwargs": {"name": "resnet_cifar"}}
    path = save_pruned(tmp_path / "p.pt", pruned, s, cfg, list(X.shape))
    loaded = acp.load_model(path, allow_factories=["archs"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), pruned.eval()(X))
    assert acp.measure_cost(loaded, X) == g.cost(s)
    replay = apply_record(archs.make("resnet_cifar"), rec, X)
    assert acp.measure_cost(replay, X) == g.cost(s)
    bad = dict(rec, groups={**rec["groups"], g.groups[0].name: {"channels": 999, "kept": [0]}})
    with pytest.raises(CheckpointError, match="does not match"):
        apply_record(archs.make("resnet_cifar"), bad, X)


def test_tuple_output_keeps_features_and_code(tmp_path):
    m = archs.make("vgg_tuple")
    g = acp.ChannelGraph.from_model(m, X)
    assert g.hash_layer == "hash"
    assert all(gr.channels != 24 for gr in g.groups)  # the returned features are frozen
    p = acp.prune(m, acp.PruningStrategy.uniform(g, 0.25), X)
    f, c = p(X)
    assert f.shape == (2, 24) and c.shape == (2, archs.BITS)


def test_errors(resnet):
    m, g = resnet
    with pytest.raises(SpecError, match="nope"):
        acp.PruningStrategy(g, {"nope": 0.5})
    with pytest.raises(SpecError, match="outside"):
        acp.PruningStrategy(g, {g.groups[0].name: 0.0})
    with pytest.raises(SpecError, match="criterion"):
        acp.PruningStrategy(g, {}, criterion="magic")
    with pytest.raises(SpecError, match="round_to"):
        acp.PruningStrategy(g, {}, round_to=0)
    with pytest.raises(UnsupportedModelError, match="torch.fx"):
        acp.ChannelGraph.from_model(archs.DataDependent(), X)
    with pytest.raises(UnsupportedModelError, match="hash_layer 'missing'"):
        acp.ChannelGraph.from_model(m, X, hash_layer="missing")
    with pytest.raises(UnsupportedModelError, match="does not match"):
        acp.prune(archs.make("resnet_bottleneck"), acp.PruningStrategy.uniform(g, 0.5), X)
    with pytest.raises(UnsupportedModelError, match="forward"):
        acp.ChannelGraph.from_model(m, torch.randn(2, 5, 16, 16))
    assert issubclass(UnsupportedModelError, AcpError)


def test_named_hash_layer_is_frozen(resnet):
    m, g = resnet
    last_block_conv = g.groups[-1].modules[0]
    g2 = acp.ChannelGraph.from_model(m, X, hash_layer=last_block_conv)
    assert g2.hash_layer == last_block_conv
    assert len(g2.groups) == len(g.groups) - 1


def test_cli_inspect_and_prune(tmp_path, capsys, monkeypatch):
    from acpsearch.checkpoint import save_checkpoint
    from acpsearch.cli import run

    m = archs.make("mobilenet_v2")
    base = save_checkpoint(
        tmp_path / "base.pt", m, {"factory": "archs:make", "kwargs": {"name": "mobilenet_v2"}}, [1, 3, 16, 16]
    )
    monkeypatch.delenv("ACPSEARCH_ALLOW_FACTORIES", raising=False)
    assert run(["inspect", str(base), "--json"]) == 2  # a checkpoint's factory runs only where allowed
    assert "--allow-factory archs" in capsys.readouterr().err
    assert run(["inspect", str(base), "--json", "--allow-factory", "archs"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["groups"] and doc["hash_layer"] == "classifier.1"
    assert {"name", "channels", "flops_share", "params_share"} <= set(doc["groups"][0])
    out = tmp_path / "pruned.pt"
    monkeypatch.setenv("ACPSEARCH_ALLOW_FACTORIES", "numpy, archs")  # or through the environment
    assert run(["prune", str(base), "--keep", "0.5", "--criterion", "l2", "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["after"]["flops"] < res["before"]["flops"]
    loaded = acp.load_model(out)
    assert acp.measure_cost(loaded, torch.zeros(1, 3, 16, 16)).flops == res["after"]["flops"]
    assert run(["inspect", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "prunable groups" in printed and "MACs" in printed
    assert run(["prune", str(out), "--keep", "0.5", "--out", str(tmp_path / "x.pt")]) == 2
    assert run(["prune", str(base), "--keep", "1.5", "--out", str(tmp_path / "x.pt")]) == 2
    assert run(["inspect", str(tmp_path / "missing.pt")]) == 2


class AuxHead(nn.Module):
    """GoogLeNet-style auxiliary head used only in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.aux = nn.Conv2d(16, 4, 1)
        self.hash = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        code = self.hash(torch.relu(self.conv2(x)).mean([2, 3]))
        if self.training:
            return code + self.aux(x).mean([2, 3])
        return code


def test_training_only_paths_are_refused_not_mispruned():
    m = AuxHead().eval()
    g = acp.ChannelGraph.from_model(m, X)
    assert [gr.name for gr in g.groups] == ["conv1", "conv2"]  # aux never seen in eval mode
    with pytest.raises(UnsupportedModelError, match="training mode"):
        acp.prune(m, acp.PruningStrategy(g, {"conv1": 0.5}), X)
    p = acp.prune(m, acp.PruningStrategy(g, {"conv2": 0.5}), X)  # does not touch aux's input: fine
    p.train()
    assert p(X).shape == (2, 4)
    bn = archs.make("resnet_cifar")
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    gb = acp.ChannelGraph.from_model(bn, X[:1])
    pb = acp.prune(bn, acp.PruningStrategy.uniform(gb, 1.0), X[:1])
    for k, v in pb.state_dict().items():  # the training-mode check leaves the statistics alone
        assert torch.equal(v, before[k]), k


def test_global_magnitude_is_one_threshold_bisected_to_the_budget(resnet):
    """One threshold on mean-normalised importance across all groups (TP's global pruning), the
    largest such network inside the budget; min_keep floors each group; None when nothing fits."""
    _, g = resnet
    full = g.cost().flops

    def under(r):
        return lambda s: g.cost(s).flops <= r * full

    s = acp.PruningStrategy.global_magnitude(g, under(0.5), criterion="l1", round_to=1)
    assert s is not None and s.round_to == 1 and s.criterion == "l1"
    flops = g.cost(s).flops / full
    assert 0.45 < flops <= 0.5
    kept_min, dropped_max = np.inf, -np.inf
    for grp in g.groups:
        imp = np.asarray(channel_importance(g, grp.name, "l1"))
        norm = imp / imp.mean()
        idx = s.kept_indices()[grp.name]
        assert len(idx) == s.kept[grp.name]
        mask = np.zeros(grp.channels, dtype=bool)
        mask[idx] = True
        kept_min = min(kept_min, norm[mask].min())
        if (~mask).any():
            dropped_max = max(dropped_max, norm[~mask].max())
    assert kept_min >= dropped_max  # no dropped channel outranks a kept one in any other group
    assert len({s.ratios[grp.name] for grp in g.groups}) > 1  # not a uniform allocation in disguise
    # The budget is honoured by the physically pruned network, not only by the closed form.
    assert acp.measure_cost(acp.prune(g.model, s, X), X) == g.cost(s)
    floor = acp.PruningStrategy.global_magnitude(g, under(0.2), criterion="l1", min_keep=0.5, round_to=1)
    assert floor is None or all(floor.kept[grp.name] >= grp.channels / 2 for grp in g.groups)
    assert acp.PruningStrategy.global_magnitude(g, under(0.01), min_keep=0.5) is None
    everything = acp.PruningStrategy.global_magnitude(g, under(1.0))
    assert all(k == grp.channels for grp, k in zip(g.groups, everything.kept.values()))


def test_criteria_registry_and_feature_slots():
    """Criteria are objects in a registry; a wrong name lists the choices; the encoder input's
    criterion one-hot covers every registered criterion in the registry's order."""
    from acpsearch.graph.features import CRITERION_SLOTS

    assert CRITERIA == ("l1", "l2", "bn_scale", "fpgm", "taylor", "random") == CRITERION_SLOTS
    assert all(get_criterion(c).name == c for c in CRITERIA)
    with pytest.raises(SpecError, match="expected one of l1, l2, bn_scale, fpgm, taylor, random"):
        get_criterion("l3")
    m = Chain().eval()
    g = acp.ChannelGraph.from_model(m, X)
    with pytest.raises(SpecError, match="criterion 'l3'"):
        acp.PruningStrategy.uniform(g, 0.5, criterion="l3")
    assert not hasattr(g, "importance") and not hasattr(g, "set_taylor_importance")


def test_graph_reads_strategies_through_its_protocols():
    """cost / to_pyg take any object with kept counts (+ criterion and retained importance): the
    graph layer needs nothing from pruning, and a PruningStrategy is one such object."""

    class Plain:
        def __init__(self, s):
            self.criterion, self._s = s.criterion, s

        def kept_vector(self):
            return self._s.kept_vector()

        def retained_importance(self):
            return self._s.retained_importance()

    m = Chain().eval()
    g = acp.ChannelGraph.from_model(m, X)
    s = acp.PruningStrategy.uniform(g, 0.5, criterion="random", seed=3)
    assert g.cost(Plain(s)) == g.cost(s)
    assert torch.equal(g.to_pyg(Plain(s)).x, g.to_pyg(s).x)


def test_taylor_state_is_per_graph():
    m = Chain().eval()
    g1, g2 = acp.ChannelGraph.from_model(m, X), acp.ChannelGraph.from_model(m, X)
    set_taylor_importance(g1, None, [X])
    assert channel_importance(g1, "conv1", "taylor").sum() > 0
    with pytest.raises(SpecError, match="taylor"):
        channel_importance(g2, "conv1", "taylor")


def test_graph_layer_imports_nothing_above_it():
    """graph/ imports (top-level, function-local or TYPE_CHECKING) only itself and acpsearch.errors."""
    import ast
    import pathlib

    root = pathlib.Path(acp.__file__).parent / "graph"
    found = set()
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(("." * node.level) + node.module if node.level else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
    ours = {m for m in found if m.startswith("acpsearch") or m.startswith(".")}
    assert ours and all(m == "acpsearch.errors" or m.startswith("acpsearch.graph") for m in ours), ours
