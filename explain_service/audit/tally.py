"""More derived tables fed from the chain by ``seq``, the way the trail index is (:mod:`.projections`).

A :class:`Projection` names its tables and folds a batch of records into them. :class:`Tally` keeps one
cursor per projection (``derived_cursors``: name, last seq; its own table, so the trail index may drop
and rebuild its tables without touching these) and brings each projection up to the chain's head on
demand (:meth:`Tally.catch_up`), reading only the records after its cursor, in ``seq`` order, in
batches::

    audit_records ──(seq > cursor, in order, contiguous)──► projection.apply(conn, records) ──► its tables
                                                             └─ same transaction ──► cursor = last seq

As for the trail index: a batch and its cursor move commit together, under the index's lock
(PostgreSQL: the advisory lock :data:`.projections.INDEX_LOCK_KEY`; SQLite: the file's write lock,
taken at BEGIN), re-reading the cursor once the lock is held, so several workers may catch up at once
and each record is folded in exactly once; a gap in ``seq`` (a record still being committed) ends the
batch. The tables are a cache of the chain, never evidence: emptied with their cursor set to 0, they are
built again from the records. Each projection has its own cursor, so one added later catches up alone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from explain_service.audit.backends import _IMMEDIATE, postgresql_engine, sqlite_engine
from explain_service.audit.chain import StoredRecord
from explain_service.audit.errors import AuditUnavailableError, driver_reason
from explain_service.audit.projections import INDEX_LOCK_KEY
from explain_service.audit.schema import COLUMNS, raw_record, records
from explain_service.audit.store import AuditStore

BATCH = 2000
metadata = MetaData()
state = Table(
    "derived_cursors",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
)
READ_CATCH_UP = 50_000
"""Records a read folds in at most (per projection); a far-behind table catches up over several reads."""


class Projection(Protocol):
    """A derived table set: its name (its cursor's key), its tables, and how records fold into them."""

    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> Sequence[Table]: ...

    def apply(self, conn: Connection, batch: Sequence[StoredRecord]) -> None:
        """Fold ``batch`` (consecutive records, in ``seq`` order) into the tables, on ``conn``."""


def add_counts(
    conn: Connection,
    table: Table,
    rows: list[dict[str, Any]],
    counts: Sequence[str],
    merge: dict[str, Callable[[Any], Any]] | None = None,
) -> None:
    """Insert ``rows`` into ``table``; where a row's primary key is already there, add its ``counts``
    columns to the stored ones and set each ``merge`` column to ``merge[column](excluded)`` (one upsert)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    new = statement.excluded
    set_ = {name: table.c[name] + new[name] for name in counts}
    set_ |= {name: combine(new) for name, combine in (merge or {}).items()}
    keys = [column.name for column in table.primary_key.columns]
    conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=set_), rows)


class Tally:
    """The projections of one audit store, caught up lazily, at most once per ``min_interval`` seconds."""

    def __init__(
        self,
        store: AuditStore,
        projections: Sequence[Projection],
        *,
        min_interval: float = 1.0,
        timeout: float = 30.0,
    ) -> None:
        self.store = store
        self.projections = list(projections)
        self.min_interval = min_interval
        self._timeout = timeout
        self._engine: Engine = (
            sqlite_engine(store.url, timeout, "os")
            if store.backend == "sqlite"
            else postgresql_engine(store.url, timeout)
        )
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._ready = False
        self._pid = os.getpid()

    def connect(self) -> Connection:
        """A connection to read the projections' tables (created on first use)."""
        self._ensure_tables()
        return self._engine.connect()

    def catch_up(self, *, force: bool = False, max_records: int | None = READ_CATCH_UP) -> int:
        """Fold the records after each cursor into its projection; return how many records were read.

        Skipped (returns 0) when the last catch-up in this process was under ``min_interval`` seconds ago,
        unless ``force``: a page or a metrics scrape may show figures that much behind the chain. At most
        ``max_records`` per projection (None: up to the head), so a read after a bulk load stays bounded.
        """
        with self._lock:
            if not force and time.monotonic() - self._last < self.min_interval:
                return 0
            try:
                self._ensure_tables()
                read = sum(self._catch_up_one(p, max_records) for p in self.projections)
            except SQLAlchemyError as exc:
                reason, detail = driver_reason(exc)
                raise AuditUnavailableError(reason, detail=detail) from exc
            self._last = time.monotonic()
            return read

    def rebuild(self) -> int:
        """Empty every projection's tables, set its cursor to 0 and fold the whole chain in again."""
        with self._lock:
            self._ensure_tables()
            with self._locked() as conn:
                for projection in self.projections:
                    for table in projection.tables:
                        conn.execute(delete(table))
                    conn.execute(update(state).where(state.c.name == projection.name).values(last_seq=0))
        return self.catch_up(force=True, max_records=None)

    def _catch_up_one(self, projection: Projection, max_records: int | None) -> int:
        read = 0
        while max_records is None or read < max_records:
            with self._locked() as conn:
                cursor = conn.execute(
                    select(state.c.last_seq).where(state.c.name == projection.name)
                ).scalar()
                if cursor is None:
                    conn.execute(insert(state).values(name=projection.name, last_seq=0))
                    cursor = 0
                query = select(*COLUMNS).where(records.c.seq > cursor).order_by(records.c.seq).limit(BATCH)
                batch: list[StoredRecord] = []
                for row in conn.execute(query):
                    if row.seq != cursor + len(batch) + 1:
                        break  # a gap: the next record is still being committed
                    batch.append(StoredRecord.from_raw(raw_record(row)))
                if not batch:
                    return read
                projection.apply(conn, batch)
                conn.execute(
                    update(state).where(state.c.name == projection.name).values(last_seq=batch[-1].seq)
                )
            read += len(batch)
        return read

    @contextmanager
    def _locked(self) -> Iterator[Connection]:
        """A transaction that alone may write the derived tables until it ends."""
        with self._engine.connect() as conn:
            if self.store.backend == "sqlite":
                conn.execution_options(**{_IMMEDIATE: True})
            with conn.begin():
                if self.store.backend == "postgresql":
                    wait = f"{round(self._timeout * 1000)}ms"
                    conn.execute(text("SELECT set_config('lock_timeout', :wait, true)"), {"wait": wait})
                    conn.execute(select(func.pg_advisory_xact_lock(INDEX_LOCK_KEY)))
                yield conn

    def _ensure_tables(self) -> None:
        if os.getpid() != self._pid:  # a forked worker must not share the parent's connections
            self._engine.dispose(close=False)
            self._pid = os.getpid()
        if self._ready:
            return
        self.store.head()  # the chain's own schema first (it creates it on first use)
        with self._locked() as conn:
            metadata.create_all(conn, checkfirst=True)
            for projection in self.projections:
                for table in projection.tables:
                    table.create(conn, checkfirst=True)
        self._ready = True

    def close(self) -> None:
        """Close pooled connections."""
        self._engine.dispose()
