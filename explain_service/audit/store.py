"""The audit store: an append-only, hash-chained table of explanation records.

:class:`AuditStore` keeps the records in SQLite or PostgreSQL and is the public API: append a batch,
read records back, count, page, verify the chain, export it. The pieces live next door::

    store.py      AuditStore, its errors, the checks an entry passes before it is sealed
    schema.py     the tables, the append-only triggers, PostgreSQL's audit_append(), the schema version
    backends.py   the SQLite and PostgreSQL engines, write connections, durability, the append SQL
    chain.py      how a record is hashed onto the one before it, and how the chain is checked
    jsonl.py      the JSON Lines export (:meth:`AuditStore.export`) and its check

Each ``hash`` seals the record onto the one before it: ``sha256(prev_hash + canonical_json(envelope))``.
A batch is sealed and inserted in one transaction under the chain lock, so its records get consecutive
``seq`` in the order given, and either all of it is stored or none (how each database does it:
:mod:`.backends`). Reads go through SQLAlchemy Core and create the schema on first use.

Any failure to append raises :class:`AuditWriteError` and stores nothing of the batch; the caller must not
answer without its record. (A commit whose acknowledgement is lost may still be stored: a record without
an answer, never an answer without a record. On PostgreSQL an append whose pooled connection turns out
to be dead is sent once more on a new one; the batch's ids are fixed, so it cannot be stored twice.)

Errors, each with the HTTP ``status`` an API answers with::

    AuditError (500)
    ├── AuditUnavailableError (503)   the database cannot be reached or read
    ├── AuditWriteError (503)         an append failed; nothing of it was stored
    └── RecordNotFound (404)          no record has that id
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import orjson
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from explain_service.audit.backends import (
    PG_APPEND,
    Durability,
    append_sqlite,
    chain_locked,
    postgresql_engine,
    postgresql_entries,
    postgresql_sealed,
    postgresql_writer,
    sqlite_engine,
)
from explain_service.audit.chain import (
    AuditEntry,
    RawRecord,
    StoredRecord,
    VerifyReport,
    canonical_json,
    new_record_id,
    walk_chain,
)
from explain_service.audit.jsonl import write_export
from explain_service.audit.schema import (
    CHAIN_LOCK_KEY,
    COLUMNS,
    PG_APPEND_FUNCTION,
    SCHEMA_VERSION,
    create_schema,
    has_append_function,
    metadata,
    raw_record,
    read_head,
    read_schema_version,
    record_filters,
    records,
    schema_version,
)

__all__ = [
    "CHAIN_LOCK_KEY",
    "SCHEMA_VERSION",
    "AuditEntry",
    "AuditError",
    "AuditStore",
    "AuditUnavailableError",
    "AuditWriteError",
    "Durability",
    "RecordNotFound",
    "StoredRecord",
    "VerifyReport",
    "metadata",
    "records",
    "schema_version",
]

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_PAGE = 1000
_STREAM_BATCH = 500


class AuditError(Exception):
    """Root of the audit store's errors; ``status`` is the HTTP status an API answers with."""

    status: ClassVar[int] = 500


class AuditUnavailableError(AuditError):
    """The database cannot be reached or read."""

    status = 503

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the audit store is unavailable: {reason}")


class AuditWriteError(AuditError):
    """An append failed; nothing of the batch was stored."""

    status = 503

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the audit record could not be written: {reason}")


class RecordNotFound(AuditError):
    """No record has the id asked for."""

    status = 404

    def __init__(self, record_id: str) -> None:
        self.record_id = record_id
        super().__init__(f"no audit record with id {record_id!r}")


class AuditStore:
    """The audit trail in a SQLite file or a PostgreSQL database.

    Parameters
    ----------
    url
        SQLAlchemy URL: ``sqlite:///var/audit.sqlite3`` (its directory is created) or
        ``postgresql+psycopg://user@host/db``. The schema is created on first use.
    timeout
        Seconds to wait for the chain lock, and to connect to PostgreSQL unless the URL says otherwise.
    durability
        ``"full"`` (default): every record is on stable storage when :meth:`append` returns. ``"os"``:
        a power cut may lose the newest records, for a cheaper commit (see :mod:`.backends`).
    """

    def __init__(self, url: str, *, timeout: float = 10.0, durability: Durability = "full") -> None:
        if durability not in ("full", "os"):
            raise ValueError(f"durability must be 'full' or 'os', not {durability!r}")
        self.url = make_url(url)
        self.backend = self.url.get_backend_name()
        self.durability = durability
        self._timeout = timeout
        if self.backend == "sqlite":
            if self.url.database in (None, "", ":memory:") or self.url.query.get("mode") == "memory":
                raise ValueError("the audit store needs a SQLite file, not an in-memory database")
            self._engine = sqlite_engine(self.url, timeout, durability)
            self._writer = self._engine
        elif self.backend == "postgresql":
            if self.url.get_driver_name() != "psycopg":
                raise ValueError(
                    "the audit store reaches PostgreSQL through psycopg 3 (postgresql+psycopg://)"
                )
            self._engine = postgresql_engine(self.url, timeout)
            self._writer = postgresql_writer(self.url, timeout, durability)
        else:
            raise ValueError(f"the audit store supports sqlite and postgresql, not {self.backend!r}")
        self._dbapi_error: type[Exception] = self._engine.dialect.loaded_dbapi.Error
        self._pid = os.getpid()
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._append_function_ready = self.backend != "postgresql"

    def __repr__(self) -> str:
        return f"AuditStore({self.url.render_as_string(hide_password=True)!r})"

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections; the store reconnects if used again."""
        self._engine.dispose()
        if self._writer is not self._engine:
            self._writer.dispose()

    def append(self, entries: Sequence[AuditEntry]) -> list[StoredRecord]:
        """Append ``entries`` in order, atomically; return them as stored.

        Raises
        ------
        AuditWriteError
            The batch could not be stored (database unreachable or read-only, lock wait timed out, an id
            already taken...). Nothing of it was stored.
        TypeError, ValueError
            An entry is malformed (a body that is not a JSON-ready dict, a bad or repeated id).
        AuditError
            PostgreSQL stored a record whose hash :mod:`.chain` does not confirm (a defect, never expected).
        """
        prepared = [_prepare(entry) for entry in entries]
        ids = [raw.id for raw in prepared]
        if len(set(ids)) != len(ids):
            raise ValueError("record ids repeat within the batch")
        if not prepared:
            return []
        try:
            self._ensure_schema()
            if self.backend == "sqlite":
                sealed = append_sqlite(self._checkout(self._engine), prepared)
            else:
                sealed = self._append_postgresql(prepared)
        except AuditUnavailableError as exc:
            raise AuditWriteError(exc.reason) from exc
        except (SQLAlchemyError, self._dbapi_error) as exc:
            raise AuditWriteError(_reason(exc)) from exc
        return [StoredRecord.from_raw(raw) for raw in sealed]

    def get(self, record_id: str) -> StoredRecord | None:
        """The record with ``record_id``, or None."""
        with self._reading() as conn:
            row = conn.execute(select(*COLUMNS).where(records.c.id == record_id)).first()
        return None if row is None else StoredRecord.from_raw(raw_record(row))

    def require(self, record_id: str) -> StoredRecord:
        """The record with ``record_id``; raises :class:`RecordNotFound` if there is none."""
        record = self.get(record_id)
        if record is None:
            raise RecordNotFound(record_id)
        return record

    def count(
        self, *, model_name: str | None = None, since: datetime | None = None, until: datetime | None = None
    ) -> int:
        """How many records match (all of them by default); filters as in :meth:`list_records`."""
        query = select(func.count()).select_from(records).where(*record_filters(model_name, since, until))
        with self._reading() as conn:
            return int(conn.execute(query).scalar_one())

    def list_records(
        self,
        *,
        model_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
        before_seq: int | None = None,
    ) -> list[StoredRecord]:
        """Records newest first.

        ``since`` (inclusive) and ``until`` (exclusive) are aware datetimes compared with ``created_at``.
        Page with ``offset``, or with ``before_seq`` set to the last ``seq`` of the previous page, which
        stays cheap however deep the page and does not shift when records are appended meanwhile.
        """
        if not 1 <= limit <= _MAX_PAGE or offset < 0:
            raise ValueError(f"limit must be 1..{_MAX_PAGE} and offset >= 0")
        clauses = record_filters(model_name, since, until)
        if before_seq is not None:
            clauses.append(records.c.seq < before_seq)
        query = select(*COLUMNS).where(*clauses).order_by(records.c.seq.desc()).limit(limit).offset(offset)
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return [StoredRecord.from_raw(raw_record(row)) for row in rows]

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest record; ``(0, GENESIS_HASH)`` when empty. Cheap: keep it elsewhere."""
        with self._reading() as conn:
            return read_head(conn)

    def verify(self, *, expected_head: str | None = None) -> VerifyReport:
        """Recompute every hash in ``seq`` order, streaming, and report the first break.

        Deleting the newest records leaves a valid shorter chain; pass a head hash kept elsewhere (an
        export's trailer, an earlier :meth:`head`) as ``expected_head`` to detect that.
        """
        query = select(*COLUMNS).order_by(records.c.seq).execution_options(yield_per=_STREAM_BATCH)
        with self._reading() as conn:

            def locate(wanted: str) -> tuple[int, str] | None:
                where = records.c.hash == wanted
                found = conn.execute(select(records.c.seq, records.c.id).where(where).limit(1)).first()
                return None if found is None else (int(found.seq), str(found.id))

            result = conn.execute(query)
            try:
                return walk_chain(
                    (raw_record(row) for row in result), locate=locate, expected_head=expected_head
                )
            finally:
                result.close()

    def export(self, out: BinaryIO) -> str:
        """Write every record as JSON Lines, then a trailer (format in :mod:`.jsonl`); return the head hash.

        The export copies; it does not check. Run :meth:`verify`, or :func:`.jsonl.verify_export` on the file.
        """
        query = select(*COLUMNS).order_by(records.c.seq).execution_options(yield_per=_STREAM_BATCH)
        with self._reading() as conn:
            result = conn.execute(query)
            try:
                return write_export((raw_record(row) for row in result), out)
            finally:
                result.close()

    def ping(self) -> bool:
        """Whether the database answers and holds the schema (creating it on first use)."""
        try:
            with self._reading() as conn:
                conn.execute(select(1))
        except AuditError:
            return False
        return True

    def _append_postgresql(self, prepared: list[RawRecord]) -> list[RawRecord]:
        self._ensure_append_function()
        rows = self._call_append(postgresql_entries(prepared), retry_lost=True)
        sealed = postgresql_sealed(prepared, rows)
        for raw in sealed:
            if raw.content_hash() != raw.hash:
                raise AuditError(
                    f"record {raw.id} was stored with a hash that does not verify: audit_append() does not "
                    "seal as chain.py does"
                )
        return sealed

    def _call_append(self, entries: list[list[str | None]], *, retry_lost: bool) -> list[Any]:
        """Run audit_append() once; once more on a new connection if the pooled one turns out dead."""
        conn = self._checkout(self._writer)
        driver: Any = conn.driver_connection
        try:
            # Autocommit: the statement is the transaction; when it returns, the batch is committed.
            return driver.execute(PG_APPEND, [entries]).fetchall()
        except self._dbapi_error:
            if not (driver.closed or driver.broken):
                raise
            conn.invalidate()
            if not retry_lost:
                raise
        except BaseException:
            conn.invalidate()  # interrupted mid-call: its state is unknown
            raise
        finally:
            conn.close()
        # The server dropped a pooled connection (restart, idle timeout): the others are likely gone too.
        self._writer.dispose()
        return self._call_append(entries, retry_lost=False)

    def _connect(self) -> Connection:
        self._after_fork()
        return self._engine.connect()

    def _checkout(self, engine: Engine) -> PoolProxiedConnection:
        self._after_fork()
        return engine.raw_connection()

    def _after_fork(self) -> None:
        if os.getpid() != self._pid:
            # A forked worker must not share the parent's pooled connections; drop them without closing.
            self._engine.dispose(close=False)
            if self._writer is not self._engine:
                self._writer.dispose(close=False)
            self._pid = os.getpid()

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        try:
            self._ensure_schema()
            with self._connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise AuditUnavailableError(_reason(exc)) from exc

    @contextmanager
    def _chain_locked(self) -> Iterator[Connection]:
        """A transaction that alone may append to the chain until it ends."""
        with self._connect() as conn, chain_locked(conn, self.backend, self._timeout):
            yield conn

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            try:
                self._make_directory()
                with self._connect() as conn:
                    version = read_schema_version(conn)
                if version is None:
                    with self._chain_locked() as conn:
                        version = create_schema(conn)
            except SQLAlchemyError as exc:
                raise AuditUnavailableError(_reason(exc)) from exc
            if version > SCHEMA_VERSION:
                raise AuditUnavailableError(f"schema version {version} is newer than {SCHEMA_VERSION}")
            self._schema_ready = True

    def _ensure_append_function(self) -> None:
        """Add audit_append() to a PostgreSQL schema created before it existed (new ones get it at once)."""
        if self._append_function_ready:
            return
        with self._schema_lock:
            if self._append_function_ready:
                return
            with self._connect() as conn:
                present = has_append_function(conn)
            if not present:
                with self._chain_locked() as conn:
                    if not has_append_function(conn):
                        conn.exec_driver_sql(PG_APPEND_FUNCTION)
            self._append_function_ready = True

    def _make_directory(self) -> None:
        if self.backend != "sqlite" or not self.url.database:
            return
        path = self.url.database.removeprefix("file:") if self.url.query.get("uri") else self.url.database
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditUnavailableError(f"cannot create the directory for {path}: {exc}") from exc


def _prepare(entry: AuditEntry) -> RawRecord:
    """Check an entry and turn it into an unsealed record (no seq, time or hashes yet)."""
    if not isinstance(entry.body, Mapping):
        raise TypeError(f"an audit body must be a dict, not {type(entry.body).__name__}")
    for name in ("model_name", "model_version", "model_sha256"):
        if not isinstance(getattr(entry, name), str) or not getattr(entry, name):
            raise ValueError(f"{name} must be a non-empty string")
    if entry.caller is not None and not isinstance(entry.caller, str):
        raise TypeError(f"caller must be a string or None, not {type(entry.caller).__name__}")
    if entry.id is not None and not (isinstance(entry.id, str) and _ID_PATTERN.fullmatch(entry.id)):
        raise ValueError(f"invalid record id {entry.id!r}")
    # A record is hashed as its body parses back, so the stored text is that of the parsed body. The two
    # differ for numpy float32 values, which orjson writes in another form than the float they parse to.
    body = canonical_json(orjson.loads(canonical_json(dict(entry.body))))
    return RawRecord(
        seq=0,
        id=entry.id or new_record_id(),
        created_at="",
        model_name=entry.model_name,
        model_version=entry.model_version,
        model_sha256=entry.model_sha256,
        caller=entry.caller,
        body=body.decode(),
        prev_hash="",
        hash="",
    )


def _reason(exc: Exception) -> str:
    """The driver's message, first line only: enough to act on, without SQL or bound values."""
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]
