"""Devices, Ray resources and seeds: the spec's train.device / finetune.resources / search.resources,
what the Tune trials and ranker actors ask Ray for, seeded base training, and (where a GPU exists)
fine-tuning one finalist and scoring candidates on cuda."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from conftest import TINY_SPEC

from acpsearch.devices import (
    actor_options,
    check_cluster_fits,
    check_device,
    resolve_device,
    resources_of,
    seed_everything,
    trial_resources,
    worker_device,
)
from acpsearch.errors import SpecError
from acpsearch.service.spec import parse_spec, spec_from_json

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(**sections: dict[str, Any]) -> Any:
    data = copy.deepcopy(TINY_SPEC)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_spec(data)


# --- spec ----------------------------------------------------------------------------------------
def test_defaults_reproduce_one_cpu_no_gpu():
    spec = _spec()
    assert spec.train.device == "cpu"
    assert spec.finetune.resources.cpu == 1 and spec.finetune.resources.gpu == 0.0
    assert spec.search.resources.cpu == 1 and spec.search.resources.gpu == 0.0
    assert trial_resources(spec) == {"cpu": 1}  # exactly what phase_finetune asked for before
    assert actor_options(spec, "search") == {"num_cpus": 1}


def test_stored_spec_without_the_keys_loads_with_defaults():
    """A study stored before these keys existed: its spec dict lacks them and still loads."""
    data = copy.deepcopy(TINY_SPEC)
    stored = parse_spec(data).to_dict()
    for section in ("finetune", "search"):
        del stored[section]["resources"]
    del stored["train"]["device"]
    again = parse_spec(stored)
    assert again.train.device == "cpu" and trial_resources(again) == {"cpu": 1}
    assert resources_of(again.finetune) == {"cpu": 1, "gpu": 0.0}  # what the trainable reads
    assert resources_of(again.search) == {"cpu": 1, "gpu": 0.0}


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_device_words_parse(device):
    assert _spec(train={"device": device}).train.device == device  # the word only: checked where it runs


def test_fractional_gpu_and_cpus_become_the_trial_request():
    spec = _spec(finetune={"resources": {"cpu": 2, "gpu": 0.25}}, search={"resources": {"gpu": 0.5}})
    assert trial_resources(spec) == {"cpu": 2, "gpu": 0.25}
    assert actor_options(spec, "search") == {"num_cpus": 1, "num_gpus": 0.5}
    assert trial_resources(spec_from_json(spec.to_dict())) == {"cpu": 2, "gpu": 0.25}  # stored: the same
    assert trial_resources(_spec(finetune={"resources": {"gpu": 1}})) == {"cpu": 1, "gpu": 1.0}


@pytest.mark.parametrize(
    "section,value,expect",
    [
        ("train", {"device": "gpu"}, "spec: train.device: must be one of auto, cpu, cuda, cuda:N, got 'gpu'"),
        ("train", {"device": "cuda:"}, "spec: train.device: must be one of auto, cpu, cuda, cuda:N, got 'cuda:'"),
        ("train", {"device": 0}, "spec: train.device: input should be a valid string, got 0"),
        ("finetune", {"resources": {"gpu": -0.25}}, "spec: finetune.resources.gpu: must be in [0, 1], got -0.25"),
        ("finetune", {"resources": {"gpu": 1.5}}, "spec: finetune.resources.gpu: must be in [0, 1], got 1.5"),
        ("finetune", {"resources": {"gpu": 2}}, "spec: finetune.resources.gpu: must be in [0, 1], got 2"),
        ("finetune", {"resources": {"cpu": 0}}, "spec: finetune.resources.cpu: must be in [1, 1024], got 0"),
        ("finetune", {"resources": {"cpu": 0.5}}, "spec: finetune.resources.cpu: input should be a valid integer"),
        ("search", {"resources": {"gpus": 1}}, "spec: search.resources.gpus: unknown key (allowed: cpu, gpu)"),
        (
            "search",
            {"resources": {"gpu": True}},
            "spec: search.resources.gpu: input should be a valid number, got true",
        ),
    ],
)
def test_bad_device_and_resources_are_one_line(section, value, expect):
    with pytest.raises(SpecError) as exc:
        _spec(**{section: value})
    assert str(exc.value).startswith(expect) and "\n" not in str(exc.value)


# --- resolving on this machine -------------------------------------------------------------------
def test_resolve_device_on_this_machine():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert worker_device(0).type == "cpu" and worker_device(0.0).type == "cpu"
    with pytest.raises(SpecError, match=r"^train\.device: must be one of"):
        check_device("CUDA", "train.device")
    if not CUDA:
        with pytest.raises(SpecError, match=r"^train\.device: 'cuda' asked, but torch sees no CUDA GPU"):
            resolve_device("cuda", "train.device")
        with pytest.raises(RuntimeError, match="Ray gave this worker 0.25 GPU, but torch sees no CUDA GPU"):
            worker_device(0.25)
    else:
        assert worker_device(0.25).type == "cuda"
        with pytest.raises(SpecError, match="torch sees"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_cluster_must_offer_what_a_worker_asks():
    check_cluster_fits({"CPU": 2.0}, {"cpu": 1, "gpu": 0.0}, "finetune.resources")
    check_cluster_fits({"CPU": 2.0, "GPU": 1.0}, {"cpu": 2, "gpu": 0.25}, "finetune.resources")
    with pytest.raises(
        SpecError,
        match=r"^finetune\.resources\.gpu: 0\.25 GPU asked per worker, the Ray cluster "
        r"has none \(start its nodes with --num-gpus",
    ):
        check_cluster_fits({"CPU": 2.0}, {"cpu": 1, "gpu": 0.25}, "finetune.resources")
    with pytest.raises(SpecError, match=r"^search\.resources\.cpu: 4 CPUs asked per worker, the Ray cluster has 2$"):
        check_cluster_fits({"CPU": 2.0}, {"cpu": 4, "gpu": 0.0}, "search.resources")


# --- seeds ---------------------------------------------------------------------------------------
def test_seed_fixes_the_service_base_network_init():
    """phase_base seeds before build_model: the same protocol seed, the same initial weights."""
    from acpsearch.service.inputs import build_model

    spec = _spec()

    def init(seed: int) -> dict[str, torch.Tensor]:
        torch.randn(7)  # whatever ran before must not matter
        seed_everything(seed)
        return build_model(spec, (1, 8, 8))[0].state_dict()

    a, b, c = init(0), init(0), init(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def _base_phase(tmp_path, name: str) -> dict[str, torch.Tensor]:
    """Run the real phase_base of a fresh study (1 epoch on tiny digits) and return base.pt's weights."""
    from acpsearch.checkpoint import read_checkpoint
    from acpsearch.service import study as st
    from acpsearch.service.context import StudyRun
    from acpsearch.service.inputs import factory_policy, load_data
    from acpsearch.service.phases import base
    from acpsearch.service.progress import SilentReporter
    from acpsearch.service.runner import run_phase
    from acpsearch.service.storage import artifact_store, open_storage

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    storage = open_storage(url)
    spec = _spec(train={"epochs": 1})
    st.submit(storage, spec, name)
    study = st.load_search_study(storage, name)
    art = tmp_path / "artifacts"
    art.mkdir(exist_ok=True)
    ctx = StudyRun(
        storage=storage,
        url=url,
        study=study,
        spec=spec,
        artifacts=art,
        store=artifact_store(art),
        reporter=SilentReporter(),
        workers=1,
        allow=factory_policy(spec),
        splits=load_data(spec),
    )
    torch.randn(11)  # global RNG state differs between the two runs
    run_phase(ctx, base, {}, None)
    rec = st.phase_done(st.load_search_study(storage, name), "base")
    assert rec["training"]["device"] == "cpu"
    return read_checkpoint(rec["path"])["state_dict"]


def test_service_base_phase_is_reproducible(tmp_path):
    a = _base_phase(tmp_path, "seed-a")
    b = _base_phase(tmp_path, "seed-b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- functional signal on a device ---------------------------------------------------------------
def _probe_setup():
    from acpsearch.graph import ChannelGraph
    from acpsearch.hashing import create_model
    from acpsearch.pruning import PruningStrategy

    torch.manual_seed(0)
    model = create_model("resnet20", bits=16, in_channels=1, image_size=8).eval()
    ex = torch.zeros(1, 1, 8, 8)
    graph = ChannelGraph.from_model(model, ex)
    X = torch.randn(96, 1, 8, 8)
    strategies = [
        PruningStrategy(graph, {g.name: 0.5 for g in graph.groups}),
        PruningStrategy(graph, {g.name: 1.0 for g in graph.groups}),
    ]
    return model, ex, X, strategies


def test_functional_probe_device_cpu_is_the_default():
    from acpsearch.pruning.probe import FunctionalProbe

    model, ex, X, strategies = _probe_setup()
    default = FunctionalProbe(model, ex, X[:64], X[64:], calib_batch_size=32).agreement(strategies)
    on_cpu = FunctionalProbe(model, ex, X[:64], X[64:], calib_batch_size=32, device="cpu").agreement(strategies)
    assert list(default) == list(on_cpu) and on_cpu[1] == 1.0


@needs_cuda
def test_functional_probe_on_cuda_matches_cpu():
    from acpsearch.pruning.probe import FunctionalProbe

    model, ex, X, strategies = _probe_setup()
    cpu = FunctionalProbe(model, ex, X[:64], X[64:], calib_batch_size=32).agreement(strategies)
    gpu_probe = FunctionalProbe(model, ex, X[:64], X[64:], calib_batch_size=32, device="cuda")
    gpu = gpu_probe.agreement(strategies)
    assert gpu_probe.base_codes.device.type == "cpu" and gpu[1] == 1.0
    assert abs(cpu[0] - gpu[0]) < 0.05


# --- one finalist fine-tuned on cuda through Ray Tune ----------------------------------------------
@needs_cuda
def test_one_finalist_finetunes_on_cuda(tmp_path, ray_session):
    """finetune.resources {cpu: 1, gpu: 0.5}: the Tune trial gets a GPU share and trains on cuda."""
    from ray import tune

    from acpsearch.checkpoint import read_checkpoint, save_checkpoint
    from acpsearch.graph import ChannelGraph
    from acpsearch.hashing import create_model, load_dataset, make_splits
    from acpsearch.service.tasks import finetune_trainable, light_splits

    if ray_session.cluster_resources().get("GPU", 0) < 0.5:
        pytest.skip("the test Ray session has no GPU")
    spec = _spec(finetune={"epochs": 1, "resources": {"cpu": 1, "gpu": 0.5}})
    splits = make_splits(load_dataset("digits"), **TINY_SPEC["data"]["protocol"])
    kw = {"bits": 16, "in_channels": 1, "image_size": 8}
    base = create_model("resnet20", **kw)
    ckpt_path = save_checkpoint(tmp_path / "base.pt", base, {"zoo": "resnet20", "kwargs": kw}, [1, 1, 8, 8])
    ckpt = read_checkpoint(ckpt_path)
    graph = ChannelGraph.from_model(base, torch.zeros(1, 1, 8, 8))
    ratios = {g.name: 0.5 for g in graph.groups}
    trainable = tune.with_resources(
        tune.with_parameters(
            finetune_trainable, ckpt=ckpt, spec=spec, splits=light_splits(splits), out_dir=str(tmp_path)
        ),
        trial_resources(spec),
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"finalist": {"number": 0, "ratios": ratios, "round_to": 4}},
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0),
    )
    result = tuner.fit()[0]
    assert result.error is None and result.metrics["epoch"] == 1 and result.metrics["device"] == "cuda"
    assert read_checkpoint(tmp_path / "finalist-0.pt")["meta"]["candidate"] == 0


def test_run_study_device_is_checked_before_the_study_is_touched(tmp_path):
    """run_study(device=...) overrides train.device; one this machine lacks blocks the study before the
    lease and before Ray (a worker skips it), and the study's attributes stay as they were."""
    from acpsearch.service import study as st
    from acpsearch.service.runner import StudyBlocked, run_study
    from acpsearch.service.storage import open_storage

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    storage = open_storage(url)
    st.submit(storage, _spec(), "dev")
    before = st.load_search_study(storage, "dev").user_attrs
    with pytest.raises(StudyBlocked, match=r"^--device: 'cuda:99' asked, but torch sees"):
        run_study(url, "dev", device="cuda:99", artifacts=tmp_path / "art")
    with pytest.raises(SpecError, match=r"^--device: must be one of"):
        run_study(url, "dev", device="gpu", artifacts=tmp_path / "art")
    assert st.load_search_study(open_storage(url), "dev").user_attrs == before
