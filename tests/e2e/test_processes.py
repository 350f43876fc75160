"""Processes and outputs: an --address that is not Ray, Ctrl-C, --out files written atomically
(also when the disk is "full": a file-size limit), the latency cache.

The bad-input rows of these causes are in test_bad_inputs.py (block "hardening: processes");
these are the cases that need a real process, a time bound, or succeed."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import yaml
from conftest import TINY_SPEC
from test_bad_inputs import STORED, bare_listener, checkpoint, snapshot, stored  # noqa: F401 - `stored` is a fixture

from acpsearch.cli import run

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
]

ROOT = Path(__file__).resolve().parents[2]
ACPSEARCH = Path(sys.executable).parent / "acpsearch"


def _env(**extra: str) -> dict[str, str]:
    """The environment of an `acpsearch` subprocess: this checkout first on the path (the installed
    `acpsearch` may be another checkout's editable install), one torch thread, Ray quiet."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ACPSEARCH_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        **extra,
    }


def _leftover_tmp(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".probe")))


# --- --address that is not a Ray head ---------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "worker"])
def test_address_not_ray_fails_fast(command, stored, tmp_path, capsys, request):
    """A listener that accepts and never answers: exit 2 within the bound, one line, study untouched
    (the old code called ray.init, which waited for minutes printing Ray's C++ log lines)."""
    ctx = SimpleNamespace(tmp=tmp_path, finalize=request.addfinalizer)
    port = bare_listener("silent")(ctx)["port"]
    argv = ([command, STORED] if command == "run" else [command]) + [
        "--storage",
        stored.url,
        "--address",
        f"127.0.0.1:{port}",
    ]
    capsys.readouterr()
    t0 = time.monotonic()
    code = run(argv)
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2, err
    assert seconds <= 15, f"{seconds:.1f} s"
    assert err.splitlines() == [f"error: --address: 127.0.0.1:{port} is not a Ray head (no gRPC answer within 5 s)"]
    assert snapshot(stored.url) == stored.before


def test_address_probe_accepts_a_grpc_server(request):
    """The probe's other side: a server that answers the HTTP/2 preface with SETTINGS (as Ray's gRPC
    GCS does) passes, so a real head is not refused."""
    import socket
    import threading

    from acpsearch.service.cluster import _check_reachable

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    request.addfinalizer(srv.close)

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # empty SETTINGS frame
            conn.recv(64)

    threading.Thread(target=serve, daemon=True).start()
    _check_reachable(f"127.0.0.1:{srv.getsockname()[1]}", timeout=5)


# --- Ctrl-C ----------------------------------------------------------------------------------------
def _user_attrs(url: str, name: str) -> dict[str, Any]:
    storage = optuna.storages.RDBStorage(url)
    try:
        return storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    finally:
        storage.remove_session()
        storage.engine.dispose()


def test_ctrl_c_on_run_exits_130_and_says_how_to_resume(tmp_path):
    """SIGINT to the process group of `acpsearch run NAME` (what Ctrl-C in a terminal does) while the
    study runs: exit 130, the last stderr line says how to resume, the study is 'interrupted' and
    its lease free. (typer returns 130 for a KeyboardInterrupt; the old cli.run ignored it: exit 0.)"""
    from acpsearch.service import lease as ls

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({**copy.deepcopy(TINY_SPEC), "name": "tiny"}))
    assert run(["submit", str(spec), "--storage", url]) == 0
    proc = subprocess.Popen(
        [str(ACPSEARCH), "run", "tiny", "--storage", url, "--artifacts", str(tmp_path / "art")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while _user_attrs(url, "tiny").get("state") != "running":
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the study never reached 'running'"
            time.sleep(0.5)
        time.sleep(2.0)  # into a phase, not the state write itself
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        try:  # this test's own process group: nothing of its Ray may outlive it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.splitlines()[-1] == "interrupted: resume with acpsearch run tiny", err[-3000:]
    attrs = _user_attrs(url, "tiny")
    assert attrs["state"] == "interrupted"
    assert ls.lease_state(attrs) == "free"


def test_interrupt_exit_status_in_process(stored, monkeypatch, capsys):
    """cli.run returns the status typer returns: Ctrl-C (KeyboardInterrupt) in any command is 130 and
    one line; in `run` the line says how to resume. The study is untouched."""
    import acpsearch.commands.inspect_studies as inspect_studies
    import acpsearch.service.runner as runner

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_study", interrupted)
    capsys.readouterr()
    assert run(["run", STORED, "--storage", stored.url]) == 130
    assert capsys.readouterr().err.splitlines() == [f"interrupted: resume with acpsearch run {STORED}"]
    monkeypatch.setattr(inspect_studies, "_status_rows", interrupted)
    assert run(["status", "--storage", stored.url]) == 130
    assert capsys.readouterr().err.splitlines() == ["interrupted"]
    assert snapshot(stored.url) == stored.before


# --- --out written atomically, also when the disk is full ------------------------------------------
def _limit_file_size(limit: int):
    def preexec() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG

    return preexec


@pytest.fixture(scope="module")
def winner_storage(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A storage whose study 'w' has a winner checkpoint (set directly: export only copies it)."""
    root = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{root / 'studies.db'}"
    ckpt = Path(checkpoint("base")(SimpleNamespace(tmp=root))["ckpt"])
    spec = root / "w.yaml"
    spec.write_text(yaml.safe_dump({**copy.deepcopy(TINY_SPEC), "name": "w"}))
    assert run(["submit", str(spec), "--storage", url]) == 0
    study = optuna.load_study(study_name="w", storage=url)
    study.set_user_attr("winner", {"path": str(ckpt), "finetune_trial": None})
    return SimpleNamespace(url=url, ckpt=ckpt, root=root)


@pytest.mark.parametrize("command", ["prune", "export"])
def test_out_write_failure_leaves_nothing(command, winner_storage, tmp_path):
    """A file-size limit (EFBIG, as on a full disk) while the checkpoint is written: one line naming
    --out, exit 2, no file at the target, no temporary file left."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "x.pt"
    if command == "prune":
        argv = ["prune", str(winner_storage.ckpt), "--keep", "0.5", "--out", str(target)]
    else:
        argv = ["export", "w", "--storage", winner_storage.url, "--out", str(target)]
    assert winner_storage.ckpt.stat().st_size > 200_000  # else the limit below would not bite
    res = subprocess.run(
        [str(ACPSEARCH), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=tmp_path,
        preexec_fn=_limit_file_size(100 * 1024),
    )
    lines = res.stderr.splitlines()
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert re.match(re.escape(f"error: --out: cannot write '{target}' (") + ".*File too large", lines[0]), lines[0]
    assert not target.exists()
    assert _leftover_tmp(out_dir) == [] and _leftover_tmp(tmp_path) == []


def test_export_failure_keeps_the_old_file_and_success_replaces_it(winner_storage, tmp_path):
    """export writes a temp file and renames it: a failed export leaves the previous file as it was,
    a successful one replaces it with an exact copy."""
    target = tmp_path / "x.pt"
    target.write_bytes(b"previous export")
    argv = ["export", "w", "--storage", winner_storage.url, "--out", str(target)]
    res = subprocess.run(
        [str(ACPSEARCH), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=tmp_path,
        preexec_fn=_limit_file_size(100 * 1024),
    )
    assert res.returncode == 2, res.stderr[-3000:]
    assert target.read_bytes() == b"previous export"
    assert run(argv) == 0
    assert target.read_bytes() == winner_storage.ckpt.read_bytes()
    assert _leftover_tmp(tmp_path) == []


def test_prune_out_dir_leaves_no_tmp(tmp_path, capsys):
    """The old prune wrote DIR.tmp next to an existing directory given as --out, then failed."""
    ckpt = checkpoint("base")(SimpleNamespace(tmp=tmp_path))["ckpt"]
    target = tmp_path / "adir"
    target.mkdir()
    capsys.readouterr()
    assert run(["prune", ckpt, "--keep", "0.5", "--out", str(target)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --out: '{target}' is a directory; give a file name"]
    assert _leftover_tmp(tmp_path) == [] and list(target.iterdir()) == []


# --- latency cache ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_graph():
    import torch

    import acpsearch as acp
    from acpsearch.hashing import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", bits=16, in_channels=1, image_size=8).eval()
    return acp.ChannelGraph.from_model(model, torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize(
    "damage",
    ["[]", "null", "42", '"text"', "{}", '{"nodes": 1}', "{not json", b"\xff\xfe garbage", "other-nodes", "nan-tables"],
)
def test_latency_cache_damaged_entry_is_remeasured(damage, small_graph, tmp_path, monkeypatch):
    """A cache entry that is not a table of this graph (another JSON shape, garbage bytes, another
    network's table, non-finite numbers) is measured again and rewritten, not a traceback."""
    from acpsearch.search.latency import LatencyTable, cache_dir

    monkeypatch.setenv("ACPSEARCH_CACHE", str(tmp_path / "cache"))
    kw = dict(batch_size=2, fractions=(0.5, 1.0), repeats=1)
    first = LatencyTable.build(small_graph, **kw)
    (entry,) = list(cache_dir().glob("*.json"))
    doc = json.loads(entry.read_text())
    if damage == "other-nodes":
        doc["nodes"] = doc["nodes"][:-1]
        doc["tables"] = doc["tables"][:-1]
        entry.write_text(json.dumps(doc))
    elif damage == "nan-tables":
        doc["tables"][0][0][0] = float("nan")
        entry.write_text(json.dumps(doc))
    else:
        entry.write_bytes(damage if isinstance(damage, bytes) else damage.encode())
    again = LatencyTable.build(small_graph, **kw)
    assert again.nodes == first.nodes and again.tables.shape == first.tables.shape
    rewritten = json.loads(entry.read_text())
    assert isinstance(rewritten, dict) and rewritten["nodes"] == first.nodes
    assert _leftover_tmp(entry.parent) == []


@pytest.mark.parametrize("where", ["/proc/acpcache", "a-file"])
def test_latency_cache_unusable_is_one_error_before_measuring(where, small_graph, tmp_path, monkeypatch):
    """An ACPSEARCH_CACHE that cannot be created or written: SpecError naming ACPSEARCH_CACHE, raised
    before any layer is timed (not after minutes of measuring, not FileNotFoundError)."""
    import acpsearch.search.latency as latency
    from acpsearch.errors import SpecError

    if where == "a-file":
        (tmp_path / "a-file").write_text("not a directory")
        where = str(tmp_path / "a-file")
    monkeypatch.setenv("ACPSEARCH_CACHE", where)

    def timed(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("measured although the cache cannot be written")

    monkeypatch.setattr(latency, "_standalone", timed)
    with pytest.raises(
        SpecError, match=re.escape(f"ACPSEARCH_CACHE: cannot write the latency cache in '{where}/latency' (")
    ):
        latency.LatencyTable.build(small_graph, batch_size=2, fractions=(0.5, 1.0), repeats=1)
