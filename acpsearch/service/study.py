"""Study bookkeeping in Optuna storage: submission, loading, listing, state, phases, summaries.

Everything a runner needs to resume lives in the storage (study user attributes + artifacts),
never in the runner's memory: a SIGKILLed runner leaves a study that the next runner continues.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from typing import TYPE_CHECKING, Any

from acpsearch.errors import SpecError, StorageError
from acpsearch.service import keys
from acpsearch.service import optuna_adapter as adapter
from acpsearch.service.lease import lease_state
from acpsearch.service.spec import StudySpec, spec_from_json

if TYPE_CHECKING:
    from optuna import Study
    from optuna.samplers import BaseSampler
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from acpsearch.service.optuna_adapter import FrozenStudy

KIND = keys.SEARCH_KIND
FINETUNE_KIND = keys.FINETUNE_KIND
FINETUNE_SUFFIX = ".finetune"
PHASES = ("base", "encoder", "search", "rerank", "anchor", "finetune", "select", "shorten", "report")
FINETUNE_OBJECTIVE = "val_map"
RATIO_DIGITS = 4  # keep ratios are stored and shown with this many decimals (0.6000000000000001 -> 0.6)


def objective_name(ranker: str, label: str = "mAP") -> str:
    """The search study's objective as optuna-dashboard shows it: a ranker score, not mAP (its
    "Best Trial" is the best-scored candidate, not the winner; the winner is chosen by val mAP);
    `label` is the task's metric (keys.TaskMetric.label: mAP or accuracy)."""
    return f"{ranker} score (ranker, not {label})"


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
def _get_study(storage: BaseStorage, name: str, sampler: BaseSampler | None = None) -> Study:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        raise StorageError(f"study {name!r}: no such study in this storage") from None


def load_search_study(storage: BaseStorage, name: str, sampler: BaseSampler | None = None) -> Study:
    """The main (candidate) study of a search; refuses studies acpsearch did not create."""
    study = _get_study(storage, name, sampler)
    attrs = study.user_attrs
    if attrs.get(keys.KIND) != KIND:
        raise StorageError(f"study {name!r}: not an acpsearch search study")
    keys.check_schema(name, attrs)
    return study


def study_spec(study: Study | FrozenStudy) -> StudySpec:
    return spec_from_json(study.user_attrs[keys.SPEC])


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


def _write_attrs(put: adapter.Put, attrs: dict[str, Any], objectives: list[str]) -> None:
    """The attributes that make a fresh Optuna study an acpsearch study, written in one place:
    `put(key, value)` writes a user attribute, `put(key, value, system=True)` a system one."""
    for key, value in attrs.items():
        put(key, value)
    put(adapter.metric_names_attr(), list(objectives), system=True)  # what study.set_metric_names writes


def _create_with_attrs(storage: BaseStorage, name: str, attrs: dict[str, Any], objectives: list[str]) -> Study:
    """create_study + its attributes, all or nothing; raises DuplicatedStudyError.

    On a SQL storage the study, its direction and all its attributes are one transaction (one
    commit): a failing write (read-only or full disk, EFBIG), Ctrl-C or any other error leaves no
    trace. Deleting a half-made study afterwards is not enough there: with the disk full the
    delete fails too. Other storages (journal): create, write, and on any failure delete the
    half-made study again before the error goes on, so the name stays free."""
    import optuna
    from sqlalchemy.exc import IntegrityError

    if adapter.rdb(storage) is not None:
        try:
            adapter.create_rdb_study(storage, name, lambda put: _write_attrs(put, attrs, objectives))
        except IntegrityError:
            raise optuna.exceptions.DuplicatedStudyError(f"study {name!r} exists") from None
        return optuna.load_study(study_name=name, storage=storage)

    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    sid = adapter.study_id(study)
    try:
        _write_attrs(
            lambda key, value, system=False: (storage.set_study_system_attr if system else storage.set_study_user_attr)(
                sid, key, value
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


def submit(storage: BaseStorage, spec: StudySpec, name: str | None = None) -> str:
    """Create the study for `spec` (state 'submitted'); the name must be new. Returns the name.
    All or nothing (see _create_with_attrs): a failure part-way leaves no study behind."""
    import optuna

    given = name
    name = name or spec.name or f"study-{_dt.datetime.now(_dt.UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"
    check_name(name, "--name" if given else "spec: name")
    spec = spec.model_copy(update={"name": name})
    attrs = {
        keys.KIND: KIND,
        keys.SCHEMA: keys.SCHEMA_VERSION,
        keys.SPEC: spec.to_dict(),
        keys.STATE: keys.SUBMITTED,
        keys.SUBMITTED_AT: now_iso(),
    }
    try:
        label = keys.metric_of(spec.task).label
        _create_with_attrs(storage, name, attrs, [objective_name(spec.search.ranker, label)])
    except optuna.exceptions.DuplicatedStudyError:
        raise SpecError(f"name: a study named {name!r} already exists in this storage (use --name)") from None
    return name


def set_objective_names(study: Study, names: list[str]) -> None:
    """Objective names shown by optuna-dashboard. optuna_dashboard.set_objective_names is deprecated
    in 0.21 in favour of Optuna's study.set_metric_names (which the dashboard reads)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names(names)


def set_finished_trial_user_attr(storage: BaseStorage, trial_id: int, key: str, value: Any) -> bool:
    """A user attribute on a trial that may already be finished (the winner is known only after
    every finalist finished). Optuna refuses updates of finished trials through its API; on a SQL
    storage the row is written directly (upsert on trial_user_attributes). Other storages (journal)
    keep the refusal: False is returned and the caller relies on the note (a study attribute)."""
    import optuna

    if adapter.rdb(storage) is None:
        try:
            storage.set_trial_user_attr(trial_id, key, value)
            return True
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            return False
    adapter.upsert_trial_user_attr(storage, trial_id, key, value)
    return True


def save_trial_note(study: Study, trial_id: int, body: str) -> None:
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
    if attrs.get(keys.KIND) == FINETUNE_KIND and attrs.get(keys.PARENT) == parent_name:
        return None
    what = (
        f"kind {attrs.get(keys.KIND)!r}, parent {attrs.get(keys.PARENT)!r}"
        if attrs.get(keys.KIND)
        else "no acpsearch attributes"
    )
    return (
        f"study {name!r}: exists but is not the fine-tuning study of {parent_name!r} ({what}); "
        f"acpsearch leaves it alone: rename or delete it, or run {parent_name!r} in another storage"
    )


def check_companion(storage: BaseStorage, parent_name: str) -> None:
    """Before a run touches anything: refuse when NAME.finetune belongs to someone else."""
    problem = _companion_problem(storage, parent_name)
    if problem:
        raise StorageError(problem)


def finetune_study(storage: BaseStorage, parent: Study) -> Study:
    """The companion study holding the finalists' fine-tuning trials (objective: val mAP).

    A separate study, because finalists have another objective than candidates and must not
    feed the candidate sampler. An existing study of that name is used only when it is this
    study's companion (kind and parent attributes); any other is refused, never adopted."""
    import optuna

    name = parent.study_name + FINETUNE_SUFFIX
    objective = keys.metric_of((parent.user_attrs.get(keys.SPEC) or {}).get("task")).val  # FINETUNE_OBJECTIVE
    try:
        return _create_with_attrs(
            storage, name, {keys.KIND: FINETUNE_KIND, keys.PARENT: parent.study_name}, [objective]
        )
    except optuna.exceptions.DuplicatedStudyError:
        pass
    check_companion(storage, parent.study_name)
    return optuna.load_study(study_name=name, storage=storage)


def list_search_studies(storage: BaseStorage) -> list[FrozenStudy]:
    """FrozenStudy records of all acpsearch search studies, oldest first."""
    studies = [s for s in storage.get_all_studies() if s.user_attrs.get(keys.KIND) == KIND]
    return sorted(studies, key=adapter.study_id)


# --- phases --------------------------------------------------------------------------------------
def phase_done(study: Study | FrozenStudy, phase: str) -> dict[str, Any] | None:
    """The record of a finished phase, or None (attrs are re-read from storage every time)."""
    rec = study.user_attrs.get(keys.phase(phase))
    return rec if isinstance(rec, dict) and rec.get("done") else None


def mark_phase(study: Study, phase: str, seconds: float, **details: Any) -> None:
    study.set_user_attr(
        keys.phase(phase), {"done": True, "seconds": round(float(seconds), 3), "at": now_iso(), **details}
    )


def set_state(study: Study, state: str, **extra: Any) -> None:
    study.set_user_attr(keys.STATE, state)
    for key, value in extra.items():
        study.set_user_attr(key, value)


# --- summaries -----------------------------------------------------------------------------------
def source(trial: FrozenTrial) -> str:
    """Where a candidate trial came from: "search", or "anchor:<kind>" (service/phases/anchor.py)."""
    return str(trial.user_attrs.get(keys.T_SOURCE, "search"))


def is_searched(trial: FrozenTrial) -> bool:
    """A candidate the search proposed; anchors added beside the search are finalists, not candidates."""
    return source(trial) == "search"


def summarize(frozen_or_study: Study | FrozenStudy, storage: BaseStorage) -> dict[str, Any]:
    """One row of `acpsearch status`: state, progress and the winner, from storage only."""
    import optuna

    attrs = frozen_or_study.user_attrs
    sid = adapter.study_id(frozen_or_study)
    spec = attrs.get(keys.SPEC) or {}
    trials = storage.get_all_trials(sid, deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    winner = attrs.get(keys.WINNER) or {}
    phases = [p for p in PHASES if isinstance(attrs.get(keys.phase(p)), dict) and attrs[keys.phase(p)].get("done")]
    return {
        "name": frozen_or_study.study_name,
        "state": attrs.get(keys.STATE, "?"),
        "model": (spec.get("model") or {}).get("zoo") or (spec.get("model") or {}).get("factory"),
        "dataset": (spec.get("data") or {}).get("dataset"),
        "budget": {k: v for k, v in (spec.get("budget") or {}).items() if v is not None},
        "candidates": sum(1 for t in trials if is_searched(t)),
        "candidates_target": (spec.get("search") or {}).get("candidates"),
        "phases_done": phases,
        "lease": lease_state(attrs),
        "winner_test_map": winner.get("test_map"),
        "winner_flops_ratio": winner.get("flops_ratio"),
        "submitted_at": attrs.get(keys.SUBMITTED_AT),
        "error": attrs.get(keys.ERROR),
        **_task_summary(spec, winner),
    }


def _task_summary(spec: dict[str, Any], winner: dict[str, Any]) -> dict[str, Any]:
    """A classification study's task and winner accuracy (nothing for a retrieval study)."""
    if spec.get("task", "retrieval") == "retrieval":
        return {}
    return {"task": spec["task"], "winner_test_acc": winner.get(keys.T_TEST_ACC)}
