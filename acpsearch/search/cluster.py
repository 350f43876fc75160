"""Ray connection: a local Ray with the spec's worker count, or an existing cluster by address.

An unreachable `--address` is a user error (exit 2), never a silent fallback to a local run.

A process connects to Ray once for its lifetime. `ray.init` -> `ray.shutdown` -> `ray.init` in one
process, with background threads alive, is a known way to crash Ray's core worker (a SIGSEGV in
`_raylet.so`: Ray issues #31145, #20975). So `acpsearch worker` connects before its first study and
shuts down after its last one. `run_study` reuses an open connection and never closes one it did
not open. `inits()` counts this process's `ray.init` calls; the worker reports it.
"""
from __future__ import annotations

import os
import socket
from typing import Any

from acpsearch.errors import SpecError

_INITS = 0


def inits() -> int:
    """How many times this process called `ray.init` (a worker's whole life: 1)."""
    return _INITS


def ray_env() -> None:
    """Ray 2.60 turns token auth on for local clusters; `ray status` / `ray.init(address=...)` then
    fail unless every party agrees. acpsearch runs with it disabled unless the user set it."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # Tune's new console output prints tables even at verbose=0; acpsearch draws its own progress.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def _check_reachable(address: str) -> None:
    if address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise SpecError(f"--address: expected 'auto' or HOST:PORT, got {address!r}")
    host = host.removeprefix("ray://") or "127.0.0.1"
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise SpecError(f"--address: cannot reach a Ray head at {address} ({exc.strerror or exc})") from None


def connect(address: str | None = None, workers: int = 2) -> dict[str, Any]:
    """Start or join Ray. Reuses a Ray session already open in this process (tests share one).

    Returns {"address", "cpus", "local", "job", "reused"}: `job` is the Ray job id of this
    connection (one per `ray.init`), `reused` says whether the caller must leave it open."""
    global _INITS
    import ray

    from acpsearch.search import crash

    ray_env()
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return {"address": ctx.gcs_address, "cpus": ray.cluster_resources().get("CPU", 0), "local": address is None,
                "job": ctx.get_job_id(), "reused": True}
    _INITS += 1
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise SpecError(f"--address: cannot connect to Ray at {address} ({first[:200]})") from None
        local = False
    else:
        # address="local": always a new local instance. Without it ray.init() joins a cluster that
        # `ray start` left on this machine (and then refuses num_cpus): no --address means local.
        ray.init(address="local", num_cpus=int(workers), include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=True)
        local = True
    crash.rearm()  # faulthandler stays the outermost handler of fatal signals
    ctx = ray.get_runtime_context()
    return {"address": ctx.gcs_address, "cpus": ray.cluster_resources().get("CPU", 0), "local": local,
            "job": ctx.get_job_id(), "reused": False}


def shutdown_if_owned(info: dict[str, Any]) -> None:
    """Shut Ray down only when this call started / joined it (not a shared session)."""
    import ray

    if not info.get("reused") and ray.is_initialized():
        ray.shutdown()
