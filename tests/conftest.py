"""Shared fixtures: ONE Ray session for all Ray tests, temporary SQLite storages, and one small
finished study (digits, through the CLI) that the service and dashboard tests inspect."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

# Ray 2.60 enables token auth for local clusters; every party (tests, CLI subprocesses, `ray start`)
# must agree, so the suite pins it off before anything imports ray.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session() -> Any:
    """The one Ray session of the test run (2 CPUs, no dashboard); acpsearch reuses it."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


PG_DEFAULT_URL = "postgresql://acpsearch@127.0.0.1/acpsearch"  # what storage/start-postgres.sh prints


def _pg_unreachable(url: str) -> str | None:
    """None when a server answers at the URL's host and port, else why not (one line)."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception as exc:  # noqa: BLE001
        return f"not a database URL ({exc})"
    host, port = u.host or "127.0.0.1", u.port or 5432
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc})"
    return None


@pytest.fixture
def pg_url() -> str:
    """The PostgreSQL storage of the PostgreSQL tests: $ACPSEARCH_TEST_PG_URL (scripts/test.sh starts
    the local server with storage/start-postgres.sh and sets it), else the URL that script prints
    when a server answers there. Unusable -> skip; but with ACPSEARCH_REQUIRE_PG=1 (set by
    scripts/test.sh when it started the server for this run) -> fail."""
    require = os.environ.get("ACPSEARCH_REQUIRE_PG") == "1"
    url = os.environ.get("ACPSEARCH_TEST_PG_URL")
    if not url:
        if require:
            pytest.fail("ACPSEARCH_REQUIRE_PG=1 but ACPSEARCH_TEST_PG_URL is not set")
        if _pg_unreachable(PG_DEFAULT_URL) is not None:
            pytest.skip("no PostgreSQL: set ACPSEARCH_TEST_PG_URL (storage/start-postgres.sh starts one and prints it)")
        url = PG_DEFAULT_URL
    why = _pg_unreachable(url)
    if why is None:
        from acpsearch.errors import StorageError
        from acpsearch.service.storage import open_storage

        try:
            open_storage(url)
        except StorageError as exc:
            why = str(exc)
    if why is not None:
        if require:
            pytest.fail(f"ACPSEARCH_REQUIRE_PG=1 (the server was started for this run) but {url!r} is unusable: {why}")
        pytest.skip(f"PostgreSQL at {url!r} unusable: {why}")
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite storage URL in a temporary directory."""
    return f"sqlite:///{tmp_path / 'studies.db'}"


TINY_SPEC: dict[str, Any] = {
    "model": {"zoo": "resnet20", "bits": 16},
    "data": {
        "dataset": "digits",
        "protocol": {"query_per_class": 10, "train_per_class": 60, "val_per_class": 15, "seed": 0},
    },
    "train": {"loss": "csq", "epochs": 3, "lr": 0.003, "batch_size": 64},
    "budget": {"flops": 0.5},
    "space": {"step": 0.1, "min_keep": 0.2, "criterion": "l1"},
    "encoder": {"objective": "sacp", "epochs": 3, "strategies": 32},
    "search": {"candidates": 24, "sampler": "tpe", "workers": 2, "seed": 0},
    "finetune": {"top": 2, "epochs": 2, "lr": 0.001, "early_stop": "asha"},
}


class StoppedAtPhase(Exception):
    """Raised by StopAtPhase: the run stopped as a killed runner would leave it."""


def stop_at_phase(prefix: str) -> Any:
    """A run reporter that stops the run when a phase named `prefix`... starts (earlier phases are
    finished and stored)."""
    from acpsearch.service.progress import SilentReporter

    class StopAtPhase(SilentReporter):
        def phase(self, name: str, total: int | None = None) -> None:
            if name.startswith(prefix):
                raise StoppedAtPhase(name)

    return StopAtPhase()


def train_tiny_base(path: Path) -> Path:
    """A ResNet-20 hash net (16 bits) trained 3 epochs on digits with TINY_SPEC's protocol."""
    from acpsearch.checkpoint import save_checkpoint
    from acpsearch.hashing import create_model, load_dataset, make_splits, train_hash_net

    splits = make_splits(load_dataset("digits"), **TINY_SPEC["data"]["protocol"])
    kw = {"bits": 16, "in_channels": 1, "image_size": 8}
    model = train_hash_net(
        create_model("resnet20", **kw), splits, epochs=3, lr=0.003, batch_size=64, progress=False
    ).model
    return save_checkpoint(path, model, {"zoo": "resnet20", "kwargs": kw}, [1, 1, 8, 8], meta={"dataset": "digits"})


@pytest.fixture(scope="session")
def finished_studies(tmp_path_factory: pytest.TempPathFactory, ray_session: Any) -> dict[str, Any]:
    """Two tiny digits studies submitted through the CLI and run by `acpsearch worker`:
    A = similarity ranker (SACP encoder) + ASHA; B = L1-retained ranker re-ranked by adaptive BN,
    random sampler, no early stop. Shared by the service and dashboard tests."""
    import copy
    import time

    import yaml

    from acpsearch.cli import run

    root = tmp_path_factory.mktemp("service")
    url = f"sqlite:///{root / 'studies.db'}"
    base = train_tiny_base(root / "base.pt")
    spec_a = copy.deepcopy(TINY_SPEC)
    spec_a["name"] = "tiny-a"  # trains its base network with train: (with augmentation)
    spec_a["train"]["augment"] = True
    spec_b = copy.deepcopy(TINY_SPEC)
    spec_b["name"] = "tiny-b"  # starts from a trained checkpoint
    spec_b["model"]["checkpoint"] = str(base)
    spec_b["search"] = {
        "candidates": 16,
        "sampler": "random",
        "workers": 2,
        "seed": 1,
        "ranker": "l1_retained",
        "rerank": "adaptive_bn",
        "rerank_top": 4,
        "resources": {"cpu": 1, "gpu": 0},
    }
    spec_b["finetune"] = {
        "top": 2,
        "epochs": 1,
        "lr": 0.001,
        "early_stop": None,
        "augment": True,
        "distill": 1.0,
        "resources": {"cpu": 1, "gpu": 0},
    }  # the defaults, written out
    paths = []
    for spec in (spec_a, spec_b):
        p = root / f"{spec['name']}.yaml"
        p.write_text(yaml.safe_dump(spec))
        paths.append(p)
    for p in paths:
        assert run(["submit", str(p), "--storage", url]) == 0
    t0 = time.perf_counter()
    code = run(["worker", "--storage", url, "--artifacts", str(root / "artifacts")])
    seconds = time.perf_counter() - t0
    return {
        "url": url,
        "root": root,
        "artifacts": root / "artifacts",
        "names": ["tiny-a", "tiny-b"],
        "base": base,
        "worker_exit": code,
        "seconds": seconds,
        "specs": {"tiny-a": spec_a, "tiny-b": spec_b},
    }


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module, restored afterwards: on a shared 2-core
    machine OpenMP spin-waiting made tiny convolutions ~100x slower with two threads."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits_feats() -> dict[str, tuple[Any, Any]]:
    """The digits protocol splits as flat numpy features (train / query / database), for the
    unsupervised hashing tests."""
    from acpsearch.hashing import load_dataset, make_splits
    from acpsearch.hashing.unsupervised.table import split_features

    return split_features(make_splits(load_dataset("digits"), seed=0))
