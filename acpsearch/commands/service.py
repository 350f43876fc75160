"""CLI of the search service: submit, run, worker, status, show, export, dashboard (and demo).

Tables by default, `--json` prints one JSON document on stdout (progress goes to stderr).
Bad input (spec, model, data, budget, storage URL, checkpoint, Ray address) is an AcpError:
one line on stderr, exit 2, and the stored studies are untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from acpsearch.cli import app
from acpsearch.errors import SpecError, StorageError
from acpsearch.service.spec import MAX_WORKERS
from acpsearch.service.storage import redact
from acpsearch.trust import ALLOW_ENV, ALLOW_HELP

STORAGE_HELP = (
    "Optuna storage URL (default $ACPSEARCH_STORAGE or sqlite:///acpsearch.db); journal:///file.log for a journal file"
)
DEVICE_HELP = (
    "where the base network is trained: auto, cpu, cuda, cuda:N (default: the spec's train.device); "
    "Ray workers use finetune/search.resources"
)
ADDRESS_HELP = "Ray cluster to join: 'auto' or HOST:PORT (default: start a local Ray with --workers CPUs)"
ARTIFACTS_HELP = "artifact directory (default: next to the storage file, or $ACPSEARCH_ARTIFACTS)"

err = Console(stderr=True, highlight=False)


def out(obj: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def console() -> Console:
    return Console(highlight=False)


# --- progress ------------------------------------------------------------------------------------
def _dur(seconds: float) -> str:
    """6m10s, 45s, 1h02m: durations in progress lines."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


_UNITS = {
    "search": "candidates",
    "rerank": "candidates",
    "finetune": "finalists",
    "base": "epochs",
    "encoder": "epochs",
}


class PlainReporter:
    """Progress as plain lines, for a stderr that is not a terminal (nohup, CI, a cluster's log):
    the start of each phase, progress every ~10% or `every_s` seconds with elapsed time and ETA,
    e.g. ``[  123s] search: 40/300 candidates, ETA 6m10s``, and each phase's end with its duration.
    Lines are flushed at once, so a log file shows them as they happen."""

    def __init__(
        self, stream: Any = None, every_s: float = 30.0, every_frac: float = 0.1, clock: Any = time.monotonic
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.every_s, self.every_frac, self.clock = every_s, every_frac, clock
        self.t0 = clock()
        self.name: str | None = None
        self.total: int | None = None
        self.count = 0
        self.phase_t0 = self.t0
        self.last_line = self.t0
        self.next_count = 0.0

    def _line(self, text: str) -> None:
        self.stream.write(f"[{self.clock() - self.t0:7.0f}s] {text}\n")
        self.stream.flush()

    def phase(self, name: str, total: int | None = None) -> None:
        self.name, self.total, self.count = name, total, 0
        self.phase_t0 = self.last_line = self.clock()
        self.next_count = (total or 0) * self.every_frac
        self._line(f"{name}: started" + (f" ({total} {_UNITS.get(self._short(), 'steps')})" if total else ""))

    def _short(self) -> str:
        return (self.name or "").split(":")[0].strip()

    def advance(self, n: int = 1, **info: Any) -> None:
        if self.name is None:
            return
        self.count += n
        now = self.clock()
        finished = bool(self.total) and self.count >= self.total
        if not (finished or (self.total and self.count >= self.next_count) or now - self.last_line >= self.every_s):
            return
        if self.total:
            while self.next_count <= self.count:
                self.next_count += max(1.0, self.total * self.every_frac)
        self.last_line = now
        text = (
            f"{self._short()}: {self.count}"
            + (f"/{self.total}" if self.total else "")
            + f" {_UNITS.get(self._short(), 'steps')}"
        )
        if self.total and self.count and not finished:
            eta = (now - self.phase_t0) / self.count * (self.total - self.count)
            text += f", ETA {_dur(eta)}"
        extra = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        self._line(text + (f"  {extra}" if extra else ""))

    def done(self, name: str, seconds: float, skipped: bool = False) -> None:
        self._line(
            f"{name}: already done ({_dur(seconds)} when it ran), skipped"
            if skipped
            else f"{name}: done in {_dur(seconds)}"
        )
        self.name = None

    def log(self, msg: str) -> None:
        self._line(msg)

    def close(self) -> None:
        pass


class RichReporter:
    """Rich progress bars on stderr for the long phases (base training, search, fine-tuning); when
    stderr is not a terminal (nohup, CI, a log file) plain progress lines instead (PlainReporter)."""

    def __init__(self, quiet: bool = False, stream: Any = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.quiet = quiet
        tty = err.is_terminal if stream is None else bool(getattr(stream, "isatty", lambda: False)())
        self.plain = PlainReporter(stream) if not quiet and not tty else None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=err,
            transient=False,
            disable=quiet or not tty,
        )
        self.task: Any = None
        self.started = False
        self.t0 = time.perf_counter()

    def _start(self) -> None:
        if not self.started:
            self.progress.start()
            self.started = True

    def phase(self, name: str, total: int | None = None) -> None:
        if self.plain is not None:
            return self.plain.phase(name, total)
        self._start()
        if self.task is not None:
            self.progress.stop_task(self.task)
        self.task = self.progress.add_task(name, total=total, info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        if self.plain is not None:
            return self.plain.advance(n, **info)
        if self.task is None:
            return
        text = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        self.progress.update(self.task, advance=n, info=text)

    def done(self, name: str, seconds: float, skipped: bool = False) -> None:
        if self.plain is not None:
            return self.plain.done(name, seconds, skipped)
        if not self.quiet:
            msg = (
                f"{name}: already done ({seconds:.1f} s when it ran), skipped"
                if skipped
                else f"{name}: done in {seconds:.1f} s"
            )
            if self.started:
                self.progress.console.print(msg)
            else:
                err.print(msg)

    def log(self, msg: str) -> None:
        if self.plain is not None:
            return self.plain.log(msg)
        if not self.quiet:
            (self.progress.console if self.started else err).print(msg)

    def close(self) -> None:
        if self.started:
            self.progress.stop()


# --- helpers -------------------------------------------------------------------------------------
def _storage(url: str | None) -> tuple[str, Any]:
    """The storage of a command: (URL in force, opened storage). Refused before anything is
    created: an empty --storage (it used to mean the default file in the working directory) and
    an in-memory SQLite database (a study stored there vanishes when the command exits)."""
    import warnings

    import optuna

    from acpsearch.service.storage import is_memory, open_storage, resolve_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the CLI prints its own progress
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    if url is not None and not url.strip():
        raise SpecError("--storage: empty; leave it out for the default ($ACPSEARCH_STORAGE or sqlite:///acpsearch.db)")
    url = resolve_url(url)
    if is_memory(url):
        raise StorageError(
            f"storage {redact(url)!r}: in-memory database, a study stored there vanishes when this "
            "command exits; give a file (sqlite:///studies.db) or a server database"
        )
    return url, open_storage(url)


def _is_spec_path(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml")) or Path(arg).is_file()


def _submit(
    spec_path: str, storage: Any, name: str | None, check: bool = True, reuse: bool = False, allow_factories: Any = None
) -> str:
    """Validate the spec and its inputs, then create the study. With `reuse`, a study of the same
    name and the same spec is taken as is (so `run SPEC.yaml` resumes). The spec's own factory is
    the user's code; a factory its model.checkpoint names needs `allow_factories`."""
    from acpsearch.service import study as st
    from acpsearch.service.pipeline import preflight
    from acpsearch.service.spec import check_name, load_spec

    if name is not None:  # '' is refused, not taken as "no --name"
        check_name(name)
    spec = load_spec(spec_path)
    final_name = name or spec.name
    if final_name:  # before the (slow) preflight: a name that can never be stored fails at once
        st.check_name(final_name, "--name" if name else "spec: name")
    if reuse and final_name:
        try:
            existing = st.load_search_study(storage, final_name)
        except StorageError:
            existing = None
        if existing is not None:
            stored = existing.user_attrs.get("spec") or {}
            mine = spec.model_copy(update={"name": final_name}).to_dict()
            if stored != mine:
                raise SpecError(f"name: study {final_name!r} exists with a different spec (use --name for a new study)")
            return final_name
    if check:
        preflight(spec, allow_factories=allow_factories)
    from acpsearch.service.storage import url_of, writes

    with writes(url_of(storage)):  # a read-only or full storage is one line; st.submit leaves no half study
        return st.submit(storage, spec, name)


# --- commands ------------------------------------------------------------------------------------
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
    from acpsearch.cli import on_interrupt
    from acpsearch.service import crash
    from acpsearch.service import study as st
    from acpsearch.service.cluster import connect, shutdown_if_owned
    from acpsearch.service.pipeline import run_study
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
                if address is not None and frozen.user_attrs.get("state") != "done":
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
    from acpsearch.service import study as st
    from acpsearch.service.cluster import connect, inits, shutdown_if_owned
    from acpsearch.service.pipeline import StudyBlocked, StudyBusy, claimable, run_study
    from acpsearch.service.storage import artifact_dir
    from acpsearch.trust import FactoryNotAllowed, FactoryPolicy

    policy = FactoryPolicy.from_user(allow_factory)
    if device is not None:
        from acpsearch.devices import resolve_device

        resolve_device(device, "--device")
    url, st_obj = _storage(storage)
    if address is not None:
        from acpsearch.service.cluster import _check_reachable, ray_env

        ray_env()
        _check_reachable(address)
    ran: list[dict[str, Any]] = []
    refused: set[str] = set()
    conn: dict[str, Any] = {}

    def skip(name: str, state: str, error: str, line: str, quiet: bool = False) -> None:
        """Leave study `name` alone for the rest of this worker's life (refused / blocked)."""
        refused.add(name)
        ran.append({"name": name, "state": state, "error": error})
        if not quiet:
            err.print(f"worker: skipping study {name!r}: {line}", soft_wrap=True, markup=False, highlight=False)

    with crash.armed(artifact_dir(url, artifacts)):
        try:
            idle_since = time.monotonic()
            while True:
                todo = [s for s in st.list_search_studies(st_obj) if claimable(s)]
                progressed = False
                for frozen in todo:
                    if frozen.study_name in refused:
                        continue
                    why = _factory_refusal(frozen, policy)
                    if why is not None:  # before the claim and before Ray: the study stays as it is
                        skip(
                            frozen.study_name,
                            "refused",
                            str(why),
                            f"factory module {why.module!r} is not "
                            f"allowed (--allow-factory {why.module} or {ALLOW_ENV})",
                        )
                        continue
                    try:  # a foreign NAME.finetune blocks the study: found before Ray starts
                        st.check_companion(st_obj, frozen.study_name)
                    except StorageError as exc:
                        skip(frozen.study_name, "blocked", str(exc), str(exc))
                        continue
                    if not conn:  # once per worker: every study reuses this connection
                        conn = connect(address, workers or os.cpu_count() or 1)
                    rep = RichReporter(quiet=json_out)
                    if not json_out:
                        err.print(f"worker: running study {frozen.study_name!r}")
                    try:
                        run_study(
                            url,
                            frozen.study_name,
                            address=address,
                            workers=workers,
                            artifacts=artifacts,
                            reporter=rep,
                            allow_factories=policy,
                            trust_spec_factory=False,
                            device=device,
                        )
                        ran.append({"name": frozen.study_name, "state": "done"})
                    except StudyBlocked as exc:  # nothing written; retrying would fail the same way
                        skip(frozen.study_name, "blocked", str(exc), str(exc), quiet=json_out)
                        continue
                    except StudyBusy:
                        continue
                    except FactoryNotAllowed as exc:  # its spec changed since the check: still untouched
                        skip(frozen.study_name, "refused", str(exc), str(exc), quiet=json_out)
                        continue
                    except st.LeaseLost as exc:
                        ran.append({"name": frozen.study_name, "state": "lease lost", "error": str(exc)})
                    except Exception as exc:  # noqa: BLE001 - one failed study must not stop the worker
                        ran.append(
                            {
                                "name": frozen.study_name,
                                "state": "failed",
                                "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}",
                            }
                        )
                        if not json_out:
                            err.print(f"worker: study {frozen.study_name!r} failed: {ran[-1]['error']}")
                    finally:
                        rep.close()
                    progressed = True
                    break  # re-list: other workers may have taken or submitted studies meanwhile
                if progressed:
                    idle_since = time.monotonic()
                    continue
                if time.monotonic() - idle_since >= wait:
                    break
                time.sleep(min(5.0, max(0.5, wait / 10)))
        finally:
            if conn:  # every lease thread is joined by now (run_study releases its lease)
                shutdown_if_owned(conn)
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


def _status_rows(st_obj: Any) -> list[dict[str, Any]]:
    from acpsearch.service import study as st

    return [st.summarize(s, st_obj) for s in st.list_search_studies(st_obj)]


@app.command()
def status(
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """All studies in the storage: state, progress, winner."""
    url, st_obj = _storage(storage)
    rows = _status_rows(st_obj)
    if json_out:
        out({"storage": redact(url), "studies": rows})
        return
    table = Table(title=f"studies in {redact(url)}")
    for col in ("name", "state", "model", "dataset", "budget", "candidates", "phases", "winner test mAP", "FLOPs"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            r["state"] + (f" ({r['lease']})" if r["lease"] != "free" else ""),
            str(r["model"]),
            str(r["dataset"]),
            ", ".join(f"{k}={v}" for k, v in r["budget"].items()),
            f"{r['candidates']}/{r['candidates_target']}",
            ",".join(r["phases_done"]) or "–",
            f"{r['winner_test_map']:.4f}" if r["winner_test_map"] is not None else "–",
            f"{r['winner_flops_ratio']:.3f}" if r["winner_flops_ratio"] is not None else "–",
        )
    console().print(table)


def _show(url: str, st_obj: Any, name: str) -> dict[str, Any]:
    from acpsearch.service import study as st
    from acpsearch.service.report import build_report

    study = st.load_search_study(st_obj, name)
    rep = build_report(study, st_obj)
    rep["summary"] = st.summarize(study, st_obj)
    rep["phases"] = {
        p: {
            k: v
            for k, v in (study.user_attrs.get(f"phase.{p}") or {}).items()
            if k not in ("pr_curve", "space", "losses", "scores")
        }
        for p in st.PHASES
        if study.user_attrs.get(f"phase.{p}")
    }
    rep["winner"] = {k: v for k, v in (rep.get("winner") or {}).items() if k != "pr_curve"}
    rep["storage"] = redact(url)
    return rep


def _print_show(rep: dict[str, Any]) -> None:
    from acpsearch.service.report import markdown

    c = console()
    s = rep["summary"]
    c.print(
        f"[bold]{rep['study']}[/bold]  state={s['state']}  candidates={s['candidates']}/{s['candidates_target']}  "
        f"lease={s['lease']}"
    )
    if s.get("error"):
        c.print(f"error: {s['error']}")
    table = Table(title="phases")
    table.add_column("phase")
    table.add_column("seconds")
    table.add_column("details")
    for p, rec in rep["phases"].items():
        details = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in rec.items()
            if k
            not in (
                "done",
                "seconds",
                "at",
                "path",
                "artifact_id",
                "history",
                "training",
                "finalists",
                "artifacts",
                "rounds",
            )
        )
        table.add_row(p, f"{rec.get('seconds', 0):.1f}", details[:120])
    c.print(table)
    if rep.get("winner"):
        from rich.markdown import Markdown

        c.print(Markdown(markdown(rep)))


@app.command()
def show(
    name: str = typer.Argument(..., help="study name"),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """One study: phases, base vs winner, finalists."""
    url, st_obj = _storage(storage)
    rep = _show(url, st_obj, name)
    if json_out:
        out(rep)
    else:
        _print_show(rep)


@app.command()
def export(
    name: str = typer.Argument(..., help="study name"),
    out_path: Path = typer.Option(..., "--out", help="where to write the exported model"),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    trial: int | None = typer.Option(
        None, "--trial", help="a finalist trial number of NAME.finetune (default: the winner)"
    ),
    fmt: str = typer.Option(
        "acpsearch",
        "--format",
        help="acpsearch (checkpoint for acpsearch.load_model) | torchscript | onnx | pt2 "
        "(the last three load without acpsearch; verified against PyTorch after writing)",
    ),
    benchmark: bool = typer.Option(
        False,
        "--benchmark",
        help="also report the written file's latency in its own "
        "runtime next to the eager PyTorch model (median, 1 thread)",
    ),
    batch: int = typer.Option(1, "--batch", min=1, max=4096, help="batch size of --benchmark"),
    rounds: int = typer.Option(50, "--rounds", min=1, max=100000, help="timed rounds of --benchmark"),
    allow_factory: list[str] | None = typer.Option(None, "--allow-factory", help=ALLOW_HELP),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Write the winner (or a chosen fine-tuned finalist) as an acpsearch checkpoint, or for deployment
    as TorchScript / ONNX / torch.export (pt2) with its metadata (code length, input shape, preprocessing)."""
    import optuna

    from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint
    from acpsearch.export import bench_file, check_format, export_model, metadata_from_checkpoint
    from acpsearch.outputs import atomic_out, check_out
    from acpsearch.service import study as st
    from acpsearch.trust import FactoryPolicy

    fmt = check_format(fmt)  # a bad --format is refused before anything is opened
    check_out(out_path)  # a directory or an unwritable place is refused before the storage is opened
    policy = FactoryPolicy.from_user(allow_factory)
    url, st_obj = _storage(storage)
    study = st.load_search_study(st_obj, name)
    if trial is None:
        winner = study.user_attrs.get("winner")
        if not winner:
            raise StorageError(f"study {name!r}: has no winner yet (state {study.user_attrs.get('state')!r})")
        src, number = winner["path"], winner.get("finetune_trial")
    else:
        ft_name = study.user_attrs.get("finetune_study")
        if not ft_name:
            raise StorageError(f"study {name!r}: has no fine-tuned finalists yet")
        ft = optuna.load_study(study_name=ft_name, storage=st_obj)
        match = [t for t in ft.get_trials(deepcopy=False) if t.number == trial]
        if not match or not match[0].user_attrs.get("path"):
            raise SpecError(f"--trial: study {ft_name!r} has no finished finalist trial {trial}")
        src, number = match[0].user_attrs["path"], trial
    if not Path(src).is_file():
        raise StorageError(f"study {name!r}: artifact {src!r} is missing (artifact directory moved?)")
    ckpt = read_checkpoint(src)  # validate before copying / converting
    res: dict[str, Any] = {"study": name, "finetune_trial": number, "out": str(out_path), "format": fmt}
    model = None
    if fmt == "acpsearch":
        with atomic_out(out_path) as tmp:  # temp file + rename: a failed copy leaves nothing at --out
            shutil.copyfile(src, tmp)
    else:
        import torch

        model = model_from_checkpoint(ckpt, source=f"checkpoint {str(src)!r}", allow_factories=policy)
        meta = metadata_from_checkpoint(ckpt, {"study": name, "finetune_trial": number, "checkpoint": str(src)})
        rep = export_model(model, out_path, fmt, torch.zeros(*ckpt["input_shape"]), meta)
        res.update({"exporter": rep["exporter"], "verification": rep["verification"], "metadata": rep["metadata"]})
    if benchmark:
        if model is None:
            model = model_from_checkpoint(ckpt, source=f"checkpoint {str(src)!r}", allow_factories=policy)
        res["benchmark"] = bench_file(
            out_path,
            eager=model if fmt != "acpsearch" else None,
            batch=batch,
            rounds=rounds,
            input_shape=list(ckpt["input_shape"]),
        )
    if json_out:
        out(res)
        return
    print(f"wrote {out_path} (study {name}, finalist trial {number}, format {fmt})")
    if fmt != "acpsearch":
        v = res["verification"]
        print(
            f"exporter: {res['exporter']}; verified against PyTorch: max abs diff {v['max_abs_diff']:.3g} "
            f"(allowed {v['atol']:g}), {v['code_bits_compared']} code bits identical"
        )
    if benchmark:
        _print_bench(res["benchmark"])


def _print_bench(b: dict[str, Any]) -> None:
    lat = b["latency"]
    print(
        f"latency, batch {b['batch']}, 1 thread, median of {b['rounds']} interleaved rounds "
        f"after {b['warmup']} warm-up calls:"
    )
    for key, v in lat.items():
        label = "eager PyTorch" if key == "eager" else f"{key} in {b['runtime']}"
        print(f"  {label}: {v['median_ms']:.3f} ms (min {v['min_ms']:.3f}, max {v['max_ms']:.3f})")
    if "eager" in lat and len(lat) == 2:
        other = next(k for k in lat if k != "eager")
        print(f"  {other} / eager: {lat[other]['median_ms'] / max(lat['eager']['median_ms'], 1e-9):.2f}x")


@app.command()
def bench(
    file: Path = typer.Argument(..., help="a file written by export / prune (torchscript, onnx, pt2 or acpsearch)"),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="acpsearch checkpoint of the same network: "
        "also time it as eager PyTorch (default: the source checkpoint named "
        "in the file's metadata, when it still exists)",
    ),
    batch: int = typer.Option(1, "--batch", min=1, max=4096, help="batch size"),
    rounds: int = typer.Option(50, "--rounds", min=1, max=100000, help="timed rounds"),
    warmup: int = typer.Option(5, "--warmup", min=0, max=10000, help="untimed warm-up calls per runtime"),
    allow_factory: list[str] | None = typer.Option(None, "--allow-factory", help=ALLOW_HELP),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Latency of an exported model in the runtime that will run it (TorchScript, onnxruntime, torch.export),
    next to the eager PyTorch model: median of interleaved rounds, one thread, after warm-up."""
    from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint
    from acpsearch.export import bench_file, detect_format, load_exported
    from acpsearch.trust import FactoryPolicy

    if not file.is_file():
        raise SpecError(f"FILE: {str(file)!r} not found")
    policy = FactoryPolicy.from_user(allow_factory)
    detect_format(file)  # one line for a file of no known format
    eager, shape = None, None
    src = checkpoint
    if src is None:
        _, meta, _ = load_exported(file)
        named = (meta.get("source") or {}).get("checkpoint")
        src = Path(named) if named and Path(named).is_file() else None
    if src is not None:
        ckpt = read_checkpoint(src)
        eager = model_from_checkpoint(ckpt, source=f"checkpoint {str(src)!r}", allow_factories=policy)
        shape = list(ckpt["input_shape"])
    res = bench_file(file, eager=eager, batch=batch, rounds=rounds, warmup=warmup, input_shape=shape)
    res["eager_checkpoint"] = str(src) if src is not None else None
    if json_out:
        out(res)
        return
    print(
        f"{file}: {res['format']}"
        + (f", eager reference {src}" if src is not None else " (no eager reference: give --checkpoint)")
    )
    _print_bench(res)


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


# register `demo`
from acpsearch.commands import demo as _demo  # noqa: E402,F401
