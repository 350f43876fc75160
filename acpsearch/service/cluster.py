"""Ray connection: a local Ray with the spec's worker count, or an existing cluster by address.

An unreachable `--address` is a user error (exit 2), never a silent fallback to a local run.

A process connects to Ray once for its lifetime. `ray.init` -> `ray.shutdown` -> `ray.init` in one
process, with background threads alive, is a known way to crash Ray's core worker (a SIGSEGV in
`_raylet.so`: Ray issues #31145, #20975). So `acpsearch worker` connects before its first study and
shuts down after its last one. `run_study` reuses an open connection and never closes one it did
not open. `inits()` counts this process's `ray.init` calls; the worker reports it.
"""

from __future__ import annotations

import logging
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


# HTTP/2 client connection preface + an empty SETTINGS frame (RFC 9113 section 3.4)
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
PROBE_TIMEOUT_S = 5.0


def _speaks_http2(sock: socket.socket, timeout: float) -> str | None:
    """None when the peer answers an HTTP/2 preface with a SETTINGS frame, else why not.

    Ray's GCS (and the Ray Client server of ray://) is a gRPC server, and every HTTP/2 server's first
    frame is SETTINGS (RFC 9113 section 3.4). A listener that stays silent, closes, or answers
    something else is not a Ray head; `ray.init` would wait for it for minutes, printing Ray's C++
    log lines, so it is never called for such an address."""
    sock.settimeout(timeout)
    try:
        sock.sendall(_H2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = sock.recv(9 - len(head))
            if not chunk:
                return "it closed the connection" if not head else "it answered something else than gRPC"
            head += chunk
    except TimeoutError:
        return f"no gRPC answer within {timeout:g} s"
    except OSError as exc:
        return f"the connection failed: {exc.strerror or exc}"
    if head[3] != 0x04:  # frame type SETTINGS
        return "it answered something else than gRPC"
    return None


def _check_reachable(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Exit 2 (SpecError) unless `address` is a reachable gRPC server, before `ray.init` is called
    and before any study is touched: at most `timeout` seconds to connect plus `timeout` to answer."""
    if address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise SpecError(f"--address: expected 'auto' or HOST:PORT, got {address!r}")
    host = host.removeprefix("ray://") or "127.0.0.1"
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except (OSError, OverflowError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise SpecError(f"--address: cannot reach a Ray head at {address} ({why})") from None
    with sock:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return  # a TLS head does not answer a plaintext preface; ray.init checks it
        why = _speaks_http2(sock, timeout)
    if why is not None:
        raise SpecError(f"--address: {address} is not a Ray head ({why})")


def connect(address: str | None = None, workers: int = 2) -> dict[str, Any]:
    """Start or join Ray. Reuses a Ray session already open in this process (tests share one).

    Returns {"address", "cpus", "local", "job", "reused"}: `job` is the Ray job id of this
    connection (one per `ray.init`), `reused` says whether the caller must leave it open."""
    global _INITS
    import ray

    from acpsearch.service import crash

    ray_env()
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return {
            "address": ctx.gcs_address,
            "cpus": ray.cluster_resources().get("CPU", 0),  # type: ignore[no-untyped-call]
            "local": address is None,
            "job": ctx.get_job_id(),
            "reused": True,
        }
    _INITS += 1
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise SpecError(f"--address: cannot connect to Ray at {address} ({first[:200]})") from None
        local = False
    else:
        # address="local": always a new local instance. Without it ray.init() joins a cluster that
        # `ray start` left on this machine (and then refuses num_cpus): no --address means local.
        ray.init(
            address="local",
            num_cpus=int(workers),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            configure_logging=True,
        )
        local = True
    crash.rearm()  # faulthandler stays the outermost handler of fatal signals
    ctx = ray.get_runtime_context()
    return {
        "address": ctx.gcs_address,
        "cpus": ray.cluster_resources().get("CPU", 0),  # type: ignore[no-untyped-call]
        "local": local,
        "job": ctx.get_job_id(),
        "reused": False,
    }


def shutdown_if_owned(info: dict[str, Any]) -> None:
    """Shut Ray down only when this call started / joined it (not a shared session)."""
    import ray

    if not info.get("reused") and ray.is_initialized():
        ray.shutdown()
