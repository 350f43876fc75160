"""Trust model: a factory named by a checkpoint (or by a stored study, for a worker) is imported only
from a module the user allowed; checkpoint entries are checked before anything is built."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import acpsearch
from acpsearch.checkpoint import read_checkpoint, save_checkpoint, study_refusal
from acpsearch.errors import CheckpointError, SpecError
from acpsearch.trust import ALLOW_ENV, FactoryNotAllowed, FactoryPolicy

# A user module whose import leaves a mark: importing it at all counts as running its code.
USERMOD = """
from pathlib import Path
Path({marker!r}).write_text("imported")
import torch
from torch import nn


def make(bits=16, in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(8, bits))
"""


@pytest.fixture
def usermod(tmp_path, monkeypatch):
    """Module `acp_usernet` (and `acp_usernet.sub` is not it) on sys.path; importing it writes `marker`."""
    marker = tmp_path / "IMPORTED"
    d = tmp_path / "usercode"
    d.mkdir()
    (d / "acp_usernet.py").write_text(USERMOD.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    sys.modules.pop("acp_usernet", None)
    yield marker, d
    sys.modules.pop("acp_usernet", None)


def _user_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint of acp_usernet:make, written without importing acp_usernet here."""
    from torch import nn

    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(8, 16),
    )
    save_checkpoint(
        path, net, {"factory": "acp_usernet:make", "kwargs": {"bits": 16}}, [1, 1, 8, 8], meta={"dataset": "digits"}
    )
    assert not marker.exists()
    return path


# --- the policy ----------------------------------------------------------------------------------
def test_policy_matches_whole_dotted_components(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    p = FactoryPolicy.from_user(["mypkg", "other.nets"])
    assert p.allows("mypkg:make") and p.allows("mypkg.nets:make") and p.allows("mypkg.nets.deep:f")
    assert not p.allows("mypkg2:make") and not p.allows("my:make") and not p.allows("other:make")
    assert p.allows("other.nets.x:f") and not p.allows("other.netsx:f")
    assert FactoryPolicy.from_user("a, b.c,,").modules == ("a", "b.c")
    assert FactoryPolicy.from_user(None).modules == ()


def test_policy_reads_the_environment_and_refuses_malformed_names(monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "envpkg, mypkg")
    assert FactoryPolicy.from_user(["mypkg"]).modules == ("mypkg", "envpkg")
    assert FactoryPolicy.from_user(None, env=False).modules == ()
    monkeypatch.setenv(ALLOW_ENV, "good, not a module")
    with pytest.raises(SpecError, match=f"{ALLOW_ENV}: 'not a module' is not a module name"):
        FactoryPolicy.from_user(None)
    monkeypatch.delenv(ALLOW_ENV)
    with pytest.raises(SpecError, match="--allow-factory: 'os:system' is not a module name"):
        FactoryPolicy.from_user(["os:system"])


def test_spec_factory_is_trusted_only_where_the_user_gave_the_spec(monkeypatch):
    from conftest import TINY_SPEC

    from acpsearch.service.inputs import factory_policy
    from acpsearch.service.spec import parse_spec

    monkeypatch.delenv(ALLOW_ENV, raising=False)
    data = copy.deepcopy(TINY_SPEC)
    data["model"] = {"factory": "mypkg.nets:make", "bits": 16}
    spec = parse_spec(data)
    assert factory_policy(spec).allows("mypkg.nets:other")  # submit / run: the user wrote it
    assert not factory_policy(spec).allows("os:system")
    worker = factory_policy(spec, None, trust_spec=False)  # a worker: only its own allow-list
    refusal = study_refusal(worker, spec)
    assert isinstance(refusal, FactoryNotAllowed) and refusal.module == "mypkg.nets"
    assert study_refusal(factory_policy(spec, ["mypkg"], trust_spec=False), spec) is None


# --- load_model ----------------------------------------------------------------------------------
def test_load_model_refuses_an_unallowed_factory_before_importing_it(usermod, tmp_path):
    marker, _ = usermod
    path = _user_checkpoint(tmp_path / "u.pt", marker)
    with pytest.raises(
        CheckpointError,
        match=r"model.factory 'acp_usernet:make' is not allowed: module "
        r"'acp_usernet' .*--allow-factory acp_usernet",
    ) as info:
        acpsearch.load_model(path)
    assert "\n" not in str(info.value)
    assert not marker.exists() and "acp_usernet" not in sys.modules  # never imported
    for other in (["acp_user"], ["acp_usernet2"], ["acp_usernet.sub"]):  # prefixes of whole components only
        with pytest.raises(CheckpointError, match="not allowed"):
            acpsearch.load_model(path, allow_factories=other)
    assert not marker.exists()


def test_os_system_checkpoint_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    marker = tmp_path / "PWNED"
    path = save_checkpoint(tmp_path / "evil.pt", torch.nn.Linear(2, 2), {"zoo": "resnet20", "kwargs": {}}, [1, 2])
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"] = {"factory": "os:system", "kwargs": {"command": f"touch {marker}"}}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="module 'os' is imported only if you allow it"):
        acpsearch.load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["keyword", "env", "prefix"])
def test_allowed_factory_still_loads(usermod, tmp_path, monkeypatch, how):
    marker, _ = usermod
    path = _user_checkpoint(tmp_path / "u.pt", marker)
    if how == "keyword":
        model = acpsearch.load_model(path, allow_factories=["acp_usernet"])
    elif how == "env":
        monkeypatch.setenv(ALLOW_ENV, "somethingelse,acp_usernet")
        model = acpsearch.load_model(path)
    else:
        model = acpsearch.load_model(path, allow_factories=FactoryPolicy(("acp_usernet",)))
    assert marker.exists()  # allowed: imported and built
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 16)


def test_allowed_factory_through_the_cli_option_and_the_environment(usermod, tmp_path, monkeypatch, capsys):
    from acpsearch.cli import run

    marker, _ = usermod
    path = _user_checkpoint(tmp_path / "u.pt", marker)
    assert run(["inspect", str(path), "--json"]) == 2
    assert "--allow-factory acp_usernet" in capsys.readouterr().err and not marker.exists()
    assert run(["inspect", str(path), "--json", "--allow-factory", "numpy,acp_usernet"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"]
    monkeypatch.setenv(ALLOW_ENV, "acp_usernet")
    out = tmp_path / "p.pt"
    assert run(["prune", str(path), "--keep", "0.5", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["after"]["params"] > 0
    assert acpsearch.load_model(out).eval()(torch.zeros(1, 1, 8, 8)).shape == (1, 16)


# --- structure and sizes -------------------------------------------------------------------------
def _zoo_checkpoint(tmp_path: Path) -> tuple[Path, dict]:
    from acpsearch.hashing import create_model

    kw = {"bits": 16, "in_channels": 1, "image_size": 8}
    path = save_checkpoint(
        tmp_path / "z.pt", create_model("resnet20", **kw), {"zoo": "resnet20", "kwargs": kw}, [1, 1, 8, 8]
    )
    return path, torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    "change,match",
    [
        (
            lambda c: c["model"]["kwargs"].update(bits=5000),
            r"model.kwargs.bits: must be an integer in \[1, 4096\], got 5000",
        ),
        (
            lambda c: c["model"].update(
                zoo="mobilenetv2", kwargs={"bits": 16, "in_channels": 1, "image_size": 8, "width_mult": 50.0}
            ),
            r"model 'mobilenetv2' .* would have [\d,]+ parameters .*refused before allocating",
        ),
        (lambda c: c["model"]["kwargs"].update(extra=torch.zeros(2)), r"model.kwargs.extra: must be plain data"),
        (
            lambda c: c["model"].update(factory="os:system"),
            r"entry 'model' must name exactly one of 'zoo' or 'factory'",
        ),
        (
            lambda c: c.update(input_shape=[1, 64, 4096, 4096]),
            r"input_shape: \[1, 64, 4096, 4096\] has [\d,]+ elements",
        ),
        (lambda c: c["state_dict"].update(extra=[1.0]), r"state_dict\['extra'\]: must be a tensor, got list"),
        (lambda c: c.update(meta="digits"), r"meta: must be a mapping, got str"),
        (
            lambda c: c.update(
                pruning={"format": "acpsearch-pruning", "groups": {"conv1": {"channels": 16, "kept": [0, 99]}}}
            ),
            r"pruning.groups\['conv1'\].kept: must be a non-empty list of channel indices in \[0, 16\)",
        ),
    ],
)
def test_malformed_entries_are_one_line_naming_file_and_entry(tmp_path, change, match):
    path, ckpt = _zoo_checkpoint(tmp_path)
    change(ckpt)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"checkpoint '{path}': " + match) as info:
        acpsearch.load_model(path)
    assert "\n" not in str(info.value)


def test_integer_weights_still_load(tmp_path):
    path, ckpt = _zoo_checkpoint(tmp_path)
    ckpt["state_dict"] = {
        k: v.round().to(torch.int64) if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()
    }
    torch.save(ckpt, path)
    assert read_checkpoint(path)["state_dict"]
    acpsearch.load_model(path)


# --- workers and `run` ---------------------------------------------------------------------------
def _attrs(url: str) -> dict:
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        return {
            s.study_name: (
                storage.get_study_user_attrs(s._study_id),
                storage.get_study_system_attrs(s._study_id),
                len(storage.get_all_trials(s._study_id)),
            )
            for s in storage.get_all_studies()
        }
    finally:
        storage.remove_session()
        storage.engine.dispose()


def test_worker_refuses_studies_whose_factory_is_not_allowed(usermod, tmp_path, monkeypatch, capsys):
    """A worker skips (before claiming, before Ray) a study whose spec or checkpoint names a factory
    from a module it does not allow, reports it as refused and leaves it as it was; `run NAME` of a
    study whose checkpoint names such a factory is exit 2 with the study untouched."""
    from conftest import TINY_SPEC

    from acpsearch.cli import run
    from acpsearch.service import study as st
    from acpsearch.service.spec import parse_spec
    from acpsearch.service.storage import open_storage

    marker, moddir = usermod
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    storage = open_storage(url)
    by_spec = copy.deepcopy(TINY_SPEC)
    by_spec["model"] = {"factory": "acp_usernet:make", "bits": 16}
    by_ckpt = copy.deepcopy(TINY_SPEC)
    by_ckpt["model"]["checkpoint"] = str(_user_checkpoint(tmp_path / "u.pt", marker))
    st.submit(storage, parse_spec(by_spec), "by-spec")  # the library call: no preflight, nothing imported
    st.submit(storage, parse_spec(by_ckpt), "by-ckpt")
    before = _attrs(url)
    assert sorted(before) == ["by-ckpt", "by-spec"] and not marker.exists()

    env = {k: v for k, v in os.environ.items() if k != ALLOW_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(moddir), *filter(None, [os.environ.get("PYTHONPATH")])])
    res = subprocess.run(
        [
            str(Path(sys.executable).parent / "acpsearch"),
            "worker",
            "--storage",
            url,
            "--json",
            "--allow-factory",
            "acp_user,acp_usernet2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert {r["name"]: r["state"] for r in doc["ran"]} == {"by-spec": "refused", "by-ckpt": "refused"}
    assert all("'acp_usernet'" in r["error"] for r in doc["ran"]) and doc["ray_inits"] == 0
    for name in ("by-spec", "by-ckpt"):
        assert (
            f"worker: skipping study {name!r}: factory module 'acp_usernet' is not allowed "
            f"(--allow-factory acp_usernet or {ALLOW_ENV})"
        ) in res.stderr.splitlines()
    assert "Traceback" not in res.stderr
    assert not marker.exists() and _attrs(url) == before

    capsys.readouterr()
    assert run(["run", "by-ckpt", "--storage", url]) == 2  # run trusts the spec, not the checkpoint's factory
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: checkpoint '{tmp_path / 'u.pt'}': model.factory 'acp_usernet:make' is not allowed"
    ), err
    assert not marker.exists() and _attrs(url) == before


def test_unpruned_zoo_weights_are_counted_before_the_build(tmp_path):
    """kwargs that disagree with the stored weights are refused from the sizes alone."""
    path, ckpt = _zoo_checkpoint(tmp_path)
    ckpt["model"]["kwargs"]["bits"] = 4096
    torch.save(ckpt, path)
    with pytest.raises(
        CheckpointError,
        match=r"weights do not match the architecture \(its model kwargs imply "
        r"[\d,]+ weight elements, the state_dict holds [\d,]+\)",
    ):
        acpsearch.load_model(path)
