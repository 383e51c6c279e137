"""Derived tables fed from the chain by ``seq``: counts and indexes that queries read instead of records.

A :class:`Projection` names its tables and folds a batch of records into them. :class:`Tally` keeps one
cursor per projection (the last ``seq`` folded in) and brings every projection up to the chain's head on
demand (:meth:`Tally.catch_up`), reading only the records after its cursor, in ``seq`` order, in batches::

    audit_records ──(seq > cursor, in order)──► projection.apply(conn, records) ──► its tables
                                                  └─ same transaction ──► tally_cursors[name] = last seq

The tables are a cache of the chain, never a source of truth: dropping them (and their cursor) rebuilds
them from the records. A batch and its cursor move commit together, and the cursor moves only from the
value this process read (``UPDATE ... WHERE seq = old``): when two workers catch up at once, the second
finds the cursor moved, rolls back and reads again, so no record is counted twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from sqlalchemy import BigInteger, Column, Connection, Engine, MetaData, String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from explain_service.audit.backends import postgresql_engine, sqlite_engine
from explain_service.audit.chain import StoredRecord
from explain_service.audit.schema import COLUMNS, raw_record, records
from explain_service.audit.store import AuditStore

log = logging.getLogger(__name__)
IMMEDIATE = "audit_begin_immediate"  # the SQLite engine's execution option for BEGIN IMMEDIATE

BATCH = 2000

metadata = MetaData()
cursors = Table(
    "tally_cursors",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
)


class _Moved(Exception):
    """The cursor moved under this transaction."""


class Projection(Protocol):
    """A derived table set: its name (the cursor's key), its tables, and how records fold into them."""

    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> Sequence[Table]: ...

    def apply(self, conn: Connection, batch: Sequence[StoredRecord]) -> None:
        """Fold ``batch`` (consecutive records, in ``seq`` order) into the tables, on ``conn``."""


class Tally:
    """The projections of one audit store, caught up lazily and at most once per ``min_interval`` seconds."""

    def __init__(
        self, store: AuditStore, projections: Sequence[Projection], *, min_interval: float = 1.0
    ) -> None:
        self.store = store
        self.projections = list(projections)
        self.min_interval = min_interval
        url = store.url
        self._engine: Engine = (
            sqlite_engine(url, 10.0, "os") if store.backend == "sqlite" else postgresql_engine(url, 10.0)
        )
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._ready = False

    def connect(self) -> Connection:
        """A connection to read the projections' tables (created on first use)."""
        self._ensure_tables()
        return self._engine.connect()

    def catch_up(self, *, force: bool = False) -> int:
        """Fold every record after each cursor into its projection; return how many records were read.

        Skipped (returns 0) when the last catch-up in this process was under ``min_interval`` seconds ago,
        unless ``force``: a page or a metrics scrape may show figures that much behind the chain.
        """
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < self.min_interval:
                return 0
            self.store.ping()  # the chain's own schema first: the records table must exist
            self._ensure_tables()
            read = sum(self._catch_up_one(p) for p in self.projections)
            self._last = time.monotonic()
            return read

    def _catch_up_one(self, projection: Projection) -> int:
        read = 0
        while True:
            try:
                with self._begin() as conn:
                    cursor = self._cursor(conn, projection.name)
                    query = select(*COLUMNS).where(records.c.seq > cursor).order_by(records.c.seq)
                    rows = conn.execute(query.limit(BATCH))
                    batch = [StoredRecord.from_raw(raw_record(row)) for row in rows]
                    if not batch:
                        return read
                    projection.apply(conn, batch)
                    moved = conn.execute(
                        update(cursors)
                        .where(cursors.c.name == projection.name, cursors.c.seq == cursor)
                        .values(seq=batch[-1].seq)
                    ).rowcount
                    if moved != 1:
                        raise _Moved  # another worker folded these in meanwhile: roll back, read on
            except (_Moved, IntegrityError):  # IntegrityError: two workers made the cursor at once
                continue
            read += len(batch)

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A write transaction; on SQLite taken at once (BEGIN IMMEDIATE), so its reads stay current."""
        with self._engine.connect() as conn:
            if self.store.backend == "sqlite":
                conn = conn.execution_options(**{IMMEDIATE: True})
            with conn.begin():
                yield conn

    def _cursor(self, conn: Connection, name: str) -> int:
        found = conn.execute(select(cursors.c.seq).where(cursors.c.name == name)).scalar()
        if found is None:
            conn.execute(insert(cursors).values(name=name, seq=0))
            return 0
        return int(found)

    def _ensure_tables(self) -> None:
        if self._ready:
            return
        with self._engine.begin() as conn:
            metadata.create_all(conn, checkfirst=True)
            for projection in self.projections:
                for table in projection.tables:
                    table.create(conn, checkfirst=True)
        self._ready = True

    def close(self) -> None:
        """Close pooled connections."""
        self._engine.dispose()
