"""The audit store's errors, and what of a database's message may leave the service.

Each error knows the HTTP ``status`` an API answers with::

    AuditError (500)
    ├── AuditUnavailableError (503)   the database cannot be reached or read
    ├── AuditWriteError (503)         an append failed; nothing of it was stored
    ├── RecordTooLarge (413)          a record would exceed the size a record may hold
    └── RecordNotFound (404)          no record has that id

``str(error)`` and ``reason`` are safe to show a client: they never name the database's host, port,
name, user or file path. What the driver said in full is ``detail``, for logs and the command line.
PostgreSQL's messages name the server they failed to reach, so they are reduced to a phrase chosen by
SQLSTATE; SQLite's are fixed texts ("attempt to write a readonly database") and pass unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AuditError(Exception):
    """Root of the audit store's errors; ``status`` is the HTTP status an API answers with."""

    status: ClassVar[int] = 500
    detail: str = ""


class AuditUnavailableError(AuditError):
    """The database cannot be reached or read."""

    status = 503

    def __init__(self, reason: str, *, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"the audit store is unavailable: {reason}")


class AuditWriteError(AuditError):
    """An append failed; nothing of the batch was stored."""

    status = 503

    def __init__(self, reason: str, *, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"the audit record could not be written: {reason}")


class RecordTooLarge(AuditError):
    """Entry ``index`` of a batch would be a record of ``size`` bytes, over ``limit``; nothing was stored."""

    status = 413

    def __init__(self, index: int, size: int, limit: int) -> None:
        self.index, self.size, self.limit = index, size, limit
        super().__init__(f"audit record {index} would hold {size} bytes; a record holds at most {limit}")


class RecordNotFound(AuditError):
    """No record has the id asked for."""

    status = 404

    def __init__(self, record_id: str) -> None:
        self.record_id = record_id
        super().__init__(f"no audit record with id {record_id!r}")


# SQLSTATE (or its two-character class) -> what a client may read.
_POSTGRESQL_REASONS = {
    "55P03": "timed out waiting for the chain lock",
    "57014": "the statement was cancelled (timeout)",
    "25006": "the database is read-only",
    "42501": "the service's database role lacks a privilege",
    "23505": "a unique constraint refused the record (an id already taken?)",
    "53100": "the database server's disk is full",
    "08": "the database server cannot be reached",
    "28": "the database refused the service's credentials",
    "3D": "the database does not exist",
    "53": "the database server is out of resources",
    "57": "the database server is shutting down or restarting",
    "42": "the database schema does not match this version of the service",
}


def driver_reason(exc: BaseException) -> tuple[str, str]:
    """``(reason, detail)`` of a driver or SQLAlchemy error: a client-safe phrase and the full first line."""
    cause: Any = getattr(exc, "orig", None) or exc
    detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    module = type(cause).__module__
    if module.startswith("sqlite3"):
        return detail, detail
    if module.startswith("psycopg"):
        state = getattr(cause, "sqlstate", None)
        if state is None:  # no answer from a server: refused, unreachable, timed out
            return _POSTGRESQL_REASONS["08"], detail
        reason = _POSTGRESQL_REASONS.get(state) or _POSTGRESQL_REASONS.get(state[:2])
        return reason or f"the database refused the operation (SQLSTATE {state})", detail
    return f"the database driver failed ({type(cause).__name__})", detail
