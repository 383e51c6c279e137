"""The stop button: suspending a model version, or a whole model, so it answers nothing until resumed.

::

    model_suspensions                       (the current state, in the audit database)
    name │ version ("*": every version) │ reason │ by │ since │ record_id

A suspension is a row here and a record in the audit chain, ``{"kind": "suspension", "action":
"suspend" | "resume", "name", "version" (null: the whole model), "reason", "by"}``, so who stopped a model
and why is as tamper-evident as what it explained. While a model or version is suspended, ``:predict``
and ``:explain`` answer 503 ``model_suspended`` with the reason (:class:`~explain_service.errors.ModelSuspended`).
A version is served only when neither it nor its whole model is suspended; resuming the whole model
leaves a version's own suspension in place (and the other way round).

Safe side first, as for revoked keys: a suspension is stored before its record is written and stands
even if the record cannot be written (the caller is told); a resumption is recorded first and the
model stays suspended if its record cannot be written.

Every worker and host reads the state through :meth:`Suspensions.active`, cached per process for at
most :data:`CACHE_SECONDS` (one query per model name per second per worker), so a suspension is obeyed
everywhere within that time plus one round trip.

Public interface (stable; the reviewer pages build on it)::

    suspensions = Suspensions(store)             # app.extensions["explain"].suspensions in the app
    suspensions.active(name, version) -> Suspension | None   # cached <= 1 s; what the request path asks
    suspensions.of_model(name) -> list[Suspension]           # read now; the whole model's first
    suspensions.suspend(name, version | None, reason, by=) -> Suspension   # SuspensionConflict if already
    suspensions.resume(name, version | None, by=, reason="") -> Suspension  # SuspensionConflict if not
    Suspension(name, version, reason, by, since, record_id).scope -> "model" | "version"
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Engine, MetaData, String, Table, Text, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from explain_service.audit.backends import create_tables, postgresql_engine, sqlite_engine
from explain_service.audit.chain import AuditEntry, utc_text
from explain_service.audit.errors import AuditUnavailableError, AuditWriteError, driver_reason
from explain_service.audit.store import AuditStore

CACHE_SECONDS = 1.0
WHOLE_MODEL = "*"
MAX_REASON = 500

metadata = MetaData()
suspensions = Table(
    "model_suspensions",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("version", String(32), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("by", String, nullable=True),
    Column("since", String(32), nullable=False),
    Column("record_id", String(64), nullable=True),
)


class SuspensionError(Exception):
    """A suspension or resumption cannot be done as asked; the subclass says why.

    ::

        SuspensionError
         ├── BadSuspensionReason     no reason, or a reason too long          (HTTP 422, field "reason")
         ├── SuspensionConflict      already suspended / not suspended         (HTTP 409)
         └── SuspensionNotRecorded   the audit record could not be written     (HTTP 503)
    """


class BadSuspensionReason(SuspensionError):
    """The reason is missing, blank or longer than :data:`MAX_REASON`."""


class SuspensionConflict(SuspensionError):
    """The model or version is already in the state asked for (already suspended, or not suspended)."""


class SuspensionNotRecorded(SuspensionError):
    """The audit record could not be written: a suspension stands anyway, a resumption did not happen."""


@dataclass(frozen=True)
class Suspension:
    """One suspension in force: a version's own, or its whole model's (``version`` None)."""

    name: str
    version: str | None
    reason: str
    by: str | None
    since: str
    record_id: str | None = None

    @property
    def scope(self) -> str:
        return "model" if self.version is None else "version"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "version": self.version,
            "scope": self.scope,
            "reason": self.reason,
            "by": self.by,
            "since": self.since,
            "record_id": self.record_id,
        }


class Suspensions:
    """Model suspensions in the audit database, with a short per-process cache for the request path."""

    def __init__(self, store: AuditStore, *, timeout: float = 10.0) -> None:
        self.store = store
        if store.backend == "sqlite":
            self._engine: Engine = sqlite_engine(store.url, timeout, "full")
        else:
            self._engine = postgresql_engine(store.url, timeout)
        self._pid = os.getpid()
        self._ready = False
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, Suspension]]] = {}

    def close(self) -> None:
        self._engine.dispose()

    # -- the request path ----------------------------------------------------------------------------
    def active(self, name: str, version: str) -> Suspension | None:
        """The suspension that stops ``name`` at ``version`` (the whole model's first), or None."""
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is None or now - cached[0] >= CACHE_SECONDS:
            cached = (now, self._read(name))
            self._cache[name] = cached
        rows = cached[1]
        return rows.get(WHOLE_MODEL) or rows.get(version)

    def of_model(self, name: str) -> list[Suspension]:
        """Every suspension of ``name`` in force, read now (no cache): the whole model's first."""
        rows = self._read(name)
        return sorted(rows.values(), key=lambda s: (s.version is not None, s.version or ""))

    # -- administration ------------------------------------------------------------------------------
    def suspend(self, name: str, version: str | None, reason: str, *, by: str | None) -> Suspension:
        """Suspend ``name`` (every version when ``version`` is None); refused if it is already suspended."""
        reason = (reason or "").strip()
        if not reason:
            raise BadSuspensionReason("a suspension needs a reason")
        if len(reason) > MAX_REASON:
            raise BadSuspensionReason(f"a reason is at most {MAX_REASON} characters")
        key = version or WHOLE_MODEL
        since = utc_text(datetime.now(UTC))
        try:
            with _unavailable(), self._ready_engine().begin() as conn:
                conn.execute(
                    insert(suspensions).values(name=name, version=key, reason=reason, by=by, since=since)
                )
        except IntegrityError:
            raise SuspensionConflict(f"{_what(name, version)} is already suspended") from None
        self._cache.pop(name, None)
        # The suspension stands even if its record cannot be written: stopping is the safe side.
        record_id = self._record("suspend", name, version, reason, by)
        with _unavailable(), self._ready_engine().begin() as conn:
            conn.execute(
                update(suspensions)
                .where(suspensions.c.name == name, suspensions.c.version == key)
                .values(record_id=record_id)
            )
        return Suspension(name, version, reason, by, since, record_id)

    def resume(self, name: str, version: str | None, *, by: str | None, reason: str = "") -> Suspension:
        """Lift the suspension of ``name`` (its whole-model one when ``version`` is None); return it."""
        key = version or WHOLE_MODEL
        with _unavailable(), self._ready_engine().connect() as conn:
            row = conn.execute(
                select(suspensions).where(suspensions.c.name == name, suspensions.c.version == key)
            ).first()
        if row is None:
            raise SuspensionConflict(f"{_what(name, version)} is not suspended")
        self._record("resume", name, version, reason.strip(), by)  # recorded first: no record, no resumption
        with _unavailable(), self._ready_engine().begin() as conn:
            conn.execute(delete(suspensions).where(suspensions.c.name == name, suspensions.c.version == key))
        self._cache.pop(name, None)
        return _suspension(row)

    # -- internals -----------------------------------------------------------------------------------
    def _read(self, name: str) -> dict[str, Suspension]:
        """The suspensions of ``name``; an unreadable database is an :class:`AuditUnavailableError` (503):
        a model whose state cannot be read is not served, as a key that cannot be checked is refused."""
        with _unavailable(), self._ready_engine().connect() as conn:
            rows = conn.execute(select(suspensions).where(suspensions.c.name == name)).all()
        return {row.version: _suspension(row) for row in rows}

    def _record(self, action: str, name: str, version: str | None, reason: str, by: str | None) -> str:
        body = {
            "kind": "suspension",
            "action": action,
            "name": name,
            "version": version,
            "reason": reason,
            "by": by,
        }
        entry = AuditEntry(
            body=body, model_name=name, model_version=version or WHOLE_MODEL, model_sha256="-", caller=by
        )
        try:
            return self.store.append([entry])[0].id
        except AuditWriteError as exc:
            raise SuspensionNotRecorded(
                f"the audit record of the {action} could not be written: {exc.reason}"
                + ("; the suspension stands" if action == "suspend" else "; the model stays suspended")
            ) from None

    def _ready_engine(self) -> Engine:
        if os.getpid() != self._pid:  # a forked worker must not share the parent's connections or cache
            self._engine.dispose(close=False)
            self._pid = os.getpid()
            self._cache.clear()
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self.store.head()  # the audit store makes its directory and schema first, or refuses
                    create_tables(self._engine, metadata)
                    self._ready = True
        return self._engine


@contextmanager
def _unavailable() -> Iterator[None]:
    """A database error as :class:`AuditUnavailableError` (a 503 that never names the database); a
    constraint violation passes through for the caller to explain."""
    try:
        yield
    except IntegrityError:
        raise
    except SQLAlchemyError as exc:
        reason, detail = driver_reason(exc)
        raise AuditUnavailableError(reason, detail=detail) from exc


def _what(name: str, version: str | None) -> str:
    return f"model {name!r}" if version is None else f"model {name!r} version {version!r}"


def _suspension(row: Any) -> Suspension:
    version = None if row.version == WHOLE_MODEL else row.version
    return Suspension(row.name, version, row.reason, row.by, row.since, row.record_id)
