"""The one place acpsearch reaches into Optuna's internals.

Optuna's public API lacks a few things acpsearch needs; each private use below says why. When
Optuna changes one of them, this module is the only one to fix (tests/service/test_storage_schema.py
and tests/e2e/test_stored_studies.py exercise every function here).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # the type of storage.get_all_studies()'s records: documented as optuna.study.FrozenStudy, which
    # Optuna does not export (for annotations only)
    from optuna.study._frozen import FrozenStudy as FrozenStudy

# The table of study user attributes in Optuna's SQL schema (optuna/storages/_rdb/models.py,
# StudyUserAttributeModel). The lease swaps its row with one UPDATE ... WHERE (an atomic
# compare-and-swap), an operation Optuna's storage API does not offer.
STUDY_USER_ATTR_TABLE = "study_user_attributes"


def study_id(study: Any) -> int:
    """The storage id of a Study or FrozenStudy: the storage API (get_study_user_attrs,
    get_all_trials, ...) takes ids, but Study and FrozenStudy expose only their name; looking the
    name up again would cost a query per call."""
    return int(study._study_id)


def storage_of(study: Any) -> Any:
    """The storage a Study was loaded from: needed to open its companion study in the same storage
    when only the study was handed over (Study has no public accessor)."""
    return study._storage


def trial_id(trial: Any) -> int:
    """The storage id of a FrozenTrial (Trial has `_trial_id` too): writes to a finished trial go
    through the storage, which takes ids; FrozenTrial exposes only the per-study `number`."""
    return int(trial._trial_id)


def metric_names_attr() -> str:
    """The system attribute study.set_metric_names writes (optuna-dashboard reads it): written
    directly when a study is created in one transaction (see create_rdb_study)."""
    from optuna.study.study import _SYSTEM_ATTR_METRIC_NAMES

    return str(_SYSTEM_ATTR_METRIC_NAMES)


def rdb(storage: Any) -> Any:
    """The RDBStorage behind `storage`, or None (journal and in-memory storages). Optuna wraps an
    RDBStorage in a _CachedStorage (`_backend`) when a study is loaded; the SQL functions below need
    the RDBStorage itself."""
    from optuna.storages import RDBStorage

    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


Put = Callable[..., None]  # put(key, value) writes a user attribute, put(key, value, system=True) a system one


def create_rdb_study(storage: Any, name: str, write: Callable[[Put], None]) -> None:
    """Create a maximising study and `write(put)` its attributes in ONE transaction on a SQL storage
    (Optuna creates a study and writes each attribute in separate commits, which a full disk can
    interrupt half-way). Raises sqlalchemy's IntegrityError when the name exists; rolls back on any
    error."""
    import optuna
    from optuna.storages._rdb import models  # Optuna's ORM: no public way to batch the writes

    session = rdb(storage).scoped_session()
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

        write(put)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def upsert_trial_user_attr(storage: Any, trial: int, key: str, value: Any) -> None:
    """Write a user attribute of a trial that may be finished, on a SQL storage: Optuna refuses
    updates of finished trials through its API (UpdateFinishedTrialError), but the winner is known
    only after every finalist finished."""
    from optuna.storages._rdb import models  # see create_rdb_study

    session = rdb(storage).scoped_session()
    try:
        row = (
            session.query(models.TrialUserAttributeModel)
            .filter(models.TrialUserAttributeModel.trial_id == trial)
            .filter(models.TrialUserAttributeModel.key == key)
            .one_or_none()
        )
        if row is None:
            session.add(models.TrialUserAttributeModel(trial_id=trial, key=key, value_json=json.dumps(value)))
        else:
            row.value_json = json.dumps(value)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
