"""How the audit store reaches SQLite and PostgreSQL: engines, write connections, durability, appending.

Appending::

    append(entries) ─► chain lock ─► read head (seq, hash) ─► seal entries in order ─► INSERT ─► COMMIT
                        │
                        ├ SQLite       BEGIN IMMEDIATE: the file's single write lock, across processes;
                        │              sealed in Python by :meth:`.chain.RawRecord.sealed`
                        └ PostgreSQL   pg_advisory_xact_lock(CHAIN_LOCK_KEY), released at commit; all of it
                                       inside the function audit_append(), one round trip

A batch is sealed and inserted in one transaction under the lock, so its records get consecutive ``seq``
in the order given, and either all of it is stored or none; ``created_at`` is read under the lock too, so
it never decreases along ``seq`` (unless the clock is set back). Waiting for the lock is bounded by
``timeout`` (SQLite's busy timeout, PostgreSQL's ``lock_timeout``). SQLite runs in WAL mode, so readers go
on while a writer holds the lock.

The write path is the request path, so it runs fixed SQL on the driver's own connection (from a pool, so
threads and forked workers each get theirs); reads go through SQLAlchemy Core. On PostgreSQL an append
is one statement on an autocommit connection, ``SELECT * FROM audit_append(...)``, and so its own READ
COMMITTED transaction; COMMIT releases the lock. The store then recomputes every returned hash with
:mod:`.chain` before handing the records back.

Durability (``AuditStore(url, durability=...)``):

- ``"full"`` (the default): a record is on stable storage before :meth:`.store.AuditStore.append` returns.
  SQLite ``synchronous=FULL`` (the WAL is synced at every commit); PostgreSQL ``synchronous_commit`` as
  the server sets it, raised to ``on`` where it is ``off``.
- ``"os"``: the commit is handed to the operating system (SQLite ``synchronous=NORMAL``) or to the WAL
  writer (PostgreSQL ``synchronous_commit=off``) without waiting for the disk. A crash of the service
  loses nothing; a power cut (or, on PostgreSQL, a crash of the database server) may lose the newest
  records, which were already answered. The chain stays whole: what is lost is always its newest end.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, Engine, MetaData, create_engine, event, func, inspect, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from explain_service.audit.chain import RawRecord, utc_text
from explain_service.audit.schema import CHAIN_LOCK_KEY, GENESIS_START, HEAD, NAMES, row_values

Durability = Literal["full", "os"]
_IMMEDIATE = "audit_begin_immediate"  # execution option: begin the transaction with BEGIN IMMEDIATE

PG_APPEND = "SELECT * FROM audit_append(%b)"  # %b: a binary array, nothing to escape
# What an append needs of the server and of the session it runs in, in one round trip.
PG_WRITABLE = (
    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on', "
    "has_table_privilege('audit_records', 'INSERT'), "
    "has_function_privilege('audit_append(text[])', 'EXECUTE')"
)
MIN_FREE_BYTES = 8 * 1024 * 1024  # below this, a SQLite store reports itself not writable
_SQLITE_INSERT = f"INSERT INTO audit_records ({', '.join(NAMES)}) VALUES ({', '.join('?' * len(NAMES))})"


def create_tables(engine: Engine, metadata: MetaData) -> None:
    """Create the tables of ``metadata`` that are missing; another process creating them first is fine.

    On SQLite the check and the creation run in one BEGIN IMMEDIATE transaction: in a plain (deferred)
    one, the first write after the check's read fails at once with "database is locked", without waiting
    for the busy timeout, whenever another process committed in between (an audit append, say).
    """
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn = conn.execution_options(**{_IMMEDIATE: True})
            with conn.begin():
                metadata.create_all(conn, checkfirst=True)
    except SQLAlchemyError:
        # Workers starting together on a new database: another one may have won the race.
        present = inspect(engine)
        if not all(present.has_table(table.name) for table in metadata.sorted_tables):
            raise


def sqlite_engine(url: URL, timeout: float, durability: Durability) -> Engine:
    """The SQLite engine for reads and writes: WAL, busy timeout, ``synchronous`` as ``durability`` asks."""
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver must not BEGIN on its own; _begin does
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {round(timeout * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            enable_wal(cursor, timeout)
            cursor.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def enable_wal(cursor: Any, timeout: float) -> None:
    """Put the database in WAL mode, waiting up to ``timeout`` seconds for other connections.

    SQLite does not call the busy handler when a journal-mode change meets a lock: on a new (still empty)
    file that another process is creating the schema in, ``PRAGMA journal_mode = WAL`` fails at once with
    "database is locked", although ``busy_timeout`` is set. So the change is retried here, with a short
    growing pause, until it succeeds or ``timeout`` has passed (then the last error is raised). Once the
    file is in WAL mode, the pragma takes no lock and returns at once.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if not _is_locked(exc) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.05)
            continue
        if mode is None or str(mode[0]).lower() != "wal":
            raise sqlite3.OperationalError(f"the database cannot use WAL mode (it stays in {mode!r})")
        return


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def postgresql_engine(url: URL, timeout: float) -> Engine:
    """The PostgreSQL engine for reads and schema changes (READ COMMITTED, pre-pinged)."""
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": max(1, round(timeout))}
    return create_engine(url, connect_args=connect_args, isolation_level="READ COMMITTED", pool_pre_ping=True)


def postgresql_writer(url: URL, timeout: float, durability: Durability) -> Engine:
    """Autocommit connections for :meth:`.store.AuditStore.append` only, set up once each as the append needs.

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


@contextmanager
def chain_locked(conn: Connection, backend: str, timeout: float) -> Iterator[Connection]:
    """Begin on ``conn`` a transaction that alone may append to the chain until it ends.

    SQLite: BEGIN IMMEDIATE, waiting up to the busy timeout; PostgreSQL: the advisory lock
    ``CHAIN_LOCK_KEY``, waiting up to ``timeout`` seconds.
    """
    if backend == "sqlite":
        conn.execution_options(**{_IMMEDIATE: True})
    with conn.begin():
        if backend == "postgresql":
            wait = f"{round(timeout * 1000)}ms"
            conn.execute(text("SELECT set_config('lock_timeout', :wait, true)"), {"wait": wait})
            conn.execute(select(func.pg_advisory_xact_lock(CHAIN_LOCK_KEY)))
        yield conn


def append_sqlite(conn: PoolProxiedConnection, prepared: list[RawRecord]) -> list[RawRecord]:
    """Seal ``prepared`` (bodies in canonical form) onto the head and insert it in one BEGIN IMMEDIATE
    transaction; close ``conn``."""
    try:
        # If anything fails, closing hands the connection back to the pool, whose reset rolls back.
        cursor = conn.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        head = cursor.execute(HEAD).fetchone()
        if head is None:  # the first record follows the chain's genesis
            start = cursor.execute(GENESIS_START).fetchone()
            if start is None:
                raise sqlite3.IntegrityError("the audit database has no genesis row")
            head = (0, start[0])
        seq, prev_hash = int(head[0]), str(head[1])
        created_at = utc_text(datetime.now(UTC))
        sealed: list[RawRecord] = []
        for raw in prepared:  # bodies are canonical (store._prepare): hashed as text, not parsed again
            seq += 1
            placed = replace(raw, seq=seq, created_at=created_at, prev_hash=prev_hash)
            sealed.append(replace(placed, hash=placed.text_hash()))
            prev_hash = sealed[-1].hash
        cursor.executemany(_SQLITE_INSERT, [row_values(raw) for raw in sealed])
        cursor.execute("COMMIT")
    finally:
        conn.close()
    return sealed


def sqlite_not_writable(conn: PoolProxiedConnection, path: str | None) -> str | None:
    """Why an append on ``conn`` would fail now (a full disk, a read-only database), or None.

    Begins a write transaction and inserts nothing into the records table, then rolls back: a
    read-only file, directory or connection refuses the insert; a writer holding the lock makes it wait
    up to the busy timeout, as an append would.
    """
    if path is not None:
        try:
            disk = os.statvfs(os.path.dirname(os.path.abspath(path)))
        except OSError as exc:
            return f"the database's directory cannot be read ({exc.strerror})"
        if disk.f_bavail * disk.f_frsize < MIN_FREE_BYTES:
            return "the disk holding the database is full"
    cursor = conn.cursor()
    cursor.execute("BEGIN IMMEDIATE")
    try:
        cursor.execute("INSERT INTO audit_records SELECT * FROM audit_records WHERE 0")
    finally:
        cursor.execute("ROLLBACK")
    return None


def postgresql_not_writable(row: Any) -> str | None:
    """Why an append would fail now, from the answer to :data:`PG_WRITABLE`; None if it would not."""
    standby, read_only, may_insert, may_append = row
    if standby:
        return "the database is a read-only standby"
    if read_only:
        return "the database session is read-only"
    if not (may_insert and may_append):
        return "the service's database role may not append audit records"
    return None


def postgresql_entries(prepared: list[RawRecord]) -> list[list[str | None]]:
    """The ``entries`` argument of audit_append(): one row of text per record (see :mod:`.schema`)."""
    return [
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


def postgresql_sealed(prepared: list[RawRecord], rows: list[Any]) -> list[RawRecord]:
    """``prepared`` as audit_append() returned it sealed: ``rows`` of (seq, created_at, prev_hash, hash)."""
    return [
        replace(raw, seq=seq, created_at=created_at, prev_hash=prev_hash, hash=digest)
        for raw, (seq, created_at, prev_hash, digest) in zip(prepared, rows, strict=True)
    ]
