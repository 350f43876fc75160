"""Running a study: `run_study` takes the study's lease, connects to Ray and runs the phases
(acpsearch.service.phases) in order with ONE loop, `run_phases`: a phase whose record says done is
skipped; any other is timed, run, and its returned record stored as `phase.NAME`.

The driver is the only writer of the study (workers return values). State = storage + artifact
directory: phase records hold artifact paths, candidate/finalist progress is the trials.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from acpsearch.checkpoint import study_refusal
from acpsearch.errors import AcpError, SpecError, StorageError
from acpsearch.service import keys
from acpsearch.service import optuna_adapter as adapter
from acpsearch.service import study as st
from acpsearch.service.context import StudyRun
from acpsearch.service.inputs import factory_policy, load_data
from acpsearch.service.lease import Lease, LeaseLost, holder_id, lease_state, wait_for_lease
from acpsearch.service.phases import PHASES
from acpsearch.service.progress import Reporter, SilentReporter
from acpsearch.service.samplers import make_sampler
from acpsearch.service.spec import StudySpec


class StudyBusy(AcpError):
    """Another runner holds the study's lease."""


class StudyBlocked(StudyBusy):
    """The study cannot be started for a reason outside it (a foreign NAME.finetune, a read-only
    storage); nothing was written. `run` reports it (exit 2); a worker skips the study as it skips
    a busy one, instead of retrying it forever (the study's state is unchanged, so it stays
    claimable)."""


# --- the phase loop ------------------------------------------------------------------------------
def run_phase(
    ctx: StudyRun, phase: ModuleType, records: dict[str, dict[str, Any]], ray_mod: Any
) -> tuple[StudyRun, dict[str, Any]]:
    """One phase: skipped when its record says done, else timed, run and its record stored; then
    the run with what the phase provides to the later ones (its `attach`), and the record."""
    name: str = phase.NAME
    rec = st.phase_done(ctx.study, name)
    if rec:
        ctx.reporter.done(name, rec["seconds"], skipped=True)
    else:
        t0 = time.perf_counter()
        out = phase.run(ctx, records, ray_mod)
        seconds = time.perf_counter() - t0 if out.seconds is None else out.seconds
        st.mark_phase(ctx.study, name, seconds, **out.details)
        if out.seconds is None:  # (a phase with nothing to do is not reported)
            ctx.reporter.done(name, seconds)
        rec = st.phase_done(ctx.study, name) or {}
    attach = getattr(phase, "attach", None)
    return (attach(ctx, rec) if attach is not None else ctx), rec


def run_phases(ctx: StudyRun, ray_mod: Any) -> None:
    """All phases in order, the lease checked between them."""
    from acpsearch.service import crash

    records: dict[str, dict[str, Any]] = {}
    for i, phase in enumerate(PHASES):
        crash.rearm()  # a native library loaded by the last phase may have put its own handler on top
        ctx, records[phase.NAME] = run_phase(ctx, phase, records, ray_mod)
        if i < len(PHASES) - 1:
            ctx.check()


# --- entry points --------------------------------------------------------------------------------
def run_study(
    url: str | None,
    name: str,
    *,
    address: str | None = None,
    workers: int | None = None,
    artifacts: str | Path | None = None,
    reporter: Reporter | None = None,
    on_lease: Callable[[Lease], None] | None = None,
    force: bool = False,
    allow_factories: Any = None,
    trust_spec_factory: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) study `name` to the end under a lease; returns its summary.

    `device` (`--device`) overrides the spec's train.device for this run (not stored). A device this
    machine lacks (cuda without a GPU), or resources no Ray node offers (finetune/search.resources),
    is StudyBlocked before any phase runs: `run` exits 2, a worker skips the study for another.
    Storage is the only state: every phase checks its record and skips what is done.
    Model factories: `allow_factories` (module names or a FactoryPolicy) plus $ACPSEARCH_ALLOW_FACTORIES,
    plus the stored spec's own factory when `trust_spec_factory` (`acpsearch run`; a worker passes
    False). A factory that is not allowed is refused before the lease is taken: the study is untouched."""
    from acpsearch.service.storage import artifact_dir, open_storage, resolve_url

    url = resolve_url(url)
    storage = open_storage(url)
    study = st.load_search_study(storage, name)
    spec = st.study_spec(study)
    if study.user_attrs.get(keys.STATE) == keys.DONE:
        return st.summarize(study, storage)
    policy = factory_policy(spec, allow_factories, trust_spec=trust_spec_factory)
    refusal = study_refusal(policy, spec)
    if refusal is not None:
        raise refusal
    _check_device(study, spec, device)
    study = st.load_search_study(storage, name, sampler=make_sampler(spec.search.sampler, spec.search.seed))
    lease = _take_lease(storage, study, url, name, force, reporter)
    if on_lease is not None:
        on_lease(lease)
    # Who ran the study when (several runners share a storage; `acpsearch show` lists them).
    runs = list(study.user_attrs.get(keys.RUNS) or []) + [{"holder": lease.holder, "started": st.now_iso()}]
    study.set_user_attr(keys.RUNS, runs)
    outcome = "killed"
    art = artifact_dir(url, artifacts)
    info: dict[str, Any] = {}
    try:
        from acpsearch.service.cluster import connect

        n_workers = int(workers or spec.search.workers)
        info = connect(address, n_workers)
        ctx = _start(storage, url, study, spec, lease, policy, art, reporter or SilentReporter(), n_workers, info)
        import ray

        run_phases(ctx, ray)
        st.set_state(study, keys.DONE, **{keys.FINISHED_AT: st.now_iso(), keys.ERROR: None})
        outcome = "done"
    except BaseException as exc:
        outcome = _failed(study, exc)
        raise
    finally:
        _close(study, lease, runs, outcome, info)
    return st.summarize(study, storage)


def _check_device(study: Any, spec: StudySpec, device: str | None) -> None:
    """`device` (--device) into spec.train.device; a device this machine lacks blocks the study when
    its base network is still to be trained here."""
    from acpsearch.devices import check_device, resolve_device

    if device is not None:
        spec.train.device = check_device(device, "--device")
    if not spec.model.checkpoint and not st.phase_done(study, "base"):  # the base net is trained here
        try:
            resolve_device(spec.train.device, "--device" if device is not None else "train.device")
        except SpecError as exc:
            raise StudyBlocked(str(exc)) from None


def _take_lease(storage: Any, study: Any, url: str, name: str, force: bool, reporter: Reporter | None) -> Lease:
    """The study's lease (with `force`: once the current holder's has expired), or StudyBusy."""
    from acpsearch.service.storage import writes

    lease = Lease(storage, adapter.study_id(study), holder_id())
    try:
        st.check_companion(storage, name)  # a foreign NAME.finetune is refused before anything is written
        with writes(url):  # the first write: a read-only storage is one line here, the study untouched
            acquired = lease.try_acquire()
    except StorageError as exc:
        raise StudyBlocked(str(exc)) from None
    if acquired:
        return lease
    held = lease_state(storage.get_study_user_attrs(adapter.study_id(study)))
    if not force:
        raise StudyBusy(
            f"study {name!r}: {held}; another runner works on it (if that runner is gone, "
            f"`acpsearch run {name} --force` waits for its lease to expire and takes over)"
        )
    if reporter is not None:
        reporter.log(f"study {name!r}: {held}; --force: waiting for the lease to expire")
    if not wait_for_lease(lease, lease.ttl + 15.0):
        raise StudyBusy(
            f"study {name!r}: {lease_state(storage.get_study_user_attrs(adapter.study_id(study)))} "
            "and its holder keeps renewing it: that runner is alive; stop it first"
        )
    return lease


def _start(
    storage: Any,
    url: str,
    study: Any,
    spec: StudySpec,
    lease: Lease,
    policy: Any,
    art: Path,
    reporter: Reporter,
    workers: int,
    info: dict[str, Any],
) -> StudyRun:
    """On the connected Ray cluster: the resources checked, the study marked running, and the run
    the phases receive (its data splits loaded)."""
    import ray

    from acpsearch.devices import check_cluster_fits, resources_of
    from acpsearch.service.storage import artifact_store

    cluster = ray.cluster_resources()  # type: ignore[no-untyped-call]
    for field, section in (("search", spec.search), ("finetune", spec.finetune)):  # else it waits forever
        try:
            check_cluster_fits(cluster, resources_of(section), f"{field}.resources")
        except SpecError as exc:
            raise StudyBlocked(str(exc)) from None
    if info["reused"] and info["local"] and 0 < int(info["cpus"]) < workers:
        # a worker's one local Ray is smaller than this spec asks: more actors than CPUs would wait
        reporter.log(f"search.workers {workers} > the local Ray's {int(info['cpus'])} CPUs: using {int(info['cpus'])}")
        workers = int(info["cpus"])
    st.set_state(
        study,
        keys.RUNNING,
        **{
            keys.STARTED_AT: study.user_attrs.get(keys.STARTED_AT) or st.now_iso(),
            keys.RAY: {"address": info["address"], "cpus": info["cpus"], "local": info["local"], "job": info["job"]},
        },
    )
    return StudyRun(
        storage=storage,
        url=url,
        study=study,
        spec=spec,
        artifacts=art,
        store=artifact_store(art),
        reporter=reporter,
        workers=workers,
        allow=policy,
        splits=load_data(spec),
        lease=lease,
    )


def _failed(study: Any, exc: BaseException) -> str:
    """The run's outcome after `exc`, with the study's state set to match (a blocked study, or one
    whose lease was lost, is left as it was)."""
    if isinstance(exc, LeaseLost):
        return "lease lost"
    if isinstance(exc, StudyBlocked):  # the study is left as it was, for a runner whose machine fits it
        return "blocked"
    if isinstance(exc, AcpError):
        st.set_state(study, keys.FAILED, **{keys.ERROR: str(exc).splitlines()[0] if str(exc) else type(exc).__name__})
        return "failed"
    msg = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):  # Ctrl-C, or SIGTERM turned into SystemExit by Ray
        st.set_state(study, keys.INTERRUPTED, **{keys.ERROR: msg})
        return "interrupted"
    st.set_state(study, keys.FAILED, **{keys.ERROR: msg, keys.TRACEBACK: traceback.format_exc()[-4000:]})
    return "failed"


def _close(study: Any, lease: Lease, runs: list[dict[str, Any]], outcome: str, info: dict[str, Any]) -> None:
    """The run's end and outcome in `runs`, the lease released, a Ray this run started shut down."""
    from acpsearch.service.cluster import shutdown_if_owned

    if not lease.lost:
        try:
            runs[-1].update(ended=st.now_iso(), outcome=outcome)
            study.set_user_attr(keys.RUNS, runs)
        except Exception:  # noqa: BLE001 - bookkeeping must not hide the real error
            pass
    lease.release()
    if info:
        shutdown_if_owned(info)


def claimable(frozen: Any) -> bool:
    """A worker may take a study that is submitted, or was left running/interrupted by a dead
    runner (its lease expired). Failed and done studies are left alone."""
    attrs = frozen.user_attrs
    return attrs.get(keys.STATE) in (keys.SUBMITTED, keys.RUNNING, keys.INTERRUPTED) and lease_state(attrs) == "free"
