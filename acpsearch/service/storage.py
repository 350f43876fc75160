"""Optuna storage: the single source of truth of every study.

Any URL Optuna accepts: ``sqlite:///file.db`` (default ``sqlite:///acpsearch.db`` or
``$ACPSEARCH_STORAGE``), ``postgresql://user@host/db`` (psycopg2), ``mysql://...``, and
``journal:///path/file.log`` for Optuna's journal file (many local writers, no server).
Artifacts (base network, encoder, exported winner, plots) live in a directory next to the
storage file, or in ``$ACPSEARCH_ARTIFACTS`` / the ``--artifacts`` flag.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acpsearch.errors import AcpError, StorageError

if TYPE_CHECKING:
    from optuna.artifacts import FileSystemArtifactStore
    from optuna.storages import BaseStorage

DEFAULT_URL = "sqlite:///acpsearch.db"
JOURNAL_PREFIX = "journal://"

_CACHE: dict[str, BaseStorage] = {}


def resolve_url(url: str | None) -> str:
    """The storage URL in force: the flag, else $ACPSEARCH_STORAGE, else sqlite:///acpsearch.db."""
    return url or os.environ.get("ACPSEARCH_STORAGE") or DEFAULT_URL


# scheme://user:PASSWORD@host...: masked up to the last '@', so that an unescaped '@' in a password
# cannot leave a piece of it shown (an '@' later in the URL only masks more than needed)
_PASSWORD_RE = re.compile(r"^([A-Za-z][\w+.-]*://[^:/@?#]*):(.*)@")
_QUERY_PASSWORD_RE = re.compile(r"([?&](?:password|passwd|pwd)=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL as it may be shown (error lines, `status` titles, JSON, the dashboard line): a
    password is replaced by ``***`` (``postgresql://admin:***@host/db``)."""
    url = _PASSWORD_RE.sub(r"\1:***@", url)
    return _QUERY_PASSWORD_RE.sub(r"\1***", url)


def _password(url: str) -> str | None:
    m = _PASSWORD_RE.match(url)
    if m and m.group(2):
        return m.group(2)
    m = re.search(r"[?&](?:password|passwd|pwd)=([^&#]*)", url, re.IGNORECASE)
    return m.group(1) if m and m.group(1) else None


def _redact_text(text: str, url: str) -> str:
    """A driver's message about `url` with the URL's password masked wherever it appears."""
    text = text.replace(url, redact(url))
    pw = _password(url)
    if pw and len(pw) >= 4:  # a shorter one would mask random letters of the message
        from urllib.parse import unquote

        for form in {pw, unquote(pw)}:
            text = text.replace(form, "***")
    return text


def is_memory(url: str) -> bool:
    """An in-memory SQLite database (``sqlite://``, ``sqlite:///:memory:``): gone when the process exits."""
    if not url.startswith("sqlite"):
        return False
    rest = url.split("://", 1)[1] if "://" in url else ""
    path = rest[1:] if rest.startswith("/") else rest
    path = path.split("?", 1)[0]
    return path in ("", ":memory:") or path.startswith("file::memory:") or ("mode=memory" in url and "uri=true" in url)


def _journal_path(url: str) -> Path:
    rest = url[len(JOURNAL_PREFIX) :]
    # journal:///abs/path.log -> /abs/path.log ; journal://rel/path.log -> rel/path.log
    return Path(rest[1:] if rest.startswith("//") else rest) if not rest.startswith("/") else Path(rest)


def _sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, also of SQLAlchemy's URI form
    ``sqlite:///file:PATH?mode=ro&uri=true`` (a read-only connection); None when in memory."""
    if not url.startswith("sqlite") or "://" not in url or is_memory(url):
        return None
    rest = url.split("://", 1)[1]
    if not rest.startswith("/"):
        return None
    rest, _, query = rest[1:].partition("?")
    if rest.startswith("file:") and "uri=true" in query.split("&"):
        rest = rest[len("file:") :]
        if rest.startswith("///"):  # file:///abs/path
            rest = rest[2:]
    if rest in ("", ":memory:"):
        return None
    return Path(rest)


def _driver_url(url: str) -> str:
    """SQLAlchemy 2.1 maps plain ``postgresql://`` to psycopg 3; we ship psycopg2, so a plain URL
    gets the psycopg2 driver unless psycopg 3 is installed (an explicit ``+driver`` is kept)."""
    import importlib.util

    for prefix in ("postgresql://", "postgres://"):
        if (
            url.startswith(prefix)
            and importlib.util.find_spec("psycopg") is None
            and importlib.util.find_spec("psycopg2") is not None
        ):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def _check_not_foreign(url: str, engine_kwargs: dict[str, Any], sqlite_path: Path | None) -> None:
    """Refuse a database that already holds tables but not Optuna's (another application's):
    RDBStorage would add its 13 tables to it on open. Checked on a separate engine before
    RDBStorage exists; a missing SQLite file and an empty database are fine (they become ours)."""
    import sqlalchemy

    if url.startswith("sqlite") and (sqlite_path is None or not sqlite_path.exists()):
        return  # a new file (RDBStorage creates it) or in memory: nothing to protect
    # an Optuna database has `studies` (with these columns) and `version_info`; other tables beside
    # them (a database shared with another application) are left alone
    engine = sqlalchemy.create_engine(_driver_url(url), **engine_kwargs)
    try:
        insp = sqlalchemy.inspect(engine)
        tables = set(insp.get_table_names())
        if not tables:
            return
        ours = {"studies", "version_info"} <= tables
        if ours:
            columns = {c["name"] for c in insp.get_columns("studies")}
            ours = {"study_id", "study_name"} <= columns
        if not ours:
            names = sorted(tables)
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            raise StorageError(
                f"storage {redact(url)!r}: not an Optuna/acpsearch database (has tables {shown}); "
                "refusing to add tables"
            )
    finally:
        engine.dispose()


def open_storage(url: str | None = None) -> BaseStorage:
    """Open (and cache per process) an Optuna storage; any failure is a StorageError (exit 2).

    SQLite gets ``timeout=60`` so a second process waits for the lock instead of failing with
    "database is locked" (we saw it with 24 concurrent writers)."""
    import optuna

    url = resolve_url(url)
    if url in _CACHE:
        return _CACHE[url]
    try:
        if url.startswith(JOURNAL_PREFIX):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = _journal_path(url)
            if not path.parent.is_dir():
                raise StorageError(f"storage {redact(url)!r}: directory {str(path.parent)!r} does not exist")
            storage: BaseStorage = JournalStorage(JournalFileBackend(str(path)))
        else:
            engine_kwargs: dict[str, Any] = {}
            sqlite_path = _sqlite_path(url)
            if url.startswith("sqlite"):
                engine_kwargs["connect_args"] = {"timeout": 60}
                if sqlite_path is not None and not sqlite_path.parent.is_dir():
                    raise StorageError(f"storage {redact(url)!r}: directory {str(sqlite_path.parent)!r} does not exist")
                if sqlite_path is not None and sqlite_path.exists() and sqlite_path.is_dir():
                    raise StorageError(f"storage {redact(url)!r}: {str(sqlite_path)!r} is a directory")
            else:
                engine_kwargs["pool_pre_ping"] = True
                if url.startswith(("postgresql", "mysql")):
                    engine_kwargs["connect_args"] = {"connect_timeout": 10}
            _check_not_foreign(url, engine_kwargs, sqlite_path)
            storage = optuna.storages.RDBStorage(_driver_url(url), engine_kwargs=engine_kwargs)
            storage.get_all_studies()  # touch the database now: a bad URL fails here, not mid-study
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors of many kinds mean "cannot open"
        first = _redact_text((str(exc).strip().splitlines() or [type(exc).__name__])[0], url)
        raise StorageError(f"storage {redact(url)!r}: cannot open ({type(exc).__name__}: {first[:200]})") from None
    _CACHE[url] = storage
    return storage


def url_of(storage: object) -> str:
    """The URL `storage` was opened with by open_storage (for messages), or a placeholder."""
    for url, obj in _CACHE.items():
        if obj is storage:
            return url
    return str(getattr(storage, "url", None) or "?")


def _write_failure(exc: BaseException) -> str | None:
    """What a failed storage write means for the user, or None when `exc` is not a storage failure
    (then it is an internal error and stays one)."""
    import optuna
    import sqlalchemy.exc

    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(c) for c in chain).lower()
    if "readonly database" in text or "read-only" in text or "read only" in text:
        return (
            "read-only (attempt to write a readonly database); `status` and `show` can read it, "
            "writing needs a writable copy"
        )
    if not any(
        isinstance(
            c,
            (
                optuna.exceptions.StorageInternalError,
                sqlalchemy.exc.OperationalError,
                sqlalchemy.exc.DatabaseError,
                OSError,
            ),
        )
        for c in chain
    ):
        return None
    root = next((c for c in reversed(chain) if isinstance(c, (sqlalchemy.exc.DBAPIError, OSError))), exc)
    first = (str(getattr(root, "orig", None) or root).strip().splitlines() or [type(root).__name__])[0]
    return f"cannot write ({type(root).__name__}: {first[:200]})"


@contextmanager
def writes(url: str) -> Iterator[None]:
    """The write boundary of a command: a storage that refuses the write (read-only file, disk
    full, file-size limit, lost server) is one line naming the storage (a StorageError, exit 2)."""
    try:
        yield
    except AcpError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below; anything else is re-raised as itself
        msg = _write_failure(exc)
        if msg is None:
            raise
        raise StorageError(f"storage {redact(url)!r}: {_redact_text(msg, url)}") from None


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


def artifact_store(directory: Path) -> FileSystemArtifactStore:
    """optuna's FileSystemArtifactStore over `directory` (what optuna-dashboard serves)."""
    from optuna.artifacts import FileSystemArtifactStore

    directory.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(directory))
