"""Group commit: the concurrent appends of one process share one transaction and one durable flush.

A durable commit costs a flush to disk (SQLite's WAL sync, PostgreSQL's WAL flush), and appends to one
chain are serialised by its lock anyway. So the threads of a worker that append at the same time queue
their batches; one of them, the leader, takes everything queued and commits it as one transaction, while
the others wait; then each gets its own records back::

    thread A ── submit ──┐                                           ┌──► A's records (or A's error)
    thread B ── submit ──┼──► queue ──► leader: lock, seal, insert,  ├──► B's records
    thread C ── submit ──┘               one COMMIT (one flush)      └──► C's records

- Order: batches are taken first come, first served, and each batch's records stay consecutive and in
  their order, so the chain's order stays total (the database lock orders the commits of processes).
- No answer before its record is durable: :meth:`GroupCommit.submit` returns only after the commit that
  holds the caller's records has returned.
- All or none: a commit that fails stores nothing of the group and every caller in it gets the error
  (each its own copy where the error can be copied). An error that one caller's records may have caused
  on their own (a record id already taken: ``retry_alone``) is retried batch by batch, so only that
  caller fails.
- No waiting on purpose: a group is whatever queued while the commit before it ran. Alone, a thread
  commits at once; under load, groups grow until one flush serves them all.
- Processes take turns: the leader first waits for its host's turn (a lock file, :class:`.turn.HostTurn`)
  and only then takes the queue, so that everything its threads queued while another worker's commit
  flushed goes into one group. Waiting on the lock file sleeps in the kernel and wakes the moment it is
  free, where SQLite's own lock wait would sleep in steps of 1 to 100 ms.

Across hosts (PostgreSQL), the database lock serialises the groups of every worker; it is held only inside
audit_append(), so one host's flush overlaps the next one's insert.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from explain_service.audit.chain import RawRecord

Commit = Callable[[list[RawRecord]], list[RawRecord]]
Observe = Callable[[float, int, int], None]
"""``observe(seconds, records, head_seq)``: one commit of ``records`` records took ``seconds``."""

MAX_GROUP_RECORDS = 512
"""A leader takes whole batches until the group holds this many records (a larger batch goes alone)."""

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Waiter:
    records: list[RawRecord]
    sealed: list[RawRecord] | None = None
    error: BaseException | None = None
    done: bool = field(default=False)


class GroupCommit:
    """Commits concurrent batches together through ``commit`` (one transaction per call).

    Parameters
    ----------
    commit
        Seals and stores its records in one transaction, in the order given, and returns them sealed;
        raises (having stored nothing) if it cannot.
    retry_alone
        Whether an error may come from one batch's own records; a failed group is then committed again
        batch by batch.
    observe
        Told of each successful commit: its duration, its record count and the new head's seq.
    turn
        Held by the leader around taking and committing a group, so that the processes of a host take
        turns (:class:`.turn.HostTurn`); must not raise.
    """

    def __init__(
        self,
        commit: Commit,
        *,
        retry_alone: Callable[[BaseException], bool] = lambda _exc: False,
        observe: Observe | None = None,
        max_records: int = MAX_GROUP_RECORDS,
        turn: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        self._commit = commit
        self._turn = turn
        self._retry_alone = retry_alone
        self._observe = observe
        self._max_records = max_records
        self._reset()

    def _reset(self) -> None:
        # A forked worker starts with a fresh queue: the parent's lock may have been held at the fork.
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Waiter] = []
        self._leading = False

    def submit(self, records: list[RawRecord]) -> list[RawRecord]:
        """Commit ``records`` (one caller's batch, in order) with whatever else is queued; return them sealed.

        Raises whatever ``commit`` raised for the group that held them; nothing of theirs is stored then.
        """
        if os.getpid() != self._pid:
            self._reset()
        waiter = _Waiter(records)
        cond = self._cond
        with cond:
            self._queue.append(waiter)
            while True:
                while self._leading and not waiter.done:
                    cond.wait()
                if waiter.done:
                    break
                self._leading = True
                cond.release()
                try:
                    # The group is taken once this process has its turn: what queued while it waited
                    # for another process's commit goes into this one.
                    with self._turn():
                        with cond:
                            group = self._take()
                        self._run(group)
                finally:
                    cond.acquire()
                    self._leading = False
                    cond.notify_all()
        if waiter.error is not None:
            raise _own_copy(waiter.error)
        assert waiter.sealed is not None
        return waiter.sealed

    def _take(self) -> list[_Waiter]:
        """The longest run of queued batches, first come first, holding at most ``max_records`` records."""
        taken, count = 0, 0
        for waiter in self._queue:
            if taken and count + len(waiter.records) > self._max_records:
                break
            taken += 1
            count += len(waiter.records)
        group, self._queue = self._queue[:taken], self._queue[taken:]
        return group

    def _run(self, group: list[_Waiter]) -> None:
        """Commit ``group`` and settle every waiter in it; never raises."""
        try:
            self._settle(group, self._commit_group(group))
        except BaseException as exc:  # every waiter must hear of it, whatever it is
            if len(group) > 1 and self._retry_alone(exc):
                for waiter in group:
                    self._run([waiter])
                return
            for waiter in group:
                waiter.error, waiter.done = exc, True

    def _commit_group(self, group: list[_Waiter]) -> list[RawRecord]:
        records = [record for waiter in group for record in waiter.records]
        started = time.perf_counter()
        sealed = self._commit(records)
        if self._observe is not None and sealed:
            try:
                self._observe(time.perf_counter() - started, len(sealed), sealed[-1].seq)
            except Exception:  # the records are stored: a metric must not turn that into a failure
                log.exception("audit append observer failed")
        return sealed

    @staticmethod
    def _settle(group: list[_Waiter], sealed: list[RawRecord]) -> None:
        start = 0
        for waiter in group:
            end = start + len(waiter.records)
            waiter.sealed, waiter.done = sealed[start:end], True
            start = end


def _own_copy(error: BaseException) -> BaseException:
    """A copy of ``error`` for one waiter, so that threads raising it do not share one traceback."""
    try:
        mine = copy.copy(error)
    except Exception:
        return error
    if type(mine) is not type(error):
        return error
    mine.__cause__, mine.__context__ = error.__cause__, error.__context__
    return mine.with_traceback(error.__traceback__)
