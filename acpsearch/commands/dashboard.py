"""`acpsearch dashboard`: optuna-dashboard over a storage, with its config file and the checks
made before the server listens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from acpsearch.commands.common import ARTIFACTS_HELP, STORAGE_HELP, _storage, app, err
from acpsearch.errors import SpecError
from acpsearch.service.storage import redact


def dashboard_config(path: str | None) -> dict[str, Any]:
    """dashboards/dashboard.yaml (or --config): storage, artifacts, host, port defaults."""
    import yaml

    from acpsearch.service.spec import safe_yaml_load

    candidates = (
        [Path(path)]
        if path
        else [Path("dashboards/dashboard.yaml"), Path(__file__).resolve().parents[2] / "dashboards" / "dashboard.yaml"]
    )
    for p in candidates:
        if p.is_file():
            try:  # the spec's loader: duplicate keys and alias bombs are refused here too
                cfg = safe_yaml_load(p.read_text()) or {}
            except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise SpecError(f"dashboard config {str(p)!r}: not valid YAML ({first})") from None
            if not isinstance(cfg, dict):
                raise SpecError(f"dashboard config {str(p)!r}: must be a mapping")
            unknown = set(cfg) - {"storage", "artifacts", "host", "port"}
            if unknown:
                raise SpecError(
                    f"dashboard config {str(p)!r}: unknown key {sorted(str(k) for k in unknown)[0]!r} "
                    "(allowed: storage, artifacts, host, port)"
                )
            for key in ("storage", "artifacts", "host"):  # null = the default
                if cfg.get(key) is not None and (not isinstance(cfg[key], str) or not cfg[key].strip()):
                    raise SpecError(
                        f"dashboard config {str(p)!r}: {key}: must be a non-empty string, got {_short(cfg[key])}"
                    )
            port = cfg.get("port")
            if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
                raise SpecError(
                    f"dashboard config {str(p)!r}: port: must be an integer in 1..65535, got {_short(port)}"
                )
            return {**cfg, "_path": str(p)}
        if path:
            raise SpecError(f"--config: {path!r} not found")
    return {}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080


def dashboard_listen_check(host: str, port: int, host_from: str = "--host", port_from: str = "--port") -> None:
    """SpecError (one line naming the flag or config key) unless the server can listen on host:port:
    the host must resolve to an address of this machine and the port must be free. The probe socket
    sets SO_REUSEADDR like the dashboard's HTTP server, so a port in TIME_WAIT is not "in use"."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise SpecError(f"{host_from}: cannot resolve {host!r} ({getattr(exc, 'strerror', None) or exc})") from None
    family, socktype, proto, _, sockaddr = infos[0]
    with socket.socket(family, socktype, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                raise SpecError(f"{port_from}: port {port} on {host} is already in use ({why})") from None
            if exc.errno == errno.EACCES:
                raise SpecError(f"{port_from}: not allowed to listen on port {port} ({why})") from None
            raise SpecError(f"{host_from}: cannot listen on {host}:{port} ({why})") from None


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dashboard_bind(
    host: str | None, port: int | None, cfg: dict[str, Any] | None = None
) -> tuple[str, int, str | None]:
    """Where the dashboard listens: the flag, else the config, else 127.0.0.1:8080; plus the note
    to print when that address is reachable from other machines (None for a loopback address)."""
    cfg = cfg or {}
    host = host or cfg.get("host") or DEFAULT_HOST
    port = int(port or cfg.get("port") or DEFAULT_PORT)
    note = None
    if not _is_loopback(host):
        note = (
            f"note: serving on {host}, not {DEFAULT_HOST}: the dashboard has no authentication and anyone who "
            f"can reach {host}:{port} can read and edit the studies"
        )
    return host, port, note


@app.command()
def dashboard(
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    host: str | None = typer.Option(None, "--host", help="bind address (default 127.0.0.1)"),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="port (default 8080)"),
    artifacts: str | None = typer.Option(None, "--artifacts", help=ARTIFACTS_HELP),
    config: str | None = typer.Option(None, "--config", help="dashboard config (default dashboards/dashboard.yaml)"),
) -> None:
    """Serve optuna-dashboard over the storage with the study artifacts."""
    import errno

    from optuna_dashboard import run_server

    from acpsearch.service.storage import artifact_dir, artifact_store

    cfg = dashboard_config(config)
    cfg_name = f"dashboard config {cfg.get('_path')!r}"
    host_from = "--host" if host else f"{cfg_name}: host" if cfg.get("host") else "--host"
    port_from = "--port" if port else f"{cfg_name}: port" if cfg.get("port") else "--port"
    host, port, note = dashboard_bind(host, port, cfg)
    dashboard_listen_check(host, port, host_from, port_from)  # before opening the storage
    url, st_obj = _storage(storage or cfg.get("storage"))
    art = artifact_dir(url, artifacts or cfg.get("artifacts"))
    if note:  # one unwrapped line each (log files, grep), no rich markup in URLs or paths
        err.print(note, soft_wrap=True, markup=False)
    err.print(
        f"optuna-dashboard: http://{host}:{port}/  storage={redact(url)}  artifacts={art}", soft_wrap=True, markup=False
    )
    try:
        run_server(st_obj, host=host, port=port, artifact_store=artifact_store(art))
    except OSError as exc:  # taken between the check and the server's bind
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise SpecError(f"{port_from}: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        raise
