"""`acpsearch submit`, `run` and `worker`: store a study, run one to the end, run the queue."""

from __future__ import annotations

import os
import time
from typing import Any

import typer

from acpsearch.commands.common import (
    ADDRESS_HELP,
    ARTIFACTS_HELP,
    DEVICE_HELP,
    STORAGE_HELP,
    _is_spec_path,
    _storage,
    _submit,
    app,
    err,
    out,
)
from acpsearch.commands.progress import RichReporter
from acpsearch.commands.study_report import _print_show, _show
from acpsearch.errors import StorageError
from acpsearch.service import keys
from acpsearch.service.spec import MAX_WORKERS
from acpsearch.service.storage import redact
from acpsearch.trust import ALLOW_ENV, ALLOW_HELP


@app.command()
def submit(
    spec: str = typer.Argument(..., help="study spec (YAML)"),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    name: str | None = typer.Option(None, "--name", help="study name (overrides the spec's name)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
    allow_factory: list[str] | None = typer.Option(None, "--allow-factory", help=ALLOW_HELP),
) -> None:
    """Validate a spec (data, model, budget) and store it as a submitted study; prints its name.
    All or nothing: if storing fails part-way (read-only or full storage, Ctrl-C), no study is left."""
    from acpsearch.trust import FactoryPolicy

    policy = FactoryPolicy.from_user(allow_factory)
    url, st_obj = _storage(storage)
    study_name = _submit(spec, st_obj, name, allow_factories=policy)
    if json_out:
        out({"name": study_name, "storage": redact(url), "state": "submitted"})
    else:
        print(study_name)


@app.command()
def run(
    target: str = typer.Argument(..., help="study NAME, or a SPEC.yaml to submit and run"),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    workers: int | None = typer.Option(
        None, "--workers", min=1, max=MAX_WORKERS, help="Ray workers (default: spec search.workers)"
    ),
    artifacts: str | None = typer.Option(None, "--artifacts", help=ARTIFACTS_HELP),
    name: str | None = typer.Option(None, "--name", help="study name when TARGET is a spec"),
    force: bool = typer.Option(
        False,
        "--force",
        help="if another runner holds the study, wait for its lease to expire (its holder died) and take over",
    ),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
    allow_factory: list[str] | None = typer.Option(None, "--allow-factory", help=ALLOW_HELP),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Run a study to the end; an interrupted study resumes where the storage says it stopped.
    A study another runner holds is exit 2 (with --force: taken over once that runner's lease expired).
    A fatal signal writes every thread's stack to stderr and to a crash log in the artifacts folder.

    Running a study runs its spec's model.factory (you chose to run it: on a shared storage, check
    `acpsearch show NAME` first); a factory named by its checkpoint needs --allow-factory."""
    from acpsearch.commands.common import on_interrupt
    from acpsearch.service import crash
    from acpsearch.service import study as st
    from acpsearch.service.cluster import connect, shutdown_if_owned
    from acpsearch.service.runner import run_study
    from acpsearch.service.storage import artifact_dir
    from acpsearch.trust import FactoryPolicy

    policy = FactoryPolicy.from_user(allow_factory)
    if device is not None:  # before anything: cuda on a machine without a GPU is exit 2
        from acpsearch.devices import resolve_device

        resolve_device(device, "--device")
    url, st_obj = _storage(storage)
    if address is not None:
        from acpsearch.service.cluster import _check_reachable, ray_env

        ray_env()
        _check_reachable(address)  # before touching the study: a bad address leaves it untouched
    study_name = _submit(target, st_obj, name, reuse=True, allow_factories=policy) if _is_spec_path(target) else target
    frozen = st.load_search_study(st_obj, study_name)  # a missing study is exit 2 before anything is created
    on_interrupt(f"interrupted: resume with acpsearch run {study_name}")
    rep = RichReporter(quiet=json_out)
    conn: dict[str, Any] = {}
    try:
        with crash.armed(artifact_dir(url, artifacts)):
            try:
                if address is not None and frozen.user_attrs.get(keys.STATE) != keys.DONE:
                    # join the cluster before the study is touched (run_study reuses this connection)
                    conn = connect(address)
                summary = run_study(
                    url,
                    study_name,
                    address=address,
                    workers=workers,
                    artifacts=artifacts,
                    reporter=rep,
                    force=force,
                    allow_factories=policy,
                    device=device,
                )
            finally:
                if conn:
                    shutdown_if_owned(conn)
    finally:
        rep.close()
    if json_out:
        out(_show(url, st_obj, study_name))
    else:
        _print_show(_show(url, st_obj, study_name))
        del summary


@app.command()
def worker(
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        max=MAX_WORKERS,
        help="Ray workers per study (default: each spec's); without --address "
        "also the local Ray's CPUs (default: this machine's)",
    ),
    artifacts: str | None = typer.Option(None, "--artifacts", help=ARTIFACTS_HELP),
    wait: float = typer.Option(0.0, "--wait", min=0.0, help="keep polling this many seconds after the queue is empty"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
    allow_factory: list[str] | None = typer.Option(None, "--allow-factory", help=ALLOW_HELP),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Run submitted studies one after another until none is left (a study is claimed through a
    lease in the storage, so several workers never run the same study).

    The worker connects to Ray once, before its first study, and keeps that connection for every
    study it runs. A fatal signal writes every thread's stack to stderr and to a crash log in the
    artifacts folder.

    Whoever can write the storage decides what a worker runs, so a worker imports a model factory
    (named by a study's spec or by its checkpoint) only from modules allowed with --allow-factory or
    $ACPSEARCH_ALLOW_FACTORIES. Any other study is skipped before it is claimed, left untouched for
    a worker that allows it, and reported as "refused"."""
    from acpsearch.service import crash
    from acpsearch.service.cluster import inits, shutdown_if_owned
    from acpsearch.service.storage import artifact_dir
    from acpsearch.trust import FactoryPolicy

    policy = FactoryPolicy.from_user(allow_factory)
    if device is not None:
        from acpsearch.devices import resolve_device

        resolve_device(device, "--device")
    url, st_obj = _storage(storage)
    if address is not None:
        from acpsearch.service.cluster import _check_reachable, ray_env

        ray_env()
        _check_reachable(address)
    loop = _WorkerLoop(url, st_obj, address, workers, artifacts, json_out, policy, device)
    with crash.armed(artifact_dir(url, artifacts)):
        try:
            loop.serve(wait)
        finally:
            if loop.conn:  # every lease thread is joined by now (run_study releases its lease)
                shutdown_if_owned(loop.conn)
    ran, conn = loop.ran, loop.conn
    if json_out:
        out({"ran": ran, "ray_inits": inits(), "ray_job": conn.get("job")})
    else:
        done = [r for r in ran if r["state"] not in ("refused", "blocked")]
        err.print(
            f"worker: no study left to run ({len(done)} run by this worker"
            + (f", {len(ran) - len(done)} refused or blocked" if len(done) < len(ran) else "")
            + ")"
        )


def _factory_refusal(frozen: Any, policy: Any) -> Any:
    """FactoryNotAllowed when a stored study's spec (or its checkpoint) names a factory the worker's
    policy does not allow, else None. A stored spec that does not parse is left to run_study."""
    from acpsearch.checkpoint import study_refusal
    from acpsearch.errors import AcpError
    from acpsearch.service import study as st

    try:
        spec = st.study_spec(frozen)
    except (AcpError, KeyError, TypeError, ValueError):
        return None
    return study_refusal(policy, spec)


class _WorkerLoop:
    """What one `acpsearch worker` does between connecting and its summary: the studies it ran
    (`ran`), those it leaves alone for the rest of its life (`refused`), its Ray connection (`conn`)."""

    def __init__(
        self,
        url: str,
        st_obj: Any,
        address: str | None,
        workers: int | None,
        artifacts: str | None,
        json_out: bool,
        policy: Any,
        device: str | None,
    ) -> None:
        self.url, self.st_obj, self.address, self.workers = url, st_obj, address, workers
        self.artifacts, self.json_out, self.policy, self.device = artifacts, json_out, policy, device
        self.ran: list[dict[str, Any]] = []
        self.refused: set[str] = set()
        self.conn: dict[str, Any] = {}

    def skip(self, name: str, state: str, error: str, line: str, quiet: bool = False) -> None:
        """Leave study `name` alone for the rest of this worker's life (refused / blocked)."""
        self.refused.add(name)
        self.ran.append({"name": name, "state": state, "error": error})
        if not quiet:
            err.print(f"worker: skipping study {name!r}: {line}", soft_wrap=True, markup=False, highlight=False)

    def serve(self, wait: float) -> None:
        """Run claimable studies one at a time until none is left for `wait` seconds."""
        from acpsearch.service import study as st
        from acpsearch.service.runner import claimable

        idle_since = time.monotonic()
        while True:
            todo = [s for s in st.list_search_studies(self.st_obj) if claimable(s)]
            progressed = False
            for frozen in todo:
                if self.run_one(frozen):
                    progressed = True
                    break  # re-list: other workers may have taken or submitted studies meanwhile
            if progressed:
                idle_since = time.monotonic()
                continue
            if time.monotonic() - idle_since >= wait:
                break
            time.sleep(min(5.0, max(0.5, wait / 10)))

    def run_one(self, frozen: Any) -> bool:
        """Run the stored study `frozen` unless it is refused, blocked or busy; True when it ran
        (to the end, or until it failed or lost its lease)."""
        from acpsearch.service import lease as ls
        from acpsearch.service import study as st
        from acpsearch.service.cluster import connect
        from acpsearch.service.runner import StudyBlocked, StudyBusy, run_study
        from acpsearch.trust import FactoryNotAllowed

        if frozen.study_name in self.refused:
            return False
        why = _factory_refusal(frozen, self.policy)
        if why is not None:  # before the claim and before Ray: the study stays as it is
            self.skip(
                frozen.study_name,
                "refused",
                str(why),
                f"factory module {why.module!r} is not allowed (--allow-factory {why.module} or {ALLOW_ENV})",
            )
            return False
        try:  # a foreign NAME.finetune blocks the study: found before Ray starts
            st.check_companion(self.st_obj, frozen.study_name)
        except StorageError as exc:
            self.skip(frozen.study_name, "blocked", str(exc), str(exc))
            return False
        if not self.conn:  # once per worker: every study reuses this connection
            self.conn = connect(self.address, self.workers or os.cpu_count() or 1)
        rep = RichReporter(quiet=self.json_out)
        if not self.json_out:
            err.print(f"worker: running study {frozen.study_name!r}")
        try:
            run_study(
                self.url,
                frozen.study_name,
                address=self.address,
                workers=self.workers,
                artifacts=self.artifacts,
                reporter=rep,
                allow_factories=self.policy,
                trust_spec_factory=False,
                device=self.device,
            )
            self.ran.append({"name": frozen.study_name, "state": "done"})
        except StudyBlocked as exc:  # nothing written; retrying would fail the same way
            self.skip(frozen.study_name, "blocked", str(exc), str(exc), quiet=self.json_out)
            return False
        except StudyBusy:
            return False
        except FactoryNotAllowed as exc:  # its spec changed since the check: still untouched
            self.skip(frozen.study_name, "refused", str(exc), str(exc), quiet=self.json_out)
            return False
        except ls.LeaseLost as exc:
            self.ran.append({"name": frozen.study_name, "state": "lease lost", "error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - one failed study must not stop the worker
            self.ran.append(
                {
                    "name": frozen.study_name,
                    "state": "failed",
                    "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}",
                }
            )
            if not self.json_out:
                err.print(f"worker: study {frozen.study_name!r} failed: {self.ran[-1]['error']}")
        finally:
            rep.close()
        return True
