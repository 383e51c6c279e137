"""The audit store: an append-only, hash-chained table of explanation records.

One table holds the records; nothing ever updates or deletes a row::

    audit_records                                     audit_schema_version
    seq │ id │ created_at │ model_name │ model_version   version │ chain_format │ created_at
        │ model_sha256 │ caller │ body │ prev_hash │ hash

``body`` is the caller's JSON-ready dict as canonical JSON text, ``created_at`` UTC ISO-8601 text with
microseconds (so it sorts and hashes as written), and each ``hash`` seals the record onto the one before
it: ``sha256(prev_hash + canonical_json(envelope))`` (see :mod:`.chain`). :meth:`AuditStore.export` writes
the JSON Lines format of :mod:`.jsonl`.

Appending::

    append(entries) ─► chain lock ─► read head (seq, hash) ─► seal entries in order ─► INSERT ─► COMMIT
                        │
                        ├ SQLite       BEGIN IMMEDIATE: the file's single write lock, across processes;
                        │              sealed in Python by :meth:`.chain.RawRecord.sealed`
                        └ PostgreSQL   pg_advisory_xact_lock(CHAIN_LOCK_KEY), released at commit; all of it
                                       inside the function audit_append(), one round trip

A batch is sealed and inserted in one transaction under the lock, so its records get consecutive ``seq``
in the order given, and either all of it is stored or none; ``created_at`` is read under the lock too, so
it never decreases along ``seq`` (unless the clock is set back). Unique constraints on ``seq``,
``prev_hash`` (no two records may follow the same one, so the chain cannot fork), ``hash`` and ``id`` make
a writer that skipped the lock fail instead of forking the chain. Waiting for the lock is bounded by
``timeout`` (SQLite's busy timeout, PostgreSQL's ``lock_timeout``). SQLite runs in WAL mode, so readers go
on while a writer holds the lock. Triggers reject UPDATE and DELETE (and TRUNCATE on PostgreSQL); they stop
mistakes, not the database's owner, which is what the chain is for.

The write path is the request path, so it runs fixed SQL on the driver's own connection (from a pool, so
threads and forked workers each get theirs); reads go through SQLAlchemy Core. On PostgreSQL an append
is one statement on an autocommit connection, ``SELECT * FROM audit_append(...)``, and so its own READ
COMMITTED transaction: the function waits for the advisory lock, reads the head with a snapshot taken
after it, stamps ``created_at`` from the database's clock (one clock for every host), and seals each
record as the text the store sends from :meth:`.chain.RawRecord.envelope_parts` with the head's seq and
hash spliced in; COMMIT releases the lock. The store then recomputes every returned hash with
:mod:`.chain` before handing the records back. The function needs PostgreSQL 11 or newer (``sha256``)
and no privilege beyond INSERT and SELECT on the table, so the service's role can be denied UPDATE and
DELETE. It is created with the schema, and added at the first append to a database created before it
existed (reading never needs it).

Durability (``AuditStore(url, durability=...)``):

- ``"full"`` (the default): a record is on stable storage before :meth:`AuditStore.append` returns.
  SQLite ``synchronous=FULL`` (the WAL is synced at every commit); PostgreSQL ``synchronous_commit`` as
  the server sets it, raised to ``on`` where it is ``off``.
- ``"os"``: the commit is handed to the operating system (SQLite ``synchronous=NORMAL``) or to the WAL
  writer (PostgreSQL ``synchronous_commit=off``) without waiting for the disk. A crash of the service
  loses nothing; a power cut (or, on PostgreSQL, a crash of the database server) may lose the newest
  records, which were already answered. The chain stays whole: what is lost is always its newest end.

Any failure to append raises :class:`AuditWriteError` and stores nothing of the batch; the caller must not
answer without its record. (A commit whose acknowledgement is lost may still be stored: a record without
an answer, never an answer without a record. On PostgreSQL an append whose pooled connection turns out
to be dead is sent once more on a new one; the batch's ids are fixed, so it cannot be stored twice.)

Review actions (approve, flag, escalate) belong in a separate append-only table that refers to
``audit_records.id``; a record's status is its latest review. This table never changes for them.

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
from dataclasses import fields, replace
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal

import orjson
from sqlalchemy import (
    DDL,
    BigInteger,
    CheckConstraint,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from explain_service.audit.chain import (
    CHAIN_FORMAT,
    GENESIS_HASH,
    AuditEntry,
    RawRecord,
    StoredRecord,
    VerifyReport,
    canonical_json,
    new_record_id,
    utc_text,
    walk_chain,
)
from explain_service.audit.jsonl import write_export

SCHEMA_VERSION = 1
CHAIN_LOCK_KEY = 0x6175646974636861  # b"auditcha": one fixed advisory-lock key shared by every writer
Durability = Literal["full", "os"]
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_PAGE = 1000
_STREAM_BATCH = 500
_IMMEDIATE = "audit_begin_immediate"

metadata = MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

records = Table(
    "audit_records",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("id", String(64), nullable=False, unique=True),
    Column("created_at", String(32), nullable=False),
    Column("model_name", String, nullable=False),
    Column("model_version", String, nullable=False),
    Column("model_sha256", String, nullable=False),
    Column("caller", String, nullable=True),
    Column("body", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False, unique=True),
    Column("hash", String(64), nullable=False, unique=True),
    CheckConstraint("seq >= 1", name="seq_positive"),
    Index("ix_audit_records_model_name_seq", "model_name", "seq"),
    Index("ix_audit_records_created_at", "created_at"),
)

schema_version = Table(
    "audit_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("chain_format", String, nullable=False),
    Column("created_at", String(32), nullable=False),
)

# One batch, one statement. ``entries`` has a row per record, in order: id, model_name, model_version,
# model_sha256, caller, body, then the middle and tail of RawRecord.envelope_parts(). In READ COMMITTED each
# statement in the function sees what was committed before it began, so the head is read under the lock.
_PG_APPEND_FUNCTION = f"""
CREATE FUNCTION audit_append(entries text[][])
RETURNS TABLE (sealed_seq bigint, sealed_created_at text, sealed_prev_hash text, sealed_hash text)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({CHAIN_LOCK_KEY});
    SELECT r.seq, r.hash INTO sealed_seq, sealed_hash FROM audit_records r ORDER BY r.seq DESC LIMIT 1;
    sealed_seq := coalesce(sealed_seq, 0);
    sealed_hash := coalesce(sealed_hash, '{GENESIS_HASH}');
    sealed_created_at := to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"');
    FOR i IN 1 .. array_length(entries, 1) LOOP
        sealed_seq := sealed_seq + 1;
        sealed_prev_hash := sealed_hash;
        sealed_hash := encode(sha256(convert_to(
            sealed_prev_hash || '{{"body":' || entries[i][6] || entries[i][7] || sealed_created_at
                || entries[i][8] || sealed_seq || '}}',
            'UTF8')), 'hex');
        INSERT INTO audit_records (seq, id, created_at, model_name, model_version, model_sha256, caller, body,
                                   prev_hash, hash)
        VALUES (sealed_seq, entries[i][1], sealed_created_at, entries[i][2], entries[i][3], entries[i][4],
                entries[i][5], entries[i][6], sealed_prev_hash, sealed_hash);
        RETURN NEXT;
    END LOOP;
END
$$"""

_REJECT = "audit_records is append-only"
for _dialect, _statement in [
    ("sqlite", f"CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records "
               f"BEGIN SELECT RAISE(ABORT, '{_REJECT}'); END"),
    ("sqlite", f"CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records "
               f"BEGIN SELECT RAISE(ABORT, '{_REJECT}'); END"),
    ("postgresql", f"CREATE OR REPLACE FUNCTION audit_records_reject() RETURNS trigger LANGUAGE plpgsql "
                   f"AS $$ BEGIN RAISE EXCEPTION '{_REJECT}'; END $$"),
    ("postgresql", "CREATE TRIGGER audit_records_no_change BEFORE UPDATE OR DELETE ON audit_records "
                   "FOR EACH ROW EXECUTE FUNCTION audit_records_reject()"),
    ("postgresql", "CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_records_reject()"),
    ("postgresql", _PG_APPEND_FUNCTION),
]:  # fmt: skip
    event.listen(records, "after_create", DDL(_statement).execute_if(dialect=_dialect))

_COLUMNS = [records.c[field.name] for field in fields(RawRecord)]
_NAMES = tuple(field.name for field in fields(RawRecord))
_row = attrgetter(*_NAMES)  # a RawRecord as the tuple of its column values, in table order

_HEAD = "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1"
_SQLITE_INSERT = f"INSERT INTO audit_records ({', '.join(_NAMES)}) VALUES ({', '.join('?' * len(_NAMES))})"

_PG_APPEND_SIGNATURE = "audit_append(text[])"
_PG_APPEND = "SELECT * FROM audit_append(%b)"  # %b: a binary array, nothing to escape


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
        a power cut may lose the newest records, for a cheaper commit (see the module docstring).
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
            self._engine = _sqlite_engine(self.url, timeout, durability)
            self._writer = self._engine
        elif self.backend == "postgresql":
            if self.url.get_driver_name() != "psycopg":
                raise ValueError(
                    "the audit store reaches PostgreSQL through psycopg 3 (postgresql+psycopg://)"
                )
            self._engine = _postgresql_engine(self.url, timeout)
            self._writer = _postgresql_writer(self.url, timeout, durability)
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
                sealed = self._append_sqlite(prepared)
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
            row = conn.execute(select(*_COLUMNS).where(records.c.id == record_id)).first()
        return None if row is None else StoredRecord.from_raw(_raw(row))

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
        query = select(func.count()).select_from(records).where(*_filters(model_name, since, until))
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
        clauses = _filters(model_name, since, until)
        if before_seq is not None:
            clauses.append(records.c.seq < before_seq)
        query = select(*_COLUMNS).where(*clauses).order_by(records.c.seq.desc()).limit(limit).offset(offset)
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return [StoredRecord.from_raw(_raw(row)) for row in rows]

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest record; ``(0, GENESIS_HASH)`` when empty. Cheap: keep it elsewhere."""
        with self._reading() as conn:
            return _head(conn)

    def verify(self, *, expected_head: str | None = None) -> VerifyReport:
        """Recompute every hash in ``seq`` order, streaming, and report the first break.

        Deleting the newest records leaves a valid shorter chain; pass a head hash kept elsewhere (an
        export's trailer, an earlier :meth:`head`) as ``expected_head`` to detect that.
        """
        query = select(*_COLUMNS).order_by(records.c.seq).execution_options(yield_per=_STREAM_BATCH)
        with self._reading() as conn:

            def locate(wanted: str) -> tuple[int, str] | None:
                where = records.c.hash == wanted
                found = conn.execute(select(records.c.seq, records.c.id).where(where).limit(1)).first()
                return None if found is None else (int(found.seq), str(found.id))

            result = conn.execute(query)
            try:
                return walk_chain((_raw(row) for row in result), locate=locate, expected_head=expected_head)
            finally:
                result.close()

    def export(self, out: BinaryIO) -> str:
        """Write every record as JSON Lines, then a trailer (format in :mod:`.jsonl`); return the head hash.

        The export copies; it does not check. Run :meth:`verify`, or :func:`.jsonl.verify_export` on the file.
        """
        query = select(*_COLUMNS).order_by(records.c.seq).execution_options(yield_per=_STREAM_BATCH)
        with self._reading() as conn:
            result = conn.execute(query)
            try:
                return write_export((_raw(row) for row in result), out)
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

    def _append_sqlite(self, prepared: list[RawRecord]) -> list[RawRecord]:
        conn = self._checkout(self._engine)
        try:
            # If anything fails, closing hands the connection back to the pool, whose reset rolls back.
            cursor = conn.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            seq, prev_hash = _head_row(cursor.execute(_HEAD).fetchone())
            created_at = utc_text(_now())
            sealed: list[RawRecord] = []
            for raw in prepared:
                seq += 1
                sealed.append(replace(raw, seq=seq, created_at=created_at, prev_hash=prev_hash).sealed())
                prev_hash = sealed[-1].hash
            cursor.executemany(_SQLITE_INSERT, [_row(raw) for raw in sealed])
            cursor.execute("COMMIT")
        finally:
            conn.close()
        return sealed

    def _append_postgresql(self, prepared: list[RawRecord]) -> list[RawRecord]:
        self._ensure_append_function()
        entries = [
            [
                raw.id,
                raw.model_name,
                raw.model_version,
                raw.model_sha256,
                raw.caller,
                raw.body,
                *raw.envelope_parts(),
            ]
            for raw in prepared
        ]
        rows = self._call_append(entries, retry_lost=True)
        sealed = [
            replace(raw, seq=seq, created_at=created_at, prev_hash=prev_hash, hash=digest)
            for raw, (seq, created_at, prev_hash, digest) in zip(prepared, rows, strict=True)
        ]
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
            return driver.execute(_PG_APPEND, [entries]).fetchall()
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
        with self._connect() as conn:
            if self.backend == "sqlite":
                conn.execution_options(**{_IMMEDIATE: True})
            with conn.begin():
                if self.backend == "postgresql":
                    wait = f"{round(self._timeout * 1000)}ms"
                    conn.execute(text("SELECT set_config('lock_timeout', :wait, true)"), {"wait": wait})
                    conn.execute(select(func.pg_advisory_xact_lock(CHAIN_LOCK_KEY)))
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
                    version = _schema_version(conn)
                if version is None:
                    with self._chain_locked() as conn:
                        metadata.create_all(conn)
                        version = _schema_version(conn)
                        if version is None:
                            version = SCHEMA_VERSION
                            row = {"version": version, "chain_format": CHAIN_FORMAT}
                            conn.execute(insert(schema_version).values(created_at=utc_text(_now()), **row))
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
                present = _has_append_function(conn)
            if not present:
                with self._chain_locked() as conn:
                    if not _has_append_function(conn):
                        conn.exec_driver_sql(_PG_APPEND_FUNCTION)
            self._append_function_ready = True

    def _make_directory(self) -> None:
        if self.backend != "sqlite" or not self.url.database:
            return
        path = self.url.database.removeprefix("file:") if self.url.query.get("uri") else self.url.database
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditUnavailableError(f"cannot create the directory for {path}: {exc}") from exc


def _sqlite_engine(url: URL, timeout: float, durability: Durability) -> Engine:
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver must not BEGIN on its own; _begin does
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {round(timeout * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _postgresql_engine(url: URL, timeout: float) -> Engine:
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": max(1, round(timeout))}
    return create_engine(url, connect_args=connect_args, isolation_level="READ COMMITTED", pool_pre_ping=True)


def _postgresql_writer(url: URL, timeout: float, durability: Durability) -> Engine:
    """Autocommit connections for :meth:`AuditStore.append` only, set up once each as the append needs.

    No pre-ping: it would cost a round trip per append; a connection found dead is retried instead.
    """
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": max(1, round(timeout))}
    engine = create_engine(url, connect_args=connect_args)
    if durability == "full":  # keep the server's level (remote_apply, say) unless it is "off"
        commit = (
            "SELECT set_config('synchronous_commit', 'on', false) "
            "WHERE current_setting('synchronous_commit') = 'off'"
        )
    else:
        commit = "SET synchronous_commit = off"

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.autocommit = True
        dbapi_connection.execute(
            f"SET lock_timeout = {round(timeout * 1000)}; "
            "SET default_transaction_isolation = 'read committed'; "
            f"{commit}"
        )

    return engine


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


def _head(conn: Connection) -> tuple[int, str]:
    return _head_row(conn.exec_driver_sql(_HEAD).first())


def _head_row(row: Any) -> tuple[int, str]:
    return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))


def _has_append_function(conn: Connection) -> bool:
    return conn.exec_driver_sql(f"SELECT to_regprocedure('{_PG_APPEND_SIGNATURE}')").scalar() is not None


def _schema_version(conn: Connection) -> int | None:
    if not inspect(conn).has_table(schema_version.name):
        return None
    version = conn.execute(select(func.max(schema_version.c.version))).scalar()
    return None if version is None else int(version)


def _filters(
    model_name: str | None, since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if model_name is not None:
        clauses.append(records.c.model_name == model_name)
    if since is not None:
        clauses.append(records.c.created_at >= utc_text(since))
    if until is not None:
        clauses.append(records.c.created_at < utc_text(until))
    return clauses


def _raw(row: Row[Any]) -> RawRecord:
    return RawRecord(**row._mapping)


def _values(raw: RawRecord) -> dict[str, Any]:
    return {field.name: getattr(raw, field.name) for field in fields(raw)}


def _now() -> datetime:
    return datetime.now(UTC)


def _reason(exc: Exception) -> str:
    """The driver's message, first line only: enough to act on, without SQL or bound values."""
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]
