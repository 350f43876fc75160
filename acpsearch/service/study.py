"""Study bookkeeping in Optuna storage: submission, state, phases, the lease, summaries.

Everything a runner needs to resume lives in the storage (study user attributes + artifacts),
never in the runner's memory: a SIGKILLed runner leaves a study that the next runner continues.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from acpsearch.errors import SpecError, StorageError
from acpsearch.service.spec import StudySpec, spec_from_json

KIND = "acpsearch-search"
FINETUNE_KIND = "acpsearch-finetune"
FINETUNE_SUFFIX = ".finetune"
PHASES = ("base", "encoder", "search", "rerank", "anchor", "finetune", "select", "report")
LEASE_TTL_S = 60.0
FINETUNE_OBJECTIVE = "val_map"
RATIO_DIGITS = 4  # keep ratios are stored and shown with this many decimals (0.6000000000000001 -> 0.6)


def objective_name(ranker: str) -> str:
    """The search study's objective as optuna-dashboard shows it: a ranker score, not mAP (its
    "Best Trial" is the best-scored candidate, not the winner; the winner is chosen by val mAP)."""
    return f"{ranker} score (ranker, not mAP)"


CANDIDATE_OBJECTIVE = objective_name("similarity")


def round_ratio(value: Any, digits: int = RATIO_DIGITS) -> Any:
    """A keep ratio (or any float) rounded for storage and display; other values as they are."""
    if isinstance(value, float) or (hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0):
        return round(float(value), digits)
    return value


def round_ratios(ratios: dict[str, Any], digits: int = RATIO_DIGITS) -> dict[str, Any]:
    """{group: ratio} with every ratio rounded (see round_ratio)."""
    return {str(k): round_ratio(v, digits) for k, v in (ratios or {}).items()}


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# --- studies -------------------------------------------------------------------------------------
def _get_study(storage: Any, name: str, sampler: Any = None) -> Any:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        raise StorageError(f"study {name!r}: no such study in this storage") from None


def load_search_study(storage: Any, name: str, sampler: Any = None) -> Any:
    """The main (candidate) study of a search; refuses studies acpsearch did not create."""
    study = _get_study(storage, name, sampler)
    if study.user_attrs.get("kind") != KIND:
        raise StorageError(f"study {name!r}: not an acpsearch search study")
    return study


def study_spec(study: Any) -> StudySpec:
    return spec_from_json(study.user_attrs["spec"])


def check_name(name: str, field: str = "--name") -> None:
    """A name a user may give a study: NAME_RE, and not ending in '.finetune' (the suffix of the
    companion study acpsearch makes for every study; a user's study of that name would collide)."""
    from acpsearch.service import spec as _spec

    _spec.check_name(name, field)  # the whole name (no trailing newline), not empty
    if name.endswith(FINETUNE_SUFFIX):
        raise SpecError(
            f"{field}: {name!r} ends in {FINETUNE_SUFFIX!r}, which is reserved for the companion study "
            f"acpsearch makes for {name[: -len(FINETUNE_SUFFIX)]!r}; choose another name"
        )


def _write_attrs(put: Any, attrs: dict[str, Any], objectives: list[str]) -> None:
    """The attributes that make a fresh Optuna study an acpsearch study, written in one place:
    `put(key, value)` writes a user attribute, `put(key, value, system=True)` a system one."""
    from optuna.study.study import _SYSTEM_ATTR_METRIC_NAMES  # what study.set_metric_names writes

    for key, value in attrs.items():
        put(key, value)
    put(_SYSTEM_ATTR_METRIC_NAMES, list(objectives), system=True)


def _rdb(storage: Any) -> Any:
    from optuna.storages import RDBStorage

    backend = getattr(storage, "_backend", storage)  # optuna's _CachedStorage wraps an RDBStorage
    return backend if isinstance(backend, RDBStorage) else None


def _create_with_attrs(storage: Any, name: str, attrs: dict[str, Any], objectives: list[str]) -> Any:
    """create_study + its attributes, all or nothing; raises DuplicatedStudyError.

    On a SQL storage the study, its direction and all its attributes are one transaction (one
    commit): a failing write (read-only or full disk, EFBIG), Ctrl-C or any other error leaves no
    trace. Deleting a half-made study afterwards is not enough there: with the disk full the
    delete fails too. Other storages (journal): create, write, and on any failure delete the
    half-made study again before the error goes on, so the name stays free."""
    import json

    import optuna
    from optuna.storages._rdb import models
    from sqlalchemy.exc import IntegrityError

    rdb = _rdb(storage)
    if rdb is not None:
        session = rdb.scoped_session()
        try:
            row = models.StudyModel(
                study_name=name,
                directions=[models.StudyDirectionModel(objective=0, direction=optuna.study.StudyDirection.MAXIMIZE)],
            )
            session.add(row)
            session.flush()  # the study id; still inside the transaction

            def put(key: str, value: Any, system: bool = False) -> None:
                model = models.StudySystemAttributeModel if system else models.StudyUserAttributeModel
                session.add(model(study_id=row.study_id, key=key, value_json=json.dumps(value)))

            _write_attrs(put, attrs, objectives)
            session.commit()
        except IntegrityError:
            session.rollback()
            raise optuna.exceptions.DuplicatedStudyError(f"study {name!r} exists") from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        return optuna.load_study(study_name=name, storage=storage)

    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    try:
        _write_attrs(
            lambda key, value, system=False: (storage.set_study_system_attr if system else storage.set_study_user_attr)(
                study._study_id, key, value
            ),
            attrs,
            objectives,
        )
    except BaseException:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
        raise
    return study


def submit(storage: Any, spec: StudySpec, name: str | None = None) -> str:
    """Create the study for `spec` (state 'submitted'); the name must be new. Returns the name.
    All or nothing (see _create_with_attrs): a failure part-way leaves no study behind."""
    import optuna

    given = name
    name = name or spec.name or f"study-{_dt.datetime.now(_dt.UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"
    check_name(name, "--name" if given else "spec: name")
    spec = spec.model_copy(update={"name": name})
    attrs = {"kind": KIND, "spec": spec.to_dict(), "state": "submitted", "submitted_at": now_iso()}
    try:
        _create_with_attrs(storage, name, attrs, [objective_name(spec.search.ranker)])
    except optuna.exceptions.DuplicatedStudyError:
        raise SpecError(f"name: a study named {name!r} already exists in this storage (use --name)") from None
    return name


def set_objective_names(study: Any, names: list[str]) -> None:
    """Objective names shown by optuna-dashboard. optuna_dashboard.set_objective_names is deprecated
    in 0.21 in favour of Optuna's study.set_metric_names (which the dashboard reads)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names(names)


def set_finished_trial_user_attr(storage: Any, trial_id: int, key: str, value: Any) -> bool:
    """A user attribute on a trial that may already be finished (the winner is known only after
    every finalist finished). Optuna refuses updates of finished trials through its API; on a SQL
    storage the row is written directly (upsert on trial_user_attributes). Other storages (journal)
    keep the refusal: False is returned and the caller relies on the note (a study attribute)."""
    import json

    import optuna

    rdb = _rdb(storage)
    if rdb is None:
        try:
            storage.set_trial_user_attr(trial_id, key, value)
            return True
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            return False
    from optuna.storages._rdb import models

    session = rdb.scoped_session()
    try:
        row = (
            session.query(models.TrialUserAttributeModel)
            .filter(models.TrialUserAttributeModel.trial_id == trial_id)
            .filter(models.TrialUserAttributeModel.key == key)
            .one_or_none()
        )
        if row is None:
            session.add(models.TrialUserAttributeModel(trial_id=trial_id, key=key, value_json=json.dumps(value)))
        else:
            row.value_json = json.dumps(value)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    return True


def save_trial_note(study: Any, trial_id: int, body: str) -> None:
    """optuna-dashboard's note of one trial of `study` (optuna_dashboard.save_note; the dashboard
    keeps trial notes as study system attributes, so a finished trial can get one too)."""
    import optuna
    from optuna_dashboard import save_note

    save_note(optuna.trial.Trial(study, trial_id), body)


def _companion_problem(storage: Any, parent_name: str) -> str | None:
    """Why the study named PARENT.finetune, if one exists, is not acpsearch's companion of
    PARENT (None: there is none yet, or it is ours)."""
    name = parent_name + FINETUNE_SUFFIX
    try:
        sid = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    attrs = storage.get_study_user_attrs(sid)
    if attrs.get("kind") == FINETUNE_KIND and attrs.get("parent") == parent_name:
        return None
    what = (
        f"kind {attrs.get('kind')!r}, parent {attrs.get('parent')!r}"
        if attrs.get("kind")
        else "no acpsearch attributes"
    )
    return (
        f"study {name!r}: exists but is not the fine-tuning study of {parent_name!r} ({what}); "
        f"acpsearch leaves it alone: rename or delete it, or run {parent_name!r} in another storage"
    )


def check_companion(storage: Any, parent_name: str) -> None:
    """Before a run touches anything: refuse when NAME.finetune belongs to someone else."""
    problem = _companion_problem(storage, parent_name)
    if problem:
        raise StorageError(problem)


def finetune_study(storage: Any, parent: Any) -> Any:
    """The companion study holding the finalists' fine-tuning trials (objective: val mAP).

    A separate study, because finalists have another objective than candidates and must not
    feed the candidate sampler. An existing study of that name is used only when it is this
    study's companion (kind and parent attributes); any other is refused, never adopted."""
    import optuna

    name = parent.study_name + FINETUNE_SUFFIX
    try:
        return _create_with_attrs(
            storage, name, {"kind": FINETUNE_KIND, "parent": parent.study_name}, [FINETUNE_OBJECTIVE]
        )
    except optuna.exceptions.DuplicatedStudyError:
        pass
    check_companion(storage, parent.study_name)
    return optuna.load_study(study_name=name, storage=storage)


def list_search_studies(storage: Any) -> list[Any]:
    """FrozenStudy records of all acpsearch search studies, oldest first."""
    studies = [s for s in storage.get_all_studies() if s.user_attrs.get("kind") == KIND]
    return sorted(studies, key=lambda s: s._study_id)


# --- phases --------------------------------------------------------------------------------------
def phase_done(study: Any, phase: str) -> dict[str, Any] | None:
    """The record of a finished phase, or None (attrs are re-read from storage every time)."""
    rec = study.user_attrs.get(f"phase.{phase}")
    return rec if isinstance(rec, dict) and rec.get("done") else None


def mark_phase(study: Any, phase: str, seconds: float, **details: Any) -> None:
    study.set_user_attr(
        f"phase.{phase}", {"done": True, "seconds": round(float(seconds), 3), "at": now_iso(), **details}
    )


def set_state(study: Any, state: str, **extra: Any) -> None:
    study.set_user_attr("state", state)
    for key, value in extra.items():
        study.set_user_attr(key, value)


# --- lease ---------------------------------------------------------------------------------------
class LeaseLost(RuntimeError):
    """Another runner took the study (our lease expired): stop writing to it."""


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _holder_dead(holder: Any) -> bool:
    """True when the holder ran on THIS host and its process is gone (SIGKILLed runner): its
    lease need not be waited out. Holders on other hosts are judged by expiry only."""
    parts = str(holder or "").split(":")
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _lease_free(lease: Any, me: str, now: float) -> bool:
    if not isinstance(lease, dict) or not lease.get("holder") or lease.get("holder") == me:
        return True
    return float(lease.get("expires", 0)) < now or _holder_dead(lease.get("holder"))


@dataclass
class Lease:
    """A claim on a study: user attr ``lease = {holder, expires}`` renewed by a background thread.

    On SQL storages (SQLite, PostgreSQL, MySQL) a claim is an atomic compare-and-swap on the
    attribute's row (``UPDATE ... WHERE value_json = <what I read>``): of two runners that read
    the same free lease, exactly one update matches. Optuna's storage API has no such operation,
    hence the SQL. The journal storage has no row to swap, so there a claim is: write -> wait a
    moment -> read back (the last writer wins). The holder re-checks on every renewal and raises
    LeaseLost in the runner if someone else holds it. A dead holder stops renewing, so its lease
    expires after `ttl` seconds (at once when it ran on this host and its process is gone)."""

    storage: Any
    study_id: int
    holder: str
    ttl: float = LEASE_TTL_S
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None
    lost: str | None = None
    _raw: str | None = None  # the value_json we last wrote (SQL storages)

    # --- storage access ---------------------------------------------------------------------------
    def _engine(self) -> Any:
        return getattr(self.storage, "engine", None)

    def _attrs(self) -> dict[str, Any]:
        return self.storage.get_study_user_attrs(self.study_id)

    def _value(self) -> dict[str, Any]:
        return {"holder": self.holder, "expires": time.time() + self.ttl}

    def _read_raw(self) -> str | None:
        from sqlalchemy import text

        with self._engine().connect() as conn:
            row = conn.execute(
                text("SELECT value_json FROM study_user_attributes WHERE study_id = :s AND key = 'lease'"),
                {"s": self.study_id},
            ).first()
        return None if row is None else str(row[0])

    def _swap(self, old: str | None, new: dict[str, Any]) -> bool:
        """Atomically replace the lease row `old` (None: no row yet) by `new`; True if we won."""
        import json

        from sqlalchemy import text
        from sqlalchemy.exc import IntegrityError

        raw = json.dumps(new)
        if old is None:
            try:
                with self._engine().begin() as conn:
                    conn.execute(
                        text("INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (:s, 'lease', :v)"),
                        {"s": self.study_id, "v": raw},
                    )
            except IntegrityError:  # someone else created the row first
                return False
        else:
            with self._engine().begin() as conn:
                n = conn.execute(
                    text(
                        "UPDATE study_user_attributes SET value_json = :v "
                        "WHERE study_id = :s AND key = 'lease' AND value_json = :old"
                    ),
                    {"s": self.study_id, "v": raw, "old": old},
                ).rowcount
                if n != 1:
                    return False
        self._raw = raw
        return True

    def _write(self) -> None:
        self.storage.set_study_user_attr(self.study_id, "lease", self._value())

    # --- protocol ---------------------------------------------------------------------------------
    def try_acquire(self, settle_s: float = 0.3) -> bool:
        import json

        if self._engine() is not None:
            raw = self._read_raw()
            if not _lease_free(json.loads(raw) if raw else None, self.holder, time.time()):
                return False
            if not self._swap(raw, self._value()):
                return False
        else:
            if not _lease_free(self._attrs().get("lease"), self.holder, time.time()):
                return False
            self._write()
            time.sleep(settle_s)
            lease = self._attrs().get("lease")
            if not (isinstance(lease, dict) and lease.get("holder") == self.holder):
                return False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="acpsearch-lease", daemon=True)
        self._thread.start()
        return True

    def renew_once(self) -> bool:
        """Extend the lease; False (and `lost` set) when another runner holds it now."""
        if self._engine() is not None:
            if self._swap(self._raw, self._value()):
                return True
        else:
            lease = self._attrs().get("lease")
            if isinstance(lease, dict) and lease.get("holder") == self.holder:
                self._write()
                return True
        lease = self._attrs().get("lease")
        other = lease.get("holder") if isinstance(lease, dict) else None
        self.lost = f"study taken over by {other}" if other else "lease released by someone else"
        return False

    def _renew(self) -> None:
        assert self._stop is not None
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self.renew_once():
                    return
            except Exception:  # noqa: BLE001 - storage hiccup: retry next tick; if it lasts past the
                continue  # ttl another runner may take over, which the next successful read reports

    def check(self) -> None:
        """Raise LeaseLost when the renewal thread saw someone else take the study."""
        if self.lost:
            raise LeaseLost(self.lost)

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        try:
            free = {"holder": None, "expires": 0.0}
            if self._engine() is not None:
                self._swap(self._raw, free)
            else:
                lease = self._attrs().get("lease")
                if isinstance(lease, dict) and lease.get("holder") == self.holder:
                    self.storage.set_study_user_attr(self.study_id, "lease", free)
        except Exception:  # noqa: BLE001 - an unreleased lease simply expires
            pass


def wait_for_lease(lease: Lease, timeout_s: float, poll_s: float = 2.0) -> bool:
    """`run --force`: wait (at most `timeout_s`) for the current holder's lease to expire, then
    take the study. A live holder keeps renewing, so this fails instead of stealing from it."""
    deadline = time.time() + timeout_s
    while True:
        if lease.try_acquire():
            return True
        if time.time() >= deadline:
            return False
        time.sleep(poll_s)


def lease_state(attrs: dict[str, Any], now: float | None = None) -> str:
    lease = attrs.get("lease")
    now = time.time() if now is None else now
    if (
        isinstance(lease, dict)
        and lease.get("holder")
        and float(lease.get("expires", 0)) >= now
        and not _holder_dead(lease["holder"])
    ):
        return f"held by {lease['holder']} (lease expires in {max(0.0, float(lease['expires']) - now):.0f} s)"
    return "free"


# --- summaries -----------------------------------------------------------------------------------
def source(trial: Any) -> str:
    """Where a candidate trial came from: "search", or "anchor:<kind>" (pipeline.phase_anchor)."""
    return str(trial.user_attrs.get("source", "search"))


def is_searched(trial: Any) -> bool:
    """A candidate the search proposed; anchors added beside the search are finalists, not candidates."""
    return source(trial) == "search"


def summarize(frozen_or_study: Any, storage: Any) -> dict[str, Any]:
    """One row of `acpsearch status`: state, progress and the winner, from storage only."""
    import optuna

    attrs = frozen_or_study.user_attrs
    sid = frozen_or_study._study_id
    spec = attrs.get("spec") or {}
    trials = storage.get_all_trials(sid, deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    winner = attrs.get("winner") or {}
    phases = [p for p in PHASES if isinstance(attrs.get(f"phase.{p}"), dict) and attrs[f"phase.{p}"].get("done")]
    return {
        "name": frozen_or_study.study_name,
        "state": attrs.get("state", "?"),
        "model": (spec.get("model") or {}).get("zoo") or (spec.get("model") or {}).get("factory"),
        "dataset": (spec.get("data") or {}).get("dataset"),
        "budget": {k: v for k, v in (spec.get("budget") or {}).items() if v is not None},
        "candidates": sum(1 for t in trials if is_searched(t)),
        "candidates_target": (spec.get("search") or {}).get("candidates"),
        "phases_done": phases,
        "lease": lease_state(attrs),
        "winner_test_map": winner.get("test_map"),
        "winner_flops_ratio": winner.get("flops_ratio"),
        "submitted_at": attrs.get("submitted_at"),
        "error": attrs.get("error"),
    }
