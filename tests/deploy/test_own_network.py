"""Bring your own hash network: a network the zoo does not have, in the user's own module, trained
outside acpsearch with plain torch and saved as a plain state dict, then pruned by acpsearch.

The end-to-end test goes through the real CLI (`submit`, `run`) with real SQLite, real Ray (the one
session of the test run) and real data (sklearn digits, 8x8). The unit tests check the pieces:
state-dict loading variants, the spec checked against an acpsearch checkpoint, and the space's
exclude / bounds / round_to."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_SPEC
from torch import nn

from acpsearch.errors import AcpError, CheckpointError, SpecError

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
]

# The user's own network: not in acpsearch's zoo, written to its own module.
OWN_NET = '''
import torch
from torch import nn


class TinyHash(nn.Module):
    """Three convolutions, global pooling, a Linear hash layer."""

    def __init__(self, bits=16, width=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.hash = nn.Linear(2 * width, bits)

    def forward(self, x):
        return self.hash(self.features(x))


def make(bits=16, width=16):
    return TinyHash(bits=bits, width=width)
'''


def write_module(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(OWN_NET)
    sys.modules.pop(name, None)
    return path


def load_module(path: Path, name: str) -> Any:
    """The user's module as their own training script would import it (not through acpsearch)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def train_outside(model: nn.Module, epochs: int = 2, bits: int = 16, seed: int = 0) -> nn.Module:
    """A plain-torch training script: digits, one random ±1 hash centre per class, BCE to it."""
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    centres = (torch.randint(0, 2, (10, bits)) * 2 - 1).float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            out = model(x[idx])
            loss = nn.functional.binary_cross_entropy_with_logits(out, (centres[y[idx]] + 1) / 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


# --- end to end ----------------------------------------------------------------------------------
def test_own_network_from_a_plain_state_dict_end_to_end(tmp_path, ray_session, monkeypatch):
    """submit + run a study of a network the zoo does not have, from `torch.save(model.state_dict())`,
    its factory found in the spec's directory (no PYTHONPATH, run from elsewhere); the winner meets the
    FLOPs budget and the excluded layer keeps every channel."""
    from acpsearch.checkpoint import read_checkpoint
    from acpsearch.cli import run
    from acpsearch.service import study as st
    from acpsearch.service.storage import open_storage

    project = tmp_path / "project"
    mod_path = write_module(project, "own_hashnet_e2e")
    net = train_outside(load_module(mod_path, "own_hashnet_e2e_train").make(bits=16, width=16), epochs=2)
    torch.save(net.state_dict(), project / "own.pt")  # what every training script writes

    spec = copy.deepcopy(TINY_SPEC)
    spec.update(
        {
            "name": "own-net",
            "model": {"factory": "own_hashnet_e2e:make", "kwargs": {"width": 16}, "bits": 16, "checkpoint": "own.pt"},
            "budget": {"flops": 0.5},
            "space": {"step": 0.25, "min_keep": 0.25, "exclude": ["features.0"], "round_to": 2},
            "search": {
                "candidates": 6,
                "sampler": "random",
                "workers": 1,
                "seed": 0,
                "ranker": "l1_retained",
                "rounds": 1,
            },
            "finetune": {"top": 2, "epochs": 1, "lr": 0.001, "early_stop": None},
        }
    )
    (project / "own.yaml").write_text(yaml.safe_dump(spec))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the working directory nor PYTHONPATH holds the module
    monkeypatch.delenv("PYTHONPATH", raising=False)
    url = f"sqlite:///{tmp_path / 'studies.db'}"

    assert run(["submit", str(project / "own.yaml"), "--storage", url]) == 0
    assert run(["run", "own-net", "--storage", url, "--artifacts", str(tmp_path / "art")]) == 0

    study = st.load_search_study(open_storage(url), "own-net")
    assert study.user_attrs["state"] == "done"
    assert study.user_attrs["spec"]["model"]["path"] == str(project.resolve())
    winner = study.user_attrs["winner"]
    ck = read_checkpoint(winner["path"])
    assert ck["model"] == {"factory": "own_hashnet_e2e:make", "kwargs": {"width": 16}}
    groups = ck["pruning"]["groups"]
    assert groups, "the winner is pruned"
    # the excluded layer (features.0, its output group) keeps all its channels
    assert "features.0" not in groups or len(groups["features.0"]["kept"]) == groups["features.0"]["channels"] == 16
    assert all(len(g["kept"]) % 2 == 0 for g in groups.values())  # space.round_to: 2
    from acpsearch.checkpoint import model_from_checkpoint
    from acpsearch.graph import ChannelGraph

    pruned = model_from_checkpoint(ck, allow_factories=["own_hashnet_e2e"])
    assert pruned.features[0].out_channels == 16
    full = ChannelGraph.from_model(
        load_module(mod_path, "own_hashnet_e2e_check").make(bits=16, width=16), torch.zeros(1, 1, 8, 8)
    ).cost()
    cost = ChannelGraph.from_model(pruned, torch.zeros(1, 1, 8, 8)).cost()
    assert cost.flops <= 0.5 * full.flops
    assert winner["flops_ratio"] <= 0.5 + 1e-9


# --- plain state dicts ---------------------------------------------------------------------------
@pytest.fixture()
def own_module(tmp_path, monkeypatch):
    mod_dir = tmp_path / "code"
    path = write_module(mod_dir, "own_hashnet_unit")
    monkeypatch.syspath_prepend(str(mod_dir))
    return load_module(path, "own_hashnet_unit_ref")


def _spec(tmp_path: Path, model: dict[str, Any], space: dict[str, Any] | None = None) -> Any:
    from acpsearch.service.spec import load_spec

    data = copy.deepcopy(TINY_SPEC)
    data["model"] = model
    if space is not None:
        data["space"] = space
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_spec(path)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix", "checkpoint_dict"])
def test_plain_state_dict_variants_load(wrap, tmp_path, own_module):
    from acpsearch.service.inputs import read_base_checkpoint

    net = own_module.make(bits=16, width=8)
    sd = net.state_dict()
    obj: Any = {
        "plain": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd, "optimizer": {"lr": 0.1}},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
        "checkpoint_dict": {"epoch": 2, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
    }[wrap]
    torch.save(obj, tmp_path / "w.pt")
    spec = _spec(
        tmp_path, {"factory": "own_hashnet_unit:make", "kwargs": {"width": 8}, "bits": 16, "checkpoint": "w.pt"}
    )
    ckpt = read_base_checkpoint(spec, (1, 8, 8))
    assert ckpt["model"] == {"factory": "own_hashnet_unit:make", "kwargs": {"width": 8}}
    assert ckpt["input_shape"] == [1, 1, 8, 8]  # from the data set
    for k, v in sd.items():
        assert torch.equal(ckpt["state_dict"][k], v)


def test_plain_state_dict_of_a_zoo_network(tmp_path):
    from acpsearch.hashing import create_model
    from acpsearch.service.inputs import read_base_checkpoint

    net = create_model("resnet20", bits=16, in_channels=1, image_size=8)
    torch.save(net.state_dict(), tmp_path / "r.pt")
    spec = _spec(tmp_path, {"zoo": "resnet20", "bits": 16, "checkpoint": "r.pt"})
    ckpt = read_base_checkpoint(spec, (1, 8, 8))
    assert ckpt["model"]["zoo"] == "resnet20" and ckpt["model"]["kwargs"]["bits"] == 16


@pytest.mark.parametrize(
    "change,expect",
    [
        ("width", "'features.0.weight' has shape [8, 1, 3, 3] in the file, the network expects [16, 1, 3, 3]"),
        ("drop", "missing key 'hash.bias'"),
        ("extra", "unexpected key 'extra.weight'"),
    ],
)
def test_state_dict_mismatch_is_one_line_naming_the_key(change, expect, tmp_path, own_module):
    from acpsearch.service.inputs import read_base_checkpoint

    sd = own_module.make(bits=16, width=8).state_dict()
    if change == "drop":
        sd.pop("hash.bias")
    elif change == "extra":
        sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "w.pt")
    width = 16 if change == "width" else 8
    spec = _spec(
        tmp_path, {"factory": "own_hashnet_unit:make", "kwargs": {"width": width}, "bits": 16, "checkpoint": "w.pt"}
    )
    with pytest.raises(CheckpointError) as exc:
        read_base_checkpoint(spec, (1, 8, 8))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"model.checkpoint {str(tmp_path / 'w.pt')!r}: the state dict does not")
    assert expect in msg


def test_a_file_that_is_no_state_dict_is_refused(tmp_path):
    from acpsearch.checkpoint import read_weights

    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"not an acpsearch checkpoint \(foreign format\) nor a state dict"):
        read_weights(tmp_path / "x.pt")


# --- the spec against an acpsearch checkpoint ----------------------------------------------------
@pytest.fixture(scope="module")
def zoo_checkpoint(tmp_path_factory):
    from acpsearch.checkpoint import save_checkpoint
    from acpsearch.hashing import create_model

    kw = {"bits": 16, "in_channels": 1, "image_size": 8}
    path = tmp_path_factory.mktemp("ck") / "base.pt"
    return save_checkpoint(path, create_model("resnet20", **kw), {"zoo": "resnet20", "kwargs": kw}, [1, 1, 8, 8])


@pytest.mark.parametrize(
    "model,expect",
    [
        ({"zoo": "resnet20", "bits": 16}, None),  # equal / omitted: the checkpoint's
        ({"zoo": "ResNet20", "bits": 16, "kwargs": {"in_channels": 1}}, None),
        (
            {"zoo": "resnet20", "bits": 32},
            "model.bits: 32 contradicts model.checkpoint '{ck}', whose network has bits=16",
        ),
        ({"zoo": "resnet20"}, "model.bits: 32 (the default) contradicts"),
        (
            {"zoo": "vgg11", "bits": 16},
            "model.zoo: 'vgg11' contradicts model.checkpoint '{ck}', whose network is zoo 'resnet20'",
        ),
        ({"factory": "own_hashnet_unit:make", "bits": 16}, "model.factory: 'own_hashnet_unit:make' contradicts"),
        (
            {"zoo": "resnet20", "bits": 16, "kwargs": {"image_size": 32}},
            "model.kwargs.image_size: 32 contradicts model.checkpoint '{ck}', whose network has image_size=8",
        ),
        ({"zoo": "resnet20", "bits": 16, "kwargs": {"width": 2}}, "model.kwargs.width: 2 contradicts"),
    ],
)
def test_spec_checked_against_the_checkpoint(model, expect, zoo_checkpoint, tmp_path):
    from acpsearch.service.inputs import read_base_checkpoint

    spec = _spec(tmp_path, {**model, "checkpoint": str(zoo_checkpoint)})
    if expect is None:
        assert read_base_checkpoint(spec, (1, 8, 8))["model"]["zoo"] == "resnet20"
        return
    with pytest.raises(AcpError) as exc:
        read_base_checkpoint(spec, (1, 8, 8))
    assert expect.format(ck=str(zoo_checkpoint)) in str(exc.value) and "\n" not in str(exc.value)


# --- factory import path -------------------------------------------------------------------------
def test_factory_found_in_spec_dir_cwd_and_model_path(tmp_path, monkeypatch):
    from acpsearch.service.inputs import build_model

    monkeypatch.setattr(sys, "path", list(sys.path))  # restored afterwards
    write_module(tmp_path / "spec_dir_mod", "own_in_spec_dir")
    spec = _spec(tmp_path / "spec_dir_mod", {"factory": "own_in_spec_dir:make", "bits": 16})
    assert build_model(spec, (1, 8, 8))[0].hash.out_features == 16

    write_module(tmp_path / "libs", "own_in_path")
    (tmp_path / "specs").mkdir()
    spec = _spec(tmp_path / "specs", {"factory": "own_in_path:make", "bits": 16, "path": "../libs"})
    assert spec.model.path == str((tmp_path / "libs").resolve())
    assert build_model(spec, (1, 8, 8))[0].hash.out_features == 16

    write_module(tmp_path / "work", "own_in_cwd")
    monkeypatch.chdir(tmp_path / "work")
    spec = _spec(tmp_path / "specs", {"factory": "own_in_cwd:make", "bits": 16})
    assert build_model(spec, (1, 8, 8))[0].hash.out_features == 16


def test_model_path_is_where_to_look_not_what_to_trust(tmp_path, monkeypatch):
    """submit / run look in the spec's model.path; a worker (trust_spec=False) does not take it from
    a stored spec; found modules never shadow installed ones (the directories end up last)."""
    from acpsearch.checkpoint import import_factory
    from acpsearch.service.inputs import factory_policy

    monkeypatch.setattr(sys, "path", list(sys.path))
    write_module(tmp_path / "libs", "own_path_trust")
    spec = _spec(tmp_path, {"factory": "own_path_trust:make", "bits": 16, "path": "libs"})
    mine = factory_policy(spec)
    assert mine.paths == (str((tmp_path / "libs").resolve()),) and mine.allows("own_path_trust:make")
    worker = factory_policy(spec, trust_spec=False)
    assert worker.paths == () and not worker.allows("own_path_trust:make")
    before = list(sys.path)
    assert callable(import_factory("own_path_trust:make", search=mine.paths))
    assert sys.path[: len(before)] == before and mine.paths[0] in sys.path[len(before) :]


def test_factory_not_found_says_where_it_looked(tmp_path, monkeypatch):
    from acpsearch.service.inputs import build_model

    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = _spec(tmp_path, {"factory": "not_here_mod:make", "bits": 16})
    with pytest.raises(SpecError) as exc:
        build_model(spec, (1, 8, 8))
    msg = str(exc.value)
    assert msg.startswith("model.factory: cannot import module 'not_here_mod' (ModuleNotFoundError")
    assert repr(str(tmp_path.resolve())) in msg and "model.path" in msg and "PYTHONPATH" in msg and "\n" not in msg
    # a module that is found but imports something missing is worded as such
    (tmp_path / "needs_missing.py").write_text("import no_such_dependency_xyz\n")
    spec = _spec(tmp_path, {"factory": "needs_missing:make", "bits": 16})
    with pytest.raises(SpecError, match="imports 'no_such_dependency_xyz', which is not installed"):
        build_model(spec, (1, 8, 8))


# --- space: exclude / bounds / round_to ----------------------------------------------------------
@pytest.fixture()
def own_graph(own_module):
    from acpsearch.graph import ChannelGraph

    torch.manual_seed(0)
    model = own_module.make(bits=16, width=16)
    return ChannelGraph.from_model(model, torch.zeros(1, 1, 8, 8))


def test_exclude_freezes_the_output_group(own_graph):
    import random

    from acpsearch.search.space import Budget, DynamicSpace, excluded_groups

    names = [g.name for g in own_graph.groups]
    assert excluded_groups(own_graph, ["features.0"]) == [names[0]]
    assert excluded_groups(own_graph, ["features.[03]"]) == names[:2]
    assert excluded_groups(own_graph, ["features"]) == names  # a container: every module inside
    assert excluded_groups(own_graph, ["hash"]) == []  # the hash layer's outputs are the code bits
    fixed = excluded_groups(own_graph, ["features.0"])
    space = DynamicSpace(own_graph, Budget(flops=0.6), step=0.25, min_keep=0.25, fixed=fixed)
    assert fixed[0] in space.frozen and fixed[0] not in space.active
    for s in space.sample_many(20, random.Random(0)):
        assert s.kept[fixed[0]] == 16
    narrowed = space.narrow(space.sample_many(3, random.Random(1)))
    assert fixed[0] in narrowed.frozen


def test_exclude_unknown_name_lists_close_matches(own_graph):
    from acpsearch.search.space import excluded_groups

    with pytest.raises(SpecError) as exc:
        excluded_groups(own_graph, ["feature.0"])
    assert str(exc.value).startswith("space.exclude: 'feature.0' names no module of the network; close matches: ")
    assert "'features.0'" in str(exc.value)


def test_bounds_limit_each_group(own_graph):
    import random

    from acpsearch.search.space import Budget, DynamicSpace, group_bounds

    names = [g.name for g in own_graph.groups]
    bounds = group_bounds(own_graph, {names[1]: [0.5, 0.75], "features.8": [1, 1]})
    assert bounds == {names[1]: (0.5, 0.75), names[2]: (1.0, 1.0)}
    space = DynamicSpace(own_graph, Budget(flops=0.8), step=0.25, min_keep=0.25, bounds=bounds)
    assert names[2] in space.frozen and space.ranges[names[1]] == (0.5, 0.75)
    for s in space.sample_many(20, random.Random(0)):
        assert 0.5 <= s.ratios[names[1]] <= 0.75 and s.ratios[names[2]] == 1.0
    with pytest.raises(SpecError, match=r"space.bounds: 'nope' names no channel group of the network; "):
        group_bounds(own_graph, {"nope": [0.5, 1.0]})
    with pytest.raises(SpecError, match=r"space.bounds.* holds no keep ratio of the grid"):
        DynamicSpace(own_graph, Budget(flops=0.8), step=0.25, bounds={names[1]: (0.55, 0.6)})


def test_round_to_and_anchor_respect_the_space(own_graph):
    import random

    from acpsearch.pruning import PruningStrategy
    from acpsearch.search.space import Budget, DynamicSpace

    names = [g.name for g in own_graph.groups]
    space = DynamicSpace(own_graph, Budget(flops=0.5), step=0.1, min_keep=0.2, round_to=8)
    for s in space.sample_many(10, random.Random(0)):
        assert s.round_to == 8 and all(k % 8 == 0 for k in s.kept.values())
    full = own_graph.cost()
    limits = {names[0]: (1.0, 1.0), names[1]: (0.5, 0.75)}
    s = PruningStrategy.global_magnitude(
        own_graph, lambda s: own_graph.cost(s).flops <= 0.5 * full.flops, min_keep=0.2, round_to=2, bounds=limits
    )
    assert s is not None and s.kept[names[0]] == 16 and 16 <= s.kept[names[1]] <= 24
    assert all(k % 2 == 0 for k in s.kept.values()) and own_graph.cost(s).flops <= 0.5 * full.flops


def test_make_space_reads_the_spec(tmp_path, own_module, own_graph):
    from acpsearch.service.inputs import make_space

    names = [g.name for g in own_graph.groups]
    spec = _spec(
        tmp_path,
        {"factory": "own_hashnet_unit:make", "bits": 16},
        space={
            "step": 0.25,
            "min_keep": 0.25,
            "exclude": ["features.0"],
            "bounds": {names[1]: [0.5, 1]},
            "round_to": 4,
        },
    )
    space = make_space(spec, own_graph)
    assert space.fixed == [names[0]] and space.bounds == {names[1]: (0.5, 1.0)} and space._rt == 4
    d = space.describe()
    assert d["excluded"] == [names[0]] and d["round_to"] == 4
    # the defaults reproduce the space of studies written before these keys existed
    old = _spec(tmp_path, {"factory": "own_hashnet_unit:make", "bits": 16}, space={"step": 0.25, "min_keep": 0.25})
    assert old.space.exclude == [] and old.space.bounds == {} and old.space.round_to is None
    assert "excluded" not in make_space(old, own_graph).describe()


@pytest.mark.parametrize(
    "space,expect",
    [
        (
            {"bounds": {"layer1": [0.5, 1.5]}},
            "spec: space.bounds.layer1: must be [min_keep, max_keep] with 0 < min_keep "
            "<= max_keep <= 1, got [0.5, 1.5]",
        ),
        ({"bounds": {"layer1": [0.8, 0.5]}}, "spec: space.bounds.layer1: must be [min_keep, max_keep]"),
        ({"bounds": {"layer1": [0.5]}}, "spec: space.bounds.layer1: must be [min_keep, max_keep]"),
        ({"round_to": 0}, "spec: space.round_to: must be in [1, 1024], got 0"),
        ({"exclude": [""]}, "spec: space.exclude: empty module name"),
        ({"exclude": "layer1"}, "spec: space.exclude: "),
    ],
)
def test_space_keys_validated(space, expect, tmp_path):
    from acpsearch.service.spec import parse_spec

    data = copy.deepcopy(TINY_SPEC)
    data["space"] = space
    with pytest.raises(SpecError) as exc:
        parse_spec(data)
    assert str(exc.value).startswith(expect), str(exc.value)


def test_stored_specs_without_the_new_keys_still_load():
    from acpsearch.service.spec import spec_from_json

    old = copy.deepcopy(TINY_SPEC)
    spec = spec_from_json(old)
    assert spec.model.path is None and spec.space.round_to is None
    assert spec_from_json(spec.to_dict()) == spec
    np.testing.assert_equal(spec.to_dict()["space"]["exclude"], [])
