"""The lease: which runner works on a study, as a study user attribute ``lease = {holder, expires}``.

One runner at a time writes to a study; a runner renews its lease from a background thread, and
a runner that died stops renewing, so its lease expires and another runner may take over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from acpsearch.service import keys
from acpsearch.service.optuna_adapter import STUDY_USER_ATTR_TABLE

LEASE_TTL_S = 60.0


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
        return dict(self.storage.get_study_user_attrs(self.study_id))

    def _value(self) -> dict[str, Any]:
        return {"holder": self.holder, "expires": time.time() + self.ttl}

    def _read_raw(self) -> str | None:
        from sqlalchemy import text

        with self._engine().connect() as conn:
            row = conn.execute(
                text(f"SELECT value_json FROM {STUDY_USER_ATTR_TABLE} WHERE study_id = :s AND key = :k"),
                {"s": self.study_id, "k": keys.LEASE},
            ).first()
        return None if row is None else str(row[0])

    def _swap(self, old: str | None, new: dict[str, Any]) -> bool:
        """Atomically replace the lease row `old` (None: no row yet) by `new`; True if we won."""
        from sqlalchemy import text
        from sqlalchemy.exc import IntegrityError

        raw = json.dumps(new)
        if old is None:
            try:
                with self._engine().begin() as conn:
                    conn.execute(
                        text(f"INSERT INTO {STUDY_USER_ATTR_TABLE} (study_id, key, value_json) VALUES (:s, :k, :v)"),
                        {"s": self.study_id, "k": keys.LEASE, "v": raw},
                    )
            except IntegrityError:  # someone else created the row first
                return False
        else:
            with self._engine().begin() as conn:
                n = conn.execute(
                    text(
                        f"UPDATE {STUDY_USER_ATTR_TABLE} SET value_json = :v "
                        "WHERE study_id = :s AND key = :k AND value_json = :old"
                    ),
                    {"s": self.study_id, "k": keys.LEASE, "v": raw, "old": old},
                ).rowcount
                if n != 1:
                    return False
        self._raw = raw
        return True

    def _write(self) -> None:
        self.storage.set_study_user_attr(self.study_id, keys.LEASE, self._value())

    # --- protocol ---------------------------------------------------------------------------------
    def try_acquire(self, settle_s: float = 0.3) -> bool:
        if self._engine() is not None:
            raw = self._read_raw()
            if not _lease_free(json.loads(raw) if raw else None, self.holder, time.time()):
                return False
            if not self._swap(raw, self._value()):
                return False
        else:
            if not _lease_free(self._attrs().get(keys.LEASE), self.holder, time.time()):
                return False
            self._write()
            time.sleep(settle_s)
            lease = self._attrs().get(keys.LEASE)
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
            lease = self._attrs().get(keys.LEASE)
            if isinstance(lease, dict) and lease.get("holder") == self.holder:
                self._write()
                return True
        lease = self._attrs().get(keys.LEASE)
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
                lease = self._attrs().get(keys.LEASE)
                if isinstance(lease, dict) and lease.get("holder") == self.holder:
                    self.storage.set_study_user_attr(self.study_id, keys.LEASE, free)
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
    lease = attrs.get(keys.LEASE)
    now = time.time() if now is None else now
    if (
        isinstance(lease, dict)
        and lease.get("holder")
        and float(lease.get("expires", 0)) >= now
        and not _holder_dead(lease["holder"])
    ):
        return f"held by {lease['holder']} (lease expires in {max(0.0, float(lease['expires']) - now):.0f} s)"
    return "free"
