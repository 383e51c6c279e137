"""The trail index: a searchable projection of the audit chain for the reviewers' list and queue.

The chain (``audit_records``) stays the only evidence and its append path is not touched. The index
(:mod:`.index_tables`) is derived from it by ``seq``::

    audit_records ──(seq > last_seq, in order, contiguous)──► catch_up ──► audit_index_explanations
                                                                      ├──► audit_index_reviews
                                                                      └──► audit_index_state: last seq, count

:meth:`TrailIndex.catch_up` reads the records after ``last_seq`` in batches; each batch is projected and
``last_seq`` (with the count of explanations, the unfiltered total) advanced in one transaction, under a
lock (PostgreSQL: the advisory lock :data:`INDEX_LOCK_KEY`, not the chain's; SQLite: the file's write
lock), re-reading ``last_seq`` once the lock is held. So several workers and hosts may call it at once:
each record is projected exactly once, and a batch either lands whole or not at all. It stops at the
first gap in ``seq`` (a record still being committed) and takes it up on the next call. An index made by
another version of the code (its format row differs) is dropped and projected again on first use. Reads
call it first, so the list, the queue and a record's status include everything appended before the read
(a trail far behind, e.g. just bulk-loaded, is projected at most ``read_catch_up`` records per read;
``explain-service audit reindex`` does it all).
:meth:`TrailIndex.rebuild` empties the index and projects the chain again.

Public interface (stable; the reviewer pages, fairness and incident reports build on it)::

    index = TrailIndex(store)                    # app.extensions["explain"].index in the app
    index.catch_up(max_records=None) -> int      # records read
    index.rebuild() -> int
    index.search(Filters(...), after=None, limit=50, order="desc", count=True) -> Page
    index.queue(after=None, limit=50, model_name=None, count=True) -> Page   # oldest first
    index.get(record_id) -> IndexedRecord | None
    index.state_of(record_id) -> ReviewState
    index.reviews(record_id) -> list[ReviewEvent]                              # oldest first
    index.add_review(record, action=, comment=, decision=, by=, role=) -> ReviewEvent

``Page(items, next_after, total)``: pass ``next_after`` back as ``after`` for the next page (None on the
last); ``total`` counts every match of the filters (None when ``count=False``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from explain_service.audit.backends import _IMMEDIATE, postgresql_engine, sqlite_engine
from explain_service.audit.chain import StoredRecord
from explain_service.audit.errors import AuditUnavailableError, AuditWriteError, driver_reason
from explain_service.audit.index_tables import COUNT, FORMAT, TRAIL, explanations, metadata, reviews, state
from explain_service.audit.projection_rows import apply_reviews, explanation_row, review_row
from explain_service.audit.reviews import (
    UNREVIEWED,
    ReviewEvent,
    ReviewState,
    check_review,
    review_entry,
)
from explain_service.audit.schema import records
from explain_service.audit.search import (
    Filters,
    IndexedRecord,
    Page,
    filter_clauses,
    indexed,
    review_event,
)
from explain_service.audit.store import AuditStore
from explain_service.errors import AuditUnavailable

__all__ = ["INDEX_LOCK_KEY", "Filters", "IndexedRecord", "Page", "TrailIndex"]

INDEX_LOCK_KEY = 0x6175646974696478  # b"auditidx": the index's own advisory lock, never the chain's
BATCH = 1000
READ_CATCH_UP = 50_000
INDEX_FORMAT = 3  # raise it when the index tables change: an index of another format is rebuilt
_MAX_PAGE = 500


class TrailIndex:
    """The trail index of one audit store (its own connections to the same database)."""

    def __init__(
        self, store: AuditStore, *, timeout: float = 30.0, read_catch_up: int = READ_CATCH_UP
    ) -> None:
        self.store = store
        self.backend = store.backend
        self.read_catch_up = read_catch_up
        self._timeout = timeout
        if self.backend == "sqlite":
            self._engine: Engine = sqlite_engine(store.url, timeout, "os")
        else:
            self._engine = postgresql_engine(store.url, timeout)
        self._insert = postgresql.insert if self.backend == "postgresql" else sqlite.insert
        self._pid = os.getpid()
        self._ready = False
        self._lock = threading.Lock()

    def close(self) -> None:
        self._engine.dispose()

    # -- projecting ---------------------------------------------------------------------------------
    def catch_up(self, max_records: int | None = None) -> int:
        """Project the records appended since the last call (at most ``max_records``); return how many."""
        done = 0
        with self._failures():
            self._ensure()
            while max_records is None or done < max_records:
                with self._engine.connect() as conn:
                    last, head = conn.execute(
                        select(
                            select(state.c.value).where(state.c.name == TRAIL).scalar_subquery(),
                            select(func.max(records.c.seq)).scalar_subquery(),
                        )
                    ).one()
                if head is None or last >= head:
                    return done
                read = self._project_batch()
                if read == 0:  # a gap: the next record is still being committed
                    return done
                done += read
        return done

    def rebuild(self) -> int:
        """Empty the index and project the whole chain again; return how many records were read."""
        with self._failures():
            self._ensure()
            with self._locked() as conn:
                conn.execute(delete(explanations))
                conn.execute(delete(reviews))
                conn.execute(update(state).where(state.c.name.in_([TRAIL, COUNT])).values(value=0))
        return self.catch_up()

    def _project_batch(self) -> int:
        with self._locked() as conn:
            last = int(conn.execute(select(state.c.value).where(state.c.name == TRAIL)).scalar_one())
            query = (
                select(records.c.seq, records.c.id, records.c.created_at, records.c.model_name,
                       records.c.model_version, records.c.caller, records.c.body)
                .where(records.c.seq > last)
                .order_by(records.c.seq)
                .limit(BATCH)
            )  # fmt: skip
            rows, events = [], []
            for row in conn.execute(query):
                if row.seq != last + 1:
                    break
                last = int(row.seq)
                body = orjson.loads(row.body)
                kind = body.get("kind")
                if kind == "explanation":
                    rows.append(explanation_row(row, body))
                elif kind == "review" and isinstance(body.get("record_id"), str):
                    events.append(review_row(row, body))
            if rows:  # each record is projected once (under the lock, after last_seq), so the count is exact
                conn.execute(self._insert(explanations).on_conflict_do_nothing(), rows)
                conn.execute(
                    update(state).where(state.c.name == COUNT).values(value=state.c.value + len(rows))
                )
            if events:
                conn.execute(self._insert(reviews).on_conflict_do_nothing(), events)
                apply_reviews(conn, events)
            before = conn.execute(select(state.c.value).where(state.c.name == TRAIL)).scalar_one()
            conn.execute(update(state).where(state.c.name == TRAIL).values(value=last))
            return last - int(before)

    # -- reading ------------------------------------------------------------------------------------
    def search(
        self,
        filters: Filters | None = None,
        *,
        after: int | None = None,
        limit: int = 50,
        order: Literal["desc", "asc"] = "desc",
        count: bool = True,
    ) -> Page:
        """One page of explanations matching ``filters``, newest first (``order="asc"``: oldest first).

        ``after`` is the previous page's ``next_after`` (a seq): keyset pagination, as cheap on page
        1,000 as on page 1, and stable while records are appended.
        """
        if not 1 <= limit <= _MAX_PAGE or order not in ("desc", "asc"):
            raise ValueError(f"limit must be 1..{_MAX_PAGE} and order 'desc' or 'asc'")
        self.catch_up(self.read_catch_up)
        clauses = filter_clauses(filters or Filters())
        seq = explanations.c.seq
        query = select(explanations).where(*clauses)
        if after is not None:
            query = query.where(seq < after if order == "desc" else seq > after)
        query = query.order_by(seq.desc() if order == "desc" else seq.asc()).limit(limit + 1)
        return self._page(query, clauses, limit, count, lambda item: item.seq, unfiltered=not clauses)

    def queue(
        self, *, after: int | None = None, limit: int = 50, model_name: str | None = None, count: bool = True
    ) -> Page:
        """Flagged and escalated explanations, and those that need a review and have none; oldest first.

        Ordered by when each entered the queue (``IndexedRecord.queue_seq``); ``after`` is a queue_seq.
        """
        if not 1 <= limit <= _MAX_PAGE:
            raise ValueError(f"limit must be 1..{_MAX_PAGE}")
        self.catch_up(self.read_catch_up)
        queued = explanations.c.queue_seq
        clauses: list[ColumnElement[bool]] = [queued.isnot(None)]
        if model_name is not None:
            clauses.append(explanations.c.model_name == model_name)
        query = select(explanations).where(*clauses)
        if after is not None:
            query = query.where(queued > after)
        query = query.order_by(queued.asc()).limit(limit + 1)
        return self._page(query, clauses, limit, count, lambda item: item.queue_seq)

    def get(self, record_id: str) -> IndexedRecord | None:
        """The indexed form of an explanation record (status, flags, reference), or None."""
        self.catch_up(self.read_catch_up)
        with self._reading() as conn:
            row = conn.execute(select(explanations).where(explanations.c.id == record_id)).first()
        return None if row is None else indexed(row)

    def state_of(self, record_id: str) -> ReviewState:
        """The derived review status of a record (unreviewed when it has no review or is not indexed)."""
        item = self.get(record_id)
        if item is None:
            return UNREVIEWED
        return ReviewState(item.status, item.decision, item.status_seq)

    def reviews(self, record_id: str) -> list[ReviewEvent]:
        """A record's review events, oldest first."""
        self.catch_up(self.read_catch_up)
        query = select(reviews).where(reviews.c.record_id == record_id).order_by(reviews.c.seq)
        with self._reading() as conn:
            return [review_event(row) for row in conn.execute(query)]

    # -- writing reviews ----------------------------------------------------------------------------
    def add_review(
        self,
        record: StoredRecord,
        *,
        action: Any,
        comment: Any = None,
        decision: Any = None,
        by: str | None,
        role: str,
    ) -> ReviewEvent:
        """Check a review of ``record`` against the rules of :mod:`.reviews`, append it, index it.

        Raises ValidationFailed (422) or Forbidden (403) as :func:`.reviews.check_review` says, and
        AuditUnavailable (503) when the chain refuses the append (nothing is stored then).
        """
        self.catch_up()
        check_review(record, action, comment, decision, role, self.state_of(record.id))
        try:
            stored = self.store.append([review_entry(record, action, comment, decision, by, role)])
        except AuditWriteError as exc:
            raise AuditUnavailable(exc.reason) from None
        self.catch_up()
        return ReviewEvent.from_record(stored[0])

    # -- internals ----------------------------------------------------------------------------------
    def _page(
        self, query: Any, clauses: list[Any], limit: int, count: bool, key: Any, unfiltered: bool = False
    ) -> Page:
        with self._reading() as conn:
            items = [indexed(row) for row in conn.execute(query)]
            total = None
            if count and unfiltered:  # kept by the projection: no scan of a million rows for the first page
                total = int(conn.execute(select(state.c.value).where(state.c.name == COUNT)).scalar_one())
            elif count:
                total = int(
                    conn.execute(select(func.count()).select_from(explanations).where(*clauses)).scalar_one()
                )
        more = len(items) > limit
        items = items[:limit]
        return Page(items, key(items[-1]) if more else None, total)

    def _ensure(self) -> None:
        if os.getpid() != self._pid:  # a forked worker must not share the parent's connections
            self._engine.dispose(close=False)
            self._pid = os.getpid()
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            self.store.head()  # the chain's own schema first (it creates it on first use)
            with self._locked() as conn:
                if inspect(conn).has_table(state.name):
                    columns = {column["name"] for column in inspect(conn).get_columns(state.name)}
                    found = None
                    if "value" in columns:
                        found = conn.execute(select(state.c.value).where(state.c.name == FORMAT)).scalar()
                    if found != INDEX_FORMAT:  # made by another version: derived, so rebuilt from the chain
                        metadata.drop_all(conn)
                if not inspect(conn).has_table(state.name):
                    metadata.create_all(conn)
                    conn.execute(
                        insert(state),
                        [
                            {"name": TRAIL, "value": 0},
                            {"name": COUNT, "value": 0},
                            {"name": FORMAT, "value": INDEX_FORMAT},
                        ],
                    )
            self._ready = True

    @contextmanager
    def _locked(self) -> Iterator[Connection]:
        """A transaction that alone may write the index until it ends."""
        with self._engine.connect() as conn:
            if self.backend == "sqlite":
                conn.execution_options(**{_IMMEDIATE: True})
            with conn.begin():
                if self.backend == "postgresql":
                    wait = f"{round(self._timeout * 1000)}ms"
                    conn.execute(text("SELECT set_config('lock_timeout', :wait, true)"), {"wait": wait})
                    conn.execute(select(func.pg_advisory_xact_lock(INDEX_LOCK_KEY)))
                yield conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._failures():
            self._ensure()
            with self._engine.connect() as conn:
                yield conn

    @contextmanager
    def _failures(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as exc:
            reason, detail = driver_reason(exc)
            raise AuditUnavailableError(reason, detail=detail) from exc
