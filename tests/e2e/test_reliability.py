"""Reliability with real processes: runners SIGKILLed in every phase, Ray workers killed
mid-trial, two `acpsearch worker` processes on one storage, a two-node Ray cluster.

Every runner here is a real `acpsearch` subprocess joined to one two-node Ray cluster
(`ray.cluster_utils.Cluster`, 1 CPU per node) that this module starts; the tests watch the
Optuna storage from outside, the way a user's `acpsearch status` would.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest
import yaml
from conftest import TINY_SPEC, train_tiny_base

from acpsearch.service.crash import log_path as crash_log_path

ACPSEARCH = [sys.executable, "-c", "from acpsearch.cli import main; main()"]
COMPLETE, FAIL, RUNNING, PRUNED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.RUNNING,
    optuna.trial.TrialState.PRUNED,
)


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        "ACPSEARCH_TORCH_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """An acpsearch CLI process in its own process group (so SIGKILL takes all of it)."""
    fh = open(log, "ab")  # noqa: SIM115 - closed by the OS when the process ends
    proc = subprocess.Popen(
        [*ACPSEARCH, *args], stdout=fh, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
    )
    art = Path(args[args.index("--artifacts") + 1]) if "--artifacts" in args else None
    _WHY[proc.pid] = (log, art)
    return proc


_WHY: dict[int, tuple[Path, Path | None]] = {}


def _why(proc: subprocess.Popen) -> str:
    """What a failed runner left: the tail of its output and its crash logs (thread stacks)."""
    log, art = _WHY.get(proc.pid, (None, None))
    out = log.read_text(errors="replace")[-3000:] if log is not None and log.is_file() else ""
    return out + ("\n" + _crash_logs(art) if art is not None else "")


def _sigkill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster() -> Any:
    """A two-node Ray cluster on this machine: head + one worker node, 1 CPU each."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    yield c
    c.shutdown()


def _spec(name: str, **changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(TINY_SPEC)
    spec["name"] = name
    for key, value in changes.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def _submit(tmp: Path, url: str, spec: dict[str, Any]) -> str:
    p = tmp / f"{spec['name']}.yaml"
    p.write_text(yaml.safe_dump(spec))
    out = subprocess.run(
        [*ACPSEARCH, "submit", str(p), "--storage", url], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return spec["name"]


_STORAGES: dict[str, Any] = {}


def _study(url: str, name: str) -> Any:
    """The study as stored (one storage object per URL: the tests poll it often)."""
    if url not in _STORAGES:
        from acpsearch.service.storage import open_storage

        _STORAGES[url] = open_storage(url)  # SQLite with a lock timeout; psycopg2 for postgresql://
    return optuna.load_study(study_name=name, storage=_STORAGES[url])


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_base(tmp_path_factory.mktemp("base") / "base.pt")


def _wait(cond: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 1200.0) -> None:
    """Poll the storage until `cond` holds; generous timeout: on a loaded 2-core machine Ray
    workers (niceness 15) were measured 10x slower than on a quiet one."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if cond():
                return
        except (KeyError, ValueError):  # study or companion not created yet
            pass
        if proc.poll() is not None:
            raise AssertionError(f"the runner exited ({proc.returncode}) before {what}:\n{_why(proc)}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _crash_logs(art: Path) -> str:
    """Every crash log (thread stacks of a runner killed by a fatal signal) under `art`, for
    assertion messages: a dead runner's stderr alone is often empty."""
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-6000:]}" for p in sorted(art.glob("crash-*.log")))


def _phase(attrs: dict[str, Any], phase: str) -> dict[str, Any] | None:
    rec = attrs.get(f"phase.{phase}")
    return rec if isinstance(rec, dict) and rec.get("done") else None


# --- SIGKILL in every phase ----------------------------------------------------------------------
def test_sigkill_in_every_phase_then_run_finishes_the_study(tmp_path, cluster):
    """Kill the runner (SIGKILL, whole process group) during base training, encoder training,
    the candidate search and finalist fine-tuning; each time `acpsearch run NAME` resumes."""
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    target = 96
    spec = _spec(
        "killed",
        train={"epochs": 15},
        encoder={"objective": "effect", "epochs": 40, "strategies": 24},
        search={"candidates": target, "sampler": "tpe", "workers": 2, "seed": 0},
        finetune={"top": 2, "epochs": 3, "lr": 0.001, "early_stop": None},
    )
    name = _submit(tmp_path, url, spec)
    run_args = ["run", name, "--storage", url, "--address", cluster.address, "--artifacts", str(tmp_path / "art")]
    log = tmp_path / "runner.log"

    def attrs() -> dict[str, Any]:
        return _study(url, name).user_attrs

    def candidates(states: tuple = (COMPLETE,)) -> list[Any]:
        """The searched candidates (the magnitude anchor, added after the search, is checked below)."""
        return [
            t
            for t in _study(url, name).get_trials(deepcopy=False, states=states)
            if t.user_attrs.get("source", "search") == "search"
        ]

    kills: dict[str, dict[str, Any]] = {}
    when = {
        "base": lambda a: a.get("state") == "running" and not _phase(a, "base"),
        "encoder": lambda a: _phase(a, "base") and not _phase(a, "encoder"),
        "search": lambda a: _phase(a, "encoder") and not _phase(a, "search") and len(candidates()) >= 16,
        "finetune": lambda a: (
            _phase(a, "search")
            and not _phase(a, "finetune")
            and any(t.intermediate_values for t in _study(url, name + ".finetune").get_trials(deepcopy=False))
        ),
    }
    for phase, cond in when.items():
        proc = _start(run_args, log)
        try:
            _wait(lambda: bool(cond(attrs())), proc, f"the {phase} phase")  # noqa: B023 - called within this iteration
            if phase == "base":
                time.sleep(1.0)  # into the training loop
        finally:
            _sigkill(proc)  # also when waiting failed: never leave a runner behind
        a = attrs()
        assert not _phase(a, phase), f"{phase} finished before the kill; make it longer"
        kills[phase] = {
            "attrs": a,
            "complete": {t.number: t.params for t in candidates()},
            "running": [t.number for t in candidates((RUNNING,))],
        }
    # the last run finishes the study
    proc = _start(run_args, log)
    try:
        assert proc.wait(timeout=1800) == 0, _why(proc)
    finally:
        if proc.poll() is None:
            _sigkill(proc)
    a = attrs()
    assert a["state"] == "done" and a.get("winner")
    # finished phases were not redone: their records are the ones written before the later kills
    for phase, later in (("base", "search"), ("encoder", "search"), ("search", "finetune")):
        assert a[f"phase.{phase}"] == kills[later]["attrs"][f"phase.{phase}"], phase
    # completed candidates were kept, none counted twice, the total is the spec's number
    done = {t.number: t.params for t in candidates()}
    assert len(done) == target
    for number, params in kills["search"]["complete"].items():
        assert done[number] == params
    failed = candidates((FAIL,))
    assert {t.number for t in failed} >= set(kills["search"]["running"])
    for t in failed:
        assert t.user_attrs.get("fail_reason"), t.number
    # stale RUNNING candidates were re-queued with the same keep ratios
    for number in kills["search"]["running"]:
        params = next(t.params for t in failed if t.number == number)
        if params:
            retried = [t for t in candidates() if t.user_attrs.get("retry_of") == number]
            # a trial killed while its ratios were being suggested (define-by-run) has only some of
            # them: those are kept and the rest drawn anew, so the retry's ratios contain them
            assert retried and params.items() <= retried[0].params.items()
    # the magnitude anchor was added once, across all the kills, and is a finalist
    anchors = [
        t for t in _study(url, name).get_trials(deepcopy=False) if t.user_attrs.get("source", "search") != "search"
    ]
    assert len(anchors) == 1 and anchors[0].number in a["phase.finetune"]["finalists"]
    # fine-tuning: the killed finalists FAIL with a reason, then every finalist finished once
    ft = _study(url, name + ".finetune")
    ok = ft.get_trials(deepcopy=False, states=(COMPLETE, PRUNED))
    assert sorted(t.user_attrs["candidate"] for t in ok) == sorted(a["phase.finetune"]["finalists"])
    assert all(t.user_attrs.get("test_map") is not None and t.user_attrs.get("val_map") is not None for t in ok)
    assert all(t.user_attrs.get("fail_reason") for t in ft.get_trials(deepcopy=False, states=(FAIL,)))
    assert len(ft.get_trials(deepcopy=False, states=(FAIL,))) >= 1
    # five runs recorded: four killed (no end), the last one done
    runs = a["runs"]
    assert len(runs) == 5 and runs[-1]["outcome"] == "done" and all("ended" not in r for r in runs[:-1])
    # the base network was trained once: the stored artifact is the one of the first record
    assert Path(a["phase.base"]["path"]).exists()


# --- killed Ray workers --------------------------------------------------------------------------
def _kill_first(prefix: str, done: list[str], stop: threading.Event, session_dir: str) -> None:
    """Background killer: SIGKILL the first Ray worker process whose title starts with `prefix`
    and whose raylet (its parent) belongs to `session_dir`, the test's own cluster: another Ray
    on the same machine (a benchmark, a second test run) must not lose its workers."""
    while not stop.is_set():
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or []).strip()
            if cmd.startswith(prefix):
                try:
                    parent = p.parent()
                    if parent is None or session_dir not in " ".join(parent.cmdline()):
                        continue
                    p.kill()
                    done.append(f"{p.info['pid']} {cmd}")
                    return
                except psutil.Error:
                    continue
        time.sleep(0.05)


def test_killed_ray_workers_fail_their_trials_which_are_retried(tmp_path, cluster, tiny_base):
    """SIGKILL the Ray actor scoring candidates, later the Tune worker fine-tuning a finalist:
    the first gives FAIL candidates whose ratios are re-queued, the second is restarted by Tune;
    the study completes with exactly the spec's number of candidates."""
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    base = tiny_base
    target = 24
    spec = _spec(
        "crashy",
        model={"checkpoint": str(base)},
        encoder={"objective": "sacp", "epochs": 3, "strategies": 32},
        search={"candidates": target, "sampler": "random", "workers": 2, "seed": 3, "ranker": "adaptive_bn"},
        finetune={"top": 1, "epochs": 3, "lr": 0.001, "early_stop": None},
    )
    name = _submit(tmp_path, url, spec)
    log = tmp_path / "runner.log"
    proc = _start(
        ["run", name, "--storage", url, "--address", cluster.address, "--artifacts", str(tmp_path / "a")], log
    )
    stop = threading.Event()
    session = cluster.head_node.get_session_dir_path()
    killed_rank: list[str] = []
    killed_tune: list[str] = []
    try:
        # once the first candidates are in, kill an actor while it scores (adaptive BN: ~0.2 s each)
        _wait(lambda: len(_study(url, name).get_trials(deepcopy=False, states=(COMPLETE,))) >= 8, proc, "candidates")
        threading.Thread(
            target=_kill_first, args=("ray::RankerWorker.score", killed_rank, stop, session), daemon=True
        ).start()
        _wait(lambda: _phase(_study(url, name).user_attrs, "search") is not None, proc, "the end of the search")
        assert killed_rank, "the search ended before a scoring actor could be killed"
        threading.Thread(
            target=_kill_first, args=("ray::ImplicitFunc.train", killed_tune, stop, session), daemon=True
        ).start()
        assert proc.wait(timeout=1800) == 0, _why(proc)
    finally:
        stop.set()
        if proc.poll() is None:
            _sigkill(proc)
    assert killed_rank and killed_tune, (killed_rank, killed_tune)
    study = _study(url, name)
    assert study.user_attrs["state"] == "done"
    complete = study.get_trials(deepcopy=False, states=(COMPLETE,))
    failed = study.get_trials(deepcopy=False, states=(FAIL,))
    assert len(complete) == target
    assert failed and all("ray worker failed" in t.user_attrs["fail_reason"] for t in failed)
    for t in failed:  # each failed candidate came back with the same ratios
        retried = [c for c in complete if c.user_attrs.get("retry_of") == t.number]
        assert retried and retried[0].params == t.params and retried[0].user_attrs["attempt"] == 2
    ft = _study(url, name + ".finetune").get_trials(deepcopy=False)
    assert len(ft) == 1 and ft[0].state == COMPLETE
    assert len(ft[0].user_attrs.get("failed_attempts", [])) >= 1
    assert ft[0].user_attrs["test_map"] is not None


# --- several runners -----------------------------------------------------------------------------
def test_two_workers_share_studies_and_never_run_one_twice(tmp_path, cluster, tiny_base):
    """Two `acpsearch worker` processes on one storage and one cluster take the submitted studies
    between them: every study is run exactly once, by one of them, to the end."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    base = tiny_base
    names = []
    for i in range(3):
        spec = _spec(
            f"shared-{i}",
            model={"checkpoint": str(base)},
            encoder={"objective": "sacp", "epochs": 3, "strategies": 32},
            search={"candidates": 16, "sampler": "random", "workers": 1, "seed": i},
            finetune={"top": 1, "epochs": 1, "lr": 0.001, "early_stop": None},
        )
        names.append(_submit(tmp_path, url, spec))
    art = tmp_path / "art"
    args = [
        "worker",
        "--storage",
        url,
        "--address",
        cluster.address,
        "--workers",
        "1",
        "--json",
        "--artifacts",
        str(art),
    ]
    procs = [
        subprocess.Popen(
            [*ACPSEARCH, *args],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        outs = [p.communicate(timeout=1800) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                _sigkill(p)
    assert [p.returncode for p in procs] == [0, 0], ([o[1][-3000:] for o in outs], _crash_logs(art))
    reports = [json.loads(o[0]) for o in outs]
    ran = [[r["name"] for r in rep["ran"] if r["state"] == "done"] for rep in reports]
    assert sorted(ran[0] + ran[1]) == sorted(names), ran  # each study once, by exactly one worker
    assert ran[0] and ran[1], ran  # both took part
    for name in names:
        a = _study(url, name).user_attrs
        assert a["state"] == "done" and len(a["runs"]) == 1 and a["runs"][0]["outcome"] == "done"
        assert len(_study(url, name).get_trials(deepcopy=False, states=(COMPLETE,))) == 16
    # one Ray connection per worker for its whole life: one ray.init, and every study it ran
    # recorded that connection's job id (a reconnect per study would give each study a new job)
    assert max(len(r) for r in ran) >= 2, ran
    for rep, mine in zip(reports, ran):
        assert rep["ray_inits"] == 1, rep
        assert {_study(url, n).user_attrs["ray"]["job"] for n in mine} == {rep["ray_job"]}, rep
    assert reports[0]["ray_job"] != reports[1]["ray_job"]
    assert not list(art.glob("crash-*.log"))  # no crash, no crash log


def test_a_worker_killed_by_sigsegv_leaves_thread_stacks_and_another_worker_resumes_its_study(
    tmp_path, cluster, tiny_base
):
    """A fatal signal in a worker (what a crash inside Ray's C++ threads is) writes the Python stack
    of every thread to stderr and to a crash log in the artifacts folder; the study it held is
    taken over by the next worker once the dead worker's lease is free, and finished."""
    url = f"sqlite:///{tmp_path / 'segv.db'}"
    spec = _spec(
        "segv",
        model={"checkpoint": str(tiny_base)},
        encoder={"objective": "sacp", "epochs": 3, "strategies": 32},
        search={"candidates": 16, "sampler": "random", "workers": 1, "seed": 0},
        finetune={"top": 1, "epochs": 1, "lr": 0.001, "early_stop": None},
    )
    name = _submit(tmp_path, url, spec)
    art = tmp_path / "art"
    args = [
        "worker",
        "--storage",
        url,
        "--address",
        cluster.address,
        "--workers",
        "1",
        "--json",
        "--artifacts",
        str(art),
    ]
    first = subprocess.Popen(
        [*ACPSEARCH, *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait(lambda: _study(url, name).user_attrs.get("state") == "running", first, "the study to start")
        time.sleep(1.0)
        os.kill(first.pid, signal.SIGSEGV)  # the worker process only: its crash helper must survive it
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            _sigkill(first)
    # Ray's own fatal-signal handler may run after faulthandler's and end the process with abort()
    assert first.returncode in (-signal.SIGSEGV, -signal.SIGABRT), (first.returncode, err[-3000:])
    log = crash_log_path(art, first.pid)
    assert log.is_file(), (err[-3000:], sorted(p.name for p in art.iterdir()))
    text = log.read_text()
    for out in (text, err):
        assert re.search(r"Fatal Python error: (Segmentation fault|Aborted)", out), out[-3000:]
        assert out.count("most recent call first") >= 2, out[-3000:]  # every thread, not just one
        # the main thread's stack names where it was; faulthandler prints at most 100 frames of a
        # thread ("  ..." after them), so a deep one (an import chain) hides run_study: then the
        # lease-renewing thread, alive only inside run_study, shows the study was running
        assert "in run_study" in out or ("\n  ...\n" in out and "in _renew" in out), out[-3000:]
    assert f"process {first.pid}" in text.splitlines()[0]
    a = _study(url, name).user_attrs
    assert a["state"] == "running" and "outcome" not in a["runs"][-1]  # the dead worker left it held
    second = subprocess.run([*ACPSEARCH, *args], env=_env(), capture_output=True, text=True, timeout=1800)
    assert second.returncode == 0, (second.stderr[-3000:], _crash_logs(art))
    assert [r["name"] for r in json.loads(second.stdout)["ran"] if r["state"] == "done"] == [name]
    a = _study(url, name).user_attrs
    assert a["state"] == "done" and [r.get("outcome") for r in a["runs"]] == [None, "done"]
    assert sorted(p.name for p in art.glob("crash-*.log")) == [log.name]  # the second worker did not crash


def test_run_on_a_held_study_is_exit_2_and_force_waits_for_the_lease(tmp_path, capsys):
    """`acpsearch run NAME` on a study another runner holds says who holds it and exits 2; with
    --force it waits for the lease to expire (here: a holder that stopped renewing)."""
    from acpsearch.cli import run
    from acpsearch.service import lease as ls
    from acpsearch.service.storage import open_storage

    url = f"sqlite:///{tmp_path / 'held.db'}"
    name = _submit(tmp_path, url, _spec("held"))
    storage = open_storage(url)
    sid = _study(url, name)._study_id
    other = ls.Lease(storage, sid, "otherhost:4242:abcd", ttl=3.0)
    assert other.try_acquire()
    before = storage.get_study_user_attrs(sid)
    assert run(["run", name, "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "held by otherhost:4242:abcd" in err and "--force" in err
    assert {k: v for k, v in storage.get_study_user_attrs(sid).items() if k != "lease"} == {
        k: v for k, v in before.items() if k != "lease"
    }
    # --force while the holder is alive and renewing: still refused, after waiting out one ttl
    other_lease = ls.Lease(storage, sid, "me", ttl=3.0)
    t0 = time.time()
    assert not ls.wait_for_lease(other_lease, 4.0, poll_s=0.5)
    assert time.time() - t0 >= 4.0
    # the holder dies (stops renewing): --force takes over once its lease expired
    other._stop.set()
    other._thread.join()
    assert ls.wait_for_lease(other_lease, 8.0, poll_s=0.5)
    assert ls.lease_state(storage.get_study_user_attrs(sid)).startswith("held by me")
    other_lease.release()


def test_lease_claim_is_atomic_among_many_racers(tmp_path):
    """Eight threads with their own connections claim one free lease at the same instant: the SQL
    compare-and-swap lets exactly one win."""
    from acpsearch.service import lease as ls

    url = f"sqlite:///{tmp_path / 'race.db'}"
    name = _submit(tmp_path, url, _spec("race"))
    storages = [optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}) for _ in range(8)]
    sid = _study(url, name)._study_id
    go = threading.Event()
    won: list[str] = []

    def claim(lease: ls.Lease) -> None:
        go.wait()
        if lease.try_acquire():
            won.append(lease.holder)

    # round 1: nobody has created the lease row yet (INSERT race);
    # round 2: the row exists and is free (UPDATE ... WHERE value_json = <read> race)
    for rnd in (1, 2):
        leases = [ls.Lease(s, sid, f"racer{rnd}-{i}", ttl=30.0) for i, s in enumerate(storages)]
        go.clear()
        won.clear()
        threads = [threading.Thread(target=claim, args=(le,)) for le in leases]
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join()
        assert len(won) == 1, (rnd, won)
        for le in leases:
            le.release()


@pytest.fixture
def server_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The real PostgreSQL of the run when there is one (scripts/test.sh starts it; with
    ACPSEARCH_REQUIRE_PG=1 its absence fails), else SQLite."""
    try:
        return request.getfixturevalue("pg_url")
    except pytest.skip.Exception:
        return f"sqlite:///{tmp_path / 'nodes.db'}"


def test_study_runs_across_both_nodes_of_the_cluster(tmp_path, cluster, tiny_base, server_url):
    """A whole study run with --address on the two-node cluster, stored in PostgreSQL (when the
    run has a server): it scores candidates and fine-tunes finalists on both nodes (each node
    has 1 CPU; trials record their Ray node)."""
    import uuid

    url = server_url
    base = tiny_base
    name = _submit(
        tmp_path,
        url,
        _spec(
            f"two-nodes-{uuid.uuid4().hex[:8]}",
            model={"checkpoint": str(base)},
            encoder={"objective": "sacp", "epochs": 3, "strategies": 32},
            search={"candidates": 16, "sampler": "random", "workers": 2, "seed": 0},
            finetune={"top": 2, "epochs": 1, "lr": 0.001, "early_stop": None},
        ),
    )
    out = subprocess.run(
        [
            *ACPSEARCH,
            "run",
            name,
            "--storage",
            url,
            "--address",
            cluster.address,
            "--json",
            "--artifacts",
            str(tmp_path / "art"),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    study = _study(url, name)
    nodes = {n.node_id[:12] for n in cluster.list_all_nodes()}
    assert len(nodes) == 2
    scored = {
        t.user_attrs["ray_node"]
        for t in study.get_trials(deepcopy=False, states=(COMPLETE,))
        if t.user_attrs.get("source", "search") == "search"
    }  # the anchor is scored apart
    assert scored == nodes
    tuned = {t.user_attrs.get("ray_node") for t in _study(url, name + ".finetune").get_trials(deepcopy=False)}
    assert tuned == nodes
    assert study.user_attrs["ray"]["local"] is False
    assert study.user_attrs["state"] == "done" and study.user_attrs["runs"][0]["outcome"] == "done"
    if url.startswith("postgresql"):  # the server outlives the test run: leave it as we found it
        for n in (name, name + ".finetune"):
            optuna.delete_study(study_name=n, storage=_STORAGES[url])


def test_unreachable_address_exits_2_without_touching_the_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'u.db'}"
    name = _submit(tmp_path, url, _spec("unreached"))
    out = subprocess.run(
        [*ACPSEARCH, "run", name, "--storage", url, "--address", "127.0.0.1:1"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--address: cannot reach a Ray head at 127.0.0.1:1" in out.stderr
    assert "Traceback" not in out.stderr
    assert _study(url, name).user_attrs["state"] == "submitted"
