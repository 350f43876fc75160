"""Optuna storage: the single source of truth of every study.

Any URL Optuna accepts: ``sqlite:///file.db`` (default ``sqlite:///acpsearch.db`` or
``$ACPSEARCH_STORAGE``), ``postgresql://user@host/db`` (psycopg2), ``mysql://...``, and
``journal:///path/file.log`` for Optuna's journal file (many local writers, no server).
Artifacts (base network, encoder, exported winner, plots) live in a directory next to the
storage file, or in ``$ACPSEARCH_ARTIFACTS`` / the ``--artifacts`` flag.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from acpsearch.errors import StorageError

DEFAULT_URL = "sqlite:///acpsearch.db"
JOURNAL_PREFIX = "journal://"

_CACHE: dict[str, Any] = {}


def resolve_url(url: str | None) -> str:
    """The storage URL in force: the flag, else $ACPSEARCH_STORAGE, else sqlite:///acpsearch.db."""
    return url or os.environ.get("ACPSEARCH_STORAGE") or DEFAULT_URL


def _journal_path(url: str) -> Path:
    rest = url[len(JOURNAL_PREFIX):]
    # journal:///abs/path.log -> /abs/path.log ; journal://rel/path.log -> rel/path.log
    return Path(rest[1:] if rest.startswith("//") else rest) if not rest.startswith("/") else Path(rest)


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///"):].split("?", 1)[0]
    if rest in ("", ":memory:"):
        return None
    return Path(rest)


def _driver_url(url: str) -> str:
    """SQLAlchemy 2.1 maps plain ``postgresql://`` to psycopg 3; we ship psycopg2, so a plain URL
    gets the psycopg2 driver unless psycopg 3 is installed (an explicit ``+driver`` is kept)."""
    import importlib.util

    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix) and importlib.util.find_spec("psycopg") is None \
                and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def open_storage(url: str | None = None) -> Any:
    """Open (and cache per process) an Optuna storage; any failure is a StorageError (exit 2).

    SQLite gets ``timeout=60`` so a second process waits for the lock instead of failing with
    "database is locked" (FACTS.md: seen with 24 writers)."""
    import optuna

    url = resolve_url(url)
    if url in _CACHE:
        return _CACHE[url]
    try:
        if url.startswith(JOURNAL_PREFIX):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = _journal_path(url)
            if not path.parent.is_dir():
                raise StorageError(f"storage {url!r}: directory {str(path.parent)!r} does not exist")
            storage: Any = JournalStorage(JournalFileBackend(str(path)))
        else:
            engine_kwargs: dict[str, Any] = {}
            sqlite_path = _sqlite_path(url)
            if url.startswith("sqlite"):
                engine_kwargs["connect_args"] = {"timeout": 60}
                if sqlite_path is not None and not sqlite_path.parent.is_dir():
                    raise StorageError(
                        f"storage {url!r}: directory {str(sqlite_path.parent)!r} does not exist"
                    )
                if sqlite_path is not None and sqlite_path.exists() and sqlite_path.is_dir():
                    raise StorageError(f"storage {url!r}: {str(sqlite_path)!r} is a directory")
            else:
                engine_kwargs["pool_pre_ping"] = True
                if url.startswith(("postgresql", "mysql")):
                    engine_kwargs["connect_args"] = {"connect_timeout": 10}
            storage = optuna.storages.RDBStorage(_driver_url(url), engine_kwargs=engine_kwargs)
            storage.get_all_studies()  # touch the database now: a bad URL fails here, not mid-study
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors of many kinds mean "cannot open"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StorageError(f"storage {url!r}: cannot open ({type(exc).__name__}: {first[:200]})") from None
    _CACHE[url] = storage
    return storage


def artifact_dir(url: str | None = None, override: str | Path | None = None) -> Path:
    """Where the study artifacts go: the flag, $ACPSEARCH_ARTIFACTS, or `<storage file>-artifacts/`
    next to a file storage (./acpsearch-artifacts for a server database)."""
    if override is not None:
        path = Path(override)
    elif os.environ.get("ACPSEARCH_ARTIFACTS"):
        path = Path(os.environ["ACPSEARCH_ARTIFACTS"])
    else:
        url = resolve_url(url)
        file: Path | None = _journal_path(url) if url.startswith(JOURNAL_PREFIX) else _sqlite_path(url)
        path = file.with_name(file.stem + "-artifacts") if file is not None else Path("acpsearch-artifacts")
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifact_store(directory: Path) -> Any:
    """optuna's FileSystemArtifactStore over `directory` (what optuna-dashboard serves)."""
    from optuna.artifacts import FileSystemArtifactStore

    directory.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(directory))
