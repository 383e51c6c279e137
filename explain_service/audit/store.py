"""The audit store: an append-only, hash-chained table of explanation records.

:class:`AuditStore` keeps the records in SQLite or PostgreSQL and is the public API: append a batch,
read records back, count, page, verify the chain, export it. The pieces live next door::

    store.py        AuditStore, the checks an entry passes before it is sealed
    errors.py       its errors, and what of a database's message a client may read
    schema.py       the tables, the append-only triggers, PostgreSQL's audit_append(), the schema version
    backends.py     the SQLite and PostgreSQL engines, write connections, durability, the append SQL
    group.py        group commit: concurrent appends of one process share one transaction and flush
    turn.py         the turns the appending processes of one host take (a lock file)
    sqlite_file.py  whether the SQLite file being written is still the one at the database's path
    chain.py        how a record is hashed onto the one before it, and how the chain is checked
    jsonl.py        the JSON Lines export (:meth:`AuditStore.export`) and its check

Each ``hash`` seals the record onto the one before it: ``sha256(prev_hash + canonical_json(envelope))``.
A batch is sealed and inserted in one transaction under the chain lock, so its records get consecutive
``seq`` in the order given, and either all of it is stored or none (how each database does it:
:mod:`.backends`). Batches appended at the same time by threads of one process share that transaction
and its durable flush (:mod:`.group`); each still gets consecutive ``seq``, and each caller returns only
once the flush holding its records is done. Reads go through SQLAlchemy Core and create the schema on first use, with the chain's
genesis, unless the store was opened with ``create=False`` (the read-only commands), which never
creates a file, a directory or a table, and reads an older schema as it is.

Any failure to append raises :class:`AuditWriteError` and stores nothing of the batch; the caller must not
answer without its record. (A commit whose acknowledgement is lost may still be stored: a record without
an answer, never an answer without a record. On PostgreSQL an append whose pooled connection turns out
to be dead is sent once more on a new one; the batch's ids are fixed, so it cannot be stored twice.)

A record's body may hold at most ``max_record_bytes`` of canonical JSON (256 KiB by default); a batch
with a larger one is refused whole (:class:`RecordTooLarge`) before anything is written.

On SQLite the store also refuses to append once the database file has been removed or replaced under it
(see :mod:`.sqlite_file`), and :meth:`AuditStore.check_writable` proves cheaply that a write would be
accepted now, for a readiness probe. The errors are drawn in :mod:`.errors`; their messages never name
the database's host, port, name or path (that goes to the log).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from explain_service.audit.backends import (
    PG_APPEND,
    PG_WRITABLE,
    Durability,
    append_sqlite,
    chain_locked,
    postgresql_engine,
    postgresql_entries,
    postgresql_not_writable,
    postgresql_sealed,
    postgresql_writer,
    sqlite_engine,
    sqlite_not_writable,
)
from explain_service.audit.chain import (
    GENESIS_HASH,
    AuditEntry,
    Genesis,
    RawRecord,
    StoredRecord,
    VerifyReport,
    canonical_json,
    new_record_id,
    walk_chain,
)
from explain_service.audit.errors import (
    AuditError,
    AuditUnavailableError,
    AuditWriteError,
    RecordNotFound,
    RecordTooLarge,
    driver_reason,
)
from explain_service.audit.group import GroupCommit, Observe
from explain_service.audit.jsonl import write_export
from explain_service.audit.schema import (
    CHAIN_LOCK_KEY,
    COLUMNS,
    PG_APPEND_FUNCTION,
    SCHEMA_VERSION,
    create_schema,
    has_append_function,
    metadata,
    missing_tables,
    raw_record,
    read_genesis,
    read_head,
    read_schema_version,
    record_filters,
    records,
    schema_version,
)
from explain_service.audit.sqlite_file import (
    FileIdentity,
    connection_identity,
    identity,
    sqlite_path,
    track_identity,
)
from explain_service.audit.turn import HostTurn

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
    "RecordTooLarge",
    "StoredRecord",
    "VerifyReport",
    "metadata",
    "records",
    "schema_version",
]

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_PAGE = 1000
_STREAM_BATCH = 500
MAX_RECORD_BYTES = 256 * 1024
"""What a record's body may hold, as canonical JSON, unless the store is told otherwise."""

log = logging.getLogger(__name__)


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
    create
        False opens an existing store to read it: a missing file, directory or schema is an
        :class:`AuditUnavailableError`, never created, and an older schema is not migrated.
    max_record_bytes
        The most canonical JSON a record's body may hold.
    observe
        Called after each commit with its duration in seconds, its number of records and the new
        head's seq (for metrics); concurrent appends of one process commit together (:mod:`.group`).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        durability: Durability = "full",
        create: bool = True,
        max_record_bytes: int = MAX_RECORD_BYTES,
        observe: Observe | None = None,
    ) -> None:
        if durability not in ("full", "os"):
            raise ValueError(f"durability must be 'full' or 'os', not {durability!r}")
        self.url = make_url(url)
        self.backend = self.url.get_backend_name()
        self.durability = durability
        self.create = create
        self.max_record_bytes = max_record_bytes
        self._timeout = timeout
        self._path: str | None = None
        self._identity: FileIdentity | None = None  # the file this store writes, once it has seen it
        if self.backend == "sqlite":
            if self.url.database in (None, "", ":memory:") or self.url.query.get("mode") == "memory":
                raise ValueError("the audit store needs a SQLite file, not an in-memory database")
            self._path = sqlite_path(self.url)
            if self._path is not None:  # a file there now is the one to write: never make another
                self._identity = identity(self._path)
            self._engine = sqlite_engine(self.url, timeout, durability)
            if self._path is not None:
                track_identity(self._engine, self._path)
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
        taken: type[Exception] = self._engine.dialect.loaded_dbapi.IntegrityError
        # Concurrent appends of this process share a transaction; a taken id fails only its own batch.
        # ... and the processes of this host take turns, each committing what queued while it waited.
        turn = HostTurn.for_database(self._path, self.url.render_as_string(hide_password=True))
        self._group = GroupCommit(
            self._commit, retry_alone=lambda exc: isinstance(exc, taken), observe=observe, turn=turn
        )
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
        RecordTooLarge
            An entry's body is over ``max_record_bytes``; nothing of the batch was stored.
        TypeError, ValueError
            An entry is malformed (a body that is not a JSON-ready dict, a bad or repeated id).
        AuditError
            PostgreSQL stored a record whose hash :mod:`.chain` does not confirm (a defect, never expected).
        """
        return [StoredRecord.from_raw(raw) for raw in self.append_raw(entries)]

    def append_raw(self, entries: Sequence[AuditEntry]) -> list[RawRecord]:
        """:meth:`append`, returning the records as stored text (bodies not parsed back): for callers that
        need only ids and seqs. Raises as :meth:`append` does."""
        prepared = [_prepare(entry) for entry in entries]
        for index, raw in enumerate(prepared):
            size = len(raw.body.encode())
            if size > self.max_record_bytes:
                raise RecordTooLarge(index, size, self.max_record_bytes)
        ids = [raw.id for raw in prepared]
        if len(set(ids)) != len(ids):
            raise ValueError("record ids repeat within the batch")
        if not prepared:
            return []
        try:
            self._ensure_schema()
            return self._group.submit(prepared)
        except AuditUnavailableError as exc:
            raise AuditWriteError(exc.reason, detail=exc.detail) from exc
        except (SQLAlchemyError, self._dbapi_error) as exc:
            raise self._failure(AuditWriteError, exc) from exc

    def check_writable(self) -> None:
        """Prove cheaply that an append would be accepted now; raise :class:`AuditUnavailableError` if not.

        SQLite: the file at the path is still the one written, its disk has room, and a write
        transaction on it begins and inserts (nothing, rolled back): a read-only file or directory
        fails here. PostgreSQL: on a connection appends use, the server is not a standby, the session
        is not read-only and the role may insert records and call audit_append(). One round trip each.
        """
        try:
            self._ensure_schema()
            if self.backend == "sqlite":
                conn = self._checkout(self._engine)
                try:
                    self._check_file(conn)
                    problem = sqlite_not_writable(conn, self._path)
                finally:
                    conn.close()
            else:
                self._ensure_append_function()
                problem = postgresql_not_writable(self._on_writer(PG_WRITABLE, None, retry_lost=True)[0])
        except AuditWriteError as exc:
            raise AuditUnavailableError(exc.reason, detail=exc.detail) from exc
        except (SQLAlchemyError, self._dbapi_error) as exc:
            raise self._failure(AuditUnavailableError, exc) from exc
        if problem is not None:
            raise AuditUnavailableError(problem)

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
        """``(seq, hash)`` of the newest record; ``(0, genesis hash)`` when empty. Cheap: keep it elsewhere."""
        with self._reading() as conn:
            return read_head(conn)

    def genesis(self) -> Genesis | None:
        """The chain's genesis: its id and start; None for a chain from before genesis records, read as is."""
        with self._reading() as conn:
            return self._read_genesis(conn)

    def verify(
        self, *, expected_head: str | None = None, expected_genesis: str | None = None
    ) -> VerifyReport:
        """Recompute every hash in ``seq`` order, from the genesis, streaming, and report the first break.

        Deleting the newest records leaves a valid shorter chain; pass a head hash kept elsewhere (an
        export's trailer, an earlier :meth:`head`) as ``expected_head`` to detect that. A store that
        started afresh holds a valid chain of its own; pass the chain id kept elsewhere (an export's
        trailer) as ``expected_genesis`` to detect that.
        """
        query = select(*COLUMNS).order_by(records.c.seq).execution_options(yield_per=_STREAM_BATCH)
        with self._reading() as conn:
            genesis = self._read_genesis(conn)
            chain_id, start = (None, GENESIS_HASH) if genesis is None else (genesis.chain_id, genesis.hash)
            if genesis is not None and not genesis.consistent():
                detail = "the chain's genesis was changed: its hash does not derive from its id and time"
                return VerifyReport(False, 0, 0, start, 1, None, "edited", detail, chain_id)
            if expected_genesis is not None and chain_id != expected_genesis:
                started = "before genesis records" if genesis is None else f"at {genesis.created_at}"
                detail = (
                    f"this is chain {chain_id or '(unnamed)'}, started {started}, not the expected chain "
                    f"{expected_genesis}: the store started afresh or is another store"
                )
                return VerifyReport(False, 0, 0, start, 1, None, "restarted", detail, chain_id)

            def locate(wanted: str) -> tuple[int, str] | None:
                where = records.c.hash == wanted
                found = conn.execute(select(records.c.seq, records.c.id).where(where).limit(1)).first()
                return None if found is None else (int(found.seq), str(found.id))

            result = conn.execute(query)
            try:
                report = walk_chain(
                    (raw_record(row) for row in result),
                    locate=locate,
                    expected_head=expected_head,
                    start_hash=start,
                )
            finally:
                result.close()
        return replace(report, chain_id=chain_id)

    def export(self, out: BinaryIO) -> str:
        """Write every record as JSON Lines, then a trailer (format in :mod:`.jsonl`); return the head hash.

        The export copies; it does not check. Run :meth:`verify`, or :func:`.jsonl.verify_export` on the file.
        """
        query = select(*COLUMNS).order_by(records.c.seq).execution_options(yield_per=_STREAM_BATCH)
        with self._reading() as conn:
            genesis = self._read_genesis(conn)
            result = conn.execute(query)
            try:
                return write_export((raw_record(row) for row in result), out, genesis)
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

    def _commit(self, prepared: list[RawRecord]) -> list[RawRecord]:
        """Seal and store ``prepared`` in one transaction (what :class:`.group.GroupCommit` calls)."""
        if self.backend == "sqlite":
            conn = self._checkout(self._engine)
            try:
                self._check_file(conn)
            except BaseException:
                conn.close()
                raise
            return append_sqlite(conn, prepared)
        return self._append_postgresql(prepared)

    @contextmanager
    def connection(self, *, write: bool = False) -> Iterator[Connection]:
        """A connection on the store's engine, for the tables beside the chain (the API keys).

        The same engine, fork handling and schema creation as the chain's own reads; on SQLite the
        file at the path must still be the one the store writes (else :class:`AuditWriteError`).
        ``write`` wraps the block in a transaction, committed when it ends. A database that cannot be
        reached raises :class:`AuditUnavailableError`; errors of the statements run in the block are
        the driver's, as SQLAlchemy raises them.
        """
        self._ensure_schema()
        try:
            conn = self._connect()
        except SQLAlchemyError as exc:
            raise self._failure(AuditUnavailableError, exc) from exc
        with conn:
            if self._path is not None:
                self._check_file(conn.connection)
            if write:
                with conn.begin():
                    yield conn
            else:
                yield conn

    def _append_postgresql(self, prepared: list[RawRecord]) -> list[RawRecord]:
        self._ensure_append_function()
        rows = self._on_writer(PG_APPEND, [postgresql_entries(prepared)], retry_lost=True)
        sealed = postgresql_sealed(prepared, rows)
        for raw in sealed:
            if raw.text_hash() != raw.hash:
                raise AuditError(
                    f"record {raw.id} was stored with a hash that does not verify: audit_append() does not "
                    "seal as chain.py does"
                )
        return sealed

    def _on_writer(self, sql: str, params: Any, *, retry_lost: bool) -> list[Any]:
        """Run ``sql`` on an append connection; once more on a new one if the pooled one turns out dead."""
        conn = self._checkout(self._writer)
        driver: Any = conn.driver_connection
        try:
            # Autocommit: the statement is the transaction; when it returns, it is committed.
            return list(driver.execute(sql, params).fetchall())
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
        return self._on_writer(sql, params, retry_lost=False)

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
            raise self._failure(AuditUnavailableError, exc) from exc

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
                if self._identity is not None and identity(str(self._path)) != self._identity:
                    raise self._replaced(
                        "is gone or another file than when the store was made", AuditUnavailableError
                    )
                if self.create:
                    self._make_directory()
                else:
                    self._require_file()
                with self._connect() as conn:
                    version = read_schema_version(conn)
                    complete = version != SCHEMA_VERSION or not missing_tables(conn)
                if self.create and (version is None or version < SCHEMA_VERSION or not complete):
                    with self._chain_locked() as conn:
                        version = create_schema(conn)
            except SQLAlchemyError as exc:
                raise self._failure(AuditUnavailableError, exc) from exc
            if version is None:
                raise AuditUnavailableError("the database holds no audit trail", detail=repr(self))
            if version > SCHEMA_VERSION:
                raise AuditUnavailableError(f"schema version {version} is newer than {SCHEMA_VERSION}")
            if self._path is not None and self._identity is None:
                self._identity = identity(self._path)
            self._schema_ready = True

    def _read_genesis(self, conn: Connection) -> Genesis | None:
        try:
            return read_genesis(conn)
        except ValueError as exc:
            raise AuditUnavailableError(str(exc)) from exc

    def _check_file(self, conn: PoolProxiedConnection) -> None:
        """Refuse to write unless the file at the path is the one this connection and store opened."""
        if self._path is None:
            return
        opened, current = connection_identity(conn.info), identity(self._path)
        if current is not None and current == opened == self._identity:
            return
        raise self._replaced("is gone" if current is None else "is another file than the one opened")

    def _replaced(
        self, state: str, kind: type[AuditWriteError | AuditUnavailableError] = AuditWriteError
    ) -> AuditError:
        """The error for a SQLite file removed or replaced under the store (``state`` says how)."""
        detail = f"the database file {self._path} {state} (removed or replaced while in use)"
        log.error(
            "audit store: %s; appends are refused until the file is back or the service restarts", detail
        )
        return kind("the database file was removed or replaced while the service was running", detail=detail)

    def _failure(self, kind: type[AuditWriteError | AuditUnavailableError], exc: Exception) -> AuditError:
        """``kind`` for a driver error: a client-safe reason, the driver's words logged and kept as detail."""
        reason, detail = driver_reason(exc)
        log.warning("audit store %r: %s", self, detail)
        return kind(reason, detail=detail)

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
        if self._path is None:
            return
        try:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            detail = f"cannot create the directory for {self._path}: {exc}"
            log.warning("audit store: %s", detail)
            raise AuditUnavailableError(
                "cannot create the directory for the database", detail=detail
            ) from exc

    def _require_file(self) -> None:
        if self._path is not None and not os.path.isfile(self._path):
            raise AuditUnavailableError("there is no audit database", detail=f"no file at {self._path}")


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
